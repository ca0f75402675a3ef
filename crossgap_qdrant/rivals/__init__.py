"""Training-free rivals of modality inversion, offered beside it and measured against it.

=================  ==========================================================================  ==========
rival              what it does                                                                where
=================  ==========================================================================  ==========
IsoCLIP            middle band of the projectors' inter-modal operator, on both sides          isoclip.py
PCA projection     top principal directions of a vocabulary's text embeddings, both sides      pca.py
gap shift          the query moved across the modality gap, against the native gallery         gap.py
hubness (DBNorm)   re-scoring with one stored value per gallery item (query + gallery banks)   hubness.py
=================  ==========================================================================  ==========

The first three are :class:`FeatureTransform`\\ s (one base, :mod:`~crossgap_qdrant.rivals.base`): derived
named vectors the store writes at ingestion and rebuilds from the collection metadata. Hubness correction is
a re-scoring of any cosine search, not a vector.
"""

from crossgap_qdrant.rivals.base import (
    FeatureTransform,
    RepresentationError,
    TransformVector,
    transform_from_record,
    vector_from_record,
)
from crossgap_qdrant.rivals.gap import GENERIC_CAPTIONS, ModalityGapShift, fit_gap_shift
from crossgap_qdrant.rivals.hubness import (
    DEFAULT_TEMPERATURE,
    DEFAULT_WEIGHT,
    bank_sample,
    hub_corrected,
    hub_values,
)
from crossgap_qdrant.rivals.isoclip import (
    PUBLISHED_CUTS,
    IsoCLIPProjector,
    cut_grid,
    image_pre_projection,
    isoclip_rank,
    published_cuts,
    text_pre_projection,
)
from crossgap_qdrant.rivals.pca import PCAProjector, bundled_class_names, fit_pca_projector, principal_basis

__all__ = [
    "DEFAULT_TEMPERATURE",
    "DEFAULT_WEIGHT",
    "GENERIC_CAPTIONS",
    "PUBLISHED_CUTS",
    "FeatureTransform",
    "IsoCLIPProjector",
    "ModalityGapShift",
    "PCAProjector",
    "RepresentationError",
    "TransformVector",
    "bank_sample",
    "bundled_class_names",
    "cut_grid",
    "fit_gap_shift",
    "fit_pca_projector",
    "hub_corrected",
    "hub_values",
    "image_pre_projection",
    "isoclip_rank",
    "principal_basis",
    "published_cuts",
    "text_pre_projection",
    "transform_from_record",
    "vector_from_record",
]
