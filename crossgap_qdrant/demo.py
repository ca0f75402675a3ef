"""The offline demo: a small CLIP trained by this project on openclipart, and the README's main job.

``python -m crossgap_qdrant.demo`` ingests held-out openclipart images (Debian package ``openclipart-png``,
captions from ``openclipart-svg``) with the committed demo model into embedded Qdrant, runs native and
inter-modal image->image searches, and prints mAP per search mode with the number of queries and a bootstrap
95% confidence interval, plus the modality gap measured on the model.

The data helpers here (manifest, captions, split, image flattening) are shared with
``scripts/prepare_openclipart.py`` and ``scripts/train_demo_model.py``, so the demo and the training script
always agree on the held-out split.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

# ------------------------------------------------------------------------------------------------ constants
DEMO_MODEL_NAME = "crossgap-demo-clip"
DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo_model"
DEMO_CONFIG_FILE = DEMO_MODEL_DIR / "open_clip_config.json"
DEMO_WEIGHTS_FILE = DEMO_MODEL_DIR / "open_clip_pytorch_model.bin"

#: The demo model's open_clip architecture (also stored in demo_model/open_clip_config.json).
DEMO_MODEL_CONFIG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 6, "width": 192, "patch_size": 8, "head_width": 64},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 4},
}

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


# ------------------------------------------------------------------------------------------------ manifest
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
    import html

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
    import warnings

    from PIL import Image

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


# ------------------------------------------------------------------------------------------------ images
def flatten_image(path: str | Path, size: int, background: int = 255):
    """Opens an image, crops its transparent margins, composites it on white and letterboxes it to a ``size`` square (RGB PIL).

    openclipart PNGs are transparent with black under the alpha channel, so ``convert("RGB")`` alone would
    give black line art on black; the demo model was trained on images flattened this way.
    """
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("P", "LA", "L") or "transparency" in im.info:
            im = im.convert("RGBA")
        if im.mode == "RGBA":
            bbox = im.getchannel("A").getbbox()  # crop the render's transparent margins
            if bbox is not None:
                im = im.crop(bbox)
            canvas = Image.new("RGBA", im.size, (background,) * 3 + (255,))
            im = Image.alpha_composite(canvas, im).convert("RGB")
        else:
            im = im.convert("RGB")
    w, h = im.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    im = im.resize((nw, nh), Image.BICUBIC, reducing_gap=3.0)
    out = Image.new("RGB", (size, size), (background,) * 3)
    out.paste(im, ((size - nw) // 2, (size - nh) // 2))
    return out


def flatten_to_folder(rows: Sequence[dict], folder: str | Path, size: int = 128) -> list[str]:
    """Writes flattened copies (white background, square) of the images; returns their paths (cached)."""
    folder = Path(folder)
    paths = []
    for r in rows:
        out = folder / str(size) / (r["rel"][: -len(".png")] + ".png")
        if not out.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            flatten_image(r["png"], size).save(out)
        paths.append(str(out))
    return paths


# ------------------------------------------------------------------------------------------------ metrics
def average_precisions(sim, labels: Sequence, exclude_self: bool = True) -> np.ndarray:
    """Full-ranking average precision per query of a square similarity matrix (query i is gallery item i,
    removed from its own gallery). Queries with no relevant gallery item get NaN."""
    sim = np.asarray(sim, dtype=np.float64).copy()
    lab = np.asarray([hash(x) for x in labels])
    n = sim.shape[0]
    if exclude_self:
        np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")
    rel = lab[order] == lab[:, None]
    if exclude_self:
        rel[np.arange(n), n - 1] = False  # the query itself, ranked last
    hits = np.cumsum(rel, axis=1)
    prec = hits / np.arange(1, n + 1)
    n_rel = rel.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (prec * rel).sum(1) / n_rel
    ap[n_rel == 0] = np.nan
    return ap


def modality_gap(image_features, text_features) -> dict:
    """The modality gap of paired unit features: distance between the modality means, mean cosines."""
    import torch

    img = torch.as_tensor(image_features, dtype=torch.float64)
    txt = torch.as_tensor(text_features, dtype=torch.float64)
    n = img.shape[0]
    off = ~torch.eye(n, dtype=torch.bool)
    ii, tt, it = img @ img.T, txt @ txt.T, img @ txt.T
    return {
        "mean_distance": float((img.mean(0) - txt.mean(0)).norm()),
        "cos_image_image": float(ii[off].mean()),
        "cos_text_text": float(tt[off].mean()),
        "cos_image_text_paired": float(it.diagonal().mean()),
        "cos_image_text_unpaired": float(it[off].mean()),
    }


def heldout_metrics(image_features, text_features, captions: Sequence[str], categories: Sequence[str],
                    subcategories: Sequence[str] | None = None) -> dict:
    """Held-out metrics of paired image/caption features.

    - ``i2t_r1``: image->text R@1 over the distinct captions of the set (a hit: the top caption is the image's
      own caption text; ``n_captions`` candidates).
    - ``i2i_map``: image->image full-ranking mAP with category labels (query removed from the gallery).
    - ``i2i_map_sub``: the same with subcategory labels (first two folders).
    - ``gap``: :func:`modality_gap`.
    """
    import torch

    img = torch.as_tensor(image_features, dtype=torch.float32)
    txt = torch.as_tensor(text_features, dtype=torch.float32)
    uniq = sorted(set(captions))
    pos = {c: i for i, c in enumerate(uniq)}
    first = {}
    for i, c in enumerate(captions):
        first.setdefault(c, i)
    cand = txt[[first[c] for c in uniq]]
    top = (img @ cand.T).argmax(1).numpy()
    own = np.array([pos[c] for c in captions])
    out = {
        "n_images": len(captions),
        "n_captions": len(uniq),
        "i2t_r1": float((top == own).mean()),
        "i2i_map": float(np.nanmean(average_precisions((img @ img.T).numpy(), categories))),
    }
    if subcategories is not None:
        out["i2i_map_sub"] = float(np.nanmean(average_precisions((img @ img.T).numpy(), subcategories)))
    out["gap"] = modality_gap(img, txt)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()} | {
        "gap": {k: round(v, 4) for k, v in out["gap"].items()}
    }


# ------------------------------------------------------------------------------------------------ model
def register_demo_config() -> None:
    """Registers the demo architecture with open_clip under :data:`DEMO_MODEL_NAME`."""
    from crossgap_qdrant.models import register_model_config

    cfg = DEMO_MODEL_CONFIG
    if DEMO_CONFIG_FILE.is_file():
        cfg = json.loads(DEMO_CONFIG_FILE.read_text())["model_cfg"]
    register_model_config(DEMO_MODEL_NAME, cfg)


def load_demo_model(device: str | None = None):
    """Loads the committed demo model (frozen, eval mode, fp32).

    Returns:
        (model, preprocess, tokenizer), as :func:`crossgap_qdrant.models.load_model`. The preprocess expects
        images flattened on white (:func:`flatten_image`), like the training images.
    """
    from crossgap_qdrant.models import load_model

    if not DEMO_WEIGHTS_FILE.is_file():
        raise FileNotFoundError(
            f"demo checkpoint missing: {DEMO_WEIGHTS_FILE} (train it with scripts/train_demo_model.py)"
        )
    register_demo_config()
    return load_model(DEMO_MODEL_NAME, pretrained=str(DEMO_WEIGHTS_FILE), device=device or "cpu")


# ------------------------------------------------------------------------------------------------ demo
def bootstrap_ci(values, n: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean; :func:`crossgap_qdrant.evaluate.bootstrap_ci` when available."""
    try:
        from crossgap_qdrant.evaluate import bootstrap_ci as shared
    except ImportError:
        shared = None
    if shared is not None:
        ci = shared(np.asarray(values), n=n, seed=seed)
        return float(ci[0]), float(ci[1])
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n, len(values)))].mean(1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def _ranking_ap(results, ids: Sequence[int], labels: Sequence) -> np.ndarray:
    """Full-ranking AP per query from the store's result lists (query i is point ids[i])."""
    from crossgap_qdrant.metrics import retrieval_metrics

    n = len(ids)
    pos = {pid: j for j, pid in enumerate(ids)}
    sim = np.full((n, n), np.nan)
    for i, hits in enumerate(results):
        for hit in hits:
            sim[i, pos[int(hit.id)]] = hit.score  # cosine, or the RRF score for "fused"
    low = np.nanmin(sim) if np.isfinite(sim).any() else 0.0
    sim[np.isnan(sim)] = low - 1.0  # not returned: ranked after every returned item
    m = retrieval_metrics(sim, labels, labels, exclude=np.arange(n), ks=(1,))
    ap = np.full(n, np.nan)
    ap[m.query_index] = m.ap
    return ap


def run_demo(
    model_name: str | None = None,
    pretrained: str | None = None,
    *,
    per_category: int = 30,
    location: str | None = None,
    data_dir: str | Path = "demo_data",
    manifest: str | Path | None = None,
    oti_steps: int = 150,
    modes: Sequence[str] = ("native", "gallery_inverted", "query_inverted", "fused"),
    device: str | None = None,
    seed: int = 0,
    progress: bool = True,
    out=sys.stdout,
) -> dict:
    """The README's main job: held-out openclipart images into embedded Qdrant, native vs inter-modal search.

    Args:
        model_name, pretrained: an open_clip architecture and tag or checkpoint path (default: the committed
            demo model).
        per_category: held-out images per top-level category (categories with fewer than 5 are left out).
        location: Qdrant location (default: a fresh embedded local folder under ``data_dir``).
        data_dir: where flattened images and the Qdrant folder go.
        manifest: a manifest written by scripts/prepare_openclipart.py (default: built from the packages).
        oti_steps: OTI steps at ingestion (published: 150).
        modes: the store's image search modes to compare.

    Returns:
        A dict with the sizes, per-mode mAP (mean, 95% CI, number of queries), the paired difference to
        native, the modality gap and timings.
    """
    import shutil
    import tempfile

    import torch

    from crossgap_qdrant.inversion import OTIConfig
    import torch
    import torch.nn.functional as F

    from crossgap_qdrant.models import encode_images, encode_texts, load_model, model_device, text_tower
    from crossgap_qdrant.store import CrossModalStore

    def say(*a):
        print(*a, file=out, flush=True)

    t_start = time.time()
    rows = load_or_build_manifest(manifest)
    subset = demo_subset(rows, per_category=per_category, seed=seed)
    data_dir = Path(data_dir)
    say(f"openclipart: {len(rows)} images; demo set: {len(subset)} held-out images of "
        f"{len({r['category'] for r in subset})} categories "
        f"({sum(r['split'] == 'heldout_category' for r in subset)} from categories never seen in training)")

    if model_name is None:
        model, preprocess, tokenizer = load_demo_model(device)
        model_id = f"{DEMO_MODEL_NAME}/openclipart"
        model_name = DEMO_MODEL_NAME
    else:
        if model_name == DEMO_MODEL_NAME:
            register_demo_config()
        model, preprocess, tokenizer = load_model(model_name, pretrained=pretrained, device=device)
        model_id = f"{model_name}/{Path(pretrained).name if pretrained else 'random'}"
    say(f"model: {model_id}")

    side = getattr(getattr(model, "visual", None), "image_size", 128)
    side = max(128, int(max(side)) if isinstance(side, (tuple, list)) else int(side))
    paths = flatten_to_folder(subset, data_dir / "flat", size=side)
    labels = [r["category"] for r in subset]
    captions = [r["caption"] for r in subset]
    ids = list(range(len(subset)))
    payloads = [{"category": r["category"], "caption": r["caption"], "rel": r["rel"], "split": r["split"]}
                for r in subset]

    tmp = None
    if location is None:
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix="qdrant_", dir=data_dir)
        location = tmp
    result: dict[str, Any] = {"model": model_id, "n_images": len(subset), "n_categories": len(set(labels)),
                              "location": location, "oti_steps": oti_steps}
    try:
        store = CrossModalStore.open(location, "openclipart_demo", model, tokenizer, preprocess,
                                     model_id=model_id, oti_config=OTIConfig(steps=oti_steps, seed=seed))
        with store:
            t0 = time.time()
            report = store.ingest_images(paths, payloads=payloads, ids=ids, invert=True, progress=progress)
            result["ingest_s"] = round(time.time() - t0, 1)
            failed = getattr(report, "failed", None)
            say(f"ingested {store.count('image')} images with native + OTI vectors in {result['ingest_s']} s"
                + (f" ({len(failed)} failed)" if failed else ""))
            per_mode = {}
            for mode in modes:
                t0 = time.time()
                hits = store.search_images(ids, mode=mode, limit=len(ids) - 1, exclude_query=True,
                                           with_payload=False)
                per_mode[mode] = _ranking_ap(hits, ids, labels)
                result.setdefault("search_s", {})[mode] = round(time.time() - t0, 2)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    # Direct check of the native route, and the model's own alignment on this set.
    img = encode_images(model, preprocess, paths)
    txt = encode_texts(model, tokenizer, captions)
    from crossgap_qdrant.metrics import retrieval_metrics

    direct = retrieval_metrics((img @ img.T).numpy(), labels, labels, exclude=np.arange(len(labels))).ap
    held = heldout_metrics(img, txt, captions, labels)
    result["i2t_r1"] = held["i2t_r1"]
    result["n_captions"] = held["n_captions"]
    result["gap"] = held["gap"]

    # The training-free rivals on the same images, by brute force (both sides transformed).
    from crossgap_qdrant.rivals import IsoCLIPProjector, ModalityGapShift

    rank = min(model.visual.proj.shape[0], text_tower(model).width, img.shape[1])
    iso = IsoCLIPProjector.from_model(model, k_top=rank // 16, k_bottom=rank // 4)
    pixels = torch.stack([_pixels(preprocess, p) for p in paths])
    with torch.no_grad():
        iso_img = F.normalize(iso.encode_images(model, pixels.to(model_device(model))).float().cpu(), dim=-1)
    shifted = ModalityGapShift.fit(img, txt).image_to_text(img)
    result["isoclip_cuts"] = {"k_top": rank // 16, "k_bottom": rank // 4, "rank": rank}
    for name, feats in (("isoclip", iso_img), ("gap_shift", shifted)):
        sims = (feats @ feats.T).numpy()
        per_mode[name] = retrieval_metrics(sims, labels, labels, exclude=np.arange(len(labels))).ap

    base = per_mode.get("native")
    table = {}
    say("")
    say(f"image->image mAP on {len(ids)} queries (each query against the other {len(ids) - 1} images; "
        f"relevant = same category; bootstrap 95% CI over queries, 1000 resamples)")
    say(f"(rivals computed outside Qdrant on the same images: isoclip keeps singular directions "
        f"{rank // 16}..{rank - rank // 4 - 1} of {rank}; gap_shift swaps the modality means on both sides)")
    say(f"{'mode':<18}{'mAP':>7}  {'95% CI':<15} {'vs native':>10}  {'95% CI of the difference':<24}")
    for mode, ap in per_mode.items():
        ok = ~np.isnan(ap)
        lo, hi = bootstrap_ci(ap[ok], n=1000, seed=seed)
        entry = {"mAP": float(ap[ok].mean()), "ci95": [lo, hi], "n_queries": int(ok.sum())}
        line = f"{mode:<18}{100 * entry['mAP']:7.2f}  [{100 * lo:5.2f}, {100 * hi:5.2f}]"
        if base is not None and mode != "native":
            both = ok & ~np.isnan(base)
            d = ap[both] - base[both]
            dlo, dhi = bootstrap_ci(d, n=1000, seed=seed)
            entry["diff_vs_native"] = float(d.mean())
            entry["diff_ci95"] = [dlo, dhi]
            line += f" {100 * d.mean():+10.2f}  [{100 * dlo:+.2f}, {100 * dhi:+.2f}]"
        table[mode] = entry
        say(line)
    result["modes"] = table
    if base is not None:
        result["native_direct_mAP"] = float(direct.mean())
        say(f"(native mAP computed directly from the features, outside Qdrant: {100 * direct.mean():.2f})")
    g = held["gap"]
    say("")
    say(f"modality gap on this set: |mean(image) - mean(text)| = {g['mean_distance']:.3f}; mean cosine "
        f"image-image {g['cos_image_image']:.3f}, text-text {g['cos_text_text']:.3f}, image-text paired "
        f"{g['cos_image_text_paired']:.3f}, unpaired {g['cos_image_text_unpaired']:.3f}")
    say(f"image->text R@1 over {held['n_captions']} distinct captions: {100 * held['i2t_r1']:.1f}%")
    result["total_s"] = round(time.time() - t_start, 1)
    say(f"total {result['total_s']} s")
    return result


def _pixels(preprocess: Callable, path) -> "torch.Tensor":
    from PIL import Image

    with Image.open(path) as im:
        return preprocess(im.convert("RGB"))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m crossgap_qdrant.demo",
        description="Ingest held-out openclipart images into embedded Qdrant and compare native vs inter-modal "
        "image->image search (mAP with bootstrap 95%% CI).",
    )
    ap.add_argument("--model", default=None, help="open_clip architecture (default: the committed demo model)")
    ap.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint path for --model")
    ap.add_argument("--per-category", type=int, default=30, help="held-out images per category (default 30)")
    ap.add_argument("--location", default=None, help="Qdrant location (default: a temporary local folder)")
    ap.add_argument("--data-dir", default="demo_data", help="where flattened images are cached")
    ap.add_argument("--manifest", default=None, help="manifest.json from scripts/prepare_openclipart.py")
    ap.add_argument("--oti-steps", type=int, default=150)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: the demo model's ops are tiny, and several threads on a "
                    "busy CPU stall in OpenMP waits, measured 60x slower on a loaded 2-core machine; 0 keeps "
                    "torch's default)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.pretrained and not args.model:
        ap.error("--pretrained needs --model")
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    res = run_demo(args.model, args.pretrained, per_category=args.per_category, location=args.location,
                   data_dir=args.data_dir, manifest=args.manifest, oti_steps=args.oti_steps, device=args.device,
                   progress=not args.no_progress)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
