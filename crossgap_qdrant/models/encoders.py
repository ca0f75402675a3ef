"""The plain image and text encoders: unit features [N, E] float32 on CPU from images, texts, pixels or ids."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossgap_qdrant.images import load_pixels
from crossgap_qdrant.models.loading import ClipModel, model_device, takes_clip_model
from crossgap_qdrant.progress import progress_bar


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
        bar = progress_bar(len(items), desc, "item")
    out = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        out.append(encode_batch(batch))
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return torch.cat(out) if out else torch.empty(0, dim())


@takes_clip_model("preprocess")
def encode_images(clip: ClipModel, images: Sequence, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """Unit-norm image features of ``images``, encoded by ``clip``.

    The old form ``encode_images(model, preprocess, images)`` still works for one release (it warns once).

    Args:
        clip: the model handle (:func:`crossgap_qdrant.load_model` or :meth:`ClipModel.from_parts`).
        images: preprocessed [3, H, W] tensors, or anything :func:`crossgap_qdrant.images.load_image` reads
            (paths, PIL images, bytes), decoded by it (EXIF applied, transparency flattened onto white).

    Returns:
        [N, E] float32 on CPU.

    Raises:
        crossgap_qdrant.images.ImageError: an image that cannot be read (the message names it).
    """
    if clip.preprocess is None:
        raise TypeError("this ClipModel has no preprocess: make it with ClipModel.from_parts(model, preprocess, "
                        "tokenizer)")
    return _encode_in_batches(list(images), batch_size, progress, "encode images", lambda: clip.embed_dim,
                              lambda batch: encode_pixels(clip.model, load_pixels(clip.preprocess, batch)))


@takes_clip_model("tokenizer")
def encode_texts(clip: ClipModel, texts: Sequence[str], batch_size: int = 256, progress: bool = False
                 ) -> torch.Tensor:
    """Unit-norm text features [N, E] float32 on CPU of ``texts``, encoded by ``clip``; empty or blank texts are
    refused. The old form ``encode_texts(model, tokenizer, texts)`` still works for one release (it warns once)."""
    if clip.tokenizer is None:
        raise TypeError("this ClipModel has no tokenizer: make it with ClipModel.from_parts(model, preprocess, "
                        "tokenizer)")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text #{i} is empty or not a string: {text!r}")
    return _encode_in_batches(texts, batch_size, progress, "encode texts", lambda: clip.embed_dim,
                              lambda batch: encode_token_ids(clip.model, clip.tokenizer(list(batch))))


__all__ = ["encode_images", "encode_pixels", "encode_texts", "encode_token_ids"]
