"""Python face of the fused operators in torch.ops.crossgap, with a plain PyTorch reference beside each.

Importing this module never needs the compiled library: it is loaded on the first call of an op, and if it
was never built (or was built against another PyTorch) that call raises an ImportError naming the command that
builds it. The plain references work without it.
"""

from __future__ import annotations

import torch

from crossgap_qdrant import _ext, suffix_block
from crossgap_qdrant.suffix_block import (  # noqa: F401  (the references beside their ops)
    suffix_block_backward_reference,
    suffix_block_forward_reference,
)

COSINE_EPS = 1e-8

_registered = False


def require_library() -> None:
    """Loads torch.ops.crossgap.* and registers their Python parts (fake kernels, autograd) once.

    Raises:
        ImportError: the compiled library is missing or unloadable; the message names the rebuild command.
    """
    global _registered
    if _registered and _ext.is_loaded():
        return
    _ext.load_library()
    if not _registered:
        _register_python_parts()
        _registered = True


# --------------------------------------------------------------------------------------------- cosine_loss
def cosine_loss(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample loss ``1 - cos(y[b], target[b])``, differentiable in ``y``.

    Args:
        y: [B, E] float32/float64/bfloat16/float16, unnormalised encoder outputs.
        target: [B, E] floating, the targets (normally unit vectors); receives no gradient.

    Returns:
        [B] float32 (float64 when ``y`` is float64).
    """
    require_library()
    return torch.ops.crossgap.cosine_loss(y, target)


def cosine_loss_backward(grad_loss: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Gradient of ``cosine_loss`` in ``y``: grad_loss [B] float32/float64, y and target [B, E] -> [B, E]."""
    require_library()
    return torch.ops.crossgap.cosine_loss_backward(grad_loss, y, target)


def cosine_loss_reference(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch ``cosine_loss``: norms clamped at 1e-8, accumulation in float32/float64."""
    acc = torch.float64 if y.dtype == torch.float64 else torch.float32
    y32 = y.to(acc)
    t32 = target.to(acc)
    ny = y32.norm(dim=-1).clamp_min(COSINE_EPS)
    nt = t32.norm(dim=-1).clamp_min(COSINE_EPS)
    return 1 - (y32 * t32).sum(-1) / (ny * nt)


# ---------------------------------------------------------------------------------------------- adamw_step
def adamw_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: torch.Tensor,
    active: torch.Tensor,
    *,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
) -> None:
    """One in-place AdamW step per active sample, each with its own step count.

    Args:
        param, grad, exp_avg, exp_avg_sq: [B, ...] float32/float64, one optimisation problem per row.
        step: [B] int64 per-sample step counts; incremented where ``active``.
        active: [B] bool; inactive rows (and their step counts) are left bit-identical.
    """
    require_library()
    torch.ops.crossgap.adamw_step(
        param, grad, exp_avg, exp_avg_sq, step, active, lr, beta1, beta2, eps, weight_decay
    )


def adamw_step_reference(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: torch.Tensor,
    active: torch.Tensor,
    *,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
) -> None:
    """Plain PyTorch ``adamw_step``: torch.optim.AdamW's single-tensor update applied row by row."""
    for b in range(param.shape[0]):
        if not bool(active[b]):
            continue
        step[b] += 1
        t = int(step[b])
        p, g, m, v = param[b], grad[b], exp_avg[b], exp_avg_sq[b]
        p.mul_(1 - lr * weight_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        step_size = lr / (1 - beta1**t)
        denom = (v.sqrt() / (1 - beta2**t) ** 0.5).add_(eps)
        p.addcdiv_(m, denom, value=-step_size)


# -------------------------------------------------------------------------------------------- suffix_block
def has_suffix_block(device: torch.device | str = "cpu") -> bool:
    """True when the compiled library has the suffix-block kernels for ``device`` (older builds have not)."""
    try:
        require_library()
    except ImportError:
        return False
    key = torch.device(device).type.upper()
    return all(_has_kernel(f"crossgap::{op}", key) for op in ("suffix_block_forward", "suffix_block_backward"))


def suffix_block_forward(x, prefix_k, prefix_v, mask_bias, params, ln_1_eps, ln_2_eps, activation):
    """One residual block over a cached suffix, keeping what its backward needs (differentiable in x).

    Args:
        x: [B, S, W] float32/float64/bfloat16; prefix_k, prefix_v: [H, P, W/H] the block's prefix cache.
        mask_bias: [S, P + S] float, 0 where a query sees a key, -inf elsewhere.
        params: the block's 12 tensors in :func:`crossgap_qdrant.suffix_block.block_params` order.
        ln_1_eps, ln_2_eps: layer-norm eps; activation: "gelu", "gelu_tanh" or "quick_gelu".

    Returns:
        out [B, S, W] and the saved x1 [B, S, W], qkv [B, S, 3W], probs [B, H, S, P+S], u [B, S, F],
        stats [B, S, 4] (see csrc/suffix_block/suffix_block.h).
    """
    require_library()
    return torch.ops.crossgap.suffix_block_forward(x, prefix_k, prefix_v, mask_bias, params, ln_1_eps, ln_2_eps,
                                                   activation)


def suffix_block_backward(grad_out, x, x1, qkv, probs, u, stats, prefix_k, prefix_v, params, activation):
    """Gradient [B, S, W] in the block's input x from grad_out [B, S, W] and the forward's saved outputs."""
    require_library()
    return torch.ops.crossgap.suffix_block_backward(grad_out, x, x1, qkv, probs, u, stats, prefix_k, prefix_v,
                                                    params, activation)


# -------------------------------------------------------------------------------------------- few_rows
def few_rows_product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` for x [M, K] and weight [N, K] float32 on CPU, reading the weight once (not
    differentiable: the suffix-block ops call it inside their own backward). See csrc/few_rows/few_rows.h."""
    require_library()
    return torch.ops.crossgap.few_rows_product(x, weight)


def few_rows_product_backward(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``grad @ weight`` for grad [M, N] and weight [N, K] float32 on CPU, reading the weight once."""
    require_library()
    return torch.ops.crossgap.few_rows_product_backward(grad, weight)


def few_rows_isa(cap: str | None = None) -> str:
    """The instruction set the few-rows kernels use: "avx512", "avx2" or "baseline" (the widest the CPU runs).
    ``cap`` switches them to that one for this process, e.g. to time AVX2 on an AVX-512 CPU; it must be one the
    CPU runs (RuntimeError naming those otherwise)."""
    require_library()
    return torch.ops.crossgap.few_rows_isa(cap or "")


def few_rows_product_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch ``few_rows_product``."""
    return x @ weight.T


def few_rows_product_backward_reference(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch ``few_rows_product_backward``."""
    return grad @ weight


# ------------------------------------------------------------------ Python parts of the compiled ops
def _has_kernel(op: str, dispatch_key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(op, dispatch_key)


def _cosine_loss_fake(y, target):
    torch._check(y.dim() == 2, lambda: f"cosine_loss: y must be 2-D [B, E], got {tuple(y.shape)}")
    torch._check(y.shape == target.shape, lambda: "cosine_loss: target shape does not match y shape")
    dtype = torch.float64 if y.dtype == torch.float64 else torch.float32
    return y.new_empty((y.shape[0],), dtype=dtype)


def _cosine_loss_backward_fake(grad_loss, y, target):
    return torch.empty_like(y, memory_format=torch.contiguous_format)


def _cosine_loss_setup_context(ctx, inputs, output):
    y, target = inputs
    ctx.save_for_backward(y, target)


def _cosine_loss_backward(ctx, grad_loss):
    y, target = ctx.saved_tensors
    grad_y = None
    if ctx.needs_input_grad[0]:
        grad_y = torch.ops.crossgap.cosine_loss_backward(grad_loss, y, target)
    return grad_y, None


def _adamw_step_fake(param, grad, exp_avg, exp_avg_sq, step, active, lr, beta1, beta2, eps, weight_decay):
    return None


def _few_rows_product_fake(x, weight):
    return x.new_empty((x.shape[0], weight.shape[0]))


def _few_rows_product_backward_fake(grad, weight):
    return grad.new_empty((grad.shape[0], weight.shape[1]))


def _register_python_parts() -> None:
    """Fake kernels (torch.compile, opcheck) and autograd; the ops must be loaded first."""
    torch.library.register_fake("crossgap::cosine_loss", _cosine_loss_fake)
    torch.library.register_fake("crossgap::cosine_loss_backward", _cosine_loss_backward_fake)
    torch.library.register_autograd(
        "crossgap::cosine_loss", _cosine_loss_backward, setup_context=_cosine_loss_setup_context
    )
    torch.library.register_fake("crossgap::adamw_step", _adamw_step_fake)
    if _has_kernel("crossgap::few_rows_product", "CPU"):
        torch.library.register_fake("crossgap::few_rows_product", _few_rows_product_fake)
        torch.library.register_fake("crossgap::few_rows_product_backward", _few_rows_product_backward_fake)
    if _has_kernel("crossgap::suffix_block_forward", "CPU"):
        suffix_block.register_python_parts()
