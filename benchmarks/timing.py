"""The benchmarks' one timing helper: wall-clock seconds of calls, with CUDA work finished inside the clock.

Imported by the bench_*.py scripts beside it (``python3 benchmarks/bench_x.py`` puts this folder on sys.path).
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any, Callable


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
