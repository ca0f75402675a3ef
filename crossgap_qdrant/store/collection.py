"""The model-free collection layer: one interface, one class per engine.

The store above speaks qdrant-client's types (``models.PointStruct``, ``models.Filter``,
``models.QueryRequest``, ``models.Record``, ``models.ScoredPoint``) to every engine; an engine translates them
where it has types of its own. Point-id queries never reach this layer: the store reads the point's vectors
(:meth:`Collection.retrieve`) and queries by vector, which every engine supports.

Engines:
    qdrant-edge     Qdrant's Rust engine in the process; the default for a folder (crossgap_qdrant.store.edge).
    qdrant-client   a server or cluster by URL, ":memory:", or local mode when asked for explicitly
                    (crossgap_qdrant.store.client_engine).
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

from qdrant_client import models

logger = logging.getLogger(__name__)


def close_keeping(closable: Any, error: BaseException | None) -> None:
    """Closes ``closable`` on the way out of a ``with`` block. When the block already failed with ``error``, a
    failure to close is logged instead of raised, so the caller sees the first error (a full disk makes both
    the write and the flush on close fail)."""
    if error is None:
        closable.close()
        return
    try:
        closable.close()
    except Exception as close_error:
        logger.warning("closing %s after an error also failed: %s", getattr(closable, "name", closable),
                       str(close_error).splitlines()[0] if str(close_error) else type(close_error).__name__)


@dataclass(frozen=True)
class VectorSpec:
    """One named vector of a collection."""

    size: int
    distance: str = "Cosine"


@dataclass
class CollectionSchema:
    """What a collection holds, as far as the store needs to know.

    Attributes:
        vectors: named vectors (empty with ``unnamed`` set for a single unnamed vector).
        metadata: the collection's metadata ({} when none was recorded).
        quantized: the collection has a quantization config (queries then rescore).
        unnamed: the collection has a single unnamed vector (made elsewhere; not usable by the store).
    """

    vectors: dict[str, VectorSpec] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    quantized: bool = False
    unnamed: bool = False


class Collection(abc.ABC):
    """One Qdrant collection on one engine. Reads never create anything; writes are durable on return.

    Attributes:
        engine: "qdrant-edge" or "qdrant-client".
        name: the collection name.
        location: where it lives, with credentials removed (safe to print).
        supports_formula: the engine runs Formula queries (re-scoring prefetched candidates from $score and
            payload values); otherwise the store re-scores on the client.
    """

    engine: str
    name: str
    location: str

    @property
    def files_folder(self) -> str | None:
        """A folder that belongs to the collection, for files kept with it (e.g. a fitted warm start); None
        where the collection lives on a server or in memory (the caller then names a path)."""
        return None
    supports_formula: bool = False

    @abc.abstractmethod
    def exists(self) -> bool:
        """True when the collection exists (never creates it or its folder)."""

    @abc.abstractmethod
    def create(self, vectors: Mapping[str, int], metadata: Mapping[str, Any], *, on_disk: bool | None = None,
               quantization_config: Any = None, shard_number: int | None = None,
               replication_factor: int | None = None) -> None:
        """Creates the collection: one Cosine named vector per entry of ``vectors`` ({name: size})."""

    @abc.abstractmethod
    def schema(self) -> CollectionSchema:
        """The collection's vectors, metadata and quantization. Raises CollectionNotFoundError if missing."""

    @abc.abstractmethod
    def add_vectors(self, vectors: Mapping[str, int]) -> None:
        """Adds Cosine named vectors ({name: size}) to an existing collection."""

    @abc.abstractmethod
    def set_metadata(self, metadata: Mapping[str, Any]) -> None:
        """Replaces the collection's metadata (atomically: a crash leaves the old or the new)."""

    @abc.abstractmethod
    def upsert(self, points: Sequence[models.PointStruct]) -> None:
        """Writes whole points (vectors + payload); durable when it returns."""

    @abc.abstractmethod
    def update_vectors(self, points: Sequence[models.PointVectors]) -> None:
        """Adds or replaces some named vectors of existing points, keeping the others and the payload."""

    @abc.abstractmethod
    def set_payload(self, ids: Sequence[Any], payload: Mapping[str, Any]) -> None:
        """Merges ``payload`` into the payload of the given points."""

    def set_payloads(self, items: Sequence[tuple[Any, Mapping[str, Any]]]) -> None:
        """Merges a payload of its own into each of several points: ``[(id, payload), ...]``."""
        for point_id, payload in items:
            self.set_payload([point_id], payload)

    @abc.abstractmethod
    def retrieve(self, ids: Sequence[Any], *, with_payload: bool | Sequence[str] = False,
                 with_vectors: bool | Sequence[str] = False) -> list[models.Record]:
        """The stored points among ``ids`` (absent ones are left out), in no particular order."""

    @abc.abstractmethod
    def scroll(self, *, scroll_filter: models.Filter | None = None, limit: int = 256, offset: Any = None,
               with_payload: bool | Sequence[str] = True,
               with_vectors: bool | Sequence[str] = False) -> tuple[list[models.Record], Any]:
        """One page of points in id order and the offset of the next page (None after the last)."""

    def pages(self, scroll_filter: models.Filter | None = None, *, page_size: int = 256, limit: int | None = None,
              with_payload: bool | Sequence[str] = False,
              with_vectors: bool | Sequence[str] = False) -> Iterator[list[models.Record]]:
        """Every page of points matching the filter, in id order; with ``limit``, pages until that many points.

        Offset pagination: points that a caller changes so that they leave the filter are not skipped or
        repeated, because the offset is a point id, not a position.
        """
        offset, seen = None, 0
        while limit is None or seen < limit:
            size = page_size if limit is None else min(page_size, limit - seen)
            records, offset = self.scroll(scroll_filter=scroll_filter, limit=size, offset=offset,
                                          with_payload=with_payload, with_vectors=with_vectors)
            seen += len(records)
            yield records
            if offset is None:
                return

    @abc.abstractmethod
    def count(self, count_filter: models.Filter | None = None) -> int:
        """Exact number of points (matching the filter)."""

    @abc.abstractmethod
    def query(self, requests: Sequence[models.QueryRequest]) -> list[list[models.ScoredPoint]]:
        """Runs vector queries (nearest, or prefetch + fusion), one result list per request.

        Requests carry a dense vector (list of floats) as ``query``, or a FusionQuery (or, where
        :attr:`supports_formula`, a FormulaQuery) over ``prefetch``es that carry dense vectors; point-id
        queries and ``lookup_from`` are not used.
        """

    def info(self) -> dict[str, Any]:
        """Engine, name, location, point count, named vectors (size, distance, points holding each),
        quantization and metadata: what the collection is, read without a model."""
        schema = self.schema()
        vectors = {}
        for vector_name, spec in schema.vectors.items():
            has = models.Filter(must=[models.HasVectorCondition(has_vector=vector_name)])
            vectors[vector_name] = {"size": spec.size, "distance": spec.distance, "points": self.count(has)}
        return {"collection": self.name, "engine": self.engine, "location": self.location, "points": self.count(),
                "vectors": vectors, "quantization": schema.quantized, "metadata": schema.metadata}

    def optimize(self) -> None:
        """Builds indexes after a large ingest where the engine needs to be told (Edge); a no-op elsewhere."""

    @abc.abstractmethod
    def drop(self) -> None:
        """Deletes the collection with everything in it (and its files), then closes it."""

    @abc.abstractmethod
    def close(self) -> None:
        """Releases the connection or the folder's lock; idempotent."""
