"""crossgap-qdrant: inter-modal image and text search in Qdrant through modality inversion.

Main entry points:
    load_model                      open_clip model, preprocess and tokenizer, frozen
    oti_invert / ovi_invert         image -> text space and text -> image space inversion
    CrossModalStore                 native and inverted vectors in a Qdrant collection, inter-modal search
    OTIConfig / OVIConfig           their settings (defaults: the published ones)
"""

from crossgap_qdrant.inversion import (
    InversionResult,
    OTIConfig,
    OVIConfig,
    StoppingRule,
    oti_invert,
    oti_invert_reference,
    ovi_invert,
    ovi_invert_reference,
)
from crossgap_qdrant.models import encode_images, encode_texts, load_model, register_model_config
from crossgap_qdrant.store import CrossModalStore, DerivedVector, IngestReport, RetryPolicy, VectorNames

__version__ = "0.1.0"

__all__ = [
    "CrossModalStore",
    "DerivedVector",
    "IngestReport",
    "RetryPolicy",
    "VectorNames",
    "InversionResult",
    "OTIConfig",
    "OVIConfig",
    "StoppingRule",
    "encode_images",
    "encode_texts",
    "load_model",
    "oti_invert",
    "oti_invert_reference",
    "ovi_invert",
    "ovi_invert_reference",
    "register_model_config",
]
