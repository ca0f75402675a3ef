"""Retrieval metrics over a full ranking (mAP, mAP@R, R-precision, P@k, R@k, Hit@k), chance levels and
bootstrap confidence intervals over queries.

This is the one implementation of average precision and of the bootstrap in the package: the evaluation
harness, the demo and the training script all call it.

Conventions (shared by every metric here):

- A gallery item is relevant to a query when their labels are equal.
- Excluded pairs (a query's own item when query and gallery coincide) are removed from the gallery of that
  query: they count neither as relevant nor as ranked items.
- Ties are broken pessimistically: among gallery items with exactly equal similarity, irrelevant items are
  ranked before relevant ones. The result is deterministic, never depends on the input order, and is a lower
  bound of the value under any tie-breaking; a degenerate representation (every score equal) gets the worst
  possible score instead of a lucky one.
- Queries with no relevant item in their gallery have undefined metrics: they are left out of the means and
  counted in ``RetrievalMetrics.num_skipped``.
- P@k (precision at k) is the fraction of the first k ranks that are relevant; R@k (recall at k) is the
  fraction of the query's relevant items found in the first k ranks; Hit@k is 1 when at least one relevant
  item is in the first k ranks (what metric-learning papers call "R@k"). P@1 equals Hit@1; R@1 is
  ``P@1 / R`` and differs from both whenever a query has more than one relevant item.
- Chance level: ``chance_ap`` is the exact expected AP of a uniformly random ranking of the query's gallery
  (G items, R relevant): (H_G + (R - 1) / (G - 1) * (G - H_G)) / G with H_G the G-th harmonic number. It
  tends to R / G for large galleries and is well above it for small ones (R = 2 of G = 8: 0.40, not 0.25).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


@dataclass
class RetrievalMetrics:
    """Per-query values and their means.

    Attributes:
        ap: [Q'] average precision of each evaluated query (full ranking).
        ap_at_r: [Q'] average precision truncated at rank R (R: the query's number of relevant items).
        r_precision: [Q'] precision at rank R.
        precision_at: {k: [Q']} precision at rank k (denominator k).
        recall_at: {k: [Q']} fraction of the query's relevant items within the first k ranks (R@k).
        hit_at: {k: [Q']} 1.0 where a relevant item is within the first k ranks, else 0.0 (Hit@k).
        chance_ap: [Q'] expected AP of a uniformly random ranking of the query's gallery (exact).
        query_index: [Q'] index of each evaluated query in the input (queries without relevant items are
            left out).
        num_skipped: number of queries without any relevant gallery item.
    """

    ap: np.ndarray
    ap_at_r: np.ndarray
    r_precision: np.ndarray
    precision_at: dict[int, np.ndarray]
    recall_at: dict[int, np.ndarray]
    hit_at: dict[int, np.ndarray]
    chance_ap: np.ndarray
    query_index: np.ndarray
    num_skipped: int = 0

    @property
    def num_queries(self) -> int:
        return int(self.ap.shape[0])

    def summary(self) -> dict[str, float]:
        """Means over evaluated queries, as fractions in [0, 1] (NaN when no query was evaluated)."""

        def mean(x: np.ndarray) -> float:
            return float(x.mean()) if x.size else float("nan")

        out = {"mAP": mean(self.ap), "mAP@R": mean(self.ap_at_r), "R-precision": mean(self.r_precision)}
        for k, v in sorted(self.precision_at.items()):
            out[f"P@{k}"] = mean(v)
        for k, v in sorted(self.recall_at.items()):
            out[f"R@{k}"] = mean(v)
        for k, v in sorted(self.hit_at.items()):
            out[f"Hit@{k}"] = mean(v)
        out["chance mAP"] = mean(self.chance_ap)
        return out


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _label_codes(query_labels: Sequence, gallery_labels: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Maps arbitrary hashable labels (str, int, tensors of ints) to shared integer codes."""
    q = _as_numpy(query_labels).tolist() if isinstance(query_labels, (torch.Tensor, np.ndarray)) else list(query_labels)
    g = (
        _as_numpy(gallery_labels).tolist()
        if isinstance(gallery_labels, (torch.Tensor, np.ndarray))
        else list(gallery_labels)
    )
    codes: dict = {}
    qc = np.array([codes.setdefault(x, len(codes)) for x in q], dtype=np.int64)
    gc = np.array([codes.setdefault(x, len(codes)) for x in g], dtype=np.int64)
    return qc, gc


def _random_ranking_ap(num_rel: np.ndarray, num_items: np.ndarray) -> np.ndarray:
    """Expected AP of a uniformly random ranking of ``num_items`` items of which ``num_rel`` are relevant.

    E[AP] = (1/R) sum_k E[rel_k P@k] = (1/G) sum_k (1/k + (k - 1)/k * (R - 1)/(G - 1)), summed in closed form
    with the harmonic number H_G.
    """
    g = np.maximum(np.asarray(num_items, dtype=np.float64), 1)
    r = np.asarray(num_rel, dtype=np.float64)
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, int(g.max(initial=1)) + 1))])[g.astype(np.int64)]
    pair = np.divide(r - 1, g - 1, out=np.zeros_like(g), where=g > 1)
    return (harmonic + pair * (g - harmonic)) / g


def exclusion_mask(exclude, num_queries: int, num_gallery: int) -> np.ndarray:
    """Normalises an exclusion spec to a boolean mask [Q, G] (True: removed from that query's gallery).

    Args:
        exclude: None (nothing excluded); a boolean mask [Q, G]; or an integer index map [Q] giving the
            gallery index of each query's own item (-1 where the query is not in the gallery).
    """
    mask = np.zeros((num_queries, num_gallery), dtype=bool)
    if exclude is None:
        return mask
    ex = _as_numpy(exclude)
    if ex.dtype == bool:
        if ex.shape != (num_queries, num_gallery):
            raise ValueError(f"exclusion mask has shape {ex.shape}, expected {(num_queries, num_gallery)}")
        return ex.copy()
    if not np.issubdtype(ex.dtype, np.integer) or ex.shape != (num_queries,):
        raise ValueError(
            f"exclude must be a boolean mask [Q, G] or an integer index map [Q]; got dtype {ex.dtype}, shape {ex.shape}"
        )
    if (ex >= num_gallery).any() or (ex < -1).any():
        raise ValueError(f"exclusion index map has values outside [-1, {num_gallery - 1}]")
    rows = np.nonzero(ex >= 0)[0]
    mask[rows, ex[rows]] = True
    return mask


def retrieval_metrics(
    similarity,
    query_labels: Sequence,
    gallery_labels: Sequence,
    *,
    exclude=None,
    ks: Sequence[int] = (1, 5, 10),
) -> RetrievalMetrics:
    """Full-ranking retrieval metrics from a similarity matrix.

    Args:
        similarity: [Q, G] scores, higher is more similar (torch tensor or numpy array; any float dtype).
        query_labels: Q labels (any hashable values, or an integer tensor).
        gallery_labels: G labels.
        exclude: items removed from each query's gallery: None, a boolean mask [Q, G], or an integer index
            map [Q] (gallery index of the query's own item, -1 for none).
        ks: the cut-offs for P@k, R@k and Hit@k; 1 is always included.

    Returns:
        RetrievalMetrics (ties broken pessimistically, see the module docstring).
    """
    sim = _as_numpy(similarity).astype(np.float64, copy=False)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be [Q, G], got shape {sim.shape}")
    num_q, num_g = sim.shape
    if len(query_labels) != num_q or len(gallery_labels) != num_g:
        raise ValueError(
            f"{len(query_labels)} query labels and {len(gallery_labels)} gallery labels for a "
            f"similarity matrix of shape {sim.shape}"
        )
    if np.isnan(sim).any():
        raise ValueError("similarity contains NaN")
    ks = sorted({int(k) for k in ks} | {1})
    if ks[0] < 1:
        raise ValueError(f"cut-offs must be >= 1, got {ks}")
    qc, gc = _label_codes(query_labels, gallery_labels)
    removed = exclusion_mask(exclude, num_q, num_g)
    relevant = (qc[:, None] == gc[None, :]) & ~removed

    # Sort keys, primary last: kept before removed, then score descending, then irrelevant first (pessimistic).
    order = np.lexsort((relevant, -sim, removed), axis=-1)
    rel_sorted = np.take_along_axis(relevant, order, axis=1).astype(np.float64)  # removed items sort last
    num_rel = rel_sorted.sum(axis=1)
    evaluated = num_rel > 0
    rel_sorted, num_rel = rel_sorted[evaluated], num_rel[evaluated]
    ranks = np.arange(1, num_g + 1, dtype=np.float64)
    hits = np.cumsum(rel_sorted, axis=1)
    precision = hits / ranks
    ap = (precision * rel_sorted).sum(axis=1) / np.maximum(num_rel, 1)
    within_r = ranks[None, :] <= num_rel[:, None]
    ap_at_r = (precision * rel_sorted * within_r).sum(axis=1) / np.maximum(num_rel, 1)
    num_kept = (~removed[evaluated]).sum(axis=1)
    r_index = num_rel.astype(np.int64) - 1
    r_precision = hits[np.arange(hits.shape[0]), r_index] / np.maximum(num_rel, 1)
    precision_at, recall_at, hit_at = {}, {}, {}
    for k in ks:
        top = hits[:, min(k, num_g) - 1] if num_g else np.zeros(hits.shape[0])
        precision_at[k] = top / k
        recall_at[k] = top / np.maximum(num_rel, 1)
        hit_at[k] = (top > 0).astype(np.float64)
    return RetrievalMetrics(
        ap=ap,
        ap_at_r=ap_at_r,
        r_precision=r_precision,
        precision_at=precision_at,
        recall_at=recall_at,
        hit_at=hit_at,
        chance_ap=_random_ranking_ap(num_rel, num_kept),
        query_index=np.nonzero(evaluated)[0],
        num_skipped=int((~evaluated).sum()),
    )


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, n: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean over queries.

    For a paired comparison of two methods on the same queries, pass the per-query differences
    (:func:`paired_bootstrap_ci`): resampling the differences is resampling the same queries for both.

    Args:
        values: [Q] per-query values (average precision, or a per-query difference).
        n: resamples (queries drawn with replacement).
        seed: random seed (the interval is deterministic for a given seed).
        confidence: coverage of the interval.

    Returns:
        (low, high); (nan, nan) for no query.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if n < 1 or not 0 < confidence < 1:
        raise ValueError(f"need n >= 1 and 0 < confidence < 1, got n={n}, confidence={confidence}")
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n, values.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_bootstrap_ci(
    values: Sequence[float] | np.ndarray, baseline: Sequence[float] | np.ndarray, n: int = 1000, seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Mean difference ``values - baseline`` over the same queries and its paired bootstrap CI.

    Each resample draws one set of queries and uses it for both methods, so the interval reflects the
    per-query correlation of the two (much narrower than two independent intervals would suggest).
    Queries where either value is NaN are left out.

    Args:
        values: [Q] per-query values of a method.
        baseline: [Q] per-query values of the baseline on the same queries, in the same order.

    Returns:
        (mean difference, low, high); NaNs when no query has both values.
    """
    a = np.asarray(values, dtype=np.float64).ravel()
    b = np.asarray(baseline, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same queries: got {a.size} and {b.size} values")
    diff = (a - b)[~(np.isnan(a) | np.isnan(b))]
    low, high = bootstrap_ci(diff, n=n, seed=seed, confidence=confidence)
    return (float(diff.mean()) if diff.size else float("nan")), low, high


def per_query(metrics: RetrievalMetrics, num_queries: int, name: str = "ap") -> np.ndarray:
    """A per-query metric spread back to all ``num_queries`` input queries (NaN for the skipped ones).

    Args:
        metrics: what :func:`retrieval_metrics` returned for ``num_queries`` queries.
        name: "ap", "ap_at_r", "r_precision" or "chance_ap".

    Returns:
        [num_queries] float64, aligned with the input queries (so two methods can be paired).
    """
    out = np.full(num_queries, np.nan)
    out[metrics.query_index] = getattr(metrics, name)
    return out


def modality_gap(image_features, text_features) -> dict[str, float]:
    """The modality gap of paired features: distance between the modality means and mean cosines.

    Args:
        image_features: [N, E] unit image features (torch or numpy).
        text_features: [N, E] unit text features; row i is the caption of image i.

    Returns:
        {"mean_distance", "cos_image_image", "cos_text_text", "cos_image_text_paired",
        "cos_image_text_unpaired"} (off-diagonal means for the within-modality and unpaired cosines).
    """
    img = torch.as_tensor(image_features, dtype=torch.float64)
    txt = torch.as_tensor(text_features, dtype=torch.float64)
    off = ~torch.eye(img.shape[0], dtype=torch.bool)
    ii, tt, it = img @ img.T, txt @ txt.T, img @ txt.T
    return {
        "mean_distance": float((img.mean(0) - txt.mean(0)).norm()),
        "cos_image_image": float(ii[off].mean()),
        "cos_text_text": float(tt[off].mean()),
        "cos_image_text_paired": float(it.diagonal().mean()),
        "cos_image_text_unpaired": float(it[off].mean()),
    }


def heldout_metrics(image_features, text_features, captions: Sequence[str], categories: Sequence,
                    subcategories: Sequence | None = None) -> dict:
    """Alignment and retrieval quality of paired image/caption features (the demo model's held-out report).

    - ``i2t_r1``: image->text hit rate at 1 over the distinct captions of the set (a hit: the top caption is
      the image's own caption text; ``n_captions`` candidates, each image has exactly one right caption, so
      Hit@1 = R@1 = P@1 here).
    - ``i2i_map``: image->image full-ranking mAP with category labels (query removed from the gallery).
    - ``i2i_map_sub``: the same with subcategory labels (first two folders), when given.
    - ``gap``: :func:`modality_gap`.

    Args:
        image_features: [N, E] unit image features.
        text_features: [N, E] unit features of each image's caption.
        captions: N caption texts (equal texts count as one candidate).
        categories: N labels for image->image relevance.
        subcategories: N finer labels, optional.
    """
    img = torch.as_tensor(image_features, dtype=torch.float32)
    txt = torch.as_tensor(text_features, dtype=torch.float32)
    uniq = sorted(set(captions))
    pos = {c: i for i, c in enumerate(uniq)}
    first: dict[str, int] = {}
    for i, c in enumerate(captions):
        first.setdefault(c, i)
    top = (img @ txt[[first[c] for c in uniq]].T).argmax(1).numpy()
    own = np.array([pos[c] for c in captions])
    image_sim = img @ img.T
    own_item = np.arange(len(captions))

    def i2i_map(labels) -> float:
        return float(retrieval_metrics(image_sim, labels, labels, exclude=own_item).ap.mean())

    out = {"n_images": len(captions), "n_captions": len(uniq), "i2t_r1": round(float((top == own).mean()), 4),
           "i2i_map": round(i2i_map(categories), 4)}
    if subcategories is not None:
        out["i2i_map_sub"] = round(i2i_map(subcategories), 4)
    out["gap"] = {k: round(v, 4) for k, v in modality_gap(img, txt).items()}
    return out
