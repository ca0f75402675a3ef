"""Small JPEG thumbnails of image files, read through the package's one image loader (bomb guard included).

The service serves them for stored points only (``/thumb/POINT_ID``, from the source path the store recorded);
contact sheets embed them as data URIs.
"""

from __future__ import annotations

import base64
import io
import os
from functools import lru_cache

from PIL import Image

from crossgap_qdrant.images import load_image

#: The longest side of a thumbnail, in pixels (results are shown at about half of it; sharp on HiDPI screens).
THUMB_SIZE = 192

#: JPEG quality of thumbnails: line art stays clean at this size while a thumbnail stays a few kB.
JPEG_QUALITY = 85

THUMB_MEDIA_TYPE = "image/jpeg"


def thumbnail(source, size: int = THUMB_SIZE, max_pixels: int | None = None) -> Image.Image:
    """An RGB image whose longest side is at most ``size``: ``source`` read by :func:`load_image` (EXIF
    orientation applied, transparency on white) and shrunk with its aspect ratio kept.

    Raises:
        ImageError: the source is missing, not an image, corrupt, or over ``max_pixels``.
    """
    if size < 1:
        raise ValueError(f"thumbnail size must be >= 1 pixel, got {size}")
    image = load_image(source, max_pixels=max_pixels)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    return image


def thumbnail_bytes(source, size: int = THUMB_SIZE, max_pixels: int | None = None) -> bytes:
    """The JPEG bytes of :func:`thumbnail`."""
    buffer = io.BytesIO()
    thumbnail(source, size, max_pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return buffer.getvalue()


def file_thumbnail(path: str, size: int = THUMB_SIZE, max_pixels: int | None = None) -> bytes:
    """:func:`thumbnail_bytes` of an image file, cached while the file keeps its modification time and size.

    Raises:
        ImageError: as :func:`thumbnail`; a missing file names the path.
    """
    try:
        stat = os.stat(path)
    except OSError:
        stat = None
    if stat is None:  # let the loader word the error
        return thumbnail_bytes(path, size, max_pixels)
    return _cached_file_thumbnail(path, stat.st_mtime_ns, stat.st_size, size, max_pixels)


@lru_cache(maxsize=512)
def _cached_file_thumbnail(path: str, mtime_ns: int, file_size: int, size: int, max_pixels: int | None) -> bytes:
    return thumbnail_bytes(path, size, max_pixels)


def data_uri(jpeg: bytes) -> str:
    """A ``data:`` URI of JPEG bytes, for pages that carry their images inside."""
    return f"data:{THUMB_MEDIA_TYPE};base64,{base64.b64encode(jpeg).decode('ascii')}"
