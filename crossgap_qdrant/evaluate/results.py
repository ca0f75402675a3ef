"""What the harness measured: the method names, one result per (method, backend), and the whole run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crossgap_qdrant.metrics import RetrievalMetrics

METHODS = ("native", "gallery_inverted", "query_inverted", "fused", "isoclip", "gap_shift")

#: What each method compares, per modality of the set (the report's legend).
DESCRIPTIONS = {
    "image": {
        "native": "native image vs native images",
        "gallery_inverted": "native image vs OTI of the gallery",
        "query_inverted": "OTI of the query vs native images",
        "fused": "RRF of gallery_inverted and query_inverted",
        "isoclip": "IsoCLIP features on both sides",
        "gap_shift": "gap-shifted features on both sides",
    },
    "text": {
        "native": "native text vs native texts",
        "gallery_inverted": "native text vs OVI of the gallery",
        "query_inverted": "OVI of the query vs native texts",
        "fused": "RRF of gallery_inverted and query_inverted",
        "isoclip": "IsoCLIP features on both sides",
        "gap_shift": "gap-shifted features on both sides",
    },
}

@dataclass
class MethodResult:
    """One representation evaluated by one backend.

    Attributes:
        method: key from :data:`METHODS`.
        backend: "torch" or "qdrant".
        metrics: per-query metrics.
        map_ci: 95% bootstrap confidence interval of mAP over queries.
        diff_vs_native: (mean, low, high) of the per-query AP difference to native on the same backend, with
            its 95% paired bootstrap CI (same resampled queries for both); None for native itself or when
            native was not evaluated.
        search_ms: median Qdrant query time (limit 10), milliseconds; None for the torch backend.
        query_compute_ms: model time per query before the search (encoding, plus inversion or projection).
        ingest_ms_per_item: model time per gallery item at ingestion for this method's gallery vectors.
        description: what the method compares (:data:`DESCRIPTIONS`).
    """

    method: str
    backend: str
    metrics: RetrievalMetrics
    map_ci: tuple[float, float]
    diff_vs_native: tuple[float, float, float] | None = None
    search_ms: float | None = None
    query_compute_ms: float = 0.0
    ingest_ms_per_item: float = 0.0
    description: str = ""

    @property
    def summary(self) -> dict[str, float]:
        return self.metrics.summary()

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "backend": self.backend,
            "description": self.description,
            "metrics": self.summary,
            "map_ci": list(self.map_ci),
            "diff_vs_native": None if self.diff_vs_native is None else list(self.diff_vs_native),
            "num_queries": self.metrics.num_queries,
            "num_skipped": self.metrics.num_skipped,
            "search_ms": self.search_ms,
            "query_compute_ms": self.query_compute_ms,
            "ingest_ms_per_item": self.ingest_ms_per_item,
        }


@dataclass
class EvaluationResult:
    """Everything :func:`evaluate` measured.

    Attributes:
        model_name: display name of the model ("architecture/tag" or the checkpoint's file name; never a path).
        chance_map: mAP of a random ranking (mean over queries of relevant items / gallery size).
    """

    dataset: str
    modality: str
    model_id: str
    num_gallery: int
    num_queries: int
    results: list[MethodResult]
    model_name: str = ""
    chance_map: float = float("nan")
    skipped: dict[str, str] = field(default_factory=dict)  # method -> why it was not evaluated
    timings: dict[str, float] = field(default_factory=dict)  # seconds of each stage
    ingest: dict[str, Any] = field(default_factory=dict)  # the Qdrant ingestion report

    def by_backend(self, backend: str) -> list[MethodResult]:
        return [r for r in self.results if r.backend == backend]

    def agreement(self) -> dict[str, float]:
        """Per method, the largest |torch - qdrant| difference over the summary metrics (both backends run)."""
        torch_r = {r.method: r.summary for r in self.by_backend("torch")}
        out = {}
        for r in self.by_backend("qdrant"):
            if r.method in torch_r:
                a, b = torch_r[r.method], r.summary
                out[r.method] = max(abs(a[k] - b[k]) for k in a)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "modality": self.modality,
            "model_name": self.model_name,
            "model_id": self.model_id,
            "num_gallery": self.num_gallery,
            "num_queries": self.num_queries,
            "chance_map": self.chance_map,
            "results": [r.to_dict() for r in self.results],
            "skipped": self.skipped,
            "agreement": self.agreement(),
            "timings": self.timings,
            "ingest": self.ingest,
        }
