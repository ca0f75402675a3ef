"""Data sets used by the demo and the training scripts (scripts/)."""

from crossgap_qdrant.datasets.openclipart import (
    HELDOUT_CATEGORIES,
    HELDOUT_IMAGE_FRACTION,
    MAX_PIXELS,
    OPENCLIPART_PNG,
    OPENCLIPART_SVG,
    SPLIT_SALT,
    build_manifest,
    demo_subset,
    flatten_image,
    flatten_to_folder,
    load_or_build_manifest,
    safe_relative_path,
)

__all__ = [
    "HELDOUT_CATEGORIES",
    "HELDOUT_IMAGE_FRACTION",
    "MAX_PIXELS",
    "OPENCLIPART_PNG",
    "OPENCLIPART_SVG",
    "SPLIT_SALT",
    "build_manifest",
    "demo_subset",
    "flatten_image",
    "flatten_to_folder",
    "load_or_build_manifest",
    "safe_relative_path",
]
