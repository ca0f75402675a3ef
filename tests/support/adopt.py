"""Collections built the way other tools build them (plain qdrant-client or qdrant-edge-py code, no crossgap
code), with CLIP vectors from the committed demo model, and a snapshot of what their user wrote."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import qdrant_edge as qe
import torch
from PIL import Image
from qdrant_client import QdrantClient, models

from crossgap_qdrant.models import encode_pixels
from crossgap_qdrant.store import open_collection

NAME = "photos"
STEPS = 5


@dataclass
class Foreign:
    """A foreign collection: where it is, its engine ("local" or "edge"), vector name ("" = unnamed), ids."""

    location: Path
    engine: str
    vector: str
    ids: list
    paths: list

    @property
    def engine_flag(self) -> list[str]:
        return ["--engine", "local"] if self.engine == "local" else []

    def open_raw(self):
        """The user's own collection through this package's engine layer (never the companion view)."""
        return open_collection(self.location, NAME, engine="local" if self.engine == "local" else None)


def demo_features(clip, paths) -> np.ndarray:
    """Unit image features [N, E] of the files, as a user's own pipeline computes them."""
    with torch.no_grad():
        pixels = torch.stack([clip.preprocess(Image.open(p).convert("RGB")) for p in paths])
        return torch.nn.functional.normalize(encode_pixels(clip.model, pixels).float(), dim=-1).numpy()


def write_images(folder: Path, n: int, seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def make_foreign(root: Path, clip, engine: str, vector: str, id_kind: str, n: int = 8, *, with_paths: bool = True,
                 features: np.ndarray | None = None) -> Foreign:
    """Builds collection ``photos`` at ``root / "q"`` with plain qdrant-client (``engine="local"``) or
    qdrant-edge-py (``"edge"``) code: one unnamed vector (``vector=""``) or a named one; int or UUID ids;
    payloads with a file path (or not), a label and a nested object."""
    paths = write_images(root / "images", n)
    feats = demo_features(clip, paths) if features is None else features
    ids = list(range(101, 101 + n)) if id_kind == "int" else [str(uuid.uuid5(uuid.NAMESPACE_URL, p)) for p in paths]
    payloads = [{"label": f"class{i % 3}", "meta": {"rank": i, "tags": ["a", "b"]}} for i in range(n)]
    if with_paths:
        for payload, path in zip(payloads, paths):
            payload["path"] = path
    location = root / "q"
    if engine == "local":
        client = QdrantClient(path=str(location))
        params = models.VectorParams(size=feats.shape[1], distance=models.Distance.COSINE)
        client.create_collection(NAME, vectors_config=params if vector == "" else {vector: params})
        client.upsert(NAME, [models.PointStruct(id=i, vector=f.tolist() if vector == "" else {vector: f.tolist()},
                                                payload=p) for i, f, p in zip(ids, feats, payloads)])
        client.close()
    else:
        os.makedirs(location / NAME, exist_ok=True)
        shard = qe.EdgeShard.create(str(location / NAME / "shard"), qe.EdgeConfig(
            vectors={vector: qe.EdgeVectorParams(size=feats.shape[1], distance=qe.Distance.Cosine)}))
        shard.update(qe.UpdateOperation.upsert_points(
            [qe.Point(i if isinstance(i, int) else uuid.UUID(i), {vector: f.tolist()}, p)
             for i, f, p in zip(ids, feats, payloads)]))
        shard.flush()
        shard.close()
    return Foreign(location, engine, vector, ids, paths)


def snapshot(foreign: Foreign) -> dict:
    """{id: (native vector as float32 bytes, payload)} of every point of the user's collection, and its vectors."""
    collection = foreign.open_raw()
    try:
        out = {}
        for page in collection.pages(with_payload=True, with_vectors=True):
            for r in page:
                vector = r.vector.get(foreign.vector) if isinstance(r.vector, dict) else r.vector
                out[str(r.id)] = (np.asarray(vector, dtype=np.float32).tobytes(), r.payload)
        return {"points": out, "vectors": sorted(collection.schema().vectors)}
    finally:
        collection.close()
