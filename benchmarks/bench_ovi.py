"""OVI (text -> image space) quality against cost: the ``ovi`` section of bench_query.py's JSON.

quality  the committed demo model on the held-out openclipart captions (one per distinct text, the held-out
         images' captions, in a fixed shuffled order so that any prefix mixes the categories), text->text with
         the captions' top-level categories as classes. One exact 1000-step run (the published OVI) keeps the
         features after K in KS_EXACT steps (snapshots); a warm start is cross-fitted (2 folds: fitted on the
         exact results of one half, measured on the other, so no caption is measured by a warm start that saw
         it) and run for max(KS_WARM) steps from its prediction, keeping KS_WARM; warm-started runs use the
         precision the store gives them ("auto": bf16 on CPUs with bf16 hardware, else float32; the exact run is
         float32, the published OVI). For every row: cosine to the
         1000-step features (mean, 5th percentile), mAP of query_inverted (OVI of the query vs the native text
         gallery) and gallery_inverted (native query vs the OVI gallery) with bootstrap 95% CIs and the paired
         difference to the 1000-step run; native text->text mAP for reference. ``chosen``: the larger of the
         two fits' recommended budgets (each measured on the fit's own held-out tenth), used for the cost part.
         ``backfill_texts_per_s``: every caption inverted by the exact run and by the warm starts at the chosen
         budget (without and with early stopping), each timed whole: the measured speedup of a text backfill.
         ``ingest_texts_seconds``: ``store.ingest_texts`` of --ovi-ingest captions the first fold's warm start
         never saw, into a new embedded collection, with exact OVI and with that warm start, timed whole. The
         quality part runs on --quality-threads threads (machine.quality_threads): its ``cpu`` figures are the
         process's CPU time over all of them, and its speedups compare runs on the same threads.
cost     OpenCLIP ViT-B-32 with random weights (pretrained weights cost the same), one thread: the OVI step at
         batch 1 and 8 in float32 and in the warm-started runs' precision; backfill throughput in texts/s of
         exact 1000-step OVI (measured over ``exact_steps`` steps, the rest of the 1000 at the measured per-step
         cost: a step costs the same at every step) and of the warm start at the chosen budget (measured whole);
         per-query text->text latency per mode end to end (encode the query text, invert, search an embedded
         Qdrant collection), query_inverted at every warm budget of the quality table. Times are wall clock and,
         beside them, the process's CPU time (``cpu``): on a shared machine the CPU time is what one free core
         takes.

    python benchmarks/bench_query.py --ovi-only [--quick]
"""

from __future__ import annotations

import dataclasses
import random
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from timing import median_wall_cpu_ms, threads, timed_wall_cpu

from crossgap_qdrant import load_model, ops
from crossgap_qdrant.datasets import demo_subset, load_or_build_manifest
from crossgap_qdrant.inversion import (
    OVIConfig,
    StoppingRule,
    WarmStart,
    fit_warm_start,
    ovi_encoder,
    ovi_invert,
)
from crossgap_qdrant.inversion.config import check_precision
from crossgap_qdrant.metrics import bootstrap_ci, paired_bootstrap_ci, per_query, retrieval_metrics
from crossgap_qdrant.models import vision_tower
from crossgap_qdrant.store import CrossModalStore

KS_EXACT = (10, 25, 50, 100, 250, 500, 1000)
KS_WARM = (0, 5, 10, 25, 50)
# A warm-started text inversion runs as the store runs it (store/settings.py): bf16 where the hardware has it.
WARM_PRECISION = "auto"
FOLDS = 2


def caption_sets(per_category: int, fit_samples: int = 0, seed: int = 0) -> tuple[list[dict], list[str]]:
    """(held-out rows with distinct captions, shuffled by ``seed + 1``; up to ``fit_samples`` distinct
    training-split captions that are not held-out captions)."""
    rows = load_or_build_manifest(None)
    held, seen = [], set()
    for row in demo_subset(rows, per_category=per_category, seed=seed):
        if row["caption"] not in seen:
            seen.add(row["caption"])
            held.append(row)
    random.Random(seed + 1).shuffle(held)
    train = sorted({r["caption"] for r in rows if r["split"] == "train"} - seen)
    random.Random(seed).shuffle(train)
    return held, train[:fit_samples]


def cosines(a: torch.Tensor, b: torch.Tensor) -> dict:
    c = (a * b).sum(-1)
    return {"mean": round(float(c.mean()), 4), "p5": round(float(c.quantile(0.05)), 4)}


def per_query_ap(query: torch.Tensor, gallery: torch.Tensor, labels) -> np.ndarray:
    """Per-query AP of full rankings (the query's own item removed), of the queries that have a relevant item
    (which ones depends on the labels only, so rows of two representations pair up)."""
    sim = (query @ gallery.T).numpy()
    ap = per_query(retrieval_metrics(sim, labels, labels, exclude=np.arange(len(labels))), len(labels))
    return ap[np.isfinite(ap)]


def with_ci(ap: np.ndarray, base: np.ndarray | None, seed: int = 0, against: str = "1000") -> dict:
    """mAP of per-query APs ``ap`` with its bootstrap 95% CI, and with ``base`` the paired difference to it
    (``diff_vs_<against>``); in percent."""
    lo, hi = bootstrap_ci(ap, n=1000, seed=seed)
    out = {"mAP": round(100 * float(ap.mean()), 2), "ci95": [round(100 * lo, 2), round(100 * hi, 2)]}
    if base is not None:
        diff, dlo, dhi = paired_bootstrap_ci(ap, base, n=1000, seed=seed)
        out |= {f"diff_vs_{against}": round(100 * diff, 2), "diff_ci95": [round(100 * dlo, 2), round(100 * dhi, 2)]}
    return out


def subset(result, index: torch.Tensor):
    """The rows ``index`` of an InversionResult (snapshots dropped)."""
    return dataclasses.replace(result, features=result.features[index], tokens=result.tokens[index],
                               loss=result.loss[index], steps=result.steps[index], snapshots={})


def _timed_result(fn):
    """(fn(), (wall seconds, CPU seconds))."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, (time.perf_counter() - wall, time.process_time() - cpu)


def cross_fitted_warm(clip, texts: torch.Tensor, exact, batch_size: int, fit_options: dict,
                      stopping) -> tuple[dict[int, torch.Tensor], list, dict]:
    """Warm-started OVI features after each K in KS_WARM for every text, from a warm start fitted (by
    distillation from ``exact``) on the other folds.

    Returns:
        ({K: [N, E] features}, the fits, {"budget": ..., "early_stopping": ...}: the features, mean steps and
        seconds of a warm-started run of every text at the chosen budget (the larger of the fits'), without and
        with ``stopping``: a backfill with the warm start, timed whole; and "warm_starts": [(warm start, the
        indices of the texts it never saw)] per fold).
    """
    n = texts.shape[0]
    fold_of = torch.arange(n) % FOLDS
    out = {k: torch.empty_like(exact.features) for k in KS_WARM}
    fits, warms = [], []
    for fold in range(FOLDS):
        test, train = (fold_of == fold).nonzero().flatten(), (fold_of != fold).nonzero().flatten()
        config = OVIConfig(steps=max(KS_EXACT), batch_size=batch_size)
        warm, fit = fit_warm_start(clip, texts[train], "ovi", config, exact=subset(exact, train), **fit_options)
        run = OVIConfig(steps=max(KS_WARM), lr=fit.lr, batch_size=batch_size, warm_start=warm,
                        precision=WARM_PRECISION)
        snaps = ovi_invert(clip, texts[test], run, progress=False, snapshots=KS_WARM).snapshots
        for k in KS_WARM:
            out[k][test] = snaps[k]
        fits.append(fit)
        warms.append((warm, test))
    chosen = max(f.steps for f in fits)
    runs = {}
    for name, rule in (("budget", None), ("early_stopping", stopping)):
        features, steps, wall, cpu = torch.empty_like(exact.features), torch.empty(n), 0.0, 0.0
        for (warm, test), fit in zip(warms, fits):
            run = OVIConfig(steps=chosen, lr=fit.lr, batch_size=batch_size, warm_start=warm, stopping=rule,
                            precision=WARM_PRECISION)
            (res, (w, c)) = _timed_result(lambda: ovi_invert(clip, texts[test], run, progress=False))
            features[test], steps[test], wall, cpu = res.features, res.steps.float(), wall + w, cpu + c
        runs[name] = {"features": features, "steps_mean": round(float(steps.mean()), 1),
                      "seconds": {"wall": wall, "cpu": cpu}}
    runs["warm_starts"] = warms
    return out, fits, runs


def quality_rows(texts: torch.Tensor, labels, exact, warm: dict[int, torch.Tensor], extra=None) -> dict:
    """The quality table: a row per exact K and per warm K (and ``extra``: name -> features)."""
    reference = exact.snapshots[max(KS_EXACT)]
    base_q, base_g = per_query_ap(reference, texts, labels), per_query_ap(texts, reference, labels)

    def row(features):
        return {"cosine_to_1000": cosines(features, reference),
                "query_inverted": with_ci(per_query_ap(features, texts, labels), base_q),
                "gallery_inverted": with_ci(per_query_ap(texts, features, labels), base_g)}

    table = {"native": {"text_to_text": with_ci(per_query_ap(texts, texts, labels), None)}}
    table |= {f"exact_{k}": row(exact.snapshots[k]) for k in KS_EXACT}
    table |= {f"warm_{k}": row(warm[k]) for k in sorted(warm)}
    table |= {name: row(features) for name, features in (extra or {}).items()}
    return table


def ovi_quality(args) -> dict:
    clip = load_model("crossgap-demo", device="cpu")
    held, _ = caption_sets(args.ovi_per_category)
    held = held[: args.ovi_captions] if args.ovi_captions else held
    texts, labels = [r["caption"] for r in held], [r["category"] for r in held]
    feats = clip.encode_texts(texts)
    exact, (wall, cpu) = _timed_result(lambda: ovi_invert(
        clip, feats, OVIConfig(steps=max(KS_EXACT), batch_size=args.ovi_batch), progress=False, snapshots=KS_EXACT))
    exact_s = {"wall": wall, "cpu": cpu}
    rule = StoppingRule(min_delta=args.ovi_stop_delta, patience=args.ovi_stop_patience)
    warm, fits, runs = cross_fitted_warm(clip, feats, exact, args.ovi_batch, {"epochs": args.ovi_epochs}, rule)
    chosen = max(fits, key=lambda f: f.steps)
    stopped = runs["early_stopping"]
    table = quality_rows(feats, labels, exact, warm, {f"warm_{chosen.steps}_early_stopping": stopped["features"]})
    n = len(texts)
    backfill = {"texts": n, "batch": min(args.ovi_batch, n),
                "exact_1000": {key: round(n / exact_s[key], 3) for key in exact_s}}
    for name, run in (("warm", runs["budget"]), ("warm_early_stopping", stopped)):
        backfill[name] = {key: round(n / run["seconds"][key], 3) for key in run["seconds"]}
        backfill[f"{name}_speedup"] = {key: round(exact_s[key] / run["seconds"][key], 1) for key in exact_s}
    warm_start, unseen = runs["warm_starts"][0]  # the first fold's, with the texts it never saw
    texts_in = [texts[i] for i in unseen.tolist()[: args.ovi_ingest]]
    ingest = {"texts": len(texts_in), "exact_1000": ingest_seconds(clip, texts_in, OVIConfig()),
              f"warm_{chosen.steps}": ingest_seconds(clip, texts_in, OVIConfig(
                  steps=chosen.steps, lr=fits[0].lr, warm_start=warm_start, precision=WARM_PRECISION))}
    ingest["speedup"] = {key: round(ingest["exact_1000"][key] / ingest[f"warm_{chosen.steps}"][key], 1)
                         for key in ("wall", "cpu")}
    ingest |= {name: _seconds(ingest[name]) for name in ("exact_1000", f"warm_{chosen.steps}")}
    return {"model": clip.display_name, "captions": n, "categories": len(set(labels)),
            "exact_seconds": _seconds(exact_s), "ingest_texts_seconds": ingest, "folds": FOLDS,
            "fits": [_strict(f.to_dict()) for f in fits],
            "chosen": {"steps": chosen.steps, "lr": chosen.lr},
            "early_stopping": {"rule": dataclasses.asdict(rule), "steps_mean": stopped["steps_mean"],
                               "budget": chosen.steps},
            "backfill_texts_per_s": backfill,
            "table": table}


def ingest_seconds(clip, texts: list[str], config: OVIConfig) -> dict:
    """{"wall", "cpu"} seconds of ``store.ingest_texts(texts)`` (encode, invert, write) into a new embedded
    collection whose text inversions use ``config``."""
    with tempfile.TemporaryDirectory() as tmp:
        store = CrossModalStore.open(tmp, "bench", clip, ovi_config=config)
        try:
            _, (wall, cpu) = _timed_result(lambda: store.ingest_texts(texts, progress=False))
            assert store.count() == len(texts)
        finally:
            store.close()
    return {"wall": wall, "cpu": cpu}


def _seconds(times: dict) -> dict:
    """{"wall", "cpu"} seconds as printed (computed figures use the unrounded ones)."""
    return {key: round(value, 2) for key, value in times.items()}


def _strict(record: dict) -> dict:
    """NaN (a token R^2 of a one-sample held-out part) as null: strict JSON."""
    return {k: None if isinstance(v, float) and v != v else v for k, v in record.items()}


def ovi_cost(args, chosen: dict) -> dict:
    torch.manual_seed(0)
    clip = load_model("ViT-B-32", device="cpu", allow_random=True)
    k, lr = chosen["steps"], chosen["lr"]
    width = vision_tower(clip.model).width
    # the fitted network's size with untrained weights: its cost does not depend on its weights
    warm = WarmStart("ovi", clip.embed_dim, 1, width, model_id=clip.model_id).eval().requires_grad_(False)
    warm_dtype = check_precision(WARM_PRECISION, torch.device("cpu"))
    out = {"model": "ViT-B-32 (random weights)", "warm_k": k, "warm_lr": lr,
           "warm_precision": str(warm_dtype).replace("torch.", ""), "step_ms": {}}
    for dtype in dict.fromkeys((torch.float32, warm_dtype)):
        encode = ovi_encoder(clip.model, dtype)
        for b in (1, 8):
            target = F.normalize(torch.randn(b, clip.embed_dim), dim=-1)
            tokens = torch.randn(b, 1, width, dtype=dtype) * 0.02

            def step():
                p = tokens.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(ops.cosine_loss(encode(p), target).sum(), p)

            out["step_ms"][f"{str(dtype).replace('torch.', '')}_batch_{b}"] = median_wall_cpu_ms(
                step, args.ovi_step_repeat)

    n = args.ovi_backfill
    feats = F.normalize(torch.randn(n, clip.embed_dim), dim=-1)
    s = args.ovi_exact_steps
    zero = timed_wall_cpu(lambda: ovi_invert(clip, feats, OVIConfig(steps=0), progress=False))
    some = timed_wall_cpu(lambda: ovi_invert(clip, feats, OVIConfig(steps=s), progress=False))
    exact = [z + (1000 / s) * (x - z) for x, z in zip(some, zero)]  # fixed cost + 1000 steps at the measured rate
    warm_config = OVIConfig(steps=k, lr=lr, warm_start=warm, precision=WARM_PRECISION)
    warm_run = timed_wall_cpu(lambda: ovi_invert(clip, feats, warm_config, progress=False))
    out["backfill_texts_per_s"] = {
        "texts": n, "batch": min(64, n), "exact_steps_measured": s,
        "exact": {"wall": round(n / exact[0], 4), "cpu": round(n / exact[1], 4)},
        "warm": {"wall": round(n / warm_run[0], 3), "cpu": round(n / warm_run[1], 3)},
        "speedup": {"wall": round(exact[0] / warm_run[0], 1), "cpu": round(exact[1] / warm_run[1], 1)}}

    gallery = F.normalize(torch.randn(args.gallery, clip.embed_dim), dim=-1)
    latency = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = CrossModalStore.open(tmp, "bench", clip)
        try:
            store.ingest_texts(gallery, inverted_features=F.normalize(torch.randn_like(gallery), dim=-1),
                               progress=False)
            query = "a drawing of a red bicycle leaning against a tree"

            def search(mode):
                return lambda: store.search_texts(text=query, mode=mode, limit=10)

            for mode in ("native", "gallery_inverted"):
                latency[mode] = median_wall_cpu_ms(search(mode), 5)
            exact_cfg = store.encoder.ovi_config
            store.encoder.ovi_config = OVIConfig(steps=s)
            few = median_wall_cpu_ms(search("query_inverted"), 1, 0)
            store.encoder.ovi_config = OVIConfig(steps=0)
            none = median_wall_cpu_ms(search("query_inverted"), 3)
            latency["query_inverted_exact_1000"] = {  # the same extrapolation as the backfill's
                key: round(none[key] + (1000 / s) * (few[key] - none[key]), 1) for key in few}
            for steps in sorted(set(KS_WARM) | {k}):  # which budgets fit a latency, beside their quality rows
                store.encoder.ovi_config = OVIConfig(steps=steps, lr=lr, warm_start=warm, precision=WARM_PRECISION)
                latency[f"query_inverted_warm_{steps}"] = median_wall_cpu_ms(search("query_inverted"), 3)
            store.encoder.ovi_config = warm_config
            latency[f"fused_warm_{k}"] = median_wall_cpu_ms(search("fused"), 3)
            store.encoder.ovi_config = exact_cfg
        finally:
            store.close()
    out["query_latency_ms"] = latency
    return out


def ovi_section(args) -> dict:
    """The ``ovi`` section: quality on the demo model (``--quality-threads``), then cost on ViT-B-32 at the
    chosen budget (``--threads``)."""
    with threads(args.quality_threads):
        quality = ovi_quality(args)
    with threads(args.threads):
        cost = ovi_cost(args, quality["chosen"])
    return {"quality": quality, "cost": cost}


def add_arguments(parser) -> None:
    g = parser.add_argument_group("ovi")
    g.add_argument("--ovi-only", action="store_true", help="print only the ovi section")
    g.add_argument("--ovi-per-category", type=int, default=10, help="held-out captions per category")
    g.add_argument("--ovi-captions", type=int, default=0,
                   help="of those, the first N (0: all; exact OVI costs 1000 steps per caption)")
    g.add_argument("--ovi-batch", type=int, default=16, help="texts per inversion batch")
    g.add_argument("--ovi-epochs", type=int, default=300, help="training epochs of each cross-fitted warm start")
    g.add_argument("--ovi-stop-delta", type=float, default=1e-3, help="early stopping measured: min_delta")
    g.add_argument("--ovi-stop-patience", type=int, default=3, help="early stopping measured: patience")
    g.add_argument("--ovi-backfill", type=int, default=16, help="texts inverted for the backfill throughput")
    g.add_argument("--ovi-ingest", type=int, default=8,
                   help="held-out captions ingested into a store, exact and with the warm start (timed whole)")
    g.add_argument("--ovi-exact-steps", type=int, default=5, help="exact steps measured for the 1000-step cost")
    g.add_argument("--ovi-step-repeat", type=int, default=5)


def apply_quick(args) -> None:
    args.ovi_captions, args.ovi_epochs, args.ovi_backfill, args.ovi_exact_steps, args.ovi_ingest = 16, 100, 4, 2, 2
