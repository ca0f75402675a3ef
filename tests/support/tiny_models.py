"""Tiny open_clip models with random weights (no network), registered as model configs on import."""

from __future__ import annotations

import torch

from crossgap_qdrant.models import ClipModel, load_model, register_model_config

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 48, "heads": 2, "layers": 2},
}
TINY_BIDIR = {
    "embed_dim": 32,
    "init_logit_bias": -10,
    "custom_text": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {
        "context_length": 16,
        "vocab_size": 49408,
        "width": 48,
        "heads": 2,
        "layers": 2,
        "no_causal_mask": True,
        "pool_type": "last",
        "proj_bias": True,
    },
}
register_model_config("test-tiny-clip", TINY_CLIP)
register_model_config("test-tiny-bidir", TINY_BIDIR)


def load_tiny(name: str, seed: int) -> ClipModel:
    """The registered tiny model ``name`` on CPU, its random weights drawn from ``seed``."""
    torch.manual_seed(seed)
    return load_model(name, device="cpu", allow_random=True)
