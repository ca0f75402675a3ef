"""Stores on either engine, synthetic inputs, and reading stored vectors back."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from qdrant_client import QdrantClient

from crossgap_qdrant.inversion import OTIConfig, OVIConfig
from crossgap_qdrant.store import CrossModalStore, open_collection

FAST = {"oti_config": OTIConfig(steps=3), "ovi_config": OVIConfig(steps=3)}
ENGINES = ("edge", "client")


class Stores:
    """Builds stores on one engine: "edge" (a folder under ``root``) or "client" (one ":memory:" client).

    Edge takes a folder lock per collection, so making a store for a name closes the earlier one.
    """

    def __init__(self, engine: str, root, clip):
        self.engine, self.root, self.clip = engine, root, clip
        self.client = QdrantClient(":memory:") if engine == "client" else None
        self.open: dict[str, object] = {}

    def collection(self, name: str = "gallery"):
        previous = self.open.pop(name, None)
        if previous is not None:
            previous.close()
        if self.engine == "edge":
            coll = open_collection(self.root / "edge", name, create_folder=True)
        else:
            coll = open_collection(None, name, client=self.client)
        self.open[name] = coll
        return coll

    def make(self, name: str = "gallery", **kwargs) -> CrossModalStore:
        options = {**FAST, **kwargs}
        return CrossModalStore(self.collection(name), name, self.clip, **options)

    def close(self) -> None:
        for coll in self.open.values():
            coll.close()
        self.open.clear()


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]


def unit(n: int, dim: int = 32, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def stored_vectors(store: CrossModalStore, ids, name: str) -> list:
    """The stored ``name`` vector of each id (None where absent), in the order of ``ids``."""
    records = store.collection.retrieve(list(ids), with_vectors=[name])
    by_id = {str(r.id): (r.vector or {}).get(name) for r in records}
    return [by_id.get(str(i)) for i in ids]


def all_records(store: CrossModalStore, vectors=True) -> list:
    records, offset = [], None
    while True:
        page, offset = store.collection.scroll(limit=256, offset=offset, with_vectors=vectors)
        records += page
        if offset is None:
            return records


def brute_force(store: CrossModalStore, query: torch.Tensor, name: str, exclude=None) -> list[str]:
    """Ids ranked by cosine between the query [E] and every stored ``name`` vector."""
    records = [r for r in all_records(store, [name]) if name in (r.vector or {}) and str(r.id) != str(exclude)]
    matrix = torch.tensor([r.vector[name] for r in records])
    order = (F.normalize(matrix, dim=-1) @ F.normalize(query, dim=-1)).argsort(descending=True)
    return [str(records[i].id) for i in order]
