"""open_clip models: model specs and loading (a frozen :class:`ClipModel` handle with a content fingerprint),
plain encoders, and the pseudo-token encoders that inversion optimises.

The pseudo-token encoders here run the model's own forward code on the full sequence, so they are the
published algorithm by construction; crossgap_qdrant.inversion builds its fast paths on top and is tested
against them.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import os
import pickle
import warnings
import weakref
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

PLACEHOLDER = "£"  # the published code's placeholder word: a single token in CLIP's BPE vocabulary


class UnsupportedModelError(ValueError):
    """The model lacks a part that an inversion needs (the message names it)."""


# ------------------------------------------------------------------------------------------------ loading
DEMO_SPEC = "crossgap-demo"  # the short name of the committed demo model
DEMO_MODEL_NAME = "crossgap-demo-clip"  # its open_clip architecture name
DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo_model"  # open_clip_config.json + weights
_LOCAL_DIR, _HF_HUB = "local-dir:", "hf-hub:"
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz", ".npy")
_DIR_CHECKPOINTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                    "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "model.pth")


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, holds more than weights, or does not fit the architecture."""


class RandomWeightsWarning(UserWarning):
    """A model was built with random weights on request: its embeddings carry no meaning."""


def register_model_config(name: str, config: dict[str, Any]) -> None:
    """Makes an open_clip architecture config available to :func:`load_model` under ``name``.

    Args:
        name: architecture name, e.g. "tiny-clip".
        config: the open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``, ...), or the layout of
            an open_clip_config.json file (``{"model_cfg": {...}, "preprocess_cfg": {...}}``).
    """
    from open_clip import factory

    factory._MODEL_CONFIGS[name] = _model_cfg(config, f"model config {name!r}")


def read_model_config(path: str | os.PathLike) -> dict[str, Any]:
    """The model config of an open_clip_config.json file (either layout, see :func:`register_model_config`)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"model config not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"model config {path} is not valid JSON ({exc})") from None
    return _model_cfg(data, f"model config {path}")


def _model_cfg(config: Any, where: str) -> dict[str, Any]:
    if isinstance(config, dict) and isinstance(config.get("model_cfg"), dict):
        config = config["model_cfg"]
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(config, dict) or k not in config]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}: expected an open_clip model config or an "
                         "open_clip_config.json layout ({'model_cfg': {...}, 'preprocess_cfg': {...}})")
    return dict(config)


def _known_architectures() -> list[str]:
    import open_clip

    if DEMO_MODEL_NAME not in open_clip.list_models() and (DEMO_MODEL_DIR / "open_clip_config.json").is_file():
        register_model_config(DEMO_MODEL_NAME, read_model_config(DEMO_MODEL_DIR / "open_clip_config.json"))
    return open_clip.list_models()


@dataclass(frozen=True)
class ModelSpec:
    """What :func:`load_model` loads, resolved from a model spec as open_clip users write it.

    Attributes:
        name: architecture name: an open_clip or registered config name, an ``hf-hub:`` repo, or (for a
            ``local-dir:`` folder whose config matches no known one) the folder's name.
        source: what open_clip builds the architecture and tokenizer from (name, ``local-dir:<folder>`` or
            ``hf-hub:<repo>``).
        pretrained: display form of the weights: the tag, the checkpoint's file name, the folder's name; None
            for random weights and for ``hf-hub:`` (the name says it). Never an absolute path.
        checkpoint: the local weights file, loaded weights-only; None otherwise.
        tag: the open_clip pretrained tag that open_clip downloads; None otherwise.
    """

    name: str
    source: str
    pretrained: str | None = None
    checkpoint: Path | None = None
    tag: str | None = None

    @property
    def random(self) -> bool:
        """No weights: the model would keep its random initialisation."""
        return self.checkpoint is None and self.tag is None and not self.source.startswith(_HF_HUB)


def parse_model_spec(name: str, pretrained: str | os.PathLike | None = None) -> ModelSpec:
    """Resolves a model spec without loading anything (no network, no weights read).

    Accepted forms:
        - ``"crossgap-demo"``: the committed demo model (offline).
        - ``"local-dir:<folder>"``: a folder with open_clip_config.json and a weights file.
        - ``"hf-hub:<org>/<repo>"``: an open_clip repo on the Hugging Face Hub (downloaded when loaded).
        - an architecture name (``open_clip.list_models()`` or :func:`register_model_config`) with
          ``pretrained`` one of its tags, a checkpoint file, a folder holding one, or None (random weights).

    Raises:
        ValueError: unknown architecture or tag, or ``pretrained`` given with a spec that carries its weights.
        FileNotFoundError: a checkpoint path or folder that does not exist.
    """
    import open_clip

    pretrained = os.fspath(pretrained) if pretrained is not None else None
    if name == DEMO_SPEC or name.startswith((_LOCAL_DIR, _HF_HUB)):
        if pretrained is not None:
            raise ValueError(f"{name!r} carries its own weights: pass pretrained=None (got {pretrained!r})")
        if name == DEMO_SPEC:
            weights = _find_checkpoint(DEMO_MODEL_DIR)
            if weights is None:
                raise FileNotFoundError(f"the demo model's weights are missing from {DEMO_MODEL_DIR} "
                                        "(train them with scripts/train_demo_model.py)")
            _known_architectures()
            return ModelSpec(DEMO_MODEL_NAME, _LOCAL_DIR + str(DEMO_MODEL_DIR), "openclipart", weights)
        if name.startswith(_HF_HUB):
            return ModelSpec(name, name)
        return _local_dir_spec(Path(name[len(_LOCAL_DIR):]))
    known = _known_architectures()
    if name not in known:
        raise ValueError(_unknown_model_message(name, known))
    if pretrained is None:
        return ModelSpec(name, name)
    path = Path(pretrained)
    if path.is_dir():
        weights = _find_checkpoint(path)
        if weights is None:
            raise FileNotFoundError(f"no weights file ({', '.join(_DIR_CHECKPOINTS[:3])}, ...) in folder {path}")
        return ModelSpec(name, name, path.resolve().name, weights)
    if path.is_file():
        return ModelSpec(name, name, path.name, path)
    if os.sep in pretrained or "/" in pretrained or pretrained.lower().endswith(_CHECKPOINT_SUFFIXES):
        raise FileNotFoundError(f"checkpoint file not found: {pretrained}")
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        known_tags = ", ".join(tags) if tags else "none: pass a checkpoint file"
        raise ValueError(f"{pretrained!r} is neither a checkpoint file nor a pretrained tag of {name} "
                         f"(its tags: {known_tags})")
    return ModelSpec(name, name, pretrained, tag=pretrained)


def _local_dir_spec(folder: Path) -> ModelSpec:
    import open_clip

    if not folder.is_dir():
        raise FileNotFoundError(f"local-dir: folder not found: {folder}")
    config_file = folder / "open_clip_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"local-dir: {folder} has no open_clip_config.json (open_clip's model folder layout)")
    config = read_model_config(config_file)
    _known_architectures()
    from open_clip import factory

    # A folder whose config is a known architecture takes that name, so the model id does not depend on where
    # (or under which folder name) the weights are kept.
    same = [n for n in open_clip.list_models() if factory._MODEL_CONFIGS.get(n) == config]
    display = folder.resolve().name
    return ModelSpec(same[0] if same else display, _LOCAL_DIR + str(folder), display, _find_checkpoint(folder))


def _find_checkpoint(folder: Path) -> Path | None:
    for file_name in _DIR_CHECKPOINTS:
        if (folder / file_name).is_file():
            return folder / file_name
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".pth", ".pt"))
    return found[0] if found else None


def _unknown_model_message(name: str, known: list[str]) -> str:
    hint = ""
    if os.path.isdir(name):
        hint = f" It is a folder: for an open_clip model folder write 'local-dir:{name}'."
    elif os.path.isfile(name):
        hint = " It is a file: pass a checkpoint as pretrained=, with its architecture as the name."
    else:
        close = difflib.get_close_matches(name, known + [DEMO_SPEC], n=3)
        if close:
            hint = f" Did you mean {', '.join(map(repr, close))}?"
    return (f"unknown open_clip model {name!r}: give an architecture from open_clip.list_models(), {DEMO_SPEC!r}, "
            f"'local-dir:<folder>' or 'hf-hub:<org>/<repo>'.{hint}")


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
        if name.startswith(_LOCAL_DIR):
            fix = f"put its weights there ({_DIR_CHECKPOINTS[2]} or .safetensors)"
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
    own_weights = spec.tag is None and not spec.source.startswith(_HF_HUB)
    try:
        with _quiet_open_clip(own_weights):
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.source, pretrained=spec.tag, load_weights=not own_weights, device=device, precision=precision,
                **({"pretrained_text": False} if own_weights else {}),
            )
    except RuntimeError as exc:
        if spec.tag is None and not spec.source.startswith(_HF_HUB):
            raise
        raise RuntimeError(f"could not load the weights of {name} {spec.tag or ''} ({exc}). Without network access, "
                           "pass a local checkpoint file as pretrained, or 'local-dir:<folder>'.") from exc
    if spec.checkpoint is not None:
        _load_checkpoint(model, spec.checkpoint, spec.name)
    model.eval().requires_grad_(False)
    model.crossgap_model_name = spec.name  # for backbone-specific defaults (e.g. OVI's token count)
    model.crossgap_pretrained = spec.pretrained
    return ClipModel(model, preprocess, open_clip.get_tokenizer(spec.source), spec.name, spec.pretrained)


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


def _load_checkpoint(model: nn.Module, path: Path, architecture: str) -> None:
    """Loads ``path`` into ``model`` strictly, reading it weights-only (torch.load(weights_only=True))."""
    from open_clip.factory import load_checkpoint

    state = read_state_dict(path)  # refuses pickled code before open_clip opens the file
    try:
        load_checkpoint(model, str(path), strict=True, weights_only=True, device="cpu")
    except Exception as exc:
        problem = _mismatch(model, state, architecture) if state is not None else None
        raise CheckpointError(
            f"checkpoint {path} does not fit architecture {architecture}: "
            f"{problem or f'{type(exc).__name__}: {exc}'}. Pass the architecture it was trained with, or "
            "'local-dir:<folder>' with its open_clip_config.json"
        ) from exc


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """The tensors of a checkpoint file, read without running pickled code (torch.load(weights_only=True)).

    Returns:
        name -> tensor (a "state_dict" entry unwrapped, a "module." prefix stripped); None for numpy
        (big_vision) files, which hold no pickled code.

    Raises:
        CheckpointError: naming the file, when it is unreadable, refers to code, or holds no tensors.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".npz", ".npy"):
        return None
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(path))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        reasons = [ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()]
        reason = next((r for r in reasons if not r.startswith(("Please file", "Check the documentation"))), str(exc))
        raise CheckpointError(
            f"refused checkpoint {path}: it is not a plain weights file that torch.load(weights_only=True) can read "
            f"({reason.replace('WeightsUnpickler error: ', '')}). Unpickling anything else can run code; if you "
            "trust the file, re-save its state_dict with torch.save or as .safetensors"
        ) from None
    except Exception as exc:  # torch and safetensors raise several types on truncated or foreign files
        raise CheckpointError(f"cannot read checkpoint {path} ({type(exc).__name__}: {exc})") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)} if isinstance(data, dict) else {}
    if not tensors:
        raise CheckpointError(f"checkpoint {path} holds no tensors (got {type(data).__name__})")
    return {k[7:] if k.startswith("module.") else k: v for k, v in tensors.items()}


def _mismatch(model: nn.Module, state: dict[str, torch.Tensor], architecture: str) -> str | None:
    """Names the weights that differ between a checkpoint and a model, or None when keys and shapes agree."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} of the model's {len(own)} weights are missing from it (e.g. {missing[0]})")
    if extra:
        parts.append(f"{len(extra)} of its weights are unknown to the model (e.g. {extra[0]})")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} have other shapes (e.g. {k}: checkpoint {list(state[k].shape)}, "
                     f"{architecture} {list(own[k].shape)})")
    return "; ".join(parts) or None


# ------------------------------------------------------------------------------------------------ handle
_DIGESTS: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()


def weights_digest(model: nn.Module) -> str:
    """SHA-256 (hex) of a model's state dict: names, shapes and values, in sorted name order.

    Floating tensors are hashed as float32, so an fp16 checkpoint gives one digest whether loaded at fp16 or
    fp32; a model cast to a lower precision than its checkpoint hashes differently (its weights differ).
    Cached per model object (about 0.4 s for ViT-B-32 on one CPU core): weights changed in place afterwards
    are not seen.
    """
    cached = _DIGESTS.get(model)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        tensor = value.detach()
        tensor = (tensor.float() if tensor.is_floating_point() else tensor).cpu().contiguous().reshape(-1)
        digest.update(f"{key}|{tensor.dtype}|{tuple(value.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy())
    _DIGESTS[model] = digest.hexdigest()
    return _DIGESTS[model]


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
def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def encode_images(
    model: nn.Module,
    preprocess: Callable,
    images: Sequence,
    batch_size: int = 64,
    progress: bool = False,
) -> torch.Tensor:
    """Unit-norm image features.

    Args:
        images: preprocessed [3, H, W] tensors, or anything :func:`crossgap_qdrant.images.load_image` reads
            (paths, PIL images, bytes), decoded by it (EXIF applied, transparency flattened onto white).

    Returns:
        [N, E] float32 on CPU.

    Raises:
        crossgap_qdrant.images.ImageError: an image that cannot be read (the message names it).
    """
    from crossgap_qdrant.images import load_image

    device = model_device(model)
    out = []
    batches = _batches(list(images), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=(len(images) + batch_size - 1) // batch_size, desc="encode images")
    for batch in batches:
        tensors = []
        for item in batch:
            if isinstance(item, torch.Tensor):
                tensors.append(item)
                continue
            tensors.append(preprocess(load_image(item)))
        pixels = torch.stack(tensors).to(device)
        out.append(F.normalize(model.encode_image(pixels).float(), dim=-1).cpu())
    if not out:
        return torch.empty(0, embed_dim(model))
    return torch.cat(out)


@torch.no_grad()
def encode_texts(
    model: nn.Module,
    tokenizer: Callable,
    texts: Sequence[str],
    batch_size: int = 256,
    progress: bool = False,
) -> torch.Tensor:
    """Unit-norm text features, [N, E] float32 on CPU. Empty or blank texts are refused."""
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text #{i} is empty or not a string: {text!r}")
    device = model_device(model)
    out = []
    batches = _batches(list(texts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=(len(texts) + batch_size - 1) // batch_size, desc="encode texts")
    for batch in batches:
        ids = tokenizer(list(batch)).to(device)
        out.append(F.normalize(model.encode_text(ids).float(), dim=-1).cpu())
    if not out:
        return torch.empty(0, embed_dim(model))
    return torch.cat(out)


def embed_dim(model: nn.Module) -> int:
    """Width of the shared embedding space."""
    text = text_tower(model, require_causal=False)
    proj = text.text_projection
    if isinstance(proj, nn.Linear):
        return proj.out_features
    if proj is not None:
        return proj.shape[1]
    return text.width


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
    zero = features.norm(dim=1) == 0
    if bool(zero.any()):
        rows = zero.nonzero().flatten()[:5].tolist()
        raise ValueError(f"{what} contain all-zero rows (rows {rows}){consequence}")
    return features


# ------------------------------------------------------------------------------------------- tower views
@dataclass
class TextTower:
    """The parts of an open_clip text tower, the same for CLIP and CustomTextCLIP models."""

    module: nn.Module  # the object holding the parts (the CLIP model itself or model.text)
    token_embedding: nn.Embedding
    positional_embedding: torch.Tensor  # [L, W]
    transformer: nn.Module
    ln_final: nn.Module
    text_projection: Any  # Parameter [W, E], nn.Linear, or None
    attn_mask: torch.Tensor | None  # [L, L] additive causal mask, or None for bidirectional towers
    pool_type: str
    eos_id: int | None
    encode: Callable[[torch.Tensor], torch.Tensor]  # token ids [B, L] -> unnormalised features [B, E]

    @property
    def width(self) -> int:
        return self.token_embedding.embedding_dim

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    @property
    def causal(self) -> bool:
        return self.attn_mask is not None

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        proj = self.text_projection
        if proj is None:
            return pooled
        if isinstance(proj, nn.Linear):
            return proj(pooled)
        return pooled @ proj


def text_tower(model: nn.Module, require_causal: bool = False) -> TextTower:
    """Returns the text tower view of an open_clip CLIP or CustomTextCLIP model.

    Raises:
        UnsupportedModelError: naming what is missing (e.g. a Hugging Face text tower has no token_embedding
            that inversion can write into).
    """
    holder = getattr(model, "text", None)
    if holder is None:
        holder = model
        pool = getattr(model, "text_pool_type", "argmax")
    else:
        pool = getattr(holder, "pool_type", "argmax")
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    missing = [n for n in needed if not hasattr(holder, n)]
    if missing:
        raise UnsupportedModelError(
            f"{type(model).__name__}'s text tower ({type(holder).__name__}) has no {', '.join(missing)}: "
            "OTI needs an open_clip TextTransformer-style tower (token embedding, positional embedding, transformer)"
        )
    if getattr(holder, "cls_emb", None) is not None:
        raise UnsupportedModelError("text towers with an appended class token (CoCa) are not supported")
    attn_mask = getattr(holder, "attn_mask", None)
    if require_causal and attn_mask is None:
        raise UnsupportedModelError("the text tower is not causal")
    encode = model.encode_text if holder is model else holder
    return TextTower(
        module=holder,
        token_embedding=holder.token_embedding,
        positional_embedding=holder.positional_embedding,
        transformer=holder.transformer,
        ln_final=holder.ln_final,
        text_projection=getattr(holder, "text_projection", None),
        attn_mask=attn_mask,
        pool_type=pool,
        eos_id=getattr(holder, "text_eos_id", getattr(holder, "eos_id", None)),
        encode=encode,
    )


@dataclass
class VisionTower:
    """The parts of an open_clip ViT image tower that OVI needs."""

    module: nn.Module
    width: int
    num_patches: int  # patch positions of the grid (the class token excluded)
    grid: tuple[int, int]


def vision_tower(model: nn.Module) -> VisionTower:
    visual = getattr(model, "visual", None)
    if visual is None:
        raise UnsupportedModelError(f"{type(model).__name__} has no image tower (model.visual)")
    needed = ("conv1", "class_embedding", "positional_embedding", "transformer")
    missing = [n for n in needed if not hasattr(visual, n)]
    if missing:
        raise UnsupportedModelError(
            f"image tower {type(visual).__name__} has no {', '.join(missing)}: OVI supports open_clip "
            "VisionTransformer towers (timm trunks and ResNets are not supported)"
        )
    grid = tuple(visual.grid_size) if hasattr(visual, "grid_size") else None
    num_patches = visual.positional_embedding.shape[0] - 1
    if grid is None or grid[0] * grid[1] != num_patches:
        raise UnsupportedModelError("image tower's positional embedding does not match its patch grid")
    return VisionTower(module=visual, width=visual.class_embedding.shape[-1], num_patches=num_patches, grid=grid)


# ----------------------------------------------------------------------------------- pseudo-token encoders
def placeholder_template(template: str, num_tokens: int) -> str:
    """Formats the template with ``num_tokens`` placeholder words, as the published code does."""
    if template.count("{}") != 1:
        raise ValueError(f"the template must contain exactly one '{{}}', got {template!r}")
    return template.format(f" {PLACEHOLDER} " * num_tokens)


def template_token_ids(tokenizer: Callable, template: str, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of the template and the positions of its placeholders.

    Returns:
        ids [L] int64 and positions [R] int64 (consecutive, ascending).
    """
    ids = tokenizer([placeholder_template(template, num_tokens)])[0]
    specials = {int(t) for t in tokenizer([""])[0]}  # start/end/padding ids
    marker = [int(t) for t in tokenizer([PLACEHOLDER])[0] if int(t) not in specials]
    if len(marker) != 1:
        raise UnsupportedModelError(f"the tokenizer does not map {PLACEHOLDER!r} to exactly one token")
    marker_id = marker[0]
    positions = (ids == marker_id).nonzero().flatten()
    if positions.numel() != num_tokens or (
        num_tokens > 1 and not torch.equal(positions, positions[0] + torch.arange(num_tokens))
    ):
        raise UnsupportedModelError(
            f"the tokenizer does not map the placeholder {PLACEHOLDER!r} to one token each "
            f"({positions.numel()} found for {num_tokens} placeholders)"
        )
    return ids, positions


@contextlib.contextmanager
def _replace_output(module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]):
    handle = module.register_forward_hook(lambda _m, _inp, out: fn(out))
    try:
        yield
    finally:
        handle.remove()


def encode_text_with_pseudo_tokens(
    model: nn.Module, ids: torch.Tensor, positions: torch.Tensor, pseudo_tokens: torch.Tensor
) -> torch.Tensor:
    """Text features of a template whose placeholder embeddings are replaced by pseudo tokens.

    Runs the model's own text forward over the whole sequence (the published computation).

    Args:
        ids: [L] int64 template token ids.
        positions: [R] int64 placeholder positions.
        pseudo_tokens: [B, R, W] pseudo-word embeddings (W: text tower width).

    Returns:
        [B, E] unnormalised text features.
    """
    tower = text_tower(model)
    batch = pseudo_tokens.shape[0]
    ids_b = ids.to(pseudo_tokens.device).expand(batch, -1)

    def put(emb: torch.Tensor) -> torch.Tensor:
        emb = emb.clone()
        emb[:, positions] = pseudo_tokens.to(emb.dtype)
        return emb

    with _replace_output(tower.token_embedding, put):
        return tower.encode(ids_b)


def expand_patch_tokens(pseudo_tokens: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Nearest-neighbour repeat of R pseudo patch tokens over the patch positions.

    Args:
        pseudo_tokens: [B, R, W].

    Returns:
        [B, num_patches, W]: patch i takes token floor(i * R / num_patches).
    """
    return pseudo_tokens.index_select(1, patch_token_index(pseudo_tokens.shape[1], num_patches, pseudo_tokens.device))


def patch_token_index(num_tokens: int, num_patches: int, device=None) -> torch.Tensor:
    """[num_patches] int64: patch i takes pseudo token floor(i * R / num_patches) (nearest interpolation)."""
    return (torch.arange(num_patches, device=device) * num_tokens) // num_patches


class _PseudoPatchEmbedding(nn.Module):
    """Stands in for a ViT's conv1: returns the pseudo patch grid, ignoring the pixels it is given."""

    def __init__(self, grid: torch.Tensor):
        super().__init__()
        self.grid = grid

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.grid


@contextlib.contextmanager
def pseudo_patch_embedding(visual: nn.Module, patches: torch.Tensor, grid: tuple[int, int]):
    """Within the block, ``visual``'s patch embedding yields ``patches`` [B, P, W] as a [B, W, gh, gw] grid."""
    b, p, w = patches.shape
    conv = visual.conv1
    visual.conv1 = _PseudoPatchEmbedding(patches.transpose(1, 2).reshape(b, w, grid[0], grid[1]))
    try:
        yield
    finally:
        visual.conv1 = conv


def encode_image_with_pseudo_tokens(model: nn.Module, pseudo_tokens: torch.Tensor) -> torch.Tensor:
    """Image features of pseudo patch tokens repeated over the ViT grid (class token and positions added).

    Runs the tower's own forward after the patch embedding (the published computation).

    Args:
        pseudo_tokens: [B, R, W] (W: vision tower width).

    Returns:
        [B, E] unnormalised image features.
    """
    tower = vision_tower(model)
    patches = expand_patch_tokens(pseudo_tokens, tower.num_patches)
    dummy = patches.new_zeros(patches.shape[0], 1, 1, 1)
    with pseudo_patch_embedding(tower.module, patches, tower.grid):
        return tower.module(dummy)
