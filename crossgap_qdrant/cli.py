"""The ``crossgap-qdrant`` command line: ingest, search, evaluate, info.

Examples::

    crossgap-qdrant ingest photos/ --model ViT-B-32 --pretrained openai --location ./qdrant_data
    crossgap-qdrant search query.jpg --mode gallery_inverted --limit 5
    crossgap-qdrant evaluate labelled_photos/ --out report/ --steps 50
    crossgap-qdrant info --json

Exit codes: 0 success; 1 runtime or data error (missing files, unreadable data, a collection built with
another model, a locked folder, an unreachable server, ...); 2 usage error (bad flags or arguments). Errors
are one line on stderr, prefixed "crossgap-qdrant: error:"; ``--debug`` shows the traceback instead.
``--json`` prints one JSON document on stdout; otherwise human-readable tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
PROG = "crossgap-qdrant"


class UsageError(Exception):
    """Arguments that parse but do not make sense together (exit code 2)."""


# --------------------------------------------------------------------------------------------- parsing
def _common(parser: argparse.ArgumentParser, location_default: str | None = "./qdrant_data") -> None:
    g = parser.add_argument_group("model and collection")
    g.add_argument("--model", default="ViT-B-32", help="open_clip architecture (default: %(default)s)")
    g.add_argument("--pretrained", default=None,
                   help="open_clip pretrained tag or a local checkpoint path (default: random weights)")
    g.add_argument("--model-config", default=None, metavar="JSON",
                   help="an open_clip model config file, registered under the --model name")
    g.add_argument("--seed", type=int, default=0, help="seed of random weights when --pretrained is not given")
    g.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    g.add_argument("--collection", default="crossgap", help="Qdrant collection (default: %(default)s)")
    g.add_argument("--location", default=location_default,
                   help="a folder (embedded Qdrant), ':memory:', or a server URL (default: %(default)s)")
    g.add_argument("--api-key", default=os.environ.get("QDRANT_API_KEY"),
                   help="Qdrant server API key (default: $QDRANT_API_KEY)")
    g.add_argument("--steps", type=int, default=None, help="inversion steps (OTI and OVI), overriding the published")
    g.add_argument("--isoclip", default=None, metavar="TOP,BOTTOM",
                   help="add the IsoCLIP vector (<modality>_isoclip) with these singular-direction cuts")
    g.add_argument("--json", action="store_true", help="print JSON instead of tables")
    g.add_argument("--progress", action="store_true", help="show progress bars on stderr")
    g.add_argument("--debug", action="store_true", help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inter-modal image and text search in Qdrant (OTI/OVI modality inversion).",
        epilog="Exit codes: 0 ok, 1 runtime or data error, 2 usage error.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("ingest", help="add images (folders or files) or texts to a collection")
    p.add_argument("inputs", nargs="+", help="image folders or files; with --texts, text files (one text a line)")
    p.add_argument("--texts", action="store_true", help="inputs are text files")
    p.add_argument("--no-invert", action="store_true", help="store native (and derived) vectors only")
    p.add_argument("--batch-size", type=int, default=64)
    _common(p)

    p = sub.add_parser("search", help="search images (or texts with --text) in a collection")
    p.add_argument("query", help="an image file, a stored point id, or with --text a text")
    p.add_argument("--text", action="store_true", help="the query is a text: text->text search")
    p.add_argument("--mode", default="gallery_inverted",
                   help="native, gallery_inverted, query_inverted, fused, or a derived vector name "
                        "(default: %(default)s)")
    p.add_argument("--limit", type=int, default=10)
    _common(p)

    p = sub.add_parser("evaluate", help="measure every representation on a labelled set; write a report")
    p.add_argument("data", help="a folder of class subfolders of images, a labelled text file "
                                "('label<TAB>text' lines or JSON lines), or with --queries the gallery file")
    p.add_argument("--queries", default=None, help="query file of a query/gallery split ('label<TAB>item' lines)")
    p.add_argument("--out", default=None, help="folder for report.md, map.png and results.json")
    p.add_argument("--methods", default=None, help="comma-separated subset of the methods (default: all)")
    p.add_argument("--backend", choices=("torch", "qdrant", "both"), default="both")
    p.add_argument("--gap-texts", default=None, help="text file to fit the gap shift's text mean (image sets)")
    p.add_argument("--gap-images", default=None,
                   help="image folder (searched recursively) to fit the gap shift's image mean (text sets)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the mAP CI")
    _common(p, location_default=":memory:")

    p = sub.add_parser("info", help="collection, model, vector names and counts")
    _common(p)
    return parser


# ------------------------------------------------------------------------------------------ helpers
def _parse_cuts(spec: str | None) -> tuple[int, int] | None:
    if spec is None:
        return None
    try:
        top, bottom = (int(x) for x in spec.split(","))
    except ValueError:
        raise UsageError(f"--isoclip takes TOP,BOTTOM (two integers), got {spec!r}") from None
    if top < 0 or bottom < 0:
        raise UsageError(f"--isoclip cuts must be >= 0, got {spec!r}")
    return top, bottom


def _model_id(args) -> str:
    if args.pretrained is None:
        return f"{args.model}/random-seed{args.seed}"
    if os.path.isfile(args.pretrained):
        return f"{args.model}/{os.path.abspath(args.pretrained)}"
    return f"{args.model}/{args.pretrained}"


def _load(args):
    import torch

    from crossgap_qdrant.models import load_model, register_model_config

    if args.model_config is not None:
        try:
            with open(args.model_config, encoding="utf-8") as f:
                config = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"model config not found: {args.model_config}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"model config {args.model_config} is not valid JSON ({exc})") from None
        register_model_config(args.model, config)
    if args.pretrained is None:
        torch.manual_seed(args.seed)  # random weights must be the same in every run against one collection
    return load_model(args.model, args.pretrained, device=args.device)


def _configs(args):
    from crossgap_qdrant.inversion import OTIConfig, OVIConfig

    if args.steps is None:
        return None, None
    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    return OTIConfig(steps=args.steps), OVIConfig(steps=args.steps)


def _derived(args, model) -> dict:
    cuts = _parse_cuts(args.isoclip)
    if cuts is None:
        return {}
    from crossgap_qdrant.rivals import IsoCLIPProjector

    projector = IsoCLIPProjector.from_model(model, *cuts)
    return {"image_isoclip": projector.vector("image"), "text_isoclip": projector.vector("text")}


def _open_store(args, model, preprocess, tokenizer):
    from crossgap_qdrant.store import CrossModalStore

    oti, ovi = _configs(args)
    return CrossModalStore.open(args.location, args.collection, model, tokenizer, preprocess, api_key=args.api_key,
                                model_id=_model_id(args), oti_config=oti, ovi_config=ovi,
                                derived_vectors=_derived(args, model))


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain-text table, columns padded to their widest cell."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _emit(args, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


# ------------------------------------------------------------------------------------------ commands
def cmd_ingest(args) -> int:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    for path in args.inputs:
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such file or folder: {path}")
    model, preprocess, tokenizer = _load(args)
    totals: dict[str, Any] = {"inserted": 0, "skipped_existing": 0, "inverted": 0, "duplicates": 0, "failed": [],
                              "seconds_encoding": 0.0, "seconds_inversion": 0.0, "seconds_database": 0.0}
    with _open_store(args, model, preprocess, tokenizer) as store:
        for path in args.inputs:
            ingest = store.ingest_texts if args.texts else store.ingest_images
            report = ingest(path, invert=not args.no_invert, batch_size=args.batch_size, progress=args.progress)
            for key in totals:
                value = getattr(report, key)
                totals[key] = totals[key] + (list(value) if key == "failed" else value)
        totals["points"] = store.count()
    totals["failed"] = [{"item": str(item), "reason": reason} for item, reason in totals["failed"]]
    rows = [(k, f"{v:.2f}" if isinstance(v, float) else v) for k, v in totals.items() if k != "failed"]
    text = format_table(rows, ["", "value"])
    if totals["failed"]:
        text += "\nfailed:\n" + "\n".join(f"  {f['item']}: {f['reason']}" for f in totals["failed"])
    _emit(args, totals, text)
    return EXIT_OK


def cmd_search(args) -> int:
    if args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    model, preprocess, tokenizer = _load(args)
    query: Any = args.query
    if query.isdigit() and not args.text:  # an image query that is a number is a point id
        query = int(query)
    with _open_store(args, model, preprocess, tokenizer) as store:
        search = store.search_texts if args.text else store.search_images
        points = search(query, mode=args.mode, limit=args.limit)
    hits = [{"rank": i + 1, "id": str(p.id), "score": float(p.score), "payload": p.payload or {}}
            for i, p in enumerate(points)]
    rows = []
    for h in hits:
        payload = h["payload"]
        what = payload.get("text") or payload.get("source") or ""
        rows.append((h["rank"], f"{h['score']:.4f}", h["id"], what, payload.get("label", "")))
    _emit(args, {"query": args.query, "mode": args.mode, "hits": hits},
          format_table(rows, ["rank", "score", "id", "item", "label"]) if rows else "no results")
    return EXIT_OK


def cmd_evaluate(args) -> int:
    from crossgap_qdrant import evaluate as harness
    from crossgap_qdrant.evaluate import METHODS, EvaluationConfig, load_labelled_set, markdown_table, write_report
    from crossgap_qdrant.store import list_image_files

    methods = METHODS
    if args.methods:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods:
            raise UsageError(f"unknown method(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METHODS)}")
    if args.bootstrap < 1:
        raise UsageError(f"--bootstrap must be >= 1, got {args.bootstrap}")
    cuts = _parse_cuts(args.isoclip)
    data = load_labelled_set(args.data, queries=args.queries)
    gap_texts = None
    if args.gap_texts:
        with open(args.gap_texts, encoding="utf-8") as f:
            gap_texts = [line.strip() for line in f if line.strip()]
    gap_images = None
    if args.gap_images:
        folder = Path(args.gap_images)
        gap_images = [str(p) for p in list_image_files(folder)]
        if not gap_images:
            raise FileNotFoundError(f"--gap-images: no image files under {args.gap_images}")
    model, preprocess, tokenizer = _load(args)
    oti, ovi = _configs(args)
    config = EvaluationConfig(
        methods=methods, oti_config=oti, ovi_config=ovi,
        isoclip_k_top=cuts[0] if cuts else None, isoclip_k_bottom=cuts[1] if cuts else None,
        gap_texts=gap_texts, gap_images=gap_images,
        backends=("torch", "qdrant") if args.backend == "both" else (args.backend,),
        bootstrap=args.bootstrap, qdrant_location=args.location, api_key=args.api_key,
    )
    result = harness.evaluate(model, preprocess, tokenizer, data, config, model_id=_model_id(args),
                              progress=args.progress)
    out = result.to_dict()
    text = markdown_table(result)
    if args.out:
        paths = write_report(result, args.out)
        out["report"] = {k: str(v) for k, v in paths.items()}
        text += f"\n\nreport: {paths['markdown']}, plot: {paths['plot']}"
    if result.skipped:
        text += "\n" + "\n".join(f"skipped {m}: {why}" for m, why in result.skipped.items())
    _emit(args, out, text)
    return EXIT_OK


def collection_info(client, collection_name: str) -> dict[str, Any]:
    """Model id, vector names, sizes and point counts of a collection, read without loading the model."""
    from crossgap_qdrant.store import METADATA_KEY, client_location, named_vector_stats

    if not client.collection_exists(collection_name):
        raise LookupError(f"no collection {collection_name!r} at {client_location(client)}")
    info = client.get_collection(collection_name)
    recorded = (info.config.metadata or {}).get(METADATA_KEY) or {}
    params = info.config.params.vectors
    if not isinstance(params, dict):
        raise ValueError(f"collection {collection_name!r} has a single unnamed vector: not a crossgap collection")
    vectors = named_vector_stats(
        params, lambda has: client.count(collection_name, count_filter=has, exact=True).count)
    return {
        "collection": collection_name,
        "location": client_location(client),
        "model_id": recorded.get("model_id"),
        "embed_dim": recorded.get("embed_dim"),
        "vector_names": recorded.get("vector_names"),
        "derived_vectors": recorded.get("derived", {}),
        "points": client.count(collection_name, exact=True).count,
        "vectors": vectors,
    }


def cmd_info(args) -> int:
    from crossgap_qdrant.store import connect

    client = connect(args.location, api_key=args.api_key)
    try:
        info = collection_info(client, args.collection)
    finally:
        client.close()
    rows = [(name, v["size"], v["distance"], v["points"]) for name, v in info["vectors"].items()]
    text = "\n".join([
        f"collection: {info['collection']} at {info['location']}",
        f"model: {info['model_id'] or 'unknown (not recorded)'} (embedding width {info['embed_dim']})",
        f"points: {info['points']}",
        "",
        format_table(rows, ["vector", "size", "distance", "points"]),
    ])
    _emit(args, info, text)
    return EXIT_OK


COMMANDS = {"ingest": cmd_ingest, "search": cmd_search, "evaluate": cmd_evaluate, "info": cmd_info}


def _expected_errors() -> tuple[type[BaseException], ...]:
    from crossgap_qdrant.models import UnsupportedModelError
    from crossgap_qdrant.store import PointNotFoundError, SchemaMismatchError, StoreLockedError

    return (OSError, ValueError, LookupError, RuntimeError, UnsupportedModelError, PointNotFoundError,
            SchemaMismatchError, StoreLockedError)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage and the error
        return int(exc.code or 0)
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_ERROR
    except _expected_errors() as exc:
        if args.debug:
            raise
        message = str(exc) or type(exc).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EXIT_ERROR


def run() -> None:  # pragma: no cover - `python -m crossgap_qdrant.cli`
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
