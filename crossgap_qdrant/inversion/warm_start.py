"""A learned warm start for OTI and OVI (amortised inversion, after SEARLE's phi).

A small network maps a unit feature to initial pseudo tokens in one forward pass. It is fitted by distillation
(crossgap_qdrant.inversion.warm_start_fit): exact inversions (the published algorithm, this package's engine)
of a sample of features give the target tokens, and the network learns to predict them. Inverting from its
prediction then needs a few exact steps instead of the published 150 (OTI) or 1000 (OVI); with ``steps=0`` the
prediction alone is used.

    warm, fit = fit_warm_start(clip, image_features, "oti")             # distil from exact OTI
    warm.save("oti_warm_start.pt")
    config = OTIConfig(steps=fit.steps, lr=fit.lr, warm_start=WarmStart.load("oti_warm_start.pt"))
    oti_invert(clip, query_features, config)                             # a few exact steps from the prediction

A warm start belongs to one model (its ``model_id``), one inversion kind, one template and token count: the
inversion refuses one that does not fit.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossgap_qdrant.errors import CrossgapError, InvalidArgumentError

KINDS = ("oti", "ovi")
FORMAT = "crossgap-warm-start/1"


class WarmStartMismatchError(CrossgapError, ValueError):
    """A warm start was fitted for another model, inversion kind, template or token count."""


class WarmStart(nn.Module):
    """Features [N, E] -> initial pseudo tokens [N, R, W]: an MLP with GELU and dropout, predicting tokens
    standardised by the statistics of its training targets.

    Args:
        kind: "oti" (image features -> pseudo words) or "ovi" (text features -> pseudo patches).
        embed_dim: E, the width of the features.
        num_tokens: R.
        width: W, the token width (text tower width for OTI, vision tower width for OVI).
        hidden: width of the two hidden layers.
        dropout: dropout after each hidden layer (training only).
        model_id: the model the warm start was fitted for (:attr:`crossgap_qdrant.models.ClipModel.model_id`).
        template: the OTI template it was fitted with (None for OVI).
    """

    def __init__(self, kind: str, embed_dim: int, num_tokens: int, width: int, *, hidden: int = 1024,
                 dropout: float = 0.1, model_id: str = "", template: str | None = None):
        super().__init__()
        if kind not in KINDS:
            raise InvalidArgumentError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind, self.embed_dim, self.num_tokens, self.width = kind, embed_dim, num_tokens, width
        self.hidden, self.dropout, self.model_id, self.template = hidden, dropout, model_id, template
        self.net = nn.Sequential(
            nn.Linear(embed_dim, hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, num_tokens * width),
        )
        self.register_buffer("token_mean", torch.zeros(num_tokens, width))
        self.register_buffer("token_scale", torch.ones(()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Unit features [N, E] -> pseudo tokens [N, R, W] (float32)."""
        out = self.net(features.float()).view(-1, self.num_tokens, self.width)
        return self.token_mean + self.token_scale * out

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` in eval mode without gradients, on the warm start's device; float32 on CPU."""
        training = self.training
        self.eval()
        try:
            device = self.token_mean.device
            return self(F.normalize(features.float().to(device), dim=-1)).float().cpu()
        finally:
            self.train(training)

    def check_fits(self, kind: str, embed_dim: int, num_tokens: int, width: int, template: str | None,
                   weights_digest: str | None = None) -> None:
        """Raises WarmStartMismatchError naming what differs from the inversion about to use it.

        Args:
            weights_digest: :func:`crossgap_qdrant.models.checkpoints.weights_digest` of the model about to be used,
                compared with the fingerprint in :attr:`model_id` ("<name>@<16 hex digits>").
        """
        wanted = {"kind": kind, "embedding width": embed_dim, "token count": num_tokens, "token width": width}
        have = {"kind": self.kind, "embedding width": self.embed_dim, "token count": self.num_tokens,
                "token width": self.width}
        if kind == "oti":
            wanted["template"], have["template"] = template, self.template
        diff = [f"{k} {have[k]!r} (needed {wanted[k]!r})" for k in wanted if have[k] != wanted[k]]
        if weights_digest is not None and self.model_id and self.model_id.rsplit("@", 1)[-1] != weights_digest[:16]:
            diff.append(f"it was fitted for model {self.model_id}, not these weights (@{weights_digest[:16]})")
        if diff:
            raise WarmStartMismatchError(f"the warm start does not fit this inversion: {'; '.join(diff)}. Fit one "
                                         "for this model and settings (fit_warm_start)")

    # ------------------------------------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> None:
        """Writes the warm start (weights and settings) to ``path`` atomically (torch.save format)."""
        meta = {"format": FORMAT, "kind": self.kind, "embed_dim": self.embed_dim, "num_tokens": self.num_tokens,
                "width": self.width, "hidden": self.hidden, "dropout": self.dropout, "model_id": self.model_id,
                "template": self.template}
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
        torch.save({"meta": meta, "state": state}, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike | Any, map_location: str | torch.device = "cpu",
             name: str | None = None) -> "WarmStart":
        """Reads a file written by :meth:`save` (a path or a binary file object; weights-only loading: no code
        runs), onto ``map_location``. ``name`` names it in errors (default: the path)."""
        name = name or str(path)
        try:
            data = torch.load(path, map_location=map_location, weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"warm start file not found: {name}") from None
        except Exception as exc:
            raise InvalidArgumentError(f"cannot read warm start file {name} ({type(exc).__name__}: {exc})") from None
        meta = data.get("meta", {}) if isinstance(data, dict) else {}
        if meta.get("format") != FORMAT:
            raise InvalidArgumentError(
                f"{name} is not a crossgap-qdrant warm start file (format {meta.get('format')!r})")
        warm = cls(meta["kind"], meta["embed_dim"], meta["num_tokens"], meta["width"], hidden=meta["hidden"],
                   dropout=meta["dropout"], model_id=meta["model_id"], template=meta["template"])
        warm.load_state_dict(data["state"])
        return warm.to(map_location).eval().requires_grad_(False)


__all__ = ["FORMAT", "KINDS", "WarmStart", "WarmStartMismatchError"]
