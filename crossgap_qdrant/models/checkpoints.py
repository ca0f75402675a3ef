"""Checkpoint files: read weights-only (never running pickled code), fitted strictly, fingerprinted."""

from __future__ import annotations

import hashlib
import os
import pickle
import weakref
import zipfile
from pathlib import Path

import torch
import torch.nn as nn
from open_clip.factory import load_checkpoint as open_clip_load
from safetensors.torch import load_file

from crossgap_qdrant.errors import CrossgapError


class CheckpointError(CrossgapError, ValueError):
    """A checkpoint file is unreadable, holds more than weights, or does not fit the architecture."""


def load_checkpoint(model: nn.Module, path: Path, architecture: str) -> None:
    """Loads ``path`` into ``model`` strictly, reading it weights-only (torch.load(weights_only=True))."""
    state = read_state_dict(path)  # refuses pickled code before open_clip opens the file
    try:
        open_clip_load(model, str(path), strict=True, weights_only=True, device="cpu")
    except Exception as exc:
        problem = _mismatch(model, state, architecture) if state is not None else None
        raise CheckpointError(
            f"checkpoint {path} does not fit architecture {architecture}: "
            f"{problem or f'{type(exc).__name__}: {exc}'}. Pass the architecture it was trained with, or "
            "'local-dir:<folder>' with its open_clip_config.json"
        ) from exc


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """The tensors of a checkpoint file, read without running pickled code (torch.load(weights_only=True)).

    Returns:
        name -> tensor (a "state_dict" entry unwrapped, a "module." prefix stripped); None for numpy
        (big_vision) files, which hold no pickled code.

    Raises:
        CheckpointError: naming the file, when it is unreadable, refers to code, or holds no tensors.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".npz", ".npy"):
        return None
    try:
        if suffix == ".safetensors":
            data = load_file(str(path))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        reasons = [ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()]
        reason = next((r for r in reasons if not r.startswith(("Please file", "Check the documentation"))), str(exc))
        raise CheckpointError(
            f"refused checkpoint {path}: it is not a plain weights file that torch.load(weights_only=True) can read "
            f"({reason.replace('WeightsUnpickler error: ', '')}). Unpickling anything else can run code; if you "
            "trust the file, re-save its state_dict with torch.save or as .safetensors"
        ) from None
    except Exception as exc:  # torch and safetensors raise several types on truncated or foreign files
        raise CheckpointError(f"cannot read checkpoint {path} ({type(exc).__name__}: {exc})") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)} if isinstance(data, dict) else {}
    if not tensors:
        raise CheckpointError(f"checkpoint {path} holds no tensors (got {type(data).__name__})")
    return {k[7:] if k.startswith("module.") else k: v for k, v in tensors.items()}


def _mismatch(model: nn.Module, state: dict[str, torch.Tensor], architecture: str) -> str | None:
    """Names the weights that differ between a checkpoint and a model, or None when keys and shapes agree."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} of the model's {len(own)} weights are missing from it (e.g. {missing[0]})")
    if extra:
        parts.append(f"{len(extra)} of its weights are unknown to the model (e.g. {extra[0]})")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} have other shapes (e.g. {k}: checkpoint {list(state[k].shape)}, "
                     f"{architecture} {list(own[k].shape)})")
    return "; ".join(parts) or None


_DIGESTS: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()


def weights_digest(model: nn.Module) -> str:
    """SHA-256 (hex) of a model's state dict: names, shapes and values, in sorted name order.

    Floating tensors are hashed as float32, so an fp16 checkpoint gives one digest whether loaded at fp16 or
    fp32; a model cast to a lower precision than its checkpoint hashes differently (its weights differ).
    Cached per model object (about 0.4 s for ViT-B-32 on one CPU core): weights changed in place afterwards
    are not seen.
    """
    cached = _DIGESTS.get(model)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        tensor = value.detach()
        tensor = (tensor.float() if tensor.is_floating_point() else tensor).cpu().contiguous().reshape(-1)
        digest.update(f"{key}|{tensor.dtype}|{tuple(value.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy())
    _DIGESTS[model] = digest.hexdigest()
    return _DIGESTS[model]
