"""Views of open_clip's text and image towers: the parts inversion and the encoders read, the same for CLIP and
CustomTextCLIP models, and the error naming what a model lacks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

from crossgap_qdrant.errors import CrossgapError

PLACEHOLDER = "£"  # the published code's placeholder word: a single token in CLIP's BPE vocabulary


class UnsupportedModelError(CrossgapError, ValueError):
    """The model lacks a part that an inversion needs (the message names it)."""


def embed_dim(model: nn.Module) -> int:
    """Width of the shared embedding space."""
    text = text_tower(model, require_causal=False)
    proj = text.text_projection
    if isinstance(proj, nn.Linear):
        return proj.out_features
    if proj is not None:
        return proj.shape[1]
    return text.width


@dataclass
class TextTower:
    """The parts of an open_clip text tower, the same for CLIP and CustomTextCLIP models."""

    module: nn.Module  # the object holding the parts (the CLIP model itself or model.text)
    token_embedding: nn.Embedding
    positional_embedding: torch.Tensor  # [L, W]
    transformer: nn.Module
    ln_final: nn.Module
    text_projection: Any  # Parameter [W, E], nn.Linear, or None
    attn_mask: torch.Tensor | None  # [L, L] additive causal mask, or None for bidirectional towers
    pool_type: str
    eos_id: int | None
    encode: Callable[[torch.Tensor], torch.Tensor]  # token ids [B, L] -> unnormalised features [B, E]

    @property
    def width(self) -> int:
        return self.token_embedding.embedding_dim

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    @property
    def causal(self) -> bool:
        return self.attn_mask is not None

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        proj = self.text_projection
        if proj is None:
            return pooled
        if isinstance(proj, nn.Linear):
            return proj(pooled)
        return pooled @ proj


def text_tower(model: nn.Module, require_causal: bool = False) -> TextTower:
    """Returns the text tower view of an open_clip CLIP or CustomTextCLIP model.

    Raises:
        UnsupportedModelError: naming what is missing (e.g. a Hugging Face text tower has no token_embedding
            that inversion can write into).
    """
    holder = getattr(model, "text", None)
    if holder is None:
        holder = model
        pool = getattr(model, "text_pool_type", "argmax")
    else:
        pool = getattr(holder, "pool_type", "argmax")
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    missing = [n for n in needed if not hasattr(holder, n)]
    if missing:
        raise UnsupportedModelError(
            f"{type(model).__name__}'s text tower ({type(holder).__name__}) has no {', '.join(missing)}: "
            "OTI needs an open_clip TextTransformer-style tower (token embedding, positional embedding, transformer)"
        )
    if getattr(holder, "cls_emb", None) is not None:
        raise UnsupportedModelError("text towers with an appended class token (CoCa) are not supported")
    attn_mask = getattr(holder, "attn_mask", None)
    if require_causal and attn_mask is None:
        raise UnsupportedModelError("the text tower is not causal")
    encode = model.encode_text if holder is model else holder
    return TextTower(
        module=holder,
        token_embedding=holder.token_embedding,
        positional_embedding=holder.positional_embedding,
        transformer=holder.transformer,
        ln_final=holder.ln_final,
        text_projection=getattr(holder, "text_projection", None),
        attn_mask=attn_mask,
        pool_type=pool,
        eos_id=getattr(holder, "text_eos_id", getattr(holder, "eos_id", None)),
        encode=encode,
    )


@dataclass
class VisionTower:
    """The parts of an open_clip ViT image tower that OVI needs."""

    module: nn.Module
    width: int
    num_patches: int  # patch positions of the grid (the class token excluded)
    grid: tuple[int, int]


def vision_tower(model: nn.Module) -> VisionTower:
    """Returns the image tower view of an open_clip model with a ViT image tower.

    Raises:
        UnsupportedModelError: no image tower, or one that is not an open_clip VisionTransformer.
    """
    visual = getattr(model, "visual", None)
    if visual is None:
        raise UnsupportedModelError(f"{type(model).__name__} has no image tower (model.visual)")
    needed = ("conv1", "class_embedding", "positional_embedding", "transformer")
    missing = [n for n in needed if not hasattr(visual, n)]
    if missing:
        raise UnsupportedModelError(
            f"image tower {type(visual).__name__} has no {', '.join(missing)}: OVI supports open_clip "
            "VisionTransformer towers (timm trunks and ResNets are not supported)"
        )
    grid = tuple(visual.grid_size) if hasattr(visual, "grid_size") else None
    num_patches = visual.positional_embedding.shape[0] - 1
    if grid is None or grid[0] * grid[1] != num_patches:
        raise UnsupportedModelError("image tower's positional embedding does not match its patch grid")
    return VisionTower(module=visual, width=visual.class_embedding.shape[-1], num_patches=num_patches, grid=grid)


__all__ = ["TextTower", "UnsupportedModelError", "VisionTower", "embed_dim", "text_tower", "vision_tower"]
