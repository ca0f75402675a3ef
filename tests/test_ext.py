"""A missing compiled library gives an error that names the rebuild command."""

import pytest

from crossgap_qdrant import _ext


def test_missing_library_names_rebuild_command(monkeypatch):
    monkeypatch.setattr(_ext, "_loaded", False)
    monkeypatch.setattr(_ext, "library_path", lambda: None)
    with pytest.raises(ImportError, match="pip install --no-build-isolation -e ."):
        _ext.load_library()


def test_library_is_built_and_registers_ops():
    import torch

    assert _ext.library_path() is not None
    _ext.load_library()
    assert hasattr(torch.ops.crossgap, "adamw_step") and hasattr(torch.ops.crossgap, "cosine_loss")
