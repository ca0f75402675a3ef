"""Progress reporting on stderr: a bar on a terminal, a line every few seconds elsewhere (logs, pipes, CI).

A bar on a terminal is removed when it finishes (``leave=False``), so a run of many batches leaves no line per
batch behind. Without a terminal, carriage-return bars would pile up in a log file: a plain line is written
instead, at most once every :data:`LINE_INTERVAL_S` seconds, with the count, the elapsed time and an estimate
of what is left.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, TextIO

from tqdm import tqdm

#: Seconds between two progress lines when stderr is not a terminal.
LINE_INTERVAL_S = 10.0


class SilentProgress:
    """A progress counter that shows nothing (progress off)."""

    def __init__(self, total: int):
        self.total = total
        self.n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LineProgress(SilentProgress):
    """Progress as plain lines, one every ``interval`` seconds at most, for streams that are not terminals.

    A line reads ``crossgap-qdrant: <desc>: 450/1200 steps (38%), 41 s, about 68 s left``; a last line is
    written on close when any line was written before (a short task stays silent).
    """

    def __init__(self, total: int, desc: str, unit: str, stream: TextIO, interval: float = LINE_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(total)
        self.desc, self.unit, self.stream, self.interval, self.clock = desc, unit, stream, interval, clock
        self.start = self.last = clock()
        self.lines = 0
        self.postfix = ""
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.last >= self.interval:
            self._line()

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def _line(self, final: bool = False) -> None:
        now = self.clock()
        elapsed = now - self.start
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        left = ""
        if not final and self.n and self.total and self.n < self.total:
            left = f", about {format_seconds(elapsed * (self.total - self.n) / self.n)} left"
        postfix = f", {self.postfix}" if self.postfix else ""
        done = ", done" if final else ""
        print(f"crossgap-qdrant: {self.desc}: {self.n}/{self.total} {self.unit}s{share}{postfix}, "
              f"{format_seconds(elapsed)}{left}{done}", file=self.stream, flush=True)
        self.last = now
        self.lines += 1

    def close(self) -> None:
        if not self.closed and self.lines:
            self._line(final=True)
        self.closed = True


def format_seconds(seconds: float) -> str:
    """``41 s``, ``3.5 min`` or ``1.2 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool = True, stream: TextIO | None = None):
    """A progress counter for ``total`` units: a tqdm bar on a terminal (removed when done), plain lines every
    :data:`LINE_INTERVAL_S` seconds on any other stream, nothing when ``enabled`` is False.

    The result has tqdm's ``update(n)``, ``set_postfix_str(text)``, ``close()``, ``n`` and ``total``, and is a
    context manager.
    """
    if not enabled:
        return SilentProgress(total)
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if callable(isatty) and isatty():
        return tqdm(total=total, desc=desc, unit=unit, leave=False, file=stream, dynamic_ncols=True)
    return LineProgress(total, desc, unit, stream)
