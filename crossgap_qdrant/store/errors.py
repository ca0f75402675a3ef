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


class ReadOnlyStoreError(CrossgapError, PermissionError):
    """An embedded Qdrant folder cannot be written, and its engine writes to its files even to read them."""


class PointNotFoundError(CrossgapError, KeyError):
    """A point-id query names a point that is absent or lacks the vector the query needs."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class IdConflictError(CrossgapError, ValueError):
    """A given point id already holds other content or another modality, and overwrite was not asked for."""


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


class UntranslatableError(CrossgapError, ValueError):
    """A qdrant-client request or filter uses something the Edge engine cannot run."""


class QdrantServerError(CrossgapError, RuntimeError):
    """A Qdrant server refused a request: the message gives the status and Qdrant's one-line reason, never the
    response body.

    Attributes:
        status_code: the HTTP status.
    """

    def __init__(self, message: str, status_code: int):
        super().__init__(message)
        self.status_code = status_code


class InvalidPointIdError(CrossgapError, ValueError):
    """A point id is neither an int in [0, 2**64) nor a UUID."""


class InvalidRequestError(CrossgapError, ValueError):
    """A store call's arguments or settings do not fit the collection or each other (the message names which
    and the fix)."""


class ReservedPayloadKeyError(InvalidRequestError):
    """A caller's payload sets a key the store writes itself (modality, content hash, hubness values, ...)."""


class CollectionClosedError(CrossgapError, RuntimeError):
    """A collection was used after :meth:`close`; open it again."""


class WarmStartNotFoundError(CrossgapError, LookupError):
    """A collection has no recorded warm start for a modality: fit one first."""


class ServerUnreachableError(CrossgapError, ConnectionError):
    """A Qdrant server gave no answer after every attempt or within the deadline."""


class ServerAuthError(CrossgapError, PermissionError):
    """A Qdrant server refused the credentials (401/403): check the api key."""


class AdoptedCollectionError(CrossgapError, ValueError):
    """A write or query an adopted collection cannot take: the user's points and source vector are never
    written, and a collection with a companion plans fusion and filters per side (the message says how)."""


class NoCompanionError(CrossgapError, TypeError):
    """A companion collection was asked of an engine that has none (only Edge and qdrant-client collections)."""


class NotFromStoredVectorsError(CrossgapError, ValueError):
    """A transform that cannot be computed exactly from stored (normalised) vectors: it needs the raw inputs."""
