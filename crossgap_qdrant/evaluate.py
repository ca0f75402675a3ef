"""Which representation wins on your data: retrieval quality, query latency and ingestion cost per method.

For a labelled set (folder-per-class images, labelled texts, or a query/gallery split given as files) the
harness computes full-ranking retrieval metrics (:mod:`crossgap_qdrant.metrics`) for each representation:

==================  =============================================================================
method              query vs gallery (images; texts are symmetric with OVI and the image space)
==================  =============================================================================
native              native image vs native image (the usual intra-modal search)
query_inverted      OTI of the query (text space) vs native images
gallery_inverted    native query vs OTI of the gallery (text space)
fused               reciprocal rank fusion of the two inter-modal rankings (Qdrant's RRF, k = 2)
isoclip             IsoCLIP features on both sides (:class:`~crossgap_qdrant.rivals.IsoCLIPProjector`)
gapshift            gap-shifted features on both sides (:class:`~crossgap_qdrant.rivals.ModalityGapShift`)
==================  =============================================================================

Each method is computed by brute force (torch, exact cosine over the whole gallery) and, optionally, through
Qdrant (:class:`~crossgap_qdrant.store.CrossModalStore` search over the whole gallery). Both backends see the
same inverted vectors (one inversion, written to Qdrant as precomputed vectors), so their metrics must agree;
:meth:`EvaluationResult.agreement` reports the largest difference.

When queries and gallery coincide, each query's own item is excluded from its gallery. With a split, queries
are stored too (payload role "query") and searched by point id with a filter on role "gallery", so a query's
inverted vector is computed once, as at ingestion.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from crossgap_qdrant.metrics import RetrievalMetrics, retrieval_metrics
from crossgap_qdrant.store import IMAGE_EXTENSIONS

METHODS = ("native", "query_inverted", "gallery_inverted", "fused", "isoclip", "gapshift")
RRF_K = 2  # qdrant-client's default ranking constant: score = sum over routes of 1 / (0-based position + k)

_LABELS = {
    "image": {
        "native": "native",
        "query_inverted": "OTI query",
        "gallery_inverted": "OTI gallery",
        "fused": "fused (RRF)",
        "isoclip": "IsoCLIP",
        "gapshift": "gap shift",
    },
    "text": {
        "native": "native",
        "query_inverted": "OVI query",
        "gallery_inverted": "OVI gallery",
        "fused": "fused (RRF)",
        "isoclip": "IsoCLIP",
        "gapshift": "gap shift",
    },
}


class DataError(ValueError):
    """The labelled data cannot be read or is unusable (the message names the file and the problem)."""


# ------------------------------------------------------------------------------------------------- data
@dataclass
class LabelledSet:
    """A labelled retrieval set.

    Attributes:
        modality: "image" (items are file paths) or "text" (items are strings).
        gallery: the gallery items.
        gallery_labels: one label per gallery item.
        queries: the query items, or None when every gallery item is also a query (own item excluded).
        query_labels: one label per query (None with ``queries``).
        name: shown in the report.
    """

    modality: str
    gallery: list[str]
    gallery_labels: list[str]
    queries: list[str] | None = None
    query_labels: list[str] | None = None
    name: str = ""

    def __post_init__(self):
        if self.modality not in ("image", "text"):
            raise DataError(f"modality must be 'image' or 'text', got {self.modality!r}")
        if len(self.gallery) != len(self.gallery_labels):
            raise DataError(f"{len(self.gallery)} gallery items but {len(self.gallery_labels)} labels")
        if (self.queries is None) != (self.query_labels is None):
            raise DataError("queries and query_labels go together")
        if self.queries is not None and len(self.queries) != len(self.query_labels):
            raise DataError(f"{len(self.queries)} queries but {len(self.query_labels)} labels")
        if len(self.gallery) < 2:
            raise DataError(f"the gallery needs at least 2 items, got {len(self.gallery)}")
        if self.queries is not None and not self.queries:
            raise DataError("the query file lists no item")

    @property
    def split(self) -> bool:
        """True when queries are given apart from the gallery."""
        return self.queries is not None

    @property
    def all_items(self) -> list[str]:
        """Gallery items, then queries (the order of every feature tensor of the harness)."""
        return list(self.gallery) + list(self.queries or [])

    @property
    def num_queries(self) -> int:
        return len(self.queries) if self.split else len(self.gallery)


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def load_image_folder(root: str | os.PathLike) -> LabelledSet:
    """Folder-per-class images: ``root/<label>/**/<image>``; every image is a query and a gallery item."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"no such folder: {root}")
    items, labels = [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(p for p in class_dir.rglob("*") if p.is_file() and _is_image_file(p)):
            items.append(str(path))
            labels.append(class_dir.name)
    if not items:
        raise DataError(f"no images in class subfolders of {root} (expected {root}/<label>/<image>)")
    return LabelledSet("image", items, labels, name=root.name)


def _read_records(path: Path) -> list[tuple[str, str, int]]:
    """(item, label, line number) from a TSV file ("label<TAB>item") or JSON lines ({"label", "text"|"image"})."""
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if path.suffix.lower() in (".jsonl", ".json"):
                try:
                    rec = json.loads(line)
                    item = rec.get("text", rec.get("image"))
                    label = rec["label"]
                except (json.JSONDecodeError, KeyError, AttributeError) as exc:
                    raise DataError(f"{path}:{lineno}: expected a JSON object with 'label' and 'text' or 'image' ({exc})")
            else:
                if "\t" not in line:
                    raise DataError(f"{path}:{lineno}: expected 'label<TAB>item'")
                label, item = line.split("\t", 1)
            if not isinstance(item, str) or not item.strip():
                raise DataError(f"{path}:{lineno}: empty item")
            out.append((item, str(label), lineno))
    if not out:
        raise DataError(f"{path} lists no item")
    return out


def _resolve_modality(records: list[tuple[str, str, int]], base: Path) -> tuple[str, list[str]]:
    """Items that all name image files (relative to ``base``) are images; otherwise texts."""
    paths = [Path(item) if os.path.isabs(item) else base / item for item, _, _ in records]
    if all(_is_image_file(p) for p in paths):
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise DataError(f"{len(missing)} image file(s) not found, e.g. {missing[0]}")
        return "image", [str(p) for p in paths]
    return "text", [item for item, _, _ in records]


def load_labelled_texts(path: str | os.PathLike) -> LabelledSet:
    """Labelled texts: TSV lines "label<TAB>text" or JSON lines {"label": ..., "text": ...}."""
    path = Path(path)
    records = _read_records(path)
    return LabelledSet("text", [r[0] for r in records], [r[1] for r in records], name=path.stem)


def load_split(query_file: str | os.PathLike, gallery_file: str | os.PathLike) -> LabelledSet:
    """A query/gallery split: two files of "label<TAB>item" lines (or JSON lines).

    Items that are all image file names (absolute, or relative to the file's folder) make an image set;
    otherwise the items are texts.
    """
    qpath, gpath = Path(query_file), Path(gallery_file)
    qrec, grec = _read_records(qpath), _read_records(gpath)
    qmod, queries = _resolve_modality(qrec, qpath.parent)
    gmod, gallery = _resolve_modality(grec, gpath.parent)
    if qmod != gmod:
        raise DataError(f"queries ({qpath}) are {qmod}s but the gallery ({gpath}) holds {gmod}s")
    return LabelledSet(gmod, gallery, [r[1] for r in grec], queries, [r[1] for r in qrec], name=gpath.stem)


def load_labelled_set(path: str | os.PathLike, queries: str | os.PathLike | None = None) -> LabelledSet:
    """A folder -> :func:`load_image_folder`; a file -> :func:`load_labelled_texts` (or, with ``queries``,
    ``path`` is the gallery file of :func:`load_split`)."""
    if queries is not None:
        return load_split(queries, path)
    if Path(path).is_dir():
        return load_image_folder(path)
    return load_labelled_texts(path)


# ---------------------------------------------------------------------------------------------- config
@dataclass
class EvaluationConfig:
    """Settings of :func:`evaluate`.

    Attributes:
        methods: which representations to evaluate (subset of :data:`METHODS`).
        oti_config, ovi_config: inversion settings (None: the published defaults).
        isoclip_k_top, isoclip_k_bottom: IsoCLIP cuts; None takes 1/16 (top) and 1/4 (bottom) of the
            operator's singular directions (a starting point, not the paper's tuned values).
        gap_texts: texts to fit the text mean of the gap shift on image sets (None: generic captions).
        gap_images: images (paths) to fit the image mean of the gap shift on text sets; without them the
            method is skipped for text sets.
        ks: cut-offs for precision@k.
        backends: "torch" and/or "qdrant".
        latency_queries: number of queries timed per method through Qdrant (limit 10 each).
        bootstrap: resamples for the mAP confidence interval.
        batch_size: encoding batch size.
        qdrant_location: ":memory:" (default), a folder, or a server URL for the Qdrant backend.
        api_key: Qdrant server API key.
    """

    methods: Sequence[str] = METHODS
    oti_config: Any = None
    ovi_config: Any = None
    isoclip_k_top: int | None = None
    isoclip_k_bottom: int | None = None
    gap_texts: Sequence[str] | None = None
    gap_images: Sequence[str] | None = None
    ks: Sequence[int] = (1, 5, 10)
    backends: Sequence[str] = ("torch", "qdrant")
    latency_queries: int = 20
    bootstrap: int = 1000
    batch_size: int = 64
    qdrant_location: str = ":memory:"
    api_key: str | None = None

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
        bad = [b for b in self.backends if b not in ("torch", "qdrant")]
        if bad or not self.backends:
            raise ValueError(f"backends must be 'torch' and/or 'qdrant', got {list(self.backends)}")


# --------------------------------------------------------------------------------------------- results
@dataclass
class MethodResult:
    """One representation evaluated by one backend.

    Attributes:
        method: key from :data:`METHODS`.
        label: human name ("OTI query", ...).
        backend: "torch" or "qdrant".
        metrics: per-query metrics.
        map_ci: 95% bootstrap confidence interval of mAP over queries.
        search_ms: median Qdrant query time (limit 10), milliseconds; None for the torch backend.
        query_compute_ms: model time per query before the search (encoding, plus inversion or projection).
        ingest_ms_per_item: model time per gallery item at ingestion for this method's gallery vectors.
    """

    method: str
    label: str
    backend: str
    metrics: RetrievalMetrics
    map_ci: tuple[float, float]
    search_ms: float | None = None
    query_compute_ms: float = 0.0
    ingest_ms_per_item: float = 0.0

    @property
    def summary(self) -> dict[str, float]:
        return self.metrics.summary()

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "label": self.label,
            "backend": self.backend,
            "metrics": self.summary,
            "map_ci": list(self.map_ci),
            "num_queries": self.metrics.num_queries,
            "num_skipped": self.metrics.num_skipped,
            "search_ms": self.search_ms,
            "query_compute_ms": self.query_compute_ms,
            "ingest_ms_per_item": self.ingest_ms_per_item,
        }


@dataclass
class EvaluationResult:
    """Everything :func:`evaluate` measured."""

    dataset: str
    modality: str
    model_id: str
    num_gallery: int
    num_queries: int
    results: list[MethodResult]
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
            "model_id": self.model_id,
            "num_gallery": self.num_gallery,
            "num_queries": self.num_queries,
            "results": [r.to_dict() for r in self.results],
            "skipped": self.skipped,
            "agreement": self.agreement(),
            "timings": self.timings,
            "ingest": self.ingest,
        }


def bootstrap_ci(
    per_query_ap: Sequence[float] | np.ndarray, n: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean over queries.

    Args:
        per_query_ap: [Q] per-query average precision (or any per-query score).
        n: resamples (queries drawn with replacement).
        seed: random seed (the interval is deterministic for a given seed).
        confidence: coverage of the interval.

    Returns:
        (low, high); (nan, nan) for no query.
    """
    values = np.asarray(per_query_ap, dtype=np.float64).ravel()
    if values.size == 0:
        return float("nan"), float("nan")
    if n < 1 or not 0 < confidence < 1:
        raise ValueError(f"need n >= 1 and 0 < confidence < 1, got n={n}, confidence={confidence}")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n, values.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


# ------------------------------------------------------------------------------------------ brute force
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


@dataclass
class _Features:
    """Per-item vectors of all items (gallery first, then queries): name -> [N, E]; plus timings."""

    vectors: dict[str, torch.Tensor]
    seconds: dict[str, float]
    per_item_ms: dict[str, float]


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _compute_features(model, preprocess, tokenizer, data: LabelledSet, config: EvaluationConfig, model_name,
                      skipped: dict[str, str], progress: bool) -> tuple[_Features, dict[str, Any]]:
    """Native, inverted and rival vectors of every item, timed; returns also the derived vector objects."""
    from crossgap_qdrant.inversion import OTIConfig, OVIConfig, oti_invert, ovi_invert
    from crossgap_qdrant.models import encode_images, encode_texts, model_device
    from crossgap_qdrant.rivals import IsoCLIPProjector, fit_gap_shift

    items = data.all_items
    n = len(items)
    methods = set(config.methods)
    vectors, seconds = {}, {}
    device = model_device(model)

    if data.modality == "image":
        from PIL import Image

        def load():
            out = []
            for path in items:
                try:
                    with Image.open(path) as im:
                        out.append(preprocess(im.convert("RGB")))
                except Exception as exc:  # PIL raises many types on corrupt data
                    raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc
            return torch.stack(out)

        inputs, seconds["decode"] = _timed(load)
        native, seconds["encode"] = _timed(
            lambda: encode_images(model, preprocess, list(inputs), batch_size=config.batch_size, progress=progress)
        )
    else:
        inputs = tokenizer(items)
        native, seconds["encode"] = _timed(
            lambda: encode_texts(model, tokenizer, items, batch_size=config.batch_size, progress=progress)
        )
    vectors["native"] = native

    if methods & {"query_inverted", "gallery_inverted", "fused"}:
        if data.modality == "image":
            result, seconds["invert"] = _timed(
                lambda: oti_invert(model, tokenizer, native, config=config.oti_config or OTIConfig(), progress=progress)
            )
        else:
            result, seconds["invert"] = _timed(
                lambda: ovi_invert(model, native, config=config.ovi_config or OVIConfig(), progress=progress,
                                   model_name=model_name)
            )
        vectors["inverted"] = result.features.float().cpu()

    derived: dict[str, Any] = {}
    if "isoclip" in methods:
        try:
            rank = IsoCLIPProjector.from_model(model).rank
            k_top = config.isoclip_k_top if config.isoclip_k_top is not None else rank // 16
            k_bottom = config.isoclip_k_bottom if config.isoclip_k_bottom is not None else rank // 4
            derived["isoclip"] = IsoCLIPProjector.from_model(model, k_top, k_bottom).vector(data.modality)
        except ValueError as exc:
            if config.isoclip_k_top is not None or config.isoclip_k_bottom is not None:
                raise
            skipped["isoclip"] = str(exc)
    if "gapshift" in methods:
        if data.modality == "image":
            shift = fit_gap_shift(model, tokenizer, preprocess, image_features=native[: len(data.gallery)],
                                  texts=config.gap_texts)
            derived["gapshift"] = shift.vector("image")
        elif config.gap_images:
            shift = fit_gap_shift(model, tokenizer, preprocess, images=config.gap_images,
                                  text_features=native[: len(data.gallery)])
            derived["gapshift"] = shift.vector("text")
        else:
            skipped["gapshift"] = "a text set needs a sample of images to fit the gap shift (gap_images)"
    for name, vec in derived.items():

        def run(vec=vec):
            out = [vec.compute(model, inputs[s : s + config.batch_size].to(device))
                   for s in range(0, n, config.batch_size)]
            return torch.cat(out).float().cpu()

        vectors[name], seconds[name] = _timed(run)

    per_item = {k: 1000 * v / max(n, 1) for k, v in seconds.items()}
    return _Features(vectors, seconds, per_item), derived


def _method_costs(method: str, per_item: dict[str, float]) -> tuple[float, float]:
    """(query-time model ms, ingestion model ms per item) of a method, from the per-item stage timings."""
    encode = per_item.get("decode", 0.0) + per_item.get("encode", 0.0)
    invert = per_item.get("invert", 0.0)
    if method == "native":
        return encode, encode
    if method == "query_inverted":
        return encode + invert, encode
    if method == "gallery_inverted":
        return encode, encode + invert
    if method == "fused":
        return encode + invert, encode + invert
    # rivals recompute from raw inputs; native stays stored beside them
    extra = per_item.get(method, 0.0)
    return per_item.get("decode", 0.0) + extra, encode + extra


def _torch_similarities(method: str, vectors: dict[str, torch.Tensor], num_gallery: int, split: bool,
                        removed: torch.Tensor) -> torch.Tensor:
    def side(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        v = vectors[name]
        return (v[num_gallery:] if split else v[:num_gallery]), v[:num_gallery]

    if method == "native":
        q, g = side("native")
        return q @ g.T
    if method in ("isoclip", "gapshift"):
        q, g = side(method)
        return q @ g.T
    qn, gn = side("native")
    qi, gi = side("inverted")
    if method == "query_inverted":
        return qi @ gn.T
    if method == "gallery_inverted":
        return qn @ gi.T
    return rrf_scores([qn @ gi.T, qi @ gn.T], removed)


# -------------------------------------------------------------------------------------------- Qdrant
def _qdrant_similarities(store, data: LabelledSet, config: EvaluationConfig, methods: Sequence[str],
                         derived_names: dict[str, str]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Scores of every (query, gallery) pair through store searches, and the median search time per method."""
    from qdrant_client import models

    num_g = len(data.gallery)
    query_ids = list(range(num_g, num_g + data.num_queries)) if data.split else list(range(num_g))
    flt = None
    if data.split:
        flt = models.Filter(must=[models.FieldCondition(key="role", match=models.MatchValue(value="gallery"))])
    search = store.search_images if data.modality == "image" else store.search_texts
    sims, search_ms = {}, {}
    for method in methods:
        mode = derived_names.get(method, method)
        sim = torch.full((len(query_ids), num_g), float("-inf"), dtype=torch.float64)
        for start in range(0, len(query_ids), 64):
            chunk = query_ids[start : start + 64]
            hits = search(chunk, mode=mode, limit=num_g, query_filter=flt, exclude_query=True, with_payload=False,
                          prefetch_limit=num_g)
            for row, points in enumerate(hits):
                for p in points:
                    sim[start + row, int(p.id)] = p.score
        sims[method] = sim
        times = []
        for qid in query_ids[: config.latency_queries]:
            start_t = time.perf_counter()
            search(qid, mode=mode, limit=10, query_filter=flt, exclude_query=True, with_payload=False)
            times.append(1000 * (time.perf_counter() - start_t))
        search_ms[method] = statistics.median(times) if times else float("nan")
    return sims, search_ms


def _open_store(model, preprocess, tokenizer, model_id: str, config: EvaluationConfig, derived: dict[str, Any],
                modality: str):
    from crossgap_qdrant.store import CrossModalStore

    names = {f"{modality}_{method}": vec for method, vec in derived.items()}
    return CrossModalStore.open(
        config.qdrant_location,
        f"crossgap-eval-{uuid.uuid4().hex[:12]}",
        model,
        tokenizer,
        preprocess,
        api_key=config.api_key,
        model_id=model_id,
        oti_config=config.oti_config,
        ovi_config=config.ovi_config,
        derived_vectors=names,
    )


# ---------------------------------------------------------------------------------------------- harness
def evaluate(
    model: torch.nn.Module,
    preprocess: Callable,
    tokenizer: Callable,
    data: LabelledSet,
    config: EvaluationConfig | None = None,
    *,
    model_id: str = "model",
    progress: bool = False,
) -> EvaluationResult:
    """Evaluates every configured method on a labelled set, with each configured backend.

    Args:
        model, preprocess, tokenizer: a frozen open_clip model (:func:`crossgap_qdrant.models.load_model`).
        data: the labelled set.
        config: settings (default :class:`EvaluationConfig`).
        model_id: names the model in the report and the Qdrant collection metadata (its part before "/" picks
            OVI's published token count).
        progress: show progress bars.

    Returns:
        EvaluationResult with one MethodResult per (method, backend).
    """
    config = config or EvaluationConfig()
    skipped: dict[str, str] = {}
    model_name = model_id.split("/")[0]
    feats, derived = _compute_features(model, preprocess, tokenizer, data, config, model_name, skipped, progress)
    methods = [m for m in config.methods if m not in skipped]
    num_g, num_q = len(data.gallery), data.num_queries
    removed = torch.zeros(num_q, num_g, dtype=torch.bool)
    if not data.split:
        removed.fill_diagonal_(True)
    query_labels = data.query_labels if data.split else data.gallery_labels
    labels = _LABELS[data.modality]
    results: list[MethodResult] = []
    timings = {f"seconds_{k}": v for k, v in feats.seconds.items()}

    def record(method: str, backend: str, sim: torch.Tensor, search_ms: float | None) -> None:
        metrics = retrieval_metrics(sim, query_labels, data.gallery_labels, exclude=removed, ks=config.ks)
        query_ms, ingest_ms = _method_costs(method, feats.per_item_ms)
        results.append(MethodResult(method, labels[method], backend, metrics,
                                    bootstrap_ci(metrics.ap, n=config.bootstrap), search_ms, query_ms, ingest_ms))

    if "torch" in config.backends:
        start = time.perf_counter()
        for method in methods:
            record(method, "torch", _torch_similarities(method, feats.vectors, num_g, data.split, removed), None)
        timings["seconds_torch_search"] = time.perf_counter() - start

    ingest: dict[str, Any] = {}
    if "qdrant" in config.backends:
        store = _open_store(model, preprocess, tokenizer, model_id, config, derived, data.modality)
        try:
            n = num_g + (num_q if data.split else 0)
            roles = ["gallery"] * num_g + ["query"] * (n - num_g)
            all_labels = list(data.gallery_labels) + list(data.query_labels or [])
            payloads = [{"label": lab, "role": role} for lab, role in zip(all_labels, roles)]
            ingest_fn = store.ingest_images if data.modality == "image" else store.ingest_texts
            report = ingest_fn(
                data.all_items,
                payloads=payloads,
                ids=list(range(n)),
                invert="inverted" in feats.vectors,
                inverted_features=feats.vectors.get("inverted"),
                batch_size=config.batch_size,
                progress=progress,
            )
            if report.failed:
                raise DataError(f"{len(report.failed)} item(s) could not be ingested, e.g. {report.failed[0]}")
            ingest = {
                "inserted": report.inserted,
                "seconds_encoding": report.seconds_encoding,
                "seconds_database": report.seconds_database,
                "seconds_inversion": report.seconds_inversion,
            }
            start = time.perf_counter()
            derived_names = {m: f"{data.modality}_{m}" for m in derived}
            sims, search_ms = _qdrant_similarities(store, data, config, methods, derived_names)
            timings["seconds_qdrant_search"] = time.perf_counter() - start
        finally:
            try:
                store.client.delete_collection(store.collection_name)
            finally:
                store.close()
        for method in methods:
            record(method, "qdrant", sims[method], search_ms[method])

    return EvaluationResult(
        dataset=data.name,
        modality=data.modality,
        model_id=model_id,
        num_gallery=num_g,
        num_queries=num_q,
        results=results,
        skipped=skipped,
        timings=timings,
        ingest=ingest,
    )


# ----------------------------------------------------------------------------------------------- report
def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _ms(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def markdown_table(result: EvaluationResult) -> str:
    """The per-method table of a result (metrics in %, costs in ms), one row per (method, backend)."""
    ks = sorted({int(k[2:]) for r in result.results for k in r.summary if k.startswith("P@")})
    header = ["method", "backend", "mAP", "95% CI", "mAP@R", "R-prec", *[f"P@{k}" for k in ks], "R@1",
              "search ms", "query model ms", "ingest ms/item"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in result.results:
        s = r.summary
        row = [r.label, r.backend, _pct(s["mAP"]), f"{_pct(r.map_ci[0])}-{_pct(r.map_ci[1])}", _pct(s["mAP@R"]),
               _pct(s["R-precision"]), *[_pct(s[f"P@{k}"]) for k in ks], _pct(s["R@1"]), _ms(r.search_ms),
               _ms(r.query_compute_ms), _ms(r.ingest_ms_per_item)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _plot(result: EvaluationResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.by_backend("torch") or result.results
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2, 3.5))
    maps = [100 * r.summary["mAP"] for r in rows]
    lows = [max(0.0, m - 100 * r.map_ci[0]) for m, r in zip(maps, rows)]
    highs = [max(0.0, 100 * r.map_ci[1] - m) for m, r in zip(maps, rows)]
    ax.bar(range(len(rows)), maps, yerr=[lows, highs], capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(rows)), [r.label for r in rows], rotation=20, ha="right")
    ax.set_ylabel("mAP (%)")
    ax.set_title(f"{result.dataset or 'dataset'}: {result.model_id} ({result.num_queries} queries)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: EvaluationResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Writes report.md (markdown table), map.png (mAP per method with 95% CI) and results.json.

    Args:
        results: what :func:`evaluate` returned.
        out_dir: created if missing.

    Returns:
        {"markdown": ..., "plot": ..., "json": ...} paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "plot": out / "map.png", "json": out / "results.json"}
    r = results
    lines = [
        f"# Retrieval evaluation: {r.dataset or 'dataset'}",
        "",
        f"- model: `{r.model_id}`; {r.modality} -> {r.modality} retrieval",
        f"- gallery: {r.num_gallery} items; queries: {r.num_queries}",
        "- metrics in %, full ranking, ties broken pessimistically; CI: bootstrap over queries",
        "- search ms: median Qdrant query time at limit 10; query model ms: encoding (+ inversion or projection) "
        "per query; ingest ms/item: model time per gallery item for the vectors the method searches",
        "",
        markdown_table(r),
        "",
    ]
    agreement = r.agreement()
    if agreement:
        lines += [f"Largest torch/Qdrant difference over all metrics: {max(agreement.values()):.2e}", ""]
    if r.skipped:
        lines += ["Skipped:", *[f"- {m}: {why}" for m, why in r.skipped.items()], ""]
    if r.ingest:
        lines += ["Qdrant ingestion: " + ", ".join(f"{k} {v:.3g}" for k, v in r.ingest.items()), ""]
    paths["markdown"].write_text("\n".join(lines), encoding="utf-8")
    _plot(r, paths["plot"])
    paths["json"].write_text(json.dumps(r.to_dict(), indent=2), encoding="utf-8")
    return paths
