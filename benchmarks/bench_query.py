"""Inter-modal queries at interactive latency: the exact step at small batches, and the learned warm start.

Prints one JSON document with three parts, all measured in this run:

quality    the committed demo model on the main job's held-out openclipart images (crossgap_qdrant.demo): a warm
           start fitted on training-split images (never the held-out ones), then, for K in {0, 5, 10, 20}, the
           cosine of warm-started OTI features after K exact steps to the exact 150-step features (mean, 5th
           percentile, min), and image->image mAP of query_inverted (OTI query vs native gallery, the paper's
           protocol) and gallery_inverted (native query vs OTI gallery) with bootstrap 95% CIs and the paired
           difference to the exact run; the same for an exact run from other random initial tokens (how far
           apart two exact results are). ``chosen`` is the budget the fit recommends (measured on its own
           held-out training images), used for the cost part.
cost       OpenCLIP ViT-B-32 with random weights (the cost of pretrained weights), one thread unless --threads:
           the OTI step at batch 1 and 8 (the published step, our autograd step, our hand-written step as
           ATen calls and with the fused suffix-block ops) and, at batch 1, each against the memory floor
           (``*_vs_floor``: step time / weight_read_ms, the time to read every weight matrix forward then
           backward with nothing else done: the faster of plain sums and one-row BLAS products);
           per-query latency of each search mode end to end (encode the query image, invert, search an embedded
           Qdrant (qdrant-edge) collection of --gallery points) at batch 1; backfill throughput (images/s) of
           exact OTI against the warm start at the chosen budget. The warm start used for cost has the fitted
           network's size with untrained weights: its cost does not depend on its weights.
ovi        OVI (text -> image space) quality against steps and the text warm start's cost: benchmarks/bench_ovi.py.
machine    CPU model, threads of the cost and quality parts, torch version, the few-rows kernels' instruction set.

    python benchmarks/bench_query.py                 # about 17 minutes on 2 cores (60% of it exact OVI)
    python benchmarks/bench_query.py --quick         # smaller sets, a few minutes
    python benchmarks/bench_query.py --step-only     # the OTI step costs alone, under a minute
    python benchmarks/bench_query.py --ovi-only      # the ovi section alone (benchmarks/bench_ovi.py)
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
from pathlib import Path

import bench_ovi
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timing import interleaved_ms, median_ms, threads, timed

from crossgap_qdrant import load_model, ops
from crossgap_qdrant.datasets import demo_subset, flatten_to_folder, load_or_build_manifest
from crossgap_qdrant.inversion import OTIConfig, WarmStart, fit_warm_start, oti_invert, reference_step
from crossgap_qdrant.inversion.reference import encode_text_with_pseudo_tokens, template_token_ids
from crossgap_qdrant.inversion.text_suffix import CachedTemplateTextEncoder
from crossgap_qdrant.inversion.text_suffix_step import SuffixStep
from crossgap_qdrant.metrics import per_query, retrieval_metrics
from crossgap_qdrant.models import text_tower
from crossgap_qdrant.store import CrossModalStore

KS = (0, 5, 10, 20)


def _cosines(a: torch.Tensor, b: torch.Tensor) -> dict:
    c = (a * b).sum(-1)
    return {"mean": round(float(c.mean()), 4), "p5": round(float(c.quantile(0.05)), 4), "min": round(float(c.min()), 4)}


def _map(query: torch.Tensor, gallery: torch.Tensor, labels) -> np.ndarray:
    """Per-query AP of full rankings (the query's own item removed)."""
    sim = (query @ gallery.T).numpy()
    return per_query(retrieval_metrics(sim, labels, labels, exclude=np.arange(len(labels))), len(labels))


def _ci(ap: np.ndarray, base: np.ndarray | None, seed: int) -> dict:
    return bench_ovi.with_ci(ap, base, seed, against="exact")


def cpu_name() -> str:
    """The CPU's model name (Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def quality(args) -> dict:
    clip = load_model("crossgap-demo", device="cpu")
    rows = load_or_build_manifest(None)
    held = demo_subset(rows, per_category=args.per_category, seed=0)
    train_rows = [r for r in rows if r["split"] == "train"]
    random.Random(0).shuffle(train_rows)
    train_rows = train_rows[: args.fit_samples]
    side = max(128, int(clip.model.visual.image_size[0]))
    with tempfile.TemporaryDirectory() as tmp:
        held_feats = clip.encode_images(flatten_to_folder(held, Path(tmp) / "held", size=side))
        train_feats = clip.encode_images(flatten_to_folder(train_rows, Path(tmp) / "train", size=side))
    labels = [r["category"] for r in held]
    (warm, fit), fit_s = timed(fit_warm_start, clip, train_feats, "oti")
    exact = oti_invert(clip, held_feats, OTIConfig(), progress=False).features
    reseeded = oti_invert(clip, held_feats, OTIConfig(seed=1), progress=False).features
    base_q, base_g = _map(exact, held_feats, labels), _map(held_feats, exact, labels)
    out = {"model": clip.display_name, "held_out_images": len(held), "categories": len(set(labels)),
           "fit": {**fit.to_dict(), "seconds": round(fit_s, 1)},
           "exact": {"query_inverted": _ci(base_q, None, 0), "gallery_inverted": _ci(base_g, None, 0),
                     "native": _ci(_map(held_feats, held_feats, labels), None, 0)},
           "exact_other_seed": {"cosine_to_exact": _cosines(reseeded, exact),
                                "query_inverted": _ci(_map(reseeded, held_feats, labels), base_q, 0),
                                "gallery_inverted": _ci(_map(held_feats, reseeded, labels), base_g, 0)},
           "warm": {}, "chosen": {"steps": fit.steps, "lr": fit.lr}}
    for k in sorted(set(KS) | {fit.steps}):
        feats = oti_invert(clip, held_feats, OTIConfig(steps=k, lr=fit.lr, warm_start=warm), progress=False).features
        out["warm"][str(k)] = {"cosine_to_exact": _cosines(feats, exact),
                               "query_inverted": _ci(_map(feats, held_feats, labels), base_q, 0),
                               "gallery_inverted": _ci(_map(held_feats, feats, labels), base_g, 0)}
    return out


def step_costs(clip) -> dict:
    model, tokenizer = clip.model, clip.tokenizer
    encoder = CachedTemplateTextEncoder(model, tokenizer, "a photo of {}", 1, torch.float32)
    fused = SuffixStep(encoder)  # the fused suffix-block ops where the compiled library has them
    handwritten = SuffixStep(encoder, fused=False)
    ids, positions = template_token_ids(tokenizer, "a photo of {}", 1)
    # The floor of a step at batch 1: every weight matrix of the text tower read once in the forward's order and
    # once in reverse (a step must finish the forward of every layer before its backward starts), with no other
    # work: as plain sums, and as one-row BLAS products (which stream at the memory's speed); the faster is
    # weight_read_ms.
    weights = [w for blk in model.transformer.resblocks  # in the order a step's forward reads them
               for w in (blk.attn.in_proj_weight, blk.attn.out_proj.weight, blk.mlp.c_fc.weight, blk.mlp.c_proj.weight)]
    rows = [(torch.randn(1, w.shape[1]), torch.randn(1, w.shape[0])) for w in weights]
    floors = {"read_by_sums": lambda: ([w.sum() for w in weights], [w.sum() for w in reversed(weights)]),
              "read_by_one_row_products": lambda: (
                  [F.linear(x, w) for (x, _), w in zip(rows, weights)],
                  [g @ w for (_, g), w in zip(reversed(rows), reversed(weights))])}
    out = {"weights_mb": round(sum(w.numel() * w.element_size() for w in weights) / 1e6, 1)}
    for b in (1, 8):
        target = F.normalize(torch.randn(b, clip.embed_dim), dim=-1)
        tokens = torch.randn(b, 1, text_tower(model).width) * 0.02

        def autograd_step():
            p = tokens.detach().requires_grad_(True)
            loss = ops.cosine_loss(encoder(p), target)
            torch.autograd.grad(loss.sum(), p)

        param = torch.nn.Parameter(tokens.clone())
        opt = torch.optim.AdamW([param], lr=2e-2)
        published = median_ms(lambda: reference_step(
            lambda t: encode_text_with_pseudo_tokens(model, ids, positions, t), param, opt, target), 5, 1)
        ours_auto = median_ms(autograd_step, 20)
        # The steps and the floors in alternation, so that load from other processes hits them alike; the
        # ratios are medians of per-round ratios.
        steps = {"handwritten": lambda: handwritten(tokens, target, 1.0), "fused": lambda: fused(tokens, target, 1.0)}
        ms, rounds = interleaved_ms(steps | (floors if b == 1 else {}), 20)
        out[f"batch_{b}"] = {"published_ms": round(published, 1), "autograd_ms": round(ours_auto, 1),
                             "handwritten_ms": round(ms["handwritten"], 1), "fused_ms": round(ms["fused"], 1),
                             "fused_ops": fused.fused_blocks is not None,
                             "speedup_vs_published": round(
                                 published / min(ours_auto, ms["handwritten"], ms["fused"]), 1)}
        if b == 1:
            floor = min(floors, key=lambda name: ms[name])
            out = {"weight_read_ms": round(ms[floor], 1), "weight_read_by": floor,
                   **{f"weight_{name}_ms": round(ms[name], 1) for name in floors}, **out}

            def ratio(a):
                return round(statistics.median(x / y for x, y in zip(rounds[a], rounds[floor])), 2)

            out["batch_1"] |= {"fused_vs_floor": ratio("fused"), "handwritten_vs_floor": ratio("handwritten")}
    return out


def cost(args, chosen: dict) -> dict:
    torch.manual_seed(0)
    clip = load_model("ViT-B-32", device="cpu", allow_random=True)
    k, lr = chosen["steps"], chosen["lr"]
    out = {"model": "ViT-B-32 (random weights)", "step": step_costs(clip), "warm_k": k, "warm_lr": lr}
    warm = WarmStart("oti", clip.embed_dim, 1, text_tower(clip.model).width,
                     model_id=clip.model_id, template="a photo of {}").eval().requires_grad_(False)

    rng = np.random.default_rng(0)
    query = Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
    gallery = F.normalize(torch.randn(args.gallery, clip.embed_dim), dim=-1)
    with tempfile.TemporaryDirectory() as tmp:
        store = CrossModalStore.open(tmp, "bench", clip)
        try:
            store.ingest_images(gallery, inverted_features=F.normalize(torch.randn_like(gallery), dim=-1),
                                progress=False)
            latency = {}
            for mode in ("native", "gallery_inverted"):
                latency[mode] = median_ms(lambda m=mode: store.search_images(query, mode=m, limit=10), 10)
            exact_cfg, warm_cfg = store.encoder.oti_config, OTIConfig(steps=k, lr=lr, warm_start=warm)
            plans = [("query_inverted", "exact_150", exact_cfg, 3), ("query_inverted", f"warm_{k}", warm_cfg, 5),
                     ("query_inverted", "warm_0", OTIConfig(steps=0, warm_start=warm), 10),
                     ("fused", f"warm_{k}", warm_cfg, 5)]
            for mode, label, config, repeat in plans:
                store.encoder.oti_config = config
                latency[f"{mode}_{label}"] = median_ms(lambda m=mode: store.search_images(query, mode=m, limit=10),
                                                        repeat, 1)
            store.encoder.oti_config = exact_cfg
        finally:
            store.close()
    out["query_latency_ms"] = {name: round(ms, 1) for name, ms in latency.items()}

    feats = F.normalize(torch.randn(args.backfill, clip.embed_dim), dim=-1)
    _, exact_s = timed(oti_invert, clip, feats, OTIConfig(), progress=False)
    _, warm_s = timed(oti_invert, clip, feats, OTIConfig(steps=k, lr=lr, warm_start=warm), progress=False)
    out["backfill_images_per_s"] = {"exact_150": round(args.backfill / exact_s, 2),
                                    f"warm_{k}": round(args.backfill / warm_s, 2),
                                    "speedup": round(exact_s / warm_s, 1), "batch": min(64, args.backfill)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the cost parts (timed)")
    parser.add_argument("--quality-threads", type=int, default=torch.get_num_threads(),
                        help="torch threads of the quality parts (default: all cores; their timings are ratios "
                             "within the part)")
    parser.add_argument("--fit-samples", type=int, default=2000, help="training images the warm start is fitted on")
    parser.add_argument("--per-category", type=int, default=30, help="held-out images per category (the main job's)")
    parser.add_argument("--gallery", type=int, default=1000, help="points in the latency benchmark's collection")
    parser.add_argument("--backfill", type=int, default=64, help="images inverted for the backfill throughput")
    parser.add_argument("--quick", action="store_true", help="500 fit samples, 10 per category, 16 backfill images")
    parser.add_argument("--cost-only", action="store_true",
                        help="skip the quality part; the cost part uses --warm-steps and --warm-lr")
    parser.add_argument("--warm-steps", type=int, default=10)
    parser.add_argument("--warm-lr", type=float, default=5e-3)
    parser.add_argument("--step-only", action="store_true", help="only the OTI step costs on ViT-B-32")
    bench_ovi.add_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.fit_samples, args.per_category, args.backfill = 500, 10, 16
        bench_ovi.apply_quick(args)
    torch.set_num_threads(args.threads)
    report = {"benchmark": "query", "machine": {"cpu": cpu_name(), "threads": args.threads,
                                                "quality_threads": args.quality_threads, "torch": torch.__version__,
                                                "few_rows_isa": ops.few_rows_isa()}}
    if args.step_only:
        torch.manual_seed(0)
        clip = load_model("ViT-B-32", device="cpu", allow_random=True)
        report["cost"] = {"model": "ViT-B-32 (random weights)", "step": step_costs(clip)}
        print(json.dumps(report, indent=2))
        return
    if args.ovi_only:
        report["ovi"] = bench_ovi.ovi_section(args)
        print(json.dumps(report, indent=2))
        return
    if args.cost_only:
        chosen = {"steps": args.warm_steps, "lr": args.warm_lr}
    else:
        with threads(args.quality_threads):
            report["quality"] = quality(args)
        chosen = report["quality"]["chosen"]
    report["cost"] = cost(args, chosen)
    report["ovi"] = bench_ovi.ovi_section(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
