"""One search as the service and the command line report it: the mode that ran, what the score is, whether
the query was left out of its own results, and the hits.

:func:`run_search` takes a text, an image (:class:`ImageQuery`) or a stored point id, checks the gallery and
the mode before anything is encoded, and returns a :class:`SearchResult`.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from qdrant_client import models

from crossgap_qdrant.errors import CrossgapError
from crossgap_qdrant.images import load_image
from crossgap_qdrant.store import MODES
from crossgap_qdrant.store.ids import image_bytes_id, normalize_point_id, text_id

GALLERIES = ("images", "texts")


class SearchRequestError(CrossgapError, ValueError):
    """A search that cannot run as asked (bad gallery, mode, limit or query); the message names the fix."""


@dataclass(frozen=True)
class ImageQuery:
    """A decoded query image and the point id its file bytes would have in a collection.

    Attributes:
        image: the RGB PIL image (already read through :func:`crossgap_qdrant.images.load_image`).
        content_id: the point id of the same bytes when ingested: the query is left out of its results.
        name: how the query is named in headers (a file name, or "uploaded image").
    """

    image: Any
    content_id: str
    name: str

    @classmethod
    def from_bytes(cls, data: bytes, name: str, *, max_pixels: int | None = None,
                   background: Any = (255, 255, 255)) -> "ImageQuery":
        """Decodes encoded image bytes; ImageError (naming ``name``) for non-images and images over
        ``max_pixels``."""

        return cls(load_image(data, name=name, max_pixels=max_pixels, background=background), image_bytes_id(data),
                   name)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs: Any) -> "ImageQuery":
        with open(path, "rb") as f:
            return cls.from_bytes(f.read(), os.fspath(path), **kwargs)


@dataclass(frozen=True)
class Hit:
    """One result: rank (1-based), point id, score, payload and the modality of the point."""

    rank: int
    id: str
    score: float
    payload: dict

    @property
    def modality(self) -> str:
        return str(self.payload.get("modality", ""))

    @property
    def item(self) -> str:
        """What the point is, for people: its text, else its source file."""
        return str(self.payload.get("text") or self.payload.get("source") or "")

    @property
    def label(self) -> str:
        """A short name: the text, or the source file's name without its folder."""
        return str(self.payload.get("text") or os.path.basename(str(self.payload.get("source") or "")) or self.id)


@dataclass
class SearchResult:
    """A finished search.

    Attributes:
        query: the query as shown to people (a text, a file name, a point id).
        query_kind: "text", "image" or "id".
        query_modality: "image" or "text".
        gallery: "images" or "texts".
        mode: the mode that ran ("native" for cross-modal searches).
        hubness: whether hubness correction re-scored the candidates.
        score_kind: what the scores are: "cosine", "cosine - hubness", or "rrf" (reciprocal rank fusion of two
            cosine rankings).
        query_excluded: the query itself is stored in the gallery and was left out of the results.
        hits: best first.
        query_item: what the query is, for people: the stored text or source file of a point id, the file of
            an image query ("" when there is nothing more to say than ``query``).
    """

    query: str
    query_kind: str
    query_modality: str
    gallery: str
    mode: str
    hubness: bool
    score_kind: str
    query_excluded: bool
    hits: list[Hit] = field(default_factory=list)
    query_item: str = ""

    def to_dict(self, thumbnail_url: Callable[[Hit], str | None] | None = None) -> dict[str, Any]:
        """JSON form; ``thumbnail_url`` gives each hit's thumbnail address (None: no ``thumbnail`` key)."""
        hits = []
        for h in self.hits:
            entry = {"rank": h.rank, "id": h.id, "score": h.score, "modality": h.modality, "payload": h.payload}
            if thumbnail_url is not None:
                entry["thumbnail"] = thumbnail_url(h)
            hits.append(entry)
        return {"query": self.query, "query_kind": self.query_kind, "query_modality": self.query_modality,
                "gallery": self.gallery, "mode": self.mode, "score_kind": self.score_kind, "hubness": self.hubness,
                "query_excluded": self.query_excluded, "query_item": self.query_item, "hits": hits}


def query_what(result: SearchResult) -> str:
    """What the query was, in words: "text", "image", or "stored image" / "stored text" for a point id."""
    return f"stored {result.query_modality}" if result.query_kind == "id" else result.query_modality


def header_line(results: list[SearchResult]) -> str:
    """One line naming a search (or a comparison of modes): query, mode(s) with their score kinds, gallery,
    hubness, and "query excluded" when it was."""
    first = results[0]
    modes = ", ".join(f"{r.mode} ({r.score_kind})" for r in results)
    item = f": {first.query_item}" if first.query_item and first.query_item != first.query else ""
    parts = [f"query: {first.query!r} ({query_what(first)}{item})",
             f"gallery: {first.gallery}", f"mode{'s' if len(results) > 1 else ''}: {modes}",
             f"hubness: {'on' if any(r.hubness for r in results) else 'off'}"]
    if first.query_excluded:
        parts.append("query excluded")
    return " | ".join(parts)


def score_kind(mode: str, hubness: bool) -> str:
    if mode == "fused":
        return "rrf"
    return "cosine - hubness" if hubness else "cosine"


def modes_for(store, query_modality: str, gallery: str) -> tuple[str, ...]:
    """The modes a ``query_modality`` -> ``gallery`` search accepts (cross-modal: "native" only)."""
    modality = _modality(gallery)
    if query_modality != modality:
        return ("native",)
    return tuple(MODES) + tuple(sorted(store.encoder.derived_for(modality)))


def compare_mode(store, gallery: str) -> str:
    """The inter-modal mode shown beside "native": the collection's recorded mode, else gallery_inverted."""
    recorded = store.default_mode(_modality(gallery))
    return recorded if recorded != "native" else "gallery_inverted"


def run_search(store, *, text: str | None = None, image: ImageQuery | None = None, point_id: Any = None,
               gallery: str = "images", mode: str | None = None, limit: int = 10, query_filter: Any = None,
               hubness: bool | None = None, strict: bool = False) -> SearchResult:
    """Runs one search of ``store`` by exactly one of ``text``, ``image`` or ``point_id``.

    Args:
        gallery: "images" or "texts".
        mode: same-modality searches: a mode of :func:`modes_for` (default: the collection's recorded mode);
            cross-modal searches compare native vectors ("native", the default).
        query_filter: a Qdrant ``models.Filter`` on the gallery's payloads.
        hubness: True, False, or None (as recorded with the mode).
        strict: refuse (PartialCoverageError) a mode whose gallery vectors only some points hold; by default
            such a search warns (PartialCoverageWarning).

    Raises:
        SearchRequestError: a bad gallery, mode, limit or query (before anything is encoded).
        PointNotFoundError: ``point_id`` is not stored.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise SearchRequestError(f"limit must be an integer >= 1, got {limit!r}")
    modality = _modality(gallery)
    query_modality, kind, shown, value, exclusion, item = _resolve(store, text, image, point_id)
    allowed = modes_for(store, query_modality, gallery)
    mode = mode or (store.default_mode(modality) if query_modality == modality else "native")
    if mode not in allowed:
        if query_modality != modality:
            raise SearchRequestError(f"{query_modality}->{modality} search compares native CLIP vectors: mode must "
                                     f"be native, got {mode!r}")
        raise SearchRequestError(f"mode must be one of {', '.join(allowed)}, got {mode!r}")
    if hubness and query_modality != modality:
        raise SearchRequestError(f"hubness correction applies to {modality}->{modality} search, not "
                                 f"{query_modality}->{modality}")
    same = query_modality == modality
    hub = same and store.hub_correction(modality, mode, hubness) is not None
    excluded = same and (kind == "id" or bool(store.collection.retrieve([exclusion])))
    flt = query_filter
    if excluded and kind == "image":  # the decoded image's own id differs from its file's: leave the file's out
        flt = models.Filter(must=[query_filter] if query_filter is not None else None,
                            must_not=[models.HasIdCondition(has_id=[exclusion])])
    search = store.search_images if modality == "image" else store.search_texts
    hubness = hubness if same else None
    points = search(**{query_modality: value}, mode=mode, limit=limit, query_filter=flt, hubness=hubness,
                    exclude_query=kind != "image", strict=strict)
    if not points and flt is not None and query_filter is None:
        # the store explains an empty unfiltered result (e.g. a mode whose vectors were never computed); the
        # exclusion filter above hides that, so ask once more without it: the same error, or only the query
        search(**{query_modality: value}, mode=mode, limit=1, hubness=hubness, exclude_query=False)
    hits = [Hit(i + 1, str(p.id), float(p.score), dict(p.payload or {})) for i, p in enumerate(points)]
    return SearchResult(shown, kind, query_modality, gallery, mode, hub, score_kind(mode, hub), excluded, hits, item)


def _resolve(store, text, image, point_id) -> tuple[str, str, str, Any, Any, str]:
    """(query modality, kind, how it is shown, what the store searches by, the id the query has when stored,
    what the query is for people) of exactly one of the three query forms."""

    if sum(v is not None for v in (text, image, point_id)) != 1:
        raise SearchRequestError("give exactly one query: a text, an image or a point id")
    if point_id is not None:
        try:
            pid = normalize_point_id(point_id)
        except ValueError as exc:
            raise SearchRequestError(str(exc)) from None
        value = uuid.UUID(pid) if isinstance(pid, str) else pid  # an id object is never read as a text
        modality = store.modality_of(pid)
        records = store.collection.retrieve([pid], with_payload=True)
        item = Hit(0, str(pid), 0.0, dict(records[0].payload or {}) if records else {}).item
        return modality, "id", str(pid), value, pid, item
    if text is not None:
        if not isinstance(text, str) or not text.strip():
            raise SearchRequestError("the text query is empty: type something to search for")
        return "text", "text", text, text, text_id(text), ""
    return "image", "image", image.name, image.image, image.content_id, image.name


def _modality(gallery: str) -> str:
    if gallery not in GALLERIES:
        raise SearchRequestError(f"gallery must be images or texts, got {gallery!r}")
    return gallery[:-1]
