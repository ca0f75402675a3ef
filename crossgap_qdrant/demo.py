"""The offline demo: a small CLIP trained by this project on openclipart, and the README's main job.

``python -m crossgap_qdrant.demo`` ingests held-out openclipart images (:mod:`crossgap_qdrant.datasets`) with
the committed demo model into embedded Qdrant, runs native and inter-modal image->image searches, adds the
training-free rivals (isoclip, pca, gap_shift) computed on the same images, and prints mAP per method with a
bootstrap 95% confidence interval, the paired difference to native, and the modality gap of the model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

import numpy as np
import torch

from crossgap_qdrant.datasets import demo_subset, flatten_to_folder, load_or_build_manifest
from crossgap_qdrant.evaluate import hits_to_similarity
from crossgap_qdrant.evaluate.representations import tune_isoclip
from crossgap_qdrant.images import load_pixels
from crossgap_qdrant.inversion import OTIConfig
from crossgap_qdrant.metrics import bootstrap_ci, heldout_metrics, paired_bootstrap_ci, per_query, retrieval_metrics
from crossgap_qdrant.models import encode_images, encode_texts, load_model, register_model_config
from crossgap_qdrant.models.specs import DEMO_MODEL_DIR, DEMO_MODEL_NAME, DEMO_SPEC, read_model_config
from crossgap_qdrant.rivals import (
    IsoCLIPProjector,
    ModalityGapShift,
    fit_pca_projector,
    image_pre_projection,
    published_cuts,
)
from crossgap_qdrant.store import MODES, CrossModalStore

DEMO_CONFIG_FILE = DEMO_MODEL_DIR / "open_clip_config.json"
DEMO_WEIGHTS_FILE = DEMO_MODEL_DIR / "open_clip_pytorch_model.bin"



def demo_model_config() -> dict[str, Any]:
    """The demo model's open_clip architecture (``embed_dim``, ``vision_cfg``, ``text_cfg``), read from its one
    copy, :data:`DEMO_CONFIG_FILE`."""
    return read_model_config(DEMO_CONFIG_FILE)


def register_demo_config() -> None:
    """Registers the demo architecture with open_clip under :data:`DEMO_MODEL_NAME` (for training scripts that
    build it from scratch; loading the committed model needs no registration)."""
    register_model_config(DEMO_MODEL_NAME, demo_model_config())


def load_demo_model(device: str | None = None):
    """The committed demo model (frozen, eval mode, fp32): ``load_model("crossgap-demo")``.

    Returns:
        The :class:`~crossgap_qdrant.models.ClipModel` handle. Its preprocess expects images flattened on
        white (:func:`crossgap_qdrant.datasets.flatten_image`), like the training images.
    """
    return load_model(DEMO_SPEC, device=device or "cpu")


def _load(model_name: str | None, pretrained: str | None, device: str | None):
    """The model handle: the demo model by default."""
    if model_name is None:
        return load_demo_model(device)
    return load_model(model_name, pretrained=pretrained, device=device)


def _rival_scores(clip, paths: Sequence[str], img, txt, labels: Sequence[str]) -> tuple[dict[str, Any], dict]:
    """Image->image scores [N, N] of the rivals on these images, fitted as ``crossgap-qdrant evaluate`` does.

    isoclip: the backbone's published cuts, else cuts chosen on these images from the grid (cross-fitted:
    each query scored with the cuts chosen on the other half); pca: the bundled class names; gap_shift: means
    of these images and their captions, the shifted query against the native images.
    """

    model, preprocess, tokenizer = clip
    pixels, own = load_pixels(preprocess, paths), np.arange(len(paths))
    cuts = published_cuts(clip.name, clip.pretrained)
    if cuts is not None:
        iso = IsoCLIPProjector.from_model(model, *cuts, cuts_source="published")
        feats = iso.encode_images(model, pixels)
        iso_scores = feats @ feats.T
    else:
        score = lambda sim: per_query(retrieval_metrics(sim, labels, labels, exclude=own), len(paths))  # noqa: E731
        iso, iso_scores, _ = tune_isoclip(model, "image", image_pre_projection(model, pixels), slice(None),
                                          slice(None), score)
    pca = fit_pca_projector(model, tokenizer).project(img)
    scores = {"isoclip": iso_scores, "pca": pca @ pca.T,
              "gap_shift": ModalityGapShift.fit(img, txt).image_to_text(img) @ img.T}
    return scores, {"k_top": iso.k_top, "k_bottom": iso.k_bottom, "rank": iso.rank, "source": iso.cuts_source}


def _summarise(per_mode: dict[str, np.ndarray], seed: int) -> dict[str, dict]:
    """Per method: mAP, its 95% CI, number of queries, and the paired difference to native with its CI."""
    base = per_mode.get("native")
    table = {}
    for mode, ap in per_mode.items():
        ok = ~np.isnan(ap)
        lo, hi = bootstrap_ci(ap[ok], n=1000, seed=seed)
        entry = {"mAP": float(ap[ok].mean()), "ci95": [lo, hi], "n_queries": int(ok.sum())}
        if base is not None and mode != "native":
            diff, dlo, dhi = paired_bootstrap_ci(ap, base, n=1000, seed=seed)
            entry |= {"diff_vs_native": diff, "diff_ci95": [dlo, dhi]}
        table[mode] = entry
    return table


def run_demo(
    model_name: str | None = None,
    pretrained: str | None = None,
    *,
    per_category: int = 30,
    location: str | None = None,
    data_dir: str | Path = "demo_data",
    manifest: str | Path | None = None,
    oti_steps: int = 150,
    modes: Sequence[str] = MODES,
    device: str | None = None,
    seed: int = 0,
    progress: bool = True,
    out: TextIO = sys.stdout,
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
        out: where the demo's report is written.

    Returns:
        A dict with the sizes, per-method mAP (mean, 95% CI, number of queries), the paired difference to
        native, the modality gap and timings.
    """


    def say(line: str = "") -> None:
        out.write(line + "\n")
        out.flush()

    t_start = time.time()
    rows = load_or_build_manifest(manifest)
    subset = demo_subset(rows, per_category=per_category, seed=seed)
    data_dir = Path(data_dir)
    say(f"openclipart: {len(rows)} images; demo set: {len(subset)} held-out images of "
        f"{len({r['category'] for r in subset})} categories "
        f"({sum(r['split'] == 'heldout_category' for r in subset)} from categories never seen in training)")
    clip = _load(model_name, pretrained, device)
    model, preprocess, tokenizer = clip
    say(f"model: {clip.display_name} (id {clip.model_id})")

    side = getattr(getattr(model, "visual", None), "image_size", 128)
    side = max(128, int(max(side)) if isinstance(side, (tuple, list)) else int(side))
    paths = flatten_to_folder(subset, data_dir / "flat", size=side)
    labels = [r["category"] for r in subset]
    captions = [r["caption"] for r in subset]
    ids = list(range(len(subset)))
    own = np.arange(len(ids))
    payloads = [{"category": r["category"], "caption": r["caption"], "rel": r["rel"], "split": r["split"]}
                for r in subset]

    tmp = None
    if location is None:
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = location = tempfile.mkdtemp(prefix="qdrant_", dir=data_dir)
    result: dict[str, Any] = {"model": clip.display_name, "model_id": clip.model_id, "n_images": len(subset),
                              "n_categories": len(set(labels)), "location": location, "oti_steps": oti_steps,
                              "search_s": {}}
    per_mode: dict[str, np.ndarray] = {}
    try:
        store = CrossModalStore.open(location, "openclipart_demo", clip,
                                     oti_config=OTIConfig(steps=oti_steps, seed=seed))
        try:
            t0 = time.time()
            report = store.ingest_images(paths, payloads=payloads, ids=ids, invert=True, progress=progress)
            result["ingest_s"] = round(time.time() - t0, 1)
            say(f"ingested {report.inserted} images with native + OTI vectors in {result['ingest_s']} s"
                + (f" ({len(report.failed)} failed)" if report.failed else ""))
            for mode in modes:
                t0 = time.time()
                hits = store.search_images(ids, mode=mode, limit=len(ids) - 1, exclude_query=True,
                                           with_payload=False)
                sim = hits_to_similarity(hits, ids)  # cosine, or the RRF score for "fused"
                per_mode[mode] = per_query(retrieval_metrics(sim, labels, labels, exclude=own), len(ids))
                result["search_s"][mode] = round(time.time() - t0, 2)
        finally:
            store.close()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    # Direct check of the native route, the rivals by brute force, and the model's own alignment on this set.
    img = encode_images(clip, paths)
    txt = encode_texts(clip, captions)
    direct_metrics = retrieval_metrics(img @ img.T, labels, labels, exclude=own)
    direct = direct_metrics.ap
    result["chance_mAP"] = direct_metrics.summary()["chance mAP"]
    held = heldout_metrics(img, txt, captions, labels)
    result |= {"i2t_r1": held["i2t_r1"], "n_captions": held["n_captions"], "gap": held["gap"]}
    rivals, cuts = _rival_scores(clip, paths, img, txt, labels)
    result["isoclip_cuts"] = cuts
    for name, scores in rivals.items():
        per_mode[name] = per_query(retrieval_metrics(scores, labels, labels, exclude=own), len(ids))

    table = result["modes"] = _summarise(per_mode, seed)
    say()
    say(f"image->image mAP on {len(ids)} queries (each query against the other {len(ids) - 1} images; "
        f"relevant = same category; bootstrap 95% CI over queries, 1000 resamples; the difference to native "
        f"by a paired bootstrap)")
    how = "published" if cuts["source"] == "published" else "chosen on these images, cross-fitted"
    say(f"(rivals computed outside Qdrant on the same images: isoclip keeps singular directions "
        f"{cuts['k_top']}..{cuts['rank'] - cuts['k_bottom'] - 1} of {cuts['rank']} ({how}); pca projects onto "
        f"the top half of the principal directions of the bundled class names; gap_shift moves the query to the "
        f"text side and compares it with the native images)")
    say(f"{'method':<18}{'mAP':>7}  {'95% CI':<15} {'vs native':>10}  {'95% CI of the difference':<24}")
    for mode, entry in table.items():
        lo, hi = entry["ci95"]
        line = f"{mode:<18}{100 * entry['mAP']:7.2f}  [{100 * lo:5.2f}, {100 * hi:5.2f}]"
        if "diff_vs_native" in entry:
            dlo, dhi = entry["diff_ci95"]
            line += f" {100 * entry['diff_vs_native']:+10.2f}  [{100 * dlo:+.2f}, {100 * dhi:+.2f}]"
        say(line)
    if "native" in per_mode:
        result["native_direct_mAP"] = float(direct.mean())
        say(f"(native mAP computed directly from the features, outside Qdrant: {100 * direct.mean():.2f})")
    say(f"(chance: mAP of a random ranking of the same galleries: {100 * result['chance_mAP']:.2f})")
    g = held["gap"]
    say()
    say(f"modality gap on this set: |mean(image) - mean(text)| = {g['mean_distance']:.3f}; mean cosine "
        f"image-image {g['cos_image_image']:.3f}, text-text {g['cos_text_text']:.3f}, image-text paired "
        f"{g['cos_image_text_paired']:.3f}, unpaired {g['cos_image_text_unpaired']:.3f}")
    say("(OpenAI CLIP ViT-B/32 on MSCOCO, Liang et al. 2022: |mean(image) - mean(text)| = 0.82; mean cosine "
        "image-image 0.47, text-text 0.51)")
    say(f"image->text R@1 over {held['n_captions']} distinct captions: {100 * held['i2t_r1']:.1f}%")
    result["total_s"] = round(time.time() - t_start, 1)
    say(f"total {result['total_s']} s")
    return result


def build_parser() -> argparse.ArgumentParser:
    """The demo's flags."""
    ap = argparse.ArgumentParser(
        prog="python -m crossgap_qdrant.demo",
        description="Ingest held-out openclipart images into embedded Qdrant and compare native vs inter-modal "
        "image->image search (mAP with bootstrap 95% CI).",
    )
    ap.add_argument("--model", default=None, help="open_clip architecture (default: the committed demo model)")
    ap.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint path for --model")
    ap.add_argument("--per-category", type=int, default=30, help="held-out images per category (default: %(default)s)")
    ap.add_argument("--location", default=None, help="Qdrant location (default: a temporary local folder)")
    ap.add_argument("--data-dir", default="demo_data",
                    help="where the images, flattened onto white, are cached (default: %(default)s)")
    ap.add_argument("--manifest", default=None, help="manifest.json from scripts/prepare_openclipart.py")
    ap.add_argument("--oti-steps", type=int, default=150,
                    help="OTI optimisation steps per image (default: %(default)s, the published budget)")
    ap.add_argument("--device", default=None,
                    help="where the model runs: cpu, cuda, ... (default: cuda when available, else cpu)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: the demo model's ops are tiny, and several threads on a "
                    "busy CPU stall in OpenMP waits, measured 60x slower on a loaded 2-core machine; 0 keeps "
                    "torch's default)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--no-progress", action="store_true",
                    help="no progress on stderr (default: a bar on a terminal, else a line every 10 s)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.pretrained and not args.model:
        ap.error("--pretrained needs --model")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    res = run_demo(args.model, args.pretrained, per_category=args.per_category, location=args.location,
                   data_dir=args.data_dir, manifest=args.manifest, oti_steps=args.oti_steps, device=args.device,
                   progress=not args.no_progress)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
