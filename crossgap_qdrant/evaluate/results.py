"""What the harness measured: the method names, one result per (method, backend), and the whole run.

Method names are the store's search modes ("native", "gallery_inverted", "query_inverted", "fused"), the
rival representations ("isoclip", "pca", "gap_shift", searched as the derived vectors "<modality>_<name>"),
and any of those but "fused" with the suffix "_hub": the same search re-scored by hubness correction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crossgap_qdrant.errors import CrossgapError
from crossgap_qdrant.metrics import RetrievalMetrics
from crossgap_qdrant.store import MODES

RIVALS = ("isoclip", "pca", "gap_shift")
HUB_SUFFIX = "_hub"
#: The methods an evaluation runs by default.
METHODS = MODES + RIVALS + ("native_hub", "gallery_inverted_hub", "query_inverted_hub")
#: Every method name the harness knows (the default ones and hubness correction of the rivals).
KNOWN_METHODS = METHODS + tuple(r + HUB_SUFFIX for r in RIVALS)

_BASE_DESCRIPTIONS = {
    "image": {
        "native": "native image vs native images",
        "gallery_inverted": "native image vs OTI of the gallery (ours: inversion paid at ingestion)",
        "query_inverted": "OTI of the query vs native images (the paper's protocol)",
        "fused": "RRF of gallery_inverted and query_inverted",
        "isoclip": "IsoCLIP band on both sides",
        "pca": "PCA projection (text vocabulary) on both sides",
        "gap_shift": "gap-shifted query vs native images",
    },
    "text": {
        "native": "native text vs native texts",
        "gallery_inverted": "native text vs OVI of the gallery (ours: inversion paid at ingestion)",
        "query_inverted": "OVI of the query vs native texts (the paper's protocol)",
        "fused": "RRF of gallery_inverted and query_inverted",
        "isoclip": "IsoCLIP band on both sides",
        "pca": "PCA projection (text vocabulary) on both sides",
        "gap_shift": "gap-shifted query vs native texts",
    },
}


class EvaluationError(CrossgapError, ValueError):
    """An evaluation's settings, methods or recommendation cannot be used (the message names the fix)."""


def split_method(method: str) -> tuple[str, bool]:
    """(base method, hubness correction) of a method name; ValueError for an unknown name."""
    if method not in KNOWN_METHODS:
        raise EvaluationError(f"unknown method {method!r}; choose from {', '.join(KNOWN_METHODS)}")
    if method.endswith(HUB_SUFFIX):
        return method[: -len(HUB_SUFFIX)], True
    return method, False


def describe(modality: str, method: str) -> str:
    """What a method compares, for the report's legend."""
    base, hub = split_method(method)
    text = _BASE_DESCRIPTIONS[modality][base]
    return f"{text}, re-scored by hubness correction (DBNorm)" if hub else text


#: What each method compares, per modality of the set (the report's legend).
DESCRIPTIONS = {m: {k: describe(m, k) for k in KNOWN_METHODS} for m in _BASE_DESCRIPTIONS}

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

    @property
    def query_ms(self) -> float:
        """Query-time cost: model time per query plus, for the Qdrant backend, the median search time."""
        return self.query_compute_ms + (self.search_ms or 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "backend": self.backend,
            "description": self.description,
            "metrics": self.summary,
            "map_ci": list(self.map_ci),
            **split_difference(self.diff_vs_native),
            "num_queries": self.metrics.num_queries,
            "num_skipped": self.metrics.num_skipped,
            "search_ms": self.search_ms,
            "query_compute_ms": self.query_compute_ms,
            "ingest_ms_per_item": self.ingest_ms_per_item,
        }


def split_difference(diff) -> dict[str, Any]:
    """``(mean, low, high)`` as the JSON form's ``diff_vs_native`` (the mean) and ``diff_ci95`` ([low, high])."""
    if diff is None:
        return {"diff_vs_native": None, "diff_ci95": None}
    return {"diff_vs_native": diff[0], "diff_ci95": [diff[1], diff[2]]}


@dataclass
class EvaluationResult:
    """Everything :func:`evaluate` measured.

    Attributes:
        model_name: display name of the model ("architecture/tag" or the checkpoint's file name; never a path).
        chance_map: mAP of a random ranking (mean over queries of relevant items / gallery size).
        representations: what was fitted for the rivals (IsoCLIP cuts and where they came from, the PCA
            vocabulary, the gap shift, the hubness parameters).
        crossfitted: methods whose torch rows are cross-fitted (a parameter tuned on the other half of the
            queries), so they are left out of the torch/Qdrant agreement.
        recommendation: see :func:`crossgap_qdrant.evaluate.recommend.recommend`.
        transforms: the fitted rival transforms by method (for :func:`~crossgap_qdrant.evaluate.apply`; not
            serialised).
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
    unreadable: dict[str, str] = field(default_factory=dict)  # image left out of the set -> why
    timings: dict[str, float] = field(default_factory=dict)  # seconds of each stage
    ingest: dict[str, Any] = field(default_factory=dict)  # the Qdrant ingestion report
    representations: dict[str, Any] = field(default_factory=dict)
    crossfitted: tuple[str, ...] = ()
    recommendation: dict[str, Any] | None = None
    transforms: dict[str, Any] = field(default_factory=dict, repr=False)

    def by_backend(self, backend: str) -> list[MethodResult]:
        return [r for r in self.results if r.backend == backend]

    def agreement(self) -> dict[str, float]:
        """Per method, the largest |torch - qdrant| difference over the summary metrics (both backends run)."""
        torch_r = {r.method: r.summary for r in self.by_backend("torch")}
        out = {}
        for r in self.by_backend("qdrant"):
            if r.method in torch_r and r.method not in self.crossfitted:
                a, b = torch_r[r.method], r.summary
                out[r.method] = max(abs(a[k] - b[k]) for k in a)
        return out

    def decision_rows(self) -> list[MethodResult]:
        """The rows a recommendation is read from: the torch backend (exact) when it ran, else Qdrant's."""
        return self.by_backend("torch") or self.by_backend("qdrant")

    def method_summary(self) -> dict[str, dict[str, Any]]:
        """Per method (decision rows): mAP, its CI, the paired difference vs native with its CI, the
        query-time cost in ms (model time plus the median Qdrant search where it ran), and whether it is the
        recommended one."""
        chosen = (self.recommendation or {}).get("method")
        searched = {r.method: r.search_ms for r in self.by_backend("qdrant")}
        out = {}
        for r in self.decision_rows():
            diff = r.diff_vs_native
            search_ms = searched.get(r.method)
            out[r.method] = {
                "mAP": r.summary["mAP"], "ci95": list(r.map_ci),
                **split_difference(diff),
                "query_ms": r.query_compute_ms + (search_ms or 0.0), "query_model_ms": r.query_compute_ms,
                "search_ms": search_ms, "ingest_ms_per_item": r.ingest_ms_per_item,
                "recommended": r.method == chosen,
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, one schema throughout: metrics as fractions in [0, 1] (mAP 0.2797 is 27.97%), each
        difference to native as a scalar ``diff_vs_native`` with its 95% CI as ``diff_ci95`` [low, high] (None
        for native), every other CI as [low, high], costs in ms (``*_ms``) and stage timings in seconds."""
        rec = self.recommendation
        return {
            "recommended": None if rec is None else {**rec, **split_difference(rec.get("diff_vs_native"))},
            "methods": self.method_summary(),
            "representations": self.representations,
            "dataset": self.dataset,
            "modality": self.modality,
            "model_name": self.model_name,
            "model_id": self.model_id,
            "num_gallery": self.num_gallery,
            "num_queries": self.num_queries,
            "chance_map": self.chance_map,
            "results": [r.to_dict() for r in self.results],
            "skipped": self.skipped,
            "unreadable": self.unreadable,
            "agreement": self.agreement(),
            "crossfitted": list(self.crossfitted),
            "timings": self.timings,
            "ingest": self.ingest,
        }
