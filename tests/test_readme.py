"""The README's examples that use the bundled demo model run as written (offline, on Debian's clip art)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLIPART = Path("/usr/share/openclipart/png")
FENCE = re.compile(r"```(bash|python)\n(.*?)```", re.S)


def readme_blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [body for lang, body in FENCE.findall(text) if lang == language and "crossgap-demo" in body]


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


def test_the_readme_has_demo_examples_for_the_cli_and_python():
    assert readme_blocks("bash") and readme_blocks("python")
    assert any("search" in c and "--text" in c for b in readme_blocks("bash") for c in commands(b))


@pytest.mark.skipif(not CLIPART.is_dir(), reason="needs Debian's openclipart-png (install.sh installs it)")
def test_readme_examples_run_as_written(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "crossgap_qdrant.cli"]
    for block in readme_blocks("bash"):
        for command in commands(block):
            argv = shlex.split(command)
            assert argv[0] == "crossgap-qdrant", command
            proc = subprocess.run(cli + argv[1:], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, (command, proc.stderr[-3000:])
            assert "Traceback" not in proc.stderr
    for i, block in enumerate(readme_blocks("python")):
        work = tmp_path / f"python{i}"
        work.mkdir()
        proc = subprocess.run([sys.executable, "-c", block], cwd=work, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, (block, proc.stderr[-3000:])
