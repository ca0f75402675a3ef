"""Fitting a :class:`~crossgap_qdrant.inversion.warm_start.WarmStart` by distillation from exact inversions.

    warm, fit = fit_warm_start(clip, image_features, "oti")             # distil from exact OTI
    warm.save("oti_warm_start.pt")
    config = OTIConfig(steps=fit.steps, lr=fit.lr, warm_start=WarmStart.load("oti_warm_start.pt"))
    oti_invert(clip, query_features, config)                             # a few exact steps from the prediction

The fit measures, on a held-out part of the sample, how close the warm-started features come to the exact ones
after K steps, against how close two exact runs from different random initial tokens come to each other, and
recommends the fewest steps that reach that level.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from crossgap_qdrant.errors import InvalidArgumentError
from crossgap_qdrant.inversion.config import InversionConfig, InversionResult, OTIConfig, OVIConfig
from crossgap_qdrant.inversion.invert import oti_encoder, oti_invert, ovi_encoder, ovi_invert
from crossgap_qdrant.inversion.warm_start import KINDS, WarmStart
from crossgap_qdrant.models.loading import ClipModel, as_clip_model
from crossgap_qdrant.progress import progress_bar


@dataclass
class WarmStartFit:
    """How a fit went, measured on the held-out part of the sample.

    Attributes:
        samples: features inverted exactly (the distillation set); ``validation`` of them held out.
        epochs, feature_epochs: training epochs of the two stages.
        token_r2: fraction of the held-out target tokens' variance the prediction explains.
        cosine_at_0: mean cosine between the features of the predicted tokens (no exact step) and the exact
            inversion's features.
        exact_floor: mean cosine between the exact inversion and an exact inversion from other random initial
            tokens: how far apart two exact results are (OTI and OVI solutions are not unique), the level a
            warm start cannot be asked to beat.
        curve: "K@lr" -> mean cosine to the exact features after K exact steps at learning rate lr from the
            prediction.
        steps, lr: the recommended budget: the fewest steps (and the learning rate) whose mean cosine reaches
            ``exact_floor`` - 0.002, else the best point of the curve.
        seconds_exact, seconds_training: time spent on the exact inversions and on training.
    """

    samples: int
    validation: int
    epochs: int
    feature_epochs: int
    token_r2: float
    cosine_at_0: float
    exact_floor: float
    curve: dict[str, float]
    steps: int
    lr: float
    seconds_exact: float
    seconds_training: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Exact step counts the fit measures after the prediction, per kind (OVI's exact budget is 1000, not 150).
CURVE_STEPS = {"oti": (0, 3, 5, 10, 20), "ovi": (0, 5, 10, 25, 50)}
FLOOR_MARGIN = 0.002


def _recommend(curve: dict[tuple[int, float], float], floor: float) -> tuple[int, float]:
    reached = [(k, -v, lr) for (k, lr), v in curve.items() if v >= floor - FLOOR_MARGIN]
    if reached:
        k, _, lr = min(reached)
        return k, lr
    (k, lr), _ = max(curve.items(), key=lambda kv: (kv[1], -kv[0][0]))
    return k, lr


def _inversion(kind: str):
    return oti_invert if kind == "oti" else ovi_invert


def invert_exact(clip: ClipModel, features: torch.Tensor, kind: str, config: InversionConfig, progress: bool = False):
    """The exact inversion of ``features`` with ``config`` (no warm start): the distillation targets."""
    return _inversion(kind)(clip, features, dataclasses.replace(config, warm_start=None), progress=progress)


def fit_warm_start(
    clip: ClipModel | tuple,
    features: torch.Tensor,
    kind: str = "oti",
    config: InversionConfig | None = None,
    *,
    hidden: int = 1024,
    dropout: float = 0.1,
    epochs: int = 300,
    feature_epochs: int = 30,
    lr: float = 1e-3,
    feature_lr: float = 1e-4,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    validation: float = 0.1,
    seed: int = 0,
    progress: bool = False,
    exact: InversionResult | None = None,
) -> tuple[WarmStart, WarmStartFit]:
    """Fits a warm start by distillation from exact inversions of ``features``.

    Args:
        clip: the model handle (:func:`crossgap_qdrant.load_model`); a (model, preprocess, tokenizer) triple is
            deprecated (it warns once).
        features: [N, E] unit features of the kind's input modality (image features for OTI, text for OVI):
            a sample of the collection, or any image/text set of the same domain.
        kind: "oti" or "ovi".
        config: the exact inversion's settings (default: the published ones); its template and token count
            are the warm start's.
        hidden, dropout: the network's size and regularisation.
        epochs, lr, weight_decay, batch_size: AdamW training on the token targets (MSE in standardised units).
        feature_epochs, feature_lr: then training through the frozen tower, on the cosine between the features
            of the predicted tokens and the exact inversion's features (what a warm start with few steps is
            judged by); 0 skips it.
        validation: fraction of the samples held out to measure the fit (at least one sample when N >= 2).
        seed: seeds the split, the network's initialisation and the batches.
        exact: the exact inversion of ``features`` with ``config`` when already computed (an InversionResult,
            e.g. kept from an earlier fit); default computed here.

    Returns:
        The warm start (eval mode, frozen) and the fit's report.
    """
    if kind not in KINDS:
        raise InvalidArgumentError(f"kind must be one of {KINDS}, got {kind!r}")
    if epochs < 0 or feature_epochs < 0 or not 0 < validation < 1:
        raise InvalidArgumentError(f"epochs and feature_epochs must be >= 0 and validation in (0, 1), got {epochs}, "
                         f"{feature_epochs}, {validation}")
    clip = as_clip_model(clip)
    config = config if config is not None else (OTIConfig() if kind == "oti" else OVIConfig())
    features = F.normalize(torch.as_tensor(features).float(), dim=-1)
    n = features.shape[0]
    if n < 2:
        raise InvalidArgumentError(f"a warm start needs at least 2 features to fit, got {n}")
    start = time.perf_counter()
    if exact is None:
        exact = invert_exact(clip, features, kind, config, progress)
    elif tuple(exact.features.shape) != tuple(features.shape):
        raise InvalidArgumentError(
            f"exact holds {tuple(exact.features.shape)} features for {tuple(features.shape)} inputs")
    seconds_exact = time.perf_counter() - start
    num_tokens, width = exact.tokens.shape[1:]
    template = config.template if kind == "oti" else None
    targets = exact.tokens.float()  # [N, R, W]

    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen)
    n_val = min(n - 1, max(1, int(round(n * validation))))
    val, train = order[:n_val], order[n_val:]
    torch.manual_seed(seed)
    warm = WarmStart(kind, features.shape[1], num_tokens, width, hidden=hidden, dropout=dropout,
                     model_id=clip.model_id, template=template).to(clip.device)
    mean = targets[train].mean(0)
    scale = (targets[train] - mean).pow(2).mean().sqrt().clamp_min(1e-8)
    warm.token_mean.copy_(mean.to(clip.device))
    warm.token_scale.copy_(scale.to(clip.device))
    start = time.perf_counter()
    _train(warm, features[train], (targets[train] - mean) / scale, epochs, lr, weight_decay, batch_size, gen,
           progress)
    if feature_epochs:
        encode = _tower_encoder(clip, kind, template, num_tokens)
        _train_through_tower(warm, encode, features[train], exact.features[train], feature_epochs, feature_lr,
                             weight_decay, batch_size, gen, progress)
    seconds_training = time.perf_counter() - start
    warm.eval().requires_grad_(False)

    predicted = warm.predict(features[val])
    residual = (predicted - targets[val]).pow(2).sum()
    spread = (targets[val] - targets[val].mean(0)).pow(2).sum().clamp_min(1e-12)
    reference = exact.features[val]
    reseeded = invert_exact(clip, features[val], kind, dataclasses.replace(config, seed=config.seed + 1))
    floor = float((reseeded.features * reference).sum(-1).mean())
    curve = {}
    ks = CURVE_STEPS[kind]
    for lr_k in (config.lr, config.lr / 4):
        run = dataclasses.replace(config, steps=max(ks), lr=lr_k, warm_start=warm, stopping=None)
        snapshots = _inversion(kind)(clip, features[val], run, progress=False, snapshots=ks).snapshots
        for k in ks:
            if k == 0 and (0, config.lr) in curve:
                continue
            curve[(k, lr_k)] = float((snapshots[k] * reference).sum(-1).mean())
    steps, best_lr = _recommend(curve, floor)
    report = WarmStartFit(samples=n, validation=n_val, epochs=epochs, feature_epochs=feature_epochs,
                          token_r2=float(1 - residual / spread) if n_val > 1 else math.nan,
                          cosine_at_0=curve[(0, config.lr)], exact_floor=floor,
                          curve={f"{k}@{lr_k:g}": round(v, 5) for (k, lr_k), v in curve.items()},
                          steps=steps, lr=best_lr, seconds_exact=seconds_exact, seconds_training=seconds_training)
    return warm, report


def _tower_encoder(clip: ClipModel, kind: str, template: str | None, num_tokens: int):
    """Pseudo tokens [B, R, W] -> unnormalised features [B, E] through the frozen tower (float32), differentiable."""
    if kind == "oti":
        return oti_encoder(clip.model, clip.tokenizer, template, num_tokens, torch.float32)
    return ovi_encoder(clip.model, torch.float32)


def _optimise(warm: WarmStart, n: int, batch_loss, epochs: int, lr: float, weight_decay: float, batch_size: int,
              gen: torch.Generator, progress: bool, desc: str, cosine_decay: bool) -> None:
    """AdamW on the network's parameters only (a caller's model keeps no gradients): ``epochs`` passes over n
    samples in shuffled batches, minimising ``batch_loss(indices)``; the learning rate decays on a cosine when
    ``cosine_decay``."""
    warm.train().requires_grad_(True)
    params = list(warm.net.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    total = max(1, epochs * math.ceil(n / batch_size))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total) / total)) if cosine_decay else 1.0)
    bar = None
    if progress:
        bar = progress_bar(epochs, desc, "epoch")
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for lo in range(0, n, batch_size):
            loss = batch_loss(perm[lo : lo + batch_size])
            for param, grad in zip(params, torch.autograd.grad(loss, params)):
                param.grad = grad
            opt.step()
            schedule.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"loss {loss.item():.4f}", refresh=False)
    if bar is not None:
        bar.close()


def _train(warm: WarmStart, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, weight_decay: float,
           batch_size: int, gen: torch.Generator, progress: bool) -> None:
    """Regresses standardised tokens y [N, R, W] from features x [N, E] (MSE), with cosine decay."""
    device = warm.token_mean.device
    x, flat = x.to(device), y.reshape(y.shape[0], -1).to(device)
    _optimise(warm, x.shape[0], lambda idx: F.mse_loss(warm.net(x[idx]), flat[idx]), epochs, lr, weight_decay,
              batch_size, gen, progress, "fit warm start", cosine_decay=True)


def _train_through_tower(warm: WarmStart, encode, x: torch.Tensor, target: torch.Tensor, epochs: int, lr: float,
                         weight_decay: float, batch_size: int, gen: torch.Generator, progress: bool) -> None:
    """Fine-tunes the network on 1 - cos(features of its predicted tokens, target features [N, E])."""
    device = warm.token_mean.device
    x, target = x.to(device), target.to(device)

    def batch_loss(idx):
        features = encode(warm(x[idx]))
        return (1 - F.cosine_similarity(features.float(), target[idx], dim=-1)).mean()

    _optimise(warm, x.shape[0], batch_loss, epochs, lr, weight_decay, batch_size, gen, progress,
              "fit warm start through the tower", cosine_decay=False)


__all__ = ["CURVE_STEPS", "FLOOR_MARGIN", "WarmStartFit", "fit_warm_start", "invert_exact"]
