"""Point ids: content-derived by default, user-given when asked, and the policy for reusing them.

An item's default point id is uuid5 of its modality and the sha256 of its content, so the same file, text or
feature row gets the same id wherever it comes from, and a re-run finds what is already stored. Every point
also records that digest in its payload (:data:`CONTENT_KEY`), which is how a user-given id is checked: reusing
an id for other content or another modality is an :class:`~crossgap_qdrant.store.errors.IdConflictError`
unless the caller asks to overwrite.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from typing import Any, Union

import numpy as np
import torch
from PIL import Image

from crossgap_qdrant.store.errors import InvalidPointIdError

ID_NAMESPACE = uuid.UUID("5b0f6c1e-3c55-4a43-9a55-6f2c0d7e9b11")  # fixed forever: point ids derive from it
CONTENT_KEY = "content_sha256"  # payload field: "<modality>:<sha256 hex>" of the item's content
MAX_INT_ID = 2**64 - 1  # Qdrant's integer ids are unsigned 64-bit

PointId = Union[int, str]


def content_id(modality: str, digest: str) -> str:
    """The point id of an item: uuid5 of its modality and the sha256 hex digest of its content."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{modality}:{digest}"))


def bytes_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pil_digest(image) -> str:
    """Digest of an in-memory PIL image from its mode, size and pixels."""
    h = hashlib.sha256(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def features_digest(features: torch.Tensor) -> str:
    """Digest of a precomputed feature row [E] (hashed as little-endian float32)."""
    data = features.detach().to(torch.float32).cpu().contiguous().numpy().astype("<f4").tobytes()
    return "features:" + hashlib.sha256(data).hexdigest()


def image_bytes_id(data: bytes) -> str:
    """Point id of an image file from its bytes (the same file gives the same id wherever it lives)."""
    return content_id("image", bytes_digest(data))


def pil_image_id(image) -> str:
    """Point id of an in-memory PIL image."""
    return content_id("image", pil_digest(image))


def file_image_id(path: str) -> str:
    """Point id of an image file stored from its path (:func:`image_bytes_id` of its bytes)."""
    with open(path, "rb") as f:
        return image_bytes_id(f.read())


def decoded_image_id(data: bytes) -> str | None:
    """Point id of the image in ``data`` stored as the PIL image opened from it (:func:`pil_image_id`); None when
    PIL cannot decode it. With :func:`image_bytes_id` it names an image's point whichever way it was stored."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return pil_image_id(image)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def text_id(text: str) -> str:
    return content_id("text", text_digest(text))


def features_id(modality: str, features: torch.Tensor) -> str:
    """Point id of a precomputed feature row [E]."""
    return content_id(modality, features_digest(features))


def normalize_point_id(pid: Any) -> PointId:
    """Checks a point id: an int in [0, 2**64) or a UUID (returned as its canonical string)."""
    if isinstance(pid, bool):
        raise InvalidPointIdError(f"invalid point id {pid!r}: use a non-negative int or a UUID")
    if isinstance(pid, (int, np.integer)):
        if not 0 <= int(pid) <= MAX_INT_ID:
            raise InvalidPointIdError(f"invalid point id {pid!r}: integer ids must be in [0, 2**64)")
        return int(pid)
    if isinstance(pid, uuid.UUID):
        return str(pid)
    if isinstance(pid, str):
        try:
            return str(uuid.UUID(pid))
        except ValueError:
            pass
    raise InvalidPointIdError(f"invalid point id {pid!r}: Qdrant accepts ints in [0, 2**64) and UUIDs")


def is_point_id(value: Any) -> bool:
    """True for a value that names a point: an int, a uuid.UUID, or a string in canonical UUID form."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (uuid.UUID, int, np.integer)):
        return True
    if isinstance(value, str):
        try:
            uuid.UUID(value)
        except ValueError:
            return False
        return len(value) >= 32
    return False
