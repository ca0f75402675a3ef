"""What the service's routes share: the open store, the lock serialising its use, and the request limits."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from crossgap_qdrant.errors import CrossgapError
from crossgap_qdrant.serve.thumbnails import THUMB_SIZE


@dataclass(frozen=True)
class ServiceLimits:
    """What one request may ask of the service.

    Attributes:
        max_upload_bytes: size of an uploaded query image.
        max_pixels: pixels of an uploaded query image (checked before it is decoded).
        max_limit: results per search.
        thumb_size: the longest side of a thumbnail, in pixels.
    """

    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 25_000_000
    max_limit: int = 100
    thumb_size: int = THUMB_SIZE

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_limit", "thumb_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


class ServiceError(CrossgapError, ValueError):
    """A request the service refuses; ``status`` is its HTTP status (4xx)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Service:
    """What the routes share: the store, the lock serialising its use, and the limits.

    The store's engines open their shards lazily and are not safe to enter from two threads at once, while
    FastAPI runs plain endpoints in a thread pool: every use of the store holds :attr:`lock`.
    """

    def __init__(self, store: Any, limits: ServiceLimits):
        self.store = store
        self.limits = limits
        self.lock = threading.Lock()
