"""The entry points oti_invert/ovi_invert (crossgap_qdrant.inversion.invert): input checks, precision, the handle."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from crossgap_qdrant.inversion import (
    OTIConfig,
    OVIConfig,
    StoppingRule,
    initial_tokens,
    oti_invert,
    oti_invert_reference,
    ovi_invert,
)
from crossgap_qdrant.models import load_model
from tests.support.inversion_targets import reachable_image_targets, reachable_text_targets


def test_oti_result_does_not_depend_on_prefix_cache_or_explicit_init(tiny_clip):
    model, _, tok = tiny_clip
    targets = reachable_text_targets(model, tok, "a photo of {}", 1, n=3, seed=5)
    cfg = OTIConfig(steps=40, batch_size=3)
    init = initial_tokens(3, 1, 48, cfg.init_std, cfg.seed)
    a = oti_invert(tiny_clip, targets, cfg, progress=False)
    b = oti_invert(tiny_clip, targets, dataclasses.replace(cfg, prefix_cache=False), init_tokens=init,
                   progress=False)
    assert (a.features - b.features).abs().max() <= 1e-5
    c = oti_invert(tiny_clip, targets, dataclasses.replace(cfg, seed=1), progress=False)
    assert (a.tokens - c.tokens).abs().max() > 1e-3  # another seed, another start


def test_oti_bf16_close_to_fp32(tiny_clip):
    model, _, tok = tiny_clip
    targets = reachable_text_targets(model, tok, "a photo of {}", 1, n=8, seed=7)
    fp32 = oti_invert(tiny_clip, targets, OTIConfig(batch_size=8), progress=False)
    bf16 = oti_invert(tiny_clip, targets, OTIConfig(batch_size=8, precision="bf16"), progress=False)
    cos32 = 1 - fp32.loss
    cos16 = 1 - bf16.loss
    assert (cos32 - cos16).abs().max() < 0.02
    assert bf16.features.dtype == torch.float32


def test_oti_rejects_bad_input(tiny_clip):
    model, _, tok = tiny_clip
    with pytest.raises(ValueError, match=r"shape \[N, 32\]"):
        oti_invert(tiny_clip, torch.randn(3, 31), OTIConfig(steps=1), progress=False)
    bad = torch.randn(3, 32)
    bad[1, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        oti_invert(tiny_clip, bad, OTIConfig(steps=1), progress=False)
    with pytest.raises(ValueError, match="exactly one"):
        oti_invert(tiny_clip, torch.randn(3, 32), OTIConfig(steps=1, template="a photo"), progress=False)
    with pytest.raises(ValueError, match="init_tokens must have shape"):
        oti_invert(tiny_clip, torch.randn(3, 32), OTIConfig(steps=1), init_tokens=torch.zeros(3, 2, 48),
                   progress=False)
    with pytest.raises(ValueError, match="fp16 is for CUDA"):
        oti_invert(tiny_clip, torch.randn(3, 32), OTIConfig(steps=1, precision="fp16"), progress=False)


def test_oti_and_ovi_take_features_of_any_finite_scale(tiny_clip):
    feats = F.normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(4)), dim=-1)
    cfg = OTIConfig(steps=4)
    plain = oti_invert(tiny_clip, feats, cfg, progress=False)
    by_handle = oti_invert(tiny_clip, feats * 1e38, cfg, progress=False)  # the norm of such rows overflows
    torch.testing.assert_close(by_handle.features, plain.features, atol=1e-6, rtol=1e-5)
    assert (by_handle.loss < 1).all()
    torch.testing.assert_close(oti_invert_reference(tiny_clip, feats, cfg).features, plain.features, atol=1e-5,
                               rtol=1e-5)
    ovi_cfg = OVIConfig(steps=3)
    torch.testing.assert_close(ovi_invert(tiny_clip, feats * 1e-30, ovi_cfg, progress=False).features,
                               ovi_invert(tiny_clip, feats, ovi_cfg, progress=False).features, atol=1e-6, rtol=1e-5)


def test_oti_empty_input(tiny_clip):
    model, _, tok = tiny_clip
    res = oti_invert(tiny_clip, torch.empty(0, 32), OTIConfig(steps=2), progress=False)
    assert res.features.shape == (0, 32) and res.tokens.shape == (0, 1, 48)


def test_ovi_bf16_and_stopping(tiny_clip):
    model, _, _ = tiny_clip
    targets = reachable_image_targets(model, 1, n=6, seed=2)
    cfg = OVIConfig(steps=150, num_tokens=1, batch_size=3)
    fp32 = ovi_invert(tiny_clip, targets, cfg, progress=False)
    bf16 = ovi_invert(tiny_clip, targets, dataclasses.replace(cfg, precision="bf16"), progress=False)
    assert ((1 - fp32.loss) - (1 - bf16.loss)).abs().max() < 0.02
    early = ovi_invert(tiny_clip, targets, dataclasses.replace(cfg, stopping=StoppingRule(target_loss=0.01)),
                       progress=False)
    assert (early.steps < 150).any() and (early.loss < 0.02).all()


def test_a_config_of_the_other_inversion_is_refused(tiny_clip):
    features = torch.randn(2, 32)
    with pytest.raises(TypeError, match="OTIConfig"):
        oti_invert(tiny_clip, features, OVIConfig(steps=1), progress=False)
    with pytest.raises(TypeError, match="OVIConfig"):
        ovi_invert(tiny_clip, features, OTIConfig(steps=1), progress=False)


def test_the_handle_takes_features_by_keyword(tiny_clip):
    features = torch.randn(2, 32)
    by_keyword = oti_invert(tiny_clip, image_features=features, config=OTIConfig(steps=2), progress=False)
    by_position = oti_invert(tiny_clip, features, OTIConfig(steps=2), progress=False)
    assert torch.equal(by_keyword.features, by_position.features)


def test_a_model_loaded_in_mixed_bf16_inverts_on_a_float32_copy():
    mixed = load_model("test-tiny-clip", device="cpu", allow_random=True, precision="bf16")
    assert {p.dtype for p in mixed.model.parameters()} == {torch.float32, torch.bfloat16}  # what makes it mixed
    features = torch.randn(3, 32)
    for invert, config in ((oti_invert, OTIConfig(steps=3)), (ovi_invert, OVIConfig(steps=3))):
        result = invert(mixed, features, config, progress=False)
        assert result.features.dtype == torch.float32 and torch.isfinite(result.features).all()
        assert torch.allclose(result.features.norm(dim=-1), torch.ones(3), atol=1e-5)
