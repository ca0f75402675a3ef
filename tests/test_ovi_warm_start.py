"""OVI (text -> image space) with a warm start: fitted from text features, closer to the exact result than the
published start after as many steps, kept with a collection and used for text backfills, ingestion and
queries; snapshots of one run; the precision a warm-started text inversion runs in."""

import json

import pytest
import torch

from crossgap_qdrant.cli import EXIT_OK
from crossgap_qdrant.inversion import OTIConfig, OVIConfig, StoppingRule, fit_warm_start, oti_invert, ovi_invert
from crossgap_qdrant.inversion import config as inversion_config
from crossgap_qdrant.inversion.warm_start_fit import CURVE_STEPS
from crossgap_qdrant.store.encoder import unit_vectors
from tests.support.cli import MODEL, run
from tests.support.store import Stores, stored_vectors

EXACT = OVIConfig(steps=60)


@pytest.fixture(scope="module")
def fitted(tiny_clip):
    """An OVI warm start fitted on 40 reachable text features (image-space outputs of the tiny model's own OVI,
    so exact inversion can meet them), and 10 others."""
    gen = torch.Generator().manual_seed(5)
    feats = ovi_invert(tiny_clip, torch.randn(50, 32, generator=gen), OVIConfig(steps=30), progress=False).features
    warm, fit = fit_warm_start(tiny_clip, feats[:40], "ovi", EXACT, epochs=150, hidden=128)
    return warm, fit, feats[40:]


def test_warm_started_features_are_closer_to_the_exact_ones_than_cold_ones(tiny_clip, fitted):
    warm, fit, test = fitted
    assert warm.kind == "ovi" and fit.samples == 40 and fit.validation == 4
    assert {int(k.split("@")[0]) for k in fit.curve} == set(CURVE_STEPS["ovi"])
    exact = ovi_invert(tiny_clip, test, EXACT, progress=False).features
    for k in (0, 5):
        warm_k = ovi_invert(tiny_clip, test, OVIConfig(steps=k, warm_start=warm), progress=False).features
        cold_k = ovi_invert(tiny_clip, test, OVIConfig(steps=k), progress=False).features
        assert (warm_k * exact).sum(-1).mean() > (cold_k * exact).sum(-1).mean() + 0.05, k


def test_a_precomputed_exact_inversion_is_the_fits_distillation_set(tiny_clip, fitted):
    _, _, test = fitted
    exact = ovi_invert(tiny_clip, test, OVIConfig(steps=4), progress=False)
    _, fit = fit_warm_start(tiny_clip, test, "ovi", OVIConfig(steps=4), epochs=2, feature_epochs=0, hidden=16,
                            exact=exact)
    assert fit.seconds_exact < 0.01  # nothing inverted again
    with pytest.raises(ValueError, match="exact holds"):
        fit_warm_start(tiny_clip, test[:5], "ovi", OVIConfig(steps=4), epochs=1, exact=exact)


@pytest.mark.parametrize("kind", ["oti", "ovi"])
def test_snapshots_of_one_run_equal_separate_runs(tiny_clip, fitted, kind):
    warm, _, test = fitted
    invert = (lambda cfg, **kw: ovi_invert(tiny_clip, test, cfg, progress=False, **kw)) if kind == "ovi" else (
        lambda cfg, **kw: oti_invert(tiny_clip, test, cfg, progress=False, **kw))
    config = (OVIConfig if kind == "ovi" else OTIConfig)(steps=7, batch_size=4)
    run = invert(config, snapshots=(0, 3, 7))
    assert sorted(run.snapshots) == [0, 3, 7]
    torch.testing.assert_close(run.snapshots[7], run.features, rtol=0, atol=0)
    for k in (0, 3):
        alone = invert(config.__class__(steps=k, batch_size=4)).features
        torch.testing.assert_close(run.snapshots[k], alone, rtol=0, atol=0)
    assert invert(config).snapshots == {}


def test_snapshots_are_refused_beyond_the_budget_or_with_early_stopping(tiny_clip, fitted):
    _, _, test = fitted
    with pytest.raises(ValueError, match="step counts in"):
        ovi_invert(tiny_clip, test, OVIConfig(steps=3), progress=False, snapshots=(5,))
    with pytest.raises(ValueError, match="fixed budget"):
        ovi_invert(tiny_clip, test, OVIConfig(steps=3, stopping=StoppingRule(min_delta=1e-3)), progress=False,
                   snapshots=(1,))


def test_auto_precision_is_bf16_only_with_bf16_hardware(monkeypatch):
    monkeypatch.setattr(inversion_config, "cpu_has_bf16", lambda: False)
    assert inversion_config.check_precision("auto", torch.device("cpu")) == torch.float32
    monkeypatch.setattr(inversion_config, "cpu_has_bf16", lambda: True)
    assert inversion_config.check_precision("auto", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="auto"):
        inversion_config.check_precision("bf8", torch.device("cpu"))


def test_bf16_hardware_is_read_from_cpu_flags(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n\nprocessor\t: 1\nflags\t\t: amx_bf16\n")
    assert inversion_config.cpu_flags(str(info)) == {"fpu", "sse", "avx2", "avx512f"}  # the first CPU's
    assert inversion_config.cpu_flags(str(tmp_path / "absent")) == frozenset()
    for fn in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, fn, lambda: False, raising=False)
    monkeypatch.setattr(inversion_config, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert inversion_config.cpu_has_bf16()
    monkeypatch.setattr(inversion_config, "cpu_flags", lambda: frozenset({"avx2"}))
    assert not inversion_config.cpu_has_bf16()


def test_the_store_uses_the_text_warm_start_for_backfills_ingestion_and_queries(tiny_clip, tmp_path):
    stores = Stores("edge", tmp_path, tiny_clip)
    store = stores.make()
    texts = [f"a drawing of thing number {i}" for i in range(10)]
    report = store.ingest_texts(texts, invert=False, progress=False)
    fit = store.fit_warm_start("text", sample=8, epochs=10, hidden=32, progress=False)
    assert fit.samples == 8 and (tmp_path / "edge" / "gallery" / "warm_start_ovi.pt").is_file()
    config = store.encoder.ovi_config
    assert config.warm_start is not None and config.steps == fit.steps and config.precision == "auto"
    assert store.encoder.oti_config.warm_start is None  # the image side keeps its own setting

    reopened = stores.make(warm_start=True)
    warm = reopened.encoder.ovi_config.warm_start
    backfill = reopened.invert_missing("text", progress=False)
    assert backfill.inverted == 10
    native = torch.tensor(stored_vectors(reopened, report.ids, "text"))
    # the store's precision ("auto": bf16 on a CPU with bf16 hardware, as this test may run on)
    expected = ovi_invert(tiny_clip, native, OVIConfig(steps=fit.steps, lr=fit.lr, warm_start=warm,
                                                       precision="auto"), progress=False).features
    stored = torch.tensor(stored_vectors(reopened, report.ids, "text_ovi"))
    torch.testing.assert_close(stored, unit_vectors(expected, 32, "x"), atol=1e-5, rtol=0)

    more = reopened.ingest_texts(["one more drawing", "and another"], progress=False)
    assert more.inverted == 2
    calls = []
    real = reopened.encoder.invert
    reopened.encoder.invert = lambda *a, **k: calls.append(reopened.encoder.ovi_config) or real(*a, **k)
    hits = reopened.search_texts(text="a drawing of thing number 3", mode="query_inverted", limit=3)
    assert len(hits) == 3 and calls and calls[0].warm_start is warm
    stores.close()


def test_cli_fits_the_text_warm_start_and_uses_it(capsys, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"a drawing of thing number {i}\n" for i in range(8)))
    loc = ["--location", tmp_path / "q"]
    code, out, err = run(capsys, "ingest", texts, "--texts", "--no-invert", *MODEL, *loc, "--json")
    assert code == EXIT_OK, err
    code, out, err = run(capsys, "fit-warm-start", "--modality", "text", *MODEL, *loc, "--sample", "6",
                         "--epochs", "5", "--warm-steps", "2", "--json")
    assert code == EXIT_OK, err
    fit = json.loads(out)
    assert (fit["modality"], fit["samples"], fit["steps"], fit["file"]) == ("text", 6, 2, "warm_start_ovi.pt")
    warm_model = [f for f in MODEL if f not in ("--steps", "2")]
    code, out, err = run(capsys, "invert", "--modality", "text", *warm_model, *loc, "--warm-start", "--json")
    assert code == EXIT_OK and json.loads(out)["inverted"] == 8, err
    code, out, err = run(capsys, "search", "a drawing", "--text", "--gallery", "texts", "--mode", "query_inverted",
                         "--limit", "2", *warm_model, *loc, "--warm-start", "--json")
    assert code == EXIT_OK and len(json.loads(out)["hits"]) == 2, err
    code, out, _ = run(capsys, "info", *loc, "--json")
    assert json.loads(out)["warm_start"]["text"]["steps"] == 2 and "image" not in json.loads(out)["warm_start"]
