"""Backfill throughput: in-process, and on a local Ray cluster with 1 and 2 workers; prints JSON.

Each run fills the inverted vectors of a fresh adopted Edge collection (one unnamed vector: the companion
layout) of --points stored unit vectors, with the same model, steps and batch size, one PyTorch thread per
worker. Reported per run: end-to-end seconds (Ray: ``ray.init``, actor start-up and the model's transfer
included), the start-up (until the first actor had loaded the model), and the rate after start-up (what a long
backfill runs at). Ray's overhead is its start-up plus how much slower its rate after start-up is than
in-process.

The cost table extrapolates the measured per-worker rate after start-up to 1M, 100M and 1B points (worker-hours, and
hours on --cluster-workers workers). The per-GPU rate is an estimate, not a measurement (no GPU here): the CPU
rate scaled by an assumed sustained GPU float32 throughput over this CPU thread's measured matmul throughput.

    python3 benchmarks/bench_backfill.py                       # demo model, 150 steps, 48 points
    python3 benchmarks/bench_backfill.py --points 96 --steps 50 --batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time

import numpy as np
import qdrant_edge as qe
import torch

from crossgap_qdrant.inversion import OTIConfig
from crossgap_qdrant.models import load_model
from crossgap_qdrant.store import CrossModalStore
from crossgap_qdrant.store.backfill import BackfillWorker, missing_count
from crossgap_qdrant.store.backfill_ray import backfill_on_ray

GPU_FP32_FLOPS = 30e12
"""Assumed sustained float32 FLOP/s of one datacentre GPU on these small matrix products (about 45% of an H100's
67 TFLOP/s without tensor cores): the basis of the labelled per-GPU estimate."""


def make_collection(folder: str, n: int, dim: int, seed: int) -> None:
    """An Edge collection "photos" with a single unnamed vector, written by plain qdrant-edge-py code."""
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((n, dim)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    os.makedirs(os.path.join(folder, "photos"), exist_ok=True)
    shard = qe.EdgeShard.create(os.path.join(folder, "photos", "shard"), qe.EdgeConfig(
        vectors={"": qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)}))
    shard.update(qe.UpdateOperation.upsert_points([qe.Point(i + 1, {"": r.tolist()}, {"n": i})
                                                   for i, r in enumerate(rows)]))
    shard.flush()
    shard.close()


def cpu_matmul_flops() -> float:
    """FLOP/s of one thread on [8, 512] x [512, 2048] float32 products (a text-tower-sized layer)."""
    a, b = torch.randn(8, 512), torch.randn(512, 2048)
    for _ in range(20):
        a @ b
    reps, start = 200, time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * 8 * 512 * 2048 * reps / (time.perf_counter() - start)


def run(kind: str, workers: int, args, clip) -> dict:
    folder = tempfile.mkdtemp(prefix="bench_backfill_")
    try:
        make_collection(folder, args.points, clip.embed_dim, args.seed)
        stamps: list[tuple[float, int]] = []
        with CrossModalStore.adopt(folder, "photos", clip, native_vector="", check=0,
                                   oti_config=OTIConfig(steps=args.steps)) as store:
            start, start_up = time.perf_counter(), 0.0

            def written(n: int) -> None:
                stamps.append((time.perf_counter(), n))

            if kind == "in-process":
                BackfillWorker(store.collection, store.encoder, store.names, batch_size=args.batch).run(
                    progress=written)
            else:
                import ray  # noqa: PLC0415 - optional dependency (the `ray` extra)

                try:
                    report = backfill_on_ray(store.collection, store.encoder, store.names, workers=workers,
                                             batch_size=args.batch, threads=1, progress=False, on_written=written)
                finally:
                    ray.shutdown()
                start_up = report.seconds_start_up
            end = time.perf_counter()
            left = missing_count(store.collection, store.names, "image")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    total = sum(n for _, n in stamps)
    return {"run": kind, "workers": workers, "points": total, "missing_after": left,
            "seconds_end_to_end": round(end - start, 3), "seconds_start_up": round(start_up, 3),
            "points_per_s_end_to_end": round(total / (end - start), 4),
            "points_per_s_after_start_up": round(total / (end - start - start_up), 4)}


def cost_table(rate_per_worker: float, gpu_rate: float, cluster_workers: int) -> list[dict]:
    rows = []
    for n in (1_000_000, 100_000_000, 1_000_000_000):
        worker_hours = n / rate_per_worker / 3600
        rows.append({"points": n, "cpu_worker_hours": round(worker_hours, 1),
                     f"hours_on_{cluster_workers}_cpu_workers": round(worker_hours / cluster_workers, 1),
                     "gpu_hours_estimated": round(n / gpu_rate / 3600, 2)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="crossgap-demo")
    parser.add_argument("--points", type=int, default=48)
    parser.add_argument("--steps", type=int, default=150, help="OTI steps (default: the published 150)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cluster-workers", type=int, default=100, help="workers of the cost table's cluster")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    clip = load_model(args.model, device="cpu")
    runs = [run("in-process", 1, args, clip), run("ray", 1, args, clip), run("ray", 2, args, clip)]
    here, one, two = (r["points_per_s_after_start_up"] for r in runs)
    flops = cpu_matmul_flops()
    per_worker = min(here, one)  # the slower of one worker in-process and on Ray: the cost table stays honest
    gpu_rate = per_worker * GPU_FP32_FLOPS / flops
    print(json.dumps({
        "benchmark": "backfill", "model": clip.display_name, "steps": args.steps, "batch": args.batch,
        "points": args.points, "threads_per_worker": 1, "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()[0],
        "runs": runs,
        "ray_overhead": {"seconds_start_up_1_worker": runs[1]["seconds_start_up"],
                         "seconds_start_up_2_workers": runs[2]["seconds_start_up"],
                         "rate_after_start_up_ray_1_over_in_process": round(one / here, 3),
                         "rate_after_start_up_ray_2_over_ray_1": round(two / one, 3),
                         "end_to_end_ray_1_over_in_process": round(runs[1]["points_per_s_end_to_end"]
                                                                   / runs[0]["points_per_s_end_to_end"], 3)},
        "targets": {"ray_1_at_least_0.9x_in_process": one >= 0.9 * here, "ray_2_at_least_1.6x_ray_1": two >= 1.6 * one},
        "per_worker_points_per_s": per_worker,
        "per_gpu_points_per_s": {"value": round(gpu_rate, 1), "label": "estimated",
                                 "basis": f"measured CPU rate x {GPU_FP32_FLOPS:.0e} FLOP/s assumed on a GPU / "
                                          f"{flops:.2e} FLOP/s measured on this CPU thread"},
        "cost": cost_table(per_worker, gpu_rate, args.cluster_workers),
    }, indent=2))


if __name__ == "__main__":
    main()
