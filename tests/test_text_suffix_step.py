"""The hand-written OTI step (crossgap_qdrant.inversion.text_suffix_step) against the published forward and
its autograd gradient."""

import pytest
import torch
import torch.nn.functional as F

from crossgap_qdrant.inversion.reference import encode_text_with_pseudo_tokens, template_token_ids
from crossgap_qdrant.inversion.text_suffix import CachedTemplateTextEncoder
from crossgap_qdrant.inversion.text_suffix_step import SuffixStep
from crossgap_qdrant.models import load_model, register_model_config
from tests.support.tiny_models import TINY_CLIP


@pytest.mark.parametrize("quick_gelu", [False, True])
@pytest.mark.parametrize("r, template", [(1, "a photo of {}"), (2, "a photo of {}.")])
def test_handwritten_step_equals_the_published_forward_and_its_gradient(tiny_clip, quick_gelu, r, template):
    if quick_gelu:
        register_model_config("test-tiny-quickgelu", {**TINY_CLIP, "quick_gelu": True})
        torch.manual_seed(3)
        model, _, tok = load_model("test-tiny-quickgelu", device="cpu", allow_random=True)
        assert type(model.transformer.resblocks[0].mlp[1]).__name__ == "QuickGELU"
    else:
        model, _, tok = tiny_clip
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randn(5, r, 48, generator=gen) * 0.3
    targets = F.normalize(torch.randn(5, 32, generator=gen), dim=-1)
    loss, grad = SuffixStep(CachedTemplateTextEncoder(model, tok, template, r, torch.float32))(tokens, targets, 0.2)
    ids, positions = template_token_ids(tok, template, r)
    p = tokens.clone().requires_grad_(True)
    published = 1 - F.cosine_similarity(encode_text_with_pseudo_tokens(model, ids, positions, p), targets)
    (published.sum() * 0.2).backward()
    torch.testing.assert_close(loss, published.detach(), atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(grad, p.grad, rtol=1e-4, atol=2e-6 * p.grad.abs().max().item())
