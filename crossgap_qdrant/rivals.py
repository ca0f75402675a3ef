"""Training-free rivals of modality inversion: the IsoCLIP projector band and the modality-gap mean shift.

Both are zero-cost at query time and are offered as extra named vectors at ingestion. Each is a
:class:`FeatureTransform` (raw inputs of either modality -> unit features); ``transform.vector(modality)``
gives the :class:`TransformVector` that implements the store's ``DerivedVector`` protocol (``modality``,
``dim``, ``compute(model, inputs)``), where inputs are preprocessed pixels [B, 3, H, W] for images and token
ids [B, L] for texts.

IsoCLIP (Magistri et al., arXiv 2603.19862). With the image projector W_i [D_v, E] and the text projector
W_t [D_t, E] (pre-projection widths D_v, D_t; shared width E), cosine similarity between an image and a text
is driven by the inter-modal operator M = W_i W_t^T [D_v, D_t]. Its SVD M = U S V^T orders directions from
most to least amplified. Keeping the middle band (dropping the first ``k_top`` and last ``k_bottom`` of the
r = min(D_v, D_t, E) structural singular directions) and projecting the pre-projection features onto it
before the projector gives the IsoCLIP features: image x -> (x U_b U_b^T) W_i, text y -> (y V_b V_b^T) W_t.
With no cut the image-text dot products are exactly the native ones (x U S V^T y^T = x M y^T), and when the
projectors have full column rank the features themselves are unchanged.

Modality-gap shift: image and text features of CLIP models occupy two separated cones. Subtracting the mean
of one modality and adding the mean of the other (then renormalising) moves features across the gap.
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossgap_qdrant.models import model_device, text_tower

Modality = Literal["image", "text"]

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


# ----------------------------------------------------------------------------- pre-projection features
def _vision_projection(model: nn.Module) -> torch.Tensor:
    visual = getattr(model, "visual", None)
    proj = getattr(visual, "proj", None)
    if not isinstance(proj, torch.Tensor):
        raise ValueError(
            f"{type(model).__name__}'s image tower has no projection matrix (model.visual.proj): the IsoCLIP "
            "projector needs an open_clip VisionTransformer with a linear projector"
        )
    return proj


def _text_projection(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Text projector as ([D_t, E] matrix, [E] bias or None)."""
    proj = text_tower(model).text_projection
    if isinstance(proj, nn.Linear):
        return proj.weight.t(), proj.bias
    if isinstance(proj, torch.Tensor):
        return proj, None
    raise ValueError(
        f"{type(model).__name__}'s text tower has no linear projector (text_projection): the IsoCLIP "
        "projector needs one"
    )


@contextlib.contextmanager
def _without_attribute(module: nn.Module, name: str):
    """Within the block, ``module.<name>`` is None (the tower then returns its pooled features)."""
    saved = getattr(module, name)
    setattr(module, name, None)
    try:
        yield
    finally:
        setattr(module, name, saved)


@torch.no_grad()
def image_pre_projection(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Pooled image features before the projector, by running the tower with its projector removed.

    The model is briefly modified in place (restored on exit); do not run it concurrently.

    Args:
        pixels: [B, 3, H, W] preprocessed images.

    Returns:
        [B, D_v] float32.
    """
    _vision_projection(model)
    visual = model.visual
    with _without_attribute(visual, "proj"):
        out = visual(pixels.to(model_device(model)))
    if isinstance(out, tuple):
        out = out[0]
    return out.float()


@torch.no_grad()
def text_pre_projection(model: nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
    """Pooled text features before the projector (same mechanism as :func:`image_pre_projection`).

    Args:
        token_ids: [B, L] int64.

    Returns:
        [B, D_t] float32.
    """
    _text_projection(model)
    tower = text_tower(model)
    with _without_attribute(tower.module, "text_projection"):
        out = tower.encode(token_ids.to(model_device(model)))
    if isinstance(out, tuple):
        out = out[0]
    return out.float()


# ---------------------------------------------------------------------------------- derived vectors
class FeatureTransform(abc.ABC):
    """A training-free map from raw inputs of either modality to unit features of width :attr:`dim`."""

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

    def vector(self, modality: Modality) -> "TransformVector":
        """This transform as a store ``DerivedVector`` for one modality."""
        return TransformVector(self, modality)


@dataclass(frozen=True, eq=False)
class TransformVector:
    """``DerivedVector``: a :class:`FeatureTransform` applied to the raw inputs of one modality.

    Attributes:
        transform: the transform (an :class:`IsoCLIPProjector`, a :class:`ModalityGapShift`, ...).
        modality: "image" (inputs are pixels) or "text" (inputs are token ids).
    """

    transform: FeatureTransform
    modality: Modality

    def __post_init__(self):
        if self.modality not in ("image", "text"):
            raise ValueError(f"modality must be 'image' or 'text', got {self.modality!r}")

    @property
    def dim(self) -> int:
        return self.transform.dim

    def compute(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] pixels or [B, L] token ids -> [B, dim] unit features (float32, CPU)."""
        if self.modality == "image":
            return self.transform.encode_images(model, inputs)
        return self.transform.encode_texts(model, inputs)


# ------------------------------------------------------------------------------------------- IsoCLIP
def isoclip_rank(model: nn.Module) -> int:
    """r = min(D_v, D_t, E): the number of structural singular directions of W_i W_t^T (no SVD needed)."""
    w_i = _vision_projection(model)
    w_t, _ = _text_projection(model)
    return int(min(w_i.shape[0], w_t.shape[0], w_i.shape[1]))


def isoclip_cuts(model: nn.Module, k_top: int | None = None, k_bottom: int | None = None) -> tuple[int, int]:
    """IsoCLIP cuts with defaults: None takes r // 16 (top) and r // 4 (bottom) of the r directions.

    The defaults are a starting point for models without published cuts, not the paper's tuned values
    (those are listed in the SPEC: e.g. 150 / 50 of 512 for OpenAI CLIP ViT-B/32).
    """
    rank = isoclip_rank(model)
    return (rank // 16 if k_top is None else k_top), (rank // 4 if k_bottom is None else k_bottom)


@dataclass
class IsoCLIPProjector(FeatureTransform):
    """The middle band of the inter-modal operator's singular directions, applied before the projectors.

    Build it with :meth:`from_model`.

    Attributes:
        image_basis: [D_v, K] orthonormal columns (U_b), K = r - k_top - k_bottom.
        text_basis: [D_t, K] orthonormal columns (V_b).
        singular_values: [r] all structural singular values of W_i W_t^T, descending.
        k_top, k_bottom: the cuts.
        embed_dim: E, the width of the shared embedding space.
    """

    image_basis: torch.Tensor
    text_basis: torch.Tensor
    singular_values: torch.Tensor
    k_top: int
    k_bottom: int
    embed_dim: int

    @classmethod
    @torch.no_grad()
    def from_model(cls, model: nn.Module, k_top: int = 0, k_bottom: int = 0) -> "IsoCLIPProjector":
        """SVD of the model's W_i W_t^T, keeping directions k_top .. r - k_bottom - 1.

        Args:
            model: an open_clip CLIP or CustomTextCLIP with a ViT image tower and a linear text projector.
            k_top: number of leading (most amplified) singular directions to drop.
            k_bottom: number of trailing directions to drop.

        Raises:
            ValueError: negative cuts, or cuts that leave no direction.
        """
        if k_top < 0 or k_bottom < 0:
            raise ValueError(f"k_top and k_bottom must be >= 0, got {k_top}, {k_bottom}")
        w_i = _vision_projection(model).detach().double().cpu()
        w_t, _ = _text_projection(model)
        w_t = w_t.detach().double().cpu()
        if w_i.shape[1] != w_t.shape[1]:
            raise ValueError(f"projector output widths differ: image {w_i.shape[1]}, text {w_t.shape[1]}")
        rank = min(w_i.shape[0], w_t.shape[0], w_i.shape[1])
        if k_top + k_bottom >= rank:
            raise ValueError(
                f"k_top + k_bottom = {k_top + k_bottom} leaves no direction: the operator has {rank} singular directions"
            )
        u, s, vh = torch.linalg.svd(w_i @ w_t.T, full_matrices=False)
        band = slice(k_top, rank - k_bottom)
        return cls(
            image_basis=u[:, band].float().contiguous(),
            text_basis=vh.T[:, band].float().contiguous(),
            singular_values=s[:rank].float(),
            k_top=k_top,
            k_bottom=k_bottom,
            embed_dim=int(w_i.shape[1]),
        )

    @property
    def rank(self) -> int:
        return int(self.singular_values.shape[0])

    @torch.no_grad()
    def project_image(self, model: nn.Module, pre_projection: torch.Tensor) -> torch.Tensor:
        """[B, D_v] pre-projection image features -> [B, E] unnormalised IsoCLIP features."""
        w_i = _vision_projection(model).float()
        basis = self.image_basis.to(pre_projection.device)
        return ((pre_projection.float() @ basis) @ basis.T) @ w_i.to(pre_projection.device)

    @torch.no_grad()
    def project_text(self, model: nn.Module, pre_projection: torch.Tensor) -> torch.Tensor:
        """[B, D_t] pre-projection text features -> [B, E] unnormalised IsoCLIP features."""
        w_t, bias = _text_projection(model)
        basis = self.text_basis.to(pre_projection.device)
        out = ((pre_projection.float() @ basis) @ basis.T) @ w_t.float().to(pre_projection.device)
        return out if bias is None else out + bias.float().to(out.device)

    @torch.no_grad()
    def encode_images(self, model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] pixels -> [B, E] unit IsoCLIP image features (float32, CPU)."""
        return F.normalize(self.project_image(model, image_pre_projection(model, pixels)), dim=-1).cpu()

    @torch.no_grad()
    def encode_texts(self, model: nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] token ids -> [B, E] unit IsoCLIP text features (float32, CPU)."""
        return F.normalize(self.project_text(model, text_pre_projection(model, token_ids)), dim=-1).cpu()

    @property
    def dim(self) -> int:
        return self.embed_dim


# -------------------------------------------------------------------------------- modality-gap shift
@dataclass
class ModalityGapShift(FeatureTransform):
    """Moves unit features across the modality gap by swapping the modality means.

    image -> text side: normalize(v - image_mean + text_mean); text -> image side: the reverse.

    Attributes:
        image_mean: [E] mean of unit image features of a sample.
        text_mean: [E] mean of unit text features of a sample.
    """

    image_mean: torch.Tensor
    text_mean: torch.Tensor

    def __post_init__(self):
        if self.image_mean.ndim != 1 or self.image_mean.shape != self.text_mean.shape:
            raise ValueError(
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
                raise ValueError(f"{name} sample must be a non-empty [N, E] tensor, got shape {tuple(x.shape)}")
        if image_features.shape[1] != text_features.shape[1]:
            raise ValueError(f"image width {image_features.shape[1]} != text width {text_features.shape[1]}")
        mean = lambda x: F.normalize(x.double(), dim=-1).mean(0).float().cpu()  # noqa: E731
        return cls(image_mean=mean(image_features), text_mean=mean(text_features))

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
            raise ValueError(f"features must be [N, {self.dim}], got shape {tuple(features.shape)}")
        x = F.normalize(features.float(), dim=-1)
        return F.normalize(x + delta.to(x.device), dim=-1)

    @torch.no_grad()
    def encode_images(self, model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] pixels -> [B, E] unit image features shifted to the text side (float32, CPU)."""
        return self.image_to_text(model.encode_image(pixels.to(model_device(model))).float()).cpu()

    @torch.no_grad()
    def encode_texts(self, model: nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] token ids -> [B, E] unit text features shifted to the image side (float32, CPU)."""
        return self.text_to_image(model.encode_text(token_ids.to(model_device(model))).float()).cpu()


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
    from crossgap_qdrant.models import encode_images, encode_texts

    if image_features is None:
        if not images:
            raise ValueError("the modality-gap shift needs a sample of images (or image features) to fit")
        image_features = encode_images(model, preprocess, images)
    if text_features is None:
        text_features = encode_texts(model, tokenizer, list(texts) if texts else list(GENERIC_CAPTIONS))
    return ModalityGapShift.fit(image_features, text_features)
