"""Points between qdrant-client's models and the Edge engine's: named vectors in, records and scored points
out, and the quantization settings Edge takes."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import qdrant_edge as qe
from qdrant_client import models

from crossgap_qdrant.store.edge_filters import client_point_id
from crossgap_qdrant.store.errors import InvalidRequestError


def named_vectors(vector: Any, point_id: Any) -> dict[str, list[float]]:
    """A point's ``{name: [floats]}`` (arrays and tensors as lists); InvalidRequestError for anything else."""
    if not isinstance(vector, Mapping):
        raise InvalidRequestError(f"point {point_id!r}: the Edge engine stores named vectors only "
                                  f"({{name: [floats]}}), got {type(vector).__name__}")
    out = {}
    for name, values in vector.items():
        if hasattr(values, "tolist"):
            values = values.tolist()
        if not isinstance(values, list) or (values and not isinstance(values[0], (int, float))):
            raise InvalidRequestError(f"point {point_id!r}: vector {name!r} is not a dense vector of floats "
                                      "(sparse and multi-vectors are not used by crossgap-qdrant)")
        out[name] = values
    return out


def batch_bytes(vectors: Sequence[Mapping[str, list]]) -> int:
    """Rough bytes a batch adds (float32 vectors; payload not counted, it is small next to them)."""
    return sum(4 * len(v) for named in vectors for v in named.values())


def _vectors_out(vector: Any, with_vectors: Any) -> Any:
    if not with_vectors:
        return None
    if isinstance(vector, list):  # a collection's single unnamed vector (adopted collections)
        return {"": vector}
    return dict(vector) if vector else {}


def _payload_out(payload: Any, with_payload: Any) -> Any:
    if with_payload is False or with_payload is None:
        return None
    return dict(payload) if payload else {}


def record(point: qe.Record, with_payload: Any, with_vectors: Any) -> models.Record:
    """qdrant-client's Record of an Edge record."""
    return models.Record(id=client_point_id(point.id), payload=_payload_out(point.payload, with_payload),
                         vector=_vectors_out(point.vector, with_vectors))


def scored(point: qe.ScoredPoint, with_payload: Any, with_vectors: Any) -> models.ScoredPoint:
    """qdrant-client's ScoredPoint of an Edge search hit."""
    return models.ScoredPoint(id=client_point_id(point.id), version=point.version, score=point.score,
                              payload=_payload_out(point.payload, with_payload),
                              vector=_vectors_out(point.vector, with_vectors))


def edge_quantization(config: Any) -> Any:
    """Edge's quantization config of qdrant-client's (scalar or binary; None for none)."""
    if config is None:
        return None
    if isinstance(config, models.ScalarQuantization):
        scalar = config.scalar
        return qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=scalar.quantile,
                                           always_ram=scalar.always_ram)
    if isinstance(config, models.BinaryQuantization):
        return qe.BinaryQuantizationConfig(always_ram=config.binary.always_ram)
    raise InvalidRequestError(f"the Edge engine takes scalar or binary quantization, not {type(config).__name__}; "
                              "use a Qdrant server for product quantization")
