"""Whether the stored vectors were made by a given model, shown from the vectors themselves.

A collection records its model's id in its metadata. Where that record is gone (an Edge collection whose
collection.json was deleted, as the CorruptMetadataError message allows, or a collection written elsewhere), the
stored points still say which model made them: re-encoding a few stored sources (the text of text points, the
file of image points) must give back their stored native vectors. A cosine below :data:`MIN_COSINE` means
another model, and mixing two models' vectors in one collection would make its searches silently wrong.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from qdrant_client import models

from crossgap_qdrant.store.collection import Collection
from crossgap_qdrant.store.errors import ModelMismatchError
from crossgap_qdrant.store.schema import VectorNames

logger = logging.getLogger(__name__)

MIN_COSINE = 0.99
"""Re-encoding a stored source with the collection's own model gives its stored vector back (cosine 1 up to float
rounding and image decoding); another model of the same width gives much less."""

SAMPLE = 8
"""Stored sources re-encoded per modality."""


def _sources(collection: Collection, names: VectorNames, modality: str, sample: int) -> list[tuple[Any, Any, list]]:
    """Up to ``sample`` (point id, source, stored native vector) of ``modality`` whose source can be read again."""
    native = names.native(modality)
    has = models.Filter(must=[models.HasVectorCondition(has_vector=native)])
    found = []
    for page in collection.pages(has, page_size=64, limit=64 * sample, with_payload=["text", "source"],
                                 with_vectors=[native]):
        for record in page:
            payload, vector = record.payload or {}, (record.vector or {}).get(native)
            if modality == "text":
                source = payload.get("text")
                usable = isinstance(source, str) and bool(source.strip())
            else:
                source = payload.get("source")
                usable = isinstance(source, str) and os.path.isfile(source)
            if usable and isinstance(vector, list):
                found.append((record.id, source, vector))
            if len(found) == sample:
                return found
    return found


def check_model_identity(collection: Collection, encoder: Any, names: VectorNames, where: str,
                         sample: int = SAMPLE) -> int:
    """Re-encodes up to ``sample`` stored sources per modality and compares them with their stored native vectors.

    Args:
        collection: a collection without a recorded model id.
        encoder: the store's encoder (the model to check).
        names: the collection's vector names.
        where: how messages name the collection.

    Returns:
        The number of sources compared (0: nothing could be checked; a warning is logged).

    Raises:
        ModelMismatchError: a stored vector and its source's re-encoding have a cosine below :data:`MIN_COSINE`.
    """
    compared = 0
    for modality in ("text", "image"):
        found = _sources(collection, names, modality, sample)
        if not found:
            continue
        if modality == "text":
            inputs = encoder.tokens([source for _, source, _ in found])
        else:
            kept = []
            for item in found:
                try:
                    kept.append((item, encoder.pixels(item[1], name=item[1])))
                except ValueError:  # unreadable now: it cannot testify
                    continue
            if not kept:
                continue
            found = [item for item, _ in kept]
            inputs = torch.stack([pixels for _, pixels in kept])
        fresh = encoder.native(modality, inputs)
        stored = torch.nn.functional.normalize(torch.tensor([v for _, _, v in found], dtype=torch.float32), dim=-1)
        cosines = (fresh.to(torch.float32).cpu() * stored).sum(-1)
        worst = int(cosines.argmin())
        if float(cosines[worst]) < MIN_COSINE:
            raise ModelMismatchError(
                f"{where} records no model, and its stored vectors were not made by this model: re-encoding the "
                f"stored {modality} of point {found[worst][0]} gives a cosine of {float(cosines[worst]):.3f} with its "
                f"stored vector (the same model gives >= {MIN_COSINE}). Open it with the model it was built with, "
                "or use another collection; mixing two models' vectors would make every search wrong.")
        compared += len(found)
    if compared == 0:
        logger.warning("%s records no model and holds no source that can be re-encoded (texts or image files): "
                       "cannot check that it was built with this model", where)
    return compared
