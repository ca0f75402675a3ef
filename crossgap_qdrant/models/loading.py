"""Loading a model spec into a frozen :class:`ClipModel` handle with a content fingerprint; the handle is what
every entry point takes first (``ClipModel.from_parts`` wraps a model, preprocess and tokenizer made elsewhere).

Model specs: crossgap_qdrant.models.specs; checkpoint reading: crossgap_qdrant.models.checkpoints; tower views:
crossgap_qdrant.models.towers; the plain encoders: crossgap_qdrant.models.encoders.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import open_clip
import torch
import torch.nn as nn

from crossgap_qdrant.models.checkpoints import load_checkpoint, weights_digest
from crossgap_qdrant.models.specs import (
    DEMO_MODEL_NAME,
    DEMO_SPEC,
    DEMO_TAG,
    DIR_CHECKPOINTS,
    HF_HUB_PREFIX,
    LOCAL_DIR_PREFIX,
    ModelSpecError,
    WeightsUnavailableError,
    parse_model_spec,
)
from crossgap_qdrant.models.towers import UnsupportedModelError, embed_dim

logger = logging.getLogger(__name__)


class RandomWeightsWarning(UserWarning):
    """A model was built with random weights on request: its embeddings carry no meaning."""


class PartsFormDeprecationWarning(DeprecationWarning):
    """An entry point was given a bare model with its preprocess or tokenizer instead of a :class:`ClipModel`."""


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
    spec = parse_model_spec(name, pretrained)
    if spec.random and not allow_random:
        if name.startswith(LOCAL_DIR_PREFIX):
            fix = f"put its weights there ({DIR_CHECKPOINTS[2]} or .safetensors)"
            where = f"{name} holds no weights file"
        else:
            fix = (f"pass a pretrained tag or a checkpoint file, or a model spec that carries weights ({DEMO_SPEC!r}, "
                   "'local-dir:<folder>', 'hf-hub:<org>/<repo>')")
            where = f"no weights given for {spec.name}"
        raise ModelSpecError(f"{where}: {fix}; or pass allow_random=True (CLI: --pretrained none) if random weights "
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
        raise WeightsUnavailableError(f"could not load the weights of {name} {spec.tag or ''} ({exc}). Without network "
                                      "access, "
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
        preprocess: PIL image -> [3, H, W] float tensor (None in a handle made without one).
        tokenizer: list of N strings -> [N, context_length] int64 token ids (None in a handle made without one).
        name: architecture name (see :class:`ModelSpec`).
        pretrained: the tag or the checkpoint's display name (never an absolute path); None for random weights
            or when unknown.
    """

    model: nn.Module = field(repr=False)
    preprocess: Callable | None = field(repr=False)
    tokenizer: Callable | None = field(repr=False)
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
        """"name/pretrained" (e.g. "ViT-B-32/openai"), or the name alone, or "crossgap-demo" for the demo model
        (the name that loads it): for titles and messages."""
        if (self.name, self.pretrained) == (DEMO_MODEL_NAME, DEMO_TAG):
            return DEMO_SPEC
        return f"{self.name}/{self.pretrained}" if self.pretrained else self.name

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def encode_images(self, images: Sequence, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """Unit image features [N, E] (see :func:`crossgap_qdrant.models.encode_images`)."""
        from crossgap_qdrant.models.encoders import encode_images  # noqa: PLC0415  (they take a ClipModel: a cycle)

        return encode_images(self, images, batch_size=batch_size, progress=progress)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        """Unit text features [N, E] (see :func:`crossgap_qdrant.models.encode_texts`)."""
        from crossgap_qdrant.models.encoders import encode_texts  # noqa: PLC0415  (they take a ClipModel: a cycle)

        return encode_texts(self, texts, batch_size=batch_size, progress=progress)

    @classmethod
    def from_parts(cls, model: nn.Module, preprocess: Callable | None, tokenizer: Callable | None, *,
                   name: str | None = None, pretrained: str | None = None) -> "ClipModel":
        """The handle of a model, preprocess and tokenizer made elsewhere (e.g. by open_clip directly).

        Args:
            model: a frozen open_clip model.
            preprocess: PIL image -> [3, H, W] tensor; None when nothing encodes images from files or pixels.
            tokenizer: list of N strings -> [N, context_length] int64 ids; None when nothing encodes texts.
            name: the architecture name; default the one :func:`load_model` recorded on the model, else the
                model's class name.
            pretrained: the tag or checkpoint display name; default the one :func:`load_model` recorded.

        Raises:
            TypeError: model is not an nn.Module, a part is not callable, or preprocess and tokenizer are
                swapped.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an open_clip nn.Module, got {type(model).__name__}")
        if hasattr(preprocess, "context_length") or hasattr(tokenizer, "transforms"):
            raise TypeError("preprocess and tokenizer look swapped: the order is (model, preprocess, tokenizer), "
                            "as load_model returns them")
        if any(part is not None and not callable(part) for part in (preprocess, tokenizer)):
            raise TypeError("preprocess and tokenizer must be callables (see load_model)")
        name = name or getattr(model, "crossgap_model_name", None) or type(model).__name__
        pretrained = pretrained or getattr(model, "crossgap_pretrained", None)
        return cls(model, preprocess, tokenizer, name, pretrained)

    @property
    def embed_dim(self) -> int:
        """Width E of the shared embedding space."""
        try:
            return embed_dim(self.model)
        except UnsupportedModelError:  # towers without a TextTransformer layout: ask the model
            with torch.no_grad():
                return int(self.model.encode_text(self.tokenizer(["a"]).to(self.device)).shape[-1])


_parts_form_warned = False  # the deprecated parts form warns once per process


def warn_parts_form(where: str, stacklevel: int = 2) -> None:
    """Issues :class:`PartsFormDeprecationWarning` the first time a deprecated parts form is used, attributed to
    the frame ``stacklevel`` levels above the caller of this function."""
    global _parts_form_warned
    if _parts_form_warned:
        return
    _parts_form_warned = True
    warnings.warn(PartsFormDeprecationWarning(
        f"{where}: a bare model with its preprocess/tokenizer is deprecated and will be refused in the next "
        "release; pass a ClipModel (load_model, or ClipModel.from_parts(model, preprocess, tokenizer))"),
        stacklevel=stacklevel + 1)


def as_clip_model(obj: Any, *, name: str | None = None, pretrained: str | None = None) -> ClipModel:
    """A :class:`ClipModel` from a handle, or (deprecated, warns once) a (model, preprocess, tokenizer) sequence.

    For a sequence, the name and tag are as :meth:`ClipModel.from_parts` takes them.

    Raises:
        TypeError: not a handle nor a (model, preprocess, tokenizer) triple, or preprocess and tokenizer swapped.
    """
    if isinstance(obj, ClipModel):
        return obj
    if not isinstance(obj, (tuple, list)) or len(obj) != 3 or not isinstance(obj[0], nn.Module):
        raise TypeError(f"expected a ClipModel (crossgap_qdrant.load_model or ClipModel.from_parts), got "
                        f"{type(obj).__name__}")
    clip = ClipModel.from_parts(*obj, name=name, pretrained=pretrained)
    warn_parts_form("a (model, preprocess, tokenizer) triple", stacklevel=2)
    return clip


def takes_clip_model(part: str | None):
    """Decorates an entry point whose first parameter is a :class:`ClipModel`.

    For one release it also takes the old form, a bare model followed by its ``part`` ("preprocess" or
    "tokenizer", positional or by keyword; None: the bare model alone, with ``model_name=``/``pretrained=``
    keywords), wrapped with :meth:`ClipModel.from_parts` and warned about once per process.
    """

    def decorate(fn):
        @functools.wraps(fn)
        def entry(clip, *args, **kwargs):
            if not isinstance(clip, ClipModel):
                clip, args = _from_parts_form(fn.__name__, clip, args, kwargs, part)
            return fn(clip, *args, **kwargs)

        return entry

    return decorate


def _from_parts_form(where: str, model: Any, args: tuple, kwargs: dict, part: str | None
                     ) -> tuple[ClipModel, tuple]:
    """The handle and the remaining positional arguments of a call in the deprecated form (pops its keywords)."""
    usage = (f"{where} takes a ClipModel first (crossgap_qdrant.load_model, or ClipModel.from_parts(model, "
             "preprocess, tokenizer))")
    if isinstance(model, (tuple, list)) and len(model) == 3 and isinstance(model[0], nn.Module):
        clip = ClipModel.from_parts(*model)
        warn_parts_form("a (model, preprocess, tokenizer) triple", stacklevel=3)
        return clip, args
    if not isinstance(model, nn.Module):
        raise TypeError(f"{usage}, got {type(model).__name__}")
    parts = {"preprocess": None, "tokenizer": None}
    if part is not None:
        if part in kwargs:
            parts[part] = kwargs.pop(part)
        elif args:
            parts[part], args = args[0], args[1:]
        if not callable(parts[part]):
            raise TypeError(f"{usage}; the deprecated form is {where}(model, {part}, ...), got a bare model and "
                            f"{type(parts[part]).__name__}")
    clip = ClipModel.from_parts(model, parts["preprocess"], parts["tokenizer"], name=kwargs.pop("model_name", None),
                                pretrained=kwargs.pop("pretrained", None))
    warn_parts_form(f"{where}(model, {part or '...'}, ...)", stacklevel=3)
    return clip, args


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters."""
    return next(model.parameters()).device


__all__ = [
    "ClipModel",
    "PartsFormDeprecationWarning",
    "RandomWeightsWarning",
    "as_clip_model",
    "load_model",
    "model_device",
    "takes_clip_model",
    "warn_parts_form",
]
