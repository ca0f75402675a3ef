"""Which representation a collection should serve: the rule, and recording its answer in a collection.

The rule (:func:`recommend`): among the methods whose paired 95% bootstrap CI of the per-query AP difference
vs native lies entirely above zero, the one with the highest mAP (ties: the cheaper query); if there is none,
native. The rows read are the exact torch backend's when it ran, else Qdrant's. With many methods, one CI in
twenty may exclude zero by chance: the rule protects against noise in one comparison, not against every one.

:func:`apply_recommendation` makes later searches of a collection use the answer: it records the mode (and
hubness correction) as the collection's default, after adding what the mode needs to the stored points (the
rival's derived vectors, computed from the points' recorded sources; the fitted hubness statistics).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from qdrant_client import models

from crossgap_qdrant.evaluate.results import RIVALS, EvaluationError, EvaluationResult, split_method
from crossgap_qdrant.rivals import DEFAULT_TEMPERATURE, DEFAULT_WEIGHT
from crossgap_qdrant.store import METADATA_KEY, CrossModalStore, mode_vectors

RULE = ("the highest-mAP method whose paired 95% CI of the difference vs native lies above zero; else native")


def store_mode(modality: str, method: str) -> str:
    """The store search mode of a method's base (rivals are derived vectors "<modality>_<method>")."""
    base, _ = split_method(method)
    return f"{modality}_{base}" if base in RIVALS else base


def recommend(result: EvaluationResult) -> dict[str, Any] | None:
    """Applies the rule to a result; None when native was not evaluated (nothing to compare with).

    Returns:
        {"method", "mode", "hubness", "backend", "mAP", "diff_vs_native" ([mean, low, high] or None), "rule",
        "reason"}.
    """
    rows = result.decision_rows()
    native = next((r for r in rows if r.method == "native"), None)
    if native is None:
        return None
    winners = [r for r in rows if r.diff_vs_native is not None and r.diff_vs_native[1] > 0]
    if winners:
        best = max(winners, key=lambda r: (r.summary["mAP"], -r.query_ms))
        reason = (f"{len(winners)} method(s) beat native with a paired 95% CI above zero; {best.method} has the "
                  "highest mAP among them")
    else:
        best = native
        reason = "no method's paired 95% CI of the difference vs native lies above zero: keep native"
    return {"method": best.method, "mode": store_mode(result.modality, best.method),
            "hubness": split_method(best.method)[1], "backend": best.backend, "mAP": best.summary["mAP"],
            "diff_vs_native": None if best.diff_vs_native is None else list(best.diff_vs_native), "rule": RULE,
            "reason": reason}


def apply_recommendation(result: EvaluationResult, clip: Any, location: str, collection_name: str, *,
                         method: str | None = None, progress: bool = False, **open_kwargs: Any) -> dict[str, Any]:
    """Makes a collection's searches use the recommended method (or ``method``) by default.

    A rival's transform (as fitted by the evaluation) is recorded in the collection and its vector computed
    for every stored point of the modality from the point's recorded source (image file, text); a "_hub"
    method has its hubness statistics fitted on the collection's own points. Then the mode is recorded as the
    collection's default (:meth:`~crossgap_qdrant.store.CrossModalStore.set_default_mode`).

    Args:
        result: what :func:`~crossgap_qdrant.evaluate.evaluate` returned (its fitted transforms included).
        clip: the model handle the evaluation used.
        location, collection_name: the collection (it must exist).
        method: apply this method instead of the recommended one.
        open_kwargs: passed to :meth:`CrossModalStore.open` (engine, api_key, timeout, retry, ...).

    Returns:
        {"collection", "location", "modality", "method", "mode", "hubness", "computed" (points given the
        rival's vector), "hubness_fit" (the fitted parameters, or None)}.

    Raises:
        ValueError: nothing to apply, an unknown or unfitted method, points whose sources cannot be read, or
            a collection without the vectors the mode searches.
    """
    chosen = method or (result.recommendation or {}).get("method")
    if chosen is None:
        raise EvaluationError("the evaluation made no recommendation (native was not evaluated): give a method")
    base, hub = split_method(chosen)
    modality, mode = result.modality, store_mode(result.modality, chosen)
    derived = {}
    if base in RIVALS:
        if base not in result.transforms:
            raise EvaluationError(f"{base} was not fitted by this evaluation; evaluate it first (--methods {base})")
        derived[mode] = result.transforms[base].vector(modality)
    with CrossModalStore.open(location, collection_name, clip, create=False, **open_kwargs) as store:
        recorded = store.collection.schema().metadata.get(METADATA_KEY) or {}
        previous = ((recorded.get("derived") or {}).get(mode) or {}).get("transform")
    with CrossModalStore.open(location, collection_name, clip, create=False, derived_vectors=derived,
                              **open_kwargs) as store:
        computed = 0
        if derived:
            stale = previous is not None and previous != derived[mode].record()
            computed = compute_derived(store, modality, mode, recompute=stale, progress=progress)
        _check_servable(store, modality, mode)
        fitted = None
        if hub:
            settings = result.representations.get("hubness") or {}
            fitted = store.fit_hubness(modality, mode, temperature=settings.get("temperature", DEFAULT_TEMPERATURE),
                                       weight=settings.get("weight", DEFAULT_WEIGHT))
        store.set_default_mode(modality, mode, hubness=hub)
        return {"collection": collection_name, "location": store.location, "modality": modality,
                "method": chosen, "mode": mode, "hubness": hub, "computed": computed, "hubness_fit": fitted}


def compute_derived(store: Any, modality: str, name: str, *, recompute: bool = False, progress: bool = False,
                    batch_size: int = 64) -> int:
    """Computes a derived vector for the stored points of ``modality`` that lack it (all with ``recompute``),
    from each point's recorded source (payload "source" for images, "text" for texts).

    Returns:
        The number of points written.

    Raises:
        ValueError: points whose source is missing or unreadable (nothing is written then).
    """
    native = store.names.native(modality)
    flt = models.Filter(must=[models.HasVectorCondition(has_vector=native)],
                        must_not=None if recompute else [models.HasVectorCondition(has_vector=name)])
    todo = [(r.id, (r.payload or {}).get("text" if modality == "text" else "source"))
            for page in store.collection.pages(flt, with_payload=["source", "text"]) for r in page]
    readable = (lambda s: isinstance(s, str) and bool(s.strip())) if modality == "text" else (
        lambda s: isinstance(s, str) and os.path.isfile(s))
    missing = [pid for pid, source in todo if not readable(source)]
    if missing:
        raise EvaluationError(f"{len(missing)} of the {len(todo)} {modality}s that need the {name!r} vector have no "
                              f"readable source recorded (e.g. point {missing[0]}); re-ingest them from their files, "
                              "or apply a method that needs no new vectors")
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        if modality == "image":
            inputs = torch.stack([store.encoder.pixels(source, name=source) for _, source in chunk])
        else:
            inputs = store.encoder.tokens([source for _, source in chunk])
        rows = store.encoder.derived_vectors(modality, inputs, only=[name])[name]
        store.collection.update_vectors([models.PointVectors(id=pid, vector={name: row.tolist()})
                                         for (pid, _), row in zip(chunk, rows)])
    return len(todo)


def _check_servable(store: Any, modality: str, mode: str) -> None:
    """Refuses a default mode whose gallery vectors some stored points lack (they would never be found)."""
    if mode == "fused":
        needed = {store.names.native(modality), store.names.inverted(modality)}
    else:
        needed = {mode_vectors(store.names, modality, mode, store.encoder.derived)[1]}
    has = lambda name: store.collection.count(  # noqa: E731
        models.Filter(must=[models.HasVectorCondition(has_vector=name)]))
    total = store.count(modality)
    for name in needed:
        if has(name) < total:
            fix = (f"run crossgap-qdrant invert --modality {modality}" if name == store.names.inverted(modality)
                   else "re-ingest")
            raise EvaluationError(f"{total - has(name)} of the {total} stored {modality}s lack the {name!r} vector "
                                  f"that mode {mode!r} searches: {fix} first")
