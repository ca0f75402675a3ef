"""Inversion problems the tests can trust: targets a tower can reach, and a check that a case is well-conditioned."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossgap_qdrant.inversion.reference import (
    encode_image_with_pseudo_tokens,
    encode_text_with_pseudo_tokens,
    template_token_ids,
)


def reachable_text_targets(model, tokenizer, template, r, n, seed):
    """[n, E] unit text features of ``template`` filled with hidden pseudo words: targets OTI can reach."""
    ids, pos = template_token_ids(tokenizer, template, r)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        hidden = torch.randn(n, r, model.token_embedding.embedding_dim if hasattr(model, "token_embedding")
                             else model.text.token_embedding.embedding_dim, generator=gen) * 0.5
        return F.normalize(encode_text_with_pseudo_tokens(model, ids, pos, hidden), dim=-1)


def reachable_image_targets(model, r, n, seed):
    """[n, E] unit image features of hidden pseudo patches: targets OVI can reach."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        hidden = torch.randn(n, r, model.visual.class_embedding.shape[-1], generator=gen) * 0.5
        return F.normalize(encode_image_with_pseudo_tokens(model, hidden), dim=-1)


def assert_stable_reference(run, init, targets, cfg, scale=1e-7, tol=1e-5):
    """``run(targets, cfg, init)``, after checking that a 1e-7 change of the initial tokens moves it by < tol."""
    a = run(targets, cfg, init)
    b = run(targets, cfg, init * (1 + scale))
    assert (a.features - b.features).abs().max() < tol, "test case is ill-conditioned"
    return a
