"""Views of open_clip's text and image towers, and the published pseudo-token encoders that inversion optimises.

The pseudo-token encoders run the model's own forward code on the full sequence, so they are the published
algorithm by construction; crossgap_qdrant.text_cache and crossgap_qdrant.patch_encoder build the fast paths on
top and are tested against them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

PLACEHOLDER = "£"  # the published code's placeholder word: a single token in CLIP's BPE vocabulary


class UnsupportedModelError(ValueError):
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


# ----------------------------------------------------------------------------------- pseudo-token encoders
def placeholder_template(template: str, num_tokens: int) -> str:
    """Formats the template with ``num_tokens`` placeholder words, as the published code does."""
    if template.count("{}") != 1:
        raise ValueError(f"the template must contain exactly one '{{}}', got {template!r}")
    return template.format(f" {PLACEHOLDER} " * num_tokens)


def template_token_ids(tokenizer: Callable, template: str, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of the template and the positions of its placeholders.

    Returns:
        ids [L] int64 and positions [R] int64 (consecutive, ascending).
    """
    ids = tokenizer([placeholder_template(template, num_tokens)])[0]
    specials = {int(t) for t in tokenizer([""])[0]}  # start/end/padding ids
    marker = [int(t) for t in tokenizer([PLACEHOLDER])[0] if int(t) not in specials]
    if len(marker) != 1:
        raise UnsupportedModelError(f"the tokenizer does not map {PLACEHOLDER!r} to exactly one token")
    marker_id = marker[0]
    positions = (ids == marker_id).nonzero().flatten()
    if positions.numel() != num_tokens or (
        num_tokens > 1 and not torch.equal(positions, positions[0] + torch.arange(num_tokens))
    ):
        raise UnsupportedModelError(
            f"the tokenizer does not map the placeholder {PLACEHOLDER!r} to one token each "
            f"({positions.numel()} found for {num_tokens} placeholders)"
        )
    return ids, positions


@contextlib.contextmanager
def _replace_output(module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]):
    handle = module.register_forward_hook(lambda _m, _inp, out: fn(out))
    try:
        yield
    finally:
        handle.remove()


def encode_text_with_pseudo_tokens(
    model: nn.Module, ids: torch.Tensor, positions: torch.Tensor, pseudo_tokens: torch.Tensor
) -> torch.Tensor:
    """Text features of a template whose placeholder embeddings are replaced by pseudo tokens.

    Runs the model's own text forward over the whole sequence (the published computation).

    Args:
        ids: [L] int64 template token ids.
        positions: [R] int64 placeholder positions.
        pseudo_tokens: [B, R, W] pseudo-word embeddings (W: text tower width).

    Returns:
        [B, E] unnormalised text features.
    """
    tower = text_tower(model)
    batch = pseudo_tokens.shape[0]
    ids_b = ids.to(pseudo_tokens.device).expand(batch, -1)

    def put(emb: torch.Tensor) -> torch.Tensor:
        emb = emb.clone()
        emb[:, positions] = pseudo_tokens.to(emb.dtype)
        return emb

    with _replace_output(tower.token_embedding, put):
        return tower.encode(ids_b)


def expand_patch_tokens(pseudo_tokens: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Nearest-neighbour repeat of R pseudo patch tokens over the patch positions.

    Args:
        pseudo_tokens: [B, R, W].

    Returns:
        [B, num_patches, W]: patch i takes token floor(i * R / num_patches).
    """
    return pseudo_tokens.index_select(1, patch_token_index(pseudo_tokens.shape[1], num_patches, pseudo_tokens.device))


def patch_token_index(num_tokens: int, num_patches: int, device=None) -> torch.Tensor:
    """[num_patches] int64: patch i takes pseudo token floor(i * R / num_patches) (nearest interpolation)."""
    return (torch.arange(num_patches, device=device) * num_tokens) // num_patches


class _PseudoPatchEmbedding(nn.Module):
    """Stands in for a ViT's conv1: returns the pseudo patch grid, ignoring the pixels it is given."""

    def __init__(self, grid: torch.Tensor):
        super().__init__()
        self.grid = grid

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.grid


@contextlib.contextmanager
def pseudo_patch_embedding(visual: nn.Module, patches: torch.Tensor, grid: tuple[int, int]):
    """Within the block, ``visual``'s patch embedding yields ``patches`` [B, P, W] as a [B, W, gh, gw] grid."""
    b, p, w = patches.shape
    conv = visual.conv1
    visual.conv1 = _PseudoPatchEmbedding(patches.transpose(1, 2).reshape(b, w, grid[0], grid[1]))
    try:
        yield
    finally:
        visual.conv1 = conv


def encode_image_with_pseudo_tokens(model: nn.Module, pseudo_tokens: torch.Tensor) -> torch.Tensor:
    """Image features of pseudo patch tokens repeated over the ViT grid (class token and positions added).

    Runs the tower's own forward after the patch embedding (the published computation).

    Args:
        pseudo_tokens: [B, R, W] (W: vision tower width).

    Returns:
        [B, E] unnormalised image features.
    """
    tower = vision_tower(model)
    patches = expand_patch_tokens(pseudo_tokens, tower.num_patches)
    dummy = patches.new_zeros(patches.shape[0], 1, 1, 1)
    with pseudo_patch_embedding(tower.module, patches, tower.grid):
        return tower.module(dummy)
