"""Model specs as open_clip users write them, resolved without loading anything.

    "crossgap-demo"                 the committed demo model (offline)
    "local-dir:<folder>"            a folder with open_clip_config.json and a weights file
    "hf-hub:<org>/<repo>"           an open_clip repo on the Hugging Face Hub
    "<architecture>" + pretrained   an open_clip tag, a checkpoint file, a folder holding one, or None
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
from open_clip import factory

from crossgap_qdrant.errors import CrossgapError


class ModelSpecError(CrossgapError, ValueError):
    """A model spec, model config or pretrained tag cannot be used (the message names the fix)."""


class WeightsUnavailableError(CrossgapError, RuntimeError):
    """A model's pretrained weights could not be loaded (not cached and no network, or a damaged file)."""


DEMO_SPEC = "crossgap-demo"  # the short name of the committed demo model
DEMO_MODEL_NAME = "crossgap-demo-clip"  # its open_clip architecture name
DEMO_TAG = "openclipart"  # the name its weights carry (what they were trained on)
DEMO_MODEL_DIR = Path(__file__).resolve().parent.parent / "demo_model"  # open_clip_config.json + weights
LOCAL_DIR_PREFIX, HF_HUB_PREFIX = "local-dir:", "hf-hub:"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz", ".npy")
DIR_CHECKPOINTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                    "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "model.pth")


def register_model_config(name: str, config: dict[str, Any]) -> None:
    """Makes an open_clip architecture config available to :func:`crossgap_qdrant.models.load_model` under ``name``.

    Args:
        name: architecture name, e.g. "tiny-clip".
        config: the open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``, ...), or the layout of
            an open_clip_config.json file (``{"model_cfg": {...}, "preprocess_cfg": {...}}``).
    """
    factory._MODEL_CONFIGS[name] = _model_cfg(config, f"model config {name!r}")


def read_model_config(path: str | os.PathLike) -> dict[str, Any]:
    """The model config of an open_clip_config.json file (either layout, see :func:`register_model_config`)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"model config not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelSpecError(f"model config {path} is not valid JSON ({exc})") from None
    return _model_cfg(data, f"model config {path}")


def _model_cfg(config: Any, where: str) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise ModelSpecError(f"{where} must hold a JSON object (an open_clip model config), not a "
                         f"{type(config).__name__}")
    if isinstance(config.get("model_cfg"), dict):
        config = config["model_cfg"]
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in config]
    if missing:
        raise ModelSpecError(f"{where} lacks {', '.join(missing)}: expected an open_clip model config or an "
                         "open_clip_config.json layout ({'model_cfg': {...}, 'preprocess_cfg': {...}})")
    return dict(config)


def _known_architectures() -> list[str]:
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
        return self.checkpoint is None and self.tag is None and not self.source.startswith(HF_HUB_PREFIX)


def carries_weights(name: str) -> bool:
    """Whether a model spec names its weights itself (the demo model, local-dir:, hf-hub:)."""
    return name == DEMO_SPEC or name.startswith((LOCAL_DIR_PREFIX, HF_HUB_PREFIX))


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
    pretrained = os.fspath(pretrained) if pretrained is not None else None
    if carries_weights(name):
        if pretrained is not None:
            raise ModelSpecError(f"{name!r} carries its own weights: pass pretrained=None (got {pretrained!r})")
        if name == DEMO_SPEC:
            weights = _find_checkpoint(DEMO_MODEL_DIR)
            if weights is None:
                raise FileNotFoundError(f"the demo model's weights are missing from {DEMO_MODEL_DIR} "
                                        "(train them with scripts/train_demo_model.py)")
            _known_architectures()
            return ModelSpec(DEMO_MODEL_NAME, LOCAL_DIR_PREFIX + str(DEMO_MODEL_DIR), DEMO_TAG, weights)
        if name.startswith(HF_HUB_PREFIX):
            return ModelSpec(name, name)
        return _local_dir_spec(Path(name[len(LOCAL_DIR_PREFIX):]))
    known = _known_architectures()
    if name not in known:
        raise ModelSpecError(_unknown_model_message(name, known))
    if pretrained is None:
        return ModelSpec(name, name)
    path = Path(pretrained)
    if path.is_dir():
        weights = _find_checkpoint(path)
        if weights is None:
            raise FileNotFoundError(f"no weights file ({', '.join(DIR_CHECKPOINTS[:3])}, ...) in folder {path}")
        return ModelSpec(name, name, path.resolve().name, weights)
    if path.is_file():
        return ModelSpec(name, name, path.name, path)
    if os.sep in pretrained or "/" in pretrained or pretrained.lower().endswith(CHECKPOINT_SUFFIXES):
        raise FileNotFoundError(f"checkpoint file not found: {pretrained}")
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        known_tags = ", ".join(tags) if tags else "none: pass a checkpoint file"
        raise ModelSpecError(f"{pretrained!r} is neither a checkpoint file nor a pretrained tag of {name} "
                         f"(its tags: {known_tags})")
    return ModelSpec(name, name, pretrained, tag=pretrained)


def _local_dir_spec(folder: Path) -> ModelSpec:
    if not folder.is_dir():
        raise FileNotFoundError(f"local-dir: folder not found: {folder}")
    config_file = folder / "open_clip_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"local-dir: {folder} has no open_clip_config.json (open_clip's model folder layout)")
    config = read_model_config(config_file)
    _known_architectures()
    # A folder whose config is a known architecture takes that name, so the model id does not depend on where
    # (or under which folder name) the weights are kept.
    same = [n for n in open_clip.list_models() if factory._MODEL_CONFIGS.get(n) == config]
    display = folder.resolve().name
    return ModelSpec(same[0] if same else display, LOCAL_DIR_PREFIX + str(folder), display, _find_checkpoint(folder))


def _find_checkpoint(folder: Path) -> Path | None:
    for file_name in DIR_CHECKPOINTS:
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
