"""Backfill: the inverted vectors of stored points that lack them, one disjoint part of the points per worker.

A worker takes part ``index`` of ``total``: Qdrant's slice condition (points split by a hash of their id) where
the engine evaluates it, else the same split computed here from the id (:func:`id_part`). It pages through the
points of its part that hold the native vector but lack the inverted one, inverts each page, and writes the
new vector with ``update_vectors`` only (never an upsert: the user's native vectors and payloads stay as they
are). Because the filter names the missing vector, rerunning the same command after any crash resumes where
it stopped; a page written twice (a retried task) writes the same vectors again, which is harmless.

On a Qdrant server the target vector's HNSW graph is not built while the backfill writes
(:func:`deferred_index`: ``m=0`` on that vector) and is built once after; on Edge, indexes are built by
``crossgap-qdrant optimize`` (searches stay exact until then). Ray runs many workers:
crossgap_qdrant.store.backfill_ray.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from qdrant_client import models
from tqdm.auto import tqdm

from crossgap_qdrant.store.collection import Collection
from crossgap_qdrant.store.encoder import Encoder, unit_vectors
from crossgap_qdrant.store.errors import InvalidRequestError
from crossgap_qdrant.store.ids import normalize_point_id
from crossgap_qdrant.store.schema import VectorNames, check_modality

logger = logging.getLogger(__name__)


@dataclass
class BackfillReport:
    """What a backfill (or one worker's part of it) did.

    Attributes:
        written: inverted vectors written.
        failed: (point id, reason) for stored native vectors that are not finite non-zero rows (skipped).
        seconds: wall time.
        partition: "slice" (Qdrant's slice condition) or "id-hash" (computed from the ids here).
        seconds_start_up: on Ray, seconds until the first actor had loaded the model (the cluster's start
            included); 0 in-process.
    """

    written: int = 0
    failed: list[tuple[Any, str]] = field(default_factory=list)
    seconds: float = 0.0
    partition: str = "slice"
    seconds_start_up: float = 0.0

    def add(self, other: BackfillReport) -> None:
        self.written += other.written
        self.failed += other.failed
        self.seconds = max(self.seconds, other.seconds)
        self.partition = other.partition


def id_part(point_id: Any, total: int) -> int:
    """The part (0 .. total-1) of a point id when the engine has no slice condition: a stable hash of the id."""
    digest = hashlib.blake2b(str(normalize_point_id(point_id)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % total


def lacking_filter(names: VectorNames, modality: str) -> models.Filter:
    """Points that hold the native vector of ``modality`` but not the inverted one."""
    return models.Filter(must=[models.HasVectorCondition(has_vector=names.native(modality))],
                         must_not=[models.HasVectorCondition(has_vector=names.inverted(modality))])


def supports_slices(collection: Collection) -> bool:
    """Whether the engine evaluates Qdrant's slice condition (servers since 1.19, Edge, local mode)."""
    try:
        collection.count(models.Filter(must=[models.SliceCondition(slice=models.Slice(total=1, index=0))]))
        return True
    except Exception as exc:  # noqa: BLE001 - an older server answers 400, other engines their own errors
        logger.debug("no slice condition on %s (%s): partitioning by id hash", collection.location, exc)
        return False


def missing_count(collection: Collection, names: VectorNames, modality: str) -> int:
    """Points of ``modality`` that lack their inverted vector (a count without a negated condition, which an
    adopted collection with a companion answers from two counts)."""
    native = models.HasVectorCondition(has_vector=names.native(modality))
    inverted = models.HasVectorCondition(has_vector=names.inverted(modality))
    return collection.count(models.Filter(must=[native])) - collection.count(models.Filter(must=[native, inverted]))


class BackfillWorker:
    """Inverts and writes the missing vectors of one part of a collection's points.

    Args:
        collection: the collection (or an adopted one's companion view).
        encoder: inverts native vectors (its OTI / OVI settings, warm start included).
        names: the store's vector names.
        modality: "image" (OTI) or "text" (OVI).
        batch_size: points read, inverted and written together.
        slices: use Qdrant's slice condition (None: ask the engine once).
    """

    def __init__(self, collection: Collection, encoder: Encoder, names: VectorNames, modality: str = "image", *,
                 batch_size: int = 64, slices: bool | None = None):
        if batch_size < 1:
            raise InvalidRequestError(f"batch_size must be >= 1, got {batch_size}")
        self.collection, self.encoder, self.names = collection, encoder, names
        self.modality = check_modality(modality)
        self.batch_size = batch_size
        self.slices = supports_slices(collection) if slices is None else slices

    def pending(self, part: int = 0, total: int = 1, report: BackfillReport | None = None
                ) -> Iterator[tuple[list[Any], torch.Tensor]]:
        """Pages of (point ids, unit native vectors [B, E]) of part ``part`` of ``total`` lacking the target.

        Offset pagination in id order: points written behind the offset leave the filter without shifting it.
        """
        if not 0 <= part < total:
            raise InvalidRequestError(f"part must be in [0, {total}), got {part}")
        native = self.names.native(self.modality)
        flt = lacking_filter(self.names, self.modality)
        if total > 1 and self.slices:
            flt.must.append(models.SliceCondition(slice=models.Slice(total=total, index=part)))
        offset = None
        while True:
            records, offset = self.collection.scroll(scroll_filter=flt, limit=self.batch_size, offset=offset,
                                                     with_payload=False, with_vectors=[native])
            ids, feats = [], []
            for r in records:
                if total > 1 and not self.slices and id_part(r.id, total) != part:
                    continue
                pid = normalize_point_id(r.id)
                try:
                    feats.append(unit_vectors(torch.tensor(r.vector[native], dtype=torch.float32),
                                              self.encoder.dim, f"stored {native!r} vector of point {pid}", "")[0])
                    ids.append(pid)
                except (TypeError, ValueError) as exc:
                    if report is not None:
                        report.failed.append((pid, str(exc)))
            if ids:
                yield ids, torch.stack(feats)
            if offset is None:
                return

    def invert(self, ids: list[Any], features: torch.Tensor) -> torch.Tensor:
        """[B, E] inverted unit vectors of the points ``ids`` with native vectors ``features`` [B, E]."""
        return self.encoder.invert(self.modality, features, [str(p) for p in ids])

    def write(self, ids: list[Any], inverted: torch.Tensor) -> None:
        """Writes the inverted vectors [B, E] of ``ids`` (``update_vectors``: nothing else of a point changes)."""
        name = self.names.inverted(self.modality)
        rows = inverted.detach().to(torch.float32).cpu().numpy().tolist()
        self.collection.update_vectors([models.PointVectors(id=pid, vector={name: row}) for pid, row in zip(ids, rows)])

    def run(self, part: int = 0, total: int = 1, progress: Callable[[int], None] | None = None) -> BackfillReport:
        """Backfills part ``part`` of ``total``; ``progress(n)`` after each written page."""
        report = BackfillReport(partition="slice" if self.slices or total == 1 else "id-hash")
        start = time.perf_counter()
        for ids, feats in self.pending(part, total, report):
            self.write(ids, self.invert(ids, feats))
            report.written += len(ids)
            if progress is not None:
                progress(len(ids))
        report.seconds = time.perf_counter() - start
        return report


@contextlib.contextmanager
def deferred_index(collection: Collection, vector: str):
    """On a Qdrant server: no HNSW graph for ``vector`` while the block writes (``m=0``), built once after with
    the collection's previous setting. Elsewhere nothing changes (Edge builds indexes on ``optimize``)."""
    client = getattr(collection, "client", None)
    if not getattr(collection, "server", False) or client is None:
        yield
        return
    info = client.get_collection(collection.name)
    params = info.config.params.vectors
    previous = params.get(vector).hnsw_config if isinstance(params, dict) and vector in params else None
    m = previous.m if previous is not None and previous.m is not None else info.config.hnsw_config.m
    client.update_collection(collection.name, vectors_config={
        vector: models.VectorParamsDiff(hnsw_config=models.HnswConfigDiff(m=0))})
    try:
        yield
    finally:
        client.update_collection(collection.name, vectors_config={
            vector: models.VectorParamsDiff(hnsw_config=models.HnswConfigDiff(m=m))})


def backfill(collection: Collection, encoder: Encoder, names: VectorNames, modality: str = "image", *,
             batch_size: int = 64, workers: int = 1, progress: bool = True) -> BackfillReport:
    """Backfills in this process: ``workers`` parts one after the other (the same split Ray runs in parallel).

    Returns:
        The report over every part.
    """
    worker = BackfillWorker(collection, encoder, names, modality, batch_size=batch_size)
    report = BackfillReport(partition="slice" if worker.slices or workers == 1 else "id-hash")
    target = getattr(collection, "companion", collection)  # the index to defer is where the vector is written
    with deferred_index(target, names.inverted(modality)), \
            tqdm(total=missing_count(collection, names, modality), desc=f"backfill {modality}s", unit="pt",
                 disable=not progress, dynamic_ncols=True) as bar:
        for part in range(workers):
            report.add(worker.run(part, workers, bar.update))
    return report
