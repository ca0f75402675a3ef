"""Inversion settings (crossgap_qdrant.inversion.config): validation when made, precision checks."""

import warnings

import pytest
import torch

from crossgap_qdrant.errors import CrossgapError
from crossgap_qdrant.inversion import OTIConfig, StoppingRule, WarmStart, oti_invert
from crossgap_qdrant.inversion import config as config_module


@pytest.mark.parametrize("bad", [
    {"betas": (0.9,)}, {"betas": (0.9, 1.5)}, {"num_tokens": 2.0}, {"num_tokens": 0}, {"lr": "0.02"},
    {"lr": -1.0}, {"eps": float("nan")}, {"warm_start": "w.pt"}, {"stopping": {"patience": 3}},
])
def test_bad_settings_are_refused_when_the_config_is_made(bad):
    # a CrossgapError (the command line prints it as one line) and the builtin class that describes it
    with pytest.raises(CrossgapError, match=next(iter(bad))) as info:
        OTIConfig(**bad)
    assert isinstance(info.value, (ValueError, TypeError))


@pytest.mark.parametrize("bad", [{"patience": 0}, {"min_steps": -1}, {"min_delta": -0.1}, {"target_loss": "0.1"}])
def test_bad_stopping_rules_are_refused(bad):
    with pytest.raises(CrossgapError, match=next(iter(bad))) as info:
        StoppingRule(**bad)
    assert isinstance(info.value, ValueError)


def test_bad_arguments_of_an_inversion_are_crossgap_errors(tiny_clip):
    feats = torch.nn.functional.normalize(torch.randn(2, tiny_clip.embed_dim), dim=-1)
    with pytest.raises(CrossgapError, match=r"snapshots must be step counts in \[0, steps=2\]"):
        oti_invert(tiny_clip, feats, OTIConfig(steps=2), progress=False, snapshots=(5,))
    with pytest.raises(CrossgapError, match="exactly one"):
        oti_invert(tiny_clip, feats, OTIConfig(steps=1, template="no slot"), progress=False)
    with pytest.raises(CrossgapError, match="kind must be one of"):
        WarmStart("otx", tiny_clip.embed_dim, 1, 8)
    with pytest.raises(CrossgapError, match="precision must be one of"):
        oti_invert(tiny_clip, feats, OTIConfig(steps=1, precision="fp8"), progress=False)


def test_bf16_without_bf16_hardware_warns(tiny_clip, monkeypatch):
    model, _, tok = tiny_clip
    cfg = OTIConfig(steps=1, precision="bf16")
    monkeypatch.setattr(config_module, "cpu_has_bf16", lambda: False)
    with pytest.warns(config_module.SlowPrecisionWarning, match="fp32"):
        oti_invert(tiny_clip, torch.randn(2, 32), cfg, progress=False)
    monkeypatch.setattr(config_module, "cpu_has_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", config_module.SlowPrecisionWarning)
        oti_invert(tiny_clip, torch.randn(2, 32), cfg, progress=False)
