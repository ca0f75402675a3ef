"""One base for every training-free rival representation, and its form as a store ``DerivedVector``.

A :class:`FeatureTransform` maps raw inputs of either modality to unit features; ``transform.vector(modality)``
gives the :class:`TransformVector` the store writes as a named vector (``modality``, ``dim``, ``compute``,
``gallery``, ``record``). A transform's :meth:`~FeatureTransform.to_record` is a small JSON-able dict that the
store keeps in the collection metadata, so that a later process rebuilds the same transform from the model
(:func:`transform_from_record`) without the data it was fitted on.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
import torch.nn as nn

from crossgap_qdrant.errors import CrossgapError

Modality = Literal["image", "text"]
GallerySide = Literal["self", "native"]

_KINDS: dict[str, Callable[[nn.Module, dict[str, Any]], "FeatureTransform"]] = {}


def register_kind(kind: str):
    """Class decorator: ``cls.from_record(model, record)`` rebuilds transforms whose record has this ``kind``."""

    def wrap(cls):
        cls.kind = kind
        _KINDS[kind] = cls.from_record
        return cls

    return wrap


class RepresentationError(CrossgapError, ValueError):
    """A rival representation cannot be fitted, applied or rebuilt from its record (the message names why)."""


class FeatureTransform(abc.ABC):
    """A training-free map from raw inputs of either modality to unit features of width :attr:`dim`.

    Attributes:
        kind: the name its records carry ("isoclip", "pca", "gap_shift").
        gallery: what a query in this representation is compared with: "self" (the same transform of the
            gallery items; IsoCLIP, PCA) or "native" (the native gallery vectors: a query-side cross-modal
            map, the gap shift).
    """

    kind: str = ""
    gallery: GallerySide = "self"

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Width of the features."""

    @abc.abstractmethod
    def encode_images(self, model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] preprocessed pixels -> [B, dim] unit features (float32, CPU)."""

    @abc.abstractmethod
    def encode_texts(self, model: nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] token ids -> [B, dim] unit features (float32, CPU)."""

    @abc.abstractmethod
    def to_record(self) -> dict[str, Any]:
        """The parameters that rebuild this transform with :meth:`from_record` (JSON-able, without ``kind``)."""

    @classmethod
    @abc.abstractmethod
    def from_record(cls, model: nn.Module, record: dict[str, Any]) -> "FeatureTransform":
        """Rebuilds the transform for ``model`` from :meth:`to_record`'s output."""

    def describe(self) -> dict[str, Any]:
        """What the report shows about the fitted transform (by default the record)."""
        return self.to_record()

    def vector(self, modality: Modality) -> "TransformVector":
        """This transform as a store ``DerivedVector`` for one modality."""
        return TransformVector(self, modality)


@dataclass(frozen=True, eq=False)
class TransformVector:
    """``DerivedVector``: a :class:`FeatureTransform` applied to the raw inputs of one modality.

    Attributes:
        transform: the transform (an IsoCLIP band, a PCA projection, a modality-gap shift, ...).
        modality: "image" (inputs are pixels) or "text" (inputs are token ids).
    """

    transform: FeatureTransform
    modality: Modality

    def __post_init__(self):
        if self.modality not in ("image", "text"):
            raise RepresentationError(f"modality must be 'image' or 'text', got {self.modality!r}")

    @property
    def dim(self) -> int:
        return self.transform.dim

    @property
    def gallery(self) -> GallerySide:
        """"self" or "native": the gallery vector a query of this representation is compared with."""
        return self.transform.gallery

    def compute(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] pixels or [B, L] token ids -> [B, dim] unit features (float32, CPU)."""
        if self.modality == "image":
            return self.transform.encode_images(model, inputs)
        return self.transform.encode_texts(model, inputs)

    def record(self) -> dict[str, Any]:
        """{"kind", "modality", **parameters}: what the collection metadata keeps (:func:`vector_from_record`)."""
        return {"kind": self.transform.kind, "modality": self.modality, **self.transform.to_record()}


def transform_from_record(model: nn.Module, record: dict[str, Any]) -> FeatureTransform:
    """The transform a record describes, rebuilt for ``model``.

    Raises:
        ValueError: a record of an unknown kind, or one that does not fit the model.
    """
    # a real cycle: the kinds' modules import this one to register themselves
    from crossgap_qdrant import rivals  # noqa: F401, PLC0415  (registers every kind)

    kind = record.get("kind") if isinstance(record, dict) else None
    if kind not in _KINDS:
        raise RepresentationError(f"unknown derived-vector kind {kind!r} in the collection metadata (known: "
                                  f"{', '.join(sorted(_KINDS))}); was it written by a newer crossgap-qdrant?")
    return _KINDS[kind](model, record)


def vector_from_record(model: nn.Module, record: dict[str, Any]) -> TransformVector:
    """The store vector a :meth:`TransformVector.record` describes, rebuilt for ``model``."""
    return transform_from_record(model, record).vector(record.get("modality"))
