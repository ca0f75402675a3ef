"""Initial pseudo tokens: the published normal(0, std) draw, the per-item seeded draw the store uses, a warm
start's prediction, and OVI's published token count per backbone."""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch
import torch.nn as nn

from crossgap_qdrant.errors import InvalidArgumentError
from crossgap_qdrant.inversion.config import InversionConfig, OVIConfig
from crossgap_qdrant.models.checkpoints import weights_digest


def ovi_num_tokens(
    model: nn.Module | None, config: OVIConfig, model_name: str | None = None, pretrained: str | None = None
) -> int:
    """R for OVI: ``config.num_tokens``, else the published choice for the backbone.

    4 for OpenAI ViT-L/14 and SigLIP ViT-B/16, 2 for OpenCLIP ViT-L/14, 1 otherwise (ViT-B/32 backbones).
    The name and tag are read from a model made by :func:`crossgap_qdrant.load_model`, else taken from the
    arguments.
    """
    if config.num_tokens is not None:
        return config.num_tokens
    name = getattr(model, "crossgap_model_name", None) or model_name or ""
    tag = getattr(model, "crossgap_pretrained", None) or pretrained or ""
    if "SigLIP" in name and "B-16" in name:
        return 4
    if name.startswith("ViT-L-14"):
        return 4 if tag == "openai" else 2
    return 1


def initial_tokens(n: int, num_tokens: int, width: int, std: float, seed: int) -> torch.Tensor:
    """The published initialisation, normal(0, std), [n, R, width] float32 on CPU, from one seeded generator.

    Sample i gets the same tokens for a given seed whatever the batching (but not whatever its position).
    """
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, num_tokens, width, generator=gen) * std


def seeded_initial_tokens(keys: Sequence[str], num_tokens: int, width: int, std: float, seed: int) -> torch.Tensor:
    """Initial pseudo tokens seeded per item, [N, R, width] float32 on CPU, row i normal(0, std).

    Row i depends only on ``keys[i]`` and ``seed`` (a generator seeded with the first 8 bytes of
    sha256(f"{seed}:{key}"), little-endian, top bit cleared), so an item starts from the same tokens in
    whichever batch, order or run it is inverted. The store seeds by point id.
    """
    out = torch.empty(len(keys), num_tokens, width)
    for i, key in enumerate(keys):
        digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
        out[i] = torch.randn(num_tokens, width, generator=gen) * std
    return out


def choose_initial_tokens(kind: str, model: nn.Module, targets: torch.Tensor, config: InversionConfig,
                          num_tokens: int, width: int, init_tokens: torch.Tensor | None,
                          template: str | None = None) -> torch.Tensor:
    """[N, R, W] float32 CPU: ``init_tokens`` when given, else the warm start's prediction for the unit targets
    [N, E], else the published initialisation.

    Raises:
        WarmStartMismatchError: the config's warm start was fitted for another model or setting.
        ValueError: ``init_tokens`` is not [N, R, W].
    """
    expected = (targets.shape[0], num_tokens, width)
    if init_tokens is None and config.warm_start is not None:
        config.warm_start.check_fits(kind, targets.shape[1], num_tokens, width, template, weights_digest(model))
        init_tokens = config.warm_start.predict(targets)
    if init_tokens is None:
        init_tokens = initial_tokens(targets.shape[0], num_tokens, width, config.init_std, config.seed)
    if tuple(init_tokens.shape) != expected:
        raise InvalidArgumentError(f"init_tokens must have shape {expected}, got {tuple(init_tokens.shape)}")
    return init_tokens.float().cpu()


__all__ = ["choose_initial_tokens", "initial_tokens", "ovi_num_tokens", "seeded_initial_tokens"]
