"""The errors the store raises; each message names the problem and the fix."""

from __future__ import annotations


class SchemaMismatchError(ValueError):
    """An existing collection does not fit the model or the vector layout (the message names both)."""


class CollectionNotFoundError(LookupError):
    """Reading a collection (search, info, evaluate) that does not exist: nothing is created by a read."""

    def __str__(self) -> str:  # LookupError would quote a single argument like KeyError does not, keep plain
        return str(self.args[0]) if self.args else ""


class VectorsNotStoredError(LookupError):
    """A search mode needs vectors the collection does not hold yet (e.g. OTI vectors after --no-invert)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class StoreLockedError(RuntimeError):
    """An embedded Qdrant folder is already open in another client (this process or another)."""


class PointNotFoundError(KeyError):
    """A point-id query names a point that is absent or lacks the vector the query needs."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class IdConflictError(ValueError):
    """A given point id already holds other content or another modality, and overwrite was not asked for."""


class StorageFullError(OSError):
    """The disk under an embedded collection is full; what was stored before the failed write is intact."""
