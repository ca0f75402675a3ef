"""The problem an inversion solves, set up the same way for the fast path and the published reference: unit
targets on the model's device and the initial pseudo tokens."""

from __future__ import annotations

from typing import Any

import torch

from crossgap_qdrant.errors import InvalidArgumentTypeError
from crossgap_qdrant.features import check_features, normalize_features
from crossgap_qdrant.inversion.config import OTIConfig, OVIConfig
from crossgap_qdrant.inversion.init_tokens import choose_initial_tokens, ovi_num_tokens
from crossgap_qdrant.models.loading import ClipModel, model_device
from crossgap_qdrant.models.towers import embed_dim, text_tower, vision_tower


def unit_targets(features: Any, dim: int, what: str, device: torch.device) -> torch.Tensor:
    """[N, dim] finite non-zero rows as unit vectors (rows near float32's limit too), on ``device``."""
    return normalize_features(check_features(torch.as_tensor(features), dim, what), what).to(device)


def check_config(config: Any, kind: type) -> None:
    """Raises TypeError unless ``config`` is a ``kind`` (OTIConfig or OVIConfig)."""
    if not isinstance(config, kind):
        raise InvalidArgumentTypeError(f"config must be an {kind.__name__}, got {type(config).__name__}")


def oti_setup(clip: ClipModel, image_features: Any, config: OTIConfig, init_tokens: torch.Tensor | None
              ) -> tuple[torch.device, torch.Tensor, torch.Tensor]:
    """(device, unit targets [N, E] on it, initial pseudo words [N, R, W] float32 CPU) of an OTI."""
    check_config(config, OTIConfig)
    if clip.tokenizer is None:
        raise InvalidArgumentTypeError("OTI needs the tokenizer, and this ClipModel has none: make it with "
                        "ClipModel.from_parts(model, preprocess, tokenizer)")
    model = clip.model
    device = model_device(model)
    tower = text_tower(model)
    targets = unit_targets(image_features, embed_dim(model), "image_features", device)
    init = choose_initial_tokens("oti", model, targets, config, config.num_tokens, tower.width, init_tokens,
                                 config.template)
    return device, targets, init


def ovi_setup(clip: ClipModel, text_features: Any, config: OVIConfig, init_tokens: torch.Tensor | None
              ) -> tuple[torch.device, torch.Tensor, torch.Tensor]:
    """(device, unit targets [N, E] on it, initial pseudo patches [N, R, W] float32 CPU) of an OVI."""
    check_config(config, OVIConfig)
    model = clip.model
    device = model_device(model)
    tower = vision_tower(model)
    targets = unit_targets(text_features, embed_dim(model), "text_features", device)
    r = ovi_num_tokens(model, config, clip.name, clip.pretrained)
    return device, targets, choose_initial_tokens("ovi", model, targets, config, r, tower.width, init_tokens)


__all__ = ["check_config", "oti_setup", "ovi_setup", "unit_targets"]
