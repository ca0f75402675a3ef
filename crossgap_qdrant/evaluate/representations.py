"""The rival representations fitted for an evaluation, on the user's labelled sample.

- IsoCLIP: the published cuts of the backbone (:data:`crossgap_qdrant.rivals.PUBLISHED_CUTS`), or cuts given
  by the caller; otherwise chosen from :func:`crossgap_qdrant.rivals.cut_grid` by mAP on the sample. The
  chosen cuts (best over all queries) are what a collection would serve; the torch row is cross-fitted (each
  query scored with the cuts chosen on the other half of the queries), so the tuning does not flatter it.
- PCA: the vocabulary is the caller's texts, else the set's own texts (text sets with more texts than
  directions), else the bundled class names; the source is recorded.
- gap shift: the image mean of the set's images and the text mean of given texts (generic captions by
  default), or, for text sets, of given images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from crossgap_qdrant import images
from crossgap_qdrant.rivals import (
    IsoCLIPProjector,
    cut_grid,
    fit_gap_shift,
    fit_pca_projector,
    image_pre_projection,
    isoclip_rank,
    published_cuts,
    text_pre_projection,
)

CROSSFIT_SEED = 0


@dataclass
class Fitted:
    """Rival transforms by method, what the report says about them, cross-fitted torch scores, skips."""

    transforms: dict[str, Any] = field(default_factory=dict)
    info: dict[str, dict[str, Any]] = field(default_factory=dict)
    crossfit_scores: dict[str, torch.Tensor] = field(default_factory=dict)  # method -> [Q, G]
    skipped: dict[str, str] = field(default_factory=dict)


def crossfit_choice(per_query: np.ndarray, seed: int = CROSSFIT_SEED) -> tuple[int, np.ndarray]:
    """Configuration choice on per-query scores [C, Q] (higher is better; NaN for unscored queries).

    Returns:
        (the configuration best on all queries, [Q] the configuration each query is scored with: the best on
        the other half of a seeded two-way split of the queries). Ties go to the earlier configuration.
    """
    num_configs, num_queries = per_query.shape
    fold = np.random.default_rng(seed).permutation(num_queries) % 2
    means = lambda mask: np.array([np.nanmean(r[mask]) if np.isfinite(r[mask]).any() else -np.inf  # noqa: E731
                                   for r in per_query])
    best = int(np.argmax(means(np.ones(num_queries, dtype=bool))))
    other_best = [int(np.argmax(means(fold != f))) if (fold != f).any() else best for f in (0, 1)]
    return best, np.array([other_best[f] for f in fold])


def tune_isoclip(model, modality: str, pre: torch.Tensor, query_rows: slice, gallery_rows: slice,
                 score: Callable[[torch.Tensor], np.ndarray]) -> tuple[IsoCLIPProjector, torch.Tensor, list]:
    """IsoCLIP cuts chosen on a labelled sample from :func:`cut_grid`, with cross-fitted scores.

    Args:
        pre: [N, D] pre-projection features of every item.
        query_rows, gallery_rows: the rows of the queries and of the gallery in ``pre``.
        score: [Q, G] similarities -> [Q] per-query AP (NaN for queries without a relevant item).

    Returns:
        (the projector with the cuts best on all queries, [Q, G] cross-fitted similarities, the grid as
        [{"k_top", "k_bottom", "mAP"}]).
    """
    grid = cut_grid(isoclip_rank(model))
    projectors = [IsoCLIPProjector.from_model(model, *cuts, cuts_source="tuned") for cuts in grid]

    def similarities(projector):
        feats = projector.project(model, modality, pre)
        return feats[query_rows] @ feats[gallery_rows].T

    per_query = np.stack([score(similarities(p)) for p in projectors])
    best, assigned = crossfit_choice(per_query)
    crossfit = torch.empty(per_query.shape[1], pre[gallery_rows].shape[0])
    for config in np.unique(assigned):
        rows = torch.from_numpy(np.nonzero(assigned == config)[0])
        crossfit[rows] = similarities(projectors[config])[rows].float()
    table = [{"k_top": t, "k_bottom": b, "mAP": float(np.nanmean(ap))} for (t, b), ap in zip(grid, per_query)]
    return projectors[best], crossfit, table


def fit_rivals(clip, data, config, native: torch.Tensor, inputs: torch.Tensor, wanted: set[str],
               query_rows: slice, gallery_rows: slice, score: Callable[[torch.Tensor], np.ndarray]) -> Fitted:
    """Fits the rivals among ``wanted`` ("isoclip", "pca", "gap_shift") for a labelled set.

    Args:
        clip: the model handle.
        data: the :class:`~crossgap_qdrant.evaluate.LabelledSet`.
        config: the :class:`~crossgap_qdrant.evaluate.EvaluationConfig`.
        native: [N, E] unit native features of every item (gallery first).
        inputs: [N, ...] preprocessed pixels or token ids of every item.
        query_rows, gallery_rows, score: as in :func:`tune_isoclip`.
    """
    out = Fitted()
    model, preprocess, tokenizer = clip
    if "isoclip" in wanted:
        _fit_isoclip(clip, data, config, inputs, query_rows, gallery_rows, score, out)
    if "pca" in wanted:
        texts, source = config.vocabulary, config.vocabulary_source
        own = list(dict.fromkeys(data.all_items)) if data.modality == "text" else []
        if texts is None and len(own) > native.shape[1] // 2:
            texts, source = own, f"the labelled texts ({len(own)})"
        elif texts is None and own:
            source = (f"bundled class names (the {len(own)} labelled texts are too few for "
                      f"{native.shape[1] // 2} directions)")
        try:
            out.transforms["pca"] = fit_pca_projector(model, tokenizer, texts, vocabulary=source)
        except ValueError as exc:
            if config.vocabulary is not None:
                raise
            out.skipped["pca"] = str(exc)
    if "gap_shift" in wanted:
        gallery = native[gallery_rows]
        if data.modality == "image":
            out.transforms["gap_shift"] = fit_gap_shift(model, tokenizer, preprocess, image_features=gallery,
                                                        texts=config.gap_texts)
        elif config.gap_images:
            pixels = images.load_pixels(preprocess, config.gap_images, background=config.image_background)
            out.transforms["gap_shift"] = fit_gap_shift(model, tokenizer, preprocess, images=list(pixels),
                                                        text_features=gallery)
        else:
            out.skipped["gap_shift"] = "a text set needs a sample of images to fit the gap shift (gap_images)"
    for method, transform in out.transforms.items():
        out.info[method] = {**transform.describe(), **out.info.get(method, {})}
    return out


def _fit_isoclip(clip, data, config, inputs, query_rows, gallery_rows, score, out: Fitted) -> None:
    model = clip.model
    given = (config.isoclip_k_top, config.isoclip_k_bottom)
    published = published_cuts(clip.name, clip.pretrained, data.modality)
    try:
        if given != (None, None):
            cuts, source = (given[0] or 0, given[1] or 0), "given"
        elif published is not None:
            cuts, source = published, "published"
        else:
            cuts, source = None, "tuned"
        if cuts is not None:
            out.transforms["isoclip"] = IsoCLIPProjector.from_model(model, *cuts, cuts_source=source)
            return
        pre_fn = image_pre_projection if data.modality == "image" else text_pre_projection
        pre = torch.cat([pre_fn(model, inputs[s : s + config.batch_size]) for s in range(0, len(inputs),
                                                                                        config.batch_size)])
        projector, crossfit, grid = tune_isoclip(model, data.modality, pre, query_rows, gallery_rows, score)
    except ValueError as exc:
        if given != (None, None):
            raise
        out.skipped["isoclip"] = str(exc)
        return
    out.transforms["isoclip"] = projector
    out.crossfit_scores["isoclip"] = crossfit
    out.info["isoclip"] = {"grid": grid, "crossfitted": True}

