"""The modality-gap shift: a query moved across the gap by swapping the modality means.

Image and text features of CLIP models occupy two separated cones (Liang et al., NeurIPS 2022, "Mind the
Gap"). Subtracting the mean of one modality and adding the mean of the other (then renormalising) moves a
feature to the other side. Used as a cross-modal map it is a training-free stand-in for OTI/OVI, so it is
applied the way the inversion paper compares: to the query only, against the native gallery (image query ->
text side, compared with native images). Shifting both sides by the same vector would only re-centre the
space and cross nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossgap_qdrant.models import ClipModel, encode_images, encode_pixels, encode_texts, encode_token_ids
from crossgap_qdrant.rivals.base import FeatureTransform, RepresentationError, register_kind

# Generic captions used to fit the text mean when the user's data has no texts (image-only sets).
GENERIC_CAPTIONS = (
    "a photo of a dog.",
    "a photo of a cat.",
    "a close-up photo of a flower.",
    "a picture of a city street at night.",
    "a car parked on the road.",
    "a bird sitting on a branch.",
    "a plate of food on a table.",
    "a person riding a bicycle.",
    "an aerial view of farmland.",
    "a mountain landscape with snow.",
    "a boat on a calm lake.",
    "a building with many windows.",
    "a group of people at a party.",
    "a painting of a woman.",
    "a black and white photo of a bridge.",
    "a blurry photo of an animal.",
    "a toy on the floor.",
    "a satellite image of a forest.",
    "a sketch of a house.",
    "a bright red apple.",
    "an airplane in the sky.",
    "a cup of coffee.",
    "a train at the station.",
    "a beach with palm trees.",
)


@register_kind("gap_shift")
@dataclass(eq=False)
class ModalityGapShift(FeatureTransform):
    """Moves unit features across the modality gap by swapping the modality means.

    image -> text side: normalize(v - image_mean + text_mean); text -> image side: the reverse. As a derived
    vector it is a query-side map (``gallery = "native"``): the shifted query is compared with the native
    gallery vectors.

    Attributes:
        image_mean: [E] mean of unit image features of a sample.
        text_mean: [E] mean of unit text features of a sample.
    """

    image_mean: torch.Tensor
    text_mean: torch.Tensor

    gallery = "native"

    def __post_init__(self):
        if self.image_mean.ndim != 1 or self.image_mean.shape != self.text_mean.shape:
            raise RepresentationError(
                f"means must be two [E] vectors of one width, got {tuple(self.image_mean.shape)} and "
                f"{tuple(self.text_mean.shape)}"
            )

    @classmethod
    def fit(cls, image_features: torch.Tensor, text_features: torch.Tensor) -> "ModalityGapShift":
        """Fits the means on samples of features (normalised here).

        Args:
            image_features: [N, E] image features, N >= 1.
            text_features: [M, E] text features, M >= 1.
        """
        for name, x in (("image", image_features), ("text", text_features)):
            if x.ndim != 2 or x.shape[0] == 0:
                raise RepresentationError(f"{name} sample must be a non-empty [N, E] tensor, got shape "
                                          f"{tuple(x.shape)}")
        if image_features.shape[1] != text_features.shape[1]:
            raise RepresentationError(f"image width {image_features.shape[1]} != text width {text_features.shape[1]}")
        mean = lambda x: F.normalize(x.double(), dim=-1).mean(0).float().cpu()  # noqa: E731
        return cls(image_mean=mean(image_features), text_mean=mean(text_features))

    def to_record(self) -> dict[str, Any]:
        return {"image_mean": self.image_mean.tolist(), "text_mean": self.text_mean.tolist()}

    @classmethod
    def from_record(cls, model: nn.Module, record: dict[str, Any]) -> "ModalityGapShift":
        return cls(torch.tensor(record["image_mean"], dtype=torch.float32),
                   torch.tensor(record["text_mean"], dtype=torch.float32))

    def describe(self) -> dict[str, Any]:
        return {"gap_norm": float(self.gap.norm()), "applied_to": "the query only, compared with the native gallery"}

    @property
    def dim(self) -> int:
        return int(self.image_mean.shape[0])

    @property
    def gap(self) -> torch.Tensor:
        """[E] text_mean - image_mean."""
        return self.text_mean - self.image_mean

    def image_to_text(self, image_features: torch.Tensor) -> torch.Tensor:
        """[N, E] image features -> [N, E] unit features shifted to the text side."""
        return self._shift(image_features, self.gap)

    def text_to_image(self, text_features: torch.Tensor) -> torch.Tensor:
        """[N, E] text features -> [N, E] unit features shifted to the image side."""
        return self._shift(text_features, -self.gap)

    def _shift(self, features: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise RepresentationError(f"features must be [N, {self.dim}], got shape {tuple(features.shape)}")
        x = F.normalize(features.float(), dim=-1)
        return F.normalize(x + delta.to(x.device), dim=-1)

    @torch.no_grad()
    def encode_images(self, model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] pixels -> [B, E] unit image features shifted to the text side (float32, CPU)."""
        return self.image_to_text(encode_pixels(model, pixels))

    @torch.no_grad()
    def encode_texts(self, model: nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] token ids -> [B, E] unit text features shifted to the image side (float32, CPU)."""
        return self.text_to_image(encode_token_ids(model, token_ids))


def fit_gap_shift(
    model: nn.Module,
    tokenizer,
    preprocess,
    images: Sequence | None = None,
    texts: Sequence[str] | None = None,
    *,
    image_features: torch.Tensor | None = None,
    text_features: torch.Tensor | None = None,
) -> ModalityGapShift:
    """Fits a :class:`ModalityGapShift` from raw samples or features of each modality.

    Texts default to :data:`GENERIC_CAPTIONS` (image-only data has no texts). Images have no default.

    Args:
        images: PIL images or paths (or give ``image_features`` [N, E]).
        texts: strings (or give ``text_features`` [M, E]).
    """
    if image_features is None:
        if not images:
            raise RepresentationError("the modality-gap shift needs a sample of images (or image features) to fit")
        image_features = encode_images(ClipModel.from_parts(model, preprocess, tokenizer), images)
    if text_features is None:
        text_features = encode_texts(ClipModel.from_parts(model, preprocess, tokenizer),
                                     list(texts) if texts else list(GENERIC_CAPTIONS))
    return ModalityGapShift.fit(image_features, text_features)
