"""Ingestion throughput and query latency of CrossModalStore on embedded local Qdrant; prints JSON.

N synthetic items (random unit image features of width --dim) are ingested into a fresh local folder with a
tiny random CLIP whose embedding width is --dim, so the numbers show the adapter and Qdrant, not a backbone.
The OTI inversion runs --steps steps per item (0: precomputed inverted vectors are passed instead), so a run
stays minutes on 2 cores. Then each search mode is timed over repeated queries, given as features and as
stored point ids.

    python benchmarks/bench_store.py --n 1000 --steps 5
    python benchmarks/bench_store.py --n 10000 --steps 0 --queries 30
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from crossgap_qdrant.inversion import OTIConfig
from crossgap_qdrant.models import load_model, register_model_config
from crossgap_qdrant.store import MODES, CrossModalStore


def bench_model_config(dim: int) -> dict:
    return {
        "embed_dim": dim,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }


def percentiles(seconds: list[float]) -> dict:
    ms = sorted(s * 1e3 for s in seconds)
    return {
        "median_ms": round(statistics.median(ms), 3),
        "p90_ms": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 3),
        "n": len(ms),
    }


def time_queries(search, queries, warmup: int = 2) -> list[float]:
    for q in queries[:warmup]:
        search(q)
    out = []
    for q in queries:
        start = time.perf_counter()
        search(q)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="items to ingest (the issue asks for 1000 and 10000)")
    parser.add_argument("--dim", type=int, default=512, help="embedding width (512 as ViT-B/32)")
    parser.add_argument("--steps", type=int, default=5, help="OTI steps per item; 0 = precomputed inverted vectors")
    parser.add_argument("--batch-size", type=int, default=256, help="ingestion batch")
    parser.add_argument("--queries", type=int, default=50, help="timed queries per mode")
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--query-steps", type=int, default=None,
                        help="OTI steps of query_inverted at query time (default: --steps, at least 1)")
    parser.add_argument("--location", default=None, help="local folder (default: a fresh temporary one) or :memory:")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    register_model_config("bench-store-clip", bench_model_config(args.dim))
    torch.manual_seed(0)
    model, preprocess, tokenizer = load_model("bench-store-clip", device="cpu")
    gen = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(args.n, args.dim, generator=gen), dim=-1)
    inverted = None if args.steps > 0 else F.normalize(torch.randn(args.n, args.dim, generator=gen), dim=-1)

    tmp = None
    location = args.location
    if location is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_store_")
        location = os.path.join(tmp.name, "qdrant")
    store = CrossModalStore.open(location, "bench", model, tokenizer, preprocess, model_id="bench-store-clip",
                                 oti_config=OTIConfig(steps=max(1, args.steps)))
    start = time.perf_counter()
    report = store.ingest_images(features, inverted_features=inverted, batch_size=args.batch_size, progress=False)
    wall = time.perf_counter() - start
    rerun_start = time.perf_counter()
    rerun = store.ingest_images(features, inverted_features=inverted, batch_size=args.batch_size, progress=False)
    rerun_wall = time.perf_counter() - rerun_start

    # query features near stored items, as a real query would be; ids of stored items for the lookup path
    nq = args.queries
    qgen = torch.Generator().manual_seed(1)
    picks = torch.randint(0, args.n, (nq,), generator=qgen)
    query_features = F.normalize(features[picks] + 0.3 * torch.randn(nq, args.dim, generator=qgen) / args.dim**0.5,
                                 dim=-1)
    query_ids = [report.ids[i] for i in picks.tolist()]

    latency = {}
    query_steps = args.query_steps if args.query_steps is not None else max(1, args.steps)
    store.oti_config = OTIConfig(steps=query_steps)
    for mode in MODES:
        run = lambda q, mode=mode: store.search_images(q, mode=mode, limit=args.limit)  # noqa: E731
        latency[mode] = {
            "features": percentiles(time_queries(run, list(query_features))),
            "point_id": percentiles(time_queries(run, query_ids)),
        }
    native = latency["native"]["features"]["median_ms"]
    gallery = latency["gallery_inverted"]["features"]["median_ms"]

    result = {
        "benchmark": "bench_store",
        "n": args.n,
        "dim": args.dim,
        "oti_steps": args.steps,
        "query_oti_steps": query_steps,
        "location": "memory" if location == ":memory:" else "local folder",
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "ingestion": {
            "inserted": report.inserted,
            "inverted": report.inverted,
            "wall_s": round(wall, 3),
            "items_per_s": round(args.n / wall, 1),
            "seconds_inversion": round(report.seconds_inversion, 3),
            "seconds_database": round(report.seconds_database, 3),
            "seconds_encoding": round(report.seconds_encoding, 3),
            "inversion_items_per_s": round(report.inverted / report.seconds_inversion, 1)
            if report.seconds_inversion > 0 else None,
            "database_items_per_s": round(args.n / report.seconds_database, 1) if report.seconds_database else None,
            "inverted_vectors": "computed" if inverted is None else "precomputed",
        },
        "idempotent_rerun": {
            "skipped_existing": rerun.skipped_existing,
            "inserted": rerun.inserted,
            "wall_s": round(rerun_wall, 3),
        },
        "query_latency": latency,
        "gallery_inverted_over_native_median": round(gallery / native, 3),
        "limit": args.limit,
    }
    store.close()
    if tmp is not None:
        tmp.cleanup()
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
