"""OTI and OVI modality inversion.

    invert            oti_invert, ovi_invert and the pseudo-token encoders they optimise
    config            OTIConfig, OVIConfig (a shared InversionConfig), StoppingRule, InversionResult
    init_tokens       initial pseudo tokens: published, seeded per item, a warm start's prediction
    setup             the problem both paths solve: unit targets and initial tokens
    engine            the batched optimisation with the fused per-sample AdamW
    reference         the published algorithm: full-sequence pseudo-token encoders and the reference loop
    text_suffix       the exact prefix-cached text suffix forward (OTI's fast path)
    text_suffix_step  its hand-written forward and input-gradient step
    pseudo_patch_vit  the ViT forward on pseudo patch tokens (OVI's fast path)
    blocks            transformer block pieces shared by the two fast paths
    warm_start        the WarmStart network; warm_start_fit: fitting it by distillation

How far an item's result depends on its batch (float rounding carried by the optimisation) is measured in
crossgap_qdrant.inversion.invert (``BATCH_INVARIANCE_BOUND``, ``BATCH_COSINE_BOUND``).
"""

from crossgap_qdrant.inversion.config import (
    PRECISIONS,
    InversionConfig,
    InversionResult,
    OTIConfig,
    OVIConfig,
    SlowPrecisionWarning,
    StoppingRule,
)
from crossgap_qdrant.inversion.engine import stopping_update
from crossgap_qdrant.inversion.init_tokens import initial_tokens, ovi_num_tokens, seeded_initial_tokens
from crossgap_qdrant.inversion.invert import (
    BATCH_COSINE_BOUND,
    BATCH_INVARIANCE_BOUND,
    oti_encoder,
    oti_invert,
    ovi_encoder,
    ovi_invert,
)
from crossgap_qdrant.inversion.reference import oti_invert_reference, ovi_invert_reference, reference_step
from crossgap_qdrant.inversion.warm_start import WarmStart, WarmStartMismatchError
from crossgap_qdrant.inversion.warm_start_fit import WarmStartFit, fit_warm_start

__all__ = [
    "BATCH_COSINE_BOUND",
    "BATCH_INVARIANCE_BOUND",
    "PRECISIONS",
    "InversionConfig",
    "InversionResult",
    "OTIConfig",
    "OVIConfig",
    "SlowPrecisionWarning",
    "StoppingRule",
    "WarmStart",
    "WarmStartFit",
    "WarmStartMismatchError",
    "fit_warm_start",
    "initial_tokens",
    "oti_encoder",
    "oti_invert",
    "oti_invert_reference",
    "ovi_encoder",
    "ovi_invert",
    "ovi_invert_reference",
    "ovi_num_tokens",
    "reference_step",
    "seeded_initial_tokens",
    "stopping_update",
]
