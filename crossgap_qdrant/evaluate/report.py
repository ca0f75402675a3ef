"""The evaluation report: a markdown table, a two-panel PNG and the JSON of an
:class:`~crossgap_qdrant.evaluate.EvaluationResult`."""

from __future__ import annotations

import json
import math
import os
import textwrap
from pathlib import Path

from crossgap_qdrant.evaluate.results import EvaluationResult, MethodResult, describe


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _signed(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:+.2f}"


def _ms(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def plotted_backend(result: EvaluationResult) -> str:
    """The backend whose rows the plot shows: torch when it ran (exact), else qdrant."""
    return "torch" if result.by_backend("torch") else "qdrant"


def markdown_table(result: EvaluationResult) -> str:
    """The per-method table of a result (metrics in %, costs in ms), one row per (method, backend)."""
    ks = sorted({int(k[2:]) for r in result.results for k in r.summary if k.startswith("P@")})
    k_max = ks[-1] if ks else 1
    header = ["method", "backend", "mAP", "95% CI", "Δ vs native", "95% CI of Δ", "mAP@R", "R-prec",
              *[f"P@{k}" for k in ks], f"R@{k_max}", "search ms", "query model ms", "ingest ms/item", "recommended"]
    rec = result.recommendation
    chosen = next((r for r in result.decision_rows() if rec and r.method == rec["method"]), None)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in result.results:
        s = r.summary
        if r.diff_vs_native is None:
            diff = ["reference" if r.method == "native" else "n/a", ""]
        else:
            mean, low, high = r.diff_vs_native
            diff = [_signed(mean), f"{_signed(low)} to {_signed(high)}"]
        row = [r.method, r.backend, _pct(s["mAP"]), f"{_pct(r.map_ci[0])} to {_pct(r.map_ci[1])}", *diff,
               _pct(s["mAP@R"]), _pct(s["R-precision"]), *[_pct(s[f"P@{k}"]) for k in ks],
               _pct(s[f"R@{k_max}"]), _ms(r.search_ms), _ms(r.query_compute_ms), _ms(r.ingest_ms_per_item),
               "yes" if r is chosen else ""]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _plot(result: EvaluationResult, path: Path) -> None:
    """Left: mAP per method with 95% bootstrap CIs and the chance level; right: paired differences vs native."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backend = plotted_backend(result)
    rows = result.by_backend(backend)
    diffs: list[MethodResult] = [r for r in rows if r.diff_vs_native is not None]
    x = range(len(rows))
    fig, (ax, ax_d) = plt.subplots(1, 2, figsize=(max(9.0, 1.3 * len(rows) + 4.5), 4.6),
                                   gridspec_kw={"width_ratios": [len(rows), max(len(diffs), 1)]})
    maps = [100 * r.summary["mAP"] for r in rows]
    lows = [max(0.0, m - 100 * r.map_ci[0]) for m, r in zip(maps, rows)]
    highs = [max(0.0, 100 * r.map_ci[1] - m) for m, r in zip(maps, rows)]
    chosen = (result.recommendation or {}).get("method")
    from matplotlib.patches import Patch

    colours = ["#dd8452" if r.method == chosen else "#4c72b0" for r in rows]
    ax.bar(x, maps, yerr=[lows, highs], capsize=4, color=colours)
    handles = [Patch(color="#4c72b0", label="mAP, 95% bootstrap CI")]
    if chosen is not None:
        handles.append(Patch(color="#dd8452", label=f"recommended: {chosen}"))
    if not math.isnan(result.chance_map):
        handles.append(ax.axhline(100 * result.chance_map, color="#555555", linestyle="--", linewidth=1,
                                  label=f"chance (random ranking): {100 * result.chance_map:.1f}%"))
    ax.set_xticks(list(x), [r.method for r in rows], rotation=35, ha="right")
    ax.set_ylabel("mAP (%)")
    ax.set_ylim(0, max([m + h for m, h in zip(maps, highs)] + [1.0]) * 1.3)  # headroom for the legend
    ax.set_yticks([t for t in ax.get_yticks() if 0 <= t <= 100])
    ax.set_title("mAP per method\n(95% bootstrap CI)", fontsize=10)
    ax.legend(handles=handles, fontsize=8, loc="upper left")

    if diffs:
        d = [100 * r.diff_vs_native[0] for r in diffs]
        d_lo = [v - 100 * r.diff_vs_native[1] for v, r in zip(d, diffs)]
        d_hi = [100 * r.diff_vs_native[2] - v for v, r in zip(d, diffs)]
        colours = ["#55a868" if r.diff_vs_native[1] > 0 else "#c44e52" if r.diff_vs_native[2] < 0 else "#8c8c8c"
                   for r in diffs]
        ax_d.bar(range(len(diffs)), d, yerr=[d_lo, d_hi], capsize=4, color=colours)
        ax_d.set_xticks(range(len(diffs)), [r.method for r in diffs], rotation=35, ha="right")
        low = min([0.0] + [v - e for v, e in zip(d, d_lo)])
        high = max([0.0] + [v + e for v, e in zip(d, d_hi)])
        pad = 0.1 * (high - low) or 1.0
        ax_d.set_ylim(low - pad, high + pad)  # zero always inside, never on the frame
    else:
        ax_d.text(0.5, 0.5, "native not evaluated:\nno paired differences", ha="center", va="center",
                  transform=ax_d.transAxes)
        ax_d.set_xticks([])
    for label in [*ax.get_xticklabels(), *ax_d.get_xticklabels()]:
        if label.get_text() == chosen:
            label.set_fontweight("bold")
    ax_d.axhline(0, color="black", linewidth=0.8)
    ax_d.set_ylabel("mAP - native mAP (points)")
    ax_d.set_title("difference vs native\n(95% paired bootstrap CI)", fontsize=10)

    title = f"{result.dataset or 'dataset'}: {result.model_name or 'model'}"
    agreement = result.agreement()
    note = (f" (qdrant backend: largest metric difference {max(agreement.values()):.1e})" if agreement else "")
    if backend == "torch" and result.crossfitted:
        note += f"; {', '.join(result.crossfitted)}: cross-fitted"
    subtitle = (f"{result.modality}->{result.modality} retrieval, {result.num_queries} queries, gallery "
                f"{result.num_gallery}; backend: {backend}{note}; differences: green = CI above 0, red = below, "
                "grey = includes 0")
    fig.suptitle("\n".join(textwrap.wrap(title, 90)[:2]), fontsize=12)
    fig.text(0.5, 0.005, subtitle, ha="center", va="bottom", fontsize=8, color="#444444")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def recommendation_text(r: EvaluationResult) -> str:
    """One paragraph: the recommended method, its gain over native with the CI, and the rule."""
    rec = r.recommendation
    if rec is None:
        return "No recommendation: native was not evaluated, so no method could be compared with it."
    diff = rec["diff_vs_native"]
    gain = "" if diff is None else (f" ({_signed(diff[0])} points vs native, 95% CI {_signed(diff[1])} to "
                                    f"{_signed(diff[2])})")
    hub = ", hubness correction" if rec["hubness"] else ""
    return (f"Recommended: {rec['method']} (search mode {rec['mode']}{hub}): mAP {_pct(rec['mAP'])}{gain}, read from "
            f"the {rec['backend']} rows. Rule: {rec['rule']}. "
            f"{rec['reason'][0].upper()}{rec['reason'][1:]}.")


def applied_text(applied: dict) -> str:
    """What :func:`~crossgap_qdrant.evaluate.apply_recommendation` did, in one line."""
    extra = [f"{applied['computed']} point(s) given the {applied['mode']} vector"] if applied["computed"] else []
    if applied["hubness_fit"]:
        extra.append(f"hubness statistics fitted on {applied['hubness_fit']['points']} point(s)")
    return (f"applied to collection {applied['collection']} at {applied['location']}: {applied['modality']} searches "
            f"now default to mode {applied['mode']}{' with hubness correction' if applied['hubness'] else ''}"
            + (f" ({'; '.join(extra)})" if extra else ""))


def _representation_lines(r: EvaluationResult) -> list[str]:
    """What was fitted for the rivals (IsoCLIP cuts and their source, PCA vocabulary, gap shift, hubness)."""
    lines = []
    iso = r.representations.get("isoclip")
    if iso:
        how = {"published": "the authors' published cuts for this backbone", "given": "cuts given by the user",
               "tuned": "cuts chosen on this sample from a grid (no published cuts for this backbone); the torch "
                        "row is cross-fitted: each query scored with the cuts chosen on the other half"}
        lines.append(f"- isoclip: drops the top {iso['k_top']} and bottom {iso['k_bottom']} of {iso['rank']} "
                     f"singular directions; {how.get(iso['cuts_source'], iso['cuts_source'])}")
    pca = r.representations.get("pca")
    if pca:
        lines.append(f"- pca: top {pca['directions']} of {pca['width']} principal directions of the text "
                     f"embeddings of {pca['num_texts']} texts: {pca['vocabulary']}")
    if "gap_shift" in r.representations:
        lines.append("- gap_shift: the query moved across the modality gap (mean swap), compared with the native "
                     "gallery")
    hub = r.representations.get("hubness")
    if hub:
        lines.append(f"- _hub: {hub['method']}, temperature {hub['temperature']}, weight {hub['weight']}, banks: "
                     f"{hub['bank_size']} of {hub['banks']}")
    return (["Fitted on this sample:", *lines, ""] if lines else [])


def write_report(results: EvaluationResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Writes report.md (markdown table), map.png (mAP with CIs, differences vs native) and results.json.

    Args:
        results: what :func:`~crossgap_qdrant.evaluate.evaluate` returned.
        out_dir: created if missing.

    Returns:
        {"markdown": ..., "plot": ..., "json": ...} paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "plot": out / "map.png", "json": out / "results.json"}
    r = results
    methods = list(dict.fromkeys(m.method for m in r.results))
    lines = [
        f"# Retrieval evaluation: {r.dataset or 'dataset'}",
        "",
        f"- model: {r.model_name}; {r.modality} -> {r.modality} retrieval",
        f"- gallery: {r.num_gallery} items; queries: {r.num_queries}; chance mAP (random ranking): "
        f"{_pct(r.chance_map)}",
        "- metrics in %, full ranking, ties broken pessimistically; 95% CI: percentile bootstrap over queries; "
        "Δ vs native: mean per-query AP difference on the same backend, 95% CI by a paired bootstrap (the same "
        "resampled queries for both methods)",
        "- P@k: precision at k; R@k: recall at k (relevant items in the top k / all relevant items)",
        "- search ms: median Qdrant query time at limit 10; query model ms: encoding (+ inversion or projection) "
        "per query; ingest ms/item: model time per gallery item for the vectors the method searches",
        f"- plot (map.png): the {plotted_backend(r)} backend",
        "",
        f"**{recommendation_text(r)}**",
        "",
        markdown_table(r),
        "",
        "Methods:",
        *[f"- {m}: {describe(r.modality, m)}" for m in methods],
        "",
        *_representation_lines(r),
    ]
    agreement = r.agreement()
    if agreement:
        left_out = f" ({', '.join(r.crossfitted)} left out: cross-fitted)" if r.crossfitted else ""
        lines += [f"Largest torch/Qdrant difference over all metrics{left_out}: {max(agreement.values()):.2e}", ""]
    if r.skipped:
        lines += ["Skipped:", *[f"- {m}: {why}" for m, why in r.skipped.items()], ""]
    if r.ingest:
        lines += ["Qdrant ingestion: " + ", ".join(f"{k} {v:.3g}" for k, v in r.ingest.items()), ""]
    paths["markdown"].write_text("\n".join(lines), encoding="utf-8")
    _plot(r, paths["plot"])
    paths["json"].write_text(json.dumps(r.to_dict(), indent=2), encoding="utf-8")
    return paths
