"""The Qdrant adapter: native and inverted vectors side by side, fault-tolerant ingestion, inter-modal search.

One collection holds, per item, named vectors: an image point has "image" (native, image space) and
"image_oti" (its OTI, text space); a text point has "text" (native, text space) and "text_ovi" (its OVI, image
space). Image->image search can then run inter-modally in three ways (SPEC.md, "The Qdrant side"):

=================  ==================================  ===============================================
mode               query vector                         gallery vector (``using``)
=================  ==================================  ===============================================
native             native image feature (image space)   "image" (intra-modal baseline)
gallery_inverted   native image feature (image space)   "image_oti" (text space): no query-time cost
query_inverted     OTI of the query (text space)        "image" (image space): an optimisation per query
fused              both inter-modal routes as Qdrant prefetches, combined by reciprocal rank fusion
=================  ==================================  ===============================================

Text->text search is symmetric with OVI. Every query goes through ``query_points`` / ``query_batch_points``;
a query given as a point id uses the stored vectors (``lookup_from``) and recomputes nothing.

Ingestion is idempotent and resumable: point ids are uuid5 of a content hash, each point is written whole
(native, inverted, derived vectors and payload in one request per batch) once its batch is computed, so a
crash loses at most the batch in flight, and a re-run skips what is stored and inverts only the items that
lack their inverted vector (e.g. ingested with ``invert=False``, or a collection being backfilled). The
pseudo-token initialisation of each item is seeded by its point id, so an item's inverted vector
does not depend on which batch or run computed it.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence, Union, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from qdrant_client import QdrantClient, models

from crossgap_qdrant.models import (
    check_features,
    embed_dim,
    encode_images,
    encode_texts,
    model_device,
    text_tower,
    vision_tower,
)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
ID_NAMESPACE = uuid.UUID("5b0f6c1e-3c55-4a43-9a55-6f2c0d7e9b11")  # fixed forever: point ids derive from it
METADATA_KEY = "crossgap"
METADATA_FORMAT = 1
MODES = ("native", "gallery_inverted", "query_inverted", "fused")

PointId = Union[int, str, uuid.UUID]


# ------------------------------------------------------------------------------------------------ errors
class SchemaMismatchError(ValueError):
    """An existing collection does not fit the model or the vector layout (the message names both)."""


class StoreLockedError(RuntimeError):
    """A local Qdrant folder is already open in another client (this process or another)."""


class PointNotFoundError(KeyError):
    """A point-id query names a point that is absent or lacks the vector the query needs."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


# ------------------------------------------------------------------------------------------- public types
@dataclass(frozen=True)
class VectorNames:
    """Names of the four named vectors of a collection."""

    image: str = "image"  # native image embedding (image space)
    image_oti: str = "image_oti"  # OTI of the image (text space)
    text: str = "text"  # native text embedding (text space)
    text_ovi: str = "text_ovi"  # OVI of the text (image space)

    def all(self) -> tuple[str, str, str, str]:
        return (self.image, self.image_oti, self.text, self.text_ovi)


@runtime_checkable
class DerivedVector(Protocol):
    """An extra named vector computed from raw inputs at ingestion (e.g. IsoCLIP, a modality-gap shift).

    Attributes:
        modality: "image" (computed from preprocessed pixels) or "text" (from token ids).
        dim: width of the vector it returns.
    """

    modality: str
    dim: int

    def compute(self, model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """Maps pixels [B, 3, H, W] float (image) or token ids [B, L] int64 (text) to [B, dim] float."""
        ...


@dataclass
class IngestReport:
    """What one ingestion call did.

    Attributes:
        inserted: new points written.
        skipped_existing: items already stored with every vector this call would write.
        inverted: inverted vectors computed and written (new items and items resumed after a crash).
        duplicates: items repeating an earlier item of the same call (same point id), ignored.
        failed: (item, reason) for each item that was skipped (unreadable or corrupt file, empty text).
        ids: the point id of each input item, in input order (None where it failed).
        seconds_encoding: decoding, preprocessing, native and derived encoders.
        seconds_inversion: OTI / OVI.
        seconds_database: Qdrant reads and writes.
    """

    inserted: int = 0
    skipped_existing: int = 0
    inverted: int = 0
    duplicates: int = 0
    failed: list[tuple[Any, str]] = field(default_factory=list)
    ids: list[PointId | None] = field(default_factory=list)
    seconds_encoding: float = 0.0
    seconds_inversion: float = 0.0
    seconds_database: float = 0.0

    @property
    def seconds_total(self) -> float:
        return self.seconds_encoding + self.seconds_inversion + self.seconds_database


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of Qdrant calls on transient errors (connection failures, timeouts, 408/429/5xx).

    The wait before retry k (k = 1, 2, ...) is ``min(max_backoff, backoff * 2**(k-1))`` times a random factor
    in [0.5, 1]. Every call the store retries is idempotent (point ids are deterministic).
    """

    attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 10.0

    def delay(self, retry: int) -> float:
        return min(self.max_backoff, self.backoff * 2 ** (retry - 1)) * (0.5 + 0.5 * random.random())


TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: the server may answer the same request later."""
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in TRANSIENT_STATUS
    if isinstance(exc, (ResponseHandlingException, ConnectionError, TimeoutError)):
        return True
    try:
        import httpx

        if isinstance(exc, httpx.TransportError):
            return True
    except ImportError:  # pragma: no cover - httpx is a qdrant-client dependency
        pass
    code = getattr(exc, "code", None)  # grpc.RpcError, without importing grpc
    if callable(code):
        try:
            name = getattr(code(), "name", "")
        except Exception:
            return False
        return name in {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}
    return False


def client_location(client: Any) -> str:
    """Where a QdrantClient points: its URL, host, folder or ":memory:"."""
    options = getattr(client, "init_options", None) or {}
    for key in ("url", "host", "path", "location"):
        if options.get(key):
            return str(options[key])
    return "a Qdrant client"


def connect(
    location: str = "./qdrant_data",
    *,
    api_key: str | None = None,
    timeout: int = 30,
    https: bool | None = None,
    retry: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
    **client_kwargs: Any,
) -> QdrantClient:
    """Builds a QdrantClient for a local folder, ":memory:", or a server URL, and checks it answers.

    Args:
        location: a folder for embedded local mode (created if missing), ":memory:", or "http(s)://host:port".
        api_key: server API key (servers only).
        timeout: seconds per server request.
        https: force TLS on or off; default from the URL scheme.
        retry: retries of the connectivity check on transient errors.
        client_kwargs: passed to QdrantClient (e.g. prefer_grpc=True).

    Raises:
        StoreLockedError: the local folder is already open in another client.
        ConnectionError: the server did not answer (the message names the URL).
        PermissionError: the server refused the API key.
    """
    if location == ":memory:":
        return QdrantClient(location=":memory:", **client_kwargs)
    if location.startswith(("http://", "https://")):
        if https is None:
            https = location.startswith("https://")
        client = QdrantClient(url=location, api_key=api_key, timeout=timeout, https=https, **client_kwargs)
        _with_retries(client.get_collections, retry, f"connect to the Qdrant server at {location}", sleep)
        return client
    if api_key is not None:
        raise ValueError(f"api_key is for Qdrant servers; {location!r} is a local folder")
    os.makedirs(location, exist_ok=True)
    try:
        return QdrantClient(path=location, **client_kwargs)
    except RuntimeError as exc:
        if "already accessed" not in str(exc):
            raise
        raise StoreLockedError(
            f"the local Qdrant folder {os.path.abspath(location)} is already open in another client (in this or "
            "another process). Local mode allows one client per folder: close the other one first "
            "(CrossModalStore.close()), or run a Qdrant server for concurrent access."
        ) from exc


def _with_retries(fn: Callable[[], Any], retry: RetryPolicy | None, what: str, sleep: Callable[[float], None]):
    from qdrant_client.http.exceptions import UnexpectedResponse

    attempts = max(1, retry.attempts if retry is not None else 1)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if isinstance(exc, UnexpectedResponse) and exc.status_code in (401, 403):
                raise PermissionError(f"could not {what}: the server refused the API key ({exc})") from exc
            if not is_transient(exc):
                raise
            if attempt == attempts:
                raise ConnectionError(
                    f"could not {what}: no answer after {attempts} attempt(s) ({type(exc).__name__}: {exc}). "
                    "Check that the server runs and the URL, port and api_key are right."
                ) from exc
            sleep(retry.delay(attempt))


# --------------------------------------------------------------------------------------------- content ids
def content_id(modality: str, digest: str) -> str:
    """The point id of an item: uuid5 of its modality and the sha256 hex digest of its content."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{modality}:{digest}"))


def image_bytes_id(data: bytes) -> str:
    """Point id of an image file from its bytes (the same file gives the same id wherever it lives)."""
    return content_id("image", hashlib.sha256(data).hexdigest())


def pil_image_id(image) -> str:
    """Point id of an in-memory PIL image from its mode, size and pixels."""
    h = hashlib.sha256(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.tobytes())
    return content_id("image", h.hexdigest())


def text_id(text: str) -> str:
    return content_id("text", hashlib.sha256(text.encode("utf-8")).hexdigest())


def features_id(modality: str, features: torch.Tensor) -> str:
    """Point id of a precomputed feature row [E] (hashed as little-endian float32)."""
    data = features.detach().to(torch.float32).cpu().contiguous().numpy().astype("<f4").tobytes()
    return content_id(modality, "features:" + hashlib.sha256(data).hexdigest())


def normalize_point_id(pid: Any) -> PointId:
    """Checks a user point id: a non-negative int or a UUID (returned as its canonical string)."""
    if isinstance(pid, bool):
        raise ValueError(f"invalid point id {pid!r}: use a non-negative int or a UUID")
    if isinstance(pid, (int, np.integer)):
        if pid < 0:
            raise ValueError(f"invalid point id {pid!r}: integer ids must be non-negative")
        return int(pid)
    if isinstance(pid, uuid.UUID):
        return str(pid)
    if isinstance(pid, str):
        try:
            return str(uuid.UUID(pid))
        except ValueError:
            pass
    raise ValueError(f"invalid point id {pid!r}: Qdrant accepts non-negative ints and UUIDs")


def _is_point_id(value: Any) -> bool:
    if isinstance(value, (uuid.UUID, int, np.integer)) and not isinstance(value, bool):
        return True
    if isinstance(value, str):
        try:
            uuid.UUID(value)
            return len(value) >= 32
        except ValueError:
            return False
    return False


# -------------------------------------------------------------------------------------------- input items
@dataclass
class _Item:
    """One input item on its way into the collection."""

    index: int  # position in the caller's input
    source: Any  # what the caller passed (path, PIL image, text, or the feature row's index)
    pid: PointId | None = None
    payload: dict = field(default_factory=dict)
    raw: Any = None  # file bytes, PIL image, or text: what the encoders need
    features: torch.Tensor | None = None  # [E] native feature, when given or computed
    inverted: torch.Tensor | None = None  # [E] inverted feature, when given


def list_image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, by extension), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _check_features(features: Any, dim: int, what: str, normalize: bool = True) -> torch.Tensor:
    """Validates [N, dim] (or [dim]) features: finite, non-zero rows.

    Returns:
        [N, dim] float32 on CPU: unit rows, or the rows as given when ``normalize`` is False.
    """
    if isinstance(features, np.ndarray):
        features = torch.from_numpy(features)
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{what} must be a tensor or array, got {type(features).__name__}")
    if features.dim() == 1:
        features = features[None]
    features = check_features(features.detach().cpu(), dim, what, "; nothing was written")
    return F.normalize(features, dim=-1) if normalize else features


def named_vector_stats(vectors_config: Mapping[str, Any], count: Callable[[Any], int]) -> dict[str, dict]:
    """Size, distance and number of points holding it, per named vector of a collection.

    Args:
        vectors_config: the collection's named vector params (``config.params.vectors``).
        count: counts the points matching a filter.
    """
    stats = {}
    for name, params in vectors_config.items():
        has = models.Filter(must=[models.HasVectorCondition(has_vector=name)])
        stats[name] = {"size": params.size, "distance": params.distance.value, "points": count(has)}
    return stats


def _vector_list(row: torch.Tensor) -> list[float]:
    return row.detach().to(torch.float32).cpu().numpy().tolist()


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit="item")


class _Timer:
    def __init__(self, report: IngestReport, attr: str):
        self.report, self.attr = report, attr

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        setattr(self.report, self.attr, getattr(self.report, self.attr) + time.perf_counter() - self.start)


@dataclass(frozen=True)
class _Side:
    """The vector names and encoders of one modality."""

    modality: str  # "image" | "text"
    native: str
    inverted: str


@dataclass
class _Query:
    """A resolved query: a stored point, or a native feature (plus raw inputs for derived vectors)."""

    pid: PointId | None = None
    features: torch.Tensor | None = None  # [E]
    raw: torch.Tensor | None = None  # [3, H, W] pixels or [L] token ids, when the query came raw
    exclude: PointId | None = None  # the query's own point id (content hash or the given id)
    stored: dict[str, torch.Tensor] | None = None  # vectors read from a stored point (exclude_query=False)


# --------------------------------------------------------------------------------------------- the store
class CrossModalStore:
    """A Qdrant collection of images and texts with native, inverted and derived named vectors.

    Args:
        client: an existing QdrantClient (local folder, ":memory:" or server); see :meth:`open` to build one.
        collection_name: created when missing, validated otherwise.
        model, tokenizer, preprocess: a frozen open_clip model and its tokenizer and image transform
            (:func:`crossgap_qdrant.models.load_model`).
        model_id: names the model's weights (e.g. "ViT-B-32/openai"); recorded in the collection metadata so
            that a collection is never mixed across models. Its part before "/" picks OVI's published token
            count.
        vector_names: names of the four named vectors.
        oti_config, ovi_config: inversion settings (default: the published ones).
        derived_vectors: extra named vectors, computed from raw inputs at ingestion.
        shard_number, replication_factor, quantization_config, on_disk: passed to create_collection (server
            options; local mode ignores them).
        rescore: with quantization, rescore candidates with the original vectors at query time.
        oversampling: quantization oversampling at query time (None: the server's default).
        retry: retries on transient errors; None disables them.
        upsert_batch_size: points per write request.
    """

    def __init__(
        self,
        client: QdrantClient,
        collection_name: str,
        model: torch.nn.Module,
        tokenizer: Callable,
        preprocess: Callable,
        *,
        model_id: str,
        vector_names: VectorNames = VectorNames(),
        oti_config: Any = None,
        ovi_config: Any = None,
        derived_vectors: Mapping[str, DerivedVector] | None = None,
        shard_number: int | None = None,
        replication_factor: int | None = None,
        quantization_config: Any = None,
        on_disk: bool | None = None,
        rescore: bool = True,
        oversampling: float | None = None,
        retry: RetryPolicy | None = RetryPolicy(),
        upsert_batch_size: int = 256,
    ):
        from crossgap_qdrant.inversion import OTIConfig, OVIConfig

        if not model_id or not isinstance(model_id, str):
            raise ValueError("model_id must name the model's weights, e.g. 'ViT-B-32/openai'")
        self.client = client
        self.collection_name = collection_name
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.model_id = model_id
        self.names = vector_names
        self.oti_config = oti_config if oti_config is not None else OTIConfig()
        self.ovi_config = ovi_config if ovi_config is not None else OVIConfig()
        self.derived = dict(derived_vectors or {})
        self.quantization_config = quantization_config
        self.rescore = rescore
        self.oversampling = oversampling
        self.retry = retry
        self.upsert_batch_size = upsert_batch_size
        self.dim = embed_dim(model)
        self.location = client_location(client)
        self._owns_client = False
        self._sleep = time.sleep
        self._sides = {
            "image": _Side("image", vector_names.image, vector_names.image_oti),
            "text": _Side("text", vector_names.text, vector_names.text_ovi),
        }
        self._check_names()
        self._ensure_collection(shard_number, replication_factor, quantization_config, on_disk)

    # ------------------------------------------------------------------------------------- construction
    @classmethod
    def open(
        cls,
        location: str = "./qdrant_data",
        collection_name: str = "crossgap",
        model: torch.nn.Module | None = None,
        tokenizer: Callable | None = None,
        preprocess: Callable | None = None,
        *,
        api_key: str | None = None,
        timeout: int = 30,
        https: bool | None = None,
        retry: RetryPolicy | None = RetryPolicy(),
        client_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> "CrossModalStore":
        """Builds the client (see :func:`connect`) and the store over it; :meth:`close` releases both.

        Args:
            location: a folder (embedded local mode), ":memory:", or "http(s)://host:port".
            kwargs: the store's keyword arguments (model_id is required).
        """
        if model is None or tokenizer is None or preprocess is None:
            raise TypeError("open() needs model, tokenizer and preprocess (see crossgap_qdrant.models.load_model)")
        client = connect(location, api_key=api_key, timeout=timeout, https=https,
                         retry=retry or RetryPolicy(attempts=1), **dict(client_kwargs or {}))
        try:
            store = cls(client, collection_name, model, tokenizer, preprocess, retry=retry, **kwargs)
        except BaseException:
            client.close()
            raise
        store._owns_client = True
        return store

    def close(self) -> None:
        """Closes the client when this store built it (:meth:`open`); releases a local folder's lock."""
        if self._owns_client:
            self.client.close()
            self._owns_client = False

    def __enter__(self) -> "CrossModalStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_names(self) -> None:
        names = list(self.names.all())
        if len(set(names)) != 4 or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"vector names must be four distinct non-empty strings, got {self.names}")
        for name, derived in self.derived.items():
            if name in names:
                raise ValueError(f"derived vector {name!r} clashes with a vector name of {self.names}")
            if not isinstance(derived, DerivedVector):
                raise TypeError(f"derived vector {name!r} lacks modality, dim or compute()")
            if derived.modality not in ("image", "text"):
                raise ValueError(
                    f"derived vector {name!r}: modality must be 'image' or 'text', got {derived.modality!r}"
                )
            if not isinstance(derived.dim, int) or derived.dim <= 0:
                raise ValueError(f"derived vector {name!r}: dim must be a positive int, got {derived.dim!r}")

    def _wanted_sizes(self) -> dict[str, int]:
        sizes = {name: self.dim for name in self.names.all()}
        sizes.update({name: d.dim for name, d in self.derived.items()})
        return sizes

    def _metadata(self) -> dict:
        return {
            METADATA_KEY: {
                "format": METADATA_FORMAT,
                "model_id": self.model_id,
                "embed_dim": self.dim,
                "vector_names": asdict(self.names),
                "derived": {n: {"modality": d.modality, "dim": d.dim} for n, d in self.derived.items()},
            }
        }

    def _ensure_collection(self, shard_number, replication_factor, quantization_config, on_disk) -> None:
        exists = self._call("check the collection", self.client.collection_exists, self.collection_name)
        if not exists:
            vectors = {
                name: models.VectorParams(size=size, distance=models.Distance.COSINE, on_disk=on_disk)
                for name, size in self._wanted_sizes().items()
            }
            self._call(
                "create the collection",
                self.client.create_collection,
                collection_name=self.collection_name,
                vectors_config=vectors,
                shard_number=shard_number,
                replication_factor=replication_factor,
                quantization_config=quantization_config,
                metadata=self._metadata(),
            )
            return
        info = self._call("read the collection", self.client.get_collection, self.collection_name)
        where = f"collection {self.collection_name!r} at {self.location}"
        recorded = (info.config.metadata or {}).get(METADATA_KEY)
        if recorded and recorded.get("model_id") != self.model_id:
            raise SchemaMismatchError(
                f"{where} was built with model {recorded.get('model_id')!r}, but this store was given model "
                f"{self.model_id!r}: vectors of different models cannot be compared. Use another collection."
            )
        vectors = info.config.params.vectors
        if not isinstance(vectors, Mapping):
            raise SchemaMismatchError(
                f"{where} has a single unnamed vector; CrossModalStore needs named vectors "
                f"({', '.join(self.names.all())}). Copy the points into a collection with named vectors."
            )
        missing = {}
        for name, size in self._wanted_sizes().items():
            params = vectors.get(name)
            if params is None:
                missing[name] = size
                continue
            if params.size != size:
                raise SchemaMismatchError(
                    f"{where}: vector {name!r} has size {params.size}, but model {self.model_id!r} gives {size}"
                )
            if params.distance != models.Distance.COSINE:
                raise SchemaMismatchError(
                    f"{where}: vector {name!r} uses {params.distance.value} distance; CrossModalStore needs Cosine "
                    f"(model {self.model_id!r})"
                )
        for name, size in missing.items():
            # backfill of a collection that already holds some of the vectors (e.g. CLIP image embeddings)
            self._call(
                f"add the named vector {name!r}",
                self.client.create_vector_name,
                collection_name=self.collection_name,
                vector_name=name,
                vector_name_config=models.DenseVectorNameConfig(
                    dense=models.DenseVectorConfig(size=size, distance=models.Distance.COSINE)
                ),
            )
        if missing or recorded != self._metadata()[METADATA_KEY]:
            self._call("record the model in the collection metadata", self.client.update_collection,
                       collection_name=self.collection_name, metadata=self._metadata())
        if self.quantization_config is None:
            self.quantization_config = info.config.quantization_config

    # --------------------------------------------------------------------------------------- plumbing
    def _call(self, what: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Runs a Qdrant call, retrying transient errors; an exhausted retry names the location."""
        return _with_retries(lambda: fn(*args, **kwargs), self.retry, f"{what} ({self.location})", self._sleep)

    def _search_params(self) -> models.SearchParams | None:
        if self.quantization_config is None:
            return None
        return models.SearchParams(
            quantization=models.QuantizationSearchParams(rescore=self.rescore, oversampling=self.oversampling)
        )

    def _derived_for(self, modality: str) -> dict[str, DerivedVector]:
        return {n: d for n, d in self.derived.items() if d.modality == modality}

    def _init_tokens(self, pids: Sequence[PointId], modality: str) -> torch.Tensor:
        """Initial pseudo tokens [N, R, W], normal(0, init_std), seeded per item by its point id and the seed."""
        if modality == "image":
            config, width, r = self.oti_config, text_tower(self.model).width, self.oti_config.num_tokens
        else:
            from crossgap_qdrant.inversion import ovi_num_tokens

            config, width = self.ovi_config, vision_tower(self.model).width
            name, _, tag = self.model_id.partition("/")
            r = ovi_num_tokens(self.model, config, name, tag)
        out = torch.empty(len(pids), r, width)
        for i, pid in enumerate(pids):
            digest = hashlib.sha256(f"{config.seed}:{pid}".encode()).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
            out[i] = torch.randn(r, width, generator=gen) * config.init_std
        return out

    def _invert(self, modality: str, features: torch.Tensor, pids: Sequence[PointId], progress: bool) -> torch.Tensor:
        """OTI (images) or OVI (texts) of unit features [N, E]; returns [N, E] unit vectors, validated."""
        from crossgap_qdrant.inversion import oti_invert, ovi_invert

        init = self._init_tokens(pids, modality)
        if modality == "image":
            result = oti_invert(self.model, self.tokenizer, features, config=self.oti_config, init_tokens=init,
                                progress=progress)
        else:
            result = ovi_invert(self.model, features, config=self.ovi_config, init_tokens=init, progress=progress,
                                model_name=self.model_id.partition("/")[0],
                                pretrained=self.model_id.partition("/")[2])
        return _check_features(result.features, self.dim, f"{modality} inversion results")

    # ------------------------------------------------------------------------------------------ ingestion
    def ingest_images(
        self,
        images: str | os.PathLike | Sequence[Any] | torch.Tensor | np.ndarray,
        *,
        payloads: Sequence[Mapping[str, Any] | None] | None = None,
        ids: Sequence[PointId] | None = None,
        invert: bool = True,
        inverted_features: torch.Tensor | np.ndarray | None = None,
        batch_size: int = 64,
        progress: bool = True,
    ) -> IngestReport:
        """Adds images: native vector, OTI vector, derived image vectors and payload per image.

        Args:
            images: a folder (searched recursively for image files), a list of paths or PIL images, or
                precomputed native image features [N, E] (then derived vectors are left out).
            payloads: one dict (or None) per image, merged over the automatic payload
                ({"modality": "image", "source": path}).
            ids: one point id per image (non-negative int or UUID); default uuid5 of the content hash.
            invert: compute and store OTI vectors (False: native and derived only; run again later, or
                :meth:`invert_missing`, to add them).
            inverted_features: precomputed OTI vectors [N, E] aligned with ``images`` (skips the inversion).
            batch_size: items encoded, inverted and written together.
            progress: show a progress bar.

        Returns:
            The report; unreadable or corrupt files are listed in ``failed``, the rest goes in.

        Raises:
            ValueError: NaN/inf values, all-zero rows or a wrong width in given features (nothing written).
        """
        items = self._image_items(images)
        return self._ingest(self._sides["image"], items, payloads, ids, invert, inverted_features, batch_size,
                            progress)

    def ingest_texts(
        self,
        texts: str | os.PathLike | Sequence[str] | torch.Tensor | np.ndarray,
        *,
        payloads: Sequence[Mapping[str, Any] | None] | None = None,
        ids: Sequence[PointId] | None = None,
        invert: bool = True,
        inverted_features: torch.Tensor | np.ndarray | None = None,
        batch_size: int = 64,
        progress: bool = True,
    ) -> IngestReport:
        """Adds texts: native vector, OVI vector, derived text vectors and payload ({"modality", "text"}).

        Args:
            texts: a list of strings, the path of a UTF-8 text file (one text per line; blank lines skipped),
                or precomputed native text features [N, E]. A plain string must be an existing file.
            Other arguments as in :meth:`ingest_images`; empty texts are listed in ``failed``.
        """
        items = self._text_items(texts)
        return self._ingest(self._sides["text"], items, payloads, ids, invert, inverted_features, batch_size,
                            progress)

    def _image_items(self, images) -> list[_Item] | torch.Tensor:
        if isinstance(images, (torch.Tensor, np.ndarray)):
            return _check_features(images, self.dim, "image features", normalize=False)
        if isinstance(images, (str, os.PathLike)):
            path = Path(images)
            if path.is_dir():
                files = list_image_files(path)
                if not files:
                    raise ValueError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {path}")
                images = files
            elif path.is_file():
                images = [path]
            else:
                raise FileNotFoundError(f"no such folder or image file: {path}")
        from PIL import Image

        items = []
        for i, image in enumerate(images):
            if isinstance(image, (str, os.PathLike)):
                items.append(_Item(i, str(image), payload={"modality": "image", "source": str(image)}))
            elif isinstance(image, Image.Image):
                items.append(_Item(i, image, raw=image, payload={"modality": "image"}))
            else:
                raise TypeError(f"image #{i}: expected a path or a PIL image, got {type(image).__name__}")
        return items

    def _text_items(self, texts) -> list[_Item] | torch.Tensor:
        if isinstance(texts, (torch.Tensor, np.ndarray)):
            return _check_features(texts, self.dim, "text features", normalize=False)
        if isinstance(texts, (str, os.PathLike)):
            path = Path(texts)
            if not path.is_file():
                raise FileNotFoundError(
                    f"no such text file: {str(path)[:80]!r} (pass a list of strings to ingest texts directly)"
                )
            items = []
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    text = line.rstrip("\r\n")
                    if text.strip():
                        items.append(_Item(len(items), text, raw=text,
                                           payload={"modality": "text", "text": text, "source": str(path),
                                                    "line": lineno}))
            return items
        items = []
        for i, text in enumerate(texts):
            items.append(_Item(i, text, raw=text, payload={"modality": "text", "text": text}))
        return items

    def _ingest(self, side: _Side, items, payloads, ids, invert, inverted_features, batch_size, progress):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        invert = invert or inverted_features is not None  # given vectors are written; nothing is inverted
        if isinstance(items, torch.Tensor):  # precomputed native features, validated as a whole already
            given, features = items, F.normalize(items, dim=-1)
            # ids hash the caller's rows: re-normalising unit rows can change their last bits
            items = [_Item(i, i, pid=features_id(side.modality, given[i]), features=features[i],
                           payload={"modality": side.modality}) for i in range(features.shape[0])]
        n = len(items)
        # every check on the caller's arguments happens here, before the first write
        if payloads is not None and len(payloads) != n:
            raise ValueError(f"got {len(payloads)} payloads for {n} items")
        if ids is not None and len(ids) != n:
            raise ValueError(f"got {len(ids)} ids for {n} items")
        if inverted_features is not None:
            inverted = _check_features(inverted_features, self.dim, "inverted features")
            if inverted.shape[0] != n:
                raise ValueError(f"got {inverted.shape[0]} inverted features for {n} items")
            for item, row in zip(items, inverted):
                item.inverted = row
        for i, item in enumerate(items):
            if ids is not None:
                item.pid = normalize_point_id(ids[i])
            if payloads is not None and payloads[i] is not None:
                if not isinstance(payloads[i], Mapping):
                    raise TypeError(f"payload #{i} must be a dict or None, got {type(payloads[i]).__name__}")
                item.payload.update(payloads[i])

        report = IngestReport(ids=[None] * n)
        seen: set = set()
        bar = _progress(n, f"ingest {side.modality}s", progress)
        try:
            for start in range(0, n, batch_size):
                chunk = items[start : start + batch_size]
                self._ingest_chunk(side, chunk, invert, report, seen)
                bar.update(len(chunk))
        finally:
            bar.close()
        return report

    def _identify(self, side: _Side, item: _Item) -> None:
        """Sets item.pid (content hash unless given) and loads the raw content; raises OSError/ValueError."""
        if item.features is not None:
            if item.pid is None:
                item.pid = features_id(side.modality, item.features)
            return
        if side.modality == "text":
            if not isinstance(item.raw, str) or not item.raw.strip():
                kind = "empty text" if isinstance(item.raw, str) else f"not a string: {type(item.raw).__name__}"
                raise ValueError(kind)
            if item.pid is None:
                item.pid = text_id(item.raw)
            return
        if isinstance(item.source, str):
            with open(item.source, "rb") as f:
                item.raw = f.read()
            if item.pid is None:
                item.pid = image_bytes_id(item.raw)
        elif item.pid is None:
            item.pid = pil_image_id(item.raw)

    def _pixels(self, item: _Item) -> torch.Tensor:
        """Decoded, preprocessed pixels [3, H, W]; raises on corrupt data."""
        from PIL import Image

        if isinstance(item.raw, bytes):
            with Image.open(io.BytesIO(item.raw)) as im:
                im.load()
                image = im.convert("RGB")
        else:
            image = item.raw.convert("RGB")
        return self.preprocess(image)

    def _ingest_chunk(self, side: _Side, chunk: list[_Item], invert: bool, report: IngestReport, seen: set):
        derived = self._derived_for(side.modality)
        live: list[_Item] = []
        with _Timer(report, "seconds_encoding"):
            for item in chunk:
                try:
                    self._identify(side, item)
                except (OSError, ValueError) as exc:
                    report.failed.append((item.source, f"{type(exc).__name__}: {exc}"))
                    continue
                report.ids[item.index] = item.pid
                if item.pid in seen:
                    report.duplicates += 1
                    continue
                seen.add(item.pid)
                live.append(item)
        if not live:
            return

        raw_available = live[0].features is None
        wanted = [side.native] + ([side.inverted] if invert else []) + (list(derived) if raw_available else [])
        with _Timer(report, "seconds_database"):
            records = self._call("read existing points", self.client.retrieve, collection_name=self.collection_name,
                                 ids=[it.pid for it in live], with_payload=False, with_vectors=wanted)
        stored = {normalize_point_id(r.id): (r.vector or {}) for r in records}

        new: list[_Item] = []
        partial: list[tuple[_Item, set]] = []  # stored items lacking some vectors
        for item in live:
            if item.pid not in stored:
                new.append(item)
                continue
            lacking = {name for name in wanted if name not in stored[item.pid]}
            if not lacking:
                report.skipped_existing += 1
            else:
                partial.append((item, lacking))
                if side.native in stored[item.pid]:
                    item.features = torch.tensor(stored[item.pid][side.native], dtype=torch.float32)

        # native and derived vectors of what needs them; corrupt images drop out here
        need_raw = new + [it for it, lacking in partial if side.native in lacking or lacking & set(derived)]
        computed: dict[PointId, dict[str, torch.Tensor]] = {}
        with _Timer(report, "seconds_encoding"):
            computed = self._encode(side, need_raw, derived if raw_available else {}, report)
        for it in new:
            if it.pid not in computed:  # failed to decode: a later copy in this run may still go in
                seen.discard(it.pid)
        new = [it for it in new if it.pid in computed]
        partial = [(it, lacking) for it, lacking in partial if it.pid in computed or side.native not in lacking]

        # inversion of everything lacking it (new items and stored items without it)
        todo = (new + [it for it, lacking in partial if side.inverted in lacking]) if invert else []
        to_run = [it for it in todo if it.inverted is None]
        if to_run:
            with _Timer(report, "seconds_inversion"):
                feats = torch.stack([it.features for it in to_run])
                out = self._invert(side.modality, feats, [it.pid for it in to_run], progress=False)
            for it, row in zip(to_run, out):
                it.inverted = row
        for it in todo:
            computed.setdefault(it.pid, {})[side.inverted] = it.inverted

        # one write per item, whole: local mode commits every point to disk, so two writes would cost twice
        points = [models.PointStruct(id=it.pid, payload=it.payload,
                                     vector={k: _vector_list(v) for k, v in computed[it.pid].items()})
                  for it in new]
        updates = []
        for it, lacking in partial:
            vectors = {k: v for k, v in computed.get(it.pid, {}).items() if k in lacking}
            if vectors:
                updates.append(models.PointVectors(id=it.pid, vector={k: _vector_list(v) for k, v in vectors.items()}))
        with _Timer(report, "seconds_database"):
            self._write(points, updates)
        report.inserted += len(points)
        report.inverted += len(todo)

    def _encode(self, side: _Side, items: list[_Item], derived: Mapping[str, DerivedVector],
                report: IngestReport) -> dict[PointId, dict[str, torch.Tensor]]:
        """Native (unless known) and derived vectors of items; failures go to the report."""
        out: dict[PointId, dict[str, torch.Tensor]] = {}
        if not items:
            return out
        if items[0].features is not None and all(it.raw is None for it in items):
            for it in items:
                out[it.pid] = {side.native: it.features}
            return out
        device = model_device(self.model)
        if side.modality == "image":
            ok, pixels = [], []
            for it in items:
                try:
                    pixels.append(self._pixels(it))
                    ok.append(it)
                except Exception as exc:  # PIL raises many types on corrupt data
                    report.failed.append((it.source, f"unreadable image ({type(exc).__name__}: {exc})"))
                    report.ids[it.index] = None
            if not ok:
                return out
            inputs = torch.stack(pixels)
            native = encode_images(self.model, self.preprocess, list(inputs), batch_size=len(ok))
        else:
            ok = items
            inputs = self.tokenizer([it.raw for it in ok])
            native = encode_texts(self.model, self.tokenizer, [it.raw for it in ok], batch_size=len(ok))
        native = _check_features(native, self.dim, f"{side.modality} encoder outputs")
        extra = {}
        with torch.no_grad():
            for name, d in derived.items():
                vec = d.compute(self.model, inputs.to(device)).float().cpu()
                extra[name] = _check_features(vec, d.dim, f"derived vector {name!r}")
        for i, it in enumerate(ok):
            if it.features is None:
                it.features = native[i]
            out[it.pid] = {side.native: it.features, **{k: v[i] for k, v in extra.items()}}
        return out

    def _write(self, points: list[models.PointStruct], updates: list[models.PointVectors]) -> None:
        step = self.upsert_batch_size
        for start in range(0, len(points), step):
            self._call("write points", self.client.upsert, collection_name=self.collection_name,
                       points=points[start : start + step], wait=True)
        for start in range(0, len(updates), step):
            self._call("write vectors", self.client.update_vectors, collection_name=self.collection_name,
                       points=updates[start : start + step], wait=True)

    def invert_missing(self, modality: str = "image", *, batch_size: int = 64, progress: bool = True,
                       query_filter: models.Filter | None = None) -> IngestReport:
        """Computes the inverted vector of every stored point that has the native one but lacks it.

        This is the backfill of a collection whose native vectors came from elsewhere (e.g. an existing
        collection of CLIP image embeddings opened with ``VectorNames(image="its_vector_name")``) or were
        ingested with ``invert=False``. Native vectors are read from the collection, nothing is re-encoded.

        Args:
            modality: "image" (OTI) or "text" (OVI).
            query_filter: restricts the backfill to matching points.
        """
        side = self._side(modality)
        report = IngestReport()
        done: set = set()
        flt = models.Filter(
            must=[models.HasVectorCondition(has_vector=side.native)] + ([query_filter] if query_filter else []),
            must_not=[models.HasVectorCondition(has_vector=side.inverted)],
        )
        with _Timer(report, "seconds_database"):
            total = self._call("count points", self.client.count, collection_name=self.collection_name,
                               count_filter=flt, exact=True).count
        bar = _progress(total, f"invert {modality}s", progress)
        try:
            while True:
                # inverted points leave the filter, so the first page is always the next batch
                with _Timer(report, "seconds_database"):
                    records, _ = self._call("read points", self.client.scroll, collection_name=self.collection_name,
                                            scroll_filter=flt, limit=batch_size, with_payload=False,
                                            with_vectors=[side.native])
                records = [r for r in records if normalize_point_id(r.id) not in done]
                if not records:
                    break
                pids = [normalize_point_id(r.id) for r in records]
                feats = _check_features(torch.tensor([r.vector[side.native] for r in records]), self.dim,
                                        f"stored {side.native!r} vectors")
                with _Timer(report, "seconds_inversion"):
                    out = self._invert(modality, feats, pids, progress=False)
                updates = [models.PointVectors(id=pid, vector={side.inverted: _vector_list(row)})
                           for pid, row in zip(pids, out)]
                with _Timer(report, "seconds_database"):
                    self._write([], updates)
                report.ids.extend(pids)
                done.update(pids)
                report.inverted += len(pids)
                bar.update(len(pids))
        finally:
            bar.close()
        return report

    # --------------------------------------------------------------------------------------------- search
    def _side(self, modality: str) -> _Side:
        if modality not in self._sides:
            raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
        return self._sides[modality]

    def search_images(
        self,
        query: Any,
        *,
        mode: str = "gallery_inverted",
        limit: int = 10,
        query_filter: models.Filter | None = None,
        exclude_query: bool = True,
        with_payload: bool | Sequence[str] = True,
        with_vectors: bool | Sequence[str] = False,
        prefetch_limit: int | None = None,
        search_params: models.SearchParams | None = None,
    ) -> list[models.ScoredPoint] | list[list[models.ScoredPoint]]:
        """Image->image search, natively or inter-modally (see the module docstring for the modes).

        Args:
            query: a PIL image, an image path, a native image feature [E] or a batch [B, E], a stored point id
                (int, uuid.UUID or UUID string), or a list of any of these (a batch).
            mode: "native", "gallery_inverted", "query_inverted", "fused", or the name of a derived image
                vector (then the query must be an image or a point id).
            limit: results per query.
            query_filter: a Qdrant filter on the gallery (e.g. on payload fields).
            exclude_query: leave the query's own point out of the results (its content id or given id).
            prefetch_limit: candidates per route for "fused" (default max(4 * limit, 40)).
            search_params: Qdrant search parameters; default rescoring when the collection is quantized.

        Returns:
            A list of ScoredPoint, or one list per query for a batch.
        """
        return self._search(self._sides["image"], query, mode, limit, query_filter, exclude_query, with_payload,
                            with_vectors, prefetch_limit, search_params)

    def search_texts(
        self,
        query: Any,
        *,
        mode: str = "gallery_inverted",
        limit: int = 10,
        query_filter: models.Filter | None = None,
        exclude_query: bool = True,
        with_payload: bool | Sequence[str] = True,
        with_vectors: bool | Sequence[str] = False,
        prefetch_limit: int | None = None,
        search_params: models.SearchParams | None = None,
    ) -> list[models.ScoredPoint] | list[list[models.ScoredPoint]]:
        """Text->text search; as :meth:`search_images` with OVI. A string in UUID form is a point id."""
        return self._search(self._sides["text"], query, mode, limit, query_filter, exclude_query, with_payload,
                            with_vectors, prefetch_limit, search_params)

    def _resolve_queries(self, side: _Side, query: Any) -> tuple[list[_Query], bool]:
        """Returns (queries, is_batch)."""
        from PIL import Image

        if isinstance(query, (torch.Tensor, np.ndarray)):
            batch = query.ndim == 2
            given = _check_features(query, self.dim, f"{side.modality} query features", normalize=False)
            return [_Query(features=F.normalize(row, dim=-1), exclude=features_id(side.modality, row))
                    for row in given], batch
        if isinstance(query, (list, tuple)):
            if not query:
                raise ValueError("empty query batch")
            if all(isinstance(x, (float, np.floating)) for x in query):
                return self._resolve_queries(side, torch.tensor(query, dtype=torch.float32))
            return [q for one in query for q in self._resolve_queries(side, one)[0]], True
        if side.modality == "image" and isinstance(query, (str, os.PathLike)) and os.path.exists(query):
            with open(query, "rb") as f:
                data = f.read()
            item = _Item(0, str(query), raw=data)
            return [_Query(raw=self._pixels(item), exclude=image_bytes_id(data))], False
        if _is_point_id(query):
            return [_Query(pid=normalize_point_id(query))], False
        if side.modality == "image" and isinstance(query, Image.Image):
            item = _Item(0, query, raw=query)
            return [_Query(raw=self._pixels(item), exclude=pil_image_id(query))], False
        if side.modality == "text" and isinstance(query, str):
            if not query.strip():
                raise ValueError("empty text query")
            return [_Query(raw=self.tokenizer([query])[0], exclude=text_id(query))], False
        if side.modality == "image" and isinstance(query, (str, os.PathLike)):
            raise FileNotFoundError(f"query is neither an image file nor a point id: {query!r}")
        raise TypeError(f"unsupported {side.modality} query of type {type(query).__name__}")

    def _encode_queries(self, side: _Side, queries: list[_Query]) -> None:
        raw = [q for q in queries if q.raw is not None and q.features is None]
        if not raw:
            return
        inputs = torch.stack([q.raw for q in raw])
        if side.modality == "image":
            feats = encode_images(self.model, self.preprocess, list(inputs), batch_size=len(raw))
        else:
            with torch.no_grad():
                feats = F.normalize(self.model.encode_text(inputs.to(model_device(self.model))).float(), dim=-1).cpu()
        for q, row in zip(raw, _check_features(feats, self.dim, f"{side.modality} query features")):
            q.features = row

    def _search(self, side, query, mode, limit, query_filter, exclude_query, with_payload, with_vectors,
                prefetch_limit, search_params):
        derived = self._derived_for(side.modality)
        if mode not in MODES and mode not in derived:
            raise ValueError(f"mode must be one of {MODES} or a derived {side.modality} vector "
                             f"({sorted(derived)}), got {mode!r}")
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        queries, batch = self._resolve_queries(side, query)
        if not exclude_query:
            self._load_point_queries(side, queries, mode)
        if mode in derived:
            for q in queries:
                if q.pid is None and q.raw is None:
                    raise ValueError(f"mode {mode!r} (a derived vector) needs the query as raw input or a point id, "
                                     "not features")
        else:
            self._encode_queries(side, queries)
        inverted = self._invert_queries(side, queries, mode)
        params = search_params if search_params is not None else self._search_params()
        requests = [self._request(side, q, inv, mode, limit, query_filter, exclude_query, with_payload, with_vectors,
                                  prefetch_limit or max(4 * limit, 40), params)
                    for q, inv in zip(queries, inverted)]
        try:
            if len(requests) == 1 and not batch:
                r = requests[0]
                response = self._call("query points", self.client.query_points, collection_name=self.collection_name,
                                      query=r.query, using=r.using, prefetch=r.prefetch, query_filter=r.filter,
                                      search_params=r.params, limit=r.limit, with_payload=r.with_payload,
                                      with_vectors=r.with_vector, lookup_from=r.lookup_from)
                return response.points
            responses = self._call("query points", self.client.query_batch_points,
                                   collection_name=self.collection_name, requests=requests)
            return [resp.points for resp in responses]
        except (ValueError, KeyError) as exc:  # local mode: a missing point or vector
            self._explain_missing(side, queries, mode, exc)
            raise
        except Exception as exc:
            from qdrant_client.http.exceptions import UnexpectedResponse

            if isinstance(exc, UnexpectedResponse) and exc.status_code in (400, 404):
                self._explain_missing(side, queries, mode, exc)
            raise

    def _vectors_used(self, side: _Side, mode: str) -> list[str]:
        """Stored vectors a point-id query of this mode reads."""
        if mode in ("native", "gallery_inverted"):
            return [side.native]
        if mode == "query_inverted":
            return [side.inverted]
        if mode == "fused":
            return [side.native, side.inverted]
        return [mode]

    def _stored_query_vectors(self, side: _Side, pids: list[PointId], names: list[str]) -> dict[PointId, dict]:
        """{pid: {name: [E] list}} for the query points; PointNotFoundError names what is missing."""
        records = self._call("read query points", self.client.retrieve, collection_name=self.collection_name,
                             ids=pids, with_payload=False, with_vectors=names)
        stored = {normalize_point_id(r.id): r.vector or {} for r in records}
        for pid in pids:
            if pid not in stored:
                raise PointNotFoundError(f"point {pid} is not in collection {self.collection_name!r}")
            for name in names:
                if name not in stored[pid]:
                    hint = ""
                    if name == side.inverted:
                        hint = f" (ingested with invert=False? run store.invert_missing({side.modality!r}))"
                    raise PointNotFoundError(
                        f"point {pid} in collection {self.collection_name!r} has no {name!r} vector{hint}"
                    )
        return stored

    def _load_point_queries(self, side: _Side, queries: list[_Query], mode: str) -> None:
        """Turns point-id queries into stored vectors: Qdrant always leaves out the point it looks up."""
        pids = [q.pid for q in queries if q.pid is not None]
        if not pids:
            return
        names = self._vectors_used(side, mode)
        stored = self._stored_query_vectors(side, pids, names)
        for q in queries:
            if q.pid is not None:
                q.stored = {name: torch.tensor(stored[q.pid][name], dtype=torch.float32) for name in names}
                q.features = q.stored.get(side.native)
                q.pid = None

    def _explain_missing(self, side: _Side, queries: list[_Query], mode: str, exc: Exception) -> None:
        """After a failed point-id query: raises PointNotFoundError when a query point or vector is missing."""
        pids = [q.pid for q in queries if q.pid is not None]
        if pids:
            try:
                self._stored_query_vectors(side, pids, self._vectors_used(side, mode))
            except PointNotFoundError as missing:
                raise missing from exc

    def _invert_queries(self, side: _Side, queries: list[_Query], mode: str) -> list[torch.Tensor | None]:
        """The inverted query vectors the mode needs ([E] each), or None where a stored point supplies it."""
        if mode not in ("query_inverted", "fused"):
            return [None] * len(queries)
        out: list[torch.Tensor | None] = [None] * len(queries)
        todo = []
        for i, q in enumerate(queries):
            if q.stored is not None and side.inverted in q.stored:
                out[i] = q.stored[side.inverted]
            elif q.pid is None:
                todo.append(i)
        if todo:
            feats = torch.stack([queries[i].features for i in todo])
            pids = [queries[i].exclude or features_id(side.modality, queries[i].features) for i in todo]
            inv = self._invert(side.modality, feats, pids, progress=False)
            for i, row in zip(todo, inv):
                out[i] = row
        return out

    def _request(self, side, q: _Query, inverted, mode, limit, query_filter, exclude_query, with_payload,
                 with_vectors, prefetch_limit, params) -> models.QueryRequest:
        flt = query_filter
        exclude = q.pid if q.pid is not None else q.exclude
        if exclude_query and exclude is not None:
            flt = models.Filter(
                must=[query_filter] if query_filter is not None else None,
                must_not=[models.HasIdCondition(has_id=[exclude])],
            )

        def route(using: str, vector: torch.Tensor | None, lookup: str | None) -> dict:
            """query/using/lookup_from of one route: a stored point is looked up, never recomputed."""
            if q.pid is not None:
                lookup_from = None
                if lookup is not None and lookup != using:
                    lookup_from = models.LookupLocation(collection=self.collection_name, vector=lookup)
                return {"query": q.pid, "using": using, "lookup_from": lookup_from}
            return {"query": _vector_list(vector), "using": using, "lookup_from": None}

        stored = q.stored or {}
        if mode in ("native", "gallery_inverted"):
            using = side.native if mode == "native" else side.inverted
            spec = route(using, q.features, side.native)
        elif mode == "query_inverted":
            spec = route(side.native, inverted, side.inverted)
        elif mode == "fused":
            routes = [route(side.inverted, q.features, side.native), route(side.native, inverted, side.inverted)]
            prefetch = [models.Prefetch(**r, filter=flt, params=params, limit=prefetch_limit) for r in routes]
            return models.QueryRequest(prefetch=prefetch, query=models.FusionQuery(fusion=models.Fusion.RRF),
                                       filter=flt, limit=limit, with_payload=with_payload, with_vector=with_vectors)
        else:  # a derived vector
            vector = stored.get(mode)
            if vector is None and q.pid is None:
                d = self.derived[mode]
                with torch.no_grad():
                    vector = d.compute(self.model, q.raw[None].to(model_device(self.model))).float().cpu()[0]
                vector = _check_features(vector[None], d.dim, f"derived vector {mode!r}")[0]
            spec = route(mode, vector, mode)
        return models.QueryRequest(**spec, filter=flt, params=params, limit=limit, with_payload=with_payload,
                                   with_vector=with_vectors)

    # ---------------------------------------------------------------------------------------- inspection
    def count(self, modality: str | None = None) -> int:
        """Number of points (all, or those holding the native vector of ``modality``)."""
        flt = None
        if modality is not None:
            flt = models.Filter(must=[models.HasVectorCondition(has_vector=self._side(modality).native)])
        return self._call("count points", self.client.count, collection_name=self.collection_name,
                          count_filter=flt, exact=True).count

    def info(self) -> dict[str, Any]:
        """Collection, location, model id, vector names and sizes, and point counts per vector."""
        info = self._call("read the collection", self.client.get_collection, self.collection_name)
        vectors = named_vector_stats(
            info.config.params.vectors,
            lambda has: self._call("count points", self.client.count, collection_name=self.collection_name,
                                   count_filter=has, exact=True).count,
        )
        return {
            "collection": self.collection_name,
            "location": self.location,
            "model_id": self.model_id,
            "embed_dim": self.dim,
            "vector_names": asdict(self.names),
            "derived_vectors": {n: {"modality": d.modality, "dim": d.dim} for n, d in self.derived.items()},
            "points": self.count(),
            "vectors": vectors,
            "quantization": self.quantization_config is not None,
        }

