"""Running the command line in-process, on the tiny test model."""

from __future__ import annotations

from crossgap_qdrant.cli import main

MODEL = ["--model", "test-tiny-clip", "--pretrained", "none", "--steps", "2", "--quiet"]


def run(capsys, *argv):
    """``main(argv)`` with every argument as a string; returns (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err
