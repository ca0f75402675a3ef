"""open_clip models: loading a model spec into a frozen :class:`ClipModel` handle with a content fingerprint,
and the plain image and text encoders.

Model specs: crossgap_qdrant.model_specs; checkpoint reading: crossgap_qdrant.checkpoints; tower views and the
pseudo-token encoders: crossgap_qdrant.towers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossgap_qdrant.checkpoints import CheckpointError, load_checkpoint, weights_digest
from crossgap_qdrant.model_specs import (
    DEMO_SPEC,
    DIR_CHECKPOINTS,
    HF_HUB_PREFIX,
    LOCAL_DIR_PREFIX,
    parse_model_spec,
    read_model_config,
    register_model_config,
)
from crossgap_qdrant.towers import UnsupportedModelError, embed_dim

logger = logging.getLogger(__name__)
UNIT_TOLERANCE = 1e-3  # |norm - 1| above this is not a unit vector


class RandomWeightsWarning(UserWarning):
    """A model was built with random weights on request: its embeddings carry no meaning."""


def load_model(
    name: str,
    pretrained: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    *,
    allow_random: bool = False,
) -> "ClipModel":
    """Loads an open_clip model, frozen and in eval mode, as a :class:`ClipModel` handle.

    Args:
        name: a model spec (see :func:`parse_model_spec`): an architecture name such as "ViT-B-32",
            "crossgap-demo", "local-dir:<folder>" or "hf-hub:<org>/<repo>".
        pretrained: with an architecture name: an open_clip tag (downloaded by open_clip), a checkpoint file or
            a folder holding one (read weights-only, never the network), or None for random weights.
        device: where the model lives; default CUDA when available, else CPU.
        precision: open_clip precision ("fp32", "bf16", "fp16", ...).
        allow_random: allow random weights (pretrained=None); a :class:`RandomWeightsWarning` is issued.

    Returns:
        The handle; it unpacks as ``model, preprocess, tokenizer = load_model(...)``. preprocess maps a PIL
        image to a [3, H, W] tensor; tokenizer maps a list of strings to [N, context_length] int64 ids.

    Raises:
        ValueError: an unknown model or tag, or no weights without ``allow_random``.
        CheckpointError: the checkpoint is unreadable, needs more than weights-only loading, or does not fit
            the architecture (the message names both).
    """
    import open_clip

    spec = parse_model_spec(name, pretrained)
    if spec.random and not allow_random:
        if name.startswith(LOCAL_DIR_PREFIX):
            fix = f"put its weights there ({DIR_CHECKPOINTS[2]} or .safetensors)"
            where = f"{name} holds no weights file"
        else:
            fix = (f"pass a pretrained tag or a checkpoint file, or a model spec that carries weights ({DEMO_SPEC!r}, "
                   "'local-dir:<folder>', 'hf-hub:<org>/<repo>')")
            where = f"no weights given for {spec.name}"
        raise ValueError(f"{where}: {fix}; or pass allow_random=True (CLI: --pretrained none) if random weights "
                         "are wanted: their results are meaningless")
    if spec.random:
        warnings.warn(RandomWeightsWarning(f"{spec.name} has random weights: its embeddings, search results and "
                                           "evaluation scores are meaningless"), stacklevel=2)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    own_weights = spec.tag is None and not spec.source.startswith(HF_HUB_PREFIX)
    try:
        with _quiet_open_clip(own_weights):
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.source, pretrained=spec.tag, load_weights=not own_weights, device=device, precision=precision,
                **({"pretrained_text": False} if own_weights else {}),
            )
    except RuntimeError as exc:
        if own_weights:
            raise
        raise RuntimeError(f"could not load the weights of {name} {spec.tag or ''} ({exc}). Without network access, "
                           "pass a local checkpoint file as pretrained, or 'local-dir:<folder>'.") from exc
    if spec.checkpoint is not None:
        load_checkpoint(model, spec.checkpoint, spec.name)
    model.eval().requires_grad_(False)
    model.crossgap_model_name = spec.name  # for backbone-specific defaults (e.g. OVI's token count)
    model.crossgap_pretrained = spec.pretrained
    clip = ClipModel(model, preprocess, open_clip.get_tokenizer(spec.source), spec.name, spec.pretrained)
    logger.debug("loaded %s on %s (%.1f M parameters, %s)", clip.display_name, device,
                 sum(p.numel() for p in model.parameters()) / 1e6, precision)
    return clip


@contextlib.contextmanager
def _quiet_open_clip(active: bool):
    """Drops open_clip's "no weights" log lines while we load the weights ourselves (or warn of their absence)."""

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("No pretrained weights loaded", "Local config loaded, but no CLIP"))

    root = logging.getLogger()
    if active:
        root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


@dataclass(frozen=True)
class ClipModel:
    """A frozen open_clip model with its preprocess, tokenizer and names; unpacks as (model, preprocess, tokenizer).

    Attributes:
        model: the open_clip model (eval mode, no gradients).
        preprocess: PIL image -> [3, H, W] float tensor.
        tokenizer: list of N strings -> [N, context_length] int64 token ids.
        name: architecture name (see :class:`ModelSpec`).
        pretrained: the tag or the checkpoint's display name (never an absolute path); None for random weights
            or when unknown.
    """

    model: nn.Module = field(repr=False)
    preprocess: Callable = field(repr=False)
    tokenizer: Callable = field(repr=False)
    name: str
    pretrained: str | None = None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.preprocess, self.tokenizer))

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index):
        return (self.model, self.preprocess, self.tokenizer)[index]

    @property
    def model_id(self) -> str:
        """Content fingerprint "<name>@<16 hex digits of the weights' SHA-256>": path-independent."""
        return f"{self.name}@{weights_digest(self.model)[:16]}"

    @property
    def display_name(self) -> str:
        """"name/pretrained" (e.g. "ViT-B-32/openai"), or the name alone: for titles and messages."""
        return f"{self.name}/{self.pretrained}" if self.pretrained else self.name

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def encode_images(self, images: Sequence, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """Unit image features [N, E] (see :func:`encode_images`)."""
        return encode_images(self, images, batch_size=batch_size, progress=progress)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        """Unit text features [N, E] (see :func:`encode_texts`)."""
        return encode_texts(self, texts, batch_size=batch_size, progress=progress)

    @property
    def embed_dim(self) -> int:
        """Width E of the shared embedding space."""
        try:
            return embed_dim(self.model)
        except UnsupportedModelError:  # towers without a TextTransformer layout: ask the model
            with torch.no_grad():
                return int(self.model.encode_text(self.tokenizer(["a"]).to(self.device)).shape[-1])


def as_clip_model(obj: Any, *, name: str | None = None, pretrained: str | None = None) -> ClipModel:
    """A :class:`ClipModel` from a handle or a (model, preprocess, tokenizer) sequence.

    For a sequence, the name and tag are those :func:`load_model` recorded on the model, else ``name`` (default
    the model's class name) and ``pretrained``; the model id is computed from the weights either way.

    Raises:
        TypeError: not a handle nor a (model, preprocess, tokenizer) triple, or preprocess and tokenizer swapped.
    """
    if isinstance(obj, ClipModel):
        return obj
    if not isinstance(obj, (tuple, list)) or len(obj) != 3 or not isinstance(obj[0], nn.Module):
        raise TypeError(f"expected a ClipModel (crossgap_qdrant.models.load_model) or a (model, preprocess, "
                        f"tokenizer) triple, got {type(obj).__name__}")
    model, preprocess, tokenizer = obj
    if hasattr(preprocess, "context_length") or hasattr(tokenizer, "transforms"):
        raise TypeError("preprocess and tokenizer look swapped: the order is (model, preprocess, tokenizer), "
                        "as load_model returns them")
    if not callable(preprocess) or not callable(tokenizer):
        raise TypeError("preprocess and tokenizer must be callables (see load_model)")
    name = name or getattr(model, "crossgap_model_name", None) or type(model).__name__
    pretrained = pretrained or getattr(model, "crossgap_pretrained", None)
    return ClipModel(model, preprocess, tokenizer, name, pretrained)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ------------------------------------------------------------------------------------------ plain encoders
@torch.no_grad()
def encode_pixels(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Unit image features [B, E] float32 on CPU of preprocessed pixels [B, 3, H, W]."""
    return F.normalize(model.encode_image(pixels.to(model_device(model))).float(), dim=-1).cpu()


@torch.no_grad()
def encode_token_ids(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Unit text features [B, E] float32 on CPU of token ids [B, L]."""
    return F.normalize(model.encode_text(ids.to(model_device(model))).float(), dim=-1).cpu()


def _encode_in_batches(items: Sequence, batch_size: int, progress: bool, desc: str, dim: Callable[[], int],
                       encode_batch: Callable[[Sequence], torch.Tensor]) -> torch.Tensor:
    """Encodes ``items`` in batches; ``dim()`` (the width of an empty result) is asked only for no items."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    bar = None
    if progress and items:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc=desc, unit="item")
    out = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        out.append(encode_batch(batch))
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return torch.cat(out) if out else torch.empty(0, dim())


def _split_handle(model: Any, second: Any, third: Any, part: str) -> tuple[nn.Module, Any, Any]:
    """(model, preprocess or tokenizer, inputs) from ``(clip, inputs)`` or ``(model, part, inputs)``."""
    if isinstance(model, ClipModel):
        if third is None:
            second, third = getattr(model, part), second
        return model.model, second, third
    if second is None or third is None:
        raise TypeError(f"give (clip, inputs) or (model, {part}, inputs)")
    return model, second, third


def encode_images(
    model: nn.Module | ClipModel,
    preprocess: Callable | Sequence | None = None,
    images: Sequence | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> torch.Tensor:
    """Unit-norm image features: ``encode_images(clip, images)`` or ``encode_images(model, preprocess, images)``.

    Args:
        images: preprocessed [3, H, W] tensors, or anything :func:`crossgap_qdrant.images.load_image` reads
            (paths, PIL images, bytes), decoded by it (EXIF applied, transparency flattened onto white).

    Returns:
        [N, E] float32 on CPU.

    Raises:
        crossgap_qdrant.images.ImageError: an image that cannot be read (the message names it).
    """
    from crossgap_qdrant.images import load_pixels

    model, preprocess, images = _split_handle(model, preprocess, images, "preprocess")
    return _encode_in_batches(list(images), batch_size, progress, "encode images", lambda: embed_dim(model),
                              lambda batch: encode_pixels(model, load_pixels(preprocess, batch)))


def encode_texts(
    model: nn.Module | ClipModel,
    tokenizer: Callable | Sequence[str] | None = None,
    texts: Sequence[str] | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> torch.Tensor:
    """Unit-norm text features [N, E] float32 on CPU: ``encode_texts(clip, texts)`` or
    ``encode_texts(model, tokenizer, texts)``. Empty or blank texts are refused."""
    model, tokenizer, texts = _split_handle(model, tokenizer, texts, "tokenizer")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text #{i} is empty or not a string: {text!r}")
    return _encode_in_batches(texts, batch_size, progress, "encode texts", lambda: embed_dim(model),
                              lambda batch: encode_token_ids(model, tokenizer(list(batch))))


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


__all__ = [
    "CheckpointError",
    "ClipModel",
    "RandomWeightsWarning",
    "UnsupportedModelError",
    "as_clip_model",
    "check_features",
    "embed_dim",
    "encode_images",
    "encode_pixels",
    "encode_texts",
    "encode_token_ids",
    "load_model",
    "model_device",
    "normalize_features",
    "read_model_config",
    "register_model_config",
]
