"""Query planning: resolve queries, pick the vectors a mode compares, and build Qdrant requests.

Same-modality search (image->image, text->text) runs natively or inter-modally:

=================  ==================================  ===============================================
mode               query vector                         gallery vector (``using``)
=================  ==================================  ===============================================
native             native query feature                 native gallery vector (intra-modal baseline)
gallery_inverted   native query feature                 inverted gallery vector (other space): no
                                                        query-time cost
query_inverted     inverted query (other space)         native gallery vector: an optimisation per query
fused              both inter-modal routes as Qdrant prefetches, combined by reciprocal rank fusion
=================  ==================================  ===============================================

A derived vector (IsoCLIP, PCA, gap shift, ...) is a mode of its own: the query's derived vector against the
gallery's derived vectors, or against the native ones for a query-side map (``gallery`` "native", the gap
shift); :func:`mode_vectors` names the two sides of every mode.

Cross-modal search (text->image, image->text) is CLIP's own search: the native query feature against the
other modality's native vectors (mode "native"). A query given as a point id reads the point's stored vectors
(its inverted vector too, so query_inverted costs no optimisation) and is then searched by vector.

Hubness correction (:class:`~crossgap_qdrant.store.request.HubCorrection`, fitted by
crossgap_qdrant.store.hubness) re-scores a cosine search's candidates with ``score - weight * payload[hub key]``:
as a Formula query over a prefetch where the engine runs them (:attr:`Searcher.server_rescoring`), else on the
client over the same candidates.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from qdrant_client import models

from crossgap_qdrant.features import normalize_features
from crossgap_qdrant.store import ids as pid_lib
from crossgap_qdrant.store.collection import Collection
from crossgap_qdrant.store.coverage import CoverageCheck
from crossgap_qdrant.store.encoder import Encoder, checked_rows
from crossgap_qdrant.store.errors import InvalidRequestError, PointNotFoundError, VectorsNotStoredError
from crossgap_qdrant.store.request import SearchRequest
from crossgap_qdrant.store.schema import VectorNames, derived_gallery

logger = logging.getLogger(__name__)

@dataclass
class Query:
    """A resolved query of one modality: a native feature, raw inputs for derived vectors, stored vectors."""

    modality: str
    features: torch.Tensor | None = None  # [E] unit native feature
    raw: torch.Tensor | None = None  # [3, H, W] pixels or [L] token ids, when the query came raw
    exclude: pid_lib.PointId | None = None  # the query's own point id (content hash or the given id)
    exclude_also: tuple = ()  # the ids its content has in another form (an image's file bytes and pixels)
    stored: dict[str, torch.Tensor] | None = None  # vectors read from a stored point
    pid: pid_lib.PointId | None = None  # set for point-id queries until their vectors are read


def mode_vectors(names: VectorNames, modality: str, mode: str, derived: dict[str, Any]) -> tuple[str, str]:
    """(query-side vector, gallery vector) a same-modality search in ``mode`` compares (not for "fused")."""
    native, inverted = names.native(modality), names.inverted(modality)
    if mode == "native":
        return native, native
    if mode == "gallery_inverted":
        return native, inverted
    if mode == "query_inverted":
        return inverted, native
    if mode in derived:
        return mode, (native if derived_gallery(derived[mode]) == "native" else mode)
    raise InvalidRequestError(f"mode {mode!r} does not compare one query vector with one gallery vector")


class Searcher:
    """Plans and runs searches over one collection (see the module docstring).

    Attributes:
        server_rescoring: run hubness correction as a Formula query in the engine (default: where the engine
            supports them); False re-scores the same candidates on the client.
    """

    def __init__(self, collection: Collection, encoder: Encoder, names: VectorNames,
                 search_params: models.SearchParams | None):
        self.collection = collection
        self.encoder = encoder
        self.names = names
        self.search_params = search_params
        self.server_rescoring = bool(getattr(collection, "supports_formula", False))
        self.coverage = CoverageCheck(collection, names)

    # ----------------------------------------------------------------------------------------- resolving
    def resolve(self, modality: str, query: Any, literal_text: bool = False) -> tuple[list[Query], bool]:
        """(queries, is_batch) from features, a point id, a raw image or text, or a list of them.

        An int or uuid.UUID is a point id; so is a string in UUID form, unless ``literal_text`` (the caller
        said text=...).
        """
        dim = self.encoder.dim
        if isinstance(query, (torch.Tensor, np.ndarray)):
            given = checked_rows(query, dim, f"{modality} query features", "")
            unit = normalize_features(given, f"{modality} query features")
            return [Query(modality, features=u, exclude=pid_lib.features_id(modality, given[i]))
                    for i, u in enumerate(unit)], query.ndim == 2
        if isinstance(query, (list, tuple)):
            if not query:
                raise InvalidRequestError("empty query batch")
            if all(isinstance(x, (float, np.floating)) for x in query):
                return self.resolve(modality, torch.tensor(query, dtype=torch.float32))
            return [q for one in query for q in self.resolve(modality, one, literal_text)[0]], True
        if modality == "image":
            if isinstance(query, Image.Image):
                source = getattr(query, "filename", "")  # opened from a file: stored from that file, maybe
                also = (pid_lib.file_image_id(source),) if source and os.path.isfile(source) else ()
                return [Query(modality, raw=self.encoder.pixels(query, name="the query image"),
                              exclude=pid_lib.pil_image_id(query), exclude_also=also)], False
            if isinstance(query, (str, os.PathLike)) and os.path.isfile(query):
                with open(query, "rb") as f:
                    data = f.read()
                raw = self.encoder.pixels(data, name=str(query))
                return [Query(modality, raw=raw, exclude=pid_lib.image_bytes_id(data),
                              exclude_also=(pid_lib.decoded_image_id(data),))], False
            if pid_lib.is_point_id(query):
                return [Query(modality, pid=pid_lib.normalize_point_id(query))], False
            if isinstance(query, (str, os.PathLike)):
                raise FileNotFoundError(f"image query is neither an image file nor a point id: {str(query)!r}")
        else:
            # ints and uuid.UUID objects always name points; a string in UUID form does unless given as text=
            if pid_lib.is_point_id(query) and not (literal_text and isinstance(query, str)):
                return [Query(modality, pid=pid_lib.normalize_point_id(query))], False
            if isinstance(query, str):
                if not query.strip():
                    raise InvalidRequestError("empty text query")
                return [Query(modality, raw=self.encoder.tokens([query])[0], exclude=pid_lib.text_id(query))], False
        raise TypeError(f"unsupported {modality} query of type {type(query).__name__}")

    def _vectors_used(self, modality: str, mode: str, cross: bool) -> list[str]:
        native, inverted = self.names.native(modality), self.names.inverted(modality)
        if cross:
            return [native]
        if mode == "fused":
            return [native, inverted]
        return [mode_vectors(self.names, modality, mode, self.encoder.derived)[0]]

    def _read_points(self, queries: list[Query], mode: str, cross: bool) -> None:
        """Replaces point-id queries by their stored vectors; PointNotFoundError names what is missing."""
        pending = [q for q in queries if q.pid is not None]
        if not pending:
            return
        modality = pending[0].modality
        names = self._vectors_used(modality, mode, cross)
        records = self.collection.retrieve([q.pid for q in pending], with_vectors=names)
        stored = {pid_lib.normalize_point_id(r.id): r.vector or {} for r in records}
        for q in pending:
            vectors = stored.get(q.pid)
            if vectors is None:
                raise PointNotFoundError(f"point {q.pid} is not in collection {self.collection.name!r}")
            for name in names:
                if name not in vectors:
                    hint = ""
                    if name == self.names.inverted(modality):
                        hint = f" (ingested with invert=False? run store.invert_missing({modality!r}))"
                    raise PointNotFoundError(
                        f"point {q.pid} in collection {self.collection.name!r} has no {name!r} vector{hint}"
                    )
            q.stored = {name: torch.tensor(vectors[name], dtype=torch.float32) for name in names}
            q.features = q.stored.get(self.names.native(modality))
            q.exclude, q.pid = q.pid, None

    def _encode(self, queries: list[Query]) -> None:
        raw = [q for q in queries if q.features is None and q.raw is not None]
        if raw:
            native = self.encoder.native(raw[0].modality, torch.stack([q.raw for q in raw]))
            for q, row in zip(raw, native):
                q.features = row

    def _invert(self, queries: list[Query]) -> list[torch.Tensor]:
        inverted_name = self.names.inverted(queries[0].modality)
        out: list[torch.Tensor | None] = [(q.stored or {}).get(inverted_name) for q in queries]
        todo = [i for i, v in enumerate(out) if v is None]
        if todo:
            feats = torch.stack([queries[i].features for i in todo])
            keys = [str(queries[i].exclude or pid_lib.features_id(queries[i].modality, queries[i].features))
                    for i in todo]
            for i, row in zip(todo, self.encoder.invert(queries[0].modality, feats, keys)):
                out[i] = row
        return out

    # ------------------------------------------------------------------------------------------- running
    def search(self, request: SearchRequest):
        """Runs one search (see the module docstring); returns a list of points, or one list per query.

        With ``request.hubness`` the candidates (``request.prefetch_limit`` per query) are re-scored by the
        correction. A same-modality mode whose gallery vectors only some points hold warns
        (PartialCoverageWarning), or with ``request.strict`` raises PartialCoverageError.
        """
        query_modality, gallery_modality, mode = request.query_modality, request.gallery_modality, request.mode
        cross = request.cross
        derived = self.encoder.derived_for(gallery_modality)
        queries, batch = self.resolve(query_modality, request.query, request.literal_text)
        self._read_points(queries, mode, cross)
        if mode in derived:
            for q in queries:
                if q.raw is None and mode not in (q.stored or {}):
                    raise InvalidRequestError(f"mode {mode!r} (a derived vector) needs the query as raw input or "
                                              "a point id, not features")
        else:
            self._encode(queries)
        inverted = self._invert(queries) if mode in ("query_inverted", "fused") else [None] * len(queries)
        params = request.search_params if request.search_params is not None else self.search_params
        requests = [self._request(request, q, inv, params) for q, inv in zip(queries, inverted)]
        if request.hubness is not None:
            requests = [self._rescoring(r, request) for r in requests]
        results = self.collection.query(requests)
        logger.debug("%s->%s search, mode %s: %d quer%s, %d hits", query_modality, gallery_modality, mode,
                     len(requests), "y" if len(requests) == 1 else "ies", sum(map(len, results)))
        if request.hubness is not None and not self.server_rescoring:
            results = [request.hubness.rescore(points, request.limit, request.with_payload) for points in results]
        if not any(results) and request.query_filter is None:
            self._explain_empty(gallery_modality, mode, cross)
        if not cross:
            self.coverage.check(gallery_modality, mode, self._gallery_vector(gallery_modality, mode),
                                request.query_filter, request.strict)
        return results if batch else results[0]

    def _gallery_vector(self, modality: str, mode: str) -> str:
        if mode == "fused":
            return self.names.inverted(modality)
        return mode_vectors(self.names, modality, mode, self.encoder.derived)[1]

    def _explain_empty(self, modality: str, mode: str, cross: bool) -> None:
        """No result at all: raises VectorsNotStoredError when the mode's gallery vectors were never written."""
        native, inverted = self.names.native(modality), self.names.inverted(modality)
        if cross:
            using = native
        else:
            using = inverted if mode == "fused" else mode_vectors(self.names, modality, mode, self.encoder.derived)[1]

        def count(name: str) -> int:
            return self.collection.count(models.Filter(must=[models.HasVectorCondition(has_vector=name)]))

        if count(using) > 0:
            return
        natives = count(native) if using != native else 0
        if natives == 0:
            how = "crossgap-qdrant ingest --texts FILE" if modality == "text" else "crossgap-qdrant ingest FOLDER"
            raise VectorsNotStoredError(
                f"collection {self.collection.name!r} holds no {modality}s yet: ingest some first ({how})"
            )
        fix = (f"compute them with store.invert_missing({modality!r}) (CLI: crossgap-qdrant invert "
               f"--modality {modality}, or crossgap-qdrant backfill for large or adopted collections)"
               ) if using == inverted else "re-ingest with this derived vector"
        raise VectorsNotStoredError(
            f"mode {mode!r} searches the {using!r} vectors, but none of the {natives} {modality}s in collection "
            f"{self.collection.name!r} has one yet: {fix}, or search with mode 'native'"
        )

    def _request(self, request: SearchRequest, q: Query, inverted: torch.Tensor | None,
                 params: models.SearchParams | None) -> models.QueryRequest:
        """The Qdrant request of one resolved query (its inverted vector given for query_inverted and fused)."""
        modality, mode, query_filter = request.gallery_modality, request.mode, request.query_filter
        prefetch_limit = request.prefetch_limit
        flt = query_filter
        if request.exclude_query and q.exclude is not None:
            own = [q.exclude, *(pid for pid in q.exclude_also if pid is not None and pid != q.exclude)]
            flt = models.Filter(must=[query_filter] if query_filter is not None else None,
                                must_not=[models.HasIdCondition(has_id=own)])
        native, inverted_name = self.names.native(modality), self.names.inverted(modality)
        common = {"filter": flt, "limit": request.limit, "with_payload": request.with_payload,
                  "with_vector": request.with_vectors}
        if mode == "fused":
            prefetch = [models.Prefetch(query=_vector_list(q.features), using=inverted_name, filter=flt,
                                        params=params, limit=prefetch_limit),
                        models.Prefetch(query=_vector_list(inverted), using=native, filter=flt, params=params,
                                        limit=prefetch_limit)]
            return models.QueryRequest(prefetch=prefetch, query=models.FusionQuery(fusion=models.Fusion.RRF), **common)
        using = mode_vectors(self.names, modality, mode, self.encoder.derived)[1]
        if mode == "query_inverted":
            vector = inverted
        elif mode in self.encoder.derived:
            vector = (q.stored or {}).get(mode)
            if vector is None:
                vector = self.encoder.derived_vectors(modality, q.raw[None], only=[mode])[mode][0]
        else:  # native and gallery_inverted search with the query's native vector
            vector = q.features
        return models.QueryRequest(query=_vector_list(vector), using=using, params=params, **common)

    def _rescoring(self, base: models.QueryRequest, request: SearchRequest) -> models.QueryRequest:
        """The request of a hub-corrected search: a Formula over the cosine candidates, or (client side) the
        candidates themselves with the hub key in their payload."""
        hub, limit = request.hubness, request.limit
        candidates = max(request.prefetch_limit, limit)
        if not self.server_rescoring:
            return base.model_copy(update={"limit": candidates,
                                           "with_payload": hub.candidate_payload(base.with_payload)})
        prefetch = models.Prefetch(query=base.query, using=base.using, filter=base.filter, params=base.params,
                                   limit=candidates)
        return models.QueryRequest(prefetch=[prefetch], query=hub.formula(), limit=limit,
                                   with_payload=base.with_payload, with_vector=base.with_vector)


def _vector_list(row: torch.Tensor) -> list[float]:
    return row.detach().to(torch.float32).cpu().numpy().tolist()
