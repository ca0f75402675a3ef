"""A missing compiled library gives an error that names the rebuild command."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crossgap_qdrant import _ext
from crossgap_qdrant.cli import main
from tests.support.tiny_models import TINY_CLIP


def test_missing_library_names_rebuild_command(monkeypatch):
    monkeypatch.setattr(_ext, "_loaded", False)
    monkeypatch.setattr(_ext, "library_path", lambda: None)
    with pytest.raises(ImportError, match="pip install --no-build-isolation -e ."):
        _ext.load_library()


def test_library_is_built_and_registers_ops():
    assert _ext.library_path() is not None
    _ext.load_library()
    assert hasattr(torch.ops.crossgap, "adamw_step") and hasattr(torch.ops.crossgap, "cosine_loss")


def test_a_broken_build_still_imports_reads_and_searches_stored_vectors(tmp_path):
    """Without the compiled library: the package imports, info and point-id searches work, ops name the fix."""
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_CLIP))
    model = ["--model", "test-tiny-clip", "--model-config", str(config), "--pretrained", "none", "--quiet"]
    loc = ["--location", str(tmp_path / "q"), "--collection", "c"]
    texts = tmp_path / "t.txt"
    texts.write_text("a cat\na dog\na red car\n")
    assert main(["ingest", str(texts), "--texts", "--steps", "2", *model, *loc]) == 0
    script = f"""
import json, io, contextlib
import crossgap_qdrant._ext as ext
ext.library_path = lambda: None  # as if the build had failed
import crossgap_qdrant, crossgap_qdrant.ops as ops, torch
from crossgap_qdrant.cli import main
from crossgap_qdrant.store import text_id
out = io.StringIO()
with contextlib.redirect_stdout(out):
    assert main(["info", *{loc!r}, "--json"]) == 0
assert json.loads(out.getvalue())["points"] == 3
for mode in ("native", "query_inverted", "gallery_inverted"):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["search", str(text_id("a cat")), "--gallery", "texts", "--mode", mode, *{model!r}, *{loc!r},
                     "--json"]) == 0, mode
    assert len(json.loads(out.getvalue())["hits"]) == 2
try:
    ops.cosine_loss(torch.ones(1, 2), torch.ones(1, 2))
except ImportError as exc:
    assert "pip install --no-build-isolation -e ." in str(exc)
else:
    raise AssertionError("the op ran without its library")
assert not ext.is_loaded()
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": str(_repo_root())})
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def _repo_root():
    return Path(__file__).resolve().parent.parent
