"""The published algorithm, kept as ground truth: the pseudo-token encoders (the model's own forward on the full
sequence) and the reference OTI/OVI loop (torch.optim.AdamW, batch-mean cosine loss).

The pseudo-token encoders run the model's own forward code, so they are the published computation by
construction; crossgap_qdrant.inversion.text_suffix and crossgap_qdrant.inversion.pseudo_patch_vit build the fast
paths on top and are tested against them.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossgap_qdrant.errors import InvalidArgumentError
from crossgap_qdrant.inversion.config import InversionConfig, InversionResult, OTIConfig, OVIConfig
from crossgap_qdrant.inversion.engine import final_features
from crossgap_qdrant.inversion.problem import oti_setup, ovi_setup
from crossgap_qdrant.models.loading import ClipModel, takes_clip_model
from crossgap_qdrant.models.towers import UnsupportedModelError, text_tower, vision_tower

PLACEHOLDER = "£"  # the published code's placeholder word: a single token in CLIP's BPE vocabulary


def placeholder_template(template: str, num_tokens: int) -> str:
    """Formats the template with ``num_tokens`` placeholder words, as the published code does."""
    if template.count("{}") != 1:
        raise InvalidArgumentError(f"the template must contain exactly one '{{}}', got {template!r}")
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


def reference_step(encode, tokens: nn.Parameter, opt: torch.optim.Optimizer, target: torch.Tensor) -> None:
    """One step of the published algorithm: batch-mean cosine loss, backward, torch.optim.AdamW."""
    opt.zero_grad()
    y = encode(tokens)
    loss = (1 - F.cosine_similarity(F.normalize(y, dim=-1), target)).mean()
    loss.backward()
    opt.step()


def reference_loop(encode: Callable[[torch.Tensor], torch.Tensor], targets: torch.Tensor, init: torch.Tensor,
                   config: InversionConfig) -> InversionResult:
    """The published loop: per batch of unit targets [N, E], one parameter of initial tokens [B, R, W] and one
    torch.optim.AdamW, ``config.steps`` steps of :func:`reference_step`."""
    start_time = time.perf_counter()
    tokens_out = torch.empty_like(init)
    for lo in range(0, targets.shape[0], config.batch_size):
        target = targets[lo : lo + config.batch_size]
        p = nn.Parameter(init[lo : lo + config.batch_size].to(targets.device).clone())
        opt = torch.optim.AdamW([p], lr=config.lr, betas=config.betas, eps=config.eps,
                                weight_decay=config.weight_decay)
        for _ in range(config.steps):
            reference_step(encode, p, opt, target)
        tokens_out[lo : lo + config.batch_size] = p.detach().cpu()
    features, loss = final_features(encode, tokens_out, targets, config.batch_size)
    steps = torch.full((targets.shape[0],), config.steps, dtype=torch.int64)
    return InversionResult(features=features, tokens=tokens_out, loss=loss, steps=steps,
                           seconds=time.perf_counter() - start_time)


@takes_clip_model("tokenizer")
def oti_invert_reference(
    clip: ClipModel,
    image_features: torch.Tensor,
    config: OTIConfig = OTIConfig(),
    init_tokens: torch.Tensor | None = None,
    progress: bool = False,
) -> InversionResult:
    """The published OTI, kept as ground truth: full 77-token forward, torch.optim.AdamW, batch-mean loss.

    Runs in float32 whatever ``config.precision`` says; ignores ``stopping`` and ``prefix_cache``. Arguments as
    :func:`crossgap_qdrant.inversion.oti_invert`.
    """
    model = clip.model
    device, targets, init = oti_setup(clip, image_features, config, init_tokens)
    ids, positions = template_token_ids(clip.tokenizer, config.template, config.num_tokens)
    return reference_loop(
        lambda tokens: encode_text_with_pseudo_tokens(model, ids, positions, tokens), targets, init, config
    )


@takes_clip_model(None)
def ovi_invert_reference(
    clip: ClipModel,
    text_features: torch.Tensor,
    config: OVIConfig = OVIConfig(),
    init_tokens: torch.Tensor | None = None,
    progress: bool = False,
) -> InversionResult:
    """The published OVI, kept as ground truth: torch.optim.AdamW, batch-mean loss, float32. Arguments as
    :func:`crossgap_qdrant.inversion.ovi_invert`."""
    device, targets, init = ovi_setup(clip, text_features, config, init_tokens)
    return reference_loop(lambda tokens: encode_image_with_pseudo_tokens(clip.model, tokens), targets, init,
                          config)


__all__ = [
    "PLACEHOLDER",
    "encode_image_with_pseudo_tokens",
    "encode_text_with_pseudo_tokens",
    "expand_patch_tokens",
    "oti_invert_reference",
    "ovi_invert_reference",
    "patch_token_index",
    "placeholder_template",
    "pseudo_patch_embedding",
    "reference_loop",
    "reference_step",
    "template_token_ids",
]
