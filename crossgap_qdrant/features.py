"""Feature validation: the input contract of inversion and the store ([N, E] finite rows, none all-zero)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

UNIT_TOLERANCE = 1e-3  # |norm - 1| above this is not a unit vector


def check_features(features: torch.Tensor, dim: int, what: str, consequence: str = "") -> torch.Tensor:
    """Refuses features that are not [N, dim], hold NaN/inf, or have all-zero rows.

    Args:
        features: [N, dim] floating tensor (any device); integer tensors raise TypeError.
        what: how the error names them, e.g. "image_features".
        consequence: appended to the error, e.g. "; nothing was written".

    Returns:
        The same tensor, as float32.
    """
    if features.dim() != 2 or features.shape[1] != dim:
        raise ValueError(
            f"{what} must have shape [N, {dim}] (the model's embedding width), got {tuple(features.shape)}"
            f"{consequence}"
        )
    if not features.is_floating_point():
        raise TypeError(f"{what} must be floating point, got {features.dtype}{consequence}")
    features = features.float()
    finite = torch.isfinite(features).all(dim=1)
    if not bool(finite.all()):
        rows = (~finite).nonzero().flatten()[:5].tolist()
        raise ValueError(f"{what} contain NaN or inf values (rows {rows}){consequence}")
    zero = (features == 0).all(dim=1)  # not norm == 0: the norm of tiny rows underflows to zero
    if bool(zero.any()):
        rows = zero.nonzero().flatten()[:5].tolist()
        raise ValueError(f"{what} contain all-zero rows (rows {rows}){consequence}")
    return features


def normalize_features(features: torch.Tensor, what: str) -> torch.Tensor:
    """Unit rows [N, E] float32 of features that :func:`check_features` accepted (finite, no zero row).

    Each row is divided by its largest magnitude before normalising, in float64, so rows near float32's limit
    (1e38) become unit vectors too instead of overflowing to zero.

    Raises:
        ValueError: a row does not come out a finite unit vector (cannot happen for accepted input; kept as
            the last guard before a write).
    """
    scale = features.abs().amax(dim=1, keepdim=True)
    out = F.normalize(features.double() / scale.double(), dim=-1).float()
    bad = ~torch.isfinite(out).all(dim=1) | ((out.norm(dim=1) - 1).abs() > UNIT_TOLERANCE)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()[:5].tolist()
        raise ValueError(f"{what}: rows {rows} do not normalise to finite unit vectors")
    return out


__all__ = ["UNIT_TOLERANCE", "check_features", "normalize_features"]
