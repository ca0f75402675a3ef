"""Rival representations computed from stored native vectors: no image or text is read again.

IsoCLIP and the PCA projection are linear maps followed by normalisation, so they apply to a stored unit vector
exactly (for cosine search, the scale a stored vector lost does not matter):

- PCA: normalize(U U^T v) is defined on unit vectors already.
- IsoCLIP (image side): the image feature is y = x W_i for the pre-projection feature x [D_v] and the projector
  W_i [D_v, E]; IsoCLIP maps x to (x U_b U_b^T) W_i. The kept singular directions U_b of W_i W_t^T lie in the
  column space of W_i, so x U_b = y W_i^+ U_b and the whole map is one E x E matrix on y:
  P = W_i^+ U_b U_b^T W_i (:func:`isoclip_stored_matrix`, which checks the column-space condition). The text
  side is the same with W_t, when the text projector has no bias.

The modality-gap shift is not offered on stored vectors: it is affine (v - mean_a + mean_b), not linear in the
normalised vector, and it is a query-side map compared with the native gallery, so there is nothing to store.

Each transform becomes a derived named vector (in the collection, or an adopted collection's companion),
recorded in the metadata like one computed at ingestion, and searchable as a mode of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from qdrant_client import models
from tqdm.auto import tqdm

from crossgap_qdrant.rivals import IsoCLIPProjector, ModalityGapShift, PCAProjector
from crossgap_qdrant.rivals.isoclip import _text_projection, _vision_projection
from crossgap_qdrant.store.collection import Collection
from crossgap_qdrant.store.encoder import unit_vectors
from crossgap_qdrant.store.errors import NotFromStoredVectorsError
from crossgap_qdrant.store.ids import normalize_point_id
from crossgap_qdrant.store.schema import _derived_entry, check_layout

COLUMN_SPACE_TOLERANCE = 1e-4


def isoclip_stored_matrix(projector: Any, model: torch.nn.Module, modality: str) -> torch.Tensor:
    """P [E, E] with IsoCLIP(x) = (x W) P for every pre-projection feature x (see the module docstring).

    Raises:
        NotFromStoredVectorsError: a text projector with a bias, or kept directions outside W's column space.
    """
    if modality == "image":
        w, basis = _vision_projection(model).detach().double().cpu(), projector.image_basis.double()
    else:
        w, bias = _text_projection(model)
        if bias is not None:
            raise NotFromStoredVectorsError(
                "this model's text projector has a bias: a stored text vector has lost the scale needed to "
                "remove it, so IsoCLIP text vectors need the texts (ingest them with --isoclip)")
        w, basis = w.detach().double().cpu(), projector.text_basis.double()
    pinv = torch.linalg.pinv(w)
    residual = float((w @ (pinv @ basis) - basis).abs().max())
    if residual > COLUMN_SPACE_TOLERANCE:
        raise NotFromStoredVectorsError(
            f"the kept IsoCLIP directions leave the projector's column space (residual {residual:.2e}): the band "
            "is not a function of the stored vector for this model; compute IsoCLIP from the raw inputs")
    return (pinv @ basis @ basis.T @ w).float()


def stored_map(vector: Any, model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The map of a derived vector (``transform.vector(modality)``) on stored unit vectors [B, E] -> [B, E].

    Raises:
        NotFromStoredVectorsError: the gap shift, or another transform that needs raw inputs.
    """
    transform = getattr(vector, "transform", None)
    if isinstance(transform, PCAProjector):
        return transform.project
    if isinstance(transform, IsoCLIPProjector):
        matrix = isoclip_stored_matrix(transform, model, vector.modality)
        return lambda v: F.normalize(v.float() @ matrix, dim=-1)
    if isinstance(transform, ModalityGapShift):
        raise NotFromStoredVectorsError(
            "the gap shift is not offered on stored vectors: it is affine (v - mean + mean), not linear in the "
            "normalised vector, and it moves queries only (compared with the native gallery): nothing is stored "
            "per point. Search with it by raw queries after ingesting with it, or use isoclip or pca here")
    raise NotFromStoredVectorsError(f"{type(transform or vector).__name__} is computed from raw inputs only")


def fill_from_stored(collection: Collection, native: str, name: str, fn: Callable[[torch.Tensor], torch.Tensor],
                     dim: int, *, batch_size: int = 256, progress: bool = False) -> int:
    """Writes vector ``name`` = fn(native) for every point holding ``native`` but not ``name`` (update_vectors
    only; resumable like the backfill). Returns how many were written."""
    flt = models.Filter(must=[models.HasVectorCondition(has_vector=native)],
                        must_not=[models.HasVectorCondition(has_vector=name)])
    written = 0
    with tqdm(desc=f"{name} from stored {native!r}", unit="pt", disable=not progress) as bar:
        for page in collection.pages(flt, page_size=batch_size, with_vectors=[native]):
            if not page:
                continue
            ids = [normalize_point_id(r.id) for r in page]
            rows = unit_vectors(torch.tensor([r.vector[native] for r in page], dtype=torch.float32), dim,
                                f"stored {native!r} vectors", "")
            out = fn(rows).detach().to(torch.float32).cpu().numpy().tolist()
            collection.update_vectors([models.PointVectors(id=pid, vector={name: row}) for pid, row in zip(ids, out)])
            written += len(ids)
            bar.update(len(ids))
    return written


def add_stored_transform(store: Any, name: str, vector: Any, *, batch_size: int = 256,
                         progress: bool = False) -> int:
    """Adds derived vector ``name`` (``transform.vector(modality)``) to a store's collection, computed from the
    stored native vectors, and records it so searches use it as mode ``name``. Returns the points written.

    The store is reopened over the same collection with the vector added (the caller's store object is
    updated in place: its encoder knows the new mode).
    """
    fn = stored_map(vector, store.clip.model)  # refuses before anything is written
    store.derived[name] = vector
    store.encoder.derived[name] = vector
    check_layout(store.names, store.derived)
    store.collection.add_vectors({name: vector.dim})
    store._record(lambda record: {"derived": {**(record.get("derived") or {}), name: _derived_entry(vector)}})
    return fill_from_stored(store.collection, store.names.native(vector.modality), name, fn, vector.dim,
                            batch_size=batch_size, progress=progress)
