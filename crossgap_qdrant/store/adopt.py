"""Adopting a collection another tool built: its CLIP vectors become the store's native vectors, in place.

Adopting never rewrites a user's point. A collection with named vectors gets the vectors this package adds as
new named vectors (``create_vector_name``; filled later by a backfill with ``update_vectors``). A collection
with a single unnamed vector cannot hold named vectors beside it: the added vectors live in a companion
collection keyed by the same point ids (crossgap_qdrant.store.companion), and every search is planned across
the two.

The model and the source vector are recorded under ``METADATA_KEY`` / ``"adopted"`` (in the collection's
metadata, or the companion's). When points carry an image file path or a text in their payload, a few of them
are encoded again and compared with the stored vectors: a cosine below :data:`MIN_COSINE` means another model
or another preprocessing, and adoption is refused. Without such payloads the user's word is taken, and the
record (and ``info``) says the vectors were not checked.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from crossgap_qdrant.models import as_clip_model
from crossgap_qdrant.models.towers import embed_dim
from crossgap_qdrant.store.collection import Collection, CollectionSchema
from crossgap_qdrant.store.companion import CompanionCollection, companion_name, sibling
from crossgap_qdrant.store.encoder import Encoder
from crossgap_qdrant.store.engines import open_collection
from crossgap_qdrant.store.errors import CollectionNotFoundError, InvalidRequestError, SchemaMismatchError
from crossgap_qdrant.store.opening import display_name
from crossgap_qdrant.store.schema import (
    METADATA_KEY,
    VectorNames,
    check_modality,
    metadata,
    vector_sizes,
)

logger = logging.getLogger(__name__)

ADOPTED_KEY = "adopted"
MIN_COSINE = 0.99
NOT_CHECKED = "not checked"
IMAGE_FIELDS = ("source", "image_path", "path", "file_path", "filepath", "filename", "file", "image")
TEXT_FIELDS = ("text", "document", "page_content", "caption", "content")


def adopted_names(native_vector: str, modality: str) -> VectorNames:
    """The store's vector names when the user's ``native_vector`` holds ``modality`` ("" = the unnamed vector,
    seen by the store as ``modality``)."""
    names = VectorNames()
    if native_vector == "":
        return names
    taken = {n for n in names.all() if n != names.native(modality)}
    if native_vector in taken:
        raise InvalidRequestError(f"the vector name {native_vector!r} is one the store uses for another vector; "
                                  "adopt a collection whose CLIP vector has another name")
    return VectorNames(**{**names.__dict__, modality: native_vector})


def adoption_layout(collection: Collection, schema: CollectionSchema | None,
                    vector_names: VectorNames) -> tuple[Collection, CollectionSchema | None, VectorNames]:
    """The collection a store works on, its schema and vector names, for a collection that may be adopted.

    A collection with a single unnamed vector whose companion exists is seen through
    :class:`~crossgap_qdrant.store.companion.CompanionCollection`; a collection that records vector names (an
    adopted one, or one built here with other names) keeps them unless the caller gave names of its own.
    """
    if schema is not None and schema.unnamed and not isinstance(collection, CompanionCollection):
        companion = sibling(collection, companion_name(collection.name))
        if companion.exists():
            record = companion.schema().metadata.get(METADATA_KEY) or {}
            native = (record.get(ADOPTED_KEY) or {}).get("modality", "image")
            collection = CompanionCollection(collection, companion, native)
            schema = collection.schema()
        else:
            companion.close()
    recorded = ((schema.metadata if schema is not None else {}).get(METADATA_KEY) or {}).get("vector_names")
    if vector_names == VectorNames() and isinstance(recorded, dict):
        vector_names = VectorNames(**recorded)
    return collection, schema, vector_names


def adopted_view(collection: Collection) -> Collection:
    """``collection`` as a store sees it (with its companion when it has one); the caller closes what it gets."""
    if not collection.exists():
        return collection
    return adoption_layout(collection, collection.schema(), VectorNames())[0]


def adopt(store_class: Any, location_or_client: Any, collection_name: str, clip: Any, *, native_vector: str,
          modality: str = "image", engine: str | None = None, check: int = 8, api_key: str | None = None,
          timeout: float | None = None, **store_kwargs: Any):
    """Adopts a collection built elsewhere; returns the store over it (see the module docstring).

    Args:
        store_class: :class:`~crossgap_qdrant.store.CrossModalStore` (or a subclass).
        location_or_client: a folder, ":memory:", a server URL, a QdrantClient or a Collection.
        collection_name: the user's collection.
        clip: the model handle that made the stored vectors.
        native_vector: the name of the stored CLIP vector ("" for a single unnamed vector).
        modality: what the stored vectors embed: "image" or "text".
        check: how many points with an image path or text in their payload are encoded again.
        store_kwargs: the store's keyword arguments (oti_config, ...).

    Raises:
        CollectionNotFoundError: no such collection.
        SchemaMismatchError: the vector is missing, has another width or distance, the collection records
            another model, or the stored vectors are not this model's (re-encoded cosine below 0.99).
    """
    check_modality(modality)
    if isinstance(location_or_client, Collection):
        collection = location_or_client
    elif isinstance(location_or_client, (str, os.PathLike)):
        collection = open_collection(location_or_client, collection_name, engine=engine, api_key=api_key,
                                     timeout=timeout, **_retry(store_kwargs))
    else:
        collection = open_collection(None, collection_name, client=location_or_client, **_retry(store_kwargs))
    try:
        if not collection.exists():
            raise CollectionNotFoundError(f"no collection {collection_name!r} at {collection.location} to adopt; "
                                          "check --collection and --location")
        clip_handle = _handle(clip)
        dim = embed_dim(clip_handle.model)
        schema = collection.schema()
        where = f"collection {collection.name!r} at {collection.location}"
        _check_vector(schema, native_vector, dim, where)
        names = adopted_names(native_vector, modality)
        model_id = store_kwargs.get("model_id") or clip_handle.model_id
        encoder = Encoder(clip_handle, dim, None, None, {})
        checked = sample_check(collection, encoder, native_vector, modality, check, where)
        record = metadata(model_id, display_name(clip_handle), dim, names, {})[METADATA_KEY]
        record[ADOPTED_KEY] = {"vector": native_vector, "modality": modality, "check": checked,
                               "companion": companion_name(collection.name) if native_vector == "" else None}
        target = _record_target(collection, schema, names, dim, record, where)
        store = store_class(target, collection.name, clip_handle, vector_names=names, create=False, **store_kwargs)
    except BaseException:
        collection.close()
        raise
    store._owns_collection = not isinstance(location_or_client, Collection)
    return store


def _retry(store_kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"retry": store_kwargs["retry"]} if "retry" in store_kwargs else {}


def _handle(clip: Any):
    return as_clip_model(clip)


def _check_vector(schema: CollectionSchema, native_vector: str, dim: int, where: str) -> None:
    if native_vector == "" and not schema.unnamed:
        raise SchemaMismatchError(f"{where} has named vectors ({', '.join(schema.vectors) or 'none'}), not an unnamed "
                                  "one: name the CLIP vector with --vector NAME")
    spec = schema.vectors.get(native_vector)
    if spec is None:
        raise SchemaMismatchError(f"{where} has no vector {native_vector!r}; its vectors: "
                                  f"{', '.join(repr(n) for n in schema.vectors) or 'none'} ('' is the unnamed one)")
    if spec.size != dim:
        raise SchemaMismatchError(f"{where}: vector {native_vector!r} has size {spec.size}, but the model gives {dim}: "
                                  "the vectors were made by another model; adopt with that model")
    if spec.distance.lower() != "cosine":
        raise SchemaMismatchError(f"{where}: vector {native_vector!r} uses {spec.distance} distance; adoption needs "
                                  "Cosine (CLIP vectors compared by angle)")


def _record_target(collection: Collection, schema: CollectionSchema, names: VectorNames, dim: int,
                   record: dict[str, Any], where: str) -> Collection:
    """Writes the record (the collection's metadata, or a new companion's) and returns what the store opens."""
    previous = schema.metadata.get(METADATA_KEY) or {}
    if not schema.unnamed:
        if previous.get("model_id") not in (None, record["model_id"]):
            raise SchemaMismatchError(f"{where} was adopted with model {previous.get('model')!r}; vectors of different "
                                      "models cannot be compared: adopt with that model")
        collection.set_metadata({**schema.metadata, METADATA_KEY: {**previous, **record}})
        return collection
    companion = sibling(collection, companion_name(collection.name))
    try:
        if companion.exists():
            previous = companion.schema().metadata.get(METADATA_KEY) or {}
            if previous.get("model_id") != record["model_id"]:
                raise SchemaMismatchError(f"{where} was adopted with model {previous.get('model')!r}; vectors of "
                                          "different models cannot be compared: adopt with that model")
            companion.set_metadata({**companion.schema().metadata, METADATA_KEY: {**previous, **record}})
        else:
            native = names.native(record[ADOPTED_KEY]["modality"])
            sizes = {n: s for n, s in vector_sizes(names, dim, {}).items() if n != native}
            companion.create(sizes, {METADATA_KEY: record})
    except BaseException:
        companion.close()
        raise
    return CompanionCollection(collection, companion, names.native(record[ADOPTED_KEY]["modality"]))


def sample_check(collection: Collection, encoder: Any, native_vector: str, modality: str, check: int,
                 where: str) -> dict[str, Any] | str:
    """Encodes up to ``check`` stored items again and compares them with their stored vectors.

    Returns:
        {"points": n, "field": payload key, "min_cosine": c}, or :data:`NOT_CHECKED` when no point among the
        first pages carries a readable image path (image) or a text (text) in its payload.

    Raises:
        SchemaMismatchError: a cosine below :data:`MIN_COSINE`.
    """
    if check <= 0:
        return NOT_CHECKED
    fields = IMAGE_FIELDS if modality == "image" else TEXT_FIELDS
    found: list[tuple[Any, str, str, list[float]]] = []
    for page in collection.pages(page_size=64, limit=256, with_payload=True, with_vectors=True):
        for r in page:
            field, value = payload_item(r.payload or {}, fields, modality)
            vector = r.vector.get(native_vector) if isinstance(r.vector, dict) else r.vector
            if field is not None and vector is not None:
                found.append((r.id, field, value, vector))
        if len(found) >= check:
            break
    found = found[:check]
    if not found:
        return NOT_CHECKED
    with torch.no_grad():
        if modality == "image":
            inputs = torch.stack([encoder.pixels(value, name=value) for _, _, value, _ in found])
        else:
            inputs = encoder.tokens([value for _, _, value, _ in found])
        fresh = encoder.native(modality, inputs)
    stored = torch.nn.functional.normalize(torch.tensor([v for *_, v in found], dtype=torch.float32), dim=-1)
    cosines = (fresh * stored).sum(-1)
    worst = int(cosines.argmin())
    if float(cosines[worst]) < MIN_COSINE:
        pid, field = found[worst][0], found[worst][1]
        raise SchemaMismatchError(
            f"{where}: the stored {native_vector or 'unnamed'!s} vector of point {pid} is not this model's encoding of "
            f"its payload {field!r} (cosine {float(cosines[worst]):.3f} < {MIN_COSINE}): the vectors were made by "
            "another model or with other preprocessing; adopt with the model that made them")
    return {"points": len(found), "field": found[0][1], "min_cosine": round(float(cosines.min()), 6)}


def payload_item(payload: dict, fields: tuple[str, ...], modality: str) -> tuple[str | None, str | None]:
    """(field, value) of the first of ``fields`` in ``payload`` holding a text (text) or an existing file path
    (image); (None, None) when none does."""
    for field in fields:
        value = payload.get(field)
        if not isinstance(value, str) or not value.strip():
            continue
        if modality == "text" or os.path.isfile(value):
            return field, value
    return None, None

