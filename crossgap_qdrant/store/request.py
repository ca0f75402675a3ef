"""One search as the store was asked for it: the modes, the hubness correction and the validated request.

:class:`SearchRequest` is built and checked once by :class:`~crossgap_qdrant.store.CrossModalStore` (limit,
mode, prefetch, hubness) and handed whole to the planner (crossgap_qdrant.store.search), which turns it into
Qdrant requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Collection

import numpy as np
from qdrant_client import models

from crossgap_qdrant.store.errors import InvalidRequestError

#: The same-modality search modes every collection offers (derived vectors add their own names).
MODES = ("native", "gallery_inverted", "query_inverted", "fused")
DEFAULT_MODE = "gallery_inverted"


@dataclass(frozen=True)
class HubCorrection:
    """Re-scoring of a search's candidates by a stored per-point statistic: ``score - weight * payload[key]``.

    Attributes:
        key: the payload key holding each point's hub value.
        weight: how much of the hub value is subtracted (1: DBNorm's dual inverted softmax).
        default: the value of points without one (ingested after the fit): the mean of the fitted values.
    """

    key: str
    weight: float = 1.0
    default: float = 0.0

    def formula(self) -> models.FormulaQuery:
        """The server-side form: $score - weight * key, over the prefetched candidates."""
        return models.FormulaQuery(
            formula=models.SumExpression(sum=["$score", models.MultExpression(mult=[-self.weight, self.key])]),
            defaults={self.key: self.default})

    def rescore(self, points: list[models.ScoredPoint], limit: int, with_payload: Any) -> list[models.ScoredPoint]:
        """The client-side form over candidates fetched with :meth:`candidate_payload`: the same arithmetic,
        best first, ``limit`` kept, the payload cut back to what the caller asked for."""
        def value(p: models.ScoredPoint) -> float:
            v = (p.payload or {}).get(self.key, self.default)
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else self.default

        scored = sorted(((p.score - self.weight * value(p), i, p) for i, p in enumerate(points)),
                        key=lambda t: (-t[0], t[1]))[:limit]
        return [p.model_copy(update={"score": score, "payload": _selected(p.payload, with_payload)})
                for score, _, p in scored]

    def candidate_payload(self, with_payload: Any) -> Any:
        """What to fetch with the candidates: the caller's selection plus the hub key."""
        if with_payload is True or isinstance(with_payload, models.PayloadSelectorExclude):
            return True
        if isinstance(with_payload, models.PayloadSelectorInclude):
            return list(with_payload.include) + [self.key]
        if isinstance(with_payload, (list, tuple)):
            return list(with_payload) + [self.key]
        return [self.key]


def _selected(payload: dict | None, with_payload: Any) -> dict | None:
    """The part of a payload a ``with_payload`` selection asks for."""
    if payload is None or with_payload is True:
        return payload
    if not with_payload:
        return None
    if isinstance(with_payload, models.PayloadSelectorExclude):
        return {k: v for k, v in payload.items() if k not in set(with_payload.exclude)}
    keys = set(with_payload.include if isinstance(with_payload, models.PayloadSelectorInclude) else with_payload)
    return {k: v for k, v in payload.items() if k in keys}


def check_limit(limit: Any, what: str = "limit") -> int:
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise InvalidRequestError(f"{what} must be an integer >= 1, got {limit!r}")
    return int(limit)


@dataclass(frozen=True)
class SearchRequest:
    """One search, validated (build it with :meth:`build`).

    Attributes:
        query_modality, gallery_modality: "image" or "text"; they differ for CLIP's cross-modal search.
        query: the query as given (features [E] or [B, E], a point id, an image, a text, or a list of them).
        mode: a name of :data:`MODES` or a derived vector of the gallery modality ("native" when cross-modal).
        limit: results per query.
        prefetch_limit: candidates per route of "fused", and candidates re-scored by ``hubness``.
        query_filter: a Qdrant filter on the gallery.
        exclude_query: leave the query's own point out of the results.
        with_payload, with_vectors: what each hit carries (qdrant-client's selections).
        search_params: Qdrant search parameters (None: the store's own).
        literal_text: a string query is text even in UUID form (it was given as text=).
        hubness: the correction that re-scores the candidates, or None.
        strict: refuse (PartialCoverageError) a same-modality search in a mode whose gallery vectors only some
            points hold; otherwise such a search warns (PartialCoverageWarning).
    """

    query_modality: str
    gallery_modality: str
    query: Any
    mode: str
    limit: int
    prefetch_limit: int
    query_filter: models.Filter | None = None
    exclude_query: bool = True
    with_payload: Any = True
    with_vectors: Any = False
    search_params: models.SearchParams | None = None
    literal_text: bool = False
    hubness: HubCorrection | None = None
    strict: bool = False

    @property
    def cross(self) -> bool:
        """A cross-modal search (text->image, image->text): native vectors on both sides."""
        return self.query_modality != self.gallery_modality

    @classmethod
    def build(cls, query_modality: str, gallery_modality: str, query: Any, *, mode: str, limit: Any,
              derived: Collection[str], prefetch_limit: Any = None, hubness: HubCorrection | None = None,
              **options: Any) -> "SearchRequest":
        """Checks a search once and fills in its defaults.

        Args:
            derived: the derived vector names of the gallery modality (modes of their own).
            prefetch_limit: default ``max(4 * limit, 40)``.
            options: the other attributes (query_filter, exclude_query, with_payload, with_vectors,
                search_params, literal_text, strict).

        Raises:
            InvalidRequestError: an unknown mode, a mode other than "native" for a cross-modal search, a limit
                below 1, or hubness correction of a search without one cosine similarity to correct.
        """
        cross = query_modality != gallery_modality
        if cross and mode != "native":
            raise InvalidRequestError(f"{query_modality}->{gallery_modality} search compares native vectors (CLIP's "
                                      f"own search): mode must be 'native', got {mode!r}")
        if mode not in MODES and mode not in derived:
            raise InvalidRequestError(f"mode must be one of {', '.join(MODES)} or a derived {gallery_modality} "
                                      f"vector ({', '.join(sorted(derived)) or 'none stored'}), got {mode!r}")
        limit = check_limit(limit)
        prefetch = check_limit(prefetch_limit, "prefetch_limit") if prefetch_limit is not None else max(4 * limit, 40)
        if hubness is not None and (cross or mode == "fused"):
            raise InvalidRequestError(
                "hubness correction re-scores the cosine similarities of a same-modality search; mode "
                f"{mode!r} of a {query_modality}->{gallery_modality} search has none to correct")
        return cls(query_modality, gallery_modality, query, mode, limit, prefetch, hubness=hubness, **options)
