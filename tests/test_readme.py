"""The README's examples that use the bundled demo model run as written (offline, on Debian's clip art), and
print what the README shows next to them."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLIPART = Path("/usr/share/openclipart/png")
FENCE = re.compile(r"```(bash|python|text)\n(.*?)```", re.S)
NUMBER = re.compile(r"[-+]?\d+\.\d+")
TIMING_ROW = re.compile(r"^(seconds_\w+)\s+\S+$")


def fenced_blocks() -> list[tuple[str, str, int, int]]:
    """(language, body, start, end) of every fenced block of the README, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [(m.group(1), m.group(2), m.start(), m.end()) for m in FENCE.finditer(text)]


def readme_blocks(language: str) -> list[str]:
    return [body for lang, body, _, _ in fenced_blocks() if lang == language and "crossgap-demo" in body]


#: The README's section whose commands run here as written (the others need a server, a cluster or hours).
FIRST_HOUR = "## A first hour with the command line"


def cli_examples() -> list[tuple[list[str], str | None]]:
    """(commands, the output shown right after them or None) of every bash block of crossgap-qdrant commands in
    the first-hour section; ``serve`` (which runs until stopped) is tested by tests/test_serve_*.py."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(FIRST_HOUR)
    end_of_section = text.find("\n## ", start + len(FIRST_HOUR))
    blocks = fenced_blocks()
    out = []
    for i, (lang, body, begin, end) in enumerate(blocks):
        cmds = commands(body)
        if not start <= begin < (end_of_section if end_of_section >= 0 else len(text)):
            continue
        if lang != "bash" or not cmds or not all(c.startswith("crossgap-qdrant ") for c in cmds):
            continue
        if any(c.split()[1] == "serve" for c in cmds):
            continue
        shown = None
        if i + 1 < len(blocks) and blocks[i + 1][0] == "text" and not text[end:blocks[i + 1][2]].strip():
            assert len(cmds) == 1, f"an output block follows several commands: {cmds}"
            shown = blocks[i + 1][1]
        out.append((cmds, shown))
    return out


def commands(block: str) -> list[str]:
    """The block's commands: one per line, backslash continuations joined, comments dropped."""
    out, current = [], ""
    for line in block.splitlines():
        line = line.split(" #", 1)[0].rstrip() if not line.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            out.append(current.strip())
        current = ""
    return out


def _normal_lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.strip("\n").splitlines()]
    return [TIMING_ROW.sub(r"\1 <seconds>", line) for line in lines]


def same_output(shown: str, printed: str) -> str | None:
    """None when ``printed`` is what ``shown`` says, timings aside and each number within 3 units of the last
    digit the README shows (float rounding differs between CPUs); else the first difference."""
    want, got = _normal_lines(shown), _normal_lines(printed)
    if len(want) != len(got):
        return f"{len(got)} lines printed, {len(want)} shown:\n{printed}"
    for w, g in zip(want, got):
        if NUMBER.sub("#", w).split() != NUMBER.sub("#", g).split():
            return f"shown: {w!r}\nprinted: {g!r}"
        for a, b in zip(NUMBER.findall(w), NUMBER.findall(g)):
            unit = 10.0 ** -len(a.split(".")[1])
            if abs(float(a) - float(b)) > 3 * unit + 1e-12:
                return f"shown: {w!r}\nprinted: {g!r} ({a} vs {b})"
    return None


def test_the_readme_has_demo_examples_for_the_cli_and_python():
    assert readme_blocks("bash") and readme_blocks("python")
    examples = cli_examples()
    assert any("search" in c and "--text" in c for cmds, _ in examples for c in cmds)
    shown = [cmds[0].split()[1] for cmds, out in examples if out is not None]
    assert {"ingest", "search", "info", "evaluate"} <= set(shown), shown  # each first-hour command shows its output
    assert "](docs/serve.png)" in (ROOT / "README.md").read_text(encoding="utf-8")  # the browser test's screenshot
    assert (ROOT / "docs" / "serve.png").is_file()


def test_same_output_ignores_timings_and_last_digits_only():
    shown = "rank  cosine  id\n1     0.2871  abc\nseconds_inversion  34.18\n"
    assert same_output(shown, "rank  cosine  id\n1     0.2873  abc\nseconds_inversion  12.00\n") is None
    assert same_output(shown, "rank  cosine  id\n1     0.2881  abc\nseconds_inversion  12.00\n")
    assert same_output(shown, "rank  cosine  id\n1     0.2871  abd\nseconds_inversion  34.18\n")
    assert same_output(shown, "rank  cosine  id\n1     0.2871  abc\n")


@pytest.mark.skipif(not CLIPART.is_dir(), reason="needs Debian's openclipart-png (install.sh installs it)")
def test_readme_examples_run_as_written_and_print_what_it_shows(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the command line's own default
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))  # this checkout's code
    cli = [sys.executable, "-m", "crossgap_qdrant.cli"]
    for cmds, shown in cli_examples():
        for command in cmds:
            argv = shlex.split(command)
            proc = subprocess.run(cli + argv[1:], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, (command, proc.stderr[-3000:])
            assert "Traceback" not in proc.stderr
            if shown is not None:
                printed = proc.stdout.replace(str(tmp_path), ".")
                difference = same_output(shown, printed)
                assert difference is None, f"{command}: the README shows other output than it prints:\n{difference}"
    for i, block in enumerate(readme_blocks("python")):
        work = tmp_path / f"python{i}"
        work.mkdir()
        proc = subprocess.run([sys.executable, "-c", block], cwd=work, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, (block, proc.stderr[-3000:])
