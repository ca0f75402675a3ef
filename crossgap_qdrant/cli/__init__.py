"""The ``crossgap-qdrant`` command line: ingest, search, invert, evaluate, fit-warm-start, info, verify, serve,
adopt, backfill, optimize.

Examples::

    crossgap-qdrant ingest photos/ --model crossgap-demo
    crossgap-qdrant search "an owl" --text --model crossgap-demo                 # text -> image
    crossgap-qdrant search query.png --model crossgap-demo --mode gallery_inverted   # image -> image
    crossgap-qdrant ingest photos/ --model ViT-B-32 --pretrained openai --location http://localhost:6333
    crossgap-qdrant evaluate labelled_photos/ --model crossgap-demo --out report/
    crossgap-qdrant fit-warm-start --model crossgap-demo && crossgap-qdrant search q.png --model crossgap-demo \
        --mode query_inverted --warm-start                                       # interactive query inversion
    crossgap-qdrant info --json
    crossgap-qdrant verify                                                       # check every stored point
    crossgap-qdrant serve --model crossgap-demo                                  # http://127.0.0.1:8000/
    crossgap-qdrant adopt --collection theirs --vector clip --model ViT-B-32 --pretrained openai
    crossgap-qdrant backfill --collection theirs --model ViT-B-32 --pretrained openai --ray --workers 2

Modules: parser (flags), common (output helpers), resources (model and store), commands, evaluate_command,
serve_command, search_output, adopt_commands.

Exit codes: 0 success; 1 runtime or data error (missing files, unreadable data, a collection built with
another model, a locked folder, an unreachable server, ...) or a bug; 2 usage error (bad flags or arguments);
130 interrupted (Ctrl-C: the message says what was kept); 141 stdout closed early (``| head``), silently.
Known errors (:class:`~crossgap_qdrant.errors.CrossgapError`, ``OSError``) are one line on stderr, prefixed
"crossgap-qdrant: error:" (``--debug`` shows the traceback instead); anything else is a bug and keeps its
traceback.
``--json`` prints one JSON document on stdout; otherwise human-readable tables.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Callable, Sequence

from crossgap_qdrant.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    UsageError,
    check_location,
    expected_errors,
    format_table,
    setup_output,
)
from crossgap_qdrant.cli.parser import build_parser

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader went away, as for a program the signal ended

#: What Ctrl-C leaves behind, by command.
INTERRUPTED = {
    "ingest": "what was written before is kept; run the same command again to resume (stored items are skipped)",
    "invert": "the vectors written before are kept; run the same command again to compute the rest",
    "evaluate": "no report was written; what --apply wrote before is kept and a rerun completes it",
    "fit-warm-start": "no warm start was recorded; the collection is as it was",
}

#: Command name -> (module, function); a command's module (and the torch, open_clip and Qdrant imports it
#: brings) is imported only when that command runs, so ``--help`` and usage errors stay fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "ingest": ("crossgap_qdrant.cli.commands", "cmd_ingest"),
    "search": ("crossgap_qdrant.cli.commands", "cmd_search"),
    "invert": ("crossgap_qdrant.cli.commands", "cmd_invert"),
    "evaluate": ("crossgap_qdrant.cli.evaluate_command", "cmd_evaluate"),
    "fit-warm-start": ("crossgap_qdrant.cli.commands", "cmd_fit_warm_start"),
    "info": ("crossgap_qdrant.cli.commands", "cmd_info"),
    "verify": ("crossgap_qdrant.cli.commands", "cmd_verify"),
    "serve": ("crossgap_qdrant.cli.serve_command", "cmd_serve"),
    "adopt": ("crossgap_qdrant.cli.adopt_commands", "cmd_adopt"),
    "backfill": ("crossgap_qdrant.cli.adopt_commands", "cmd_backfill"),
    "optimize": ("crossgap_qdrant.cli.adopt_commands", "cmd_optimize"),
}


def command(name: str) -> Callable[..., int]:
    """The function that runs command ``name`` (its module imported now)."""
    module, function = COMMANDS[name]
    return getattr(importlib.import_module(module), function)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code (the console script exits with it).

    A :class:`~crossgap_qdrant.errors.CrossgapError` or an ``OSError`` (a missing or unreadable path, a
    refused connection) is printed as one line (exit 1, usage errors exit 2); any other exception is a bug
    and propagates with its traceback.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage and the error
        return int(exc.code or 0)
    try:
        setup_output(args)
        check_location(args)
        return command(args.command)(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; {INTERRUPTED.get(args.command, 'nothing was changed')}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of stdout went away (`| head`): nothing to say
        return quiet_broken_pipe()
    except expected_errors() as exc:
        if args.debug:
            raise
        message = str(exc).strip() or type(exc).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EXIT_ERROR


def quiet_broken_pipe() -> int:
    """Points stdout at /dev/null, so that the interpreter's last flush into the closed pipe stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a file (captured): nothing will be flushed into a pipe
        pass
    return EXIT_BROKEN_PIPE


def run() -> None:  # pragma: no cover - the console script and `python -m crossgap_qdrant.cli`
    code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = quiet_broken_pipe()
    sys.exit(code)


__all__ = ["COMMANDS", "EXIT_BROKEN_PIPE", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "UsageError",
           "build_parser", "command", "format_table", "main"]
