"""The two ways the harness scores every (query, gallery) pair: exact cosine in torch, and Qdrant searches.

Both backends see the same vectors: the torch side scores the feature tensors of the harness; the Qdrant side
writes the same native, inverted (precomputed) and derived vectors through
:class:`~crossgap_qdrant.store.CrossModalStore` and searches the whole gallery of each query. Hubness
correction uses the same banks (the gallery items) on both sides: computed here by
:func:`crossgap_qdrant.rivals.hub_values`, fitted and applied by the store (a Formula query) there. Their
metrics must therefore agree (:meth:`~crossgap_qdrant.evaluate.EvaluationResult.agreement`).
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any, Sequence

import numpy as np
import torch
from qdrant_client import models

from crossgap_qdrant.evaluate.data import DataError, LabelledSet
from crossgap_qdrant.evaluate.results import EvaluationError, split_method
from crossgap_qdrant.images import WHITE
from crossgap_qdrant.rivals import DEFAULT_TEMPERATURE, DEFAULT_WEIGHT, bank_sample, hub_corrected, hub_values
from crossgap_qdrant.store import CrossModalStore, RetryPolicy, VectorNames, mode_vectors, open_collection

RRF_K = 2  # qdrant-client's default ranking constant: score = sum over routes of 1 / (0-based position + k)


def method_vectors(modality: str, base: str, derived: dict[str, Any]) -> tuple[str, str]:
    """(query side, gallery side) of a method in the harness's vector names ("native", "inverted", and the
    rivals' method names), by the store's own rule (:func:`crossgap_qdrant.store.mode_vectors`)."""
    names = VectorNames(image="native", image_oti="inverted") if modality == "image" else VectorNames(
        text="native", text_ovi="inverted")
    return mode_vectors(names, modality, base, derived)


def torch_hub(modality: str, base: str, vectors: dict[str, torch.Tensor], num_gallery: int,
              derived: dict[str, Any], temperature: float, bank_size: int) -> torch.Tensor:
    """[G] hub values of the gallery items for one method, the gallery items being the banks (as the store
    fits them on the evaluation collection: :func:`crossgap_qdrant.store.hubness.fit_hubness`)."""
    query_name, gallery_name = method_vectors(modality, base, derived)
    rows = bank_sample(num_gallery, bank_size)
    own = torch.full((num_gallery,), -1, dtype=torch.long)
    own[rows] = torch.arange(len(rows))
    gallery = vectors[gallery_name][:num_gallery]
    gallery_bank = None if query_name == gallery_name else gallery[rows]
    return hub_values(gallery, vectors[query_name][:num_gallery][rows], gallery_bank, self_index=own,
                      temperature=temperature)


def rrf_scores(similarities: Sequence[torch.Tensor], removed: torch.Tensor, k: int = RRF_K) -> torch.Tensor:
    """Reciprocal rank fusion as Qdrant computes it, over each query's whole gallery.

    Args:
        similarities: route scores, each [Q, G].
        removed: [Q, G] bool, items left out of each query's gallery (they get -inf).
        k: ranking constant; an item at 0-based position p of a route adds 1 / (p + k).

    Returns:
        [Q, G] float64 fused scores.
    """
    fused = torch.zeros(removed.shape, dtype=torch.float64)
    positions = torch.arange(removed.shape[1], dtype=torch.float64).expand(removed.shape[0], -1)
    for sim in similarities:
        sim = sim.double().masked_fill(removed, float("-inf"))
        order = torch.argsort(sim, dim=1, descending=True, stable=True)
        pos = torch.empty_like(positions).scatter_(1, order, positions)
        fused += 1.0 / (pos + k)
    return fused.masked_fill(removed, float("-inf"))


def torch_similarities(method: str, vectors: dict[str, torch.Tensor], num_gallery: int, split: bool,
                       removed: torch.Tensor, *, modality: str = "image", derived: dict[str, Any] | None = None,
                       hub: torch.Tensor | None = None, weight: float = 1.0) -> torch.Tensor:
    """Exact scores of one method over every (query, gallery) pair.

    Args:
        method: a method name (see :data:`crossgap_qdrant.evaluate.METHODS`).
        vectors: name -> [N, E] unit vectors of all items, gallery first then queries ("native",
            "inverted", and one entry per rival method).
        num_gallery: G.
        split: queries are the items after the gallery (else the gallery items are the queries).
        removed: [Q, G] bool, pairs left out (fused scores only; the metrics exclude them anyway).
        modality: of the set.
        derived: rival method -> its derived vector (which gallery vector a rival's query is compared with).
        hub: [G] hub values, for a "_hub" method; ``weight`` scales them.

    Returns:
        [Q, G] scores (cosines, RRF scores for "fused", cosines minus weighted hub values for "_hub").
    """
    base, corrected = split_method(method)
    queries = slice(num_gallery, None) if split else slice(0, num_gallery)
    if base == "fused":
        qn, gn = vectors["native"][queries], vectors["native"][:num_gallery]
        qi, gi = vectors["inverted"][queries], vectors["inverted"][:num_gallery]
        return rrf_scores([qn @ gi.T, qi @ gn.T], removed)
    query_name, gallery_name = method_vectors(modality, base, derived or {})
    scores = vectors[query_name][queries] @ vectors[gallery_name][:num_gallery].T
    if corrected:
        if hub is None:
            raise EvaluationError(f"method {method!r} needs the gallery's hub values")
        return hub_corrected(scores, hub, weight)
    return scores


def hits_to_similarity(hits: Sequence[Sequence[Any]], gallery_ids: Sequence[int]) -> np.ndarray:
    """A [Q, G] score matrix from store search results; items a search did not return score -inf.

    Args:
        hits: per query, the scored points (``id``, ``score``) of one search.
        gallery_ids: G point ids, in gallery order.

    Returns:
        [Q, G] float64 (-inf where not returned: ranked after every returned item).
    """
    column = {int(pid): j for j, pid in enumerate(gallery_ids)}
    sim = np.full((len(hits), len(gallery_ids)), -np.inf)
    for row, points in enumerate(hits):
        for p in points:
            sim[row, column[int(p.id)]] = p.score
    return sim


class QdrantBackend:
    """A temporary collection holding every item of a labelled set, searched by point id.

    Use as a context manager: the collection is dropped on exit. Gallery items get ids 0..G-1, queries
    (with a split) G..G+Q-1, with payload {"label", "role": "gallery" | "query"}.

    Args:
        clip: the model handle (:class:`~crossgap_qdrant.models.ClipModel`).
        model_id: recorded in the collection.
        data: the labelled set.
        derived: rival method -> derived vector object (``modality``, ``dim``, ``compute``), stored as the
            named vector "<modality>_<method>".
        location: ":memory:", a folder (created if missing; the temporary collection is removed from it on
            exit), or a server URL.
        api_key, timeout, retry: for servers (see :func:`crossgap_qdrant.store.open_collection`).
        engine: for a folder: None (qdrant-edge) or "local".
        oti_config, ovi_config: inversion settings recorded by the store.
    """

    def __init__(self, clip, *, model_id: str, data: LabelledSet, derived: dict[str, Any],
                 location: str = ":memory:", api_key: str | None = None, oti_config=None, ovi_config=None,
                 engine: str | None = None, timeout: float | None = None,
                 retry: RetryPolicy | None = RetryPolicy(), image_background: tuple[int, int, int] = WHITE):
        self.data = data
        self.collection_name = f"crossgap-eval-{uuid.uuid4().hex[:12]}"
        self.modes = {m: f"{data.modality}_{m}" for m in derived}
        self._collection = open_collection(location, self.collection_name, engine=engine, api_key=api_key,
                                           timeout=timeout, retry=retry,
                                           create_folder=True)
        try:
            self.store = CrossModalStore(
                self._collection, self.collection_name, clip, model_id=model_id, oti_config=oti_config,
                ovi_config=ovi_config,
                derived_vectors={self.modes[m]: vec for m, vec in derived.items()}, image_background=image_background,
            )
        except BaseException:
            self._collection.drop()
            raise

    def __enter__(self) -> "QdrantBackend":
        return self

    def __exit__(self, *exc) -> None:
        self._collection.drop()

    def ingest(self, inverted: torch.Tensor | None, batch_size: int, progress: bool) -> dict[str, Any]:
        """Writes every item (gallery, then queries) with its native, derived and given inverted vectors.

        Args:
            inverted: [N, E] inverted features of all items (the harness's, so both backends search the same
                vectors), or None to store no inverted vectors.

        Returns:
            the ingestion report's counts and timings.

        Raises:
            DataError: an item could not be ingested.
        """
        data = self.data
        num_g = len(data.gallery)
        n = num_g + (data.num_queries if data.split else 0)
        roles = ["gallery"] * num_g + ["query"] * (n - num_g)
        labels = list(data.gallery_labels) + list(data.query_labels or [])
        ingest = self.store.ingest_images if data.modality == "image" else self.store.ingest_texts
        report = ingest(data.all_items, payloads=[{"label": lab, "role": role} for lab, role in zip(labels, roles)],
                        ids=list(range(n)), invert=inverted is not None, inverted_features=inverted,
                        batch_size=batch_size, progress=progress)
        if report.failed:
            raise DataError(f"{len(report.failed)} item(s) could not be ingested, e.g. {report.failed[0]}")
        return {"inserted": report.inserted, "seconds_encoding": report.seconds_encoding,
                "seconds_database": report.seconds_database, "seconds_inversion": report.seconds_inversion}

    def similarities(self, methods: Sequence[str], latency_queries: int, *,
                     temperature: float = DEFAULT_TEMPERATURE, weight: float = DEFAULT_WEIGHT,
                     bank_size: int = 1000) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Scores of every (query, gallery) pair through store searches, and the median search time.

        Args:
            methods: method names; rivals search their derived vectors; "_hub" methods first fit the hubness
                statistics of their mode on the gallery points (``temperature``, ``weight``, ``bank_size``).
            latency_queries: queries timed one by one per method (limit 10).

        Returns:
            (method -> [Q, G] scores, method -> median milliseconds of one search at limit 10).
        """
        data = self.data
        num_g = len(data.gallery)
        query_ids = list(range(num_g, num_g + data.num_queries)) if data.split else list(range(num_g))
        flt = None
        if data.split:
            flt = models.Filter(must=[models.FieldCondition(key="role", match=models.MatchValue(value="gallery"))])
        search = self.store.search_images if data.modality == "image" else self.store.search_texts
        sims, search_ms = {}, {}
        for method in methods:
            base, hub = split_method(method)
            mode = self.modes.get(base, base)
            if hub:
                self.store.fit_hubness(data.modality, mode, bank_size=bank_size, temperature=temperature,
                                       weight=weight, query_filter=flt)
            options = dict(mode=mode, query_filter=flt, exclude_query=True, with_payload=False, hubness=hub)
            hits = []
            for start in range(0, len(query_ids), 64):
                hits += search(query_ids[start : start + 64], limit=num_g, prefetch_limit=num_g, **options)
            sims[method] = hits_to_similarity(hits, range(num_g))
            times = []
            for qid in query_ids[:latency_queries]:
                start_t = time.perf_counter()
                search(qid, limit=10, **options)
                times.append(1000 * (time.perf_counter() - start_t))
            search_ms[method] = statistics.median(times) if times else float("nan")
        return sims, search_ms
