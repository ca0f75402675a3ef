"""The Edge engine: Qdrant's own Rust engine (qdrant-edge-py) in the process, one shard per collection.

Layout of a folder (``location``)::

    <folder>/<collection>/shard/            the EdgeShard (segments, write-ahead log, edge_config.json)
    <folder>/<collection>/collection.json   the collection's metadata (written atomically)
    <folder>/<collection>/*                 files kept with the collection (e.g. warm_start_oti.pt)

Edge has no collections and no collection metadata of its own: the shard holds the vectors and payload, and
the sidecar JSON holds the metadata (the recorded model id). The sidecar is replaced atomically (a temporary
file, fsync, ``os.replace``), so a crash or a full disk leaves the old or the new copy, never an empty file.

Search: Edge scans segments that have no HNSW index yet (exact), and builds HNSW only when told to
(:meth:`EdgeCollection.optimize`; there is no background optimiser). Below ``exact_search_below`` points
every query is a full scan (exact and, at that size, about as fast as HNSW).

What Edge cannot do (refused with a clear message by crossgap_qdrant.store.edge_filters): queries by point id
and ``lookup_from`` (the store reads the vector, then queries by vector), shard keys, sharding or replication,
product quantization. One process may open a folder's shard at a time (an exclusive lock).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Mapping, Sequence

import qdrant_edge as qe
from qdrant_client import models

from crossgap_qdrant.store.collection import Collection, CollectionSchema, VectorSpec
from crossgap_qdrant.store.edge_filters import (
    client_point_id,
    edge_filter,
    edge_query,
    edge_with_payload,
    edge_with_vector,
)
from crossgap_qdrant.store.errors import (
    CollectionClosedError,
    CollectionNotFoundError,
    CorruptMetadataError,
    InvalidRequestError,
    ReadOnlyStoreError,
    SchemaMismatchError,
    StorageFullError,
    StoreLockedError,
)
from crossgap_qdrant.store.ids import normalize_point_id

logger = logging.getLogger(__name__)

EXACT_SEARCH_BELOW = 20_000
"""Collections with fewer points are searched exactly. Measured with benchmarks/bench_store.py (512-d, two named
vectors per point, 2 shared vCPUs): at 10k points a full scan took 2-5 ms and the HNSW path 13-21 ms; at 100k the
scan 14 ms and HNSW 3 ms."""

MIN_FREE_BYTES = 96 * 2**20
"""Writes are refused while less than this (plus four times the batch) is free under the folder.

Edge memory-maps its write-ahead log (32 MiB files, written sparse): a write that finds the disk full
kills the process with SIGBUS rather than raising (measured on a full tmpfs; the points stored before
survived). Checking the free space first turns that into a StorageFullError.
"""

SHARD_DIR = "shard"
SIDECAR = "collection.json"
SIDECAR_FORMAT = 1
_DISTANCES = {"Cosine": qe.Distance.Cosine, "Euclid": qe.Distance.Euclid, "Dot": qe.Distance.Dot,
              "Manhattan": qe.Distance.Manhattan}
_DISK_FULL_TEXT = ("no space left on device", "os error 28", "disk is full", "disk quota exceeded", "os error 122")
_LOCKED_TEXT = ("wouldblock", "os error 11", "resource temporarily unavailable", "already locked")
_READ_ONLY_TEXT = ("read-only file system", "os error 30", "permission denied", "os error 13")


def write_json_atomic(path: str, data: Any) -> None:
    """Replaces ``path`` with ``data`` as JSON: the old or the new content survives a crash, never a part."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # the rename itself is durable once the directory is synced
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def apply_update(shard: qe.EdgeShard, operation: qe.UpdateOperation) -> None:
    """Applies one update to a shard (a seam: tests patch it to simulate a full disk)."""
    shard.update(operation)


def free_bytes(path: str) -> int:
    """Free bytes on the file system under ``path`` (a seam: tests simulate a full disk)."""
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)  # a folder about to be created: its nearest existing parent
    return shutil.disk_usage(path).free


def _disk_usage(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            total += getattr(st, "st_blocks", 0) * 512 or st.st_size
    return total


def optimize_shard(shard: qe.EdgeShard) -> bool:
    """Runs the shard's optimisers until none is planned (a seam: tests count the runs)."""
    return shard.optimize()


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(text in str(exc).lower() for text in _DISK_FULL_TEXT)


def _is_locked(exc: BaseException) -> bool:
    return any(text in str(exc).lower() for text in _LOCKED_TEXT)


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise InvalidRequestError(f"collection name {name!r} is not a plain folder name; use letters, digits, '-' and "
                                  "'_'")


class EdgeCollection(Collection):
    """One collection on the Edge engine, in ``<folder>/<name>/``.

    Args:
        folder: the folder that holds the collections (it is not created here; :meth:`create` makes it).
        name: the collection name (a plain folder name).
        exact_search_below: collections with fewer points are searched exactly; 0 always uses the index
            once one is built.
    """

    engine = "qdrant-edge"
    supports_formula = True  # translated by edge_filters.edge_formula

    def __init__(self, folder: str, name: str, *, exact_search_below: int = EXACT_SEARCH_BELOW):
        _check_name(name)
        self.folder = os.path.abspath(os.fspath(folder))
        self.name = name
        self.location = self.folder
        self.exact_search_below = exact_search_below
        self.path = os.path.join(self.folder, name)
        self.shard_path = os.path.join(self.path, SHARD_DIR)
        self.sidecar_path = os.path.join(self.path, SIDECAR)
        self._shard_handle: qe.EdgeShard | None = None
        self._closed = False
        self._dirty = True  # optimize() once per opening even if nothing was written: the last run may have died
        self._points: int | None = None

    def __repr__(self) -> str:
        return f"EdgeCollection({self.folder!r}, {self.name!r})"

    @property
    def files_folder(self) -> str:
        return self.path

    def __enter__(self) -> "EdgeCollection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ opening, locking and writing
    def _where(self) -> str:
        return f"collection {self.name!r} in {self.folder}"

    def _open_error(self, exc: Exception) -> Exception:
        if _is_locked(exc):
            return StoreLockedError(
                f"the Qdrant folder {self.folder} (collection {self.name!r}) is already open in another client, in "
                "this or another process; Edge allows one at a time. Close the other one first "
                "(CrossModalStore.close() / Collection.close()), or run a Qdrant server for concurrent access.")
        if is_disk_full(exc):
            return self._full_error("opening the collection")
        if any(text in str(exc).lower() for text in _READ_ONLY_TEXT):
            return ReadOnlyStoreError(
                f"the Qdrant folder {self.folder} (collection {self.name!r}) cannot be written, and Qdrant's embedded "
                "engine writes to a collection's files even to read it: copy the folder somewhere writable "
                "(cp -r) and open the copy, or make it writable.")
        return exc

    def _full_error(self, what: str) -> StorageFullError:
        return StorageFullError(
            errno.ENOSPC,
            f"the disk under {self.folder} is full ({what}; collection {self.name!r}); nothing stored before "
            "this write was lost. Free some space (or move the folder) and run the same command again.")

    def _shard(self) -> qe.EdgeShard:
        if self._closed:
            raise CollectionClosedError(f"{self._where()} was closed; open it again")
        if self._shard_handle is None:
            if not self.exists():
                raise CollectionNotFoundError(
                    f"{self._where()} does not exist: nothing is created by a read. Ingest into it first.")
            try:
                self._shard_handle = qe.EdgeShard.load(self.shard_path)
            except Exception as exc:
                raise self._open_error(exc) from None
        return self._shard_handle

    def _ensure_space(self, what: str, needed: int = 0) -> None:
        free, wanted = free_bytes(self.folder), MIN_FREE_BYTES + 4 * needed
        if free < wanted:
            raise self._full_error(f"{what}: {free / 2**20:.0f} MiB free, Edge needs {wanted / 2**20:.0f} MiB of "
                                   "headroom to write safely")

    def _update(self, what: str, operation: qe.UpdateOperation, nbytes: int = 0) -> None:
        shard = self._shard()
        self._ensure_space(what, nbytes)
        try:
            apply_update(shard, operation)
        except Exception as exc:
            if is_disk_full(exc):
                raise self._full_error(what) from None
            raise
        self._dirty = True
        self._points = None

    def _write_sidecar(self, metadata: Mapping[str, Any], what: str) -> None:
        try:
            write_json_atomic(self.sidecar_path, {"format": SIDECAR_FORMAT, "metadata": dict(metadata)})
        except OSError as exc:
            if is_disk_full(exc):
                raise self._full_error(what) from None
            raise

    def _read_sidecar(self) -> dict[str, Any]:
        try:
            with open(self.sidecar_path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise CorruptMetadataError(
                f"the metadata file {self.sidecar_path} of {self._where()} cannot be read ({type(exc).__name__}: "
                f"{str(exc)[:120]}). The points are intact in {self.shard_path}; restore the file from a backup, "
                "or delete it to open the collection without metadata (the model id is then recorded again "
                "by the next ingest).") from None
        if not isinstance(data, dict) or not isinstance(data.get("metadata"), dict):
            raise CorruptMetadataError(
                f"the metadata file {self.sidecar_path} of {self._where()} is not a crossgap-qdrant sidecar "
                "(no 'metadata' object). Restore it from a backup, or delete it to open the collection without "
                "metadata.")
        return data["metadata"]

    def _read_config(self) -> dict[str, Any]:
        config_path = os.path.join(self.shard_path, "edge_config.json")
        try:
            with open(config_path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            raise CollectionNotFoundError(
                f"{self._where()} does not exist: nothing is created by a read. Ingest into it first.") from None
        except (OSError, ValueError) as exc:
            raise CorruptMetadataError(
                f"the Edge shard config {config_path} cannot be read ({type(exc).__name__}); the shard is "
                "damaged: restore the folder from a backup or a snapshot.") from None

    # --------------------------------------------------------------------------------- schema
    def exists(self) -> bool:
        return os.path.isfile(os.path.join(self.shard_path, "edge_config.json"))

    def create(self, vectors: Mapping[str, int], metadata: Mapping[str, Any], *, on_disk: bool | None = None,
               quantization_config: Any = None, shard_number: int | None = None,
               replication_factor: int | None = None) -> None:
        if self.exists():
            raise InvalidRequestError(f"{self._where()} already exists")
        for what, value in (("shard_number", shard_number), ("replication_factor", replication_factor)):
            if value not in (None, 1):
                raise InvalidRequestError(f"{what}={value} needs a Qdrant server: an Edge collection is one local "
                                          "shard")
        if not vectors:
            raise InvalidRequestError("a collection needs at least one named vector")
        memory = qe.Memory.Cold if on_disk else None
        config = qe.EdgeConfig(
            vectors={name: qe.EdgeVectorParams(size=int(size), distance=qe.Distance.Cosine, memory=memory)
                     for name, size in vectors.items()},
            quantization_config=_edge_quantization(quantization_config),
        )
        self._ensure_space("creating the collection")
        os.makedirs(self.path, exist_ok=True)
        # metadata first: a crash before the shard exists leaves a folder that exists() reports as absent
        self._write_sidecar(metadata, "recording the collection metadata")
        try:
            self._shard_handle = qe.EdgeShard.create(self.shard_path, config)
        except Exception as exc:
            raise self._open_error(exc) from None
        self._closed = False
        self._points = 0

    def schema(self) -> CollectionSchema:
        config = self._read_config()
        vectors = {name: VectorSpec(size=int(spec["size"]), distance=str(spec.get("distance", "Cosine")))
                   for name, spec in (config.get("vectors") or {}).items()}
        quantized = config.get("quantization_config") is not None or any(
            spec.get("quantization_config") is not None for spec in (config.get("vectors") or {}).values())
        return CollectionSchema(vectors=vectors, metadata=self._read_sidecar(), quantized=quantized,
                                unnamed="" in vectors)

    def add_vectors(self, vectors: Mapping[str, int]) -> None:
        have = self.schema().vectors
        for name, size in vectors.items():
            if name in have:
                if have[name].size != size:
                    raise SchemaMismatchError(
                        f"{self._where()}: vector {name!r} has size {have[name].size}, not {size}")
                continue
            self._update(f"adding vector {name!r}",
                         qe.UpdateOperation.create_dense_vector(name, int(size), qe.Distance.Cosine))

    def set_metadata(self, metadata: Mapping[str, Any]) -> None:
        self._shard()  # holds the folder's lock while the sidecar is replaced
        self._write_sidecar(metadata, "recording the collection metadata")

    # --------------------------------------------------------------------------------- points
    def upsert(self, points: Sequence[models.PointStruct]) -> None:
        if not points:
            return
        named = [_named_vectors(p.vector, p.id) for p in points]
        edge_points = [qe.Point(normalize_point_id(p.id), v, p.payload or {}) for p, v in zip(points, named)]
        self._update(f"writing {len(edge_points)} point(s)", qe.UpdateOperation.upsert_points(edge_points),
                     _batch_bytes(named))

    def update_vectors(self, points: Sequence[models.PointVectors]) -> None:
        if not points:
            return
        named = [_named_vectors(p.vector, p.id) for p in points]
        edge_points = [qe.PointVectors(normalize_point_id(p.id), v) for p, v in zip(points, named)]
        self._update(f"writing vectors of {len(edge_points)} point(s)",
                     qe.UpdateOperation.update_vectors(edge_points), _batch_bytes(named))

    def set_payload(self, ids: Sequence[Any], payload: Mapping[str, Any]) -> None:
        if not ids:
            return
        self._update(f"writing the payload of {len(ids)} point(s)",
                     qe.UpdateOperation.set_payload([normalize_point_id(i) for i in ids], dict(payload)))

    def retrieve(self, ids: Sequence[Any], *, with_payload: bool | Sequence[str] = False,
                 with_vectors: bool | Sequence[str] = False) -> list[models.Record]:
        if not ids:
            return []
        records = self._shard().retrieve([normalize_point_id(i) for i in ids], edge_with_payload(with_payload),
                                         edge_with_vector(with_vectors))
        return [_record(r, with_payload, with_vectors) for r in records]

    def scroll(self, *, scroll_filter: models.Filter | None = None, limit: int = 256, offset: Any = None,
               with_payload: bool | Sequence[str] = True,
               with_vectors: bool | Sequence[str] = False) -> tuple[list[models.Record], Any]:
        request = qe.ScrollRequest(offset=None if offset is None else normalize_point_id(offset), limit=limit,
                                   filter=edge_filter(scroll_filter), with_payload=edge_with_payload(with_payload),
                                   with_vector=edge_with_vector(with_vectors))
        records, next_offset = self._shard().scroll(request)
        return ([_record(r, with_payload, with_vectors) for r in records],
                None if next_offset is None else client_point_id(next_offset))

    def count(self, count_filter: models.Filter | None = None) -> int:
        if count_filter is None:
            return self._points_count()
        return self._shard().count(qe.CountRequest(exact=True, filter=edge_filter(count_filter)))

    def _points_count(self) -> int:
        if self._points is None:
            self._points = self._shard().count(qe.CountRequest(exact=True))
        return self._points

    def query(self, requests: Sequence[models.QueryRequest]) -> list[list[models.ScoredPoint]]:
        if not requests:
            return []
        exact = self._points_count() < self.exact_search_below
        edge_requests = [edge_query(r, exact=exact, where=f"request {i}") for i, r in enumerate(requests)]
        shard = self._shard()
        if len(edge_requests) == 1:
            results = [shard.query(edge_requests[0])]
        else:
            results = shard.query_batch(qe.QueryBatchRequest(edge_requests))
        return [[_scored(p, r.with_payload, r.with_vector) for p in points]
                for points, r in zip(results, requests)]

    # ------------------------------------------------------------------------------ maintenance
    def optimize(self) -> None:
        """Builds HNSW indexes and merges segments; returns at once when nothing was written since the last run.

        Blocking (Edge has no background optimiser): the store calls it after large ingests.
        """
        if not self._dirty:
            return
        # optimisers write new segments before dropping the old ones
        self._ensure_space("building the search index", _disk_usage(self.shard_path) // 4)
        try:
            changed = optimize_shard(self._shard())
        except Exception as exc:
            if is_disk_full(exc):
                raise self._full_error("building the search index") from None
            raise
        logger.debug("optimized %s: %s", self._where(), "segments rebuilt" if changed else "already optimal")
        self._dirty = False

    def indexed_vectors(self) -> int:
        """Vectors covered by an HNSW index (0 before :meth:`optimize` has built one)."""
        return self._shard().info().indexed_vectors_count

    def drop(self) -> None:
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)

    def close(self) -> None:
        shard, self._shard_handle = self._shard_handle, None
        self._closed = True
        if shard is None:
            return
        try:
            shard.flush()
        finally:
            shard.close()


def _named_vectors(vector: Any, point_id: Any) -> dict[str, list[float]]:
    if not isinstance(vector, Mapping):
        raise InvalidRequestError(f"point {point_id!r}: the Edge engine stores named vectors only "
                                  f"({{name: [floats]}}), "
                                  f"got {type(vector).__name__}")
    out = {}
    for name, values in vector.items():
        if hasattr(values, "tolist"):
            values = values.tolist()
        if not isinstance(values, list) or (values and not isinstance(values[0], (int, float))):
            raise InvalidRequestError(f"point {point_id!r}: vector {name!r} is not a dense vector of floats "
                                      "(sparse and multi-vectors are not used by crossgap-qdrant)")
        out[name] = values
    return out


def _batch_bytes(vectors: Sequence[Mapping[str, list]]) -> int:
    """Rough bytes a batch adds (float32 vectors; payload not counted, it is small next to them)."""
    return sum(4 * len(v) for named in vectors for v in named.values())


def _vectors_out(vector: Any, with_vectors: Any) -> Any:
    if not with_vectors:
        return None
    if isinstance(vector, list):  # a collection's single unnamed vector (adopted collections)
        return {"": vector}
    return dict(vector) if vector else {}


def _payload_out(payload: Any, with_payload: Any) -> Any:
    if with_payload is False or with_payload is None:
        return None
    return dict(payload) if payload else {}


def _record(record: qe.Record, with_payload: Any, with_vectors: Any) -> models.Record:
    return models.Record(id=client_point_id(record.id), payload=_payload_out(record.payload, with_payload),
                         vector=_vectors_out(record.vector, with_vectors))


def _scored(point: qe.ScoredPoint, with_payload: Any, with_vectors: Any) -> models.ScoredPoint:
    return models.ScoredPoint(id=client_point_id(point.id), version=point.version, score=point.score,
                              payload=_payload_out(point.payload, with_payload),
                              vector=_vectors_out(point.vector, with_vectors))


def _edge_quantization(config: Any) -> Any:
    if config is None:
        return None
    if isinstance(config, models.ScalarQuantization):
        scalar = config.scalar
        return qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=scalar.quantile,
                                           always_ram=scalar.always_ram)
    if isinstance(config, models.BinaryQuantization):
        return qe.BinaryQuantizationConfig(always_ram=config.binary.always_ram)
    raise InvalidRequestError(f"the Edge engine takes scalar or binary quantization, not {type(config).__name__}; "
                              "use a Qdrant server for product quantization")
