"""The exact prefix-cached text suffix forward (crossgap_qdrant.inversion.text_suffix) against the full forward."""

import pytest
import torch

from crossgap_qdrant.inversion.reference import encode_text_with_pseudo_tokens, template_token_ids
from crossgap_qdrant.inversion.text_suffix import CachedTemplateTextEncoder


@pytest.mark.parametrize("template", ["a photo of {}", "a photo of {}."])
@pytest.mark.parametrize("r", [1, 2])
def test_cached_text_encoder_equals_full_forward(tiny_clip, template, r):
    model, _, tok = tiny_clip
    ids, pos = template_token_ids(tok, template, r)
    enc = CachedTemplateTextEncoder(model, tok, template, r, torch.float32)
    p = torch.randn(5, r, 48) * 0.3
    torch.testing.assert_close(enc(p), encode_text_with_pseudo_tokens(model, ids, pos, p), rtol=1e-5, atol=2e-6)
    # only placeholder..EOT positions are run
    assert enc.suffix_len == int(ids.argmax()) - int(pos[0]) + 1


def test_cached_text_encoder_gradient_equals_full(tiny_clip):
    model, _, tok = tiny_clip
    ids, pos = template_token_ids(tok, "a photo of {}", 1)
    enc = CachedTemplateTextEncoder(model, tok, "a photo of {}", 1, torch.float32)
    p1 = (torch.randn(4, 1, 48) * 0.3).requires_grad_(True)
    p2 = p1.detach().clone().requires_grad_(True)
    enc(p1).square().sum().backward()
    encode_text_with_pseudo_tokens(model, ids, pos, p2).square().sum().backward()
    # The two forwards order their sums differently: rounding is relative to the gradient's scale.
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-4, atol=2e-6 * p2.grad.abs().max().item())
