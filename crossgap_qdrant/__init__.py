"""crossgap-qdrant: inter-modal image and text search in Qdrant through modality inversion.

Main entry points:
    load_model                      open_clip model as a frozen ClipModel handle (encode_images, encode_texts)
    oti_invert / ovi_invert         image -> text space and text -> image space inversion
    OTIConfig / OVIConfig           their settings (defaults: the published ones)
    WarmStart / fit_warm_start      a learned first guess that shortens inversion
    CrossModalStore                 native and inverted vectors in a Qdrant collection, inter-modal search

The names are resolved on first use (PEP 562), so ``import crossgap_qdrant`` loads neither torch, open_clip nor
a Qdrant client; the subpackages (``crossgap_qdrant.inversion``, ``.models``, ``.store``, ...) are imported
when first reached as attributes too.
"""

from __future__ import annotations

import importlib
import importlib.util
from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crossgap_qdrant.errors import CrossgapError
    from crossgap_qdrant.inversion import (
        InversionResult,
        OTIConfig,
        OVIConfig,
        StoppingRule,
        WarmStart,
        fit_warm_start,
        oti_invert,
        oti_invert_reference,
        ovi_invert,
        ovi_invert_reference,
    )
    from crossgap_qdrant.models import ClipModel, encode_images, encode_texts, load_model, register_model_config
    from crossgap_qdrant.store import CrossModalStore, DerivedVector, IngestReport, RetryPolicy, VectorNames

_DISTRIBUTION = "crossgap-qdrant"

# Public name -> the subpackage that defines it; each subpackage re-exports its public API from its __init__.
_EXPORTS: dict[str, str] = {
    "CrossgapError": "crossgap_qdrant.errors",
    "InversionResult": "crossgap_qdrant.inversion",
    "OTIConfig": "crossgap_qdrant.inversion",
    "OVIConfig": "crossgap_qdrant.inversion",
    "StoppingRule": "crossgap_qdrant.inversion",
    "WarmStart": "crossgap_qdrant.inversion",
    "fit_warm_start": "crossgap_qdrant.inversion",
    "oti_invert": "crossgap_qdrant.inversion",
    "oti_invert_reference": "crossgap_qdrant.inversion",
    "ovi_invert": "crossgap_qdrant.inversion",
    "ovi_invert_reference": "crossgap_qdrant.inversion",
    "ClipModel": "crossgap_qdrant.models",
    "encode_images": "crossgap_qdrant.models",
    "encode_texts": "crossgap_qdrant.models",
    "load_model": "crossgap_qdrant.models",
    "register_model_config": "crossgap_qdrant.models",
    "CrossModalStore": "crossgap_qdrant.store",
    "DerivedVector": "crossgap_qdrant.store",
    "IngestReport": "crossgap_qdrant.store",
    "RetryPolicy": "crossgap_qdrant.store",
    "VectorNames": "crossgap_qdrant.store",
}

__all__ = [
    "ClipModel",
    "CrossModalStore",
    "CrossgapError",
    "DerivedVector",
    "IngestReport",
    "InversionResult",
    "OTIConfig",
    "OVIConfig",
    "RetryPolicy",
    "StoppingRule",
    "VectorNames",
    "WarmStart",
    "encode_images",
    "encode_texts",
    "fit_warm_start",
    "load_model",
    "oti_invert",
    "oti_invert_reference",
    "ovi_invert",
    "ovi_invert_reference",
    "register_model_config",
    "__version__",
]


def _version() -> str:
    """The installed distribution's version; a source tree that was never installed reports ``0+unknown``."""
    try:
        return metadata.version(_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown"


def __getattr__(name: str) -> Any:
    """Resolves a public name (or a subpackage) on first access and caches it in the package namespace."""
    if name == "__version__":
        value: Any = _version()
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
