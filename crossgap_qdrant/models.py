"""open_clip models: loading (frozen), plain encoders, and the pseudo-token encoders that inversion optimises.

The pseudo-token encoders here run the model's own forward code on the full sequence, so they are the
published algorithm by construction; crossgap_qdrant.inversion builds its fast paths on top and is tested
against them.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

PLACEHOLDER = "£"  # the published code's placeholder word: a single token in CLIP's BPE vocabulary


class UnsupportedModelError(ValueError):
    """The model lacks a part that an inversion needs (the message names it)."""


# ------------------------------------------------------------------------------------------------ loading
def register_model_config(name: str, config: dict[str, Any]) -> None:
    """Makes an open_clip architecture config available to :func:`load_model` under ``name``.

    Args:
        name: architecture name, e.g. "tiny-clip".
        config: the open_clip config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``, ...).
    """
    from open_clip import factory

    factory._MODEL_CONFIGS[name] = dict(config)


def load_model(
    name: str,
    pretrained: str | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
) -> tuple[nn.Module, Callable, Callable]:
    """Loads an open_clip model, frozen and in eval mode.

    Args:
        name: open_clip architecture, e.g. "ViT-B-32" (or one added with :func:`register_model_config`).
        pretrained: an open_clip pretrained tag (e.g. "laion2b_s34b_b79k", downloaded by open_clip), a path
            to a local checkpoint file, or None for random weights. None and a path never touch the network.
        device: where the model lives; default CUDA when available, else CPU.
        precision: open_clip precision ("fp32", "bf16", "fp16", ...).

    Returns:
        (model, preprocess, tokenizer): preprocess maps a PIL image to a [3, H, W] tensor; tokenizer maps a
        list of strings to [N, context_length] int64 token ids.
    """
    import open_clip

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {name!r}; see open_clip.list_models()")
    if pretrained is not None and (os.sep in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors"))):
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(f"checkpoint file not found: {pretrained}")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, device=device, precision=precision
        )
    except RuntimeError as exc:
        if pretrained is not None and not os.path.isfile(pretrained):
            raise RuntimeError(
                f"could not load pretrained weights {pretrained!r} for {name} ({exc}). Without network access, "
                "pass the path of a local checkpoint file as `pretrained`."
            ) from exc
        raise
    model.eval().requires_grad_(False)
    model.crossgap_model_name = name  # for backbone-specific defaults (e.g. OVI's token count)
    model.crossgap_pretrained = pretrained
    tokenizer = open_clip.get_tokenizer(name)
    return model, preprocess, tokenizer


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
        images: PIL images, image file paths, or preprocessed [3, H, W] tensors.

    Returns:
        [N, E] float32 on CPU.
    """
    from PIL import Image

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
            if isinstance(item, (str, os.PathLike)):
                with Image.open(item) as im:
                    item = im.convert("RGB")
            tensors.append(preprocess(item.convert("RGB")))
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
