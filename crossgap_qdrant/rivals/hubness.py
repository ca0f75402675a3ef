"""Hubness reduction with query and gallery banks (DBNorm, Wang et al., "Balance Act", EMNLP 2023), as one
stored value per gallery item.

DBNorm's dual inverted softmax scores a query q against a gallery item g as

    exp(t s(q, g)) / sum_{b in Q} exp(t s(b, g))  *  exp(t s(q, g)) / sum_{b in G} exp(t s(b, g))

with Q a bank of queries and G a bank of gallery items (compared with g in the query's and the gallery's
representation respectively). Its logarithm divided by 2t is s(q, g) - hub(g), with

    hub(g) = (logmeanexp_{b in Q} t s(b, g) + logmeanexp_{b in G} t s(b, g)) / (2 t)

(means instead of sums shift every score by the same constant). The ranking of a query's candidates is
therefore exactly the dual inverted softmax's, and hub(g) depends on g alone: it is fitted once, stored in
the point's payload, and applied at query time as ``$score - weight * hub`` (a Qdrant Formula query over a
prefetch, or the same arithmetic on the client). ``weight`` 1 is DBNorm; QB-Norm is the query bank alone.
The dynamic variant (normalising only where the query's top hit is a bank hub) depends on the query and is
not offered. An item never counts in its own banks.
"""

from __future__ import annotations

import math

import torch

from crossgap_qdrant.rivals.base import RepresentationError

DEFAULT_TEMPERATURE = 20.0  # QB-Norm's beta for cosine similarities
DEFAULT_WEIGHT = 1.0


def _log_mean_exp(scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """[B, G] scores, [B, G] bool kept entries -> [G] log of the mean of exp over the kept entries."""
    scores = scores.masked_fill(~keep, float("-inf"))
    count = keep.sum(0).clamp_min(1).double()
    return torch.logsumexp(scores, dim=0) - torch.log(count)


@torch.no_grad()
def hub_values(gallery: torch.Tensor, query_bank: torch.Tensor, gallery_bank: torch.Tensor | None = None, *,
               self_index: torch.Tensor | None = None, temperature: float = DEFAULT_TEMPERATURE,
               chunk: int = 2048) -> torch.Tensor:
    """hub(g) of every gallery item (see the module docstring).

    Args:
        gallery: [G, E] the gallery items' vectors (the ones searched).
        query_bank: [B, E] bank items in the query's representation (scored against ``gallery``).
        gallery_bank: [B, E] the same bank items in the gallery's representation, or None for the query bank
            alone (QB-Norm's inverted softmax).
        self_index: [G] int64, the bank row of each gallery item's own point (-1 when not in the bank); that
            row is left out of the item's banks.
        temperature: t (QB-Norm and DBNorm use 20 for cosine similarities).
        chunk: gallery items per matrix product.

    Returns:
        [G] float64 hub values, on the similarity scale.

    Raises:
        ValueError: shapes that do not match, an empty bank, a temperature <= 0, or an item whose banks hold
            nothing but itself.
    """
    if not temperature > 0 or not math.isfinite(temperature):
        raise RepresentationError(f"temperature must be a positive number, got {temperature}")
    banks = [query_bank] + ([gallery_bank] if gallery_bank is not None else [])
    for bank in banks:
        if bank.ndim != 2 or bank.shape[0] == 0 or bank.shape[1] != gallery.shape[1] or gallery.ndim != 2:
            raise RepresentationError(f"banks must be non-empty [B, {gallery.shape[-1]}] tensors like the gallery "
                                      f"[G, E]; got bank {tuple(bank.shape)}, gallery {tuple(gallery.shape)}")
    if gallery_bank is not None and gallery_bank.shape[0] != query_bank.shape[0]:
        raise RepresentationError(f"the query and gallery banks must hold the same items: {query_bank.shape[0]} vs "
                                  f"{gallery_bank.shape[0]} rows")
    num_bank = query_bank.shape[0]
    if self_index is None:
        self_index = torch.full((gallery.shape[0],), -1, dtype=torch.long)
    out = torch.empty(gallery.shape[0], dtype=torch.float64)
    rows = torch.arange(num_bank)[:, None]
    for start in range(0, gallery.shape[0], chunk):
        g = gallery[start : start + chunk].double()
        keep = rows != self_index[start : start + chunk][None, :]
        if not keep.any(0).all():
            raise RepresentationError("a gallery item's bank holds only the item itself: the banks need other items")
        total = sum(_log_mean_exp(temperature * (bank.double() @ g.T), keep) for bank in banks)
        out[start : start + chunk] = total / (len(banks) * temperature)
    return out


def bank_sample(num_items: int, size: int, seed: int = 0) -> torch.Tensor:
    """Rows of the bank among ``num_items`` candidates in a fixed order: all of them when they fit, else a
    seeded sample of ``size``, sorted. The store and the evaluation draw banks with this one function."""
    if size < 1:
        raise RepresentationError(f"the bank size must be >= 1, got {size}")
    if num_items <= size:
        return torch.arange(num_items)
    return torch.randperm(num_items, generator=torch.Generator().manual_seed(seed))[:size].sort().values


def hub_corrected(scores: torch.Tensor, hub: torch.Tensor, weight: float = DEFAULT_WEIGHT) -> torch.Tensor:
    """Scores [Q, G] re-scored with the gallery items' hub values [G]: ``score - weight * hub``."""
    return scores.double() - weight * hub.double()[None, :]
