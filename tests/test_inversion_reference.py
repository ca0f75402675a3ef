"""OTI/OVI against the published algorithm (crossgap_qdrant.inversion.reference), on tiny random models.

Exactness is checked on well-conditioned problems: targets that the tower can reach (features of hidden
tokens), as real CLIP features nearly are. Once the loss reaches float noise, AdamW keeps taking lr-sized
steps driven by rounding, and the published algorithm itself then moves by ~1e-3 under a 1e-7 change of its
initial tokens; the tests check that the chosen cases are not in that regime before comparing.
"""

import pytest
import torch
import torch.nn.functional as F

from crossgap_qdrant.inversion import (
    OTIConfig,
    OVIConfig,
    initial_tokens,
    oti_invert,
    oti_invert_reference,
    ovi_invert,
    ovi_invert_reference,
)
from crossgap_qdrant.inversion.text_suffix import CachedTemplateTextEncoder
from crossgap_qdrant.models import UnsupportedModelError
from tests.support.inversion_targets import assert_stable_reference, reachable_image_targets, reachable_text_targets


@pytest.mark.parametrize("template,r", [("a photo of {}", 1), ("a photo of {}", 2), ("a photo of {}.", 1),
                                        ("a photo of {}.", 2)])


def test_oti_equals_published_algorithm_after_full_budget(tiny_clip, template, r):
    model, _, tok = tiny_clip
    targets = reachable_text_targets(model, tok, template, r, n=6, seed=r)
    cfg = OTIConfig(template=template, num_tokens=r, batch_size=4)  # 150 steps; a partial last batch
    init = initial_tokens(6, r, 48, cfg.init_std, cfg.seed)
    ref = assert_stable_reference(
        lambda t, c, i: oti_invert_reference(tiny_clip, t, c, init_tokens=i), init, targets, cfg)
    ours = oti_invert(tiny_clip, targets, cfg, progress=False)
    assert (ours.features - ref.features).abs().max() <= 1e-4
    assert (ours.tokens - ref.tokens).abs().max() <= 1e-3
    torch.testing.assert_close(ours.loss, ref.loss, rtol=0, atol=1e-5)
    assert torch.equal(ours.steps, torch.full((6,), 150))
    torch.testing.assert_close(ours.features.norm(dim=1), torch.ones(6))


def test_oti_short_run_equals_reference_on_random_targets(tiny_clip):
    model, _, tok = tiny_clip
    targets = F.normalize(torch.randn(5, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    cfg = OTIConfig(steps=30, batch_size=5, num_tokens=2)
    ref = oti_invert_reference(tiny_clip, targets, cfg)
    ours = oti_invert(tiny_clip, targets, cfg, progress=False)
    assert (ours.features - ref.features).abs().max() <= 1e-5


def test_oti_bidirectional_tower_takes_full_sequence(tiny_bidir):
    model, _, tok = tiny_bidir
    targets = reachable_text_targets(model, tok, "a photo of {}", 1, n=4, seed=3)
    cfg = OTIConfig(steps=60, batch_size=4)
    ref = oti_invert_reference(tiny_bidir, targets, cfg)
    ours = oti_invert(tiny_bidir, targets, cfg, progress=False)
    assert (ours.features - ref.features).abs().max() <= 1e-4
    with pytest.raises(UnsupportedModelError, match="not causal"):
        CachedTemplateTextEncoder(model, tok, "a photo of {}", 1, torch.float32)


@pytest.mark.parametrize("r", [1, 2, 4])
def test_ovi_equals_published_algorithm_after_full_budget(tiny_clip, r):
    model, _, _ = tiny_clip
    targets = reachable_image_targets(model, r, n=6, seed=1)
    cfg = OVIConfig(num_tokens=r, batch_size=4)  # 1000 steps
    init = initial_tokens(6, r, 64, cfg.init_std, cfg.seed)
    ref = assert_stable_reference(lambda t, c, i: ovi_invert_reference(tiny_clip, t, c, init_tokens=i),
                                   init, targets, cfg)
    ours = ovi_invert(tiny_clip, targets, cfg, progress=False)
    assert (ours.features - ref.features).abs().max() <= 1e-4
    assert ours.tokens.shape == (6, r, 64)
