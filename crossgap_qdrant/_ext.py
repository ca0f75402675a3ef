"""Loads the compiled operator library (crossgap_qdrant/_C*.so) into torch.ops.crossgap.

Nothing here runs at import: the library is loaded by the first op that needs it (see ``ops.require_library``).
"""

from __future__ import annotations

import glob
import os

import torch

from crossgap_qdrant.errors import CrossgapError

REBUILD_COMMAND = "python -m pip install --no-build-isolation -e ."

_loaded = False


class ExtensionNotBuiltError(CrossgapError, ImportError):
    """The compiled operators are missing or were built against another PyTorch (the message names the
    rebuild command)."""


def library_path() -> str | None:
    """Path of the compiled library next to this file, or None when it was never built."""
    here = os.path.dirname(os.path.abspath(__file__))
    found = sorted(glob.glob(os.path.join(here, "_C*.so")) + glob.glob(os.path.join(here, "_C*.pyd")))
    return found[0] if found else None


def is_loaded() -> bool:
    """True once :func:`load_library` has registered the operators in this process."""
    return _loaded


def load_library() -> None:
    """Registers torch.ops.crossgap.*; raises ExtensionNotBuiltError (an ImportError) naming the rebuild
    command when the library is missing."""
    global _loaded
    if _loaded:
        return
    path = library_path()
    if path is None:
        raise ExtensionNotBuiltError(
            "crossgap_qdrant's compiled operators (crossgap_qdrant/_C*.so) are missing. "
            f"Build them from the project root with: {REBUILD_COMMAND}"
        )
    try:
        torch.ops.load_library(path)
    except OSError as exc:
        raise ExtensionNotBuiltError(
            f"crossgap_qdrant could not load its compiled operators from {path} ({exc}); they were probably "
            f"built against another PyTorch. Rebuild them with: {REBUILD_COMMAND}"
        ) from exc
    _loaded = True


def has_cuda_kernels() -> bool:
    """True when the loaded library was built with the CUDA kernels."""
    load_library()
    return torch._C._dispatch_has_kernel_for_dispatch_key("crossgap::adamw_step", "CUDA")
