"""The Qdrant adapter: native and inverted vectors side by side, resumable ingestion, inter-modal search.

Modules, one concern each:
    connection      retries with a total deadline, redaction of credentials
    ids             content-derived point ids and the id policy's content hash
    collection      the model-free collection interface (engines: edge.py, client_engine.py; engines.py opens)
    schema          vector names, derived vectors, the recorded model and the layout check
    encoder         raw inputs -> native, derived and inverted vectors (finite unit vectors only)
    ingest          identify, plan, encode, invert, write
    request         the modes, hubness correction and the validated SearchRequest
    search          query planning (cross-modal search, point-id queries, Qdrant requests)
    store           CrossModalStore, the facade
    adopt           adopting a collection another tool built (the record, the re-encoding check)
    companion       a single-unnamed-vector collection and its companion, seen as one collection
    backfill        one worker's resumable part of a backfill (backfill_ray: many, on Ray Data)
    stored_transforms  IsoCLIP and PCA vectors computed from stored native vectors
"""

from crossgap_qdrant.store.collection import Collection, CollectionSchema, VectorSpec
from crossgap_qdrant.store.connection import RetryPolicy, redact
from crossgap_qdrant.store.engines import open_collection
from crossgap_qdrant.store.errors import (
    CollectionNotFoundError,
    IdConflictError,
    PointNotFoundError,
    ReadOnlyStoreError,
    SchemaMismatchError,
    StorageFullError,
    StoreLockedError,
    VectorsNotStoredError,
)
from crossgap_qdrant.store.ids import (
    content_id,
    features_id,
    image_bytes_id,
    is_point_id,
    normalize_point_id,
    pil_image_id,
    text_id,
)
from crossgap_qdrant.store.ingest import IngestReport
from crossgap_qdrant.store.opening import describe_collection
from crossgap_qdrant.store.request import DEFAULT_MODE, MODES, HubCorrection, SearchRequest
from crossgap_qdrant.store.schema import METADATA_KEY, DerivedVector, VectorNames
from crossgap_qdrant.store.search import mode_vectors
from crossgap_qdrant.store.store import CrossModalStore

__all__ = [
    "Collection",
    "CollectionNotFoundError",
    "CollectionSchema",
    "CrossModalStore",
    "DEFAULT_MODE",
    "DerivedVector",
    "HubCorrection",
    "IdConflictError",
    "IngestReport",
    "METADATA_KEY",
    "MODES",
    "PointNotFoundError",
    "RetryPolicy",
    "SchemaMismatchError",
    "SearchRequest",
    "StorageFullError",
    "ReadOnlyStoreError",
    "StoreLockedError",
    "VectorNames",
    "VectorSpec",
    "VectorsNotStoredError",
    "content_id",
    "describe_collection",
    "features_id",
    "image_bytes_id",
    "is_point_id",
    "mode_vectors",
    "normalize_point_id",
    "open_collection",
    "pil_image_id",
    "redact",
    "text_id",
]
