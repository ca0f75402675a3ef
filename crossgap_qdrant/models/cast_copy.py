"""Frozen copies of a module cast to another dtype, made once per (module, dtype) and reused.

Inverting in a precision other than the weights' (bf16 steps on a float32 model; float32 final features of a
mixed-precision model) needs the tower in that dtype. Casting a copy per call costs a deep copy of the weights
each time (hundreds of MB for ViT-L); here the copy is kept beside the module, weakly keyed by it, so it goes
away with the module, and it is made again when the module's weights changed since (a parameter or buffer
replaced or modified in place).
"""

from __future__ import annotations

import copy
import threading
import weakref

import torch
import torch.nn as nn

_COPIES: "weakref.WeakKeyDictionary[nn.Module, dict[torch.dtype, tuple[tuple, nn.Module]]]" = (
    weakref.WeakKeyDictionary())
_LOCK = threading.Lock()


def _weights_state(module: nn.Module) -> tuple:
    """What identifies the module's current weights: each tensor's storage, dtype and in-place version."""
    tensors = list(module.parameters()) + list(module.buffers())
    return tuple((t.data_ptr(), t.dtype, t.device, t._version) for t in tensors)


def cast_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A frozen copy of ``module`` with every floating parameter and buffer in ``dtype``, cached.

    The module itself is never changed. Two calls with the same module and dtype return the same copy while
    the module's weights are unchanged.

    Args:
        module: the module to copy (any device).
        dtype: the floating dtype of the copy.

    Returns:
        The cast copy, with ``requires_grad=False`` on every parameter.
    """
    state = _weights_state(module)
    with _LOCK:
        per_dtype = _COPIES.setdefault(module, {})
        cached = per_dtype.get(dtype)
        if cached is not None and cached[0] == state:
            return cached[1]
        low = copy.deepcopy(module).to(dtype).requires_grad_(False)
        per_dtype[dtype] = (state, low)
        return low


def clear_cast_copies() -> None:
    """Drops every cached copy (they are also dropped with their module)."""
    with _LOCK:
        _COPIES.clear()
