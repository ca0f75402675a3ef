"""The committed demo model and the README's main job (crossgap_qdrant.demo)."""

import io
import json
import math

import pytest
import torch
from PIL import Image

from crossgap_qdrant import datasets, demo
from crossgap_qdrant.models import encode_texts, load_model
from crossgap_qdrant.rivals import cut_grid

needs_checkpoint = pytest.mark.skipif(not demo.DEMO_WEIGHTS_FILE.is_file(), reason="demo checkpoint not trained")
needs_openclipart = pytest.mark.skipif(
    not datasets.OPENCLIPART_PNG.is_dir() or not datasets.OPENCLIPART_SVG.is_dir(),
    reason="Debian packages openclipart-png / openclipart-svg not installed",
)


@pytest.fixture(scope="module")
def demo_model():
    return demo.load_demo_model("cpu")


@needs_checkpoint
def test_committed_checkpoint_is_small_and_describes_its_architecture():
    files = [f for f in demo.DEMO_MODEL_DIR.iterdir() if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 25 * 1024 * 1024
    cfg = json.loads(demo.DEMO_CONFIG_FILE.read_text())
    assert cfg["model_cfg"] == demo.demo_model_config()
    assert cfg["model_cfg"]["text_cfg"]["vocab_size"] == 49408


@needs_checkpoint
def test_checkpoint_loads_through_load_model_with_a_local_path(demo_model):
    demo.register_demo_config()
    model, preprocess, tokenizer = load_model(demo.DEMO_MODEL_NAME, pretrained=str(demo.DEMO_WEIGHTS_FILE),
                                              device="cpu")
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.parameters())
    assert not model.training
    stored = torch.load(demo.DEMO_WEIGHTS_FILE, map_location="cpu", weights_only=True)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, stored[name].float(), rtol=0, atol=0)
    assert abs(model.logit_scale.item() - math.log(1 / 0.07)) > 1e-2  # trained: the temperature left its init


@needs_checkpoint
def test_demo_model_gives_unit_features_of_the_embedding_width(demo_model):
    model, preprocess, tokenizer = demo_model
    width = demo.demo_model_config()["embed_dim"]
    images = [Image.new("RGB", (90, 70), c) for c in ("white", "red")]
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True)
    txt = encode_texts(demo_model, ["a red star", "a computer icon"])
    assert img.shape == (2, width) and txt.shape == (2, width)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(2))


@needs_openclipart
def test_manifest_split_is_deterministic_and_holds_out_categories():
    rows = datasets.build_manifest()
    assert len(rows) > 1000
    again = datasets.build_manifest()
    assert [(r["rel"], r["split"], r["caption"]) for r in rows] == [(r["rel"], r["split"], r["caption"]) for r in again]
    train_cats = {r["category"] for r in rows if r["split"] == "train"}
    assert not train_cats & set(datasets.HELDOUT_CATEGORIES)
    held = [r for r in rows if r["split"] == "heldout_image"]
    assert 0.05 < len(held) / len([r for r in rows if r["category"] not in datasets.HELDOUT_CATEGORIES]) < 0.15
    assert all(r["caption"].strip() for r in rows)


@needs_checkpoint
@needs_openclipart
def test_demo_smoke_run(tmp_path):
    out = io.StringIO()
    res = demo.run_demo(per_category=3, location=":memory:", data_dir=tmp_path, oti_steps=3, progress=False, out=out)
    text = out.getvalue()
    n = res["n_images"]
    assert n >= 5
    assert set(res["modes"]) == {"native", "gallery_inverted", "query_inverted", "fused", "isoclip", "pca",
                                 "gap_shift"}
    for mode, entry in res["modes"].items():
        assert 0.0 <= entry["mAP"] <= 1.0 and entry["n_queries"] <= n
        assert entry["ci95"][0] <= entry["mAP"] <= entry["ci95"][1]
    assert res["modes"]["native"]["mAP"] == pytest.approx(res["native_direct_mAP"], abs=0.02)  # float32 near-ties
    assert "modality gap" in text and "native" in text and "chance" in text
    assert 0 < res["chance_mAP"] < res["modes"]["native"]["mAP"]
    # the paired difference is the difference of the means (same queries for both methods)
    for mode in ("gallery_inverted", "isoclip", "pca", "gap_shift"):
        entry = res["modes"][mode]
        assert entry["diff_vs_native"] == pytest.approx(entry["mAP"] - res["modes"]["native"]["mAP"], abs=1e-9)
        assert entry["diff_ci95"][0] <= entry["diff_vs_native"] <= entry["diff_ci95"][1]
    cuts = res["isoclip_cuts"]
    assert cuts["source"] == "tuned" and (cuts["k_top"], cuts["k_bottom"]) in cut_grid(cuts["rank"])
