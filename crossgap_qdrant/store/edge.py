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

import contextlib
import errno
import json
import logging
import os
import shutil
import threading
from typing import Any, Iterator, Mapping, Sequence

import qdrant_edge as qe
from qdrant_client import models

from crossgap_qdrant.errors import CrossgapError
from crossgap_qdrant.store.collection import Collection, CollectionSchema, VectorSpec, close_keeping
from crossgap_qdrant.store.edge_files import (
    CHUNK_BYTES,
    MIN_MARGIN,
    allocated_bytes,
    engine_failure,
    fills_holes_on_open,
    first_line,
    free_bytes,
    is_disk_full,
    is_engine_panic,
    is_locked,
    is_read_only,
    lock_holder,
    margin,
    opening_cost,
    write_json_atomic,
)
from crossgap_qdrant.store.edge_filters import (
    client_point_id,
    edge_filter,
    edge_query,
    edge_with_payload,
    edge_with_vector,
)
from crossgap_qdrant.store.edge_points import batch_bytes, edge_quantization, named_vectors, record, scored
from crossgap_qdrant.store.errors import (
    CollectionClosedError,
    CollectionNotFoundError,
    CorruptCollectionError,
    CorruptMetadataError,
    EngineError,
    InvalidRequestError,
    ReadOnlyStoreError,
    SchemaMismatchError,
    StorageFullError,
    StoreLockedError,
)
from crossgap_qdrant.store.ids import normalize_point_id
from crossgap_qdrant.store.verify import check_scores, verify_hint

logger = logging.getLogger(__name__)

EXACT_SEARCH_BELOW = 20_000
"""Collections with fewer points are searched exactly. Measured with benchmarks/bench_store.py (512-d, two named
vectors per point, 2 shared vCPUs): at 10k points a full scan took 2-5 ms and the HNSW path 13-21 ms; at 100k the
scan 14 ms and HNSW 3 ms."""

SHARD_DIR = "shard"
SIDECAR = "collection.json"
SIDECAR_FORMAT = 1
_DISTANCES = {"Cosine": qe.Distance.Cosine, "Euclid": qe.Distance.Euclid, "Dot": qe.Distance.Dot,
              "Manhattan": qe.Distance.Manhattan}


def apply_update(shard: qe.EdgeShard, operation: qe.UpdateOperation) -> None:
    """Applies one update to a shard (a seam: tests patch it to simulate a full disk)."""
    shard.update(operation)


def flush_shard(shard: qe.EdgeShard) -> None:
    """Writes a shard's pending changes to disk (a seam: tests patch it to simulate a failing disk)."""
    shard.flush()


def optimize_shard(shard: qe.EdgeShard) -> bool:
    """Runs the shard's optimisers until none is planned (a seam: tests count the runs)."""
    return shard.optimize()


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
        self._opening = threading.Lock()  # threads sharing this collection open its shard once, not each
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

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        close_keeping(self, exc)

    # ------------------------------------------------------------------ opening, locking and writing
    def _where(self) -> str:
        return f"collection {self.name!r} in {self.folder}"

    def _verify_hint(self) -> str:
        return verify_hint(self)

    def _locked_error(self) -> StoreLockedError:
        holder = lock_holder(os.path.join(self.shard_path, "wal"))
        if holder == os.getpid():
            who = "in another client in this process (close it first: CrossModalStore.close() / Collection.close())"
        elif holder is not None:
            who = f"in process {holder} (let it finish, or stop it)"
        else:
            who = "in another client, in this or another process (close it first)"
        return StoreLockedError(
            f"the Qdrant folder {self.folder} (collection {self.name!r}) is already open {who}; the embedded engine "
            "lets one client open a folder at a time, even to read. Run a Qdrant server for concurrent access.")

    def _read_only_error(self) -> ReadOnlyStoreError:
        return ReadOnlyStoreError(
            f"the Qdrant folder {self.folder} (collection {self.name!r}) cannot be written, and Qdrant's embedded "
            "engine writes to a collection's files even to read it: copy the folder somewhere writable "
            "(cp -r) and open the copy, or make it writable.")

    def _full_error(self, what: str) -> StorageFullError:
        return StorageFullError(
            errno.ENOSPC,
            f"the disk under {self.folder} is full ({what}; collection {self.name!r}); nothing stored before "
            "this write was lost. Free some space (or move the folder) and run the same command again.")

    def _engine_error(self, exc: BaseException, what: str, opening: bool = False) -> CrossgapError:
        """The store's error for an engine failure: locked, disk full, damaged files (a panic, or a shard that
        cannot be opened), or another failure; each names the folder and what to do."""
        if is_locked(exc):
            return self._locked_error()
        if is_disk_full(exc):
            return self._full_error(what)
        if is_read_only(exc):
            return self._read_only_error()
        reason = f"{type(exc).__name__}: {first_line(exc)}"
        if opening or is_engine_panic(exc):
            return CorruptCollectionError(
                f"the Edge shard of {self._where()} is damaged: the engine {'failed' if opening else 'crashed'} "
                f"while {what} ({reason}). Restore the folder {self.path} from a backup; `{self._verify_hint()}` "
                "checks a restored copy.")
        return EngineError(f"the embedded engine failed while {what} on {self._where()} ({reason}). If it happens "
                           f"again, check the folder with `{self._verify_hint()}`.")

    @contextlib.contextmanager
    def _engine(self, what: str, opening: bool = False) -> Iterator[None]:
        """Turns the engine's own failures (Exception and Rust panics) into the store's errors."""
        try:
            yield
        except CrossgapError:
            raise
        except BaseException as exc:
            if not engine_failure(exc):
                raise
            raise self._engine_error(exc, what, opening) from None

    def _orphaned(self) -> bool:
        """The shard folder holds segments or a write-ahead log but no edge_config.json (lost or deleted)."""
        parts = (os.path.join(self.shard_path, part) for part in ("segments", "wal"))
        return any(os.path.isdir(part) and os.listdir(part) for part in parts)

    def _orphan_error(self) -> CorruptCollectionError:
        return CorruptCollectionError(
            f"the Edge shard {self.shard_path} of {self._where()} holds points but lost its edge_config.json: restore "
            "that file (or the whole folder) from a backup. Nothing was changed; ingesting cannot recreate it.")

    def _shard(self) -> qe.EdgeShard:
        with self._opening:
            if self._closed:
                raise CollectionClosedError(f"{self._where()} was closed; open it again")
            if self._shard_handle is None:
                if not self.exists():
                    raise CollectionNotFoundError(
                        f"{self._where()} does not exist: nothing is created by a read. Ingest into it first.")
                self._ensure_space("opening the collection", opening_cost(self.shard_path), reading=True)
                with self._engine("opening the shard", opening=True):
                    self._shard_handle = qe.EdgeShard.load(self.shard_path)
            return self._shard_handle

    def _ensure_space(self, what: str, cost: int = 0, reading: bool = False) -> None:
        """Refuses an operation whose ``cost`` (bytes the engine may allocate) plus the store's margin is not free:
        the engine would die of SIGBUS on the full disk instead of raising."""
        free = free_bytes(self.folder)
        wanted = cost + (margin(self.shard_path) if os.path.isdir(self.shard_path) else MIN_MARGIN)
        if free < wanted:
            action = "open it" if reading else "write safely"
            raise self._full_error(f"{what}: {free / 2**20:.0f} MiB free, the embedded engine needs "
                                   f"{wanted / 2**20:.0f} MiB to {action}")

    def _update(self, what: str, operation: qe.UpdateOperation, nbytes: int = 0) -> None:
        shard = self._shard()
        self._ensure_space(what, 4 * nbytes)
        with self._engine(what):
            apply_update(shard, operation)
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
                "by the next ingest, once re-encoding stored sources shows that model made them).") from None
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
            if self._orphaned():
                raise self._orphan_error() from None
            raise CollectionNotFoundError(
                f"{self._where()} does not exist: nothing is created by a read. Ingest into it first.") from None
        except (OSError, ValueError) as exc:
            raise CorruptMetadataError(
                f"the Edge shard config {config_path} cannot be read ({type(exc).__name__}); the shard is "
                "damaged: restore the folder from a backup or a snapshot.") from None

    # --------------------------------------------------------------------------------- schema
    def exists(self) -> bool:
        """Whether the collection exists. Raises CorruptCollectionError for a shard that holds points but lost
        its edge_config.json (neither absent nor usable: creating it again would fail)."""
        if os.path.isfile(os.path.join(self.shard_path, "edge_config.json")):
            return True
        if self._orphaned():
            raise self._orphan_error()
        return False

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
            quantization_config=edge_quantization(quantization_config),
        )
        # the first opening of the new shard fills one storage chunk per named vector
        first_open = len(vectors) * CHUNK_BYTES if fills_holes_on_open(self.folder) else 0
        self._ensure_space("creating the collection", first_open)
        os.makedirs(self.path, exist_ok=True)
        # metadata first: a crash before the shard exists leaves a folder that exists() reports as absent
        self._write_sidecar(metadata, "recording the collection metadata")
        with self._opening:
            with self._engine("creating the shard"):
                self._shard_handle = qe.EdgeShard.create(self.shard_path, config)
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
        named = [named_vectors(p.vector, p.id) for p in points]
        edge_points = [qe.Point(normalize_point_id(p.id), v, p.payload or {}) for p, v in zip(points, named)]
        self._update(f"writing {len(edge_points)} point(s)", qe.UpdateOperation.upsert_points(edge_points),
                     batch_bytes(named))

    def update_vectors(self, points: Sequence[models.PointVectors]) -> None:
        if not points:
            return
        named = [named_vectors(p.vector, p.id) for p in points]
        edge_points = [qe.PointVectors(normalize_point_id(p.id), v) for p, v in zip(points, named)]
        self._update(f"writing vectors of {len(edge_points)} point(s)",
                     qe.UpdateOperation.update_vectors(edge_points), batch_bytes(named))

    def set_payload(self, ids: Sequence[Any], payload: Mapping[str, Any]) -> None:
        if not ids:
            return
        self._update(f"writing the payload of {len(ids)} point(s)",
                     qe.UpdateOperation.set_payload([normalize_point_id(i) for i in ids], dict(payload)))

    def retrieve(self, ids: Sequence[Any], *, with_payload: bool | Sequence[str] = False,
                 with_vectors: bool | Sequence[str] = False) -> list[models.Record]:
        if not ids:
            return []
        shard = self._shard()
        with self._engine(f"reading {len(ids)} point(s)"):
            records = shard.retrieve([normalize_point_id(i) for i in ids], edge_with_payload(with_payload),
                                     edge_with_vector(with_vectors))
        return [record(r, with_payload, with_vectors) for r in records]

    def scroll(self, *, scroll_filter: models.Filter | None = None, limit: int = 256, offset: Any = None,
               with_payload: bool | Sequence[str] = True,
               with_vectors: bool | Sequence[str] = False) -> tuple[list[models.Record], Any]:
        request = qe.ScrollRequest(offset=None if offset is None else normalize_point_id(offset), limit=limit,
                                   filter=edge_filter(scroll_filter), with_payload=edge_with_payload(with_payload),
                                   with_vector=edge_with_vector(with_vectors))
        shard = self._shard()
        with self._engine("scrolling through points"):
            records, next_offset = shard.scroll(request)
        return ([record(r, with_payload, with_vectors) for r in records],
                None if next_offset is None else client_point_id(next_offset))

    def count(self, count_filter: models.Filter | None = None) -> int:
        if count_filter is None:
            return self._points_count()
        request = qe.CountRequest(exact=True, filter=edge_filter(count_filter))
        shard = self._shard()
        with self._engine("counting points"):
            return shard.count(request)

    def _points_count(self) -> int:
        if self._points is None:
            shard = self._shard()
            with self._engine("counting points"):
                self._points = shard.count(qe.CountRequest(exact=True))
        return self._points

    def query(self, requests: Sequence[models.QueryRequest]) -> list[list[models.ScoredPoint]]:
        if not requests:
            return []
        exact = self._points_count() < self.exact_search_below
        edge_requests = [edge_query(r, exact=exact, where=f"request {i}") for i, r in enumerate(requests)]
        shard = self._shard()
        with self._engine(f"searching ({len(edge_requests)} quer{'y' if len(edge_requests) == 1 else 'ies'})"):
            if len(edge_requests) == 1:
                results = [shard.query(edge_requests[0])]
            else:
                results = shard.query_batch(qe.QueryBatchRequest(edge_requests))
        out = [[scored(p, r.with_payload, r.with_vector) for p in points] for points, r in zip(results, requests)]
        check_scores(self, requests, out)
        return out

    # ------------------------------------------------------------------------------ maintenance
    def optimize(self) -> None:
        """Builds HNSW indexes and merges segments; returns at once when nothing was written since the last run.

        Blocking (Edge has no background optimiser): the store calls it after large ingests.
        """
        if not self._dirty:
            return
        # optimisers write new segments before dropping the old ones
        shard = self._shard()
        self._ensure_space("building the search index", allocated_bytes(self.shard_path))
        with self._engine("building the search index"):
            changed = optimize_shard(shard)
        logger.debug("optimized %s: %s", self._where(), "segments rebuilt" if changed else "already optimal")
        self._dirty = False

    def indexed_vectors(self) -> int:
        """Vectors covered by an HNSW index (0 before :meth:`optimize` has built one)."""
        shard = self._shard()
        with self._engine("reading the shard's index state"):
            return shard.info().indexed_vectors_count

    def drop(self) -> None:
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)

    def close(self) -> None:
        with self._opening:
            shard, self._shard_handle = self._shard_handle, None
            self._closed = True
        if shard is None:
            return
        try:
            with self._engine("writing pending changes on close"):
                flush_shard(shard)
        finally:
            with self._engine("closing the shard"):
                shard.close()

