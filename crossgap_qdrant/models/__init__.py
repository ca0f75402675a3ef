"""open_clip models: loading a model spec into a frozen :class:`ClipModel` handle, model specs, checkpoints,
tower views and the plain image and text encoders.

    loading      load_model, the ClipModel handle (ClipModel.from_parts for parts made elsewhere)
    specs        model specs as users write them (name + tag or path, hf-hub:, local-dir:, crossgap-demo)
    checkpoints  weights-only checkpoint reading and the weights' fingerprint
    towers       views of the text and image towers
    encoders     encode_images, encode_texts (and their pixel and token-id forms)
    cast_copy    frozen copies of a tower cast to another dtype, made once per (module, dtype) and reused
"""

from crossgap_qdrant.models.checkpoints import CheckpointError, weights_digest
from crossgap_qdrant.models.encoders import encode_images, encode_pixels, encode_texts, encode_token_ids
from crossgap_qdrant.models.loading import (
    ClipModel,
    PartsFormDeprecationWarning,
    RandomWeightsWarning,
    as_clip_model,
    load_model,
    model_device,
)
from crossgap_qdrant.models.specs import ModelSpec, parse_model_spec, read_model_config, register_model_config
from crossgap_qdrant.models.towers import (
    TextTower,
    UnsupportedModelError,
    VisionTower,
    embed_dim,
    text_tower,
    vision_tower,
)

__all__ = [
    "CheckpointError",
    "ClipModel",
    "ModelSpec",
    "PartsFormDeprecationWarning",
    "RandomWeightsWarning",
    "TextTower",
    "UnsupportedModelError",
    "VisionTower",
    "as_clip_model",
    "embed_dim",
    "encode_images",
    "encode_pixels",
    "encode_texts",
    "encode_token_ids",
    "load_model",
    "model_device",
    "parse_model_spec",
    "read_model_config",
    "register_model_config",
    "text_tower",
    "vision_tower",
    "weights_digest",
]
