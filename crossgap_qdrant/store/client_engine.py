"""The qdrant-client engine: a Qdrant server or cluster by URL, ":memory:", or local mode on a folder.

Every call goes through :func:`~crossgap_qdrant.store.connection.call_with_retries`: server calls are retried on
transient errors within the policy's total deadline (a call that hangs is abandoned at the deadline); calls
into ":memory:" or local mode run once in the caller's thread. Errors name the location with credentials
removed and describe server errors by status, never by response body.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
from typing import Any, Callable, Mapping, Sequence, TypeVar

from qdrant_client import QdrantClient, models

from crossgap_qdrant.store.collection import Collection, CollectionSchema, VectorSpec
from crossgap_qdrant.store.connection import (
    QdrantServerError,
    RetryPolicy,
    call_with_retries,
    describe_error,
    redact,
)
from crossgap_qdrant.store.errors import (
    CollectionClosedError,
    CollectionNotFoundError,
    InvalidRequestError,
    SchemaMismatchError,
    StorageFullError,
)
from crossgap_qdrant.store.ids import normalize_point_id

logger = logging.getLogger(__name__)
T = TypeVar("T")


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower()


class ClientCollection(Collection):
    """One collection through a ``QdrantClient``.

    Args:
        client: the client (built by :func:`~crossgap_qdrant.store.engines.open_collection` or the caller's own).
        name: the collection name.
        location: where the client points, for messages (redacted here again).
        retry: retries and total deadline of each call (server locations).
        server: the client talks to a server (calls are retried within the deadline in a watchdog thread).
        owns_client: close the client in :meth:`close` (False for a client the caller passed).
        folder: local mode's folder (named when its disk is full).
    """

    engine = "qdrant-client"
    supports_formula = True  # servers since v1.14, and qdrant-client's local mode

    def __init__(self, client: QdrantClient, name: str, *, location: str, retry: RetryPolicy | None = RetryPolicy(),
                 server: bool = False, owns_client: bool = True, folder: str | None = None):
        self.client = client
        self.name = name
        self.location = redact(location)
        self.retry = retry
        self.server = server
        self.owns_client = owns_client
        self.folder = folder
        self._closed = False

    @property
    def files_folder(self) -> str | None:
        """Local mode: <folder>/crossgap_files/<collection> (beside qdrant-client's own files); else None."""
        return os.path.join(self.folder, "crossgap_files", self.name) if self.folder else None

    def __repr__(self) -> str:
        return f"ClientCollection({self.location!r}, {self.name!r})"

    def __enter__(self) -> "ClientCollection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        if self._closed:
            raise CollectionClosedError(f"collection {self.name!r} at {self.location} was closed; open it again")
        full_what = f"{what} ({self.location}, collection {self.name!r})"
        try:
            return call_with_retries(full_what, fn, self.retry if self.server else None,
                                     enforce_deadline=self.server)
        except QdrantServerError as exc:
            if exc.status_code == 404:
                raise CollectionNotFoundError(str(exc)) from None
            raise
        except Exception as exc:
            if _is_disk_full(exc):
                where = self.folder or self.location
                raise StorageFullError(
                    errno.ENOSPC,
                    f"the disk under {where} is full ({what}, collection {self.name!r}); nothing stored before "
                    "this write was lost. Free some space (or move the folder) and run the same command again."
                ) from None
            raise

    # --------------------------------------------------------------------------------- schema
    def exists(self) -> bool:
        return bool(self._call("check the collection", lambda: self.client.collection_exists(self.name)))

    def create(self, vectors: Mapping[str, int], metadata: Mapping[str, Any], *, on_disk: bool | None = None,
               quantization_config: Any = None, shard_number: int | None = None,
               replication_factor: int | None = None) -> None:
        if not vectors:
            raise InvalidRequestError("a collection needs at least one named vector")
        config = {name: models.VectorParams(size=int(size), distance=models.Distance.COSINE, on_disk=on_disk)
                  for name, size in vectors.items()}
        try:
            self._call("create the collection", lambda: self.client.create_collection(
                collection_name=self.name, vectors_config=config, shard_number=shard_number,
                replication_factor=replication_factor, quantization_config=quantization_config,
                metadata=dict(metadata) or None))
        except QdrantServerError as exc:
            # 409 after a retry: the first attempt created it but its answer was lost. Carry on when what
            # exists is what was asked for; anything else (another creator's collection) stays an error.
            if exc.status_code != 409 or not self._created_as(vectors, metadata):
                raise

    def _created_as(self, vectors: Mapping[str, int], metadata: Mapping[str, Any]) -> bool:
        schema = self.schema()
        return ({n: v.size for n, v in schema.vectors.items()} == {n: int(v) for n, v in vectors.items()}
                and all(schema.metadata.get(k) == v for k, v in metadata.items()))

    def schema(self) -> CollectionSchema:
        try:
            info = self._call("read the collection", lambda: self.client.get_collection(self.name))
        except ValueError as exc:  # local mode: "Collection ... not found"
            if "not found" not in str(exc):
                raise
            raise CollectionNotFoundError(
                f"collection {self.name!r} at {self.location} does not exist: nothing is created by a read. "
                "Ingest into it first.") from None
        params = info.config.params.vectors
        if isinstance(params, Mapping):
            vectors = {name: VectorSpec(size=p.size, distance=_distance(p.distance)) for name, p in params.items()}
            unnamed = False
        else:
            vectors = {"": VectorSpec(size=params.size, distance=_distance(params.distance))} if params else {}
            unnamed = True
        quantized = info.config.quantization_config is not None or (
            isinstance(params, Mapping) and any(p.quantization_config is not None for p in params.values()))
        metadata = {k: v for k, v in (info.config.metadata or {}).items() if v is not None}
        return CollectionSchema(vectors=vectors, metadata=metadata, quantized=quantized, unnamed=unnamed)

    def add_vectors(self, vectors: Mapping[str, int]) -> None:
        have = self.schema().vectors
        for name, size in vectors.items():
            if name in have:
                if have[name].size != size:
                    raise SchemaMismatchError(f"collection {self.name!r} at {self.location}: vector {name!r} has "
                                              f"size {have[name].size}, not {size}")
                continue
            config = models.DenseVectorNameConfig(
                dense=models.DenseVectorConfig(size=int(size), distance=models.Distance.COSINE))
            self._call(f"add the named vector {name!r}", lambda n=name, c=config: self.client.create_vector_name(
                collection_name=self.name, vector_name=n, vector_name_config=c))

    def set_metadata(self, metadata: Mapping[str, Any]) -> None:
        # Qdrant merges metadata keys: keys that are no longer wanted are set to null (schema() drops them)
        old = self.schema().metadata
        update = {**{key: None for key in old if key not in metadata}, **dict(metadata)}
        self._call("record the collection metadata",
                   lambda: self.client.update_collection(collection_name=self.name, metadata=update))

    # --------------------------------------------------------------------------------- points
    def upsert(self, points: Sequence[models.PointStruct]) -> None:
        if points:
            self._call(f"write {len(points)} point(s)",
                       lambda: self.client.upsert(collection_name=self.name, points=list(points), wait=True))

    def update_vectors(self, points: Sequence[models.PointVectors]) -> None:
        if points:
            self._call(f"write vectors of {len(points)} point(s)", lambda: self.client.update_vectors(
                collection_name=self.name, points=list(points), wait=True))

    def set_payload(self, ids: Sequence[Any], payload: Mapping[str, Any]) -> None:
        if ids:
            self._call(f"write the payload of {len(ids)} point(s)", lambda: self.client.set_payload(
                collection_name=self.name, payload=dict(payload), points=[normalize_point_id(i) for i in ids],
                wait=True))

    def set_payloads(self, items: Sequence[tuple[Any, Mapping[str, Any]]]) -> None:
        step = 256
        for start in range(0, len(items), step):
            chunk = items[start : start + step]
            operations = [models.SetPayloadOperation(set_payload=models.SetPayload(payload=dict(payload),
                                                                                  points=[normalize_point_id(point_id)]))
                          for point_id, payload in chunk]
            self._call(f"write the payload of {len(chunk)} point(s)", lambda: self.client.batch_update_points(
                collection_name=self.name, update_operations=operations, wait=True))

    def retrieve(self, ids: Sequence[Any], *, with_payload: bool | Sequence[str] = False,
                 with_vectors: bool | Sequence[str] = False) -> list[models.Record]:
        if not ids:
            return []
        return self._call("read points", lambda: self.client.retrieve(
            collection_name=self.name, ids=[normalize_point_id(i) for i in ids], with_payload=_selector(with_payload),
            with_vectors=_selector(with_vectors)))

    def scroll(self, *, scroll_filter: models.Filter | None = None, limit: int = 256, offset: Any = None,
               with_payload: bool | Sequence[str] = True,
               with_vectors: bool | Sequence[str] = False) -> tuple[list[models.Record], Any]:
        return self._call("scroll points", lambda: self.client.scroll(
            collection_name=self.name, scroll_filter=scroll_filter, limit=limit, offset=offset,
            with_payload=_selector(with_payload), with_vectors=_selector(with_vectors)))

    def count(self, count_filter: models.Filter | None = None) -> int:
        return self._call("count points", lambda: self.client.count(
            collection_name=self.name, count_filter=count_filter, exact=True)).count

    def query(self, requests: Sequence[models.QueryRequest]) -> list[list[models.ScoredPoint]]:
        if not requests:
            return []
        responses = self._call("query points", lambda: self.client.query_batch_points(
            collection_name=self.name, requests=list(requests)))
        return [response.points for response in responses]

    def drop(self) -> None:
        try:
            if self.exists():
                self._call("delete the collection", lambda: self.client.delete_collection(self.name))
            folder = self.files_folder
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        finally:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.owns_client:
            try:
                self.client.close()
            except Exception as exc:  # closing must not hide the error that led here
                logger.debug("closing the Qdrant client of %s failed: %s", self.location, describe_error(exc))


def _selector(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return bool(value)
    return list(value)


def _distance(distance: Any) -> str:
    return distance.value if hasattr(distance, "value") else str(distance)
