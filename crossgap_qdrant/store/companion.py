"""A collection with a single unnamed vector, seen as one collection with named vectors.

Qdrant cannot add a named vector beside a collection's single unnamed vector, so an adopted collection of that
kind keeps the vectors this package adds (inverted, derived) in a companion collection keyed by the same point
ids. :class:`CompanionCollection` composes the two behind the :class:`~crossgap_qdrant.store.collection.Collection`
interface, so the store and its search planner see one collection:

- the native vector (the user's unnamed vector, under the name the store uses) and every payload come from the
  user's points; the inverted and derived vectors, the metadata record and any statistics written as payload
  (hubness) come from the companion;
- writes go to the companion only: the user's points are never written;
- a query runs where its vector lives (a fusion over vectors on both sides runs each route where it lives and
  fuses the ranks here, as Qdrant's reciprocal rank fusion does); conditions on the other side's data are
  resolved to point ids first (a scan of the matching points: filtered searches on payload fields in an
  inverted mode read the matching ids before they search).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from qdrant_client import models
from qdrant_client.hybrid.fusion import reciprocal_rank_fusion

from crossgap_qdrant.store.client_engine import ClientCollection
from crossgap_qdrant.store.collection import Collection, CollectionSchema
from crossgap_qdrant.store.edge import EdgeCollection
from crossgap_qdrant.store.errors import AdoptedCollectionError, NoCompanionError
from crossgap_qdrant.store.ids import normalize_point_id

COMPANION_SUFFIX = "__crossgap"


def companion_name(name: str) -> str:
    """The name of the companion collection of collection ``name``."""
    return f"{name}{COMPANION_SUFFIX}"


def sibling(collection: Collection, name: str) -> Collection:
    """Collection ``name`` on the same engine, location and connection as ``collection`` (not created here)."""
    if isinstance(collection, EdgeCollection):
        return EdgeCollection(collection.folder, name, exact_search_below=collection.exact_search_below)
    if isinstance(collection, ClientCollection):
        return ClientCollection(collection.client, name, location=collection.location, retry=collection.retry,
                                server=collection.server, owns_client=False, folder=collection.folder)
    raise NoCompanionError(f"no companion collection for a {type(collection).__name__}")


class CompanionCollection(Collection):
    """The user's collection (one unnamed vector) and its companion, as one collection.

    Args:
        user: the user's collection (never written).
        companion: the companion collection (same engine and connection), holding the added vectors.
        native: the name the store uses for the user's unnamed vector ("image" or "text").
    """

    supports_formula = False  # hub values live in the companion's payload: re-scored on the client

    def __init__(self, user: Collection, companion: Collection, native: str):
        self.user, self.companion, self.native = user, companion, native
        self.engine, self.name, self.location = user.engine, user.name, user.location

    def __repr__(self) -> str:
        return f"CompanionCollection({self.user!r}, {self.companion!r})"

    @property
    def files_folder(self) -> str | None:
        return self.companion.files_folder

    # --------------------------------------------------------------------------------------------- schema
    def exists(self) -> bool:
        return self.user.exists() and self.companion.exists()

    def create(self, vectors, metadata, **options) -> None:
        raise AdoptedCollectionError(f"collection {self.name!r} belongs to its user: it is adopted, never "
                                     "created (crossgap-qdrant adopt)")

    def schema(self) -> CollectionSchema:
        user, own = self.user.schema(), self.companion.schema()
        vectors = {self.native: user.vectors[""], **own.vectors}
        return CollectionSchema(vectors=vectors, metadata=own.metadata, quantized=user.quantized or own.quantized)

    def add_vectors(self, vectors: Mapping[str, int]) -> None:
        if self.native in vectors:
            raise AdoptedCollectionError(f"vector {self.native!r} is the user's own vector of collection "
                                         f"{self.name!r}")
        self.companion.add_vectors(vectors)

    def set_metadata(self, metadata: Mapping[str, Any]) -> None:
        self.companion.set_metadata(metadata)

    # --------------------------------------------------------------------------------------------- writes
    def upsert(self, points: Sequence[models.PointStruct]) -> None:
        raise AdoptedCollectionError(f"collection {self.name!r} is adopted: its points are written by its own "
                                     "pipeline. Add points there, then run crossgap-qdrant backfill to give them "
                                     "their inverted vectors")

    def update_vectors(self, points: Sequence[models.PointVectors]) -> None:
        for p in points:
            if self.native in p.vector:
                raise AdoptedCollectionError(f"vector {self.native!r} of point {p.id} is the user's own: it is "
                                             "never written")
        ids = [p.id for p in points]
        present = {normalize_point_id(r.id) for r in self.companion.retrieve(ids)}
        self.companion.update_vectors([p for p in points if normalize_point_id(p.id) in present])
        self.companion.upsert([models.PointStruct(id=p.id, vector=dict(p.vector), payload={})
                               for p in points if normalize_point_id(p.id) not in present])

    def set_payload(self, ids: Sequence[Any], payload: Mapping[str, Any]) -> None:
        self.set_payloads([(i, payload) for i in ids])

    def set_payloads(self, items: Sequence[tuple[Any, Mapping[str, Any]]]) -> None:
        present = {normalize_point_id(r.id) for r in self.companion.retrieve([i for i, _ in items])}
        self.companion.set_payloads([(i, p) for i, p in items if normalize_point_id(i) in present])
        self.companion.upsert([models.PointStruct(id=i, vector={}, payload=dict(p))
                               for i, p in items if normalize_point_id(i) not in present])

    # ---------------------------------------------------------------------------------------------- reads
    def retrieve(self, ids: Sequence[Any], *, with_payload: bool | Sequence[str] = False,
                 with_vectors: bool | Sequence[str] = False) -> list[models.Record]:
        if not ids:
            return []
        records = self.user.retrieve(ids, with_payload=bool(with_payload),
                                     with_vectors=self._wants_native(with_vectors))
        return self._merged(records, with_payload, with_vectors)

    def scroll(self, *, scroll_filter: models.Filter | None = None, limit: int = 256, offset: Any = None,
               with_payload: bool | Sequence[str] = True,
               with_vectors: bool | Sequence[str] = False) -> tuple[list[models.Record], Any]:
        user_filter, own_must, own_must_not = self._split(scroll_filter, "user")
        out: list[models.Record] = []
        while len(out) < limit:
            records, offset = self.user.scroll(scroll_filter=user_filter, limit=limit - len(out), offset=offset,
                                               with_payload=bool(with_payload),
                                               with_vectors=self._wants_native(with_vectors))
            if own_must or own_must_not:
                keep = self._companion_matches([r.id for r in records], own_must, own_must_not)
                records = [r for r in records if normalize_point_id(r.id) in keep]
            out += records
            if offset is None:
                break
        return self._merged(out, with_payload, with_vectors), offset

    def count(self, count_filter: models.Filter | None = None) -> int:
        if count_filter is None:
            return self.user.count()
        user_filter, own_must, own_must_not = self._split(count_filter, "user")
        if not own_must and not own_must_not:
            return self.user.count(user_filter)
        if user_filter is None and not own_must_not:  # companion points are a subset of the user's
            return self.companion.count(models.Filter(must=own_must))
        return sum(len(page) for page in self.pages(count_filter, page_size=1024))

    def query(self, requests: Sequence[models.QueryRequest]) -> list[list[models.ScoredPoint]]:
        results = []
        for request in requests:
            if request.prefetch:
                if not isinstance(request.query, models.FusionQuery) or request.query.fusion != models.Fusion.RRF:
                    raise AdoptedCollectionError("an adopted collection with a companion fuses routes by RRF only")
                routes = [self._nearest(models.QueryRequest(query=p.query, using=p.using, filter=p.filter,
                                                            params=p.params, limit=p.limit), request.filter)
                          for p in request.prefetch]
                points = reciprocal_rank_fusion(routes, limit=request.limit or 10)
            else:
                points = self._nearest(request.model_copy(update={"with_payload": False, "with_vector": False}),
                                       None)
            results.append(self._scored(points, request.with_payload, request.with_vector))
        return results

    # --------------------------------------------------------------------------------------------- upkeep
    def optimize(self) -> None:
        self.companion.optimize()

    def drop(self) -> None:
        """Deletes the companion (the adoption: inverted and derived vectors, the record); the user's
        collection is left as it is."""
        try:
            self.companion.drop()
        finally:
            self.user.close()

    def close(self) -> None:
        try:
            self.companion.close()
        finally:
            self.user.close()

    # -------------------------------------------------------------------------------------------- helpers
    def _wants_native(self, with_vectors: Any) -> bool:
        if isinstance(with_vectors, bool) or with_vectors is None:
            return bool(with_vectors)
        return self.native in with_vectors

    def _own_names(self, with_vectors: Any) -> list[str] | bool:
        if isinstance(with_vectors, bool) or with_vectors is None:
            return bool(with_vectors)
        return [n for n in with_vectors if n != self.native]

    def _merged(self, records: list[models.Record], with_payload: Any, with_vectors: Any) -> list[models.Record]:
        """User records with the native vector renamed, the companion's vectors and payload added."""
        own_vectors = self._own_names(with_vectors)
        own: dict[Any, models.Record] = {}
        if records and (own_vectors or with_payload):
            own = {normalize_point_id(r.id): r for r in self.companion.retrieve(
                [r.id for r in records], with_payload=bool(with_payload), with_vectors=own_vectors)}
        out = []
        for r in records:
            extra = own.get(normalize_point_id(r.id))
            vector = None
            if with_vectors:
                vector = {}
                if self._wants_native(with_vectors) and r.vector is not None:
                    vector[self.native] = r.vector.get("") if isinstance(r.vector, dict) else r.vector
                vector.update((extra.vector or {}) if extra is not None and own_vectors else {})
            payload = None
            if with_payload:
                payload = _selected({**(r.payload or {}), **((extra.payload or {}) if extra else {})}, with_payload)
            out.append(models.Record(id=r.id, payload=payload, vector=vector))
        return out

    def _scored(self, points: list[models.ScoredPoint], with_payload: Any,
                with_vector: Any) -> list[models.ScoredPoint]:
        if not points or not (with_payload or with_vector):
            return [p.model_copy(update={"payload": None, "vector": None}) for p in points]
        records = {normalize_point_id(r.id): r for r in self.retrieve([p.id for p in points],
                                                                      with_payload=with_payload or False,
                                                                      with_vectors=with_vector or False)}
        out = []
        for p in points:
            r = records.get(normalize_point_id(p.id))
            out.append(p.model_copy(update={"payload": r.payload if r else None, "vector": r.vector if r else None}))
        return out

    def _nearest(self, request: models.QueryRequest, outer: models.Filter | None) -> list[models.ScoredPoint]:
        """One nearest-neighbour request on the side that holds its vector (``outer``: a filter on top)."""
        flt = request.filter
        if outer is not None:
            flt = outer if flt is None else models.Filter(must=[outer, flt])
        if request.using == self.native:
            side, target, using = "user", self.user, None if self.user.engine == "qdrant-client" else ""
        else:
            side, target, using = "companion", self.companion, request.using
        translated = self._filter_for(flt, side)
        plain = request.model_copy(update={"using": using, "filter": translated, "with_payload": False,
                                           "with_vector": False, "prefetch": None})
        return target.query([plain])[0]

    def _classify(self, condition: Any) -> str:
        """"native" (always true), "companion" (a companion vector), "both" (ids) or "user"."""
        if isinstance(condition, models.HasVectorCondition):
            return "native" if condition.has_vector == self.native else "companion"
        if isinstance(condition, models.HasIdCondition):
            return "both"
        if isinstance(condition, models.Filter):
            sides = {self._classify(c) for c in _conditions(condition)} - {"both", "native"}
            return sides.pop() if len(sides) == 1 else ("both" if not sides else "mixed")
        return "user"

    def _split(self, flt: models.Filter | None, side: str) -> tuple[models.Filter | None, list, list]:
        """(the part of ``flt`` that ``side`` evaluates, the companion conditions left (must, must_not))."""
        if flt is None:
            return None, [], []
        if (flt.should or flt.min_should) and any(self._classify(c) not in ("both", side)
                                                  for c in _as_list(flt.should)):
            raise AdoptedCollectionError("an adopted collection with a companion takes 'should' conditions on one "
                                         "side only")
        kept: dict[str, list] = {"must": [], "must_not": []}
        other: dict[str, list] = {"must": [], "must_not": []}
        for clause in ("must", "must_not"):
            for c in _as_list(getattr(flt, clause)):
                kind = self._classify(c)
                if kind == "mixed":
                    raise AdoptedCollectionError("a nested filter mixes the user's payload and the companion's "
                                                 "vectors")
                if kind == "native":
                    if clause == "must_not":
                        raise AdoptedCollectionError(f"every point of collection {self.name!r} has vector "
                                                     f"{self.native!r}")
                    continue
                (kept if kind in ("both", side) else other)[clause].append(c)
        if not kept["must"] and not kept["must_not"] and not flt.should:
            return None, other["must"], other["must_not"]
        return (models.Filter(must=kept["must"] or None, must_not=kept["must_not"] or None, should=flt.should,
                              min_should=flt.min_should), other["must"], other["must_not"])

    def _filter_for(self, flt: models.Filter | None, side: str) -> models.Filter | None:
        """``flt`` for one side, with the other side's conditions resolved to the ids that meet them."""
        own, must, must_not = self._split(flt, side)
        if not must and not must_not:
            return own
        source = self.user if side == "companion" else self.companion
        resolving = models.Filter(must=must or None, must_not=must_not or None)
        ids = [r.id for page in source.pages(resolving, page_size=1024) for r in page]
        has = models.HasIdCondition(has_id=ids)
        return models.Filter(must=[has] + ([own] if own is not None else []))

    def _companion_matches(self, ids: list[Any], must: list, must_not: list) -> set:
        """The ids among ``ids`` that meet the companion's vector conditions (absent points hold none)."""
        names = sorted({c.has_vector for c in must + must_not if isinstance(c, models.HasVectorCondition)})
        if len(names) != len(must) + len(must_not):
            raise AdoptedCollectionError("on an adopted collection with a companion, conditions on the companion "
                                         "are has_vector conditions only")
        held = {normalize_point_id(r.id): set((r.vector or {}).keys())
                for r in self.companion.retrieve(ids, with_vectors=names)} if ids else {}
        keep = set()
        for pid in map(normalize_point_id, ids):
            vectors = held.get(pid, set())
            if all(c.has_vector in vectors for c in must) and not any(c.has_vector in vectors for c in must_not):
                keep.add(pid)
        return keep


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _conditions(flt: models.Filter) -> list:
    return [c for clause in (flt.must, flt.should, flt.must_not) for c in _as_list(clause)]


def _selected(payload: dict, with_payload: Any) -> dict:
    if with_payload is True:
        return payload
    if isinstance(with_payload, models.PayloadSelectorExclude):
        return {k: v for k, v in payload.items() if k not in set(with_payload.exclude)}
    keys = set(with_payload.include if isinstance(with_payload, models.PayloadSelectorInclude) else with_payload)
    return {k: v for k, v in payload.items() if k in keys}
