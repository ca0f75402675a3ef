"""Initial pseudo tokens (crossgap_qdrant.inversion.init_tokens): OVI's published token count per backbone."""

import pytest
import torch

from crossgap_qdrant.inversion import OVIConfig, ovi_invert, ovi_num_tokens
from crossgap_qdrant.models import UnsupportedModelError, load_model, register_model_config


def test_ovi_default_token_count_and_unsupported_tower():
    assert ovi_num_tokens(None, OVIConfig(), "ViT-L-14", "openai") == 4
    assert ovi_num_tokens(None, OVIConfig(), "ViT-L-14", "laion2b_s32b_b82k") == 2
    assert ovi_num_tokens(None, OVIConfig(), "ViT-B-16-SigLIP", "webli") == 4
    assert ovi_num_tokens(None, OVIConfig(), "ViT-B-32") == 1
    assert ovi_num_tokens(None, OVIConfig(num_tokens=3), "ViT-L-14") == 3
    register_model_config("test-tiny-resnet", {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 48, "heads": 2, "layers": 1},
    })
    resnet = load_model("test-tiny-resnet", device="cpu", allow_random=True)
    model = resnet.model
    assert model.crossgap_model_name == "test-tiny-resnet" and ovi_num_tokens(model, OVIConfig()) == 1
    with pytest.raises(UnsupportedModelError, match="OVI supports open_clip VisionTransformer"):
        ovi_invert(resnet, torch.randn(2, 32), OVIConfig(steps=1), progress=False)
