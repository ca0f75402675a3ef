"""What opening a store needs besides the store itself: the model handle and its checks, the collection a
client names, the derived vectors a collection records, and a collection's description."""

from __future__ import annotations

import os
from typing import Any, Callable

import torch
from qdrant_client import QdrantClient

from crossgap_qdrant.models import ClipModel, as_clip_model
from crossgap_qdrant.models.specs import DEMO_SPEC
from crossgap_qdrant.rivals import vector_from_record
from crossgap_qdrant.store.collection import Collection, CollectionSchema
from crossgap_qdrant.store.connection import RetryPolicy
from crossgap_qdrant.store.engines import open_collection
from crossgap_qdrant.store.errors import InvalidRequestError
from crossgap_qdrant.store.schema import METADATA_KEY, DerivedVector


def describe_collection(collection: Collection) -> dict[str, Any]:
    """:meth:`Collection.info` with the model the store recorded (name, id, width, vector names, derived
    vectors, default modes) in place of the raw metadata."""
    info = collection.info()
    recorded = info.pop("metadata").get(METADATA_KEY) or {}
    return {
        **{k: info[k] for k in ("collection", "engine", "location")},
        "model": recorded.get("model"),
        "model_id": recorded.get("model_id"),
        "embed_dim": recorded.get("embed_dim"),
        "vector_names": recorded.get("vector_names"),
        "derived_vectors": recorded.get("derived", {}),
        "default_modes": recorded.get("default_modes", {}),
        "hubness": recorded.get("hubness", {}),
        "warm_start": recorded.get("warm_start", {}),
        "adopted": recorded.get("adopted"),
        **{k: info[k] for k in ("points", "vectors", "quantization")},
    }



def recorded_derived(collection_name: str, schema: CollectionSchema | None, model: Any) -> dict[str, DerivedVector]:
    """The derived vectors a collection's schema records with their parameters (e.g. a rival representation
    applied by ``evaluate --apply``), rebuilt for ``model``; {} for a collection not created yet (None)."""
    if schema is None:
        return {}

    out = {}
    for name, entry in ((schema.metadata.get(METADATA_KEY) or {}).get("derived") or {}).items():
        if isinstance(entry, dict) and isinstance(entry.get("transform"), dict):
            try:
                out[name] = vector_from_record(model, entry["transform"])
            except (KeyError, TypeError, ValueError) as exc:
                raise InvalidRequestError(f"collection {collection_name!r} records derived vector {name!r}, which "
                                          "cannot be "
                                          f"rebuilt for this model: {exc}") from None
    return out


def model_handle(model: Any, tokenizer: Callable | None, preprocess: Callable | None) -> ClipModel:
    """The model handle, from a handle or a bare model with tokenizer= and preprocess=."""
    if tokenizer is None and preprocess is None:
        clip = as_clip_model(model)
        check_tokenizer(clip)
        return clip
    if tokenizer is None or preprocess is None:
        raise TypeError("a bare model needs both tokenizer= and preprocess= (or pass the handle from load_model)")
    clip = as_clip_model((model, preprocess, tokenizer))
    check_tokenizer(clip)
    return clip


def display_name(clip: ClipModel) -> str:
    """"ViT-B-32 (openai)" (architecture, tag or checkpoint file name; never a path), or "crossgap-demo"."""
    if clip.display_name == DEMO_SPEC:
        return DEMO_SPEC
    tag = clip.pretrained
    return f"{clip.name} ({os.path.basename(str(tag))})" if tag else f"{clip.name} (random weights)"


def check_tokenizer(clip) -> None:
    """Catches a tokenizer and a preprocess passed the wrong way round before anything is ingested."""
    try:
        ids = clip.tokenizer(["a photo"])
    except Exception as exc:
        raise TypeError(f"the tokenizer failed on ['a photo'] ({type(exc).__name__}: {exc}); were tokenizer and "
                        "preprocess swapped? load_model returns (model, preprocess, tokenizer)") from None
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.dim() != 2:
        raise TypeError("the tokenizer must map a list of strings to integer token ids [N, L]; were tokenizer and "
                        "preprocess swapped? load_model returns (model, preprocess, tokenizer)")


def as_collection(client: Any, name: str, retry: RetryPolicy | None) -> Collection:
    """The Collection a store was given: a Collection as it is, or a qdrant-client client's collection ``name``."""
    if isinstance(client, Collection):
        if name and name != client.name:
            raise InvalidRequestError(f"collection_name {name!r} differs from the collection given ({client.name!r})")
        return client
    if isinstance(client, QdrantClient) or hasattr(client, "query_batch_points"):
        return open_collection(None, name, client=client, retry=retry)
    raise TypeError(f"client must be a QdrantClient or a Collection, got {type(client).__name__}")
