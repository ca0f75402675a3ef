"""Cast copies of a tower: made once per (module, dtype), reused, never changing the module itself."""

import copy
import gc
import warnings
import weakref

import torch

from crossgap_qdrant.inversion import OVIConfig, SlowPrecisionWarning, ovi_invert
from crossgap_qdrant.inversion.pseudo_patch_vit import PseudoPatchImageEncoder
from crossgap_qdrant.models import ClipModel
from crossgap_qdrant.models import cast_copy as cache
from crossgap_qdrant.models.cast_copy import cast_copy


def _weights(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_two_calls_reuse_one_copy_and_the_model_keeps_its_weights(tiny_clip):
    model = tiny_clip.model
    before = _weights(model)
    low = cast_copy(model.visual, torch.bfloat16)
    assert cast_copy(model.visual, torch.bfloat16) is low
    assert cast_copy(model.visual, torch.float64) is not low
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in low.parameters())
    after = _weights(model)
    assert all(after[k].dtype == before[k].dtype and torch.equal(after[k], before[k]) for k in before)
    torch.testing.assert_close(low.proj.float(), model.visual.proj.detach().bfloat16().float())


def test_encoders_of_one_tower_share_its_copy(tiny_clip):
    first = PseudoPatchImageEncoder(tiny_clip.model, torch.bfloat16)
    second = PseudoPatchImageEncoder(tiny_clip.model, torch.bfloat16)
    assert first.visual is second.visual and first.visual is not tiny_clip.model.visual
    assert next(tiny_clip.model.visual.parameters()).dtype == torch.float32


def test_a_changed_weight_makes_a_new_copy(tiny_clip):
    model = copy.deepcopy(tiny_clip.model)
    low = cast_copy(model.visual, torch.bfloat16)
    with torch.no_grad():
        model.visual.proj.mul_(2)  # in place: the copy would be stale
    fresh = cast_copy(model.visual, torch.bfloat16)
    assert fresh is not low
    torch.testing.assert_close(fresh.proj.float(), model.visual.proj.detach().bfloat16().float())


def test_a_copy_goes_away_with_its_module(tiny_clip):
    model = copy.deepcopy(tiny_clip.model.visual)
    copy_ref = weakref.ref(cast_copy(model, torch.bfloat16))
    assert model in cache._COPIES
    del model
    gc.collect()
    assert copy_ref() is None


def test_reduced_precision_inversions_reuse_the_copy(tiny_clip, monkeypatch):
    calls = []
    real = copy.deepcopy
    monkeypatch.setattr(copy, "deepcopy", lambda obj, *a: calls.append(type(obj).__name__) or real(obj, *a))
    feats = torch.nn.functional.normalize(torch.randn(2, 32), dim=-1)
    model = ClipModel.from_parts(real(tiny_clip.model), None, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SlowPrecisionWarning)
        for _ in range(2):
            ovi_invert(model, feats, OVIConfig(steps=1, precision="bf16"), progress=False)
    assert calls.count("VisionTransformer") == 1
