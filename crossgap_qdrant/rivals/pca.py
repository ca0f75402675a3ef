"""The PCA projection of Herzog & Wang (arXiv 2603.16100): features projected onto the top principal
directions of the text embeddings of a vocabulary.

Embed a vocabulary with the text tower, take the top K = E/2 principal directions U [E, K] of the (centred)
text embeddings, and map a unit feature x of either modality to normalize(U U^T x): the width stays E, the
directions the vocabulary does not vary along are removed. The authors use the 1000 ImageNet class names; here
the vocabulary is the user's texts when there are any, else :data:`CLASS_NAMES_FILE`, a plain list of common
object, animal, plant, food and scene nouns written for this package (each put in the template
"a photo of a {}."). The source is recorded with the transform.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from crossgap_qdrant.models import ClipModel, encode_pixels, encode_texts, encode_token_ids, model_device
from crossgap_qdrant.rivals.base import FeatureTransform, RepresentationError, register_kind

CLASS_NAMES_FILE = Path(__file__).resolve().parent / "class_names.txt"
CLASS_NAME_TEMPLATE = "a photo of a {}."


def bundled_class_names() -> list[str]:
    """The bundled vocabulary: one common noun per line of :data:`CLASS_NAMES_FILE` (comments start with #)."""
    lines = CLASS_NAMES_FILE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def principal_basis(features: torch.Tensor, k: int) -> torch.Tensor:
    """[E, k] orthonormal top-k principal directions of the rows of ``features`` [N, E] (centred first).

    Raises:
        ValueError: fewer than k + 1 rows (N centred rows span at most N - 1 directions), or k out of range.
    """
    if features.ndim != 2:
        raise RepresentationError(f"features must be [N, E], got shape {tuple(features.shape)}")
    n, width = features.shape
    if not 1 <= k <= width:
        raise RepresentationError(f"the number of principal directions must be in [1, {width}], got {k}")
    if n < k + 1:
        raise RepresentationError(f"a vocabulary of {n} texts has at most {n - 1} principal directions, but {k} are "
                                  "needed: "
                                  f"give at least {k + 1} texts")
    x = features.double()
    _, _, vh = torch.linalg.svd(x - x.mean(0, keepdim=True), full_matrices=False)
    return vh[:k].T.float().contiguous()


@register_kind("pca")
@dataclass(eq=False)
class PCAProjector(FeatureTransform):
    """normalize(U U^T x) for unit features x of either modality.

    Attributes:
        basis: [E, K] orthonormal principal directions of the vocabulary's text embeddings.
        vocabulary: where the vocabulary came from (e.g. "bundled class names", "the labelled texts").
        num_texts: how many texts it held.
    """

    basis: torch.Tensor
    vocabulary: str = ""
    num_texts: int = 0

    def __post_init__(self):
        if self.basis.ndim != 2 or self.basis.shape[1] > self.basis.shape[0]:
            raise RepresentationError(f"basis must be [E, K] with K <= E, got shape {tuple(self.basis.shape)}")

    @classmethod
    def fit(cls, text_features: torch.Tensor, k: int | None = None, vocabulary: str = "") -> "PCAProjector":
        """Fits the projection on text features [N, E] (normalised here); K defaults to E // 2."""
        x = F.normalize(text_features.float(), dim=-1)
        return cls(principal_basis(x, x.shape[1] // 2 if k is None else k), vocabulary, int(x.shape[0]))

    def to_record(self) -> dict[str, Any]:
        raw = self.basis.detach().cpu().float().numpy().astype("<f4").tobytes()
        return {"basis_f32_base64": base64.b64encode(raw).decode("ascii"), "shape": list(self.basis.shape),
                "vocabulary": self.vocabulary, "num_texts": self.num_texts}

    @classmethod
    def from_record(cls, model: nn.Module, record: dict[str, Any]) -> "PCAProjector":
        shape = tuple(int(s) for s in record["shape"])
        data = np.frombuffer(base64.b64decode(record["basis_f32_base64"]), dtype="<f4")
        if data.size != shape[0] * shape[1]:
            raise RepresentationError(f"the recorded PCA basis holds {data.size} values, not {shape[0]} x {shape[1]}")
        return cls(torch.from_numpy(data.copy()).reshape(shape), record.get("vocabulary", ""),
                   int(record.get("num_texts", 0)))

    def describe(self) -> dict[str, Any]:
        return {"directions": int(self.basis.shape[1]), "width": self.dim, "vocabulary": self.vocabulary,
                "num_texts": self.num_texts}

    @property
    def dim(self) -> int:
        return int(self.basis.shape[0])

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """[N, E] features -> [N, E] unit features in the span of the basis (float32, CPU)."""
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise RepresentationError(f"features must be [N, {self.dim}], got shape {tuple(features.shape)}")
        x = F.normalize(features.float().cpu(), dim=-1)
        return F.normalize((x @ self.basis) @ self.basis.T, dim=-1)

    @torch.no_grad()
    def encode_images(self, model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return self.project(encode_pixels(model, pixels.to(model_device(model))))

    @torch.no_grad()
    def encode_texts(self, model: nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
        return self.project(encode_token_ids(model, token_ids.to(model_device(model))))


def fit_pca_projector(model: nn.Module, tokenizer, texts: Sequence[str] | None = None, *,
                      vocabulary: str | None = None, k: int | None = None, batch_size: int = 256) -> PCAProjector:
    """Fits a :class:`PCAProjector` on the text embeddings of ``texts`` (default: the bundled class names).

    Args:
        texts: the user's texts (used as they are), or None for the bundled class names (in the template
            "a photo of a {}.").
        vocabulary: the source recorded with the transform (default: "bundled class names" or "given texts").
        k: principal directions kept (default E // 2).
    """
    if texts is None:
        items = [CLASS_NAME_TEMPLATE.format(name) for name in bundled_class_names()]
        vocabulary = vocabulary or f"bundled class names ({CLASS_NAMES_FILE.name}, template {CLASS_NAME_TEMPLATE!r})"
    else:
        items = [t for t in texts if isinstance(t, str) and t.strip()]
        vocabulary = vocabulary or "given texts"
    if not items:
        raise RepresentationError("the PCA projection needs a non-empty vocabulary of texts")
    features = encode_texts(ClipModel.from_parts(model, None, tokenizer), items, batch_size=batch_size)
    return PCAProjector.fit(features, k, vocabulary)
