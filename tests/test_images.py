"""The one image loader: sources, transparency, EXIF orientation, decompression bombs, errors, folder walk."""

import io
import logging
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from crossgap_qdrant.images import (
    IMAGE_EXTENSIONS,
    MAX_ASPECT,
    MAX_INTERMEDIATE,
    ImageError,
    list_image_files,
    load_image,
    load_pixels,
    preprocess_image,
)
from crossgap_qdrant.store import CrossModalStore
from tests.support.store import FAST

# A little-endian TIFF header announcing 5 IFD entries that are not there: PIL warns "Corrupt EXIF data".
CORRUPT_EXIF = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00\x12\x01"


def _png(image: Image.Image, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", **params)
    return buf.getvalue()


def _pixels(image: Image.Image) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in px) for px in np.asarray(image).reshape(-1, len(image.getbands()))]


def _transparent_rgba() -> Image.Image:
    """[transparent black, opaque red, half-transparent blue]: transparent pixels hide black, as in openclipart."""
    image = Image.new("RGBA", (3, 1))
    image.putdata([(0, 0, 0, 0), (255, 0, 0, 255), (0, 0, 255, 128)])
    return image


def _flattened(rgba: np.ndarray, background) -> np.ndarray:
    """Reference "over" compositing of [..., 4] uint8 onto an opaque background, in float."""
    alpha = rgba[..., 3:4] / 255.0
    return rgba[..., :3] * alpha + np.asarray(background, dtype=float) * (1 - alpha)


@pytest.mark.parametrize("background", [(255, 255, 255), (0, 0, 0), (10, 200, 30)])
def test_transparent_png_is_flattened_onto_the_background(tmp_path, background):
    path = tmp_path / "clip.png"
    path.write_bytes(_png(_transparent_rgba()))
    kwargs = {} if background == (255, 255, 255) else {"background": background}
    out = load_image(path, **kwargs)
    assert out.mode == "RGB" and out.size == (3, 1)
    expected = _flattened(np.asarray(_transparent_rgba(), dtype=float), background)
    np.testing.assert_allclose(np.asarray(out, dtype=float), expected, atol=1.0)
    if background == (255, 255, 255):  # a transparent pixel over black comes out white, not black
        assert out.getpixel((0, 0)) == (255, 255, 255)


def test_grey_alpha_and_palette_transparency_are_flattened_too():
    la = Image.new("LA", (2, 1))
    la.putdata([(0, 0), (40, 255)])
    assert _pixels(load_image(_png(la))) == [(255, 255, 255), (40, 40, 40)]
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putdata([0, 1])
    out = load_image(_png(palette, transparency=0))
    assert _pixels(out) == [(255, 255, 255), (0, 255, 0)]
    assert load_image(_png(palette, transparency=0), background=7).getpixel((0, 0)) == (7, 7, 7)
    opaque = load_image(_png(palette))  # no transparency entry: palette colours as they are
    assert _pixels(opaque) == [(0, 0, 0), (0, 255, 0)]


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    out = load_image(buf.getvalue(), name="rotated.jpg")
    assert out.size == (20, 40)
    top, bottom = np.asarray(out)[5, 10].astype(int), np.asarray(out)[35, 10].astype(int)
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60
    with Image.open(io.BytesIO(buf.getvalue())) as raw:  # PIL alone keeps the stored orientation
        assert raw.size == (40, 20)


def test_every_source_kind_gives_the_same_pixels(tmp_path):
    data = _png(_transparent_rgba())
    path = tmp_path / "a.png"
    path.write_bytes(data)
    expected = np.asarray(load_image(path))
    with open(path, "rb") as f:
        from_file = load_image(f)
    with Image.open(path) as opened:
        from_pil = load_image(opened)
    for out in (load_image(str(path)), load_image(data), load_image(bytearray(data)), from_file, from_pil):
        assert out.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(out), expected)


def test_decompression_bomb_is_refused_before_decoding():
    data = _png(Image.new("RGB", (20, 20)))
    with pytest.raises(ImageError, match=r"huge\.png: 20x20 = 400 pixels exceeds the limit of 100 pixels.*bomb"):
        load_image(data, name="huge.png", max_pixels=100)
    assert load_image(data, max_pixels=400).size == (20, 20)


def test_pil_bomb_limits_become_our_error(monkeypatch, recwarn):
    data = _png(Image.new("RGB", (20, 20)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # between PIL's warning (300) and error (600) limits
    with pytest.raises(ImageError, match="big.png: .*400 pixels exceeds the limit of 300"):
        load_image(data, name="big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 150)  # past PIL's error limit: PIL refuses in Image.open
    with pytest.raises(ImageError, match="big.png: refused as a possible decompression bomb"):
        load_image(data, name="big.png", max_pixels=1000)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_corrupt_data_is_named_by_the_given_name(tmp_path):
    with pytest.raises(ImageError, match="upload #3: not an image file") as info:
        load_image(b"definitely not an image", name="upload #3")
    assert "BytesIO" not in str(info.value) and "0x" not in str(info.value)
    with pytest.raises(ImageError, match="^image bytes: "):
        load_image(b"definitely not an image")
    truncated = _png(Image.effect_noise((64, 64), 50))[:300]
    with pytest.raises(ImageError, match="cut.png: corrupt or unreadable image"):
        load_image(truncated, name="cut.png")
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 garbage")
    with pytest.raises(ImageError, match="broken.jpg"):
        load_image(path)
    with pytest.raises(ImageError, match="missing.png: no such image file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="expected a path, bytes"):
        load_image(12345)
    with pytest.raises(ValueError, match="background"):
        load_image(_png(_transparent_rgba()), background=(300, 0, 0))


def test_pil_warnings_become_one_line_log_records(caplog):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG", exif=CORRUPT_EXIF)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a leaking UserWarning would fail here
        with caplog.at_level(logging.WARNING, logger="crossgap_qdrant.images"):
            out = load_image(buf.getvalue(), name="odd-exif.jpg")
    assert out.size == (8, 8)
    records = [r for r in caplog.records if r.name == "crossgap_qdrant.images"]
    assert len(records) == 1 and records[0].getMessage().startswith("odd-exif.jpg: Corrupt EXIF data")
    assert "\n" not in records[0].getMessage()


def test_list_image_files_walks_recursively_by_extension(tmp_path):
    (tmp_path / "b" / "c").mkdir(parents=True)
    for name in ("z.PNG", "a.jpg", "b/c/d.webp", "notes.txt", "b/e.gif", "b/c/f"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "dir.png").mkdir()  # a folder named like an image is not a file
    found = [p.relative_to(tmp_path).as_posix() for p in list_image_files(str(tmp_path))]
    assert found == ["a.jpg", "b/c/d.webp", "b/e.gif", "z.PNG"]
    assert {".jpg", ".jpeg", ".png", ".webp"} <= IMAGE_EXTENSIONS
    with pytest.raises(FileNotFoundError, match="no such folder"):
        list_image_files(tmp_path / "missing")
    with pytest.raises(NotADirectoryError):
        list_image_files(tmp_path / "a.jpg")


# ------------------------------------------------------------------------------------ thin images, bounded memory
@pytest.fixture
def resized_sizes(monkeypatch):
    """Every PIL resize's output size, as (width, height)."""
    sizes, real = [], Image.Image.resize

    def recording(self, size, *args, **kwargs):
        sizes.append(tuple(size))
        return real(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording)
    return sizes


def _thin(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("shape", [(1, 5000), (7000, 3), (300, 2400), (97, 1000)])
def test_thin_images_give_the_same_pixels_through_a_bounded_intermediate(tiny_clip, shape, resized_sizes):
    image = _thin(*shape)
    reference = tiny_clip.preprocess(image)  # resizes the short side to 32: a 32 x (32 * aspect) intermediate
    resized_sizes.clear()
    bounded = preprocess_image(tiny_clip.preprocess, image)
    assert torch.equal(bounded, reference)  # the same filter at the same sample positions
    assert max(w * h for w, h in resized_sizes) <= MAX_INTERMEDIATE * 32 * 32
    resized_sizes.clear()
    assert torch.equal(load_pixels(tiny_clip.preprocess, [_png(image)])[0], reference)
    assert max(w * h for w, h in resized_sizes) <= MAX_INTERMEDIATE * 32 * 32


def test_every_store_image_path_bounds_the_intermediate(tiny_clip, tmp_path, resized_sizes):
    path = tmp_path / "thin.png"
    path.write_bytes(_png(_thin(1, 60000)))  # a few hundred bytes; 1.15 GiB through the plain preprocess
    with CrossModalStore.open(str(tmp_path / "q"), "g", tiny_clip, **FAST) as store:
        report = store.ingest_images([str(path)], progress=False)
        assert report.inserted == 1
        store.search_images(image=str(path), mode="native")
    assert resized_sizes and max(w * h for w, h in resized_sizes) <= MAX_INTERMEDIATE * 32 * 32


def test_an_unrecognised_preprocess_gets_images_cut_to_a_bounded_aspect():
    seen = []
    preprocess_image(lambda image: seen.append(image.size), _thin(1, 60000))
    preprocess_image(lambda image: seen.append(image.size), _thin(50, 40))
    assert seen == [(1, MAX_ASPECT), (50, 40)]
