"""Exact fast forward of a causal text tower for a fixed template with pseudo tokens.

In a causal text tower pooled at one position, the positions before the first placeholder do not depend on
the pseudo tokens and the positions after the pooled one never reach the output. The forward therefore only
has to run the positions ``first placeholder .. pooled position`` (2 of 77 for "a photo of {}"), attending to
key/value pairs of the prefix that are computed once per template. This is the same function as the full
77-token forward, not an approximation; tests compare the two.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from crossgap_qdrant.inversion.blocks import check_block, merge_heads_and_project, mlp_residual, qkv
from crossgap_qdrant.inversion.reference import template_token_ids
from crossgap_qdrant.models.towers import TextTower, UnsupportedModelError, text_tower


def _additive(blocked: torch.Tensor) -> torch.Tensor:
    """Float32 attention bias: -inf where ``blocked``, 0 elsewhere."""
    return torch.zeros(blocked.shape, device=blocked.device).masked_fill(blocked, float("-inf"))


def pooled_position(tower: TextTower, ids: torch.Tensor) -> int:
    """Index of the sequence position whose output the tower pools."""
    if tower.pool_type == "argmax":
        return int(ids.argmax())
    if tower.pool_type == "last":
        return ids.shape[0] - 1
    if tower.pool_type == "eos" and tower.eos_id is not None:
        hits = (ids == tower.eos_id).nonzero()
        if hits.numel():
            return int(hits[0])
    raise UnsupportedModelError(f"text pool type {tower.pool_type!r} does not pool a single position")


class CachedTemplateTextEncoder(nn.Module):
    """Text features of ``template`` with R pseudo tokens, computed over the suffix positions only.

    Args:
        model: an open_clip CLIP/CustomTextCLIP whose text tower is causal (attn_mask set) and built from
            ResidualAttentionBlocks with nn.MultiheadAttention.
        tokenizer: the model's tokenizer.
        template: a sentence with one "{}", e.g. "a photo of {}".
        num_tokens: R, placeholders put in place of "{}".
        dtype: compute dtype; other than the model's, a frozen copy of the tower is cast once.

    Call with pseudo tokens [B, R, W] (any float dtype, differentiable) to get features [B, E] in ``dtype``.
    """

    def __init__(self, model: nn.Module, tokenizer, template: str, num_tokens: int, dtype: torch.dtype):
        super().__init__()
        tower = text_tower(model, require_causal=True)
        blocks = list(tower.transformer.resblocks)
        for block in blocks:
            check_block(block)
        if not getattr(tower.transformer, "batch_first", True):
            raise UnsupportedModelError("sequence-first text transformers are not supported")
        ids, positions = template_token_ids(tokenizer, template, num_tokens)
        pool = pooled_position(tower, ids)
        first = int(positions[0])
        if pool < int(positions[-1]):
            raise UnsupportedModelError("the pooled position precedes the placeholders")
        device = tower.positional_embedding.device

        parts = nn.ModuleDict(
            {"blocks": nn.ModuleList(blocks), "ln_final": tower.ln_final}
        )
        proj = tower.text_projection
        if isinstance(proj, nn.Linear):
            parts["proj"] = proj
        # A copy in the step dtype when any weight differs (open_clip's mixed "bf16"/"fp16" loading casts the
        # matrices but keeps layer norms and embeddings in float32).
        if any(p.dtype != dtype for p in parts.parameters()):
            parts = copy.deepcopy(parts).to(dtype)
        if proj is not None and not isinstance(proj, nn.Linear) and proj.dtype != dtype:
            proj = proj.detach().to(dtype)
        parts.requires_grad_(False)
        self.parts = parts
        self.proj = proj if not isinstance(proj, nn.Linear) else None
        self.dtype = dtype

        with torch.no_grad():
            pos = tower.positional_embedding.to(dtype)
            emb = tower.token_embedding(ids.to(device)).to(dtype) + pos
            # The suffix starts with the R placeholder rows (pseudo token + this positional term, at call
            # time), followed by the template's constant rows up to the pooled position.
            self.suffix_len = pool + 1 - first  # positions run per step
            self.register_buffer("suffix_rest", emb[first + num_tokens : pool + 1].clone(), persistent=False)
            self.register_buffer("slot_pos", pos[positions.to(device)].clone(), persistent=False)
            self.prefix_kv = self._prefix_kv(emb[:first].unsqueeze(0), tower.attn_mask[:first, :first])
            s = pool + 1 - first
            # Suffix query i sits at position first + i: it sees the whole prefix and suffix keys 0..i.
            causal = torch.ones(s, s, dtype=torch.bool, device=device).tril()
            allowed = torch.cat([torch.ones(s, first, dtype=torch.bool, device=device), causal], 1)
            self.register_buffer("mask_bias", _additive(~allowed), persistent=False)

    def _attention(self, block, x, past_kv, mask_bias):
        """Multi-head attention of x's positions over the cached prefix and themselves.

        Written out rather than through scaled_dot_product_attention: with a handful of queries and keys,
        two small matmuls against the shared prefix beat a fused kernel that expands it per sample.
        """
        q, k, v = qkv(block, x)
        q = q * (q.shape[-1] ** -0.5)
        b, h, n, d = q.shape
        if n <= 8:  # a few suffix positions: pairwise products beat batched tiny matmuls
            scores = (q.unsqueeze(3) * k.unsqueeze(2)).sum(-1)  # [B, H, S, S]
        else:
            scores = q @ k.transpose(-1, -2)
        if past_kv is not None:
            pk, pv = past_kv  # [H, P, W/H], shared by every sample
            p = pk.shape[1]
            q_heads = q.transpose(0, 1).reshape(h, b * n, d)  # one matmul per head for the whole batch
            prefix_scores = (q_heads @ pk.transpose(-1, -2)).view(h, b, n, p).transpose(0, 1)
            scores = torch.cat([prefix_scores, scores], dim=-1)
        probs = (scores.float() + mask_bias).softmax(dim=-1).to(q.dtype)
        if past_kv is not None:
            prefix_probs = probs[..., :p].transpose(0, 1).reshape(h, b * n, p)
            out = (prefix_probs @ pv).view(h, b, n, d).transpose(0, 1)
            suffix_probs = probs[..., p:]
        else:
            out, suffix_probs = 0, probs
        if n <= 8:
            out = out + (suffix_probs.unsqueeze(-1) * v.unsqueeze(2)).sum(3)
        else:
            out = out + suffix_probs @ v
        return merge_heads_and_project(block, out), (k, v)

    def _prefix_kv(self, x: torch.Tensor, causal_mask: torch.Tensor) -> list:
        """Per-layer prefix keys and values [1, H, P, W/H]; the prefix itself is run causally."""
        kv = []
        mask_bias = _additive(causal_mask != 0 if causal_mask.dtype != torch.bool else ~causal_mask)
        for block in self.parts["blocks"]:
            h = block.ln_1(x)
            out, layer_kv = self._attention(block, h, None, mask_bias)
            kv.append(tuple(t[0] for t in layer_kv))  # [H, P, W/H]
            x = mlp_residual(block, x + block.ls_1(out))
        return kv

    def forward(self, pseudo_tokens: torch.Tensor) -> torch.Tensor:
        b = pseudo_tokens.shape[0]
        x = torch.cat([pseudo_tokens.to(self.dtype) + self.slot_pos, self.suffix_rest.expand(b, -1, -1)], dim=1)
        for block, past in zip(self.parts["blocks"], self.prefix_kv):
            out, _ = self._attention(block, block.ln_1(x), past, self.mask_bias)
            x = mlp_residual(block, x + block.ls_1(out))
        pooled = self.parts["ln_final"](x[:, -1])
        if "proj" in self.parts:
            return self.parts["proj"](pooled)
        return pooled @ self.proj if self.proj is not None else pooled
