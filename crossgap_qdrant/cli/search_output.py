"""What ``search`` prints and writes: a header line naming the search, the results as a table (modes side by
side with ``--compare``), JSON, and the ``--html`` contact sheet."""

from __future__ import annotations

import os
import sys
from typing import Any

from crossgap_qdrant.cli.common import PROG, UsageError, emit, format_table
from crossgap_qdrant.cli.search_table import SCORE_KINDS, hits_text

#: Longest item name in the side-by-side table, so that two or three columns fit a terminal.
ITEM_WIDTH = 28


def compare_modes(spec: str | None) -> list[str]:
    """The modes of ``--compare MODE[,MODE]`` (checked against the collection later)."""
    if spec is None:
        return []
    modes = [m.strip() for m in spec.split(",")]
    if not all(modes):
        raise UsageError(f"--compare takes mode names separated by commas, e.g. native,fused; got {spec!r}")
    return modes


def check_html_target(path: str | None) -> None:
    """Refuses an ``--html`` file that cannot be written, before the model loads."""
    if path is None:
        return
    if os.path.isdir(path):
        raise UsageError(f"--html {path}: is a folder; give a file name such as results.html")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"--html {path}: the folder {folder} does not exist; create it first")


def run_columns(store, args, query: Any, query_modality: str, gallery: str, mode: str) -> list:
    """The search in ``mode`` and in each ``--compare`` mode not already run, as SearchResults."""
    from crossgap_qdrant.serve.results import ImageQuery, modes_for, run_search

    galleries = gallery + "s"
    modes = [mode] + [m for m in dict.fromkeys(compare_modes(args.compare)) if m != mode]
    allowed = modes_for(store, query_modality, galleries)
    for m in modes[1:]:
        if m not in allowed:
            raise UsageError(f"--compare: mode {m!r} does not apply to {query_modality}->{gallery} search; use "
                             f"{', '.join(allowed)}")
    if args.text:
        given = {"text": query}
    elif isinstance(query, str):  # an image file
        given = {"image": ImageQuery.from_file(query, background=store.encoder.image_background)}
    else:
        given = {"point_id": query}
    return [run_search(store, **given, gallery=galleries, mode=m, limit=args.limit, hubness=args.hubness,
                       strict=args.strict)
            for m in modes]


def emit_results(args, results: list, collection: str) -> None:
    """Prints the header line and the table (or JSON), and writes ``--html``."""
    from crossgap_qdrant.serve.results import header_line

    first = results[0]
    data = {"query": args.query, "query_modality": first.query_modality, "gallery": first.gallery[:-1],
            "mode": first.mode, "score_kind": first.score_kind, "hubness": first.hubness,
            "score_description": SCORE_KINDS[first.score_kind], "query_excluded": first.query_excluded,
            "hits": _hits(first)}
    if len(results) > 1:
        data["columns"] = [{"mode": r.mode, "score_kind": r.score_kind, "hubness": r.hubness, "hits": _hits(r)}
                           for r in results]
    table = _side_by_side(results) if len(results) > 1 else _table(first)
    emit(args, data, f"{header_line(results)}\n{table}")
    if args.html:
        _write_sheet(args.html, results, collection)


def _hits(result) -> list[dict]:
    return [{"rank": h.rank, "id": h.id, "score": h.score, "payload": h.payload} for h in result.hits]


def _table(result) -> str:
    return hits_text(_hits(result), result.query_modality, result.gallery[:-1], result.mode, result.hubness)


def _side_by_side(results: list) -> str:
    depth = max(len(r.hits) for r in results)
    if depth == 0:
        return "no results"
    headers = ["rank"]
    for r in results:  # the score kind over each score column, the mode over its items
        headers += [r.score_kind, r.mode]
    rows = []
    for i in range(depth):
        row: list[Any] = [i + 1]
        for r in results:
            hit = r.hits[i] if i < len(r.hits) else None
            row += [f"{hit.score:.4f}", _short(hit.label)] if hit else ["", ""]
        rows.append(row)
    return format_table(rows, headers)


def _short(text: str) -> str:
    return text if len(text) <= ITEM_WIDTH else text[:ITEM_WIDTH - 3] + "..."


def _write_sheet(path: str, results: list, collection: str) -> None:
    from crossgap_qdrant.serve.contact_sheet import query_thumbnail, render_contact_sheet

    page = render_contact_sheet(results, collection=collection, query_thumbnail=query_thumbnail(results[0]))
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    print(f"{PROG}: contact sheet written to {path}", file=sys.stderr)
