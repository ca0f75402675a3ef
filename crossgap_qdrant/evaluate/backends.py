"""The two ways the harness scores every (query, gallery) pair: exact cosine in torch, and Qdrant searches.

Both backends see the same vectors: the torch side scores the feature tensors of the harness; the Qdrant side
writes the same native, inverted (precomputed) and derived vectors through
:class:`~crossgap_qdrant.store.CrossModalStore` and searches the whole gallery of each query. Their metrics
must therefore agree (:meth:`~crossgap_qdrant.evaluate.EvaluationResult.agreement`).
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any, Sequence

import numpy as np
import torch

from crossgap_qdrant.evaluate.data import DataError, LabelledSet

RRF_K = 2  # qdrant-client's default ranking constant: score = sum over routes of 1 / (0-based position + k)
DERIVED_METHODS = ("isoclip", "gap_shift")  # methods that search derived vectors on both sides


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
                       removed: torch.Tensor) -> torch.Tensor:
    """Exact scores of one method over every (query, gallery) pair.

    Args:
        method: a method name (see :data:`crossgap_qdrant.evaluate.METHODS`).
        vectors: name -> [N, E] unit vectors of all items, gallery first then queries ("native",
            "inverted", and one entry per derived method).
        num_gallery: G.
        split: queries are the items after the gallery (else the gallery items are the queries).
        removed: [Q, G] bool, pairs left out (fused scores only; the metrics exclude them anyway).

    Returns:
        [Q, G] scores (cosines, or RRF scores for "fused").
    """

    def side(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        v = vectors[name]
        return (v[num_gallery:] if split else v[:num_gallery]), v[:num_gallery]

    if method == "native" or method in DERIVED_METHODS:
        q, g = side(method if method in DERIVED_METHODS else "native")
        return q @ g.T
    qn, gn = side("native")
    qi, gi = side("inverted")
    if method == "query_inverted":
        return qi @ gn.T
    if method == "gallery_inverted":
        return qn @ gi.T
    return rrf_scores([qn @ gi.T, qi @ gn.T], removed)


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


def _client(location: str, api_key: str | None):
    """A client of our own for the evaluation collection, so that it can be dropped afterwards."""
    from qdrant_client import QdrantClient

    if location == ":memory:":
        return QdrantClient(":memory:")
    if location.startswith(("http://", "https://")):
        return QdrantClient(url=location, api_key=api_key)
    return QdrantClient(path=location)


class QdrantBackend:
    """A temporary collection holding every item of a labelled set, searched by point id.

    Use as a context manager: the collection is dropped on exit. Gallery items get ids 0..G-1, queries
    (with a split) G..G+Q-1, with payload {"label", "role": "gallery" | "query"}.

    Args:
        clip: the model handle (:class:`~crossgap_qdrant.models.ClipModel`).
        model_id: recorded in the collection.
        data: the labelled set.
        derived: method -> derived vector object (``modality``, ``dim``, ``compute``).
        location: ":memory:", a folder, or a server URL.
        api_key: server API key.
        oti_config, ovi_config: inversion settings recorded by the store.
    """

    def __init__(self, clip, *, model_id: str, data: LabelledSet, derived: dict[str, Any],
                 location: str = ":memory:", api_key: str | None = None, oti_config=None, ovi_config=None):
        from crossgap_qdrant.store import CrossModalStore

        self.data = data
        self.collection_name = f"crossgap-eval-{uuid.uuid4().hex[:12]}"
        self.modes = {m: f"{data.modality}_{m}" for m in derived}
        self._client = _client(location, api_key)
        try:
            self.store = CrossModalStore(
                self._client, self.collection_name, clip, model_id=model_id, oti_config=oti_config,
                ovi_config=ovi_config,
                derived_vectors={self.modes[m]: vec for m, vec in derived.items()},
            )
        except BaseException:
            self._client.close()
            raise

    def __enter__(self) -> "QdrantBackend":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.store.close()
            if self._client.collection_exists(self.collection_name):
                self._client.delete_collection(self.collection_name)
        finally:
            self._client.close()

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

    def similarities(self, methods: Sequence[str], latency_queries: int) -> tuple[dict[str, np.ndarray],
                                                                                   dict[str, float]]:
        """Scores of every (query, gallery) pair through store searches, and the median search time.

        Args:
            methods: method names; derived ones search their derived vectors.
            latency_queries: queries timed one by one per method (limit 10).

        Returns:
            (method -> [Q, G] scores, method -> median milliseconds of one search at limit 10).
        """
        from qdrant_client import models

        data = self.data
        num_g = len(data.gallery)
        query_ids = list(range(num_g, num_g + data.num_queries)) if data.split else list(range(num_g))
        flt = None
        if data.split:
            flt = models.Filter(must=[models.FieldCondition(key="role", match=models.MatchValue(value="gallery"))])
        search = self.store.search_images if data.modality == "image" else self.store.search_texts
        sims, search_ms = {}, {}
        for method in methods:
            mode = self.modes.get(method, method)
            hits = []
            for start in range(0, len(query_ids), 64):
                hits += search(query_ids[start : start + 64], mode=mode, limit=num_g, query_filter=flt,
                               exclude_query=True, with_payload=False, prefetch_limit=num_g)
            sims[method] = hits_to_similarity(hits, range(num_g))
            times = []
            for qid in query_ids[:latency_queries]:
                start_t = time.perf_counter()
                search(qid, mode=mode, limit=10, query_filter=flt, exclude_query=True, with_payload=False)
                times.append(1000 * (time.perf_counter() - start_t))
            search_ms[method] = statistics.median(times) if times else float("nan")
        return sims, search_ms
