"""Whether a search mode's gallery vectors cover the gallery: a mode whose vectors only some points hold (after
``--no-invert``, an interrupted ``invert`` or ``evaluate --apply``) finds only those, so such a search warns with
the counts and the command that completes them, or is refused when strict.
"""

from __future__ import annotations

import warnings
from typing import Any

from qdrant_client import models

from crossgap_qdrant.store.collection import Collection
from crossgap_qdrant.store.errors import PartialCoverageError, PartialCoverageWarning
from crossgap_qdrant.store.schema import VectorNames


def _scope(query_filter: models.Filter | None) -> models.Filter | None:
    """The part of a search filter that chooses the gallery: a query's own points left out by id (``must_not``
    HasIdCondition, how a query image is kept out of its results) do not change what the mode covers."""
    if query_filter is None:
        return None
    must_not = [c for c in _listed(query_filter.must_not) if not isinstance(c, models.HasIdCondition)]
    must = _listed(query_filter.must)
    if must_not or query_filter.should or query_filter.min_should:
        return query_filter.model_copy(update={"must_not": must_not or None})
    if not must:
        return None
    if len(must) == 1 and isinstance(must[0], models.Filter):
        return _scope(must[0])
    return models.Filter(must=must)


def _listed(conditions: Any) -> list:
    if conditions is None:
        return []
    return list(conditions) if isinstance(conditions, list) else [conditions]


def _holding(name: str, query_filter: models.Filter | None) -> models.Filter:
    must: list[Any] = [models.HasVectorCondition(has_vector=name)]
    return models.Filter(must=must + ([query_filter] if query_filter is not None else []))


class CoverageCheck:
    """Counts, per gallery vector, how many of the gallery's points hold it. A complete count is remembered until
    the collection's point count changes (the store never removes a vector from a point, so only new points can
    make it partial again); a partial one is counted again at every search, so completing it is noticed.

    Args:
        collection: the collection searched.
        names: its vector names.
    """

    def __init__(self, collection: Collection, names: VectorNames):
        self.collection = collection
        self.names = names
        self._complete: dict[tuple[str, str], int] = {}  # (gallery, vector) -> point count when found complete

    def counts(self, gallery: str, using: str, query_filter: models.Filter | None) -> tuple[int, int] | None:
        """(points of the gallery holding ``using``, points of the gallery), within ``query_filter``; None when
        every point of the gallery was found holding it and no point was added since."""
        native = self.names.native(gallery)
        query_filter = _scope(query_filter)
        if query_filter is not None:
            return (self.collection.count(_holding(using, query_filter)),
                    self.collection.count(_holding(native, query_filter)))
        points = self.collection.count()
        if self._complete.get((gallery, using)) == points:
            return None
        have, total = self.collection.count(_holding(using, None)), self.collection.count(_holding(native, None))
        if have >= total:
            self._complete[(gallery, using)] = points
        return have, total

    def check(self, gallery: str, mode: str, using: str, query_filter: models.Filter | None, strict: bool) -> None:
        """Warns (PartialCoverageWarning), or with ``strict`` raises PartialCoverageError, when only some of the
        gallery's points hold ``using``, the gallery vector of ``mode``. None holding it is left to the caller
        (VectorsNotStoredError)."""
        if using == self.names.native(gallery):
            return
        counts = self.counts(gallery, using, query_filter)
        if counts is None or counts[0] == 0 or counts[0] >= counts[1]:
            return
        have, total = counts
        query_filter = _scope(query_filter)
        if using == self.names.inverted(gallery):
            fix = (f"`crossgap-qdrant backfill` (resumable, for large or adopted collections; or `crossgap-qdrant "
                   f"invert --modality {gallery}`, store.invert_missing({gallery!r})) computes the {total - have} "
                   "missing")
        else:
            fix = ("rerun what added this derived vector (crossgap-qdrant evaluate ... --apply, or an ingest with "
                   "it) to fill the missing")
        scope = " matching the filter" if query_filter is not None else ""
        message = (f"mode {mode!r} searches the {using!r} vectors, which {have} of the {total} {gallery}s{scope} in "
                   f"collection {self.collection.name!r} hold: the other {total - have} cannot be found in this "
                   f"mode; {fix}, or search with mode 'native'")
        if strict:
            raise PartialCoverageError(message)
        warnings.warn(PartialCoverageWarning(message), stacklevel=5)  # at the caller of search_images
