"""``crossgap-qdrant evaluate``: every representation on a labelled set, a recommendation, and --apply."""

from __future__ import annotations

import math
import os
from pathlib import Path

from crossgap_qdrant.cli.adopt_commands import labelled_set_from_collection
from crossgap_qdrant.cli.common import EXIT_OK, UsageError, emit, format_table, parse_cuts
from crossgap_qdrant.cli.resources import (
    apply_image_limit,
    background_colour,
    described_collection,
    inversion_configs,
    load_handle,
    retry_policy,
)
from crossgap_qdrant.evaluate import (
    KNOWN_METHODS,
    METHODS,
    EvaluationConfig,
    apply_recommendation,
    evaluate,
    load_labelled_set,
    write_report,
)
from crossgap_qdrant.evaluate.data import read_images, read_lines
from crossgap_qdrant.evaluate.report import applied_text, recommendation_text


def summary_text(result) -> str:
    """The terminal summary: mAP with its CI and the paired difference to native per method (in %), read from
    the rows a recommendation uses; every metric, backend and cost is in --json and --out's report."""
    def pct(x):
        return "n/a" if x is None or math.isnan(x) else f"{100 * x:.2f}"

    def signed(x):
        return "n/a" if x is None or math.isnan(x) else f"{100 * x:+.2f}"

    rows = []
    for method, m in result.method_summary().items():
        diff = ("", "") if m["diff_vs_native"] is None else (
            signed(m["diff_vs_native"]), f"[{signed(m['diff_ci95'][0])}, {signed(m['diff_ci95'][1])}]")
        rows.append((method + (" *" if m["recommended"] else ""), pct(m["mAP"]),
                     f"[{pct(m['ci95'][0])}, {pct(m['ci95'][1])}]", *diff))
    table = format_table(rows, ["method", "mAP", "95% CI", "vs native", "95% CI of the difference"])
    backend = "torch" if result.by_backend("torch") else "qdrant"
    return (f"{table}\n(* recommended; {result.num_queries} queries, {backend} rows, chance mAP "
            f"{pct(result.chance_map)}; every metric, backend and cost: --json, --out)")


def cmd_evaluate(args) -> int:
    methods = METHODS
    if args.methods:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        unknown = [m for m in methods if m not in KNOWN_METHODS]
        if unknown or not methods:
            raise UsageError(f"unknown method(s) {', '.join(unknown) or '(none)'}; choose from "
                             f"{', '.join(KNOWN_METHODS)}")
    if args.apply_method is not None and args.apply_method not in methods:
        raise UsageError(f"--apply-method {args.apply_method!r} is not among the evaluated methods "
                         f"({', '.join(methods)})")
    if args.bootstrap < 1:
        raise UsageError(f"--bootstrap must be >= 1, got {args.bootstrap}")
    cuts = parse_cuts(args.isoclip)
    background = background_colour(args.background)
    if (args.data is None) == (args.label_field is None):
        raise UsageError("give the labelled data (a folder or file), or --label-field FIELD to evaluate on the "
                         "points of --collection (not both)")
    apply_image_limit(args)
    if args.label_field is not None:
        data = labelled_set_from_collection(args, args.label_field, args.label_modality)
    else:
        data = load_labelled_set(args.data, queries=args.queries)
    vocabulary = read_lines(args.vocabulary, "--vocabulary")
    if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out} is a file; give a folder for report.md, map.png and results.json")
    if args.apply or args.apply_method:
        described_collection(args)  # the collection to apply to exists: fail before the evaluation runs
    clip = load_handle(args)
    oti, ovi = inversion_configs(args)
    config = EvaluationConfig(
        methods=methods, oti_config=oti, ovi_config=ovi,
        isoclip_k_top=cuts[0] if cuts else None, isoclip_k_bottom=cuts[1] if cuts else None,
        vocabulary=vocabulary, vocabulary_source=f"--vocabulary {Path(args.vocabulary).name}" if vocabulary else None,
        gap_texts=read_lines(args.gap_texts, "--gap-texts"), gap_images=read_images(args.gap_images, "--gap-images"),
        backends=("torch", "qdrant") if args.backend == "both" else (args.backend,),
        bootstrap=args.bootstrap, qdrant_location=args.eval_location, api_key=args.api_key,
        qdrant_engine=args.engine, timeout=args.timeout, retry=retry_policy(args),
        image_background=background,
    )
    result = evaluate(clip, data, config, progress=args.progress)
    out = result.to_dict()
    text = f"{summary_text(result)}\n\n{recommendation_text(result)}"
    if args.out:
        paths = write_report(result, args.out)
        out["report"] = {k: str(v) for k, v in paths.items()}
        text += f"\nreport: {paths['markdown']}, plot: {paths['plot']}"
    if result.skipped:
        text += "\n" + "\n".join(f"skipped {m}: {why}" for m, why in result.skipped.items())
    if result.unreadable:  # each was named once, on stderr, when it was left out
        text += f"\n{len(result.unreadable)} unreadable or oversized image(s) left out (named above)"
    if args.apply or args.apply_method:
        applied = apply_recommendation(result, clip, args.location, args.collection, method=args.apply_method,
                                       engine=args.engine, api_key=args.api_key, timeout=args.timeout,
                                       retry=retry_policy(args), image_background=background,
                                       progress=args.progress)
        out["applied"] = applied
        text += "\n" + applied_text(applied)
    emit(args, out, text)
    return EXIT_OK
