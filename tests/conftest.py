"""Shared fixtures: tiny open_clip models with random weights (no network)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from crossgap_qdrant.models import load_model, register_model_config

# Tiny models run fastest on one thread, and PyTorch's spinning OpenMP threads slow small operations down by
# orders of magnitude when another process keeps the other core busy (CI machines have two).
torch.set_num_threads(1)

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


def _load(name, seed):
    torch.manual_seed(seed)
    return load_model(name, device="cpu", allow_random=True)


@pytest.fixture(scope="session")
def tiny_clip():
    """The handle (unpacks as model, preprocess, tokenizer) of a 2-layer causal CLIP with random weights."""
    return _load("test-tiny-clip", 0)


@pytest.fixture(scope="session")
def tiny_bidir():
    """A CustomTextCLIP with a bidirectional text tower pooled at the last position (SigLIP-style)."""
    return _load("test-tiny-bidir", 1)
