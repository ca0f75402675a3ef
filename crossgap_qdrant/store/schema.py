"""A collection's layout: its named vectors, the model recorded with it, and the check that they fit.

One collection holds, per item, named vectors: an image point has "image" (native, image space) and
"image_oti" (its OTI, text space); a text point has "text" (native, text space) and "text_ovi" (its OVI, image
space); derived vectors (IsoCLIP, gap shift, ...) sit beside them. The metadata records the model's content
fingerprint, so a collection is never mixed across models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Protocol, runtime_checkable

import torch

from crossgap_qdrant.store.collection import CollectionSchema
from crossgap_qdrant.store.errors import InvalidRequestError, SchemaMismatchError
from crossgap_qdrant.store.ids import CONTENT_KEY

METADATA_KEY = "crossgap"
METADATA_FORMAT = 2
MODALITIES = ("image", "text")


@dataclass(frozen=True)
class VectorNames:
    """Names of the four named vectors of a collection."""

    image: str = "image"  # native image embedding (image space)
    image_oti: str = "image_oti"  # OTI of the image (text space)
    text: str = "text"  # native text embedding (text space)
    text_ovi: str = "text_ovi"  # OVI of the text (image space)

    def all(self) -> tuple[str, str, str, str]:
        return (self.image, self.image_oti, self.text, self.text_ovi)

    def native(self, modality: str) -> str:
        return self.image if modality == "image" else self.text

    def inverted(self, modality: str) -> str:
        return self.image_oti if modality == "image" else self.text_ovi


@runtime_checkable
class DerivedVector(Protocol):
    """An extra named vector computed from raw inputs at ingestion (e.g. IsoCLIP, a modality-gap shift).

    Attributes:
        modality: "image" (computed from preprocessed pixels) or "text" (from token ids).
        dim: width of the vector it returns.
    """

    modality: str
    dim: int

    def compute(self, model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """Maps pixels [B, 3, H, W] float (image) or token ids [B, L] int64 (text) to [B, dim] float."""
        ...


def derived_gallery(vector: DerivedVector) -> str:
    """What a query in a derived representation is compared with: "self" (the gallery's derived vectors; the
    default) or "native" (the gallery's native vectors: a query-side map such as the gap shift). Optional
    attribute ``gallery`` of a derived vector."""
    side = getattr(vector, "gallery", "self")
    if side not in ("self", "native"):
        raise InvalidRequestError(f"a derived vector's gallery must be 'self' or 'native', got {side!r}")
    return side


def derived_record(vector: DerivedVector) -> dict[str, Any] | None:
    """The parameters that rebuild a derived vector (optional method ``record()``), kept in the metadata."""
    record = getattr(vector, "record", None)
    return record() if callable(record) else None


DERIVED_KEY_KINDS = ("hub",)
"""Kinds of payload values the store derives from stored vectors (hubness statistics, ...). Each is written under
a key made by :func:`derived_payload_key` ("<kind>_..."), and every key of that form is reserved: a caller's
payload cannot set one. A new kind of derived value is added here, and is reserved with it."""

ITEM_KEYS = ("modality", CONTENT_KEY)
"""Payload keys the store writes for every item (other keys, e.g. "source" or "text", only for items that have
one)."""


def derived_payload_key(kind: str, *parts: str) -> str:
    """The payload key of a value of ``kind`` (one of :data:`DERIVED_KEY_KINDS`) the store derives."""
    if kind not in DERIVED_KEY_KINDS:
        raise InvalidRequestError(f"unknown kind of derived payload value {kind!r}; add it to DERIVED_KEY_KINDS")
    return "_".join((kind,) + parts)


def hub_key(modality: str, mode: str) -> str:
    """The payload key holding a point's hubness statistic for searches of ``modality`` in ``mode``."""
    return derived_payload_key("hub", modality, mode)


def reserved_payload_keys(keys: Iterable[str], written: Iterable[str] = ()) -> list[str]:
    """The keys among ``keys`` a caller's payload may not set: those the store writes for every item, those it
    writes for this item (``written``), and every key of a derived kind ("hub_...")."""
    own = set(ITEM_KEYS) | set(written)
    return sorted(k for k in keys if k in own or any(str(k).startswith(f"{kind}_") for kind in DERIVED_KEY_KINDS))


def check_modality(modality: str) -> str:
    if modality not in MODALITIES:
        raise InvalidRequestError(f"modality must be 'image' or 'text', got {modality!r}")
    return modality


def check_layout(names: VectorNames, derived: Mapping[str, DerivedVector]) -> None:
    """Refuses vector names that clash and derived vectors that lack what the store needs."""
    all_names = list(names.all())
    if len(set(all_names)) != 4 or not all(isinstance(n, str) and n for n in all_names):
        raise InvalidRequestError(f"vector names must be four distinct non-empty strings, got {names}")
    for name, vector in derived.items():
        if name in all_names:
            raise InvalidRequestError(f"derived vector {name!r} clashes with a vector name of {names}")
        if not isinstance(vector, DerivedVector):
            raise TypeError(f"derived vector {name!r} lacks modality, dim or compute()")
        if vector.modality not in MODALITIES:
            raise InvalidRequestError(f"derived vector {name!r}: modality must be 'image' or 'text', got "
                                      f"{vector.modality!r}")
        if not isinstance(vector.dim, int) or vector.dim <= 0:
            raise InvalidRequestError(f"derived vector {name!r}: dim must be a positive int, got {vector.dim!r}")
        derived_gallery(vector)


def vector_sizes(names: VectorNames, dim: int, derived: Mapping[str, DerivedVector]) -> dict[str, int]:
    sizes = {name: dim for name in names.all()}
    sizes.update({name: d.dim for name, d in derived.items()})
    return sizes


def metadata(model_id: str, model_name: str, dim: int, names: VectorNames,
             derived: Mapping[str, DerivedVector], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The collection metadata recorded under :data:`METADATA_KEY`."""
    record = {
        "format": METADATA_FORMAT,
        "model_id": model_id,
        "model": model_name,
        "embed_dim": dim,
        "vector_names": asdict(names),
        "derived": {n: _derived_entry(d) for n, d in derived.items()},
    }
    record.update(extra or {})
    return {METADATA_KEY: record}


def _derived_entry(vector: DerivedVector) -> dict[str, Any]:
    entry = {"modality": vector.modality, "dim": vector.dim}
    if derived_gallery(vector) != "self":
        entry["gallery"] = derived_gallery(vector)
    record = derived_record(vector)
    if record is not None:
        entry["transform"] = record
    return entry


def check_schema(schema: CollectionSchema, sizes: Mapping[str, int], model_id: str, where: str) -> dict[str, int]:
    """Checks an existing collection against the store's layout.

    Returns:
        The named vectors the collection lacks ({name: size}), to be added (a backfill).

    Raises:
        SchemaMismatchError: another model's collection, an unnamed vector, a size or distance that differs.
    """
    recorded = schema.metadata.get(METADATA_KEY) or {}
    if recorded and recorded.get("model_id") != model_id:
        raise SchemaMismatchError(
            f"{where} was built with model {recorded.get('model') or '?'} (id {recorded.get('model_id')!r}), but "
            f"this store was given model id {model_id!r}: vectors of different models cannot be compared. "
            "Use another collection, or the model the collection was built with."
        )
    if schema.unnamed:
        raise SchemaMismatchError(
            f"{where} has a single unnamed vector; CrossModalStore needs named vectors "
            f"({', '.join(sizes)}). Adopt it first: crossgap-qdrant adopt --collection NAME --vector '' --model M "
            "(its added vectors then live in a companion collection)"
        )
    missing = {}
    for name, size in sizes.items():
        spec = schema.vectors.get(name)
        if spec is None:
            missing[name] = size
        elif spec.size != size:
            raise SchemaMismatchError(f"{where}: vector {name!r} has size {spec.size}, but the model gives {size}")
        elif spec.distance.lower() != "cosine":
            raise SchemaMismatchError(
                f"{where}: vector {name!r} uses {spec.distance} distance; CrossModalStore needs Cosine"
            )
    return missing
