"""The openclipart data set code (crossgap_qdrant.datasets): flattening, subset, path safety."""

import numpy as np
import pytest
from PIL import Image, ImageFile

from crossgap_qdrant.datasets import demo_subset, flatten_image, flatten_to_folder, safe_relative_path
from crossgap_qdrant.images import ImageError


def _transparent_png(path):
    im = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    im.paste((200, 0, 0, 255), (5, 5, 25, 15))  # a 20 x 10 opaque box in a transparent margin
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def test_flatten_image_puts_transparency_on_white(tmp_path):
    flat = np.asarray(flatten_image(_transparent_png(tmp_path / "a.png"), 16))
    assert flat.shape == (16, 16, 3)
    assert (flat[0, 0] == 255).all()  # letterbox and transparent margin: white, not black
    assert flat[8, 8, 0] > 150 and flat[8, 8, 1] < 80  # the opaque box, cropped to and centred
    # cropped to the box (20 x 10 -> 16 x 8, centred): rows 4..11 hold the box, rows 0..3 the letterbox
    assert (flat[:4] == 255).all() and flat[5, 8, 1] < 80


def test_flatten_image_refuses_a_bomb_before_decoding_it(tmp_path, monkeypatch):
    path = _transparent_png(tmp_path / "big.png")  # 40 x 20 = 800 pixels
    decoded = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1) or load(self))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # PIL itself only warns below twice its limit
    with pytest.raises(ImageError, match="decompression bomb"):
        flatten_image(path, 16)
    assert not decoded


def test_flatten_to_folder_writes_inside_and_caches(tmp_path):
    src = _transparent_png(tmp_path / "src" / "animals" / "cat.png")
    rows = [{"rel": "animals/cat.png", "png": str(src)}]
    (path,) = flatten_to_folder(rows, tmp_path / "cache", size=16)
    assert path == str(tmp_path / "cache" / "16" / "animals" / "cat.png")
    assert Image.open(path).size == (16, 16)
    src.unlink()  # cached: the source is not read again
    assert flatten_to_folder(rows, tmp_path / "cache", size=16) == [path]


@pytest.mark.parametrize("rel", ["../escape.png", "animals/../../escape.png", "/tmp/escape.png",
                                 "..\\escape.png", "C:/escape.png", "", "."])
def test_flatten_to_folder_never_writes_outside_its_folder(tmp_path, rel):
    src = _transparent_png(tmp_path / "src" / "ok.png")
    folder = tmp_path / "a" / "b" / "cache"
    rows = [{"rel": "ok.png", "png": str(src)}, {"rel": rel, "png": str(src)}]
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="not a plain relative path"):
        flatten_to_folder(rows, folder, size=16)
    assert sorted(p for p in tmp_path.rglob("*")) == before  # refused before anything was written


def test_safe_relative_path_keeps_plain_paths():
    assert str(safe_relative_path("animals/cats/cat.png")) == "animals/cats/cat.png"
    assert str(safe_relative_path("animals/./cat.png")) == "animals/cat.png"


def test_demo_subset_is_balanced_and_held_out():
    rows = [{"rel": f"{c}/{i}.png", "category": c, "split": s}
            for c, n in (("animals", 40), ("food", 8), ("tools", 3)) for i in range(n)
            for s in (("train",) if i % 2 else ("heldout_image",))]
    subset = demo_subset(rows, per_category=10, min_per_category=2, seed=0)
    by_cat = {c: [r for r in subset if r["category"] == c] for c in ("animals", "food", "tools")}
    assert len(by_cat["animals"]) == 10 and len(by_cat["food"]) == 4 and len(by_cat["tools"]) == 2
    assert all(r["split"] != "train" for r in subset)
    assert demo_subset(rows, per_category=10, min_per_category=2, seed=0) == subset  # deterministic
    assert not [r for r in demo_subset(rows, min_per_category=3) if r["category"] == "tools"]
