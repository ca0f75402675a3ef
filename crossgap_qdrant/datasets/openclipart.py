"""The openclipart data set: manifest, captions, the held-out split, and flattened images.

Reads the Debian packages openclipart-png (renders in category folders) and openclipart-svg (same relative
paths; titles in dc:title, keywords in rdf:li). The demo (:mod:`crossgap_qdrant.demo`),
``scripts/prepare_openclipart.py`` and ``scripts/train_demo_model.py`` all use this module, so they always
agree on the held-out split.
"""

from __future__ import annotations

import collections
import hashlib
import html
import json
import re
import warnings
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Sequence

import numpy as np
from PIL import Image

from crossgap_qdrant.errors import CrossgapError
from crossgap_qdrant.images import check_pixel_count, load_image


class ManifestError(CrossgapError, ValueError):
    """A manifest row names a file outside the data folder (an absolute path or one with "..")."""


OPENCLIPART_PNG = Path("/usr/share/openclipart/png")
OPENCLIPART_SVG = Path("/usr/share/openclipart/svg")

#: Top-level categories held out entirely (no image of theirs is seen in training).
HELDOUT_CATEGORIES = ("food", "plants", "tools", "buildings")
#: Fraction of the images of every training category held out (chosen by a hash of the content).
HELDOUT_IMAGE_FRACTION = 0.10
SPLIT_SALT = "crossgap-openclipart-v1"

#: Keywords that carry no content (collection bookkeeping).
_STOP_KEYWORDS = {
    "", "hash", "clip art", "clipart", "image", "media", "png", "svg", "public domain", "externalsource",
    "unsorted", "theme", "icons", "icon", "magick", "lemon_theme_icon", "appicon", "mimeicon",
    "united_nations_member", "mapsym", "lemon theme icon", "united nations member", "mime types", "mimetypes",
}
#: Titles shared by at least this many images are collection names, not captions: the file name is used.
_GENERIC_TITLE_COUNT = 15
#: Renders larger than this many pixels (20 of the package's 8121, up to 21k x 30k) are left out: decoding one
#: takes seconds and gigabytes.
MAX_PIXELS = 4_000_000


def _svg_metadata(svg_path: Path) -> tuple[str, list[str]]:
    """(title, keywords) of an openclipart SVG: dc:title and the rdf:li of dc:subject in the cc:Work block."""
    try:
        text = svg_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "", []
    meta = re.search(r"<metadata.*?</metadata>", text, re.S)
    block = meta.group(0) if meta else ""
    work = re.search(r"<cc:Work.*?</cc:Work>", block, re.S)
    block = work.group(0) if work else block
    title = re.search(r"<dc:title>(.*?)</dc:title>", block, re.S)
    subject = re.search(r"<dc:subject>(.*?)</dc:subject>", block, re.S)
    keywords = re.findall(r"<rdf:li>(.*?)</rdf:li>", subject.group(1), re.S) if subject else []
    return (_unescape(title.group(1)) if title else ""), [_unescape(k) for k in keywords]


def _unescape(s: str) -> str:
    s = html.unescape(html.unescape(s))
    return re.sub(r"\s+", " ", s).strip()


def _words(s: str) -> str:
    """Underscores, dashes and digits to spaces; hex ids and single letters dropped."""
    s = re.sub(r"[_\-+./]+", " ", s)
    s = re.sub(r"\d+", " ", s)
    words = [w for w in s.split() if len(w) > 1 and not re.fullmatch(r"0x[0-9a-f]+|[0-9a-f]{6,}", w.lower())]
    return " ".join(words).strip()


def _clean_title(title: str) -> str:
    title = re.sub(r"(?i)^clip ?art by [^-]+-\s*", "", title)
    return _words(title)


def _caption(name: str, keywords: Sequence[str]) -> str:
    kws = []
    for k in keywords:
        k = _words(k.lower())
        if k and k not in _STOP_KEYWORDS and k != name.lower() and k not in kws:
            kws.append(k)
    return ", ".join([name] + kws) if kws else name


def _split_of(key: str, category: str) -> str:
    if category in HELDOUT_CATEGORIES:
        return "heldout_category"
    h = int(hashlib.sha1(f"{SPLIT_SALT}:{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "heldout_image" if h < HELDOUT_IMAGE_FRACTION else "train"


def build_manifest(png_root: str | Path = OPENCLIPART_PNG, svg_root: str | Path = OPENCLIPART_SVG) -> list[dict]:
    """One record per PNG of the openclipart-png package, sorted by relative path (deterministic).

    Record fields: ``rel`` (path relative to ``png_root``), ``png``, ``svg`` (or None), ``title``,
    ``keywords``, ``name`` (cleaned title, or the file name where the title is a collection name),
    ``caption`` (name plus content keywords), ``size`` ([width, height]; renders above :data:`MAX_PIXELS` are
    left out), ``category`` (top folder), ``subcategory`` (first two folders),
    ``split`` ("train", "heldout_image": held-out images of training categories, chosen by a hash of the
    file's content; "heldout_category": images of the categories in :data:`HELDOUT_CATEGORIES`), ``sha1``
    (of the PNG bytes) and ``duplicates`` (byte-identical files folded into this record: every content
    appears once, so no held-out image has a copy in training).
    """
    png_root, svg_root = Path(png_root), Path(svg_root)
    if not png_root.is_dir():
        raise FileNotFoundError(
            f"{png_root} not found: install the Debian packages openclipart-png and openclipart-svg "
            "(apt-get install openclipart-png openclipart-svg)"
        )
    rows = []
    for png in sorted(png_root.rglob("*.png")):
        rel = png.relative_to(png_root).as_posix()
        parts = rel.split("/")
        if len(parts) < 2:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(png) as im:  # reads the header only
                    width, height = im.size
        except Exception:
            continue
        if width * height > MAX_PIXELS:
            continue
        svg = svg_root / (rel[: -len(".png")] + ".svg")
        title, keywords = _svg_metadata(svg) if svg.is_file() else ("", [])
        rows.append(
            {
                "rel": rel,
                "png": str(png),
                "svg": str(svg) if svg.is_file() else None,
                "title": title,
                "keywords": keywords,
                "category": parts[0],
                "subcategory": "/".join(parts[:2]) if len(parts) > 2 else parts[0],
                "size": [width, height],
            }
        )
    # Byte-identical renders (2122 files in 903 groups: icons shared by themes, flags in two folders) become one
    # record, so that no held-out image has a copy in training. A group with a member in a held-out category
    # is held out with that category.
    groups: dict[str, list[dict]] = collections.defaultdict(list)
    for r in rows:
        r["sha1"] = hashlib.sha1(Path(r["png"]).read_bytes()).hexdigest()
        groups[r["sha1"]].append(r)
    kept = []
    for r in rows:
        members = groups[r["sha1"]]
        held = [m for m in members if m["category"] in HELDOUT_CATEGORIES]
        keep = held[0] if held else members[0]
        if keep is r:
            r["duplicates"] = [m["rel"] for m in members if m is not r]
            kept.append(r)
    rows = kept
    counts = collections.Counter(r["title"].lower() for r in rows)
    for r in rows:
        name = _clean_title(r["title"])
        if not name or counts[r["title"].lower()] >= _GENERIC_TITLE_COUNT:
            name = _words(Path(r["rel"]).stem) or _words(r["subcategory"]) or r["category"]
        r["name"] = name.lower()
        r["caption"] = _caption(r["name"], r["keywords"])
        r["split"] = _split_of(r["sha1"], r["category"])
    return rows


def load_or_build_manifest(path: str | Path | None = None) -> list[dict]:
    """Reads a manifest written by ``scripts/prepare_openclipart.py``, or builds it from the packages."""
    if path is not None and Path(path).is_file():
        return json.loads(Path(path).read_text())
    return build_manifest()


def demo_subset(rows: Sequence[dict], per_category: int = 30, min_per_category: int = 5, seed: int = 0) -> list[dict]:
    """A class-balanced sample of the held-out images: up to ``per_category`` images of every top-level
    category with at least ``min_per_category`` held-out images (both held-out kinds together)."""
    rng = np.random.default_rng(seed)
    by_cat: dict[str, list[dict]] = collections.defaultdict(list)
    for r in rows:
        if r["split"] != "train":
            by_cat[r["category"]].append(r)
    out = []
    for cat in sorted(by_cat):
        items = by_cat[cat]
        if len(items) < min_per_category:
            continue
        idx = rng.permutation(len(items))[:per_category]
        out.extend(items[i] for i in sorted(idx))
    return out


def flatten_image(path: str | Path, size: int, background: int = 255):
    """Opens an image, crops its transparent margins, flattens it on white and letterboxes it to a square.

    Returns an RGB PIL image of ``size`` x ``size``. Flattening goes through the package's image loader
    (:func:`crossgap_qdrant.images.load_image`); only the margin crop and the letterbox are specific to here.

    openclipart PNGs are transparent with black under the alpha channel, so ``convert("RGB")`` alone would
    give black line art on black; the demo model was trained on images flattened this way.
    """
    with Image.open(path) as im:
        check_pixel_count(im, str(path))  # before decoding
        im.load()
        if im.mode in ("P", "LA", "L") or "transparency" in im.info:
            im = im.convert("RGBA")
        if im.mode == "RGBA":
            bbox = im.getchannel("A").getbbox()  # crop the render's transparent margins
            if bbox is not None:
                im = im.crop(bbox)
        im = load_image(im, background=background, name=str(path))
    w, h = im.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    im = im.resize((nw, nh), Image.BICUBIC, reducing_gap=3.0)
    out = Image.new("RGB", (size, size), (background,) * 3)
    out.paste(im, ((size - nw) // 2, (size - nh) // 2))
    return out


def safe_relative_path(rel: str) -> PurePosixPath:
    """A manifest row's relative path, checked to stay inside the folder it is joined to.

    Raises:
        ValueError: the path is empty, absolute (POSIX or Windows, drive letters included) or has a ".."
            component: joined to a folder it would point outside it.
    """
    rel = str(rel)
    posix = PurePosixPath(rel.replace("\\", "/"))
    if (not rel.strip() or posix.is_absolute() or PureWindowsPath(rel).drive or ".." in posix.parts
            or posix == PurePosixPath(".")):
        raise ManifestError(
            f"manifest row path {rel!r} is not a plain relative path (absolute or containing '..'); "
            "rebuild the manifest with scripts/prepare_openclipart.py"
        )
    return posix


def flatten_to_folder(rows: Sequence[dict], folder: str | Path, size: int = 128) -> list[str]:
    """Writes flattened copies (white background, square) of the images; returns their paths (cached).

    Each image goes to ``folder/<size>/<row["rel"]>``; a row whose ``rel`` is absolute or contains ".."
    is refused before anything is written (see :func:`safe_relative_path`).

    Args:
        rows: manifest records (``rel`` and ``png`` are used).
        folder: the cache folder.
        size: side of the square images.

    Returns:
        The paths of the flattened images, in the order of ``rows``.

    Raises:
        ValueError: a row's ``rel`` would point outside ``folder``.
    """
    root = Path(folder) / str(size)
    targets = [root / safe_relative_path(r["rel"]).with_suffix(".png") for r in rows]
    for r, out in zip(rows, targets):
        if not out.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            flatten_image(r["png"], size).save(out)
    return [str(p) for p in targets]
