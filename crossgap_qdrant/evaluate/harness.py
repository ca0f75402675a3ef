"""The evaluation harness: features of every item, each method's scores from each backend, metrics and costs.

==================  =============================================================================
method              query vs gallery (images; texts are symmetric with OVI and the image space)
==================  =============================================================================
native              native image vs native image (the usual intra-modal search)
gallery_inverted    native query vs OTI of the gallery (text space)
query_inverted      OTI of the query (text space) vs native images
fused               reciprocal rank fusion of the two inter-modal rankings (Qdrant's RRF, k = 2)
isoclip             IsoCLIP features on both sides (:class:`~crossgap_qdrant.rivals.IsoCLIPProjector`)
gap_shift           gap-shifted features on both sides (:class:`~crossgap_qdrant.rivals.ModalityGapShift`)
==================  =============================================================================

These names are the store's search modes (the derived ones as "<modality>_<method>" vectors), the CLI's
``--methods`` values and the demo's rows, and they are what the report prints.

When queries and gallery coincide, each query's own item is excluded from its gallery. With a split, queries
are stored too (payload role "query") and searched by point id with a filter on role "gallery", so a query's
inverted vector is computed once, as at ingestion.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from crossgap_qdrant.evaluate.backends import QdrantBackend, torch_similarities
from crossgap_qdrant.evaluate.data import DataError, LabelledSet
from crossgap_qdrant.evaluate.results import (
    DESCRIPTIONS,
    METHODS,
    EvaluationResult,
    MethodResult,
)
from crossgap_qdrant.metrics import bootstrap_ci, paired_bootstrap_ci, per_query, retrieval_metrics

@dataclass
class EvaluationConfig:
    """Settings of :func:`evaluate`.

    Attributes:
        methods: which representations to evaluate (subset of :data:`METHODS`).
        oti_config, ovi_config: inversion settings (None: the published defaults).
        isoclip_k_top, isoclip_k_bottom: IsoCLIP cuts; None takes the defaults of
            :func:`crossgap_qdrant.rivals.isoclip_cuts`.
        gap_texts: texts to fit the text mean of the gap shift on image sets (None: generic captions).
        gap_images: images (paths) to fit the image mean of the gap shift on text sets; without them the
            method is skipped for text sets.
        ks: cut-offs for P@k, R@k and Hit@k.
        backends: "torch" and/or "qdrant".
        latency_queries: number of queries timed per method through Qdrant (limit 10 each).
        bootstrap: resamples for the confidence intervals (mAP and paired differences).
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


def _load_pixels(preprocess: Callable, paths: Sequence[str]) -> torch.Tensor:
    """[N, 3, H, W] preprocessed images (the package's image loader); an unreadable file raises DataError."""
    from crossgap_qdrant.images import ImageError, load_image

    try:
        return torch.stack([preprocess(load_image(path)) for path in paths])
    except ImageError as exc:
        raise DataError(f"cannot read image: {exc}") from exc


def _derived_vectors(model, tokenizer, preprocess, data: LabelledSet, config: EvaluationConfig,
                     native: torch.Tensor, skipped: dict[str, str]) -> dict[str, Any]:
    """The derived vector objects (``modality``, ``dim``, ``compute``) of the rival methods asked for."""
    from crossgap_qdrant.rivals import IsoCLIPProjector, fit_gap_shift, isoclip_cuts

    methods, derived = set(config.methods), {}
    gallery = native[: len(data.gallery)]
    if "isoclip" in methods:
        explicit = config.isoclip_k_top is not None or config.isoclip_k_bottom is not None
        try:
            cuts = isoclip_cuts(model, config.isoclip_k_top, config.isoclip_k_bottom)
            derived["isoclip"] = IsoCLIPProjector.from_model(model, *cuts).vector(data.modality)
        except ValueError as exc:
            if explicit:
                raise
            skipped["isoclip"] = str(exc)
    if "gap_shift" in methods:
        if data.modality == "image":
            shift = fit_gap_shift(model, tokenizer, preprocess, image_features=gallery, texts=config.gap_texts)
            derived["gap_shift"] = shift.vector("image")
        elif config.gap_images:
            shift = fit_gap_shift(model, tokenizer, preprocess, images=config.gap_images, text_features=gallery)
            derived["gap_shift"] = shift.vector("text")
        else:
            skipped["gap_shift"] = "a text set needs a sample of images to fit the gap shift (gap_images)"
    return derived


def _compute_features(model, preprocess, tokenizer, data: LabelledSet, config: EvaluationConfig, arch: str,
                      skipped: dict[str, str], progress: bool) -> tuple[_Features, dict[str, Any]]:
    """Native, inverted and rival vectors of every item, timed; returns also the derived vector objects."""
    from crossgap_qdrant.inversion import OTIConfig, OVIConfig, oti_invert, ovi_invert
    from crossgap_qdrant.models import encode_images, encode_texts, model_device

    items = data.all_items
    n = len(items)
    vectors, seconds = {}, {}
    if data.modality == "image":
        inputs, seconds["decode"] = _timed(lambda: _load_pixels(preprocess, items))
        native, seconds["encode"] = _timed(
            lambda: encode_images(model, preprocess, list(inputs), batch_size=config.batch_size, progress=progress)
        )
    else:
        inputs = tokenizer(items)
        native, seconds["encode"] = _timed(
            lambda: encode_texts(model, tokenizer, items, batch_size=config.batch_size, progress=progress)
        )
    vectors["native"] = native

    if set(config.methods) & {"query_inverted", "gallery_inverted", "fused"}:
        if data.modality == "image":
            result, seconds["invert"] = _timed(
                lambda: oti_invert(model, tokenizer, native, config=config.oti_config or OTIConfig(), progress=progress)
            )
        else:
            result, seconds["invert"] = _timed(
                lambda: ovi_invert(model, native, config=config.ovi_config or OVIConfig(), progress=progress,
                                   model_name=arch)
            )
        vectors["inverted"] = result.features.float().cpu()

    derived = _derived_vectors(model, tokenizer, preprocess, data, config, native, skipped)
    device = model_device(model)
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


def _add_paired_differences(results: list[MethodResult], num_queries: int, resamples: int) -> None:
    """Sets ``diff_vs_native`` of every non-native result from the native result of the same backend."""
    native = {r.backend: per_query(r.metrics, num_queries) for r in results if r.method == "native"}
    for r in results:
        if r.method != "native" and r.backend in native:
            r.diff_vs_native = paired_bootstrap_ci(per_query(r.metrics, num_queries), native[r.backend],
                                                   n=resamples)


def evaluate(
    model: Any,
    preprocess: Callable | LabelledSet | None = None,
    tokenizer: Callable | EvaluationConfig | None = None,
    data: LabelledSet | None = None,
    config: EvaluationConfig | None = None,
    *,
    model_id: str | None = None,
    model_name: str | None = None,
    progress: bool = False,
) -> EvaluationResult:
    """Evaluates every configured method on a labelled set, with each configured backend.

    Call it with a model handle, ``evaluate(clip, data, config)``, or with its parts,
    ``evaluate(model, preprocess, tokenizer, data, config)``.

    Args:
        model: a :class:`~crossgap_qdrant.models.ClipModel` (:func:`crossgap_qdrant.models.load_model`), or a
            frozen open_clip model with ``preprocess`` and ``tokenizer``.
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
    from crossgap_qdrant.models import as_clip_model

    if isinstance(preprocess, LabelledSet):  # evaluate(clip, data[, config])
        if data is not None or config is not None:
            raise TypeError("evaluate(clip, data, config) takes no further positional arguments")
        data, config, preprocess, tokenizer = preprocess, tokenizer, None, None
    if data is None:
        raise TypeError("evaluate() needs a labelled set: evaluate(clip, data) or evaluate(model, preprocess, "
                        "tokenizer, data)")
    clip = as_clip_model(model if preprocess is None and tokenizer is None else (model, preprocess, tokenizer))
    model, preprocess, tokenizer = clip
    model_id = model_id or clip.model_id
    config = config or EvaluationConfig()
    skipped: dict[str, str] = {}
    feats, derived = _compute_features(model, preprocess, tokenizer, data, config, clip.name, skipped, progress)
    methods = [m for m in config.methods if m not in skipped]
    num_g, num_q = len(data.gallery), data.num_queries
    removed = torch.zeros(num_q, num_g, dtype=torch.bool)
    if not data.split:
        removed.fill_diagonal_(True)
    query_labels = data.query_labels if data.split else data.gallery_labels
    results: list[MethodResult] = []
    timings = {f"seconds_{k}": v for k, v in feats.seconds.items()}

    def record(method: str, backend: str, sim, search_ms: float | None) -> None:
        metrics = retrieval_metrics(sim, query_labels, data.gallery_labels, exclude=removed, ks=config.ks)
        query_ms, ingest_ms = _method_costs(method, feats.per_item_ms)
        results.append(MethodResult(method, backend, metrics, bootstrap_ci(metrics.ap, n=config.bootstrap),
                                    search_ms=search_ms, query_compute_ms=query_ms, ingest_ms_per_item=ingest_ms,
                                    description=DESCRIPTIONS[data.modality][method]))

    if "torch" in config.backends:
        start = time.perf_counter()
        for method in methods:
            record(method, "torch", torch_similarities(method, feats.vectors, num_g, data.split, removed), None)
        timings["seconds_torch_search"] = time.perf_counter() - start

    ingest: dict[str, Any] = {}
    if "qdrant" in config.backends:
        with QdrantBackend(clip, model_id=model_id, data=data, derived=derived,
                           location=config.qdrant_location, api_key=config.api_key, oti_config=config.oti_config,
                           ovi_config=config.ovi_config) as backend:
            ingest = backend.ingest(feats.vectors.get("inverted"), config.batch_size, progress)
            start = time.perf_counter()
            sims, search_ms = backend.similarities(methods, config.latency_queries)
            timings["seconds_qdrant_search"] = time.perf_counter() - start
        for method in methods:
            record(method, "qdrant", sims[method], search_ms[method])

    _add_paired_differences(results, num_q, config.bootstrap)
    chance = [r.summary["chance mAP"] for r in results[:1]]
    return EvaluationResult(
        dataset=data.name,
        modality=data.modality,
        model_id=model_id,
        model_name=model_name or clip.display_name,
        num_gallery=num_g,
        num_queries=num_q,
        results=results,
        chance_map=chance[0] if chance else float("nan"),
        skipped=skipped,
        timings=timings,
        ingest=ingest,
    )
