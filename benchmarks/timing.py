"""The benchmarks' one timing helper: wall-clock seconds of calls, with CUDA work finished inside the clock.

Imported by the bench_*.py scripts beside it (``python3 benchmarks/bench_x.py`` puts this folder on sys.path).
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from typing import Any, Callable, Iterator


def sync() -> None:
    """Waits for queued CUDA work; a no-op on CPU, and in a process that never imported torch."""
    # Looked up, not imported: bench_store.py times the engines alone and must not pay for loading torch.
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """Calls ``fn(*args, **kwargs)`` once; returns (its result, seconds)."""
    sync()
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    sync()
    return result, time.perf_counter() - start


def timings(fn: Callable[[], Any], repeat: int, warmup: int = 0) -> list[float]:
    """Seconds of each of ``repeat`` calls of ``fn()``, after ``warmup`` calls that are not timed."""
    for _ in range(warmup):
        fn()
    return [timed(fn)[1] for _ in range(repeat)]


def median_ms(fn: Callable[[], Any], repeat: int, warmup: int = 2) -> float:
    """Median milliseconds of ``repeat`` calls of ``fn()``, after ``warmup`` untimed calls."""
    return statistics.median(timings(fn, repeat, warmup)) * 1e3


def interleaved_ms(fns: dict[str, Callable[[], Any]], repeat: int, warmup: int = 2) -> tuple[dict, dict]:
    """Times several functions round-robin, so that load from other processes hits them alike.

    Returns:
        (median milliseconds per name, every round's milliseconds per name, in round order).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    rounds: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            rounds[name].append(timed(fn)[1] * 1e3)
    return {name: statistics.median(t) for name, t in rounds.items()}, rounds


def timed_wall_cpu(fn: Callable[[], Any]) -> tuple[float, float]:
    """Calls ``fn()`` once; returns (wall seconds, CPU seconds of this process).

    On a shared machine the CPU time is what the call would take on one free core; the wall time is what it took.
    """
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - wall, time.process_time() - cpu


def median_wall_cpu_ms(fn: Callable[[], Any], repeat: int, warmup: int = 1) -> dict[str, float]:
    """{"wall", "cpu"}: median milliseconds of ``repeat`` calls of ``fn()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    runs = [timed_wall_cpu(fn) for _ in range(repeat)]
    return {"wall": round(statistics.median(r[0] for r in runs) * 1e3, 1),
            "cpu": round(statistics.median(r[1] for r in runs) * 1e3, 1)}


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Runs the block with ``n`` torch threads, then restores the number before it."""
    torch = sys.modules["torch"]
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
