"""How a search's results read on a terminal: which mode ran and what its scores are."""

from __future__ import annotations

from typing import Any, Sequence

from crossgap_qdrant.cli.common import format_table
from crossgap_qdrant.serve.results import score_kind

#: What a search's scores are, by kind: the column title of the table and the description JSON carries.
SCORE_KINDS = {
    "cosine": "cosine similarity (higher is closer)",
    "rrf": "reciprocal rank fusion of the two inter-modal routes: a rank score, not a similarity",
    "cosine - hubness": "cosine similarity minus the point's hubness (DBNorm)",
}


def hits_text(hits: Sequence[dict[str, Any]], query_modality: str, gallery: str, mode: str, hubness: bool) -> str:
    """The table of ``hits`` (rank, score under its kind, id, item) and a line naming the mode and the score.

    Args:
        hits: dicts with rank, score, id and payload (the file or the text is shown as the item).
    """
    kind = score_kind(mode, hubness)
    rows = []
    for hit in hits:
        payload = hit["payload"]
        rows.append((hit["rank"], f"{hit['score']:.4f}", hit["id"], payload.get("text") or payload.get("source") or ""))
    table = format_table(rows, ["rank", kind, "id", "item"]) if rows else "no results"
    return f"{table}\n{query_modality}->{gallery} search, mode {mode}; {kind}: {SCORE_KINDS[kind]}"
