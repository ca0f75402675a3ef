"""qdrant-client request types translated into qdrant-edge's own.

Users pass ``models.Filter`` objects written for qdrant-client, and the store builds ``models.QueryRequest``s;
the Edge engine (crossgap_qdrant.store.edge) runs them through these translations. Everything Edge supports
is translated one to one (Formula queries over their arithmetic: sums, products, negation, division, powers,
min/max and the unary functions); what it cannot run (point-id queries, ``lookup_from``, decay and geo or
condition terms in formulas, recommend, order-by queries, shard keys, ...) is refused with
:class:`UntranslatableError` naming the part, never dropped, because a dropped condition would silently
widen a result.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any, Sequence

import qdrant_edge as qe
from qdrant_client import models

from crossgap_qdrant.store.errors import UntranslatableError
from crossgap_qdrant.store.ids import normalize_point_id


def _refuse(what: str, fix: str = "") -> UntranslatableError:
    hint = f" {fix}" if fix else " Use a Qdrant server (or qdrant-client local mode, engine='local') for it."
    return UntranslatableError(f"the qdrant-edge engine cannot run {what}.{hint}")


def client_point_id(point_id: Any) -> int | str:
    """A point id as qdrant-client returns it (UUIDs as strings)."""
    return str(point_id) if isinstance(point_id, uuid.UUID) else point_id


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _datetime_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, datetime.date):
        return datetime.datetime.combine(value, datetime.time()).isoformat()
    raise _refuse(f"a datetime range bound of type {type(value).__name__}", "Give datetimes or ISO 8601 strings.")


def _match(match: Any, key: str) -> Any:
    if isinstance(match, models.MatchValue) and isinstance(match.value, bool):
        # qdrant-edge's binding reads True/False as the integers 1/0: the filter would match other points.
        raise _refuse(f"a match on the boolean value(s) of field {key!r} (it would match the integers 1/0)",
                      "Store the field as a keyword or an integer, or use a Qdrant server "
                      "(or engine='local') for it.")
    if isinstance(match, models.MatchValue):
        return qe.MatchValue(match.value)
    if isinstance(match, models.MatchAny):
        return qe.MatchAny(list(match.any))
    if isinstance(match, models.MatchExcept):
        return qe.MatchExcept(list(match.except_))
    if isinstance(match, models.MatchText):
        return qe.MatchText(match.text)
    if isinstance(match, models.MatchTextAny):
        return qe.MatchTextAny(match.text_any)
    if isinstance(match, models.MatchPhrase):
        return qe.MatchPhrase(match.phrase)
    if isinstance(match, models.MatchPrefix):
        return qe.MatchPrefix(match.prefix)
    if isinstance(match, models.MatchSubstring):
        return qe.MatchSubstring(match.substring)
    raise _refuse(f"the match {type(match).__name__} on field {key!r}")


def _range(rng: Any, key: str) -> Any:
    if isinstance(rng, models.Range):
        return qe.RangeFloat(gte=rng.gte, gt=rng.gt, lte=rng.lte, lt=rng.lt)
    if isinstance(rng, models.DatetimeRange):
        return qe.RangeDateTime(gte=_datetime_text(rng.gte), gt=_datetime_text(rng.gt),
                                lte=_datetime_text(rng.lte), lt=_datetime_text(rng.lt))
    raise _refuse(f"the range {type(rng).__name__} on field {key!r}")


def _geo_point(p: models.GeoPoint) -> qe.GeoPoint:
    return qe.GeoPoint(lon=p.lon, lat=p.lat)


def _field(cond: models.FieldCondition) -> qe.FieldCondition:
    kwargs: dict[str, Any] = {}
    if cond.match is not None:
        kwargs["match"] = _match(cond.match, cond.key)
    if cond.range is not None:
        kwargs["range"] = _range(cond.range, cond.key)
    if cond.geo_bounding_box is not None:
        box = cond.geo_bounding_box
        kwargs["geo_bounding_box"] = qe.GeoBoundingBox(_geo_point(box.top_left), _geo_point(box.bottom_right))
    if cond.geo_radius is not None:
        kwargs["geo_radius"] = qe.GeoRadius(_geo_point(cond.geo_radius.center), cond.geo_radius.radius)
    if cond.geo_polygon is not None:
        poly = cond.geo_polygon
        interiors = [[_geo_point(p) for p in ring.points] for ring in poly.interiors] if poly.interiors else None
        kwargs["geo_polygon"] = qe.GeoPolygon([_geo_point(p) for p in poly.exterior.points], interiors)
    if cond.values_count is not None:
        vc = cond.values_count
        kwargs["values_count"] = qe.ValuesCount(lt=vc.lt, gt=vc.gt, lte=vc.lte, gte=vc.gte)
    if cond.is_empty is not None:
        kwargs["is_empty"] = cond.is_empty
    if cond.is_null is not None:
        kwargs["is_null"] = cond.is_null
    if not kwargs:
        raise _refuse(f"the field condition on {cond.key!r} with no match, range, geo or count part",
                      "Give the condition a match or a range.")
    return qe.FieldCondition(cond.key, **kwargs)


def _condition(cond: Any) -> Any:
    if isinstance(cond, models.Filter):
        return edge_filter(cond)
    if isinstance(cond, models.FieldCondition):
        return _field(cond)
    if isinstance(cond, models.HasIdCondition):
        return qe.HasIdCondition({normalize_point_id(i) for i in cond.has_id})
    if isinstance(cond, models.HasVectorCondition):
        return qe.HasVectorCondition(cond.has_vector)
    if isinstance(cond, models.SliceCondition):
        return qe.SliceCondition(cond.slice.total, cond.slice.index)
    if isinstance(cond, models.IsEmptyCondition):
        return qe.IsEmptyCondition(cond.is_empty.key)
    if isinstance(cond, models.IsNullCondition):
        return qe.IsNullCondition(cond.is_null.key)
    if isinstance(cond, models.NestedCondition):
        return qe.NestedCondition(cond.nested.key, edge_filter(cond.nested.filter))
    raise _refuse(f"the filter condition {type(cond).__name__}")


def edge_filter(flt: models.Filter | None) -> qe.Filter | None:
    """Translates a qdrant-client filter (must/should/must_not/min_should, nested filters) for Edge.

    Raises:
        UntranslatableError: a condition Edge cannot evaluate (the message names it).
    """
    if flt is None:
        return None
    if isinstance(flt, qe.Filter):
        return flt
    if not isinstance(flt, models.Filter):
        raise TypeError(f"filters are qdrant_client.models.Filter objects, got {type(flt).__name__}")
    min_should = None
    if flt.min_should is not None:
        min_should = qe.MinShould([_condition(c) for c in flt.min_should.conditions], flt.min_should.min_count)
    parts = {name: [_condition(c) for c in _as_list(getattr(flt, name))] for name in ("must", "should", "must_not")}
    return qe.Filter(must=parts["must"] or None, should=parts["should"] or None,
                     must_not=parts["must_not"] or None, min_should=min_should)


def edge_params(params: models.SearchParams | None, *, exact: bool = False) -> qe.SearchParams | None:
    """Search params for Edge; ``exact`` forces a full scan (small collections)."""
    if params is None:
        return qe.SearchParams(exact=True) if exact else None
    if params.acorn is not None or params.idf is not None:
        raise _refuse("ACORN or IDF search params")
    quantization = None
    if params.quantization is not None:
        q = params.quantization
        quantization = qe.QuantizationSearchParams(ignore=bool(q.ignore), rescore=q.rescore,
                                                   oversampling=q.oversampling)
    return qe.SearchParams(hnsw_ef=params.hnsw_ef, exact=bool(params.exact) or exact, quantization=quantization,
                           indexed_only=bool(params.indexed_only))


def _dense(vector: Any, where: str) -> list[float]:
    if hasattr(vector, "tolist"):
        vector = vector.tolist()
    if not isinstance(vector, (list, tuple)) or not vector or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in vector):
        raise _refuse(f"the query {where} of type {type(vector).__name__} (only dense vectors of floats are run)",
                      "Read the point's vector (retrieve) and query by vector.")
    return [float(x) for x in vector]


def _fusion(query: Any) -> Any:
    if isinstance(query, models.FusionQuery):
        if query.fusion == models.Fusion.RRF:
            return qe.Fusion.Rrf(k=2)  # qdrant's default RRF constant
        if query.fusion == models.Fusion.DBSF:
            return qe.Fusion.Dbsf()
    if isinstance(query, models.RrfQuery):
        return qe.Fusion.Rrf(k=query.rrf.k if query.rrf.k is not None else 2, weights=query.rrf.weights)
    raise _refuse(f"the query {type(query).__name__}")


_NARY = {models.SumExpression: ("sum", "Sum"), models.MultExpression: ("mult", "Mult"),
         models.MaxExpression: ("max", "Max"), models.MinExpression: ("min", "Min")}
_UNARY = {models.NegExpression: ("neg", "Neg"), models.AbsExpression: ("abs", "Abs"),
          models.SqrtExpression: ("sqrt", "Sqrt"), models.ExpExpression: ("exp", "Exp"),
          models.LnExpression: ("ln", "Ln"), models.Log10Expression: ("log10", "Log10"),
          models.AcoshExpression: ("acosh", "Acosh")}


def edge_expression(expr: Any, where: str = "formula") -> Any:
    """A qdrant-client formula expression as Edge's ``Expression`` ($score, payload keys, numbers, arithmetic)."""
    e = qe.Expression
    if isinstance(expr, bool):
        raise _refuse(f"a boolean in a formula ({where})")
    if isinstance(expr, (int, float)):
        return e.Constant(float(expr))
    if isinstance(expr, str):
        return e.Variable(expr)
    if type(expr) in _NARY:
        field, name = _NARY[type(expr)]
        return getattr(e, name)([edge_expression(x, where) for x in getattr(expr, field)])
    if type(expr) in _UNARY:
        field, name = _UNARY[type(expr)]
        return getattr(e, name)(edge_expression(getattr(expr, field), where))
    if isinstance(expr, models.DivExpression):
        d = expr.div
        return e.Div(edge_expression(d.left, where), edge_expression(d.right, where), d.by_zero_default)
    if isinstance(expr, models.PowExpression):
        return e.Pow(edge_expression(expr.pow.base, where), edge_expression(expr.pow.exponent, where))
    raise _refuse(f"the formula term {type(expr).__name__} ({where})")


def _scoring(query: Any, using: str | None, where: str) -> Any:
    """The scoring part of a request or prefetch: a dense nearest query, a fusion or a formula."""
    if query is None:
        return None
    if isinstance(query, models.FormulaQuery):
        return qe.Formula(edge_expression(query.formula, where), dict(query.defaults or {}) or None)
    if isinstance(query, models.NearestQuery):
        if query.mmr is not None:
            raise _refuse(f"an MMR query ({where})")
        query = query.nearest
    if isinstance(query, (models.FusionQuery, models.RrfQuery)):
        return _fusion(query)
    if isinstance(query, (int, str, uuid.UUID)) and not isinstance(query, bool):
        raise _refuse(f"a query by point id ({where})", "Read the point's vector (retrieve) and query by vector.")
    if isinstance(query, (models.SparseVector, dict)) or type(query).__name__.endswith("Query"):
        raise _refuse(f"the query {type(query).__name__} ({where})")
    return qe.Query.Nearest(_dense(query, where), using=using)


def _check_common(req: Any, where: str) -> None:
    if getattr(req, "lookup_from", None) is not None:
        raise _refuse(f"lookup_from ({where})", "Read the point's vector (retrieve) and query by vector.")


def edge_prefetch(prefetch: models.Prefetch, *, exact: bool = False, where: str = "prefetch") -> qe.Prefetch:
    _check_common(prefetch, where)
    nested = [edge_prefetch(p, exact=exact, where=f"{where}.prefetch[{i}]")
              for i, p in enumerate(_as_list(prefetch.prefetch))]
    return qe.Prefetch(limit=prefetch.limit if prefetch.limit is not None else 10,
                       query=_scoring(prefetch.query, prefetch.using, where), prefetches=nested or None,
                       params=edge_params(prefetch.params, exact=exact), filter=edge_filter(prefetch.filter),
                       score_threshold=prefetch.score_threshold)


def _with_payload(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, models.PayloadSelectorInclude):
        return qe.PayloadSelector.Include(list(value.include))
    if isinstance(value, models.PayloadSelectorExclude):
        return qe.PayloadSelector.Exclude(list(value.exclude))
    if isinstance(value, Sequence) and not isinstance(value, str):
        return list(value)
    raise _refuse(f"with_payload={value!r}")


def edge_with_payload(value: Any) -> Any:
    """with_payload as Edge takes it (bool, list of keys, or a selector)."""
    return _with_payload(value)


def edge_with_vector(value: Any) -> Any:
    """with_vector(s) as Edge takes it (bool or list of names)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, Sequence) and not isinstance(value, str):
        return list(value)
    raise _refuse(f"with_vectors={value!r}")


def edge_query(request: models.QueryRequest, *, exact: bool = False, where: str = "query") -> qe.QueryRequest:
    """Translates one query request (nearest on a named vector, or prefetches + RRF/DBSF fusion).

    Args:
        exact: force a full scan in every stage (the collection is small or has no HNSW index yet).

    Raises:
        UntranslatableError: point-id queries, lookup_from, shard keys, or query kinds Edge cannot run.
    """
    _check_common(request, where)
    if getattr(request, "shard_key", None) is not None:
        raise _refuse(f"a shard key ({where})", "Edge collections have one shard; leave shard_key unset.")
    prefetches = [edge_prefetch(p, exact=exact, where=f"{where}.prefetch[{i}]")
                  for i, p in enumerate(_as_list(request.prefetch))]
    scoring = _scoring(request.query, request.using, where)
    if scoring is None and not prefetches:
        raise _refuse(f"a request with neither query nor prefetch ({where})", "Give a query vector.")
    return qe.QueryRequest(
        limit=request.limit if request.limit is not None else 10,
        offset=request.offset,
        query=scoring,
        prefetches=prefetches or None,
        with_vector=edge_with_vector(request.with_vector),
        with_payload=_with_payload(request.with_payload),
        filter=edge_filter(request.filter),
        score_threshold=request.score_threshold,
        params=edge_params(request.params, exact=exact),
    )
