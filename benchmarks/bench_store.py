"""The collection engines side by side: ingestion rate, query latency and Edge's HNSW recall; prints JSON.

Points are unit vectors of width --dim in the store's layout: image items hold "image" and "image_oti", text
items "text" and "text_ovi" (half of each), with a small payload. By default they lie around 1000 random centres
(--distribution clustered), as embeddings of a real collection do; uniformly random vectors (--distribution
uniform) are the worst case for an HNSW index (every point about equally far from every other), so its recall
there says little about real data; the brute-force engines do not care. Vectors are drawn and
turned into points before the clock starts, and the Collection layer is called directly, so what is timed
is the engine. Engines:

    edge     Qdrant's engine in the process (qdrant-edge), on disk; optimize() after ingestion
    local    qdrant-client's local mode on disk (pure Python, one SQLite commit per point; slow to fill,
             so by default only up to --local-max-points)
    memory   qdrant-client's ":memory:" mode (the same Python search as local mode, without SQLite)

Query modes (per-query latency of one request): nearest on one vector, fused (two prefetches + RRF, as the
store's "fused" mode), filtered (nearest with a payload filter matching 10% of the points). Recall@10 of
Edge's HNSW path (after optimize) is measured against exact search (SearchParams(exact=True)).

    python benchmarks/bench_store.py                          # 10k and 100k points, about 10 min on 2 cores
    python benchmarks/bench_store.py --sizes 10000 --engines edge,local
    python benchmarks/bench_store.py --sizes 100000 --local-max-points 100000   # local mode: ~40 min to fill
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile

import numpy as np
from qdrant_client import models
from timing import timed, timings

from crossgap_qdrant.store.engines import open_collection

VECTORS = ("image", "image_oti", "text", "text_ovi")
CENTRES, SPREAD = 1000, 1.0  # "clustered": points around 1000 centres, noise as large as the centre


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((n, dim), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def clustered_rows(rng: np.random.Generator, centres: np.ndarray, n: int, spread: float) -> np.ndarray:
    """Unit rows near random centres (each row: a centre plus Gaussian noise of norm about ``spread``)."""
    dim = centres.shape[1]
    rows = centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, dim), dtype=np.float32) * (
        spread / np.sqrt(dim))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def make_batches(n: int, dim: int, batch: int, seed: int, distribution: str) -> list[list[models.PointStruct]]:
    """All points, batched; even ids are images (image, image_oti), odd ids texts (text, text_ovi)."""
    rng = np.random.default_rng(seed)
    centres = unit_rows(np.random.default_rng(seed + 7), CENTRES, dim)
    draw = ((lambda m: unit_rows(rng, m, dim)) if distribution == "uniform"
            else (lambda m: clustered_rows(rng, centres, m, SPREAD)))
    batches = []
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        a, b = draw(stop - start), draw(stop - start)
        points = []
        for j, pid in enumerate(range(start, stop)):
            names = ("image", "image_oti") if pid % 2 == 0 else ("text", "text_ovi")
            points.append(models.PointStruct(
                id=pid, vector={names[0]: a[j].tolist(), names[1]: b[j].tolist()},
                payload={"modality": "image" if pid % 2 == 0 else "text", "group": (pid // 2) % 10}))
        batches.append(points)
    return batches


def query_requests(queries: np.ndarray, prefetch_limit: int) -> dict[str, list[models.QueryRequest]]:
    group = models.Filter(must=[models.FieldCondition(key="group", match=models.MatchValue(value=3))])
    out = {"nearest": [], "fused": [], "filtered": []}
    for q in queries:
        v = q.tolist()
        out["nearest"].append(models.QueryRequest(query=v, using="image", limit=10, with_payload=True))
        out["fused"].append(models.QueryRequest(
            prefetch=[models.Prefetch(query=v, using="image_oti", limit=prefetch_limit),
                      models.Prefetch(query=v, using="image", limit=prefetch_limit)],
            query=models.FusionQuery(fusion=models.Fusion.RRF), limit=10, with_payload=True))
        out["filtered"].append(models.QueryRequest(query=v, using="image", limit=10, filter=group,
                                                   with_payload=True))
    return out


def latency(collection, requests: list[models.QueryRequest]) -> dict:
    collection.query(requests[:1])  # warm-up
    one_at_a_time = iter(requests)
    seconds = sorted(timings(lambda: collection.query([next(one_at_a_time)]), len(requests)))
    return {"p50_ms": 1e3 * statistics.median(seconds), "mean_ms": 1e3 * statistics.fmean(seconds),
            "p95_ms": 1e3 * seconds[min(len(seconds) - 1, int(0.95 * len(seconds)))]}


def recall_at_10(collection, requests: list[models.QueryRequest]) -> float:
    """Mean overlap of the top 10 of the index path with the top 10 of exact search."""
    exact = [r.model_copy(update={"params": models.SearchParams(exact=True)}) for r in requests]
    approx_hits = collection.query(requests)
    exact_hits = collection.query(exact)
    overlaps = [len({h.id for h in a} & {h.id for h in e}) / max(1, len(e)) for a, e in zip(approx_hits, exact_hits)]
    return statistics.fmean(overlaps)


def run_engine(engine: str, n: int, args, batches, requests, root: str) -> dict:
    location = ":memory:" if engine == "memory" else os.path.join(root, f"{engine}-{n}")
    collection = open_collection(location, "bench", engine=None if engine == "memory" else engine,
                                 create_folder=True)
    result: dict = {"engine": collection.engine, "mode": engine}
    try:
        collection.create({name: args.dim for name in VECTORS}, {"bench": True})
        seconds = sum(timed(collection.upsert, points)[1] for points in batches)
        result["ingest_s"] = seconds
        result["ingest_items_per_s"] = n / seconds
        if engine == "edge":
            result["optimize_s"] = timed(collection.optimize)[1]
            result["indexed_vectors"] = collection.indexed_vectors()
            result["ingest_items_per_s_with_optimize"] = n / (seconds + result["optimize_s"])
            # the default path (exact below EXACT_SEARCH_BELOW points), then the HNSW path whatever the size
            result["default_path_exact"] = n < collection.exact_search_below
            collection.exact_search_below = 0
        assert collection.count() == n
        result["latency"] = {mode: latency(collection, reqs) for mode, reqs in requests.items()}
        if engine == "edge":
            result["hnsw_recall_at_10"] = {mode: recall_at_10(collection, requests[mode])
                                           for mode in ("nearest", "filtered")}
            collection.exact_search_below = 10**12
            result["latency_exact"] = {mode: latency(collection, requests[mode]) for mode in ("nearest", "filtered")}
    finally:
        collection.close()
        if engine != "memory":
            shutil.rmtree(location, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated point counts")
    parser.add_argument("--engines", default="edge,local,memory", help="edge, local, memory (comma-separated)")
    parser.add_argument("--local-max-points", type=int, default=10_000,
                        help="skip local mode above this size (it fills at ~40 points/s here)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--batch", type=int, default=256, help="points per upsert")
    parser.add_argument("--prefetch-limit", type=int, default=40)
    parser.add_argument("--dir", default=None, help="where the on-disk engines write (default: a temp folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--distribution", choices=("clustered", "uniform"), default="clustered",
                        help="points near 1000 centres (like the embeddings of a real collection; the default) or "
                             "uniform on the sphere (the worst case for HNSW: its recall there says little)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for engine in engines:
        if engine not in ("edge", "local", "memory"):
            parser.error(f"unknown engine {engine!r}: choose from edge, local, memory")

    root = tempfile.mkdtemp(prefix="bench_store_", dir=args.dir)
    report: dict = {
        "python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
        "dim": args.dim, "queries": args.queries, "batch": args.batch, "prefetch_limit": args.prefetch_limit,
        "distribution": args.distribution,
        "layout": "even ids: image+image_oti, odd ids: text+text_ovi; filter matches 10% of points",
        "runs": [],
    }
    try:
        qrng = np.random.default_rng(args.seed + 1)
        if args.distribution == "uniform":
            queries = unit_rows(qrng, args.queries, args.dim)
        else:  # queries from the same distribution as the points (other draws)
            queries = clustered_rows(qrng, unit_rows(np.random.default_rng(args.seed + 7), CENTRES, args.dim),
                                     args.queries, SPREAD)
        requests = query_requests(queries, args.prefetch_limit)
        for n in sizes:
            batches = make_batches(n, args.dim, args.batch, args.seed, args.distribution)
            for engine in engines:
                if engine == "local" and n > args.local_max_points:
                    report["runs"].append({"mode": "local", "points": n, "skipped": (
                        f"above --local-max-points={args.local_max_points} (local mode commits each point to "
                        "SQLite; see the ingestion rate at the smaller size)")})
                    continue
                run = run_engine(engine, n, args, batches, requests, root)
                run["points"] = n
                report["runs"].append(run)
                print(json.dumps(run), file=sys.stderr, flush=True)  # progress; the report goes to stdout
            del batches
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
