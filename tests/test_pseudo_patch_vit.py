"""The pseudo-patch ViT forward (crossgap_qdrant.inversion.pseudo_patch_vit) against the tower's own forward."""

import pytest
import torch
import torch.nn.functional as F

from crossgap_qdrant.inversion.pseudo_patch_vit import PseudoPatchImageEncoder
from crossgap_qdrant.inversion.reference import encode_image_with_pseudo_tokens


@pytest.mark.parametrize("r", [1, 3])
def test_patch_encoder_equals_tower_forward(tiny_clip, r):
    model, _, _ = tiny_clip
    p1 = (torch.randn(5, r, 64) * 0.3).requires_grad_(True)
    p2 = p1.detach().clone().requires_grad_(True)
    a = PseudoPatchImageEncoder(model, torch.float32)(p1)
    b = encode_image_with_pseudo_tokens(model, p2)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6)
    a.square().sum().backward()
    b.square().sum().backward()
    # The two forwards order their sums differently: rounding is relative to the gradient's scale.
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-4, atol=2e-6 * p2.grad.abs().max().item())
    low = PseudoPatchImageEncoder(model, torch.bfloat16)(p1.detach())
    assert low.dtype == torch.bfloat16
    assert F.cosine_similarity(low.float(), b.detach()).min() > 0.99
