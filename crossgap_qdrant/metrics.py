"""Retrieval metrics over a full ranking: mAP, mAP@R, R-precision, precision@k and recall@k.

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
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
        recall_at: {k: [Q']} 1.0 where a relevant item is within the first k ranks, else 0.0 (R@k as used in
            metric learning).
        query_index: [Q'] index of each evaluated query in the input (queries without relevant items are
            left out).
        num_skipped: number of queries without any relevant gallery item.
    """

    ap: np.ndarray
    ap_at_r: np.ndarray
    r_precision: np.ndarray
    precision_at: dict[int, np.ndarray]
    recall_at: dict[int, np.ndarray]
    query_index: np.ndarray
    num_skipped: int = 0
    extra: dict = field(default_factory=dict)

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
        ks: the cut-offs for precision@k and recall@k. Recall@1 is always computed.

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
    r_index = num_rel.astype(np.int64) - 1
    r_precision = hits[np.arange(hits.shape[0]), r_index] / np.maximum(num_rel, 1)
    precision_at, recall_at = {}, {}
    for k in ks:
        top = hits[:, min(k, num_g) - 1] if num_g else np.zeros(hits.shape[0])
        precision_at[k] = top / k
        recall_at[k] = (top > 0).astype(np.float64)
    return RetrievalMetrics(
        ap=ap,
        ap_at_r=ap_at_r,
        r_precision=r_precision,
        precision_at=precision_at,
        recall_at=recall_at,
        query_index=np.nonzero(evaluated)[0],
        num_skipped=int((~evaluated).sum()),
    )
