"""The learned warm start: fitting by distillation, file round trip, use in the engine and by the store."""

import copy

import pytest
import torch
import torch.nn.functional as F

from crossgap_qdrant.inversion import (
    OTIConfig,
    OVIConfig,
    StoppingRule,
    WarmStart,
    WarmStartMismatchError,
    fit_warm_start,
    oti_invert,
    ovi_invert,
)
from crossgap_qdrant.inversion.warm_start_fit import _recommend
from crossgap_qdrant.models import ClipModel
from tests.support.store import Stores, images


@pytest.fixture(scope="module")
def fitted(tiny_clip):
    """A warm start fitted on 48 reachable image features (the tiny model's own OTI outputs), and 12 others."""
    gen = torch.Generator().manual_seed(0)
    feats = oti_invert(tiny_clip, torch.randn(60, 32, generator=gen), OTIConfig(steps=40), progress=False).features
    warm, fit = fit_warm_start(tiny_clip, feats[:48], "oti", OTIConfig(steps=60), epochs=150, hidden=128)
    return warm, fit, feats[48:]


def test_fit_reports_and_the_prediction_starts_near_the_exact_result(tiny_clip, fitted):
    warm, fit, test = fitted
    assert (fit.samples, fit.validation, fit.epochs) == (48, 5, 150)
    assert fit.seconds_exact > 0 and fit.seconds_training > 0 and -1 <= fit.token_r2 <= 1
    assert len(fit.curve) == 9 and fit.curve["0@0.02"] == pytest.approx(fit.cosine_at_0, abs=1e-5)
    assert -1 <= fit.exact_floor <= 1
    assert f"{fit.steps}@{fit.lr:g}" in fit.curve
    exact = oti_invert(tiny_clip, test, OTIConfig(steps=60), progress=False).features
    for k in (0, 3):
        warm_k = oti_invert(tiny_clip, test, OTIConfig(steps=k, warm_start=warm), progress=False).features
        cold_k = oti_invert(tiny_clip, test, OTIConfig(steps=k), progress=False).features
        assert (warm_k * exact).sum(-1).mean() > (cold_k * exact).sum(-1).mean() + 0.05, k


def test_the_recommended_budget_is_the_fewest_steps_that_reach_the_exact_floor():
    curve = {(0, 0.02): 0.95, (3, 0.02): 0.985, (5, 0.02): 0.991, (3, 0.005): 0.989, (5, 0.005): 0.99}
    assert _recommend(curve, floor=0.99) == (3, 0.005)  # 0.989 is within the 0.002 margin; fewer steps win
    assert _recommend(curve, floor=0.9) == (0, 0.02)
    assert _recommend(curve, floor=0.999) == (5, 0.02)  # none reaches it: the best point


def test_zero_steps_returns_the_features_of_the_predicted_tokens(tiny_clip, fitted):
    warm, _, test = fitted
    res = oti_invert(tiny_clip, test, OTIConfig(steps=0, warm_start=warm), progress=False)
    torch.testing.assert_close(res.tokens, warm.predict(test))
    assert (res.steps == 0).all()
    given = oti_invert(tiny_clip, test, OTIConfig(steps=0), init_tokens=warm.predict(test), progress=False)
    torch.testing.assert_close(res.features, given.features)


def test_file_round_trip_and_refusals(tiny_clip, fitted, tmp_path):
    warm, _, test = fitted
    path = tmp_path / "warm.pt"
    warm.save(path)
    loaded = WarmStart.load(path)
    torch.testing.assert_close(loaded.predict(test), warm.predict(test))
    assert (loaded.kind, loaded.template, loaded.model_id) == ("oti", "a photo of {}", tiny_clip.model_id)
    torch.save({"meta": {"format": "other"}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a crossgap-qdrant warm start"):
        WarmStart.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="warm start file not found"):
        WarmStart.load(tmp_path / "missing.pt")


def test_a_warm_start_of_another_template_or_model_is_refused(tiny_clip, fitted):
    warm, _, test = fitted
    with pytest.raises(WarmStartMismatchError, match="template"):
        oti_invert(tiny_clip, test, OTIConfig(steps=1, template="a drawing of {}", warm_start=warm), progress=False)
    other = copy.deepcopy(tiny_clip.model)
    with torch.no_grad():
        other.text_projection.add_(0.01)
    with pytest.raises(WarmStartMismatchError, match="fitted for model"):
        oti_invert(ClipModel.from_parts(other, None, tiny_clip.tokenizer), test, OTIConfig(steps=1, warm_start=warm),
                   progress=False)


def test_ovi_warm_start(tiny_clip):
    gen = torch.Generator().manual_seed(1)
    texts = F.normalize(torch.randn(12, 32, generator=gen), dim=-1)
    warm, fit = fit_warm_start(tiny_clip, texts, "ovi", OVIConfig(steps=20), epochs=20, hidden=64)
    assert warm.kind == "ovi" and warm.width == 64 and fit.validation == 1
    res = ovi_invert(tiny_clip, texts[:3], OVIConfig(steps=2, warm_start=warm), progress=False)
    assert res.features.shape == (3, 32) and (res.steps == 2).all()
    with pytest.raises(WarmStartMismatchError, match="kind"):
        oti_invert(tiny_clip, texts[:2], OTIConfig(steps=1, warm_start=warm), progress=False)


def test_store_keeps_the_warm_start_with_the_collection(tiny_clip, tmp_path):
    stores = Stores("edge", tmp_path, tiny_clip)
    store = stores.make()
    pil = images(10, seed=4)
    store.ingest_images(pil, progress=False)
    fit = store.fit_warm_start("image", sample=8, steps=2, epochs=20, hidden=64, progress=False)
    assert fit.samples == 8
    path = tmp_path / "edge" / "gallery" / "warm_start_oti.pt"
    assert path.is_file()
    assert store.encoder.oti_config.steps == 2 and store.encoder.oti_config.warm_start is not None
    recorded = store.info()
    reopened = stores.make(warm_start=True)
    assert reopened.encoder.oti_config.steps == 2 and reopened.encoder.oti_config.warm_start is not None
    assert len(reopened.search_images(pil[0], mode="query_inverted", limit=3)) == 3
    assert recorded["points"] == 10
    plain = stores.make()
    assert plain.encoder.oti_config.warm_start is None and plain.encoder.oti_config.steps == 3
    with pytest.raises(LookupError, match="no text warm start"):
        plain.use_warm_start("text")
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(ValueError, match="SHA-256 differs"):
        plain.use_warm_start("image")
    stores.close()


def test_a_server_store_needs_a_path_for_its_warm_start(tiny_clip, tmp_path):
    stores = Stores("client", tmp_path, tiny_clip)
    store = stores.make()
    store.ingest_images(images(4), progress=False)
    with pytest.raises(ValueError, match="path="):
        store.fit_warm_start("image", sample=4, epochs=2, progress=False)
    fit = store.fit_warm_start("image", sample=4, epochs=2, hidden=32, path=tmp_path / "w.pt", progress=False)
    assert fit.samples == 4 and (tmp_path / "w.pt").is_file()
    assert (store.encoder.oti_config.steps, store.encoder.oti_config.lr) == (fit.steps, fit.lr)  # the fit's choice
    stores.close()


def test_fit_edge_cases_and_a_callers_model_keeps_its_gradients(tiny_clip):
    feats = F.normalize(torch.randn(6, 32, generator=torch.Generator().manual_seed(3)), dim=-1)
    cfg = OTIConfig(steps=5)
    warm, fit = fit_warm_start(tiny_clip, feats, "oti", cfg, epochs=0, feature_epochs=0)  # the prediction as is
    assert fit.epochs == 0 and fit.validation == 1
    with pytest.raises(ValueError, match="epochs"):
        fit_warm_start(tiny_clip, feats, "oti", cfg, epochs=-1)
    trainable = copy.deepcopy(tiny_clip.model).requires_grad_(True)  # a bare model nobody froze
    clip = ClipModel(trainable, tiny_clip.preprocess, tiny_clip.tokenizer, tiny_clip.name)
    fit_warm_start(clip, feats, "oti", cfg, epochs=2, feature_epochs=2, hidden=16)
    assert all(p.grad is None for p in trainable.parameters())


def test_zero_steps_with_a_stopping_rule_take_no_step(tiny_clip, fitted):
    warm, _, test = fitted
    res = oti_invert(tiny_clip, test, OTIConfig(steps=0, warm_start=warm, stopping=StoppingRule(min_delta=1e-3)),
                     progress=False)
    assert (res.steps == 0).all()
    torch.testing.assert_close(res.tokens, warm.predict(test))


def test_a_bad_step_budget_is_refused_before_anything_is_written(tiny_clip, tmp_path):
    stores = Stores("edge", tmp_path, tiny_clip)
    store = stores.make()
    store.ingest_images(images(4), progress=False)
    with pytest.raises(ValueError, match="steps must be an int >= 0"):
        store.fit_warm_start("image", sample=4, steps=-1, epochs=1, progress=False)
    assert not (tmp_path / "edge" / "gallery" / "warm_start_oti.pt").exists() and not store.info()["warm_start"]
    stores.close()
