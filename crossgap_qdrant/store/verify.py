"""Checking a collection end to end, and refusing impossible search results.

The embedded engine keeps no checksums: flipped bytes in a vector file give cosine scores of 100 and more, a
zeroed chunk scores everything 0, damaged deletion flags hide points from filtered counts. :func:`verify_collection`
reads every point once and checks what must hold; :func:`check_scores` refuses a cosine outside [-1, 1] in a
search's results.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from qdrant_client import models

from crossgap_qdrant.store.collection import Collection
from crossgap_qdrant.store.errors import CorruptCollectionError
from crossgap_qdrant.store.schema import METADATA_KEY

SCORE_SLACK = 1e-2
"""Cosine scores may exceed [-1, 1] by this much (float rounding, quantized candidates); beyond it they are read
from damaged vectors."""

NORM_SLACK = 1e-3
"""Stored Cosine vectors are unit vectors within this tolerance."""


def verify_hint(collection: Collection) -> str:
    return f"crossgap-qdrant verify --location {collection.location} --collection {collection.name}"


def check_scores(collection: Collection, requests: Sequence[models.QueryRequest],
                 results: Sequence[Sequence[models.ScoredPoint]]) -> None:
    """Raises CorruptCollectionError when a plain nearest-vector query (no fusion, no formula) returned a cosine
    score outside [-1 - SCORE_SLACK, 1 + SCORE_SLACK]."""
    for request, points in zip(requests, results):
        if request.prefetch or not isinstance(request.query, list):
            continue  # fused ranks and formula scores are not cosines
        for point in points:
            if not (isinstance(point.score, (int, float)) and abs(point.score) <= 1 + SCORE_SLACK):
                raise CorruptCollectionError(
                    f"collection {collection.name!r} at {collection.location} returned a cosine score of "
                    f"{point.score:.4g} for point {point.id} (vector {request.using!r}): its stored vectors are "
                    f"damaged. Check it with `{verify_hint(collection)}` and restore it from a backup.")


def verify_collection(collection: Collection, page_size: int = 256) -> dict[str, Any]:
    """Reads every point and checks: the point count against the scan, every point holding a vector, every vector
    finite, unit and of its declared size, each named vector's count against the scan, and the recorded model
    layout against the vectors.

    Returns:
        {"collection", "location", "points" (counted), "scanned", "vectors": {name: {"size", "counted", "scanned",
        "bad"}}, "problems": [one line each], "ok": bool}.

    Raises:
        CollectionNotFoundError: no such collection. CorruptCollectionError: the engine cannot read it at all.
    """
    schema = collection.schema()
    counted = collection.count()
    names = list(schema.vectors)
    stats = {name: {"size": spec.size, "counted": 0, "scanned": 0, "bad": 0} for name, spec in schema.vectors.items()}
    problems: list[str] = []
    scanned, empty, examples = 0, 0, {}
    for page in collection.pages(page_size=page_size, with_vectors=names or False):
        for record in page:
            scanned += 1
            empty += not record.vector
            for name, values in (record.vector or {}).items():
                entry = stats.setdefault(name, {"size": None, "counted": 0, "scanned": 0, "bad": 0})
                entry["scanned"] += 1
                reason = _vector_problem(values, entry["size"])
                if reason:
                    entry["bad"] += 1
                    examples.setdefault(name, f"point {record.id}: {reason}")
    if scanned != counted:
        problems.append(f"the collection counts {counted} points but a scan finds {scanned}")
    if names and empty:
        problems.append(f"{empty} of the {scanned} points hold no vector at all (damaged deletion flags?)")
    for name, entry in stats.items():
        has = models.Filter(must=[models.HasVectorCondition(has_vector=name)])
        entry["counted"] = collection.count(has) if name in schema.vectors else 0
        if entry["counted"] != entry["scanned"]:
            problems.append(f"vector {name!r}: {entry['counted']} points counted with it, {entry['scanned']} found "
                            "by a scan")
        if entry["bad"]:
            problems.append(f"vector {name!r}: {entry['bad']} stored vector(s) not finite unit vectors of size "
                            f"{entry['size']} (e.g. {examples[name]})")
    problems += _layout_problems(schema.metadata.get(METADATA_KEY) or {}, stats)
    return {"collection": collection.name, "location": collection.location, "points": counted, "scanned": scanned,
            "vectors": stats, "problems": problems, "ok": not problems}


def _vector_problem(values: Any, size: int | None) -> str | None:
    if not isinstance(values, list):
        return f"not a dense vector ({type(values).__name__})"
    if size is not None and len(values) != size:
        return f"{len(values)} values"
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return "not finite"
    norm = math.sqrt(sum(v * v for v in values))
    if abs(norm - 1.0) > NORM_SLACK:
        return f"norm {norm:.4g}"
    return None


def _layout_problems(recorded: dict[str, Any], stats: dict[str, dict[str, Any]]) -> list[str]:
    """The recorded model layout (crossgap metadata) against the collection's vectors."""
    if not recorded:
        return []
    problems = []
    dim = recorded.get("embed_dim")
    for role, name in (recorded.get("vector_names") or {}).items():
        if name not in stats:
            problems.append(f"the metadata names vector {name!r} ({role}), which the collection does not have")
        elif dim is not None and stats[name]["size"] != dim:
            problems.append(f"vector {name!r} has size {stats[name]['size']}, the recorded model width is {dim}")
    for name, entry in (recorded.get("derived") or {}).items():
        if name not in stats:
            problems.append(f"the metadata records derived vector {name!r}, which the collection does not have")
        elif isinstance(entry, dict) and entry.get("dim") not in (None, stats[name]["size"]):
            problems.append(f"derived vector {name!r} has size {stats[name]['size']}, recorded {entry.get('dim')}")
    return problems
