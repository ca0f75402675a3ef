"""The evaluation harness: features of every item, each method's scores from each backend, metrics and costs.

======================  ===========================================================================
method                  query vs gallery (images; texts are symmetric with OVI and the image space)
======================  ===========================================================================
native                  native image vs native image (the usual intra-modal search)
gallery_inverted        native query vs OTI of the gallery (text space): ours, inversion at ingestion
query_inverted          OTI of the query (text space) vs native images: the paper's protocol
fused                   reciprocal rank fusion of the two inter-modal rankings (Qdrant's RRF, k = 2)
isoclip                 IsoCLIP band on both sides (:class:`~crossgap_qdrant.rivals.IsoCLIPProjector`)
pca                     PCA projection on both sides (:class:`~crossgap_qdrant.rivals.PCAProjector`)
gap_shift               gap-shifted query vs native images (:class:`~crossgap_qdrant.rivals.ModalityGapShift`)
<method>_hub            the method re-scored by hubness correction (DBNorm, :mod:`crossgap_qdrant.rivals.hubness`)
======================  ===========================================================================

These names are the store's search modes (the rivals as "<modality>_<method>" vectors, "_hub" as
``hubness=True``), the CLI's ``--methods`` values and the report's rows. How the rivals are fitted on the
labelled sample: :mod:`crossgap_qdrant.evaluate.representations`. Which method to serve:
:func:`crossgap_qdrant.evaluate.recommend.recommend`.

When queries and gallery coincide, each query's own item is excluded from its gallery. With a split, queries
are stored too (payload role "query") and searched by point id with a filter on role "gallery", so a query's
inverted vector is computed once, as at ingestion.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from crossgap_qdrant import images
from crossgap_qdrant.evaluate.backends import QdrantBackend, torch_hub, torch_similarities
from crossgap_qdrant.evaluate.data import DataError, LabelledSet, drop_unreadable_images
from crossgap_qdrant.evaluate.recommend import recommend
from crossgap_qdrant.evaluate.representations import fit_rivals
from crossgap_qdrant.evaluate.results import (
    KNOWN_METHODS,
    METHODS,
    RIVALS,
    EvaluationError,
    EvaluationResult,
    MethodResult,
    describe,
    split_method,
)
from crossgap_qdrant.inversion import OTIConfig, OVIConfig, oti_invert, ovi_invert
from crossgap_qdrant.metrics import bootstrap_ci, paired_bootstrap_ci, per_query, retrieval_metrics
from crossgap_qdrant.models import ClipModel, as_clip_model, encode_images, encode_texts, model_device
from crossgap_qdrant.rivals import DEFAULT_TEMPERATURE, DEFAULT_WEIGHT

INVERTING = ("gallery_inverted", "query_inverted", "fused")


@dataclass
class EvaluationConfig:
    """Settings of :func:`evaluate`.

    Attributes:
        methods: which representations to evaluate (subset of :data:`KNOWN_METHODS`; default :data:`METHODS`).
        oti_config, ovi_config: inversion settings (None: the published defaults).
        isoclip_k_top, isoclip_k_bottom: IsoCLIP cuts to use; None: the published cuts of the backbone, else
            cuts chosen on the labelled sample (:mod:`crossgap_qdrant.evaluate.representations`).
        vocabulary: texts of the PCA projection (None: the set's texts for a text set, else the bundled class
            names); ``vocabulary_source`` is recorded with it.
        gap_texts: texts to fit the text mean of the gap shift on image sets (None: generic captions).
        gap_images: images (paths) to fit the image mean of the gap shift on text sets; without them the
            method is skipped for text sets.
        hub_temperature, hub_weight, hub_bank_size: hubness correction (the gallery items are the banks).
        ks: cut-offs for P@k, R@k and Hit@k.
        backends: "torch" and/or "qdrant".
        latency_queries: number of queries timed per method through Qdrant (limit 10 each).
        bootstrap: resamples for the confidence intervals (mAP and paired differences).
        batch_size: encoding batch size.
        qdrant_location: ":memory:" (default), a folder, or a server URL for the Qdrant backend's temporary
            collection (removed afterwards).
        qdrant_engine: for a folder: None (qdrant-edge) or "local".
        image_background: RGB that transparent image pixels are flattened onto (as at ingestion).
        api_key, timeout, retry: for a server (seconds per request; retries and the total deadline per
            operation, a :class:`crossgap_qdrant.store.RetryPolicy`; None: the default policy).
    """

    methods: Sequence[str] = METHODS
    oti_config: Any = None
    ovi_config: Any = None
    isoclip_k_top: int | None = None
    isoclip_k_bottom: int | None = None
    vocabulary: Sequence[str] | None = None
    vocabulary_source: str | None = None
    gap_texts: Sequence[str] | None = None
    gap_images: Sequence[str] | None = None
    hub_temperature: float = DEFAULT_TEMPERATURE
    hub_weight: float = DEFAULT_WEIGHT
    hub_bank_size: int = 1000
    ks: Sequence[int] = (1, 5, 10)
    backends: Sequence[str] = ("torch", "qdrant")
    latency_queries: int = 20
    bootstrap: int = 1000
    batch_size: int = 64
    qdrant_location: str = ":memory:"
    qdrant_engine: str | None = None
    api_key: str | None = None
    timeout: float | None = None
    retry: Any = None
    image_background: tuple[int, int, int] = images.WHITE

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in KNOWN_METHODS]
        if unknown or not self.methods:
            raise EvaluationError(f"unknown method(s) {unknown}; choose from {', '.join(KNOWN_METHODS)}")
        bad = [b for b in self.backends if b not in ("torch", "qdrant")]
        if bad or not self.backends:
            raise EvaluationError(f"backends must be 'torch' and/or 'qdrant', got {list(self.backends)}")
        if not self.hub_temperature > 0 or self.hub_bank_size < 1:
            raise EvaluationError(f"hub_temperature must be > 0 and hub_bank_size >= 1, got {self.hub_temperature}, "
                                  f"{self.hub_bank_size}")
        if self.vocabulary is not None:
            self.vocabulary = [t.strip() for t in self.vocabulary if isinstance(t, str) and t.strip()]
            if not self.vocabulary:
                raise EvaluationError("the PCA vocabulary holds no text")
            self.vocabulary_source = self.vocabulary_source or f"given texts ({len(self.vocabulary)})"

    @property
    def bases(self) -> set[str]:
        """The methods whose vectors are needed (each "_hub" method needs its base's)."""
        return {split_method(m)[0] for m in self.methods}


@dataclass
class _Features:
    """Per-item vectors of all items (gallery first, then queries): name -> [N, E]; timings; fitted rivals."""

    vectors: dict[str, torch.Tensor]
    seconds: dict[str, float]
    per_item_ms: dict[str, float]
    fitted: Any = None
    derived: dict[str, Any] = field(default_factory=dict)  # rival method -> its derived vector


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _load_pixels(preprocess: Callable, paths: Sequence[str], background: tuple[int, int, int]) -> torch.Tensor:
    """[N, 3, H, W] preprocessed images (the package's image loader, looked up on its module so a test can
    record the calls); an unreadable file raises DataError."""
    try:
        return images.load_pixels(preprocess, paths, background=background)
    except images.ImageError as exc:
        raise DataError(f"cannot read image: {exc}") from exc


def _compute_features(clip, data: LabelledSet, config: EvaluationConfig, skipped: dict[str, str],
                      score: Callable[[torch.Tensor], Any], progress: bool) -> _Features:
    """Native, inverted and rival vectors of every item, timed (the rivals fitted on the sample first)."""

    model, preprocess, tokenizer = clip
    items = data.all_items
    n = len(items)
    vectors, seconds = {}, {}
    if data.modality == "image":
        inputs, seconds["decode"] = _timed(lambda: _load_pixels(preprocess, items, config.image_background))
        native, seconds["encode"] = _timed(
            lambda: encode_images(clip, list(inputs), batch_size=config.batch_size, progress=progress)
        )
    else:
        inputs = tokenizer(items)
        native, seconds["encode"] = _timed(
            lambda: encode_texts(clip, items, batch_size=config.batch_size, progress=progress)
        )
    vectors["native"] = native

    if config.bases & set(INVERTING):
        if data.modality == "image":
            result, seconds["invert"] = _timed(
                lambda: oti_invert(clip, native, config=config.oti_config or OTIConfig(), progress=progress)
            )
        else:
            result, seconds["invert"] = _timed(
                lambda: ovi_invert(clip, native, config=config.ovi_config or OVIConfig(), progress=progress)
            )
        vectors["inverted"] = result.features.float().cpu()

    num_g = len(data.gallery)
    queries = slice(num_g, None) if data.split else slice(0, num_g)
    fitted, seconds["fit_rivals"] = _timed(lambda: fit_rivals(clip, data, config, native, inputs,
                                                              config.bases & set(RIVALS), queries, slice(0, num_g),
                                                              score))
    skipped.update(fitted.skipped)
    derived = {name: t.vector(data.modality) for name, t in fitted.transforms.items()}
    device = model_device(model)
    for name, vec in derived.items():

        def run(vec=vec):
            out = [vec.compute(model, inputs[s : s + config.batch_size].to(device))
                   for s in range(0, n, config.batch_size)]
            return torch.cat(out).float().cpu()

        vectors[name], seconds[name] = _timed(run)

    per_item = {k: 1000 * v / max(n, 1) for k, v in seconds.items() if k != "fit_rivals"}
    return _Features(vectors, seconds, per_item, fitted, derived)


def _method_costs(method: str, per_item: dict[str, float]) -> tuple[float, float]:
    """(query-time model ms, ingestion model ms per item) of a method, from the per-item stage timings."""
    base, _ = split_method(method)  # hubness correction adds no model time
    encode = per_item.get("decode", 0.0) + per_item.get("encode", 0.0)
    invert = per_item.get("invert", 0.0)
    if base == "native":
        return encode, encode
    if base == "query_inverted":
        return encode + invert, encode
    if base == "gallery_inverted":
        return encode, encode + invert
    if base == "fused":
        return encode + invert, encode + invert
    # rivals recompute from raw inputs; native stays stored beside them
    extra = per_item.get(base, 0.0)
    return per_item.get("decode", 0.0) + extra, encode + extra


def _add_paired_differences(results: list[MethodResult], num_queries: int, resamples: int) -> None:
    """Sets ``diff_vs_native`` of every non-native result from the native result of the same backend."""
    native = {r.backend: per_query(r.metrics, num_queries) for r in results if r.method == "native"}
    for r in results:
        if r.method != "native" and r.backend in native:
            r.diff_vs_native = paired_bootstrap_ci(per_query(r.metrics, num_queries), native[r.backend],
                                                   n=resamples)


def _representations(feats: _Features, methods: Sequence[str], config: EvaluationConfig, num_g: int) -> dict:
    """What the report says about the fitted rivals and the hubness correction."""
    info = {name: dict(v) for name, v in feats.fitted.info.items()}
    if any(split_method(m)[1] for m in methods):
        info["hubness"] = {"method": "DBNorm dual inverted softmax (query and gallery banks)",
                           "temperature": config.hub_temperature, "weight": config.hub_weight,
                           "bank_size": min(num_g, config.hub_bank_size),
                           "banks": "the gallery items (an item is never in its own banks)"}
    return info


def evaluate(
    clip: ClipModel,
    data: LabelledSet | None = None,
    config: EvaluationConfig | None = None,
    *parts: Any,
    model_id: str | None = None,
    model_name: str | None = None,
    progress: bool = False,
) -> EvaluationResult:
    """Evaluates every configured method on a labelled set, with each configured backend.

    Call it with a model handle, ``evaluate(clip, data, config)``. The parts form
    ``evaluate(model, preprocess, tokenizer, data[, config])`` still works in this release and warns once.

    Args:
        clip: a :class:`~crossgap_qdrant.models.ClipModel` (:func:`crossgap_qdrant.models.load_model`, or
            ``ClipModel.from_parts``).
        data: the labelled set.
        config: settings (default :class:`EvaluationConfig`).
        model_id: recorded in the Qdrant collection metadata and results.json (default: the handle's content
            fingerprint).
        model_name: the model's name in report titles (default: the handle's display name, e.g.
            "ViT-B-32/openai"; never a file path).
        progress: show progress bars.

    Returns:
        EvaluationResult with one MethodResult per (method, backend).
    """
    clip, data, config = _handle_and_data(clip, data, config, parts)
    model_id = model_id or clip.model_id
    config = config or EvaluationConfig()
    data, unreadable = drop_unreadable_images(data)
    skipped: dict[str, str] = {}
    num_g, num_q = len(data.gallery), data.num_queries
    removed = torch.zeros(num_q, num_g, dtype=torch.bool)
    if not data.split:
        removed.fill_diagonal_(True)
    query_labels = data.query_labels if data.split else data.gallery_labels

    def metrics_of(sim):
        return retrieval_metrics(sim, query_labels, data.gallery_labels, exclude=removed, ks=config.ks)

    feats = _compute_features(clip, data, config, skipped, lambda sim: per_query(metrics_of(sim), num_q), progress)
    for method in config.methods:
        base = split_method(method)[0]
        if base in skipped and method != base:
            skipped[method] = f"{base} was skipped"
    methods = [m for m in config.methods if m not in skipped]
    results: list[MethodResult] = []
    timings = {f"seconds_{k}": v for k, v in feats.seconds.items()}

    def record(method: str, backend: str, sim, search_ms: float | None) -> None:
        metrics = metrics_of(sim)
        query_ms, ingest_ms = _method_costs(method, feats.per_item_ms)
        results.append(MethodResult(method, backend, metrics, bootstrap_ci(metrics.ap, n=config.bootstrap),
                                    search_ms=search_ms, query_compute_ms=query_ms, ingest_ms_per_item=ingest_ms,
                                    description=describe(data.modality, method)))

    if "torch" in config.backends:
        start = time.perf_counter()
        hubs = {base: torch_hub(data.modality, base, feats.vectors, num_g, feats.derived, config.hub_temperature,
                                config.hub_bank_size)
                for base, corrected in map(split_method, methods) if corrected}
        for method in methods:
            base, _ = split_method(method)
            sim = feats.fitted.crossfit_scores.get(method)
            if sim is None:
                sim = torch_similarities(method, feats.vectors, num_g, data.split, removed, modality=data.modality,
                                         derived=feats.derived, hub=hubs.get(base), weight=config.hub_weight)
            record(method, "torch", sim, None)
        timings["seconds_torch_search"] = time.perf_counter() - start

    ingest: dict[str, Any] = {}
    if "qdrant" in config.backends:
        with QdrantBackend(clip, model_id=model_id, data=data, derived=feats.derived,
                           location=config.qdrant_location, api_key=config.api_key, oti_config=config.oti_config,
                           ovi_config=config.ovi_config, engine=config.qdrant_engine, timeout=config.timeout,
                           image_background=config.image_background,
                           **({} if config.retry is None else {"retry": config.retry})) as backend:
            ingest = backend.ingest(feats.vectors.get("inverted"), config.batch_size, progress)
            start = time.perf_counter()
            sims, search_ms = backend.similarities(methods, config.latency_queries, temperature=config.hub_temperature,
                                                   weight=config.hub_weight, bank_size=config.hub_bank_size)
            timings["seconds_qdrant_search"] = time.perf_counter() - start
        for method in methods:
            record(method, "qdrant", sims[method], search_ms[method])

    _add_paired_differences(results, num_q, config.bootstrap)
    chance = [r.summary["chance mAP"] for r in results[:1]]
    result = EvaluationResult(
        dataset=data.name,
        modality=data.modality,
        model_id=model_id,
        model_name=model_name or clip.display_name,
        num_gallery=num_g,
        num_queries=num_q,
        results=results,
        chance_map=chance[0] if chance else float("nan"),
        skipped=skipped,
        unreadable=unreadable,
        timings=timings,
        ingest=ingest,
        representations=_representations(feats, methods, config, num_g),
        crossfitted=tuple(m for m in feats.fitted.crossfit_scores if m in methods),
        transforms=dict(feats.fitted.transforms),
    )
    result.recommendation = recommend(result)
    return result


def _handle_and_data(clip: Any, data: Any, config: Any, parts: tuple) -> tuple[ClipModel, LabelledSet, Any]:
    """(handle, labelled set, config) of ``evaluate(clip, data, config)`` or of the deprecated parts form
    ``evaluate(model, preprocess, tokenizer, data[, config])`` (which warns once, through as_clip_model)."""
    if isinstance(data, LabelledSet):
        if parts:
            raise TypeError("evaluate(clip, data, config) takes no further positional arguments")
        return as_clip_model(clip), data, config
    if not parts or not isinstance(parts[0], LabelledSet) or len(parts) > 2:
        raise TypeError("evaluate() needs a model handle and a labelled set: evaluate(clip, data[, config])")
    return as_clip_model((clip, data, config)), parts[0], parts[1] if len(parts) > 1 else None
