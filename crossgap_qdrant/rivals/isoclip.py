"""IsoCLIP (Magistri et al., CVPR 2026, arXiv 2603.19862): the middle band of the projectors' inter-modal operator.

With the image projector W_i [D_v, E] and the text projector W_t [D_t, E] (pre-projection widths D_v, D_t;
shared width E), cosine similarity between an image and a text is driven by the inter-modal operator
M = W_i W_t^T [D_v, D_t]. Its SVD M = U S V^T orders directions from most to least amplified. Keeping the
middle band (dropping the first ``k_top`` and last ``k_bottom`` of the r = min(D_v, D_t, E) structural
singular directions) and projecting the pre-projection features onto it before the projector gives the
IsoCLIP features: image x -> (x U_b U_b^T) W_i, text y -> (y V_b V_b^T) W_t. With no cut the image-text dot
products are exactly the native ones (x U S V^T y^T = x M y^T), and when the projectors have full column rank
the features themselves are unchanged.

The cuts are per backbone: :data:`PUBLISHED_CUTS` holds the authors' image->image values; for any other
backbone (or for text->text) the evaluation chooses them on the user's labelled sample from
:func:`cut_grid` (crossgap_qdrant.evaluate.representations), never by a fixed rule.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossgap_qdrant.models import model_device
from crossgap_qdrant.models.towers import text_tower
from crossgap_qdrant.rivals.base import FeatureTransform, RepresentationError, register_kind

#: The authors' image->image cuts (k_top, k_bottom) by (open_clip architecture, pretrained tag).
PUBLISHED_CUTS: dict[tuple[str, str], tuple[int, int]] = {
    ("ViT-B-32", "openai"): (150, 50),
    ("ViT-B-16", "openai"): (200, 50),
    ("ViT-L-14", "openai"): (250, 200),
    ("ViT-B-32", "datacomp_xl_s13b_b90k"): (50, 50),
    ("ViT-B-16", "datacomp_xl_s13b_b90k"): (100, 100),
    ("PE-Core-B-16", "meta"): (300, 50),
    ("ViT-B-16-SigLIP2", "webli"): (350, 50),
}

#: Fractions of r tried by :func:`cut_grid` (the published cuts span top 0.1-0.7 r, bottom 0.1-0.26 r).
GRID_TOP = (0.0, 0.1, 0.3, 0.5)
GRID_BOTTOM = (0.0, 0.1, 0.25)


def published_cuts(name: str | None, pretrained: str | None, modality: str = "image") -> tuple[int, int] | None:
    """The published (k_top, k_bottom) for a backbone, or None (no published cuts for it, or for texts).

    Args:
        name: open_clip architecture ("ViT-B-32"; the "-quickgelu" variants of OpenAI weights match too).
        pretrained: open_clip pretrained tag ("openai", "datacomp_xl_s13b_b90k", ...).
        modality: "image" (image->image retrieval, the cuts the SPEC lists) or "text" (none published here).
    """
    if modality != "image" or not name or not pretrained:
        return None
    arch = name.lower().removesuffix("-quickgelu")
    for (key_name, key_tag), cuts in PUBLISHED_CUTS.items():
        if key_name.lower() == arch and key_tag == pretrained.lower():
            return cuts
    return None


def cut_grid(rank: int) -> list[tuple[int, int]]:
    """The small grid of (k_top, k_bottom) the evaluation tries when no cuts are published; (0, 0) first."""
    cuts = {(round(t * rank), round(b * rank)) for t in GRID_TOP for b in GRID_BOTTOM}
    return sorted(c for c in cuts if c[0] + c[1] < rank)


# ----------------------------------------------------------------------------- pre-projection features
def _vision_projection(model: nn.Module) -> torch.Tensor:
    proj = getattr(getattr(model, "visual", None), "proj", None)
    if not isinstance(proj, torch.Tensor):
        raise RepresentationError(
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
    raise RepresentationError(
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
    return (out[0] if isinstance(out, tuple) else out).float()


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
    return (out[0] if isinstance(out, tuple) else out).float()


def isoclip_rank(model: nn.Module) -> int:
    """r = min(D_v, D_t, E): the number of structural singular directions of W_i W_t^T (no SVD needed)."""
    w_i = _vision_projection(model)
    w_t, _ = _text_projection(model)
    return int(min(w_i.shape[0], w_t.shape[0], w_i.shape[1]))


# ------------------------------------------------------------------------------------------- projector
@register_kind("isoclip")
@dataclass(eq=False)
class IsoCLIPProjector(FeatureTransform):
    """The middle band of the inter-modal operator's singular directions, applied before the projectors.

    Build it with :meth:`from_model`.

    Attributes:
        image_basis: [D_v, K] orthonormal columns (U_b), K = r - k_top - k_bottom.
        text_basis: [D_t, K] orthonormal columns (V_b).
        singular_values: [r] all structural singular values of W_i W_t^T, descending.
        k_top, k_bottom: the cuts.
        embed_dim: E, the width of the shared embedding space.
        cuts_source: where the cuts came from: "published", "given", "tuned" (chosen on a labelled sample).
    """

    image_basis: torch.Tensor
    text_basis: torch.Tensor
    singular_values: torch.Tensor
    k_top: int
    k_bottom: int
    embed_dim: int
    cuts_source: str = "given"

    @classmethod
    @torch.no_grad()
    def from_model(cls, model: nn.Module, k_top: int = 0, k_bottom: int = 0,
                   cuts_source: str = "given") -> "IsoCLIPProjector":
        """SVD of the model's W_i W_t^T, keeping directions k_top .. r - k_bottom - 1.

        Args:
            model: an open_clip CLIP or CustomTextCLIP with a ViT image tower and a linear text projector.
            k_top: number of leading (most amplified) singular directions to drop.
            k_bottom: number of trailing directions to drop.
            cuts_source: recorded with the transform ("published", "given" or "tuned").

        Raises:
            ValueError: negative cuts, or cuts that leave no direction.
        """
        if k_top < 0 or k_bottom < 0:
            raise RepresentationError(f"k_top and k_bottom must be >= 0, got {k_top}, {k_bottom}")
        w_i = _vision_projection(model).detach().double().cpu()
        w_t = _text_projection(model)[0].detach().double().cpu()
        if w_i.shape[1] != w_t.shape[1]:
            raise RepresentationError(f"projector output widths differ: image {w_i.shape[1]}, text {w_t.shape[1]}")
        rank = min(w_i.shape[0], w_t.shape[0], w_i.shape[1])
        if k_top + k_bottom >= rank:
            raise RepresentationError(f"k_top + k_bottom = {k_top + k_bottom} leaves no direction: the operator has "
                                      f"{rank} "
                                      "singular directions")
        u, s, vh = torch.linalg.svd(w_i @ w_t.T, full_matrices=False)
        band = slice(k_top, rank - k_bottom)
        return cls(image_basis=u[:, band].float().contiguous(), text_basis=vh.T[:, band].float().contiguous(),
                   singular_values=s[:rank].float(), k_top=k_top, k_bottom=k_bottom, embed_dim=int(w_i.shape[1]),
                   cuts_source=cuts_source)

    def to_record(self) -> dict[str, Any]:
        return {"k_top": self.k_top, "k_bottom": self.k_bottom, "rank": self.rank, "cuts_source": self.cuts_source}

    @classmethod
    def from_record(cls, model: nn.Module, record: dict[str, Any]) -> "IsoCLIPProjector":
        out = cls.from_model(model, int(record["k_top"]), int(record["k_bottom"]), record.get("cuts_source", "given"))
        if "rank" in record and int(record["rank"]) != out.rank:
            raise RepresentationError(f"the recorded IsoCLIP band is for r = {record['rank']} singular directions, but "
                                      "this "
                                      f"model has {out.rank}: the collection was built with another model")
        return out

    @property
    def rank(self) -> int:
        return int(self.singular_values.shape[0])

    @property
    def dim(self) -> int:
        return self.embed_dim

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

    def project(self, model: nn.Module, modality: str, pre_projection: torch.Tensor) -> torch.Tensor:
        """Unit IsoCLIP features [B, E] (float32, CPU) of pre-projection features of one modality."""
        project = self.project_image if modality == "image" else self.project_text
        return F.normalize(project(model, pre_projection), dim=-1).cpu()

    def encode_images(self, model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] pixels -> [B, E] unit IsoCLIP image features (float32, CPU)."""
        return self.project(model, "image", image_pre_projection(model, pixels))

    def encode_texts(self, model: nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] token ids -> [B, E] unit IsoCLIP text features (float32, CPU)."""
        return self.project(model, "text", text_pre_projection(model, token_ids))
