"""Forward of open_clip's ResidualAttentionBlock on contiguous [B, N, W] activations, for frozen towers.

nn.MultiheadAttention (batch_first) transposes its input before the in-projection; for bfloat16 on CPU,
PyTorch then runs that projection as a batched matmul against a weight copied once per position, which
costs more than the whole block. Projecting the contiguous activations directly is the same arithmetic
without the copies.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossgap_qdrant.models.towers import UnsupportedModelError


def check_block(block: nn.Module) -> None:
    """Raises UnsupportedModelError unless ``block`` is a self-attention ResidualAttentionBlock."""
    attn = getattr(block, "attn", None)
    if not isinstance(attn, nn.MultiheadAttention):
        raise UnsupportedModelError(f"transformer block {type(block).__name__} has no nn.MultiheadAttention")
    if not attn._qkv_same_embed_dim or hasattr(block, "ln_1_kv"):
        raise UnsupportedModelError("attention with separate q/k/v projections is not supported")
    for name in ("ln_1", "ln_2", "mlp"):
        if not hasattr(block, name):
            raise UnsupportedModelError(f"transformer block {type(block).__name__} has no {name}")


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, W] -> [B, H, N, W/H]."""
    b, n, w = t.shape
    return t.view(b, n, heads, w // heads).transpose(1, 2)


def qkv(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-head queries, keys and values of ``block`` for normalised activations x [B, N, W]."""
    attn = block.attn
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    return split_heads(q, attn.num_heads), split_heads(k, attn.num_heads), split_heads(v, attn.num_heads)


def merge_heads_and_project(block: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """[B, H, N, W/H] attention output -> [B, N, W] after the block's output projection."""
    b, h, n, d = out.shape
    out = out.transpose(1, 2).reshape(b, n, h * d)
    return F.linear(out, block.attn.out_proj.weight, block.attn.out_proj.bias)


def mlp_residual(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v over [B, H, N, d], the softmax in float32.

    Plain matmuls: for ViT-length sequences on CPU, PyTorch's fused flash-attention backward is several times
    slower than the unfused one.
    """
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    scores = scores.float() if bias is None else scores.float() + bias
    return scores.softmax(dim=-1).to(v.dtype) @ v


def block_forward(block: nn.Module, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
    """ResidualAttentionBlock.forward for self-attention on x [B, N, W] (attn_bias: additive [N, N])."""
    q, k, v = qkv(block, block.ln_1(x))
    out = attention(q, k, v, attn_bias)
    x = x + block.ls_1(merge_heads_and_project(block, out))
    return mlp_residual(block, x)
