"""Warm starts kept with a collection: fitted from its stored native vectors, recorded in its metadata.

A warm start (crossgap_qdrant.inversion.warm_start) turns query-side inversion and backfills from 150 (OTI)
or 1000 (OVI) exact steps into a few. The file goes into the collection's own folder on embedded engines
(``Collection.files_folder``); a server keeps no files, so there the caller names a path. The metadata records,
per modality, the file (relative to the collection's folder when inside it), its SHA-256, the step budget and
learning rate to use with it (the fit's measured recommendation unless given), and how the fit went.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from typing import Any, Callable

import torch
from qdrant_client import models

from crossgap_qdrant.inversion.warm_start import WarmStart
from crossgap_qdrant.store.collection import Collection
from crossgap_qdrant.store.errors import InvalidRequestError
from crossgap_qdrant.store.schema import VectorNames

WARM_KEY = "warm_start"
KIND = {"image": "oti", "text": "ovi"}


def sample_native(collection: Collection, names: VectorNames, modality: str, sample: int) -> torch.Tensor:
    """Up to ``sample`` stored native vectors of ``modality`` [N, E] (in point-id order: content ids are hashes,
    so this is a sample of the collection, not its first items)."""
    native = names.native(modality)
    has = models.Filter(must=[models.HasVectorCondition(has_vector=native)])
    rows = [r.vector[native] for page in collection.pages(has, limit=sample, with_vectors=[native])
            for r in page if native in (r.vector or {})]
    if len(rows) < 2:
        raise InvalidRequestError(f"collection {collection.name!r} holds {len(rows)} {modality} vector(s): a warm "
                                  "start needs "
                                  f"at least 2 to fit; ingest {modality}s first")
    return torch.tensor(rows, dtype=torch.float32)


def file_path(collection: Collection, modality: str, path: str | os.PathLike | None) -> str:
    """Where the warm start of ``modality`` is written: ``path``, else the collection's own folder."""
    if path is not None:
        return os.path.abspath(os.fspath(path))
    folder = collection.files_folder
    if folder is None:
        raise InvalidRequestError(f"collection {collection.name!r} lives on {collection.location}, which keeps no "
                                  "files: pass "
                                  "path= (CLI: fit-warm-start --file PATH) to say where the warm start is written")
    return os.path.join(folder, f"warm_start_{KIND[modality]}.pt")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_for(collection: Collection, path: str, sha256: str, steps: int, lr: float, fit: Any) -> dict[str, Any]:
    """The metadata entry of a saved warm start: its file, SHA-256, step budget and learning rate, the fit."""
    folder = collection.files_folder
    stored = os.path.relpath(path, folder) if folder and os.path.dirname(path) == os.path.abspath(folder) else path
    return {"file": stored, "sha256": sha256, "steps": steps, "lr": lr,
            "fit": dataclasses.asdict(fit) if dataclasses.is_dataclass(fit) else dict(fit)}


def save_recorded(warm: Any, target: str, write_record: Callable[[str], None]) -> None:
    """Saves ``warm`` at ``target`` and records it with ``write_record(sha256)``, as one change: when recording
    fails (a full disk, a server error), the file that was at ``target`` before is put back, so the warm start
    recorded before stays usable."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    new, previous = f"{target}.new-{os.getpid()}", f"{target}.previous-{os.getpid()}"
    warm.save(new)
    had_previous = os.path.exists(target)
    try:
        if had_previous:
            os.replace(target, previous)
        os.replace(new, target)
        write_record(_sha256(target))
    except BaseException:
        if had_previous and os.path.exists(previous):
            os.replace(previous, target)
        elif not had_previous and os.path.exists(target):
            os.remove(target)
        if os.path.exists(new):
            os.remove(new)
        raise
    if had_previous:
        os.remove(previous)


def load_recorded(collection: Collection, modality: str, record: dict[str, Any], device: Any = "cpu"):
    """The warm start a metadata entry names, checked against its recorded SHA-256, on ``device``."""
    path = record["file"]
    if not os.path.isabs(path):
        folder = collection.files_folder
        if folder is None:
            raise FileNotFoundError(f"the {modality} warm start of collection {collection.name!r} was recorded as "
                                    f"{path!r} in a folder this engine does not have")
        path = os.path.join(folder, path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the {modality} warm start of collection {collection.name!r} is missing: {path} "
                                "(fit it again: crossgap-qdrant fit-warm-start)")
    with open(path, "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != record.get("sha256"):
        raise InvalidRequestError(f"the {modality} warm start file {path} is not the one recorded for collection "
                                  f"{collection.name!r} (its SHA-256 differs): fit it again")
    return WarmStart.load(io.BytesIO(data), map_location=device, name=path)
