"""Fitting hubness statistics over a stored collection: one payload value per point and search mode.

For a same-modality search in one mode (see :func:`crossgap_qdrant.store.search.mode_vectors`), every point's
hub value (:func:`crossgap_qdrant.rivals.hub_values`: DBNorm's dual inverted softmax, with a bank of the
collection's own points in the query's representation and in the gallery's) is written to its payload under
:func:`~crossgap_qdrant.store.schema.hub_key`. The fit reads vectors only (no model). Points added later score
with the mean value until the next fit.
"""

from __future__ import annotations

from typing import Any

import torch
from qdrant_client import models

from crossgap_qdrant.rivals.hubness import DEFAULT_TEMPERATURE, DEFAULT_WEIGHT, bank_sample, hub_values
from crossgap_qdrant.store import ids as pid_lib
from crossgap_qdrant.store.collection import Collection
from crossgap_qdrant.store.errors import InvalidRequestError
from crossgap_qdrant.store.request import DEFAULT_MODE, HubCorrection
from crossgap_qdrant.store.schema import VectorNames, hub_key
from crossgap_qdrant.store.search import mode_vectors

PAGE = 1024


def _with(flt: models.Filter | None, *names: str) -> models.Filter:
    must: list[Any] = [models.HasVectorCondition(has_vector=n) for n in names]
    return models.Filter(must=must + ([flt] if flt is not None else []))


def fit_hubness(collection: Collection, names: VectorNames, derived: dict[str, Any], modality: str, mode: str, *,
                bank_size: int = 1000, temperature: float = DEFAULT_TEMPERATURE, weight: float = DEFAULT_WEIGHT,
                query_filter: models.Filter | None = None, seed: int = 0) -> dict[str, Any]:
    """Computes and stores the hub value of every point searched in ``mode`` (within ``query_filter``).

    Args:
        collection: the collection.
        names, derived: the store's vector names and derived vectors (which vectors the mode compares).
        modality: "image" or "text".
        mode: a same-modality mode other than "fused".
        bank_size: bank points (a seeded sample of the points that hold both vectors, when there are more).
        temperature, weight: see :mod:`crossgap_qdrant.rivals.hubness`.
        query_filter: restricts both the banks and the points written (e.g. a role or a tenant).
        seed: the bank sample's seed.

    Returns:
        The record kept in the collection metadata: key, temperature, weight, default (mean value), bank size,
        points written, and the two vectors compared.

    Raises:
        ValueError: a mode without one query and one gallery vector, or fewer than 2 points to fit on.
    """
    query_name, gallery_name = mode_vectors(names, modality, mode, derived)
    both = sorted({query_name, gallery_name})
    bank_ids = [r.id for page in collection.pages(_with(query_filter, *both), page_size=PAGE) for r in page]
    if len(bank_ids) < 2:
        raise InvalidRequestError(f"hubness statistics for {modality} mode {mode!r} need at least 2 points holding the "
                                  f"{' and '.join(repr(n) for n in both)} vectors; found {len(bank_ids)}")
    chosen = [bank_ids[i] for i in bank_sample(len(bank_ids), bank_size, seed).tolist()]
    records = {pid_lib.normalize_point_id(r.id): r for r in collection.retrieve(chosen, with_vectors=both)}
    bank = [records[pid_lib.normalize_point_id(i)].vector for i in chosen]
    query_bank = torch.tensor([v[query_name] for v in bank], dtype=torch.float32)
    gallery_bank = torch.tensor([v[gallery_name] for v in bank], dtype=torch.float32)
    row = {pid_lib.normalize_point_id(i): k for k, i in enumerate(chosen)}
    key, total, count = hub_key(modality, mode), 0.0, 0
    for page in collection.pages(_with(query_filter, gallery_name), page_size=PAGE,
                                 with_vectors=[gallery_name]):
        if not page:
            continue
        gallery = torch.tensor([r.vector[gallery_name] for r in page], dtype=torch.float32)
        own = torch.tensor([row.get(pid_lib.normalize_point_id(r.id), -1) for r in page], dtype=torch.long)
        values = hub_values(gallery, query_bank, None if query_name == gallery_name else gallery_bank,
                            self_index=own, temperature=temperature)
        collection.set_payloads([(r.id, {key: float(v)}) for r, v in zip(page, values.tolist())])
        total, count = total + float(values.sum()), count + len(page)
    return {"key": key, "temperature": temperature, "weight": weight, "default": total / max(count, 1),
            "bank_size": len(chosen), "points": count, "vectors": [query_name, gallery_name]}


def hub_correction(record: dict[str, Any], modality: str, mode: str, hubness: bool | None):
    """The :class:`~crossgap_qdrant.store.request.HubCorrection` a search applies, from the collection metadata.

    Args:
        record: the store's metadata record (``hubness``: fitted statistics per modality and mode;
            ``default_modes`` / ``default_hubness``: what the evaluation recommended).
        hubness: True (required: raises when nothing was fitted for the mode), False (never), None (when the
            recommendation recorded for the modality is this mode with hubness correction).

    Raises:
        ValueError: hubness=True for a mode without fitted statistics.
    """
    if hubness is False:
        return None
    fitted = ((record.get("hubness") or {}).get(modality) or {}).get(mode)
    if hubness is None:
        recommended = ((record.get("default_modes") or {}).get(modality) or DEFAULT_MODE) == mode
        if not (recommended and (record.get("default_hubness") or {}).get(modality) and fitted):
            return None
    elif not fitted:
        raise InvalidRequestError(f"no hubness statistics for {modality} searches in mode {mode!r}: fit them first "
                                  "with "
                                  f"store.fit_hubness({modality!r}, {mode!r}) (CLI: crossgap-qdrant evaluate ... "
                                  "--apply)")
    return HubCorrection(fitted["key"], float(fitted["weight"]), float(fitted["default"]))
