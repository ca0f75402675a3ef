"""The fused operators against plain PyTorch, same machine, same run; prints one JSON object.

cosine_loss (forward + backward) is compared with the composition of torch ops it replaces; adamw_step with
torch.optim.AdamW (single-tensor, foreach and fused implementations) on the same [B, R, D] tokens; few_rows
(CPU) with BLAS on the products of a batch-1 step (the weight matrices of a ViT-B-32-sized text tower, 151 MB,
each multiplied by M rows forward, then each by M rows backward in reverse), for every instruction set the CPU
runs, beside the time to read those weights in the same order with nothing else done (sums).

    python benchmarks/bench_ops.py
    python benchmarks/bench_ops.py --batches 64 1024 --dims 512 --repeat 5
    python benchmarks/bench_ops.py --device cuda
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from timing import median_ms

from crossgap_qdrant import ops

HYPER = dict(lr=2e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)


DEVICE = torch.device("cpu")


def bench_cosine(b: int, d: int, dtype: torch.dtype, repeat: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(b, d, generator=gen).to(DEVICE, dtype).requires_grad_(True)
    t = F.normalize(torch.randn(b, d, generator=gen), dim=-1).to(DEVICE)

    def fused():
        (g,) = torch.autograd.grad(ops.cosine_loss(y, t).sum(), y)
        return g

    def plain():
        loss = 1 - F.cosine_similarity(F.normalize(y.float(), dim=-1), t)
        (g,) = torch.autograd.grad(loss.sum(), y)
        return g

    a, p = median_ms(fused, repeat), median_ms(plain, repeat)
    return {"fused_ms": a, "torch_ms": p, "speedup": p / a}


def bench_adamw(b: int, r: int, d: int, repeat: int) -> dict:
    gen = torch.Generator().manual_seed(1)
    p = torch.randn(b, r, d, generator=gen).to(DEVICE)
    g = torch.randn(b, r, d, generator=gen).to(DEVICE)
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    step = torch.zeros(b, dtype=torch.int64, device=DEVICE)
    active = torch.ones(b, dtype=torch.bool, device=DEVICE)
    out = {"fused_ms": median_ms(lambda: ops.adamw_step(p, g, m, v, step, active, **HYPER), repeat)}
    for name, kw in {"torch_single_tensor": dict(foreach=False), "torch_foreach": dict(foreach=True),
                     "torch_fused": dict(fused=True)}.items():
        q = torch.nn.Parameter(p.clone())
        q.grad = g.clone()
        try:
            opt = torch.optim.AdamW([q], lr=HYPER["lr"], weight_decay=HYPER["weight_decay"], **kw)
            out[f"{name}_ms"] = median_ms(opt.step, repeat)
            out[f"speedup_vs_{name}"] = out[f"{name}_ms"] / out["fused_ms"]
        except (RuntimeError, ValueError) as exc:  # e.g. no fused AdamW for this device
            out[f"{name}_ms"] = None
            out[f"{name}_error"] = str(exc).splitlines()[0]
    # The plain per-sample reference is a Python loop; timed on a slice to keep the run short.
    n = min(b, 64)
    ref = [t[:n].clone() for t in (p, m, v)] + [step[:n].clone()]
    ms = median_ms(lambda: ops.adamw_step_reference(ref[0], g[:n], ref[1], ref[2], ref[3], active[:n], **HYPER),
                   max(1, repeat // 2), warmup=1)
    out["per_sample_reference_ms_per_64"] = ms
    return out


def bench_few_rows(rows: list[int], repeat: int) -> dict:
    gen = torch.Generator().manual_seed(2)
    w = 512  # ViT-B-32's text width: 12 blocks of in-projection, out-projection and the MLP's two matrices
    weights = [torch.randn(n, k, generator=gen) * k**-0.5 for n, k in [(3 * w, w), (w, w), (4 * w, w), (w, 4 * w)] * 12]
    out = {"weights_mb": round(sum(t.numel() * 4 for t in weights) / 1e6, 1), "isa_default": ops.few_rows_isa(),
           "read_ms": round(median_ms(lambda: ([t.sum() for t in weights], [t.sum() for t in reversed(weights)]),
                                      repeat), 2)}
    isas = ["avx512", "avx2", "baseline"]
    isas = isas[isas.index(out["isa_default"]):] if out["isa_default"] in isas else [out["isa_default"]]
    for m in rows:
        xs = [torch.randn(m, t.shape[1], generator=gen) for t in weights]
        gs = [torch.randn(m, t.shape[0], generator=gen) for t in weights]
        row = {"blas_ms": round(median_ms(lambda: ([F.linear(x, t) for x, t in zip(xs, weights)],
                                                   [g @ t for g, t in zip(reversed(gs), reversed(weights))]),
                                          repeat), 2)}
        for isa in isas:
            ops.few_rows_isa(isa)
            row[f"few_rows_{isa}_ms"] = round(median_ms(lambda: (
                [ops.few_rows_product(x, t) for x, t in zip(xs, weights)],
                [ops.few_rows_product_backward(g, t) for g, t in zip(reversed(gs), reversed(weights))]), repeat), 2)
        ops.few_rows_isa(out["isa_default"])
        best = row[f"few_rows_{out['isa_default']}_ms"]
        row |= {"speedup_vs_blas": round(row["blas_ms"] / best, 2), "vs_read": round(best / out["read_ms"], 2)}
        out[f"M{m}"] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 1024, 16384])
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 768])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8], help="few_rows: rows per product")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = torch.device(args.device)
    device = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu"
    report = {"benchmark": "ops", "device": device, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "cosine_loss": {}, "adamw_step": {}}
    for b in args.batches:
        for d in args.dims:
            key = f"B{b}_D{d}"
            report["cosine_loss"][key] = {
                str(dt).replace("torch.", ""): bench_cosine(b, d, dt, args.repeat)
                for dt in (torch.float32, torch.bfloat16)
            }
            report["adamw_step"][f"B{b}_R1_D{d}"] = bench_adamw(b, 1, d, args.repeat)
    if DEVICE.type == "cpu":
        report["few_rows"] = bench_few_rows(args.rows, max(5, args.repeat // 2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
