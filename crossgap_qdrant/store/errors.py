"""The errors and warnings the store raises; each message names the problem and the fix."""

from __future__ import annotations

from crossgap_qdrant.errors import CrossgapError


class SchemaMismatchError(CrossgapError, ValueError):
    """An existing collection does not fit the model or the vector layout (the message names both)."""


class CollectionNotFoundError(CrossgapError, LookupError):
    """Reading a collection (search, info, evaluate) that does not exist: nothing is created by a read."""

    def __str__(self) -> str:  # LookupError would quote a single argument like KeyError does not, keep plain
        return str(self.args[0]) if self.args else ""


class VectorsNotStoredError(CrossgapError, LookupError):
    """A search mode needs vectors the collection does not hold yet (e.g. OTI vectors after --no-invert)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PartialCoverageError(VectorsNotStoredError):
    """A strict search in a mode whose vectors only some of the gallery holds (the message gives the counts and
    the command that completes them)."""


class PartialCoverageWarning(UserWarning):
    """A search in a mode whose vectors only some of the gallery holds: the others cannot be found in that mode
    (the message gives the counts and the command that completes them)."""


class StoreLockedError(CrossgapError, RuntimeError):
    """An embedded Qdrant folder is already open in another client (this process or another)."""


class PointNotFoundError(CrossgapError, KeyError):
    """A point-id query names a point that is absent or lacks the vector the query needs."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class IdConflictError(CrossgapError, ValueError):
    """A given point id already holds other content or another modality, and overwrite was not asked for."""


class ReservedPayloadKeyError(CrossgapError, ValueError):
    """A caller's payload sets a key the store writes itself (modality, content hash, hubness values, ...)."""


class StorageFullError(CrossgapError, OSError):
    """The disk under an embedded collection is full; what was stored before the failed write is intact."""


class CorruptMetadataError(CrossgapError, ValueError):
    """A collection's metadata sidecar cannot be read (the message names the file and the fix)."""


class CorruptCollectionError(CrossgapError, RuntimeError):
    """A collection's stored data is damaged: the engine failed on it, or what it returned is impossible (a
    cosine score outside [-1, 1], a count that disagrees with a scan). The message names the folder and the fix."""


class EngineError(CrossgapError, RuntimeError):
    """The embedded engine failed on an operation for a reason it did not explain as damage or a full disk (the
    message names the folder, the operation and the fix)."""


class ModelMismatchError(SchemaMismatchError):
    """The stored vectors were not made by the model given (shown by re-encoding stored sources)."""
