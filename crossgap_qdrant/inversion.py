"""OTI and OVI modality inversion engines (exact by default), and the published algorithm as reference.

OTI maps an image feature into CLIP's text space: it optimises R pseudo-word tokens so that the text tower's
output for "a photo of {tokens}" matches the image feature. OVI maps a text feature into image space with R
pseudo patch tokens repeated over the ViT grid. Every sample is an independent problem; the engine batches
them, computes only what the result depends on, takes no weight gradients, and updates all samples with the
fused per-sample AdamW operator.

By default the result equals the published algorithm (``oti_invert_reference`` / ``ovi_invert_reference``:
full sequence, torch.optim.AdamW, batch-mean cosine loss) to float tolerance. Reduced precision and
per-sample early stopping are opt-in.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossgap_qdrant import ops
from crossgap_qdrant.models import (
    UnsupportedModelError,
    check_features,
    embed_dim,
    encode_image_with_pseudo_tokens,
    encode_text_with_pseudo_tokens,
    model_device,
    template_token_ids,
    text_tower,
    vision_tower,
)
from crossgap_qdrant.oti_step import try_suffix_step
from crossgap_qdrant.patch_encoder import PseudoPatchImageEncoder
from crossgap_qdrant.text_cache import CachedTemplateTextEncoder

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
STEP_CHOICES = ("auto", "autograd", "handwritten")
# "auto" takes the hand-written OTI step up to this many samples per batch (float32, CPU), where graph
# overhead is a large share of a step; above it both run the same matmuls and autograd is as fast.
HANDWRITTEN_MAX_BATCH = 16


def use_handwritten_step(batch: int, dtype: torch.dtype, device: torch.device) -> bool:
    """The "auto" rule: the hand-written OTI step for float32 on CPU at batches up to HANDWRITTEN_MAX_BATCH."""
    return device.type == "cpu" and dtype == torch.float32 and batch <= HANDWRITTEN_MAX_BATCH


@dataclass(frozen=True)
class StoppingRule:
    """Per-sample early stopping; a stopped sample leaves the batch and the next one takes its slot.

    A sample stops at the first of: ``target_loss`` reached (1 - cos <= target_loss); its loss improved by
    less than ``min_delta`` over the last ``patience`` steps; the config's step budget. Never before
    ``min_steps``.
    """

    target_loss: float | None = None
    min_delta: float | None = None
    patience: int = 10
    min_steps: int = 0


@dataclass(frozen=True)
class OTIConfig:
    """Optimisation-based textual inversion (image -> text space); defaults are the published settings."""

    steps: int = 150
    lr: float = 2e-2
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    init_std: float = 0.02
    template: str = "a photo of {}"
    num_tokens: int = 1
    batch_size: int = 64
    precision: str = "fp32"
    seed: int = 0
    stopping: StoppingRule | None = None
    prefix_cache: bool = True  # exact; off runs the full sequence (used by tests and benchmarks)
    step: str = "auto"  # "auto", "autograd" or "handwritten"; see oti_invert for the rule




@dataclass(frozen=True)
class OVIConfig:
    """Optimisation-based visual inversion (text -> image space); defaults are the published settings.

    ``num_tokens=None`` takes the backbone's published default (see :func:`ovi_num_tokens`).
    """

    steps: int = 1000
    lr: float = 2e-2
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    init_std: float = 0.02
    num_tokens: int | None = None
    batch_size: int = 64
    precision: str = "fp32"
    seed: int = 0
    stopping: StoppingRule | None = None


@dataclass
class InversionResult:
    """Outcome of an inversion of N samples.

    Attributes:
        features: [N, E] float32 unit vectors in the other modality's space.
        tokens: [N, R, D] float32 optimised pseudo tokens.
        loss: [N] float32, 1 - cos(features, target).
        steps: [N] int64 optimisation steps taken per sample.
    """

    features: torch.Tensor
    tokens: torch.Tensor
    loss: torch.Tensor
    steps: torch.Tensor
    seconds: float = 0.0


def ovi_num_tokens(
    model: nn.Module | None, config: OVIConfig, model_name: str | None = None, pretrained: str | None = None
) -> int:
    """R for OVI: ``config.num_tokens``, else the published choice for the backbone.

    4 for OpenAI ViT-L/14 and SigLIP ViT-B/16, 2 for OpenCLIP ViT-L/14, 1 otherwise (ViT-B/32 backbones).
    The name and tag are read from a model made by :func:`crossgap_qdrant.load_model`, else taken from the
    arguments.
    """
    if config.num_tokens is not None:
        return config.num_tokens
    name = getattr(model, "crossgap_model_name", None) or model_name or ""
    tag = getattr(model, "crossgap_pretrained", None) or pretrained or ""
    if "SigLIP" in name and "B-16" in name:
        return 4
    if name.startswith("ViT-L-14"):
        return 4 if tag == "openai" else 2
    return 1


def seeded_initial_tokens(keys: Sequence[str], num_tokens: int, width: int, std: float, seed: int) -> torch.Tensor:
    """Initial pseudo tokens seeded per item, [N, R, width] float32 on CPU, row i normal(0, std).

    Row i depends only on ``keys[i]`` and ``seed`` (a generator seeded with the first 8 bytes of
    sha256(f"{seed}:{key}"), little-endian, top bit cleared), so an item starts from the same tokens in
    whichever batch, order or run it is inverted. The store seeds by point id.
    """
    out = torch.empty(len(keys), num_tokens, width)
    for i, key in enumerate(keys):
        digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
        out[i] = torch.randn(num_tokens, width, generator=gen) * std
    return out


def initial_tokens(n: int, num_tokens: int, width: int, std: float, seed: int) -> torch.Tensor:
    """The deterministic initial pseudo tokens, normal(0, std), [n, R, width] float32 on CPU.

    Sample i always gets the same tokens for a given seed, whatever the batching.
    """
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, num_tokens, width, generator=gen) * std


def _check_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 is for CUDA; use precision='bf16' on CPU")
    return PRECISIONS[precision]


# ------------------------------------------------------------------------------------------ the engine
def _run_engine(
    encode: Callable[[torch.Tensor], torch.Tensor],
    final_encode: Callable[[torch.Tensor], torch.Tensor],
    targets: torch.Tensor,
    init: torch.Tensor,
    config,
    progress: bool,
    desc: str,
    loss_and_grad: Callable | None = None,
) -> InversionResult:
    """Optimises one pseudo-token set per target; see OTIConfig/OVIConfig for the settings.

    ``loss_and_grad(tokens, targets, grad_scale) -> (loss [B], grad [B, R, W])``, when given, replaces the
    autograd step through ``encode`` (see :mod:`crossgap_qdrant.oti_step`).
    """
    import time

    start_time = time.perf_counter()
    device = targets.device
    n = targets.shape[0]
    tokens_out = torch.empty_like(init)
    steps_out = torch.zeros(n, dtype=torch.int64)
    bar = None
    if progress and n:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=desc, unit="sample")
    hyper = dict(lr=config.lr, beta1=config.betas[0], beta2=config.betas[1], eps=config.eps,
                 weight_decay=config.weight_decay)

    def step_all(p, m, v, step, active, target, grad_scale):
        if loss_and_grad is not None:
            loss, grad = loss_and_grad(p, target, grad_scale)
        else:
            p_var = p.detach().requires_grad_(True)
            loss = ops.cosine_loss(encode(p_var), target)
            (grad,) = torch.autograd.grad(loss.sum() * grad_scale, p_var)
        ops.adamw_step(p, grad, m, v, step, active, **hyper)
        return loss.detach()

    # Every sample's gradient is scaled by 1/batch_size, the published batch-mean loss of a full batch, also
    # in a partial batch: a sample's optimisation then does not depend on how many others share its batch.
    grad_scale = 1.0 / config.batch_size
    if config.stopping is None:
        for lo in range(0, n, config.batch_size):
            hi = min(n, lo + config.batch_size)
            p = init[lo:hi].to(device).clone()
            m, v = torch.zeros_like(p), torch.zeros_like(p)
            step = torch.zeros(hi - lo, dtype=torch.int64, device=device)
            active = torch.ones(hi - lo, dtype=torch.bool, device=device)
            for _ in range(config.steps):
                step_all(p, m, v, step, active, targets[lo:hi], grad_scale)
            tokens_out[lo:hi] = p.cpu()
            steps_out[lo:hi] = step.cpu()
            if bar is not None:
                bar.update(hi - lo)
    else:
        _run_continuous(step_all, targets, init, config, tokens_out, steps_out, bar, grad_scale)
    if bar is not None:
        bar.close()

    features, loss = _final_features(final_encode, tokens_out, targets, config.batch_size)
    return InversionResult(features=features, tokens=tokens_out, loss=loss, steps=steps_out,
                           seconds=time.perf_counter() - start_time)


def stopping_update(
    rule: StoppingRule, loss: torch.Tensor, best: torch.Tensor, since: torch.Tensor, steps: torch.Tensor,
    budget: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of the per-sample stopping rule.

    Args:
        loss: [S] loss measured at this step; best: [S] best loss at the last improvement;
        since: [S] steps since that improvement; steps: [S] steps taken, this one included.

    Returns:
        (done [S] bool, best, since). ``best`` moves only on an improvement of at least ``min_delta``, so a
        sample improving by less per step is still kept while its improvement over ``patience`` steps adds up.
    """
    improved = loss < best - (rule.min_delta or 0.0)
    best = torch.where(improved, loss, best)
    since = torch.where(improved, torch.zeros_like(since), since + 1)
    done = steps >= budget
    eligible = steps >= rule.min_steps
    if rule.target_loss is not None:
        done |= eligible & (loss <= rule.target_loss)
    if rule.min_delta is not None:
        done |= eligible & (since >= rule.patience)
    return done, best, since


def _run_continuous(step_all, targets, init, config, tokens_out, steps_out, bar, grad_scale) -> None:
    """Slots of a full batch; a sample that stops is written out and the next pending one takes its slot."""
    rule: StoppingRule = config.stopping
    device = targets.device
    n = targets.shape[0]
    size = min(config.batch_size, n)
    if size == 0:
        return
    width = init.shape[1:]
    p = torch.zeros(size, *width, device=device)
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    step = torch.zeros(size, dtype=torch.int64, device=device)
    owner = torch.full((size,), -1, dtype=torch.int64)  # sample index held by each slot
    best = torch.full((size,), math.inf)
    since = torch.zeros(size, dtype=torch.int64)  # steps since the loss last improved by min_delta
    pending = 0

    def fill(slots: torch.Tensor) -> None:
        nonlocal pending
        for s in slots.tolist():
            if pending >= n:
                owner[s] = -1
                continue
            owner[s] = pending
            p[s] = init[pending].to(device)
            m[s] = 0
            v[s] = 0
            step[s] = 0
            best[s] = math.inf
            since[s] = 0
            pending += 1

    fill(torch.arange(size))
    target_buf = torch.zeros(size, targets.shape[1], device=device)
    while (owner >= 0).any():
        live = owner >= 0
        target_buf[live.to(device)] = targets[owner[live].to(device)]
        active = live.clone()
        # The loss measured at this step (before its update) decides who stops after it.
        loss = step_all(p, m, v, step, active.to(device), target_buf, grad_scale).cpu()
        stepped = step.cpu()
        done, best, since = stopping_update(rule, loss, best, since, stepped, config.steps)
        done &= live
        finished = done.nonzero().flatten()
        if finished.numel():
            idx = owner[finished]
            tokens_out[idx] = p[finished.to(device)].cpu()
            steps_out[idx] = stepped[finished]
            if bar is not None:
                bar.update(finished.numel())
            fill(finished)


@torch.no_grad()
def _final_features(final_encode, tokens, targets, batch_size):
    device = targets.device
    feats = []
    for lo in range(0, tokens.shape[0], batch_size):
        feats.append(F.normalize(final_encode(tokens[lo : lo + batch_size].to(device)).float(), dim=-1))
    if not feats:
        return torch.empty(0, targets.shape[1]), torch.empty(0)
    features = torch.cat(feats)
    loss = 1 - (features * targets).sum(-1)
    return features.cpu(), loss.cpu()


# ------------------------------------------------------------------------------------------------- OTI
def _oti_setup(model, image_features, config: OTIConfig, init_tokens):
    device = model_device(model)
    tower = text_tower(model)
    targets = check_features(torch.as_tensor(image_features), embed_dim(model), "image_features")
    targets = F.normalize(targets, dim=-1).to(device)
    if config.num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {config.num_tokens}")
    if init_tokens is None:
        init_tokens = initial_tokens(targets.shape[0], config.num_tokens, tower.width, config.init_std, config.seed)
    expected = (targets.shape[0], config.num_tokens, tower.width)
    if tuple(init_tokens.shape) != expected:
        raise ValueError(f"init_tokens must have shape {expected}, got {tuple(init_tokens.shape)}")
    return device, tower, targets, init_tokens.float().cpu()


def oti_invert(
    model: nn.Module,
    tokenizer: Callable,
    image_features: torch.Tensor,
    config: OTIConfig = OTIConfig(),
    init_tokens: torch.Tensor | None = None,
    progress: bool = True,
) -> InversionResult:
    """Inverts image features into the text space (OTI).

    Args:
        model: a frozen open_clip model (see :func:`crossgap_qdrant.load_model`).
        tokenizer: its tokenizer.
        image_features: [N, E] image features (normalised here).
        config: settings; the defaults are the published ones.
        init_tokens: [N, R, W] initial pseudo tokens (W: text width); default normal(0, init_std) from seed.
        progress: show a progress bar.

    Returns:
        InversionResult whose features are text-space unit vectors [N, E].
    """
    ops.require_library()
    device, tower, targets, init = _oti_setup(model, image_features, config, init_tokens)
    dtype = _check_precision(config.precision, device)
    if config.step not in STEP_CHOICES:
        raise ValueError(f"step must be one of {STEP_CHOICES}, got {config.step!r}")
    ids, positions = template_token_ids(tokenizer, config.template, config.num_tokens)

    def full(tokens: torch.Tensor, m=model) -> torch.Tensor:
        return encode_text_with_pseudo_tokens(m, ids, positions, tokens)

    def build(dtype: torch.dtype):
        if config.prefix_cache and tower.causal:
            try:
                return CachedTemplateTextEncoder(model, tokenizer, config.template, config.num_tokens, dtype)
            except UnsupportedModelError:
                pass
        return full if dtype == torch.float32 else _reduced_precision(model, dtype, full)

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
    return _run_engine(encode, final, targets, init, config, progress, "OTI", loss_and_grad)


def _reduced_precision(model: nn.Module, dtype: torch.dtype, fn):
    """fn evaluated on a frozen copy of the model cast to dtype (no per-step weight casts)."""
    import copy

    low = copy.deepcopy(model).to(dtype).requires_grad_(False)
    return lambda tokens: fn(tokens.to(dtype), m=low)


def oti_invert_reference(
    model: nn.Module,
    tokenizer: Callable,
    image_features: torch.Tensor,
    config: OTIConfig = OTIConfig(),
    init_tokens: torch.Tensor | None = None,
    progress: bool = False,
) -> InversionResult:
    """The published OTI, kept as ground truth: full 77-token forward, torch.optim.AdamW, batch-mean loss.

    Runs in float32 whatever ``config.precision`` says; ignores ``stopping`` and ``prefix_cache``.
    """
    device, tower, targets, init = _oti_setup(model, image_features, config, init_tokens)
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
    import time

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
    features, loss = _final_features(encode, tokens_out, targets, config.batch_size)
    steps = torch.full((targets.shape[0],), config.steps, dtype=torch.int64)
    return InversionResult(features=features, tokens=tokens_out, loss=loss, steps=steps,
                           seconds=time.perf_counter() - start_time)


# ------------------------------------------------------------------------------------------------- OVI
def _ovi_setup(model, text_features, config: OVIConfig, init_tokens, model_name, pretrained):
    device = model_device(model)
    tower = vision_tower(model)
    dim = embed_dim(model)
    targets = F.normalize(check_features(torch.as_tensor(text_features), dim, "text_features"), dim=-1)
    targets = targets.to(device)
    r = ovi_num_tokens(model, config, model_name, pretrained)
    if r < 1:
        raise ValueError(f"num_tokens must be >= 1, got {r}")
    if init_tokens is None:
        init_tokens = initial_tokens(targets.shape[0], r, tower.width, config.init_std, config.seed)
    expected = (targets.shape[0], r, tower.width)
    if tuple(init_tokens.shape) != expected:
        raise ValueError(f"init_tokens must have shape {expected}, got {tuple(init_tokens.shape)}")
    return device, targets, init_tokens.float().cpu()


def ovi_invert(
    model: nn.Module,
    text_features: torch.Tensor,
    config: OVIConfig = OVIConfig(),
    init_tokens: torch.Tensor | None = None,
    progress: bool = True,
    model_name: str | None = None,
    pretrained: str | None = None,
) -> InversionResult:
    """Inverts text features into the image space (OVI).

    Args:
        model: a frozen open_clip model with a ViT image tower.
        text_features: [N, E] text features (normalised here).
        config: settings; the defaults are the published ones.
        init_tokens: [N, R, W] initial pseudo patch tokens (W: vision width).
        progress: show a progress bar.
        model_name, pretrained: open_clip architecture and pretrained tag, for the published default R
            when ``config.num_tokens`` is None and the model was not made by ``load_model``.

    Returns:
        InversionResult whose features are image-space unit vectors [N, E].
    """
    ops.require_library()
    device, targets, init = _ovi_setup(model, text_features, config, init_tokens, model_name, pretrained)
    dtype = _check_precision(config.precision, device)

    def full(tokens: torch.Tensor, m=model) -> torch.Tensor:
        return encode_image_with_pseudo_tokens(m, tokens)

    def build(dtype: torch.dtype):
        try:
            return PseudoPatchImageEncoder(model, dtype)
        except UnsupportedModelError:
            return full if dtype == torch.float32 else _reduced_precision(model, dtype, full)

    encode = build(dtype)
    final = encode if dtype == torch.float32 else build(torch.float32)
    return _run_engine(encode, final, targets, init, config, progress, "OVI")


def ovi_invert_reference(
    model: nn.Module,
    text_features: torch.Tensor,
    config: OVIConfig = OVIConfig(),
    init_tokens: torch.Tensor | None = None,
    progress: bool = False,
    model_name: str | None = None,
    pretrained: str | None = None,
) -> InversionResult:
    """The published OVI, kept as ground truth: torch.optim.AdamW, batch-mean loss, float32."""
    device, targets, init = _ovi_setup(model, text_features, config, init_tokens, model_name, pretrained)
    return _reference_loop(lambda tokens: encode_image_with_pseudo_tokens(model, tokens), targets, init, config)


__all__ = [
    "InversionResult",
    "OTIConfig",
    "OVIConfig",
    "StoppingRule",
    "initial_tokens",
    "seeded_initial_tokens",
    "oti_invert",
    "oti_invert_reference",
    "ovi_invert",
    "ovi_invert_reference",
]
