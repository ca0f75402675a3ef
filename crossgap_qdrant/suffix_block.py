"""The fused residual block of a cached text suffix (torch.ops.crossgap.suffix_block_*): its plain-PyTorch
reference, the parameter order the op takes, and the op's fake kernels and autograd.

The op runs one open_clip ResidualAttentionBlock over the S suffix positions of
:class:`~crossgap_qdrant.inversion.text_suffix.CachedTemplateTextEncoder`, attending to the block's cached prefix
keys/values, and returns what its backward needs; the backward gives only the gradient in the block's input
(frozen weights). csrc/suffix_block/suffix_block.h documents the arithmetic and every shape.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")


def activation_name(module: nn.Module) -> str | None:
    """The op's name for an MLP activation module (GELU, tanh GELU, QuickGELU), or None for any other."""
    if isinstance(module, nn.GELU):
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(module.approximate)
    if type(module).__name__ == "QuickGELU":
        return "quick_gelu"
    return None


def block_params(block: nn.Module) -> list[torch.Tensor] | None:
    """The 12 tensors of an open_clip ResidualAttentionBlock in the op's order, or None when one is missing.

    Returns:
        [ln_1 weight, ln_1 bias, in_proj weight [3W, W], in_proj bias, out_proj weight [W, W], out_proj bias,
        ln_2 weight, ln_2 bias, c_fc weight [F, W], c_fc bias, c_proj weight [W, F], c_proj bias], or None
        when a bias or layer-norm affine is absent (the op needs all twelve).
    """
    attn, mlp = block.attn, block.mlp
    params = [block.ln_1.weight, block.ln_1.bias, attn.in_proj_weight, attn.in_proj_bias,
              attn.out_proj.weight, attn.out_proj.bias, block.ln_2.weight, block.ln_2.bias,
              mlp[0].weight, mlp[0].bias, mlp[2].weight, mlp[2].bias]
    if any(p is None for p in params):
        return None
    return [p.detach() for p in params]


def _act(u: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "gelu":
        return F.gelu(u)
    if activation == "gelu_tanh":
        return F.gelu(u, approximate="tanh")
    if activation == "quick_gelu":
        return u * torch.sigmoid(1.702 * u)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def _stats(x: torch.Tensor, eps: float, acc: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.to(acc)
    return x.mean(-1), (x.var(-1, unbiased=False) + eps).rsqrt()


def suffix_block_forward_reference(
    x: torch.Tensor,
    prefix_k: torch.Tensor,
    prefix_v: torch.Tensor,
    mask_bias: torch.Tensor,
    params: list[torch.Tensor],
    ln_1_eps: float,
    ln_2_eps: float,
    activation: str,
) -> tuple[torch.Tensor, ...]:
    """Plain PyTorch ``suffix_block_forward`` (differentiable in every input).

    Args:
        x: [B, S, W] suffix activations; prefix_k, prefix_v: [H, P, D] with H * D = W.
        mask_bias: [S, P + S], 0 where a query sees a key, -inf elsewhere.
        params: the 12 tensors of :func:`block_params`.
        ln_1_eps, ln_2_eps: the layer norms' eps; activation: one of :data:`ACTIVATIONS`.

    Returns:
        out [B, S, W], x1 [B, S, W], qkv [B, S, 3W], probs [B, H, S, P+S] (float32, float64 for float64 x),
        u [B, S, F], stats [B, S, 4] (mean and rstd of LN_1, then of LN_2).
    """
    ln1_w, ln1_b, in_w, in_b, out_w, out_b, ln2_w, ln2_b, fc_w, fc_b, proj_w, proj_b = params
    b, s, w = x.shape
    heads, _, d = prefix_k.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    qkv = F.linear(F.layer_norm(x, (w,), ln1_w, ln1_b, ln_1_eps), in_w, in_b)
    q, k, v = (t.reshape(b, s, heads, d).transpose(1, 2) for t in qkv.split(w, dim=-1))  # [B, H, S, D]
    keys = torch.cat([prefix_k.expand(b, -1, -1, -1), k], dim=2).to(acc)  # [B, H, P+S, D]
    values = torch.cat([prefix_v.expand(b, -1, -1, -1), v], dim=2).to(acc)
    scores = (q.to(acc) @ keys.transpose(-1, -2)) * d**-0.5 + mask_bias.to(acc)
    probs = scores.softmax(dim=-1)
    attn = (probs @ values).to(x.dtype).transpose(1, 2).reshape(b, s, w)
    x1 = x + F.linear(attn, out_w, out_b)
    u = F.linear(F.layer_norm(x1, (w,), ln2_w, ln2_b, ln_2_eps), fc_w, fc_b)
    out = x1 + F.linear(_act(u, activation), proj_w, proj_b)
    stats = torch.stack([*_stats(x, ln_1_eps, acc), *_stats(x1, ln_2_eps, acc)], dim=-1)
    return out, x1, qkv, probs, u, stats


def suffix_block_backward_reference(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    prefix_k: torch.Tensor,
    prefix_v: torch.Tensor,
    mask_bias: torch.Tensor,
    params: list[torch.Tensor],
    ln_1_eps: float,
    ln_2_eps: float,
    activation: str,
) -> torch.Tensor:
    """d(out . grad_out)/dx of :func:`suffix_block_forward_reference` by autograd: grad_out, x [B, S, W]."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        out = suffix_block_forward_reference(xg, prefix_k, prefix_v, mask_bias, params, ln_1_eps, ln_2_eps,
                                             activation)[0]
        (grad,) = torch.autograd.grad(out, xg, grad_out)
    return grad


# ------------------------------------------------------------------ Python parts of the compiled op
def _forward_fake(x, prefix_k, prefix_v, mask_bias, params, ln_1_eps, ln_2_eps, activation):
    torch._check(x.dim() == 3, lambda: f"suffix_block_forward: x must be 3-D [B, S, W], got {tuple(x.shape)}")
    torch._check(prefix_k.dim() == 3, lambda: "suffix_block_forward: prefix_k must be 3-D [H, P, D]")
    torch._check(len(params) == 12, lambda: "suffix_block_forward: params must hold 12 tensors")
    b, s, w = x.shape
    heads, p, _ = prefix_k.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    f = params[8].shape[0]
    return (x.new_empty(b, s, w), x.new_empty(b, s, w), x.new_empty(b, s, 3 * w),
            x.new_empty(b, heads, s, p + s, dtype=acc), x.new_empty(b, s, f), x.new_empty(b, s, 4, dtype=acc))


def _backward_fake(grad_out, x, x1, qkv, probs, u, stats, prefix_k, prefix_v, params, activation):
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    x, prefix_k, prefix_v, _, params, _, _, activation = inputs
    _, x1, qkv, probs, u, stats = output
    ctx.mark_non_differentiable(x1, qkv, probs, u, stats)
    ctx.save_for_backward(x, x1, qkv, probs, u, stats, prefix_k, prefix_v, *params)
    ctx.activation = activation


def _backward(ctx, grad_out, *unused):
    needs = [any(n) if isinstance(n, (list, tuple)) else n for n in ctx.needs_input_grad[1:]]
    if any(needs):
        raise RuntimeError("suffix_block_forward gives gradients in x only; detach the prefix and the weights")
    x, x1, qkv, probs, u, stats, prefix_k, prefix_v, *params = ctx.saved_tensors
    grad_x = torch.ops.crossgap.suffix_block_backward(grad_out.contiguous(), x, x1, qkv, probs, u, stats,
                                                      prefix_k, prefix_v, params, ctx.activation)
    return grad_x, None, None, None, [None] * len(params), None, None, None


def register_python_parts() -> None:
    """Fake kernels and autograd of the suffix-block ops; the compiled library must be loaded first."""
    torch.library.register_fake("crossgap::suffix_block_forward", _forward_fake)
    torch.library.register_fake("crossgap::suffix_block_backward", _backward_fake)
    torch.library.register_autograd("crossgap::suffix_block_forward", _backward, setup_context=_setup_context)
