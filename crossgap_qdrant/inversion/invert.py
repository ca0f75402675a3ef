"""OTI and OVI modality inversion, exact by default: the entry points and the pseudo-token encoders they optimise.

OTI maps an image feature into CLIP's text space: it optimises R pseudo-word tokens so that the text tower's
output for "a photo of {tokens}" matches the image feature. OVI maps a text feature into image space with R
pseudo patch tokens repeated over the ViT grid. Every sample is an independent problem; the engine
(crossgap_qdrant.inversion.engine) batches them, computes only what the result depends on, takes no weight
gradients, and updates all samples with the fused per-sample AdamW operator.

By default the result equals the published algorithm (``oti_invert_reference`` / ``ovi_invert_reference`` in
crossgap_qdrant.inversion.reference: full sequence, torch.optim.AdamW, batch-mean cosine loss) to float
tolerance. Reduced precision and
per-sample early stopping are opt-in. Settings: crossgap_qdrant.inversion.config.

Batch composition: an item's initial tokens and its gradient scale do not depend on its batch, so its result
differs between batchings only through float rounding (matrix products sum in an order that depends on the row
count), which the optimisation can amplify step by step. After a few steps the difference is at float level
(``BATCH_INVARIANCE_BOUND``, 1e-4 per coordinate, what the tests check after 3 steps). Over a full budget it
depends on the landscape: on the previous demo model (final loss 0.05), 40 openclipart images inverted in
batches of 1, 3, 7, 16, 17, 33 and 40 moved by at most 2.6e-5 per coordinate; on the current one (final loss
0.36) by up to 0.03, cosine at least 0.996 (mean 0.9999); on the tiny test model, items whose loss went below
1e-3 (where many tokens fit the target almost equally well) by up to 0.013 (cosine at least 0.9994), the others
by at most 7e-4. ``BATCH_COSINE_BOUND`` (0.99) is what the tests check for full budgets; two exact runs from
different initial tokens differ far more (mean cosine 0.990 on the main job's images, benchmarks/bench_query.py).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from crossgap_qdrant import ops
from crossgap_qdrant.errors import InvalidArgumentError
from crossgap_qdrant.inversion.config import InversionResult, OTIConfig, OVIConfig, check_precision
from crossgap_qdrant.inversion.engine import run_engine
from crossgap_qdrant.inversion.problem import oti_setup, ovi_setup
from crossgap_qdrant.inversion.pseudo_patch_vit import PseudoPatchImageEncoder
from crossgap_qdrant.inversion.reference import (
    encode_image_with_pseudo_tokens,
    encode_text_with_pseudo_tokens,
    template_token_ids,
)
from crossgap_qdrant.inversion.text_suffix import CachedTemplateTextEncoder
from crossgap_qdrant.inversion.text_suffix_step import try_suffix_step
from crossgap_qdrant.models.cast_copy import cast_copy
from crossgap_qdrant.models.loading import ClipModel, takes_clip_model
from crossgap_qdrant.models.towers import UnsupportedModelError, text_tower

STEP_CHOICES = ("auto", "autograd", "handwritten")
# "auto" takes the hand-written OTI step up to this many samples per batch (float32, CPU), where graph
# overhead is a large share of a step; above it both run the same matmuls and autograd is as fast.
HANDWRITTEN_MAX_BATCH = 16
# Per-coordinate difference of an item's float32 features between batchings after a few steps (the module
# docstring has the measurements after full budgets).
BATCH_INVARIANCE_BOUND = 1e-4
# Cosine between an item's float32 features from two batchings after a full budget (measured figures above).
BATCH_COSINE_BOUND = 0.99


def use_handwritten_step(batch: int, dtype: torch.dtype, device: torch.device) -> bool:
    """The "auto" rule: the hand-written OTI step for float32 on CPU at batches up to HANDWRITTEN_MAX_BATCH."""
    return device.type == "cpu" and dtype == torch.float32 and batch <= HANDWRITTEN_MAX_BATCH


@takes_clip_model("tokenizer")
def oti_invert(
    clip: ClipModel,
    image_features: torch.Tensor,
    config: OTIConfig = OTIConfig(),
    init_tokens: torch.Tensor | None = None,
    progress: bool = True,
    snapshots: tuple[int, ...] = (),
) -> InversionResult:
    """Inverts image features into the text space (OTI).

    The old form ``oti_invert(model, tokenizer, image_features[, config])`` still works for one release (it
    warns once); wrap the parts with :meth:`ClipModel.from_parts` instead.

    Args:
        clip: the model handle (:func:`crossgap_qdrant.load_model` or :meth:`ClipModel.from_parts`), with a
            tokenizer.
        image_features: [N, E] image features (normalised here; rows must be finite and non-zero).
        config: settings; the defaults are the published ones.
        init_tokens: [N, R, W] initial pseudo tokens (W: text width); default normal(0, init_std) from seed.
        progress: show a progress bar.
        snapshots: step counts whose features are kept too (``InversionResult.snapshots``; fixed budgets).

    Returns:
        InversionResult whose features are text-space unit vectors [N, E].
    """
    ops.require_library()
    model, tokenizer = clip.model, clip.tokenizer
    device, targets, init = oti_setup(clip, image_features, config, init_tokens)
    dtype = check_precision(config.precision, device)
    if config.step not in STEP_CHOICES:
        raise InvalidArgumentError(f"step must be one of {STEP_CHOICES}, got {config.step!r}")
    def build(dtype: torch.dtype):
        return oti_encoder(model, tokenizer, config.template, config.num_tokens, dtype, config.prefix_cache)

    encode = build(dtype)
    # The reported features always come from a float32 forward, whatever precision the steps ran in.
    final = encode if dtype == torch.float32 else build(torch.float32)
    batch = min(config.batch_size, max(1, targets.shape[0]))
    loss_and_grad = None
    if config.step == "handwritten" or (config.step == "auto" and use_handwritten_step(batch, dtype, device)):
        loss_and_grad = try_suffix_step(encode)
        if loss_and_grad is None and config.step == "handwritten":
            raise UnsupportedModelError(
                "step='handwritten' needs the prefix cache (a causal text tower, prefix_cache=True) and blocks "
                "with LayerNorm, GELU/QuickGELU and no layer scale; use step='autograd'"
            )
    return run_engine(encode, final, targets, init, config, progress, "OTI", loss_and_grad, snapshots)


def oti_encoder(model: nn.Module, tokenizer: Callable, template: str, num_tokens: int, dtype: torch.dtype,
                prefix_cache: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """Pseudo words [B, R, W] -> unnormalised text features [B, E], differentiable: the exact prefix-cached
    suffix forward where the tower allows it (causal, open_clip blocks), else the model's own full forward."""
    if prefix_cache and text_tower(model).causal:
        try:
            return CachedTemplateTextEncoder(model, tokenizer, template, num_tokens, dtype)
        except UnsupportedModelError:
            pass
    ids, positions = template_token_ids(tokenizer, template, num_tokens)

    def full(tokens: torch.Tensor, m=model) -> torch.Tensor:
        return encode_text_with_pseudo_tokens(m, ids, positions, tokens)

    return full if dtype == torch.float32 else _reduced_precision(model, dtype, full)


def ovi_encoder(model: nn.Module, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    """Pseudo patches [B, R, W] -> unnormalised image features [B, E], differentiable: the contiguous ViT
    forward where the tower allows it, else the model's own forward."""
    try:
        return PseudoPatchImageEncoder(model, dtype)
    except UnsupportedModelError:
        def full(tokens: torch.Tensor, m=model) -> torch.Tensor:
            return encode_image_with_pseudo_tokens(m, tokens)

        return full if dtype == torch.float32 else _reduced_precision(model, dtype, full)


def _reduced_precision(model: nn.Module, dtype: torch.dtype, fn):
    """fn evaluated on a frozen copy of the model cast to dtype (made once per model and dtype, see
    crossgap_qdrant.models.cast_copy; no per-step weight casts)."""
    low = cast_copy(model, dtype)
    return lambda tokens: fn(tokens.to(dtype), m=low)


@takes_clip_model(None)
def ovi_invert(
    clip: ClipModel,
    text_features: torch.Tensor,
    config: OVIConfig = OVIConfig(),
    init_tokens: torch.Tensor | None = None,
    progress: bool = True,
    snapshots: tuple[int, ...] = (),
) -> InversionResult:
    """Inverts text features into the image space (OVI).

    The old form ``ovi_invert(model, text_features, ..., model_name=, pretrained=)`` with a bare model still
    works for one release (it warns once); wrap the model with :meth:`ClipModel.from_parts` instead.

    Args:
        clip: the model handle (:func:`crossgap_qdrant.load_model` or :meth:`ClipModel.from_parts`), with a ViT
            image tower; its name and tag choose the published default R when ``config.num_tokens`` is None.
        text_features: [N, E] text features (normalised here; rows must be finite and non-zero).
        config: settings; the defaults are the published ones.
        init_tokens: [N, R, W] initial pseudo patch tokens (W: vision width).
        progress: show a progress bar.
        snapshots: step counts whose features are kept too (``InversionResult.snapshots``; fixed budgets).

    Returns:
        InversionResult whose features are image-space unit vectors [N, E].
    """
    ops.require_library()
    model = clip.model
    device, targets, init = ovi_setup(clip, text_features, config, init_tokens)
    dtype = check_precision(config.precision, device)
    encode = ovi_encoder(model, dtype)
    final = encode if dtype == torch.float32 else ovi_encoder(model, torch.float32)
    return run_engine(encode, final, targets, init, config, progress, "OVI", snapshots=snapshots)


__all__ = [
    "BATCH_COSINE_BOUND",
    "BATCH_INVARIANCE_BOUND",
    "HANDWRITTEN_MAX_BATCH",
    "STEP_CHOICES",
    "oti_encoder",
    "oti_invert",
    "ovi_encoder",
    "ovi_invert",
    "use_handwritten_step",
]
