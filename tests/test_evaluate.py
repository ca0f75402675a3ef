"""Evaluation harness: data loading, torch/Qdrant agreement, bootstrap, report."""

import json
import shutil
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba
from PIL import Image

from crossgap_qdrant import metrics
from crossgap_qdrant.evaluate import (
    KNOWN_METHODS,
    METHODS,
    DataError,
    EvaluationConfig,
    EvaluationResult,
    LabelledSet,
    MethodResult,
    apply_recommendation,
    bootstrap_ci,
    evaluate,
    load_image_folder,
    load_labelled_set,
    load_labelled_texts,
    load_split,
    recommend,
    report,
    rrf_scores,
    split_method,
    write_report,
)
from crossgap_qdrant.evaluate.harness import _add_paired_differences
from crossgap_qdrant.evaluate.recommend import store_mode
from crossgap_qdrant.evaluate.representations import crossfit_choice
from crossgap_qdrant.inversion import OTIConfig, OVIConfig
from crossgap_qdrant.metrics import RetrievalMetrics, retrieval_metrics
from crossgap_qdrant.models import ClipModel, encode_images, encode_texts, load_model
from crossgap_qdrant.rivals import fit_gap_shift, isoclip
from crossgap_qdrant.store import MODES, CrossModalStore
from tests.support.image_folders import make_image_folder

FAST = dict(oti_config=OTIConfig(steps=3), ovi_config=OVIConfig(steps=3), bootstrap=50, latency_queries=2)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("imgs") / "set")


def test_bootstrap_ci_is_the_shared_one():
    assert bootstrap_ci is metrics.bootstrap_ci  # one copy (tested in test_metrics.py), re-exported here


def test_rrf_matches_qdrant_formula():
    a = torch.tensor([[0.9, 0.5, 0.1, 0.0]])
    b = torch.tensor([[0.1, 0.8, 0.7, 0.0]])
    removed = torch.tensor([[False, False, False, True]])
    fused = rrf_scores([a, b], removed)
    # positions: a -> (0, 1, 2), b -> (2, 0, 1); score 1 / (position + 2)
    expected = [1 / 2 + 1 / 4, 1 / 3 + 1 / 2, 1 / 4 + 1 / 3]
    torch.testing.assert_close(fused[0, :3], torch.tensor(expected, dtype=torch.float64))
    assert fused[0, 3] == float("-inf")


def test_loaders(tmp_path, image_folder):
    data = load_image_folder(image_folder)
    assert data.modality == "image" and len(data.gallery) == 9 and not data.split
    assert sorted(set(data.gallery_labels)) == ["car", "cat", "dog"]
    texts = tmp_path / "texts.tsv"
    texts.write_text("a\tred apple\nb\tblue car\n\na\tgreen apple\n")
    t = load_labelled_texts(texts)
    assert t.modality == "text" and t.gallery == ["red apple", "blue car", "green apple"]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"label": "x", "text": "hello"}\n{"label": "y", "text": "world"}\n')
    assert load_labelled_set(jsonl).gallery_labels == ["x", "y"]
    # a split of images given by paths relative to the list files
    (tmp_path / "q.tsv").write_text(f"cat\t{image_folder}/cat/0.png\n")
    lines = (f"{c}\t{image_folder}/{c}/{i}.png\n" for c in ("cat", "dog") for i in (1, 2))
    (tmp_path / "g.tsv").write_text("".join(lines))
    split = load_split(tmp_path / "q.tsv", tmp_path / "g.tsv")
    assert split.modality == "image" and split.split and split.num_queries == 1 and len(split.gallery) == 4


def test_unreadable_images_are_left_out_and_named(tiny_clip, tmp_path, monkeypatch, caplog):
    root = make_image_folder(tmp_path / "set")
    Image.new("RGB", (40, 40)).save(root / "cat" / "huge.png")
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    shutil.copy(root / "cat" / "0.png", root / "loose.png")  # no class folder: no label
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # 40 x 40 is over, 36 x 36 under
    with caplog.at_level("WARNING"):
        data = load_image_folder(root)
        result = evaluate(tiny_clip, data, EvaluationConfig(methods=("native",), backends=("torch",), bootstrap=20))
    assert sorted(Path(p).name for p in result.unreadable) == ["broken.png", "huge.png"]
    assert "decompression bomb" in result.unreadable[str(root / "cat" / "huge.png")]
    assert result.num_gallery == 9 and "loose.png" not in str(data.gallery)
    assert "1 image file(s) directly in" in caplog.text and "left out of the evaluation" in caplog.text


def test_loader_errors(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_image_folder(tmp_path / "empty")
    bad = tmp_path / "bad.tsv"
    bad.write_text("no tab here\n")
    with pytest.raises(DataError, match=r"bad.tsv:1"):
        load_labelled_texts(bad)
    (tmp_path / "q.tsv").write_text("a\tmissing.png\n")
    with pytest.raises(DataError, match="not found"):
        load_split(tmp_path / "q.tsv", tmp_path / "q.tsv")
    with pytest.raises(DataError, match="at least 2"):
        LabelledSet("text", ["one"], ["a"])
    with pytest.raises(ValueError, match="unknown method"):
        EvaluationConfig(methods=("native", "magic"))


def test_torch_and_qdrant_agree_on_images(tiny_clip, image_folder, tmp_path):
    data = load_image_folder(image_folder)
    config = EvaluationConfig(isoclip_k_top=2, isoclip_k_bottom=4, **FAST)
    result = evaluate(tiny_clip, data, config, model_id="test-tiny-clip")
    assert {r.method for r in result.by_backend("torch")} == set(METHODS)
    assert {r.method for r in result.by_backend("qdrant")} == set(METHODS)
    agreement = result.agreement()
    assert set(agreement) == set(METHODS)
    assert max(agreement.values()) < 1e-6, agreement
    for r in result.results:
        assert r.metrics.num_queries == 9  # every query has 2 other items of its class
        assert r.map_ci[0] <= r.summary["mAP"] <= r.map_ci[1]
        assert r.ingest_ms_per_item > 0 and r.query_compute_ms > 0
        assert (r.search_ms is None) == (r.backend == "torch")
    cost = {r.method: r for r in result.by_backend("torch")}
    assert cost["gallery_inverted"].ingest_ms_per_item > cost["native"].ingest_ms_per_item
    assert cost["query_inverted"].query_compute_ms > cost["native"].query_compute_ms
    # the methods do differ (the test would pass trivially if every method searched the same vectors)
    maps = {m: r.summary["mAP"] for m, r in cost.items()}
    assert len({round(v, 6) for v in maps.values()}) > 2, maps
    assert all(v < 1 for v in maps.values()), maps  # unsaturated, so the agreement above means something

    paths = write_report(result, tmp_path / "report")
    text = paths["markdown"].read_text()
    assert "| query_inverted | torch |" in text and "| isoclip | qdrant |" in text and "search ms" in text
    assert "95% CI of Δ" in text and "chance mAP" in text
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(paths["json"].read_text())
    assert saved["num_queries"] == 9 and len(saved["results"]) == 2 * len(METHODS)
    # the paired differences: none for native, and the mean is the difference of the two mAPs
    torch_rows = {r.method: r for r in result.by_backend("torch")}
    assert torch_rows["native"].diff_vs_native is None
    for method, r in torch_rows.items():
        if method != "native":
            mean, low, high = r.diff_vs_native
            assert mean == pytest.approx(r.summary["mAP"] - torch_rows["native"].summary["mAP"])
            assert low <= mean <= high
    # 3 classes of 3 images, own item excluded: 2 relevant of 8 per query
    h8 = sum(1 / k for k in range(1, 9))
    assert result.chance_map == pytest.approx((h8 + (8 - h8) / 7) / 8)


def test_split_and_texts_agree(tiny_clip, tmp_path):
    gallery = ["a red apple", "a green apple", "a fast car", "a red car", "a small dog", "a big dog"]
    glabels = ["fruit", "fruit", "car", "car", "dog", "dog"]
    data = LabelledSet("text", gallery, glabels, ["an apple", "a truck"], ["fruit", "car"], name="t")
    config = EvaluationConfig(methods=("native", "query_inverted", "fused", "isoclip", "gap_shift"), **FAST)
    result = evaluate(tiny_clip, data, config, model_id="test-tiny-clip")
    assert "gap_shift" in result.skipped  # no image sample for a text set
    assert {r.method for r in result.by_backend("qdrant")} == {"native", "query_inverted", "fused", "isoclip"}
    assert max(result.agreement().values()) < 1e-6
    for r in result.results:
        assert r.metrics.num_queries == 2
    # with queries apart, nothing is excluded: the native torch scores are plain cosines over the gallery

    g, q = encode_texts(tiny_clip, gallery), encode_texts(tiny_clip, ["an apple", "a truck"])

    expected = retrieval_metrics(q @ g.T, ["fruit", "car"], glabels).summary()["mAP"]
    native = next(r for r in result.by_backend("torch") if r.method == "native")
    assert native.summary["mAP"] == pytest.approx(expected)


def test_method_names_are_the_store_modes():
    assert METHODS[: len(MODES)] == MODES
    assert set(METHODS) == set(MODES) | {"isoclip", "pca", "gap_shift", "native_hub", "gallery_inverted_hub",
                                         "query_inverted_hub"}
    assert set(KNOWN_METHODS) - set(METHODS) == {"isoclip_hub", "pca_hub", "gap_shift_hub"}
    assert split_method("gallery_inverted_hub") == ("gallery_inverted", True) and split_method("pca") == ("pca", False)
    assert store_mode("image", "isoclip_hub") == "image_isoclip" and store_mode("text", "query_inverted") == \
        "query_inverted"
    with pytest.raises(ValueError, match="gap_shift"):
        EvaluationConfig(methods=("gapshift",))
    with pytest.raises(ValueError, match="unknown method"):
        EvaluationConfig(methods=("fused_hub",))  # fused ranks by RRF: nothing to correct


def test_handle_names_the_model_in_the_report_never_its_path(tiny_clip, image_folder, tmp_path):
    checkpoint = tmp_path / "very" / "private" / "runs" / "epoch_3.pt"
    checkpoint.parent.mkdir(parents=True)
    torch.save(tiny_clip.model.state_dict(), checkpoint)
    clip = load_model("test-tiny-clip", pretrained=checkpoint, device="cpu")
    config = EvaluationConfig(methods=("native", "isoclip"), backends=("torch",), isoclip_k_top=2, **FAST)
    result = evaluate(clip, load_image_folder(image_folder), config)  # the handle form
    assert result.model_name == "test-tiny-clip/epoch_3.pt" and result.model_id == clip.model_id
    paths = write_report(result, tmp_path / "report")
    for path in paths.values():
        assert str(checkpoint.parent) not in path.read_text(errors="ignore")
    # the parts form gives the same result
    again = evaluate(clip.model, clip.preprocess, clip.tokenizer, load_image_folder(image_folder), config)
    assert again.model_name == result.model_name
    assert again.results[0].summary == result.results[0].summary
    with pytest.raises(TypeError, match="labelled set"):
        evaluate(clip)


def _fake_result(model_name="ViT-B-32/epoch_32.pt", n=30, seed=0):
    """A result with two backends and six methods, built from random per-query scores (no model)."""

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, size=n).tolist()
    x = rng.normal(size=(n, 16))
    results = []
    for backend in ("torch", "qdrant"):
        for i, method in enumerate(METHODS):
            sim = (x + 0.3 * i * rng.normal(size=x.shape)) @ x.T
            m = retrieval_metrics(sim, labels, labels, exclude=np.arange(n))
            results.append(MethodResult(method, backend, m, bootstrap_ci(m.ap, n=200),
                                        search_ms=None if backend == "torch" else 1.0))
    _add_paired_differences(results, n, 200)
    return EvaluationResult("openclipart-heldout", "image", "ViT-B-32@0123456789abcdef", n, n, results,
                            model_name=model_name, chance_map=results[0].summary["chance mAP"])


def test_report_text(tmp_path):
    result = _fake_result()
    paths = write_report(result, tmp_path / "report")
    text = paths["markdown"].read_text()
    assert "- model: ViT-B-32/epoch_32.pt;" in text
    assert "plot (map.png): the torch backend" in text
    assert "95% CI by a paired bootstrap" in text and "R@10" in text
    for method in METHODS:
        assert f"| {method} | torch |" in text and f"- {method}: " in text


def test_plot_title_labels_and_panels(tmp_path, monkeypatch):
    matplotlib.use("Agg")


    figures = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    result = _fake_result()
    report._plot(result, tmp_path / "map.png")
    (fig,) = figures
    title = fig._suptitle.get_text()
    assert title == "openclipart-heldout: ViT-B-32/epoch_32.pt"
    ax, ax_d = fig.axes
    assert ax.get_ylabel() == "mAP (%)" and "paired bootstrap CI" in ax_d.get_title()

    legend = ax.get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts[0] == "mAP, 95% bootstrap CI" and any(t.startswith("chance (random ranking)") for t in texts)
    # the mAP entry shows the colour of the ordinary bars, not the recommended bar's
    assert to_rgba(legend.legend_handles[0].get_facecolor()) == to_rgba("#4c72b0")
    assert [t.get_text() for t in ax.get_xticklabels()] == list(METHODS)
    assert [t.get_text() for t in ax_d.get_xticklabels()] == list(METHODS[1:])
    assert any("backend: torch" in t.get_text() for t in fig.texts)
    # nothing is drawn outside the figure: the title and the tick labels fit
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    for artist in [fig._suptitle, *fig.texts, ax.title, ax_d.title, *ax.get_xticklabels(), *ax_d.get_xticklabels()]:
        ext = artist.get_window_extent(renderer)
        assert ext.x0 >= box.x0 - 1 and ext.x1 <= box.x1 + 1 and ext.y0 >= box.y0 - 1 and ext.y1 <= box.y1 + 1
    monkeypatch.undo()
    plt.close(fig)


# ------------------------------------------------------------------------- rivals, hubness, recommendation
def _rows(per_method: dict, backend="torch", n=40):
    """MethodResults whose per-query APs are given (arrays of n values), with paired differences."""

    results = []
    for method, (ap, query_ms) in per_method.items():
        ap = np.asarray(ap, dtype=np.float64)
        metrics = RetrievalMetrics(ap=ap, ap_at_r=ap, r_precision=ap, precision_at={1: ap}, recall_at={1: ap},
                                   hit_at={1: ap}, chance_ap=np.full(n, 0.1), query_index=np.arange(n))
        results.append(MethodResult(method, backend, metrics, bootstrap_ci(ap, n=300), query_compute_ms=query_ms))
    _add_paired_differences(results, n, 300)
    return results


def _result(rows):
    return EvaluationResult("synthetic", "image", "m@0", 40, 40, rows)


def test_recommendation_rule_on_synthetic_results():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, size=40)
    clear = base + 0.05 + rng.normal(0, 0.01, 40)  # consistently better: CI above zero
    bigger_but_noisy = base + rng.normal(0.08, 0.6, 40)  # higher mean, CI includes zero
    worse = base - 0.05
    rec = recommend(_result(_rows({"native": (base, 1.0), "gallery_inverted": (clear, 1.0),
                                   "query_inverted": (bigger_but_noisy, 50.0), "pca": (worse, 1.0)})))
    assert rec["method"] == "gallery_inverted" and rec["mode"] == "gallery_inverted" and not rec["hubness"]
    assert rec["diff_vs_native"][1] > 0 and rec["backend"] == "torch"
    # the best of several winners; a tie in mAP goes to the cheaper query
    rows = _rows({"native": (base, 1.0), "gallery_inverted": (clear, 1.0), "isoclip_hub": (clear + 0.02, 2.0),
                  "query_inverted": (clear + 0.02, 80.0)})
    rec = recommend(_result(rows))
    assert rec["method"] == "isoclip_hub" and rec["mode"] == "image_isoclip" and rec["hubness"]
    # nothing beats native with a CI above zero: native
    rec = recommend(_result(_rows({"native": (base, 1.0), "query_inverted": (bigger_but_noisy, 5.0),
                                   "pca": (worse, 1.0)})))
    assert rec["method"] == "native" and rec["diff_vs_native"] is None and "keep native" in rec["reason"]
    # no native, no recommendation; the torch rows decide when both backends ran
    assert recommend(_result(_rows({"pca": (clear, 1.0)}))) is None
    both = _rows({"native": (base, 1.0), "pca": (worse, 1.0)}) + _rows({"native": (base, 1.0), "pca": (clear, 1.0)},
                                                                       backend="qdrant")
    assert recommend(_result(both))["method"] == "native"
    assert recommend(_result(both[2:]))["method"] == "pca"


def test_crossfit_choice_scores_each_half_with_the_other_halfs_choice():
    per_query = np.array([[0.5] * 8, [0.9, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1], [0.6] * 8])
    best, assigned = crossfit_choice(per_query, seed=0)
    assert best == 2  # mean 0.6 over all queries beats 0.5 and 0.5
    fold = np.random.default_rng(0).permutation(8) % 2
    for f in (0, 1):
        other = per_query[:, fold != f].mean(1)
        assert (assigned[fold == f] == np.argmax(other)).all()


def test_evaluation_runs_every_representation_and_recommends(tiny_clip, image_folder, tmp_path):
    data = load_image_folder(image_folder)
    result = evaluate(tiny_clip, data, EvaluationConfig(**FAST))  # no cuts given: tuned on the sample
    assert {r.method for r in result.by_backend("torch")} == set(METHODS) == {r.method for r in
                                                                              result.by_backend("qdrant")}
    iso = result.representations["isoclip"]
    assert iso["cuts_source"] == "tuned" and iso["grid"][0]["k_top"] == 0 and iso["crossfitted"]
    assert result.crossfitted == ("isoclip",) and "isoclip" not in result.agreement()
    assert max(result.agreement().values()) < 1e-6, result.agreement()  # hub variants included: Formula == torch
    assert "bundled class names" in result.representations["pca"]["vocabulary"]
    assert result.representations["hubness"]["bank_size"] == 9
    # the qdrant isoclip row uses the cuts chosen on every query: the torch row is cross-fitted
    chosen = (iso["k_top"], iso["k_bottom"])
    best = max(iso["grid"], key=lambda g: g["mAP"])
    assert chosen == (best["k_top"], best["k_bottom"])
    qdrant_iso = next(r for r in result.by_backend("qdrant") if r.method == "isoclip")
    assert qdrant_iso.summary["mAP"] == pytest.approx(best["mAP"], abs=1e-6)
    # JSON: per method mAP, CI, difference vs native with CI, query cost, recommended
    out = result.to_dict()
    rec, diff = out["recommended"], result.recommendation["diff_vs_native"]
    assert rec["method"] == result.recommendation["method"] and rec["rule"]
    assert (rec["diff_vs_native"], rec["diff_ci95"]) == ((None, None) if diff is None else (diff[0], list(diff[1:])))
    assert set(out["methods"]) == set(METHODS)
    flags = [m for m, v in out["methods"].items() if v["recommended"]]
    assert flags == [out["recommended"]["method"]]
    for method, v in out["methods"].items():
        assert v["ci95"][0] <= v["mAP"] <= v["ci95"][1] and v["query_ms"] > 0
        assert (v["diff_vs_native"] is None) == (method == "native")
    text = write_report(result, tmp_path / "r")["markdown"].read_text()
    assert "Recommended:" in text and "Fitted on this sample:" in text and "cross-fitted" in text


def test_published_cuts_are_used_when_the_backbone_has_them(tiny_clip, image_folder, monkeypatch):
    monkeypatch.setitem(isoclip.PUBLISHED_CUTS, ("test-tiny-clip", "some-tag"), (3, 5))
    clip = ClipModel(tiny_clip.model, tiny_clip.preprocess, tiny_clip.tokenizer, "test-tiny-clip", "some-tag")
    config = EvaluationConfig(methods=("native", "isoclip"), backends=("torch",), **FAST)
    result = evaluate(clip, load_image_folder(image_folder), config)
    iso = result.representations["isoclip"]
    assert (iso["k_top"], iso["k_bottom"], iso["cuts_source"]) == (3, 5, "published") and not result.crossfitted
    # published cuts that do not fit the model are reported, never replaced by a guess
    monkeypatch.setitem(isoclip.PUBLISHED_CUTS, ("test-tiny-clip", "some-tag"), (150, 50))
    result = evaluate(clip, load_image_folder(image_folder), config)
    assert "leaves no direction" in result.skipped["isoclip"]


def test_gap_shift_is_one_sided_in_the_evaluation(tiny_clip, image_folder):
    data = load_image_folder(image_folder)
    config = EvaluationConfig(methods=("native", "gap_shift"), backends=("torch",), **FAST)
    result = evaluate(tiny_clip, data, config)
    native = encode_images(tiny_clip, data.gallery)
    shift = fit_gap_shift(tiny_clip.model, tiny_clip.tokenizer, tiny_clip.preprocess, image_features=native)

    expected = retrieval_metrics(shift.image_to_text(native) @ native.T, data.gallery_labels, data.gallery_labels,
                                 exclude=np.arange(len(native))).summary()["mAP"]
    row = next(r for r in result.results if r.method == "gap_shift")
    assert row.summary["mAP"] == pytest.approx(expected, abs=1e-6)
    assert "gap-shifted query vs native images" in row.description


def test_apply_records_the_choice_and_later_searches_use_it(tiny_clip, image_folder, tmp_path):
    data = load_image_folder(image_folder)
    with CrossModalStore.open(str(tmp_path / "q"), "photos", tiny_clip, oti_config=OTIConfig(steps=2)) as store:
        store.ingest_images(str(image_folder), progress=False)
    config = EvaluationConfig(methods=("native", "pca", "gallery_inverted_hub"), backends=("torch",), **FAST)
    result = evaluate(tiny_clip, data, config)
    applied = apply_recommendation(result, tiny_clip, str(tmp_path / "q"), "photos", method="pca")
    assert applied["mode"] == "image_pca" and applied["computed"] == 9 and not applied["hubness"]
    with CrossModalStore.open(str(tmp_path / "q"), "photos", tiny_clip, create=False) as store:
        assert store.default_mode("image") == "image_pca" and "image_pca" in store.encoder.derived
        query = data.gallery[0]
        assert [h.id for h in store.search_images(query, limit=3)] == [
            h.id for h in store.search_images(query, mode="image_pca", limit=3)]
    applied = apply_recommendation(result, tiny_clip, str(tmp_path / "q"), "photos", method="gallery_inverted_hub")
    assert applied["hubness"] and applied["hubness_fit"]["points"] == 9 and applied["computed"] == 0
    with CrossModalStore.open(str(tmp_path / "q"), "photos", tiny_clip, create=False) as store:
        assert store.default_mode("image") == "gallery_inverted" and store.default_hubness("image")
        hits = store.search_images(data.gallery[0], limit=3)
        assert [h.score for h in hits] == pytest.approx(
            [h.score for h in store.search_images(data.gallery[0], mode="gallery_inverted", hubness=True, limit=3)])
    with pytest.raises(ValueError, match="was not fitted"):
        apply_recommendation(result, tiny_clip, str(tmp_path / "q"), "photos", method="isoclip")


def test_pca_vocabulary_is_the_users_texts_when_there_are_enough(tiny_clip):
    few = LabelledSet("text", ["a red apple", "a green apple", "a fast car", "a red car"], list("ffcc"))
    config = EvaluationConfig(methods=("native", "pca"), backends=("torch",), **FAST)
    source = evaluate(tiny_clip, few, config).representations["pca"]["vocabulary"]
    assert source.startswith("bundled class names (the 4 labelled texts are too few for 16 directions)")
    many = LabelledSet("text", [f"a photo of item {i}" for i in range(20)], [str(i % 4) for i in range(20)])
    assert evaluate(tiny_clip, many, config).representations["pca"]["vocabulary"] == "the labelled texts (20)"
    given = EvaluationConfig(methods=("native", "pca"), backends=("torch",), vocabulary=["x", "y"], **FAST)
    with pytest.raises(ValueError, match="at most 1 principal direction"):
        evaluate(tiny_clip, few, given)  # a vocabulary the user chose is never silently replaced


def test_evaluate_takes_the_handle_and_the_old_parts_form_still_works(tiny_clip):
    data = LabelledSet("text", ["a red apple", "a fast car", "a green apple", "a red car"],
                       ["fruit", "car", "fruit", "car"], name="t")
    config = EvaluationConfig(methods=("native",), backends=("torch",), bootstrap=10, latency_queries=1)
    new = evaluate(tiny_clip, data, config)
    model, preprocess, tokenizer = tiny_clip
    old = evaluate(model, preprocess, tokenizer, data, config)  # deprecated; same result
    assert new.by_backend("torch")[0].map_ci == old.by_backend("torch")[0].map_ci
    with pytest.raises(TypeError, match="model handle and a labelled set"):
        evaluate(tiny_clip, "not a set")
