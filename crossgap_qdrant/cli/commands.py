"""The commands that work on a collection: ingest, invert, search, fit-warm-start, info, verify."""

from __future__ import annotations

import os
import sys
import uuid
from typing import Any

from crossgap_qdrant.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    PROG,
    UsageError,
    adopted_lines,
    emit,
    format_table,
    report_rows,
)
from crossgap_qdrant.cli.resources import (
    apply_image_limit,
    described_collection,
    load_handle,
    open_store,
    require_collection,
)
from crossgap_qdrant.cli.search_output import check_html_target, compare_modes, emit_results, run_columns
from crossgap_qdrant.store import MODES, is_point_id
from crossgap_qdrant.store.request import DEFAULT_MODE


def cmd_ingest(args) -> int:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    for path in args.inputs:
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such file or folder: {path}")
    apply_image_limit(args)
    clip = load_handle(args)
    totals: dict[str, Any] = {"inserted": 0, "skipped_existing": 0, "inverted": 0, "duplicates": 0, "failed": [],
                              "seconds_encoding": 0.0, "seconds_inversion": 0.0, "seconds_database": 0.0}
    items = 0
    with open_store(args, clip) as store:
        for path in args.inputs:
            ingest = store.ingest_texts if args.texts else store.ingest_images
            report = ingest(path, invert=not args.no_invert, batch_size=args.batch_size, progress=args.progress)
            items += len(report.ids)
            report_rows(report, totals)
        totals["points"] = store.count()
        totals["engine"] = store.engine
    totals["failed"] = [{"item": str(item), "reason": reason} for item, reason in totals["failed"]]
    rows = [(k, f"{v:.2f}" if isinstance(v, float) else v) for k, v in totals.items() if k != "failed"]
    text = format_table(rows, ["", "value"])
    if totals["failed"]:
        text += "\nfailed:\n" + "\n".join(f"  {f['item']}: {f['reason']}" for f in totals["failed"])
    emit(args, totals, text)
    if items and len(totals["failed"]) == items:
        print(f"{PROG}: error: every input failed; nothing was ingested", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def cmd_invert(args) -> int:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    require_collection(args)
    clip = load_handle(args)
    with open_store(args, clip, create=False) as store:
        report = store.invert_missing(args.modality, batch_size=args.batch_size, progress=args.progress)
    data = {"inverted": report.inverted, "failed": [{"item": str(i), "reason": r} for i, r in report.failed],
            "seconds_inversion": report.seconds_inversion}
    text = f"inverted {report.inverted} {args.modality}(s)"
    if report.failed:
        text += "\nfailed:\n" + "\n".join(f"  {f['item']}: {f['reason']}" for f in data["failed"])
    emit(args, data, text)
    return EXIT_OK


def cmd_search(args) -> int:
    if args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    compare_modes(args.compare)
    check_html_target(args.html)
    query: Any = args.query
    gallery = args.gallery[:-1]  # "image" | "text"
    query_modality = "text" if args.text else "image"
    point_id = False
    if args.text and not query.strip():
        raise UsageError("the text query is empty; give a text, e.g. search \"a red apple\" --text")
    if not args.text and not os.path.exists(query):
        if not query.isdigit() and not is_point_id(query):
            raise UsageError(f"{query!r} is neither an image file nor a point id; for a text query add --text")
        query = int(query) if query.isdigit() else uuid.UUID(query)  # ids as objects: never read as text
        point_id = True
    require_collection(args)
    apply_image_limit(args)
    clip = load_handle(args)
    with open_store(args, clip, create=False) as store:
        if point_id:  # a stored point is an image or a text: the collection says which
            query_modality = store.modality_of(query)
        if query_modality != gallery and args.mode not in (None, "native"):
            raise UsageError(f"{query_modality}->{gallery} search compares native CLIP vectors; --mode {args.mode} "
                             f"is for {gallery}->{gallery} search")
        derived = store.encoder.derived_for(gallery)
        if args.mode is not None and args.mode not in MODES and args.mode not in derived:
            raise UsageError(f"--mode must be one of {', '.join(MODES + tuple(derived))}, got {args.mode!r}")
        mode = args.mode or (store.default_mode(gallery) if query_modality == gallery else "native")
        if args.hubness and query_modality != gallery:
            raise UsageError(f"--hubness applies to {gallery}->{gallery} search, not {query_modality}->{gallery}")
        results = run_columns(store, args, query, query_modality, gallery, mode)
    emit_results(args, results, args.collection)
    return EXIT_OK


def cmd_info(args) -> int:
    info = compact(described_collection(args, verify=getattr(args, "verify", False)))
    info["vectors"] = dict(sorted(info["vectors"].items()))
    recorded = info.get("default_modes") or {}
    info["default_modes"] = {m: recorded.get(m, DEFAULT_MODE) for m in ("image", "text")}
    rows = [(name, v["size"], v["distance"], v["points"]) for name, v in info["vectors"].items()]
    modes = ", ".join(f"{m}->{m} {mode}{'' if m in recorded else ' (default)'}"
                      for m, mode in info["default_modes"].items())
    text = "\n".join([
        f"collection: {info['collection']} at {info['location']} ({info['engine']})",
        f"model: {info['model'] or 'unknown (not recorded)'}, id {info['model_id']} "
        f"(embedding width {info['embed_dim']})",
        f"points: {info['points']}",
        *adopted_lines(info.get("adopted")),
        f"search mode: {modes}",
        "",
        format_table(rows, ["vector", "size", "distance", "points"]),
    ])
    if "verify" in info:
        text += "\n" + verify_text(info["verify"])
    emit(args, info, text)
    return verify_exit(info.get("verify"))


def cmd_verify(args) -> int:
    report = described_collection(args, verify=True)["verify"]
    emit(args, report, verify_text(report))
    return verify_exit(report)


def verify_text(report: dict) -> str:
    if report["ok"]:
        return (f"verified: {report['scanned']} points, every vector a finite unit vector, counts agree with the "
                "scan, the recorded layout fits")
    return "\n".join(["verification failed:"] + [f"  {p}" for p in report["problems"]])


def verify_exit(report: dict | None) -> int:
    """EXIT_ERROR, with one line on stderr, when a verification found problems."""
    if report is None or report["ok"]:
        return EXIT_OK
    print(f"{PROG}: error: collection {report['collection']!r} at {report['location']} fails verification "
          f"({len(report['problems'])} problem(s): {report['problems'][0]}); restore it from a backup",
          file=sys.stderr)
    return EXIT_ERROR


def compact(value: Any, longest: int = 200) -> Any:
    """``value`` with long strings (a fitted basis in base64) and long number lists replaced by their size."""
    if isinstance(value, str) and len(value) > longest:
        return f"<{len(value)} characters>"
    if isinstance(value, list) and len(value) > 16 and all(isinstance(v, (int, float)) for v in value):
        return f"<{len(value)} numbers>"
    if isinstance(value, dict):
        return {k: compact(v, longest) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [compact(v, longest) for v in value]
    return value


def cmd_fit_warm_start(args) -> int:
    if args.sample is not None and args.sample < 2:
        raise UsageError(f"--sample must be >= 2, got {args.sample}")
    if args.warm_steps is not None and args.warm_steps < 0:
        raise UsageError(f"--warm-steps must be >= 0, got {args.warm_steps}")
    if args.epochs < 0:
        raise UsageError(f"--epochs must be >= 0, got {args.epochs}")
    require_collection(args)
    clip = load_handle(args)
    with open_store(args, clip, create=False, use_warm_start=False) as store:
        fit = store.fit_warm_start(args.modality, sample=args.sample, steps=args.warm_steps, path=args.file,
                                   progress=args.progress, epochs=args.epochs)
        record = store.info()["warm_start"][args.modality]
    # the budget used from now on (--warm-steps, else the fit's recommendation) after the fit's own figures
    data = {**fit.to_dict(), "modality": args.modality, "file": record["file"], "steps": record["steps"],
            "lr": record["lr"]}
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else v) for k, v in data.items()]
    emit(args, data, format_table(rows, ["", "value"]))
    return EXIT_OK
