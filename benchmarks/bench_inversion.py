"""OTI and OVI speed: the published algorithm (reference) against this engine, same machine, same run.

Random weights cost the same as pretrained ones, so the model is built with pretrained=None. The reference's
step time is measured on a few steps (a full 150-step reference batch takes minutes on a CPU); the engine's
on its whole run, set-up and the final float32 feature pass included. Prints one JSON object.

    python benchmarks/bench_inversion.py                      # ViT-B-32, batch 64, CPU
    python benchmarks/bench_inversion.py --quick              # a smaller, faster run
    python benchmarks/bench_inversion.py --device cuda        # on a GPU (fp16 too)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F
from timing import timed, timings

from crossgap_qdrant import OTIConfig, OVIConfig, StoppingRule, load_model, oti_invert, ovi_invert
from crossgap_qdrant.inversion import initial_tokens, reference_step
from crossgap_qdrant.inversion.reference import (
    encode_image_with_pseudo_tokens,
    encode_text_with_pseudo_tokens,
    template_token_ids,
)
from crossgap_qdrant.models import text_tower, vision_tower

DEVICE = torch.device("cpu")
PRECISIONS = ("fp32", "bf16")


def matmul_rate(dtype: torch.dtype, m: int, k: int, n: int, repeat: int = 10) -> float:
    """Measured GFLOP/s of an [m, k] x [k, n] matmul."""
    a = torch.randn(m, k).to(DEVICE, dtype)
    b = torch.randn(k, n).to(DEVICE, dtype)
    torch.mm(a, b)
    secs = min(timings(lambda: torch.mm(a, b), repeat))
    return 2 * m * k * n / secs / 1e9


def reference_step_seconds(encode, targets, init, config, steps: int) -> float:
    """Median seconds of one published-algorithm step (forward, backward, torch.optim.AdamW), after a warm-up."""
    tokens = torch.nn.Parameter(init.clone().to(DEVICE))
    opt = torch.optim.AdamW([tokens], lr=config.lr, betas=config.betas, eps=config.eps,
                            weight_decay=config.weight_decay)
    reference_step(encode, tokens, opt, targets)
    return statistics.median(timings(lambda: reference_step(encode, tokens, opt, targets), steps))


def bench_oti(clip, args) -> dict:
    model, tokenizer = clip.model, clip.tokenizer
    tower = text_tower(model)
    b = args.batch
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(b, 3, model.visual.image_size[0], model.visual.image_size[1], generator=gen).to(DEVICE)
    with torch.no_grad():
        targets = F.normalize(model.encode_image(pixels), dim=-1)
    cfg = OTIConfig(steps=args.oti_steps, batch_size=b)
    init = initial_tokens(b, 1, tower.width, cfg.init_std, cfg.seed)
    ids, pos = template_token_ids(tokenizer, cfg.template, 1)
    ref_step = reference_step_seconds(
        lambda p: encode_text_with_pseudo_tokens(model, ids, pos, p), targets, init, cfg, args.ref_steps)

    out = {"batch": b, "steps": cfg.steps, "reference_ms_per_step": ref_step * 1e3,
           "reference_images_per_s": b / (ref_step * cfg.steps)}
    results = {}
    for precision in PRECISIONS:
        c = dataclasses.replace(cfg, precision=precision)
        oti_invert(clip, targets[:4], dataclasses.replace(c, steps=2, batch_size=4), progress=False)
        res, secs = timed(lambda c: oti_invert(clip, targets, c, progress=False), c)
        results[precision] = res
        ms = secs / cfg.steps * 1e3
        out[precision] = {"ms_per_step": ms, "images_per_s": b / secs, "speedup_vs_reference": ref_step * 1e3 / ms,
                          "mean_final_cosine": float((1 - res.loss).mean())}
    d = ((1 - results["fp32"].loss) - (1 - results["bf16"].loss)).abs()
    out["bf16_vs_fp32_final_cosine_abs_diff"] = {"mean": float(d.mean()), "max": float(d.max())}
    out["bf16_vs_fp32_feature_cosine_min"] = float((results["fp32"].features * results["bf16"].features).sum(1).min())

    # Per-sample stopping with continuous batching: steps saved and the effect on the final cosine.
    out["early_stopping_bf16"] = []
    for min_delta in args.stop_min_delta:
        stop = StoppingRule(min_delta=min_delta, patience=args.stop_patience, min_steps=20)
        c = dataclasses.replace(cfg, precision="bf16", stopping=stop)
        res, secs = timed(lambda c: oti_invert(clip, targets, c, progress=False), c)
        change = (1 - res.loss) - (1 - results["bf16"].loss)
        out["early_stopping_bf16"].append({
            "rule": dataclasses.asdict(stop),
            "mean_steps": float(res.steps.float().mean()),
            "steps_saved_fraction": 1 - float(res.steps.float().mean()) / cfg.steps,
            "seconds": secs,
            "mean_final_cosine": float((1 - res.loss).mean()),
            "final_cosine_change_vs_full_budget": {"mean": float(change.mean()), "min": float(change.min())},
        })

    # How close the engine's step runs to the machine's matmul rate: FLOPs of the suffix positions.
    width, layers = tower.width, len(tower.transformer.resblocks)
    suffix = int(ids.argmax()) - int(pos[0]) + 1
    flops_per_step = 2 * 2 * 12 * width * width * layers * suffix * b  # forward + input gradient
    for precision in PRECISIONS:
        achieved = flops_per_step / (out[precision]["ms_per_step"] / 1e3) / 1e9
        out[precision]["linear_gflops_achieved"] = achieved
    out["suffix_positions"] = suffix
    return out


def bench_ovi(clip, args) -> dict:
    model = clip.model
    tower = vision_tower(model)
    b = args.batch
    gen = torch.Generator().manual_seed(1)
    targets = F.normalize(torch.randn(b, model.text_projection.shape[1], generator=gen), dim=-1).to(DEVICE)
    cfg = OVIConfig(steps=args.ovi_steps, batch_size=b, num_tokens=1)
    init = initial_tokens(b, 1, tower.width, cfg.init_std, cfg.seed)
    ref_step = reference_step_seconds(lambda p: encode_image_with_pseudo_tokens(model, p), targets, init, cfg,
                                      args.ref_steps)
    out = {"batch": b, "steps": cfg.steps, "reference_ms_per_step": ref_step * 1e3}
    results = {}
    for precision in PRECISIONS:
        c = dataclasses.replace(cfg, precision=precision)
        ovi_invert(clip, targets[:4], dataclasses.replace(c, steps=1, batch_size=4), progress=False)  # warm-up
        res, secs = timed(lambda c: ovi_invert(clip, targets, c, progress=False), c)
        results[precision] = res
        ms = secs / cfg.steps * 1e3
        out[precision] = {"ms_per_step": ms, "speedup_vs_reference": ref_step * 1e3 / ms,
                          "mean_final_cosine": float((1 - res.loss).mean())}
    d = ((1 - results["fp32"].loss) - (1 - results["bf16"].loss)).abs()
    out["bf16_vs_fp32_final_cosine_abs_diff"] = {"mean": float(d.mean()), "max": float(d.max())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--oti-steps", type=int, default=150)
    parser.add_argument("--ovi-steps", type=int, default=10)
    parser.add_argument("--ref-steps", type=int, default=3, help="reference steps timed (after one warm-up)")
    parser.add_argument("--stop-min-delta", type=float, nargs="+", default=[1e-3, 1e-4])
    parser.add_argument("--stop-patience", type=int, default=5)
    parser.add_argument("--skip-ovi", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's)")
    parser.add_argument("--quick", action="store_true", help="batch 16, 50 OTI steps, 3 OVI steps")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (CUDA adds fp16 to fp32 and bf16)")
    args = parser.parse_args()
    global DEVICE, PRECISIONS
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda":
        PRECISIONS = ("fp32", "bf16", "fp16")
    if args.quick:
        args.batch, args.oti_steps, args.ovi_steps, args.ref_steps = 16, 50, 3, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # cost only: random weights take the same time as pretrained ones
    clip = load_model(args.model, device=args.device, allow_random=True)
    report = {
        "benchmark": "inversion",
        "model": args.model,
        "device": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "matmul_gflops": {
            "fp32_128x512x2048": matmul_rate(torch.float32, 128, 512, 2048),
            "bf16_128x512x2048": matmul_rate(torch.bfloat16, 128, 512, 2048),
            "fp32_2048x2048x2048": matmul_rate(torch.float32, 2048, 2048, 2048, repeat=3),
            "bf16_2048x2048x2048": matmul_rate(torch.bfloat16, 2048, 2048, 2048, repeat=3),
        },
        "oti": bench_oti(clip, args),
    }
    if not args.skip_ovi:
        report["ovi"] = bench_ovi(clip, args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
