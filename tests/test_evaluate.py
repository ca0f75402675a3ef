"""Evaluation harness: data loading, torch/Qdrant agreement, bootstrap, report."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from crossgap_qdrant.evaluate import (
    METHODS,
    DataError,
    EvaluationConfig,
    LabelledSet,
    bootstrap_ci,
    evaluate,
    load_image_folder,
    load_labelled_set,
    load_labelled_texts,
    load_split,
    rrf_scores,
    write_report,
)
from crossgap_qdrant.inversion import OTIConfig, OVIConfig

FAST = dict(oti_config=OTIConfig(steps=3), ovi_config=OVIConfig(steps=3), bootstrap=50, latency_queries=2)


def make_image_folder(root, classes=("cat", "dog", "car"), per_class=3, size=36):
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            base = np.zeros((size, size, 3), dtype=np.uint8)
            # a class colour plus noise; the last image of each class takes the next class's colour, so that
            # no method is perfect
            base[..., (c + (i == per_class - 1)) % len(classes)] = 200
            noise = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(base + noise).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("imgs") / "set")


def test_bootstrap_ci_is_the_shared_one():
    from crossgap_qdrant import metrics

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
    (tmp_path / "g.tsv").write_text("".join(f"{c}\t{image_folder}/{c}/{i}.png\n" for c in ("cat", "dog") for i in (1, 2)))
    split = load_split(tmp_path / "q.tsv", tmp_path / "g.tsv")
    assert split.modality == "image" and split.split and split.num_queries == 1 and len(split.gallery) == 4


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
    model, preprocess, tokenizer = tiny_clip
    data = load_image_folder(image_folder)
    config = EvaluationConfig(isoclip_k_top=2, isoclip_k_bottom=4, **FAST)
    result = evaluate(model, preprocess, tokenizer, data, config, model_id="test-tiny-clip")
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
    model, preprocess, tokenizer = tiny_clip
    gallery = ["a red apple", "a green apple", "a fast car", "a red car", "a small dog", "a big dog"]
    glabels = ["fruit", "fruit", "car", "car", "dog", "dog"]
    data = LabelledSet("text", gallery, glabels, ["an apple", "a truck"], ["fruit", "car"], name="t")
    config = EvaluationConfig(methods=("native", "query_inverted", "fused", "isoclip", "gap_shift"), **FAST)
    result = evaluate(model, preprocess, tokenizer, data, config, model_id="test-tiny-clip")
    assert "gap_shift" in result.skipped  # no image sample for a text set
    assert {r.method for r in result.by_backend("qdrant")} == {"native", "query_inverted", "fused", "isoclip"}
    assert max(result.agreement().values()) < 1e-6
    for r in result.results:
        assert r.metrics.num_queries == 2
    # with queries apart, nothing is excluded: the native torch scores are plain cosines over the gallery
    from crossgap_qdrant.models import encode_texts

    g, q = encode_texts(model, tokenizer, gallery), encode_texts(model, tokenizer, ["an apple", "a truck"])
    from crossgap_qdrant.metrics import retrieval_metrics

    expected = retrieval_metrics(q @ g.T, ["fruit", "car"], glabels).summary()["mAP"]
    native = next(r for r in result.by_backend("torch") if r.method == "native")
    assert native.summary["mAP"] == pytest.approx(expected)


def test_method_names_are_the_store_modes():
    from crossgap_qdrant.store import MODES

    assert METHODS[: len(MODES)] == MODES
    assert set(METHODS) == set(MODES) | {"isoclip", "gap_shift"}
    with pytest.raises(ValueError, match="gap_shift"):
        EvaluationConfig(methods=("gapshift",))


def test_handle_names_the_model_in_the_report_never_its_path(tiny_clip, image_folder, tmp_path):
    from crossgap_qdrant.models import load_model

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
    from crossgap_qdrant.evaluate import EvaluationResult, MethodResult
    from crossgap_qdrant.evaluate.harness import _add_paired_differences
    from crossgap_qdrant.metrics import retrieval_metrics

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crossgap_qdrant.evaluate import report

    figures = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    result = _fake_result()
    report._plot(result, tmp_path / "map.png")
    (fig,) = figures
    title = fig._suptitle.get_text()
    assert title == "openclipart-heldout: ViT-B-32/epoch_32.pt"
    ax, ax_d = fig.axes
    assert ax.get_ylabel() == "mAP (%)" and "paired bootstrap CI" in ax_d.get_title()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].startswith("chance (random ranking)") and "95% bootstrap CI" in legend[1]
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
