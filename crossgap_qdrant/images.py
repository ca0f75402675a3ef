"""The package's one image loader (alpha flattened onto a background, EXIF orientation applied, decompression
bombs refused) and its image-folder walk.

Every path from raw input to pixels (store ingestion, encoders, evaluation, demo, CLI) goes through
:func:`load_image`, so an image gives the same pixels, and the same vector, whichever surface read it.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path
from typing import IO, Union

import torch
from PIL import Image, ImageOps
from torchvision import transforms
from torchvision.transforms.functional import pil_modes_mapping

from crossgap_qdrant.errors import CrossgapError

logger = logging.getLogger(__name__)

#: File name endings (lower case) that :func:`list_image_files` treats as images.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

#: The flattening background: white, as CLIP-style models (and the demo model) saw line art in training.
WHITE = (255, 255, 255)

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, IO[bytes], Image.Image]


class ImageError(CrossgapError, ValueError):
    """An image could not be read: missing, unreadable, corrupt, or too large (the message names it)."""


def load_image(
    source: ImageSource,
    *,
    background: int | tuple[int, int, int] = WHITE,
    name: str | None = None,
    max_pixels: int | None = None,
) -> Image.Image:
    """Decodes an image into RGB: EXIF orientation applied, transparency flattened onto ``background``.

    Args:
        source: a file path, encoded bytes, a binary file object, or a PIL image.
        background: RGB (or one grey level) under transparent pixels (RGBA, LA, PA, and P or L/RGB images
            with a transparency entry); white by default.
        name: how errors and warnings name the image; default the path, the file object's ``name``, the PIL
            image's ``filename``, else "image bytes" / "image stream" / "PIL image". Pass it for bytes.
        max_pixels: refuse images with more pixels than this before decoding them (decompression bombs);
            default PIL's ``Image.MAX_IMAGE_PIXELS`` at call time. PIL itself refuses images above twice its
            own limit, so a larger value only helps up to there.

    Returns:
        A new RGB PIL image, independent of ``source`` (files this function opened are closed; a file object
        passed in is left open).

    PIL's warnings are captured with ``warnings.catch_warnings``, which is process-wide: when threads decode
    at once, a warning of one image may be logged under another's name.

    Raises:
        ImageError: the image is missing, not an image, corrupt or truncated, or over ``max_pixels``; the
            message names it. PIL's warnings (e.g. on odd palettes) are logged as one line each instead.
    """
    fill = _background(background)
    label = _label(source, name)
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if isinstance(source, Image.Image):
                image = _decode(source, label, limit, fill)
            else:
                with Image.open(_stream(source, label)) as opened:
                    image = _decode(opened, label, limit, fill)
        except ImageError:
            raise
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{label}: refused as a possible decompression bomb ({exc})") from None
        except FileNotFoundError:
            raise ImageError(f"{label}: no such image file") from None
        except IsADirectoryError:
            raise ImageError(f"{label}: is a folder, not an image file") from None
        except Image.UnidentifiedImageError:
            raise ImageError(f"{label}: not an image file PIL can read") from None
        except Exception as exc:  # decoders raise many types on corrupt data; all mean "unreadable"
            raise ImageError(f"{label}: corrupt or unreadable image ({type(exc).__name__}: {exc})") from None
    for record in caught:
        if not issubclass(record.category, Image.DecompressionBombWarning):  # our own limit covers it
            logger.warning("%s: %s", label, str(record.message).splitlines()[0])
    return image


MAX_INTERMEDIATE = 4
"""A model's preprocess may build a resized copy of at most this many times its output's pixels; thinner images are
cut to the part that reaches the output first (see :func:`preprocess_image`)."""

MAX_ASPECT = 8
"""For a preprocess whose steps are not recognised, images are cut to at most this aspect ratio (the centre kept)
before it runs, so its memory stays within a bounded multiple of its output's."""


def preprocess_image(preprocess, image: Image.Image):
    """``preprocess(image)`` with memory proportional to the output, whatever the image's shape.

    A "resize the short side to S, then crop the centre S x S" preprocess (open_clip's default) would first build
    an S x (S * aspect) copy: 64 x 3,840,000 pixels for a 1 x 60,000 image. When that copy would exceed
    :data:`MAX_INTERMEDIATE` times the output, the S x S centre is resampled directly from the part of the image
    it comes from (the same filter and sample positions, so the same pixels), and the preprocess then finds an
    image of its output size. For other preprocess pipelines, images thinner than :data:`MAX_ASPECT` are cut
    to that ratio around their centre first.

    Args:
        preprocess: the model's PIL image -> [3, H, W] transform.
        image: a decoded PIL image.
    """
    width, height = image.size
    short, long = min(width, height), max(width, height)
    plan = _resize_then_crop(preprocess)
    if plan is not None:
        side, crop, resample = plan
        new_long = int(side * long / short)
        if new_long * side > MAX_INTERMEDIATE * crop[0] * crop[1] and new_long >= max(crop) and side >= min(crop):
            new_w, new_h = (side, new_long) if width <= height else (new_long, side)
            top, left = int(round((new_h - crop[0]) / 2.0)), int(round((new_w - crop[1]) / 2.0))
            sx, sy = new_w / width, new_h / height
            box = (left / sx, top / sy, (left + crop[1]) / sx, (top + crop[0]) / sy)
            image = image.resize((crop[1], crop[0]), resample=resample, box=box)
    elif long > MAX_ASPECT * short:
        keep = MAX_ASPECT * short
        start = (long - keep) // 2
        image = image.crop((start, 0, start + keep, height) if width > height else (0, start, width, start + keep))
    return preprocess(image)


def _resize_then_crop(preprocess):
    """(short side S, crop (h, w), PIL filter) when ``preprocess`` begins with torchvision's Resize of the short
    side (no max_size) followed by CenterCrop; else None."""
    steps = getattr(preprocess, "transforms", None)
    if not isinstance(steps, (list, tuple)) or len(steps) < 2:
        return None
    resize, crop = steps[0], steps[1]
    if not (type(resize) is transforms.Resize and type(crop) is transforms.CenterCrop):
        return None
    size = resize.size if isinstance(resize.size, int) else (
        resize.size[0] if isinstance(resize.size, (list, tuple)) and len(resize.size) == 1 else None)
    if size is None or resize.max_size is not None or resize.interpolation not in pil_modes_mapping:
        return None
    crop_hw = tuple(crop.size) if isinstance(crop.size, (list, tuple)) else (crop.size, crop.size)
    return int(size), (int(crop_hw[0]), int(crop_hw[-1])), pil_modes_mapping[resize.interpolation]


def load_pixels(preprocess, sources, *, background: int | tuple[int, int, int] = WHITE):
    """Preprocessed pixels [N, 3, H, W] of images read by :func:`load_image` (tensors are taken as they are).

    Args:
        preprocess: the model's PIL image -> [3, H, W] transform.
        sources: image sources (see :func:`load_image`) or already preprocessed [3, H, W] tensors.

    Raises:
        ImageError: an image that cannot be read (the message names it).
    """
    return torch.stack([src if isinstance(src, torch.Tensor)
                        else preprocess_image(preprocess, load_image(src, background=background)) for src in sources])


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive, by extension, see :data:`IMAGE_EXTENSIONS`), sorted.

    Raises:
        FileNotFoundError: ``folder`` does not exist. NotADirectoryError: it is a file.
    """
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"no such folder: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` ends in one of :data:`IMAGE_EXTENSIONS` (the name only; the file is not opened)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def check_pixel_count(image: Image.Image, label: str, max_pixels: int | None = None) -> None:
    """Refuses an opened (not yet decoded) image with more pixels than ``max_pixels`` (default PIL's
    ``Image.MAX_IMAGE_PIXELS``): a possible decompression bomb. Raises ImageError naming ``label``."""
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    width, height = image.size
    if limit is not None and width * height > limit:
        raise ImageError(
            f"{label}: {width}x{height} = {width * height} pixels exceeds the limit of {limit} pixels; refused "
            "as a possible decompression bomb (raise max_pixels, --max-pixels on the command line, if the image is "
            "trusted)"
        )


def _decode(image: Image.Image, label: str, limit: int | None, fill: tuple[int, int, int]) -> Image.Image:
    check_pixel_count(image, label, limit)
    image.load()
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, fill + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def _stream(source: ImageSource, label: str):
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source))
    if hasattr(source, "read"):
        return source
    raise ImageError(f"{label}: expected a path, bytes, a binary file object or a PIL image, "
                     f"got {type(source).__name__}")


def _label(source: ImageSource, name: str | None) -> str:
    if name:
        return str(name)
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "image bytes"
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or "PIL image"
    file_name = getattr(source, "name", None)
    return file_name if isinstance(file_name, str) and file_name else "image stream"


def _background(background: int | tuple[int, int, int]) -> tuple[int, int, int]:
    values = (background,) * 3 if isinstance(background, int) else tuple(background)
    if len(values) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in values):
        raise ImageError(f"background must be an RGB triple (or one grey level) of ints in 0..255, got {background!r}")
    return values
