"""What the command line needs before a command runs: exit codes, usage errors, flag parsing helpers and
output (nothing here imports torch, open_clip or Qdrant; crossgap_qdrant.cli.resources does)."""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Sequence

from crossgap_qdrant.errors import CrossgapError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
PROG = "crossgap-qdrant"


class UsageError(CrossgapError):
    """Arguments that parse but do not make sense together (exit code 2)."""


def parse_cuts(spec: str | None) -> tuple[int, int] | None:
    if spec is None:
        return None
    try:
        top, bottom = (int(x) for x in spec.split(","))
    except ValueError:
        raise UsageError(f"--isoclip takes TOP,BOTTOM (two integers), got {spec!r}") from None
    if top < 0 or bottom < 0:
        raise UsageError(f"--isoclip cuts must be >= 0, got {spec!r}")
    return top, bottom


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain-text table, columns padded to their widest cell."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def emit(args, data: Any, text: str) -> None:
    print(json.dumps(finite_json(data), indent=2, default=str, allow_nan=False) if args.json else text)


def finite_json(data: Any) -> Any:
    """``data`` with NaN and infinite floats as None (JSON has no NaN; strict parsers reject it)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(v) for v in data]
    return data


def report_rows(report, totals: dict[str, Any]) -> None:
    for key in totals:
        value = getattr(report, key)
        totals[key] = totals[key] + (list(value) if key == "failed" else value)



def setup_output(args) -> None:
    """Logging level, progress default (a terminal on stderr) and PyTorch threads from the flags."""
    import logging

    # our own messages at INFO by default; other libraries' (open_clip logs at INFO on the root logger) only
    # from WARNING, unless --verbose
    ours = logging.DEBUG if args.verbose else (logging.WARNING if args.quiet else logging.INFO)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format=f"{PROG}: %(levelname)s: %(message)s", stream=sys.stderr, force=True)
    logging.getLogger("crossgap_qdrant").setLevel(ours)
    if not args.debug:  # one line per warning, ours and libraries' alike, no source lines
        import warnings

        def one_line(message, category, filename, lineno, file=None, line=None):
            print(f"{PROG}: warning: {message}", file=sys.stderr)

        warnings.showwarning = one_line
    if args.quiet:
        args.progress = False
    elif args.progress is None:
        args.progress = True  # a bar on a terminal, a line every few seconds elsewhere
    set_threads(args.threads)


def set_threads(threads: int | None) -> None:
    """PyTorch's CPU threads: ``threads``, else $OMP_NUM_THREADS when set, else 1.

    One thread is the default because PyTorch's OpenMP threads spin while they wait: on two shared cores the
    README's first ingest took 81 s with PyTorch's default and 15 s with one thread.
    """
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    if threads is None:
        if os.environ.get("OMP_NUM_THREADS"):
            return
        threads = 1
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read when torch is first imported
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def check_location(args) -> None:
    """Refuses ``--location :memory:``: a collection in memory ends with the command that made it."""
    if getattr(args, "location", None) == ":memory:":
        raise UsageError("--location :memory: keeps nothing once the command ends; give a folder (default "
                         "./qdrant_data) or a server URL")


def expected_errors() -> tuple[type[BaseException], ...]:
    """Errors printed as one line (exit 1): the package's own (data, model, storage, server, a missing build)
    and ``OSError`` (a path the user named is missing or unreadable, a full disk). Anything else is a bug."""
    return (CrossgapError, OSError)


def adopted_lines(adopted: dict | None) -> list[str]:
    """What ``info`` says of an adopted collection: its source vector and whether the model was checked."""
    if not adopted:
        return []
    check = adopted.get("check")
    checked = check if isinstance(check, str) else (f"checked on {check['points']} point(s), cosine >= "
                                                     f"{check['min_cosine']:.4f}")
    vector = "the unnamed vector" if adopted.get("vector") == "" else f"vector {adopted.get('vector')!r}"
    where = f", added vectors in {adopted['companion']}" if adopted.get("companion") else ""
    return [f"adopted: {vector} ({adopted.get('modality')}s), model {checked}{where}"]
