"""The ``crossgap-qdrant`` command line: ingest, search, invert, evaluate, fit-warm-start, info.

Examples::

    crossgap-qdrant ingest photos/ --model crossgap-demo
    crossgap-qdrant search "an owl" --text --model crossgap-demo                 # text -> image
    crossgap-qdrant search query.png --model crossgap-demo --mode gallery_inverted   # image -> image
    crossgap-qdrant ingest photos/ --model ViT-B-32 --pretrained openai --location http://localhost:6333
    crossgap-qdrant evaluate labelled_photos/ --model crossgap-demo --out report/
    crossgap-qdrant fit-warm-start --model crossgap-demo && crossgap-qdrant search q.png --model crossgap-demo \
        --mode query_inverted --warm-start                                       # interactive query inversion
    crossgap-qdrant info --json

Modules: parser (flags), common (model, store and output helpers), commands, evaluate_command.

Exit codes: 0 success; 1 runtime or data error (missing files, unreadable data, a collection built with
another model, a locked folder, an unreachable server, ...); 2 usage error (bad flags or arguments). Errors
are one line on stderr, prefixed "crossgap-qdrant: error:"; ``--debug`` shows the traceback instead.
``--json`` prints one JSON document on stdout; otherwise human-readable tables.
"""

from __future__ import annotations

import sys
from typing import Sequence

from crossgap_qdrant.cli.adopt_commands import cmd_adopt, cmd_backfill, cmd_optimize
from crossgap_qdrant.cli.commands import cmd_fit_warm_start, cmd_info, cmd_ingest, cmd_invert, cmd_search
from crossgap_qdrant.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    UsageError,
    expected_errors,
    format_table,
    setup_output,
)
from crossgap_qdrant.cli.evaluate_command import cmd_evaluate
from crossgap_qdrant.cli.parser import build_parser

COMMANDS = {"ingest": cmd_ingest, "search": cmd_search, "invert": cmd_invert, "evaluate": cmd_evaluate,
            "fit-warm-start": cmd_fit_warm_start, "info": cmd_info, "adopt": cmd_adopt, "backfill": cmd_backfill,
            "optimize": cmd_optimize}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage and the error
        return int(exc.code or 0)
    try:
        setup_output(args)
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_ERROR
    except expected_errors() as exc:
        if args.debug:
            raise
        message = str(exc).strip() or type(exc).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EXIT_ERROR


def run() -> None:  # pragma: no cover - the console script and `python -m crossgap_qdrant.cli`
    sys.exit(main())


__all__ = ["COMMANDS", "EXIT_ERROR", "EXIT_OK", "EXIT_USAGE", "UsageError", "build_parser", "format_table", "main"]
