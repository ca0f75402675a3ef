"""OTI and OVI modality inversion (exact by default), and the published algorithm as reference.

OTI maps an image feature into CLIP's text space: it optimises R pseudo-word tokens so that the text tower's
output for "a photo of {tokens}" matches the image feature. OVI maps a text feature into image space with R
pseudo patch tokens repeated over the ViT grid. Every sample is an independent problem; the engine
(crossgap_qdrant.inversion_engine) batches them, computes only what the result depends on, takes no weight
gradients, and updates all samples with the fused per-sample AdamW operator.

By default the result equals the published algorithm (``oti_invert_reference`` / ``ovi_invert_reference``:
full sequence, torch.optim.AdamW, batch-mean cosine loss) to float tolerance. Reduced precision and
per-sample early stopping are opt-in. Settings: crossgap_qdrant.inversion_config.

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

import time
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossgap_qdrant import ops
from crossgap_qdrant.cast_copy import cast_copy
from crossgap_qdrant.inversion_config import (
    PRECISIONS,
    InversionConfig,
    InversionResult,
    OTIConfig,
    OVIConfig,
    StoppingRule,
    check_precision,
    initial_tokens,
    ovi_num_tokens,
    seeded_initial_tokens,
)
from crossgap_qdrant.inversion_engine import final_features, run_engine, stopping_update
from crossgap_qdrant.models import ClipModel, check_features, model_device, normalize_features
from crossgap_qdrant.oti_step import try_suffix_step
from crossgap_qdrant.patch_encoder import PseudoPatchImageEncoder
from crossgap_qdrant.text_cache import CachedTemplateTextEncoder
from crossgap_qdrant.towers import (
    UnsupportedModelError,
    embed_dim,
    encode_image_with_pseudo_tokens,
    encode_text_with_pseudo_tokens,
    template_token_ids,
    text_tower,
    vision_tower,
)

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


def _unit_targets(features: Any, dim: int, what: str, device: torch.device) -> torch.Tensor:
    """[N, dim] finite non-zero rows as unit vectors (rows near float32's limit too), on ``device``."""
    return normalize_features(check_features(torch.as_tensor(features), dim, what), what).to(device)


def _oti_inputs(model, tokenizer, image_features, config):
    """(model, tokenizer, features, config) from ``(clip, features[, config])`` or ``(model, tokenizer, features)``."""
    if isinstance(model, ClipModel):
        if image_features is None or isinstance(image_features, InversionConfig):  # (clip, features[, config])
            return model.model, model.tokenizer, tokenizer, image_features or config
        return model.model, model.tokenizer if tokenizer is None else tokenizer, image_features, config
    if tokenizer is None or image_features is None:
        raise TypeError("give (clip, image_features) or (model, tokenizer, image_features)")
    return model, tokenizer, image_features, config


def _ovi_inputs(model, model_name, pretrained):
    if isinstance(model, ClipModel):
        return model.model, model_name or model.name, pretrained or model.pretrained
    return model, model_name, pretrained


def _initial_tokens(kind: str, model, targets, config, num_tokens: int, width: int, init_tokens, template=None):
    """[N, R, W] float32 CPU: given tokens, else the warm start's prediction, else the published init."""
    expected = (targets.shape[0], num_tokens, width)
    if init_tokens is None and config.warm_start is not None:
        from crossgap_qdrant.checkpoints import weights_digest

        config.warm_start.check_fits(kind, targets.shape[1], num_tokens, width, template, weights_digest(model))
        init_tokens = config.warm_start.predict(targets)
    if init_tokens is None:
        init_tokens = initial_tokens(targets.shape[0], num_tokens, width, config.init_std, config.seed)
    if tuple(init_tokens.shape) != expected:
        raise ValueError(f"init_tokens must have shape {expected}, got {tuple(init_tokens.shape)}")
    return init_tokens.float().cpu()


def _check_config(config: Any, kind: type) -> None:
    if not isinstance(config, kind):
        raise TypeError(f"config must be an {kind.__name__}, got {type(config).__name__}")


def _oti_setup(model, image_features, config: OTIConfig, init_tokens):
    _check_config(config, OTIConfig)
    device = model_device(model)
    tower = text_tower(model)
    targets = _unit_targets(image_features, embed_dim(model), "image_features", device)
    init = _initial_tokens("oti", model, targets, config, config.num_tokens, tower.width, init_tokens,
                           config.template)
    return device, targets, init


def oti_invert(
    model: nn.Module | ClipModel,
    tokenizer: Callable | Any = None,
    image_features: torch.Tensor | None = None,
    config: OTIConfig = OTIConfig(),
    init_tokens: torch.Tensor | None = None,
    progress: bool = True,
    snapshots: tuple[int, ...] = (),
) -> InversionResult:
    """Inverts image features into the text space (OTI).

    Called as ``oti_invert(clip, image_features[, config])`` with the handle of
    :func:`crossgap_qdrant.load_model`, or as ``oti_invert(model, tokenizer, image_features[, config])``.

    Args:
        model: the model handle, or a frozen open_clip model.
        tokenizer: its tokenizer (with a bare model).
        image_features: [N, E] image features (normalised here; rows must be finite and non-zero).
        config: settings; the defaults are the published ones.
        init_tokens: [N, R, W] initial pseudo tokens (W: text width); default normal(0, init_std) from seed.
        progress: show a progress bar.
        snapshots: step counts whose features are kept too (``InversionResult.snapshots``; fixed budgets).

    Returns:
        InversionResult whose features are text-space unit vectors [N, E].
    """
    ops.require_library()
    model, tokenizer, image_features, config = _oti_inputs(model, tokenizer, image_features, config)
    device, targets, init = _oti_setup(model, image_features, config, init_tokens)
    dtype = check_precision(config.precision, device)
    if config.step not in STEP_CHOICES:
        raise ValueError(f"step must be one of {STEP_CHOICES}, got {config.step!r}")
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
    crossgap_qdrant.cast_copy; no per-step weight casts)."""
    low = cast_copy(model, dtype)
    return lambda tokens: fn(tokens.to(dtype), m=low)


def oti_invert_reference(
    model: nn.Module | ClipModel,
    tokenizer: Callable | Any = None,
    image_features: torch.Tensor | None = None,
    config: OTIConfig = OTIConfig(),
    init_tokens: torch.Tensor | None = None,
    progress: bool = False,
) -> InversionResult:
    """The published OTI, kept as ground truth: full 77-token forward, torch.optim.AdamW, batch-mean loss.

    Runs in float32 whatever ``config.precision`` says; ignores ``stopping`` and ``prefix_cache``.
    """
    model, tokenizer, image_features, config = _oti_inputs(model, tokenizer, image_features, config)
    device, targets, init = _oti_setup(model, image_features, config, init_tokens)
    ids, positions = template_token_ids(tokenizer, config.template, config.num_tokens)
    return _reference_loop(
        lambda tokens: encode_text_with_pseudo_tokens(model, ids, positions, tokens), targets, init, config
    )


def reference_step(encode, tokens: nn.Parameter, opt: torch.optim.Optimizer, target: torch.Tensor) -> None:
    """One step of the published algorithm: batch-mean cosine loss, backward, torch.optim.AdamW."""
    opt.zero_grad()
    y = encode(tokens)
    loss = (1 - F.cosine_similarity(F.normalize(y, dim=-1), target)).mean()
    loss.backward()
    opt.step()


def _reference_loop(encode, targets, init, config) -> InversionResult:
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


# ------------------------------------------------------------------------------------------------- OVI
def _ovi_setup(model, text_features, config: OVIConfig, init_tokens, model_name, pretrained):
    _check_config(config, OVIConfig)
    device = model_device(model)
    tower = vision_tower(model)
    targets = _unit_targets(text_features, embed_dim(model), "text_features", device)
    r = ovi_num_tokens(model, config, model_name, pretrained)
    return device, targets, _initial_tokens("ovi", model, targets, config, r, tower.width, init_tokens)


def ovi_invert(
    model: nn.Module | ClipModel,
    text_features: torch.Tensor,
    config: OVIConfig = OVIConfig(),
    init_tokens: torch.Tensor | None = None,
    progress: bool = True,
    model_name: str | None = None,
    pretrained: str | None = None,
    snapshots: tuple[int, ...] = (),
) -> InversionResult:
    """Inverts text features into the image space (OVI).

    Args:
        model: the model handle of :func:`crossgap_qdrant.load_model`, or a frozen open_clip model; with a ViT
            image tower.
        text_features: [N, E] text features (normalised here; rows must be finite and non-zero).
        config: settings; the defaults are the published ones.
        init_tokens: [N, R, W] initial pseudo patch tokens (W: vision width).
        progress: show a progress bar.
        model_name, pretrained: open_clip architecture and pretrained tag, for the published default R
            when ``config.num_tokens`` is None and the model was not made by ``load_model``.
        snapshots: step counts whose features are kept too (``InversionResult.snapshots``; fixed budgets).

    Returns:
        InversionResult whose features are image-space unit vectors [N, E].
    """
    ops.require_library()
    model, model_name, pretrained = _ovi_inputs(model, model_name, pretrained)
    device, targets, init = _ovi_setup(model, text_features, config, init_tokens, model_name, pretrained)
    dtype = check_precision(config.precision, device)
    encode = ovi_encoder(model, dtype)
    final = encode if dtype == torch.float32 else ovi_encoder(model, torch.float32)
    return run_engine(encode, final, targets, init, config, progress, "OVI", snapshots=snapshots)


def ovi_invert_reference(
    model: nn.Module | ClipModel,
    text_features: torch.Tensor,
    config: OVIConfig = OVIConfig(),
    init_tokens: torch.Tensor | None = None,
    progress: bool = False,
    model_name: str | None = None,
    pretrained: str | None = None,
) -> InversionResult:
    """The published OVI, kept as ground truth: torch.optim.AdamW, batch-mean loss, float32."""
    model, model_name, pretrained = _ovi_inputs(model, model_name, pretrained)
    device, targets, init = _ovi_setup(model, text_features, config, init_tokens, model_name, pretrained)
    return _reference_loop(lambda tokens: encode_image_with_pseudo_tokens(model, tokens), targets, init, config)


__all__ = [
    "BATCH_COSINE_BOUND",
    "BATCH_INVARIANCE_BOUND",
    "InversionConfig",
    "InversionResult",
    "PRECISIONS",
    "OTIConfig",
    "OVIConfig",
    "StoppingRule",
    "initial_tokens",
    "oti_invert",
    "oti_invert_reference",
    "ovi_invert",
    "ovi_invert_reference",
    "ovi_num_tokens",
    "reference_step",
    "seeded_initial_tokens",
    "stopping_update",
]
