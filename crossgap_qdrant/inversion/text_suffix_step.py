"""A hand-written forward and input-gradient pass of the cached text-tower suffix, for OTI steps.

At small batches an autograd step of :class:`~crossgap_qdrant.inversion.text_suffix.CachedTemplateTextEncoder`
spends much of its time building and walking a graph of several hundred small operations. This module runs the
same arithmetic directly: the forward keeps exactly the activations the backward needs, and the backward
computes only d(loss)/d(pseudo tokens) (no weight gradients), with the fused cosine-loss backward at the top.
Layer norm, GELU and softmax go through the same ATen forward/backward kernels autograd would call, so the
result equals the autograd step to float rounding; tests compare the two (loss values and token gradients).

When the compiled library has them, each residual block runs as one fused op pair
(``torch.ops.crossgap.suffix_block_forward`` / ``suffix_block_backward``, see :mod:`crossgap_qdrant.suffix_block`):
the same arithmetic without a few dozen small ATen calls per block. The ATen path below stays the reference the
fused one is tested against, and the fallback for libraries built without those ops.

Small matrices: at batch 1 a step is bound by reading the weights twice (forward, then backward) from memory,
not by arithmetic, and how fast BLAS reads a weight for a handful of rows depends on the CPU and on the form of
the product: with MKL, ``W @ x^T`` was the faster form on an AVX2 EPYC and half as fast as ``x @ W^T`` at two
rows on an AVX-512 Xeon. The ATen path here keeps the EPYC's choice (:func:`linear`); the fused ops send few
rows to their own kernels (csrc/few_rows), which read each weight once on either.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossgap_qdrant import ops
from crossgap_qdrant.inversion.text_suffix import CachedTemplateTextEncoder
from crossgap_qdrant.models.towers import UnsupportedModelError
from crossgap_qdrant.suffix_block import activation_name, block_params

# Below this many rows the transposed product form is faster (measured on AVX2 CPUs with MKL).
SMALL_ROWS = 8


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight^T + bias`` for x [M, K], weight [N, K] -> [M, N]."""
    if x.shape[0] <= SMALL_ROWS and x.device.type == "cpu":
        # x^T must be column-major: a row-major [K, M] operand (x itself a transposed view, as the output of
        # an earlier call here is) takes MKL's slow path, about 3x slower for these shapes.
        x = x.contiguous()
        if bias is None:
            return (weight @ x.T).T
        return torch.addmm(bias.unsqueeze(1), weight, x.T).T
    return F.linear(x, weight, bias)


def _activation(module: nn.Module):
    """(forward, backward(grad, u)) of an MLP activation module; backward returns d/du."""
    if isinstance(module, nn.GELU):
        approximate = module.approximate
        return (lambda u: F.gelu(u, approximate=approximate),
                lambda g, u: torch.ops.aten.gelu_backward(g, u, approximate=approximate))
    if type(module).__name__ == "QuickGELU":
        def quick_backward(g, u):
            s = torch.sigmoid(1.702 * u)
            return g * (s + 1.702 * u * s * (1 - s))

        return lambda u: u * torch.sigmoid(1.702 * u), quick_backward
    raise UnsupportedModelError(f"activation {type(module).__name__} has no hand-written backward")


def _check_parts(encoder: CachedTemplateTextEncoder) -> None:
    for block in encoder.parts["blocks"]:
        for name in ("ls_1", "ls_2"):
            if not isinstance(getattr(block, name), nn.Identity):
                raise UnsupportedModelError("layer scale is not supported by the hand-written step")
        mlp = block.mlp
        if not isinstance(mlp, nn.Sequential) or len(mlp) != 3 or not all(
            isinstance(mlp[i], nn.Linear) for i in (0, 2)
        ):
            raise UnsupportedModelError("the hand-written step needs an MLP of Linear, activation, Linear")
        _activation(mlp[1])
        for ln in (block.ln_1, block.ln_2):
            if not isinstance(ln, nn.LayerNorm):
                raise UnsupportedModelError(f"normalisation {type(ln).__name__} is not a LayerNorm")
    if not isinstance(encoder.parts["ln_final"], nn.LayerNorm):
        raise UnsupportedModelError("the final normalisation is not a LayerNorm")


def _layer_norm(x: torch.Tensor, ln: nn.LayerNorm):
    out, mean, rstd = torch.native_layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    return out, (x, mean, rstd)


def _layer_norm_backward(grad: torch.Tensor, saved, ln: nn.LayerNorm) -> torch.Tensor:
    x, mean, rstd = saved
    return torch.ops.aten.native_layer_norm_backward(
        grad, x, ln.normalized_shape, mean, rstd, ln.weight, ln.bias, [True, False, False]
    )[0]


class SuffixStep:
    """Loss and token gradient of one OTI step without autograd, on a :class:`CachedTemplateTextEncoder`.

    Args:
        encoder: the cached suffix encoder (its weights, prefix keys/values and masks are used as they are).
        fused: run each block as the fused suffix-block op pair (True), as ATen calls (False), or the first
            where the compiled library has the ops for the encoder's device and the blocks fit them (None).

    Raises:
        UnsupportedModelError: a block has layer scale, a non-LayerNorm normalisation or an activation
            other than GELU/QuickGELU; the caller then keeps the autograd step. Also when ``fused=True``
            and the fused ops cannot run this encoder.
    """

    def __init__(self, encoder: CachedTemplateTextEncoder, fused: bool | None = None):
        _check_parts(encoder)
        self.encoder = encoder
        self.dtype = encoder.dtype
        self.blocks = list(encoder.parts["blocks"])
        self.acts = [_activation(block.mlp[1]) for block in self.blocks]
        self.ln_final = encoder.parts["ln_final"]
        if "proj" in encoder.parts:
            lin = encoder.parts["proj"]
            self.proj_weight, self.proj_bias = lin.weight, lin.bias  # [E, W], [E]
        else:
            p = encoder.proj  # [W, E] or None
            self.proj_weight = None if p is None else p.t().contiguous()
            self.proj_bias = None
        self.num_tokens = encoder.slot_pos.shape[0]
        self.fused_blocks = None if fused is False else self._fused_blocks()
        if fused and self.fused_blocks is None:
            raise UnsupportedModelError("the fused suffix-block ops cannot run this encoder (or were not built)")
        # The ops read the prefix cache contiguous; the cache's head views are not, and would be copied per call.
        self.prefix_kv = [(k.contiguous(), v.contiguous()) for k, v in encoder.prefix_kv]

    def _fused_blocks(self) -> list[tuple] | None:
        """Per block (params, ln_1 eps, ln_2 eps, activation name) for the fused ops, or None when they cannot run."""
        if self.dtype not in (torch.float32, torch.float64, torch.bfloat16):
            return None
        if not ops.has_suffix_block(self.encoder.slot_pos.device):
            return None
        out = []
        for block in self.blocks:
            params, act = block_params(block), activation_name(block.mlp[1])
            if params is None or act is None or any(len(ln.normalized_shape) != 1 for ln in (block.ln_1, block.ln_2)):
                return None
            out.append((params, block.ln_1.eps, block.ln_2.eps, act))
        return out

    @torch.no_grad()
    def __call__(
        self, tokens: torch.Tensor, targets: torch.Tensor, grad_scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample loss and the gradient of ``grad_scale * loss.sum()`` in the tokens.

        Args:
            tokens: [B, R, W] float32 pseudo tokens.
            targets: [B, E] unit targets.
            grad_scale: factor of the summed loss whose gradient is returned (1/B for the batch mean).

        Returns:
            loss [B] float32 (1 - cos), grad [B, R, W] float32.
        """
        enc, dt = self.encoder, self.dtype
        b = tokens.shape[0]
        x = torch.cat([tokens.to(dt) + enc.slot_pos, enc.suffix_rest.expand(b, -1, -1)], dim=1)
        s, w = x.shape[1], x.shape[2]
        saved = []
        if self.fused_blocks is not None:
            forward = torch.ops.crossgap.suffix_block_forward.default
            for (pk, pv), (params, eps_1, eps_2, act) in zip(self.prefix_kv, self.fused_blocks):
                out = forward(x, pk, pv, enc.mask_bias, params, eps_1, eps_2, act)
                saved.append((x, *out[1:]))
                x = out[0]
        else:
            for block, (pk, pv), (act, _) in zip(self.blocks, enc.prefix_kv, self.acts):
                x, ctx = self._block_forward(block, x.reshape(b * s, w), pk, pv, act, b, s)
                x = x.view(b, s, w)
                saved.append(ctx)
        last = x[:, -1]
        pooled, ln_ctx = _layer_norm(last, self.ln_final)
        y = pooled if self.proj_weight is None else linear(pooled, self.proj_weight, self.proj_bias)
        loss = ops.cosine_loss(y, targets)
        dy = ops.cosine_loss_backward(torch.full_like(loss, grad_scale), y, targets)
        d_pooled = dy if self.proj_weight is None else dy @ self.proj_weight
        dx = torch.zeros(b, s, w, dtype=dt, device=x.device)
        dx[:, -1] = _layer_norm_backward(d_pooled.to(dt), ln_ctx, self.ln_final)
        if self.fused_blocks is not None:
            backward = torch.ops.crossgap.suffix_block_backward.default
            for (pk, pv), (params, _, _, act), ctx in zip(
                reversed(self.prefix_kv), reversed(self.fused_blocks), reversed(saved)
            ):
                dx = backward(dx, *ctx, pk, pv, params, act)
        else:
            dx = dx.view(b * s, w)
            for block, (pk, pv), (_, act_backward), ctx in zip(
                reversed(self.blocks), reversed(enc.prefix_kv), reversed(self.acts), reversed(saved)
            ):
                dx = self._block_backward(block, dx, pk, pv, act_backward, ctx, b, s)
        grad = dx.view(b, s, w)[:, : self.num_tokens].float()
        return loss, grad

    def _block_forward(self, block, x, pk, pv, act, b, s):
        """One residual block on x [B*S, W]; returns the output and what its backward needs."""
        attn = block.attn
        heads = attn.num_heads
        w = x.shape[1]
        d = w // heads
        h, ln1 = _layer_norm(x, block.ln_1)
        qkv = linear(h, attn.in_proj_weight, attn.in_proj_bias)  # [B*S, 3W]
        q, k, v = (t.reshape(b, s, heads, d).transpose(1, 2) for t in qkv.split(w, dim=1))  # [B, H, S, d]
        q = q * d**-0.5
        probs, out = self._attention(q, k, v, pk, pv, b, s)
        merged = out.transpose(1, 2).reshape(b * s, w)
        x1 = x + linear(merged, attn.out_proj.weight, attn.out_proj.bias)
        h2, ln2 = _layer_norm(x1, block.ln_2)
        u = linear(h2, block.mlp[0].weight, block.mlp[0].bias)
        x2 = x1 + linear(act(u), block.mlp[2].weight, block.mlp[2].bias)
        return x2, (ln1, q, k, v, probs, ln2, u)

    def _attention(self, q, k, v, pk, pv, b, s):
        """Scores over the prefix keys [H, P, d] and the suffix keys; returns float32 probs and the output."""
        heads, p, d = pk.shape
        q_heads = q.transpose(0, 1).reshape(heads, b * s, d)  # one matmul per head for the whole batch
        prefix = (q_heads @ pk.transpose(1, 2)).view(heads, b, s, p).transpose(0, 1)
        scores = torch.cat([prefix, q @ k.transpose(-1, -2)], dim=-1).float() + self.encoder.mask_bias
        probs = scores.softmax(dim=-1)
        low = probs.to(q.dtype)
        pre = low[..., :p].transpose(0, 1).reshape(heads, b * s, p)
        out = (pre @ pv).view(heads, b, s, d).transpose(0, 1) + low[..., p:] @ v
        return probs, out

    def _block_backward(self, block, dx, pk, pv, act_backward, ctx, b, s):
        """Gradient in the block's input [B*S, W] from the gradient in its output."""
        ln1, q, k, v, probs, ln2, u = ctx
        attn = block.attn
        heads, p, d = pk.shape
        w = dx.shape[1]
        # MLP branch: x2 = x1 + c_proj(act(c_fc(ln_2(x1))))
        du = act_backward(dx @ block.mlp[2].weight, u)
        dx1 = dx + _layer_norm_backward(du @ block.mlp[0].weight, ln2, block.ln_2)
        # attention branch: x1 = x + out_proj(attention(ln_1(x)))
        d_out = (dx1 @ attn.out_proj.weight).view(b, s, heads, d).transpose(1, 2)  # [B, H, S, d]
        d_out_heads = d_out.transpose(0, 1).reshape(heads, b * s, d)
        d_prefix = (d_out_heads @ pv.transpose(1, 2)).view(heads, b, s, p).transpose(0, 1)
        d_probs = torch.cat([d_prefix, d_out @ v.transpose(-1, -2)], dim=-1).float()
        d_scores = torch._softmax_backward_data(d_probs, probs, -1, torch.float32).to(q.dtype)
        ds_prefix, ds_suffix = d_scores[..., :p], d_scores[..., p:]
        dv = probs[..., p:].to(q.dtype).transpose(-1, -2) @ d_out
        dk = ds_suffix.transpose(-1, -2) @ q
        ds_heads = ds_prefix.transpose(0, 1).reshape(heads, b * s, p)
        dq = ((ds_heads @ pk).view(heads, b, s, d).transpose(0, 1) + ds_suffix @ k) * d**-0.5
        d_qkv = torch.cat([t.transpose(1, 2).reshape(b * s, w) for t in (dq, dk, dv)], dim=1)
        return dx1 + _layer_norm_backward(d_qkv @ attn.in_proj_weight, ln1, block.ln_1)


def try_suffix_step(encoder) -> SuffixStep | None:
    """A :class:`SuffixStep` for ``encoder`` when it is a cached suffix encoder the step supports."""
    if not isinstance(encoder, CachedTemplateTextEncoder):
        return None
    try:
        return SuffixStep(encoder)
    except UnsupportedModelError:
        return None
