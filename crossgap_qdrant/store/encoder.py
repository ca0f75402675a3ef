"""The encoder side of the store: raw inputs -> native, derived and inverted vectors, all validated.

Every vector that leaves this module is a finite unit vector: features are checked (shape, NaN/inf, zero
rows) and normalised in a way that cannot overflow (rows are scaled by their largest entry first, so finite
features as large as 1e38 normalise instead of becoming zeros).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from crossgap_qdrant.features import check_features, normalize_features
from crossgap_qdrant.images import WHITE, load_image, preprocess_image
from crossgap_qdrant.inversion import oti_invert, ovi_invert, ovi_num_tokens, seeded_initial_tokens
from crossgap_qdrant.models import encode_pixels, encode_token_ids, model_device
from crossgap_qdrant.models.towers import text_tower, vision_tower
from crossgap_qdrant.store.schema import DerivedVector


def unit_vectors(features: Any, dim: int, what: str, consequence: str = "; nothing was written") -> torch.Tensor:
    """Validates [N, dim] (or [dim]) features and returns them as unit rows, [N, dim] float32 on CPU.

    Raises:
        TypeError: not a tensor/array, or not floating point.
        ValueError: wrong width, NaN/inf values or all-zero rows (the message names the rows).
    """
    return normalize_features(checked_rows(features, dim, what, consequence), what)


def checked_rows(features: Any, dim: int, what: str, consequence: str = "; nothing was written") -> torch.Tensor:
    """Validated features as given (not normalised), [N, dim] float32 on CPU; raises as :func:`unit_vectors`."""
    return check_features(as_rows(features, what).detach().cpu(), dim, what, consequence)


def as_rows(features: Any, what: str) -> torch.Tensor:
    """A tensor [N, E] from a tensor or array [N, E] or [E]."""
    if isinstance(features, np.ndarray):
        features = torch.from_numpy(features)
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{what} must be a tensor or array, got {type(features).__name__}")
    return features[None] if features.dim() == 1 else features


class Encoder:
    """Turns raw images and texts into the vectors the store writes and queries with.

    Args:
        clip: the model handle (:class:`crossgap_qdrant.models.ClipModel`).
        dim: the shared embedding width.
        oti_config, ovi_config: inversion settings.
        derived: extra named vectors computed from raw inputs.
        image_background: RGB (or one grey level) under transparent pixels (white by default).
    """

    def __init__(self, clip: Any, dim: int, oti_config: Any, ovi_config: Any,
                 derived: Mapping[str, DerivedVector], image_background: Any = WHITE):
        self.clip = clip
        self.image_background = image_background
        self.model = clip.model
        self.dim = dim
        self.oti_config = oti_config
        self.ovi_config = ovi_config
        self.derived = dict(derived)

    # ------------------------------------------------------------------------------------------ raw inputs
    def pixels(self, source: Any, name: str | None = None) -> torch.Tensor:
        """Decoded (alpha onto white, EXIF applied) and preprocessed pixels [3, H, W]; raises ImageError."""
        return preprocess_image(self.clip.preprocess, load_image(source, name=name, background=self.image_background))

    def tokens(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids [N, L] int64."""
        return self.clip.tokenizer(list(texts))

    # -------------------------------------------------------------------------------------------- vectors
    def native(self, modality: str, inputs: torch.Tensor) -> torch.Tensor:
        """Unit native features [N, E] of pixels [N, 3, H, W] or token ids [N, L]."""
        encode = encode_pixels if modality == "image" else encode_token_ids
        return unit_vectors(encode(self.model, inputs), self.dim, f"{modality} encoder outputs", "")

    def derived_for(self, modality: str) -> dict[str, DerivedVector]:
        return {n: d for n, d in self.derived.items() if d.modality == modality}

    @torch.no_grad()
    def derived_vectors(self, modality: str, inputs: torch.Tensor,
                        only: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """{name: [N, dim] unit rows} of the derived vectors of ``modality`` (or just ``only``)."""
        out = {}
        for name, vector in self.derived_for(modality).items():
            if only is not None and name not in only:
                continue
            raw = vector.compute(self.model, inputs.to(model_device(self.model))).float().cpu()
            out[name] = unit_vectors(raw, vector.dim, f"derived vector {name!r}", "")
        return out

    def invert(self, modality: str, features: torch.Tensor, keys: Sequence[str], progress: bool = False
               ) -> torch.Tensor:
        """OTI (images) or OVI (texts) of unit features [N, E]; returns [N, E] unit rows.

        Each item's initial pseudo tokens are seeded by its key (the point id; or predicted by a warm start),
        so an item's inverted vector depends on the run that computed it only through float rounding carried
        by the optimisation (crossgap_qdrant.inversion states what was measured).
        """

        if modality == "image":
            config, width, r = self.oti_config, text_tower(self.model).width, self.oti_config.num_tokens
        else:
            config, width = self.ovi_config, vision_tower(self.model).width
            r = ovi_num_tokens(self.model, config, self.clip.name, self.clip.pretrained)
        init = None  # a warm start predicts the initial tokens; else they are seeded by the item's key
        if config.warm_start is None:
            init = seeded_initial_tokens([str(k) for k in keys], r, width, config.init_std, config.seed)
        if modality == "image":
            result = oti_invert(self.clip, features, config=config, init_tokens=init, progress=progress)
        else:
            result = ovi_invert(self.clip, features, config=config, init_tokens=init, progress=progress)
        return unit_vectors(result.features, self.dim, f"{modality} inversion results", "")
