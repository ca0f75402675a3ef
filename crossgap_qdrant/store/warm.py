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
# Stored vectors a fit inverts exactly by default: an exact text inversion is 1000 full vision-tower steps
# (about 7 s per text on one core for the demo model, minutes for ViT-B-32), an image one 150 cached text steps.
DEFAULT_SAMPLE = {"image": 2000, "text": 200}


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
    """Where the warm start of ``modality`` is written: ``path``, else the collection's own folder. A collection
    with a folder keeps its files there: a ``path`` outside it is refused."""
    folder = collection.files_folder
    if path is not None:
        target = os.path.abspath(os.fspath(path))
        if folder is not None:
            _confined(collection, modality, target)
        return target
    if folder is None:
        raise InvalidRequestError(f"collection {collection.name!r} lives on {collection.location}, which keeps no "
                                  "files: pass "
                                  "path= (CLI: fit-warm-start --file PATH) to say where the warm start is written")
    return os.path.join(folder, f"warm_start_{KIND[modality]}.pt")


def _confined(collection: Collection, modality: str, path: str) -> str:
    """``path`` when it lies inside the collection's folder; InvalidRequestError otherwise (a record naming
    ../../x.pt or another absolute path is not followed)."""
    folder = os.path.realpath(collection.files_folder)
    real = os.path.realpath(path)
    if os.path.commonpath([folder, real]) != folder or real == folder:
        raise InvalidRequestError(f"the {modality} warm start of collection {collection.name!r} must lie in the "
                                  f"collection's folder {folder}, not at {path}: fit it again without a path "
                                  "(crossgap-qdrant fit-warm-start)")
    return real


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
    """Saves ``warm`` at ``target`` and records it with ``write_record(sha256)``, so that a crash at any moment
    leaves a usable warm start: the new file is written beside the target, the record naming its SHA-256 is
    written next (the commit), and one atomic replace puts the file in place. A crash between the record and
    the replace is completed by the next :func:`load_recorded` (the new file is found by its SHA-256); a failed
    record leaves the previous file and record untouched. Leftovers of earlier crashes are removed."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    new = f"{target}{NEW}{os.getpid()}"
    try:
        warm.save(new)
        _fsync(new)
        digest = _sha256(new)
        write_record(digest)
    except BaseException:
        _remove(new)
        raise
    os.replace(new, target)
    _fsync_folder(os.path.dirname(target))
    clean_leftovers(target)


NEW = ".new-"
"""Marks a warm start written beside its target, before the atomic replace (followed by the writer's PID)."""


def clean_leftovers(target: str, keep: str | None = None) -> None:
    """Removes what interrupted saves left beside ``target`` (``.new-PID`` files of processes no longer running,
    ``.previous*`` and ``.tmp`` files), except ``keep``."""
    folder, base = os.path.dirname(target) or ".", os.path.basename(target)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        path = os.path.join(folder, name)
        if not name.startswith(base) or name == base or path == keep:
            continue
        suffix = name[len(base):]
        if suffix.startswith(NEW):
            pid = suffix[len(NEW):]
            if pid.isdigit() and int(pid) != os.getpid() and _running(int(pid)):
                continue  # another process is saving right now
        elif not (suffix.startswith(".previous") or suffix.endswith(".tmp")):
            continue
        _remove(path)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _fsync(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _complete_interrupted_save(path: str, sha256: str | None) -> None:
    """Puts in place a warm start whose record was written but whose replace a crash prevented."""
    folder, base = os.path.dirname(path) or ".", os.path.basename(path)
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        candidate = os.path.join(folder, name)
        if name.startswith(base + NEW) and sha256 and _sha256(candidate) == sha256:
            os.replace(candidate, path)
            _fsync_folder(folder)
            return


def settle(collection: Collection, recorded: dict[str, Any]) -> None:
    """On opening: completes saves a crash interrupted after their record and removes their leftovers, for every
    warm start recorded in the collection's folder (nothing for collections without one)."""
    folder = collection.files_folder
    if folder is None or not os.path.isdir(folder):
        return
    for modality, record in recorded.items():
        name = record.get("file") if isinstance(record, dict) else None
        if not isinstance(name, str) or os.path.isabs(name):
            continue
        path = os.path.join(folder, name)
        try:
            path = _confined(collection, modality, path)
        except ValueError:
            continue  # refused when it is used
        if not os.path.isfile(path) or _sha256(path) != record.get("sha256"):
            _complete_interrupted_save(path, record.get("sha256"))
        clean_leftovers(path)


def load_recorded(collection: Collection, modality: str, record: dict[str, Any], device: Any = "cpu"):
    """The warm start a metadata entry names, checked against its recorded SHA-256, on ``device``."""
    path = record["file"]
    folder = collection.files_folder
    if not os.path.isabs(path):
        if folder is None:
            raise FileNotFoundError(f"the {modality} warm start of collection {collection.name!r} was recorded as "
                                    f"{path!r} in a folder this engine does not have")
        path = os.path.join(folder, path)
    if folder is not None:
        path = _confined(collection, modality, path)
    if not os.path.isfile(path) or _sha256(path) != record.get("sha256"):
        _complete_interrupted_save(path, record.get("sha256"))
    clean_leftovers(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the {modality} warm start of collection {collection.name!r} is missing: {path} "
                                "(fit it again: crossgap-qdrant fit-warm-start)")
    with open(path, "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != record.get("sha256"):
        raise InvalidRequestError(f"the {modality} warm start file {path} is not the one recorded for collection "
                                  f"{collection.name!r} (its SHA-256 differs): fit it again")
    return WarmStart.load(io.BytesIO(data), map_location=device, name=path)
