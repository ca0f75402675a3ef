"""CrossModalStore: a Qdrant collection of images and texts with native, inverted and derived named vectors.

The facade over the collection layer (crossgap_qdrant.store.collection), the encoder side (encoder.py),
ingestion (ingest.py) and query planning (search.py). See search.py for the search modes and ingest.py for
resumable ingestion and the id policy.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from qdrant_client import models

from crossgap_qdrant.images import WHITE
from crossgap_qdrant.inversion import OTIConfig, OVIConfig
from crossgap_qdrant.models import ClipModel
from crossgap_qdrant.models.towers import embed_dim
from crossgap_qdrant.store import ingest as ingest_lib
from crossgap_qdrant.store import warm as warm_lib
from crossgap_qdrant.store.adopt import adopt as adopt_collection
from crossgap_qdrant.store.adopt import adoption_layout
from crossgap_qdrant.store.collection import close_keeping
from crossgap_qdrant.store.connection import RetryPolicy
from crossgap_qdrant.store.encoder import Encoder
from crossgap_qdrant.store.engines import open_collection
from crossgap_qdrant.store.errors import CollectionNotFoundError, InvalidRequestError, PointNotFoundError
from crossgap_qdrant.store.identity import check_model_identity
from crossgap_qdrant.store.ids import normalize_point_id
from crossgap_qdrant.store.ingest import Ingestion, IngestReport
from crossgap_qdrant.store.opening import (
    as_collection,
    describe_collection,
    display_name,
    model_handle,
    recorded_derived,
)
from crossgap_qdrant.store.request import SearchRequest
from crossgap_qdrant.store.schema import (
    METADATA_KEY,
    DerivedVector,
    VectorNames,
    check_layout,
    check_modality,
    check_schema,
    metadata,
    vector_sizes,
)
from crossgap_qdrant.store.search import Searcher
from crossgap_qdrant.store.settings import RecordedSettings

logger = logging.getLogger(__name__)


class CrossModalStore(RecordedSettings):
    """A Qdrant collection of images and texts with native, inverted and derived named vectors.

    Args:
        client: a QdrantClient (server, ":memory:", local folder) or a Collection from
            :func:`crossgap_qdrant.store.open_collection`; :meth:`open` builds one from a location.
        collection_name: created when missing (see ``create``), validated otherwise.
        clip: the model handle from :func:`crossgap_qdrant.models.load_model` (or ``ClipModel.from_parts``);
            a bare open_clip model with ``tokenizer=`` and ``preprocess=`` still works in this release and warns
            once.
        model_id: overrides the handle's content fingerprint recorded in the collection (a collection is
            never mixed across models).
        vector_names: names of the four named vectors.
        oti_config, ovi_config: inversion settings (default: the published ones).
        derived_vectors: extra named vectors, computed from raw inputs at ingestion.
        shard_number, replication_factor, quantization_config, on_disk: collection options (servers).
        rescore, oversampling: quantized search settings.
        retry: retries and total deadline of server calls; None disables retries.
        upsert_batch_size: points per write request.
        create: what happens to a missing collection: True creates it now; "on_write" (what :meth:`open`
            does) creates it on the first write (an ingest, a recorded setting), so reads never create it and
            an ingest that writes nothing removes it again; False raises CollectionNotFoundError.
        image_background: RGB (or one grey level) that transparent image pixels are flattened onto, at
            ingestion and for image queries; white by default, as CLIP-style models saw line art.
        warm_start: invert with the collection's recorded warm starts (:meth:`fit_warm_start`,
            :meth:`use_warm_start`): a few exact steps from a learned prediction instead of the published budget.

    Attributes:
        created: this store created its collection (it did not exist before, and a write made it).
    """

    def __init__(
        self,
        client: Any,
        collection_name: str,
        clip: ClipModel,
        *,
        tokenizer: Callable | None = None,
        preprocess: Callable | None = None,
        model_id: str | None = None,
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
        create: bool | str = True,
        image_background: int | tuple[int, int, int] = WHITE,
        warm_start: bool = False,
    ):

        self.clip = model_handle(clip, tokenizer, preprocess)
        self.model_id = model_id if model_id is not None else self.clip.model_id
        if not self.model_id or not isinstance(self.model_id, str):
            raise InvalidRequestError("model_id must be a non-empty string naming the model's weights")
        self.collection = as_collection(client, collection_name, retry)
        self.collection_name = self.collection.name
        schema = self.collection.schema() if self.collection.exists() else None  # None: not created yet
        self.collection, schema, self.names = adoption_layout(self.collection, schema, vector_names)
        self.derived = {**recorded_derived(self.collection.name, schema, self.clip.model),
                        **dict(derived_vectors or {})}
        self.oti_config = oti_config if oti_config is not None else OTIConfig()
        self.ovi_config = ovi_config if ovi_config is not None else OVIConfig()
        self.upsert_batch_size = upsert_batch_size
        self.dim = embed_dim(self.clip.model)
        self._owns_collection = False
        check_layout(self.names, self.derived)
        self.encoder = Encoder(self.clip, self.dim, self.oti_config, self.ovi_config, self.derived,
                               image_background)
        self._metadata = metadata(self.model_id, display_name(self.clip), self.dim, self.names, self.derived)
        self.created = False
        self._pending: dict[str, Any] | None = None  # how to create a missing collection on the first write
        quantized = self._ensure_collection(schema, create, shard_number, replication_factor, quantization_config,
                                            on_disk)
        params = None
        if quantized or quantization_config is not None:
            params = models.SearchParams(
                quantization=models.QuantizationSearchParams(rescore=rescore, oversampling=oversampling))
        self.searcher = Searcher(self.collection, self.encoder, self.names, params)
        warm_lib.settle(self.collection, self._metadata[METADATA_KEY].get(warm_lib.WARM_KEY) or {})
        if warm_start:
            self.use_warm_start()
        logger.debug("collection %r at %s on %s, model %s", self.collection_name, self.location, self.engine,
                     self.model_id)

    # ------------------------------------------------------------------------------------- construction
    @classmethod
    def open(
        cls,
        location: str = "./qdrant_data",
        collection_name: str = "crossgap",
        clip: ClipModel | None = None,
        *,
        engine: str | None = None,
        create: bool = True,
        api_key: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = RetryPolicy(),
        client_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> "CrossModalStore":
        """Opens a collection at a location and the store over it; :meth:`close` releases both.

        Args:
            location: a folder (Qdrant's engine embedded, qdrant-edge), ":memory:", or "http(s)://host:port".
            engine: None (by location), "edge", "local" (qdrant-client's local mode for a folder), "client".
            create: True: a missing collection is created on the first write; False: CollectionNotFoundError.
            timeout: seconds per server request.
            kwargs: the store's keyword arguments (tokenizer, preprocess, model_id, ...).
        """
        if clip is None:
            raise TypeError("open() needs a model handle (see crossgap_qdrant.models.load_model)")
        collection = open_collection(location, collection_name, engine=engine, api_key=api_key, timeout=timeout,
                                     retry=retry, client_kwargs=client_kwargs, create_folder=create)
        try:
            store = cls(collection, collection_name, clip, retry=retry, create="on_write" if create else False,
                        **kwargs)
        except BaseException as exc:
            close_keeping(collection, exc)
            raise
        store._owns_collection = True
        return store

    @classmethod
    def adopt(cls, location_or_client: Any, collection_name: str, model: Any, *, native_vector: str,
              modality: str = "image", **kwargs: Any) -> "CrossModalStore":
        """Adopts a collection another tool built (crossgap_qdrant.store.adopt): ``native_vector`` ("" for a
        single unnamed vector) holds ``modality`` embeddings of ``model``; nothing of the user's points is
        rewritten. Returns the store over it; fill its inverted vectors with crossgap_qdrant.store.backfill."""
        return adopt_collection(cls, location_or_client, collection_name, model, native_vector=native_vector,
                     modality=modality, **kwargs)

    def close(self) -> None:
        """Closes the collection when this store opened it (:meth:`open`); releases a folder's lock."""
        if self._owns_collection:
            self.collection.close()
            self._owns_collection = False

    def __enter__(self) -> "CrossModalStore":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        close_keeping(self, exc)

    @property
    def engine(self) -> str:
        return self.collection.engine

    @property
    def location(self) -> str:
        return self.collection.location

    def _ensure_collection(self, schema, create, shard_number, replication_factor, quantization_config,
                           on_disk) -> bool:
        sizes = vector_sizes(self.names, self.dim, self.derived)
        where = f"collection {self.collection.name!r} at {self.collection.location}"
        if schema is None:
            if not create:
                raise CollectionNotFoundError(f"no {where}: ingest something first (crossgap-qdrant ingest ... "
                                              f"--collection {self.collection.name}), or check the name and location")
            self._pending = dict(vectors=sizes, on_disk=on_disk, quantization_config=quantization_config,
                                 shard_number=shard_number, replication_factor=replication_factor)
            if create != "on_write":
                self._create_pending()
            return quantization_config is not None
        missing = check_schema(schema, sizes, self.model_id, where)
        recorded = schema.metadata.get(METADATA_KEY) or {}
        if not recorded.get("model_id") and self.collection.count() > 0:  # the record is gone: ask the vectors
            check_model_identity(self.collection, self.encoder, self.names, where)
        if missing:  # backfill of a collection that already holds some of the vectors
            self.collection.add_vectors(missing)
        # keep what later tools recorded (the evaluation's recommended modes, hubness, warm starts) and the
        # derived vectors this store was not given (those without a record() cannot be rebuilt from it)
        own = self._metadata[METADATA_KEY]
        wanted = {**recorded, **own, "derived": {**(recorded.get("derived") or {}), **own["derived"]}}
        if "default_modes" in recorded:
            wanted["default_modes"] = recorded["default_modes"]
        self._metadata = {METADATA_KEY: wanted}
        if missing or recorded != wanted:
            self.collection.set_metadata({**schema.metadata, **self._metadata})
        return schema.quantized

    def _create_pending(self) -> bool:
        """Creates the missing collection before a write; True when this call created it."""
        if self._pending is None:
            return False
        self.collection.create(self._pending["vectors"], self._metadata,
                               **{k: v for k, v in self._pending.items() if k != "vectors"})
        self._pending, self.created = None, True
        return True

    def _require_collection(self) -> None:
        if self._pending is not None:
            raise CollectionNotFoundError(
                f"no collection {self.collection.name!r} at {self.collection.location}: nothing is created by a "
                "read. Ingest into it first, or check the collection name and location.")

    # ------------------------------------------------------------------------------------------ ingestion
    def ingest_images(self, images: Any, *, payloads: Sequence[Mapping[str, Any] | None] | None = None,
                      ids: Sequence[Any] | None = None, invert: bool = True,
                      inverted_features: torch.Tensor | np.ndarray | None = None, batch_size: int = 64,
                      progress: bool = True, overwrite: bool = False) -> IngestReport:
        """Adds images: native vector, OTI vector, derived image vectors and payload per image.

        Args:
            images: a folder (searched recursively for image files), an image path, a list of paths or PIL
                images, or precomputed native image features [N, E] (then derived vectors are left out).
            payloads: one dict (or None) per image, added to the automatic payload ({"modality": "image",
                "source": path, "content_sha256": ...}), whose keys it may not set; for an image already
                stored, merged into its stored payload.
            ids: one point id per image (int in [0, 2**64) or UUID); default uuid5 of the content hash.
            invert: compute and store OTI vectors (False: native and derived only; :meth:`invert_missing`
                adds them later).
            inverted_features: precomputed OTI vectors [N, E] aligned with ``images`` (skips the inversion).
            batch_size: items encoded, inverted and written together.
            progress: show progress bars (items, and inversion steps within a batch).
            overwrite: replace points whose given id holds other content (otherwise IdConflictError).

        Returns:
            The report; unreadable or corrupt files are listed in ``failed``, the rest goes in.

        Raises:
            ValueError: NaN/inf values, all-zero rows or a wrong width in given features (nothing written).
            IdConflictError: a given id holds another item (nothing of this call written).
        """
        items = ingest_lib.image_items(images, self.dim)
        return self._ingest("image", items, payloads, ids, invert, inverted_features, batch_size, progress, overwrite)

    def ingest_texts(self, texts: Any, *, payloads: Sequence[Mapping[str, Any] | None] | None = None,
                     ids: Sequence[Any] | None = None, invert: bool = True,
                     inverted_features: torch.Tensor | np.ndarray | None = None, batch_size: int = 64,
                     progress: bool = True, overwrite: bool = False) -> IngestReport:
        """Adds texts: native vector, OVI vector, derived text vectors and payload ({"modality", "text"}).

        Args:
            texts: a list of strings, the path of a UTF-8 text file (one text per line; blank lines skipped),
                or precomputed native text features [N, E]. A plain string must be an existing file.
            Other arguments as in :meth:`ingest_images`; empty texts are listed in ``failed``.
        """
        items = ingest_lib.text_items(texts, self.dim)
        return self._ingest("text", items, payloads, ids, invert, inverted_features, batch_size, progress, overwrite)

    def _ingest(self, modality, items, payloads, ids, invert, inverted_features, batch_size, progress, overwrite):
        run = Ingestion(self.collection, self.encoder, self.names, modality, invert=invert, overwrite=overwrite,
                        write_batch=self.upsert_batch_size)
        pending = self._pending
        made = self._create_pending()
        try:
            return run.run(items, payloads, ids, inverted_features, batch_size, progress)
        finally:
            if made:
                self._drop_if_empty(pending)

    def _drop_if_empty(self, pending: dict[str, Any]) -> None:
        """Removes the collection an ingest created when nothing went in (a failed or empty ingest)."""
        if self.collection.count() == 0:
            self.collection.drop()
            self._pending, self.created = pending, False

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
        self._require_collection()
        return ingest_lib.invert_missing(self.collection, self.encoder, self.names, check_modality(modality),
                                         batch_size=batch_size, progress=progress, query_filter=query_filter)

    # --------------------------------------------------------------------------------------------- search
    def search_images(self, query: Any = None, *, text: Any = None, image: Any = None, mode: str | None = None,
                      limit: int = 10, query_filter: models.Filter | None = None, exclude_query: bool = True,
                      with_payload: bool | Sequence[str] = True, with_vectors: bool | Sequence[str] = False,
                      prefetch_limit: int | None = None, search_params: models.SearchParams | None = None,
                      hubness: bool | None = None, strict: bool = False):
        """Searches the images: by image (natively or inter-modally) or by text (CLIP's text->image search).

        Args:
            query: an image query (as ``image``), kept for positional use.
            text: a text or list of texts: text->image search against the native image vectors.
            image: a PIL image, an image path, a native image feature [E] or a batch [B, E], a stored point id
                (int, uuid.UUID or UUID string), or a list of any of these (a batch).
            mode: for image queries "native", "gallery_inverted", "query_inverted", "fused", or a derived image
                vector; default: the collection's recorded mode, else "gallery_inverted". Text queries: "native".
            limit: results per query.
            query_filter: a Qdrant filter on the gallery (e.g. on payload fields).
            exclude_query: leave the query's own point out of the results (its content id or given id).
            prefetch_limit: candidates per route for "fused", and candidates re-scored by hubness correction
                (default max(4 * limit, 40)).
            search_params: Qdrant search parameters; default rescoring when the collection is quantized.
            hubness: re-score with the fitted hubness statistics of the mode (:meth:`fit_hubness`): True,
                False, or None to follow the collection's recorded default (:meth:`set_default_mode`).
            strict: refuse (PartialCoverageError) a search in a mode whose gallery vectors only some of the
                gallery holds; by default such a search warns (PartialCoverageWarning) with the counts and the
                command that completes them.

        Returns:
            A list of ScoredPoint, or one list per query for a batch.
        """
        return self._search("image", query, text, image, mode, limit, query_filter, exclude_query, with_payload,
                            with_vectors, prefetch_limit, search_params, hubness, strict)

    def search_texts(self, query: Any = None, *, text: Any = None, image: Any = None, mode: str | None = None,
                     limit: int = 10, query_filter: models.Filter | None = None, exclude_query: bool = True,
                     with_payload: bool | Sequence[str] = True, with_vectors: bool | Sequence[str] = False,
                     prefetch_limit: int | None = None, search_params: models.SearchParams | None = None,
                     hubness: bool | None = None, strict: bool = False):
        """Searches the texts: by text (natively or inter-modally, with OVI) or by image (image->text).

        ``query`` is a text query (as ``text``); a string in UUID form is a point id. Other arguments as in
        :meth:`search_images`.
        """
        return self._search("text", query, text, image, mode, limit, query_filter, exclude_query, with_payload,
                            with_vectors, prefetch_limit, search_params, hubness, strict)

    def _search(self, gallery, query, text, image, mode, limit, query_filter, exclude_query, with_payload,
                with_vectors, prefetch_limit, search_params, hubness=None, strict=False):
        given = [(name, value) for name, value in (("query", query), ("text", text), ("image", image))
                 if value is not None]
        if len(given) != 1:
            raise TypeError(f"search_{gallery}s takes exactly one of query, text= or image=, got "
                            f"{', '.join(n for n, _ in given) or 'none'}")
        name, value = given[0]
        query_modality = gallery if name == "query" else name
        if mode is None:
            mode = self.default_mode(gallery) if query_modality == gallery else "native"
        hub = None
        if query_modality == gallery:
            hub = self.hub_correction(gallery, mode, hubness)
        elif hubness:
            raise InvalidRequestError(f"hubness correction applies to {gallery}->{gallery} searches, not "
                                      f"{query_modality}->{gallery}")
        request = SearchRequest.build(query_modality, gallery, value, mode=mode, limit=limit,
                                      derived=self.encoder.derived_for(gallery), prefetch_limit=prefetch_limit,
                                      hubness=hub, query_filter=query_filter, exclude_query=exclude_query,
                                      with_payload=with_payload, with_vectors=with_vectors,
                                      search_params=search_params, literal_text=name == "text", strict=strict)
        self._require_collection()
        return self.searcher.search(request)

    # ---------------------------------------------------------------------------------------- inspection
    def modality_of(self, point_id: Any) -> str:
        """"image" or "text": the modality of a stored point (its native vector says which).

        Raises:
            PointNotFoundError: no such point, or it holds neither native vector.
        """
        pid = normalize_point_id(point_id)
        self._require_collection()
        names = [self.names.native("image"), self.names.native("text")]
        records = self.collection.retrieve([pid], with_vectors=names)
        if not records:
            raise PointNotFoundError(f"point {pid} is not in collection {self.collection_name!r}")
        held = [m for m, name in zip(("image", "text"), names) if name in (records[0].vector or {})]
        if len(held) != 1:
            raise PointNotFoundError(f"point {pid} in collection {self.collection_name!r} holds "
                                     f"{'both' if held else 'neither'} native vector{'s' if held else ''} "
                                     f"({', '.join(names)})")
        return held[0]

    def count(self, modality: str | None = None) -> int:
        """Number of points (all, or those holding the native vector of ``modality``)."""
        flt = None
        if modality is not None:
            native = self.names.native(check_modality(modality))
            flt = models.Filter(must=[models.HasVectorCondition(has_vector=native)])
        return 0 if self._pending is not None else self.collection.count(flt)  # not created: nothing written

    def info(self) -> dict[str, Any]:
        """Engine, collection, location, model, vector names and sizes, and point counts per vector.

        Raises:
            CollectionNotFoundError: the collection was not created yet (nothing was written).
        """
        self._require_collection()
        return describe_collection(self.collection)
