"""The ``crossgap-qdrant`` command line: ingest, search, evaluate, info.

Examples::

    crossgap-qdrant ingest photos/ --model crossgap-demo
    crossgap-qdrant search "an owl" --text --model crossgap-demo                 # text -> image
    crossgap-qdrant search query.png --model crossgap-demo --mode gallery_inverted   # image -> image
    crossgap-qdrant ingest photos/ --model ViT-B-32 --pretrained openai --location http://localhost:6333
    crossgap-qdrant evaluate labelled_photos/ --model crossgap-demo --out report/
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
def _output_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print JSON instead of tables")
    g.add_argument("--progress", action="store_true", default=None,
                   help="show progress bars on stderr (default: when stderr is a terminal)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bars, warnings and errors only")
    g.add_argument("--verbose", "-v", action="store_true", help="log what happens (debug level)")
    g.add_argument("--debug", action="store_true", help="show tracebacks")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads for PyTorch (default: PyTorch's choice; 1 is best on a busy machine)")


def _location_flags(parser: argparse.ArgumentParser, location_default: str = "./qdrant_data") -> None:
    g = parser.add_argument_group("collection")
    g.add_argument("--collection", default="crossgap", help="Qdrant collection (default: %(default)s)")
    g.add_argument("--location", default=location_default,
                   help="a folder (Qdrant's engine, embedded), ':memory:', or a server URL http(s)://host:port "
                        "(default: %(default)s)")
    g.add_argument("--engine", choices=("edge", "local"), default=None,
                   help="for a folder: Qdrant's embedded engine (edge, the default) or qdrant-client's local mode")
    g.add_argument("--api-key", default=os.environ.get("QDRANT_API_KEY"),
                   help="Qdrant server API key (default: $QDRANT_API_KEY)")
    g.add_argument("--timeout", type=float, default=60.0,
                   help="seconds one server operation may take, retries included (default: %(default)s)")
    g.add_argument("--retries", type=int, default=3,
                   help="retries of a server call on transient errors (default: %(default)s)")


def _model_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help="crossgap-demo (the bundled demo model), an open_clip architecture such as ViT-B-32 (with "
                        "--pretrained), hf-hub:org/repo, or local-dir:PATH")
    g.add_argument("--pretrained", default=None,
                   help="open_clip pretrained tag (e.g. openai) or a checkpoint file; 'none' for random weights "
                        "(meaningless results, for tests)")
    g.add_argument("--model-config", default=None, metavar="JSON",
                   help="an open_clip model config file, registered under the --model name")
    g.add_argument("--seed", type=int, default=0, help="seed of random weights (--pretrained none)")
    g.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    g.add_argument("--steps", type=int, default=None, help="inversion steps (OTI and OVI), overriding the published")
    g.add_argument("--isoclip", default=None, metavar="TOP,BOTTOM",
                   help="add the IsoCLIP vector (<modality>_isoclip) with these singular-direction cuts")


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
    _model_flags(p)
    _location_flags(p)
    _output_flags(p)

    p = sub.add_parser("search", help="search the images (or --gallery texts) of a collection",
                       description="Search a collection. The query is an image file or a stored point id, or with "
                                   "--text a text. --gallery picks what is searched: images (default) or texts. "
                                   "text->image and image->text compare native CLIP vectors; image->image and "
                                   "text->text use --mode.")
    p.add_argument("query", help="an image file, a stored point id, or with --text a text")
    p.add_argument("--text", action="store_true", help="the query is a text")
    p.add_argument("--gallery", choices=("images", "texts"), default="images",
                   help="search the images or the texts (default: %(default)s)")
    p.add_argument("--mode", default=None,
                   help="image->image and text->text: native, gallery_inverted, query_inverted, fused, or a derived "
                        "vector name (default: the collection's recorded mode, else gallery_inverted)")
    p.add_argument("--limit", type=int, default=10)
    _model_flags(p)
    _location_flags(p)
    _output_flags(p)

    p = sub.add_parser("invert", help="compute the inverted vectors a collection lacks (after --no-invert)")
    p.add_argument("--modality", choices=("image", "text"), default="image")
    p.add_argument("--batch-size", type=int, default=64)
    _model_flags(p)
    _location_flags(p)
    _output_flags(p)

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
    _model_flags(p)
    _location_flags(p, location_default=":memory:")
    _output_flags(p)

    p = sub.add_parser("info", help="collection, model, vector names and counts (no model needed)")
    _location_flags(p)
    _output_flags(p)
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


def _load(args):
    """The model handle named by --model/--pretrained (never random weights unless --pretrained none)."""
    import torch

    from crossgap_qdrant.models import load_model, register_model_config

    if args.model is None:
        raise UsageError("--model is required, e.g. --model crossgap-demo (the bundled demo model) or "
                         "--model ViT-B-32 --pretrained openai")
    if args.model_config is not None:
        try:
            with open(args.model_config, encoding="utf-8") as f:
                config = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"model config not found: {args.model_config}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"model config {args.model_config} is not valid JSON ({exc})") from None
        register_model_config(args.model, config.get("model_cfg", config))
    random_weights = args.pretrained is not None and args.pretrained.lower() == "none"
    if random_weights:
        torch.manual_seed(args.seed)  # random weights must be the same in every run against one collection
    return load_model(args.model, None if random_weights else args.pretrained, device=args.device,
                      allow_random=random_weights)


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


def _retry(args):
    from crossgap_qdrant.store import RetryPolicy

    if args.retries < 0:
        raise UsageError(f"--retries must be >= 0, got {args.retries}")
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {args.timeout}")
    return RetryPolicy(attempts=args.retries + 1, deadline=args.timeout)


def _open_collection(args, create: bool):
    from crossgap_qdrant.store import open_collection

    return open_collection(args.location, args.collection, engine=args.engine, api_key=args.api_key,
                           timeout=args.timeout, retry=_retry(args), create_folder=create)


def _open_store(args, clip, create: bool = True):
    from crossgap_qdrant.store import CrossModalStore

    oti, ovi = _configs(args)
    return CrossModalStore.open(args.location, args.collection, clip, engine=args.engine, create=create,
                                api_key=args.api_key, timeout=args.timeout, retry=_retry(args),
                                oti_config=oti, ovi_config=ovi, derived_vectors=_derived(args, clip.model))


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain-text table, columns padded to their widest cell."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _emit(args, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def _report_rows(report, totals: dict[str, Any]) -> None:
    for key in totals:
        value = getattr(report, key)
        totals[key] = totals[key] + (list(value) if key == "failed" else value)


# ------------------------------------------------------------------------------------------ commands
def cmd_ingest(args) -> int:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    for path in args.inputs:
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such file or folder: {path}")
    clip = _load(args)
    totals: dict[str, Any] = {"inserted": 0, "skipped_existing": 0, "inverted": 0, "duplicates": 0, "failed": [],
                              "seconds_encoding": 0.0, "seconds_inversion": 0.0, "seconds_database": 0.0}
    items = 0
    with _open_store(args, clip) as store:
        for path in args.inputs:
            ingest = store.ingest_texts if args.texts else store.ingest_images
            report = ingest(path, invert=not args.no_invert, batch_size=args.batch_size, progress=args.progress)
            items += len(report.ids)
            _report_rows(report, totals)
        totals["points"] = store.count()
        totals["engine"] = store.engine
    totals["failed"] = [{"item": str(item), "reason": reason} for item, reason in totals["failed"]]
    rows = [(k, f"{v:.2f}" if isinstance(v, float) else v) for k, v in totals.items() if k != "failed"]
    text = format_table(rows, ["", "value"])
    if totals["failed"]:
        text += "\nfailed:\n" + "\n".join(f"  {f['item']}: {f['reason']}" for f in totals["failed"])
    _emit(args, totals, text)
    if items and len(totals["failed"]) == items:
        print(f"{PROG}: error: every input failed; nothing was ingested", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def cmd_invert(args) -> int:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    clip = _load(args)
    with _open_store(args, clip, create=False) as store:
        report = store.invert_missing(args.modality, batch_size=args.batch_size, progress=args.progress)
    data = {"inverted": report.inverted, "failed": [{"item": str(i), "reason": r} for i, r in report.failed],
            "seconds_inversion": report.seconds_inversion}
    text = f"inverted {report.inverted} {args.modality}(s)"
    if report.failed:
        text += "\nfailed:\n" + "\n".join(f"  {f['item']}: {f['reason']}" for f in data["failed"])
    _emit(args, data, text)
    return EXIT_OK


def cmd_search(args) -> int:
    from crossgap_qdrant.store import MODES

    if args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    query: Any = args.query
    gallery = args.gallery[:-1]  # "image" | "text"
    query_modality = "text" if args.text else "image"
    if query_modality != gallery and args.mode not in (None, "native"):
        raise UsageError(f"{query_modality}->{gallery} search compares native CLIP vectors; --mode {args.mode} is "
                         f"for {gallery}->{gallery} search")
    if not args.text:
        if query.isdigit():  # an image query that is a number is a point id
            query = int(query)
        elif not os.path.exists(query):
            from crossgap_qdrant.store.ids import is_point_id

            if not is_point_id(query):
                raise UsageError(f"{query!r} is neither an image file nor a point id; for a text query add --text")
    clip = _load(args)
    with _open_store(args, clip, create=False) as store:
        derived = store.encoder.derived_for(gallery)
        if args.mode is not None and args.mode not in MODES and args.mode not in derived:
            raise UsageError(f"--mode must be one of {', '.join(MODES + tuple(derived))}, got {args.mode!r}")
        mode = args.mode or (store.default_mode(gallery) if query_modality == gallery else "native")
        search = store.search_images if gallery == "image" else store.search_texts
        points = search(**{query_modality: query}, mode=mode, limit=args.limit)
    hits = [{"rank": i + 1, "id": str(p.id), "score": float(p.score), "payload": p.payload or {}}
            for i, p in enumerate(points)]
    rows = []
    for h in hits:
        payload = h["payload"]
        what = payload.get("text") or payload.get("source") or ""
        rows.append((h["rank"], f"{h['score']:.4f}", h["id"], what, payload.get("label", "")))
    _emit(args, {"query": args.query, "query_modality": query_modality, "gallery": gallery, "mode": mode,
                 "hits": hits},
          format_table(rows, ["rank", "score", "id", "item", "label"]) if rows else "no results")
    return EXIT_OK


def cmd_evaluate(args) -> int:
    from crossgap_qdrant import evaluate as harness
    from crossgap_qdrant.evaluate import METHODS, EvaluationConfig, load_labelled_set, markdown_table, write_report
    from crossgap_qdrant.images import list_image_files

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
    clip = _load(args)
    oti, ovi = _configs(args)
    config = EvaluationConfig(
        methods=methods, oti_config=oti, ovi_config=ovi,
        isoclip_k_top=cuts[0] if cuts else None, isoclip_k_bottom=cuts[1] if cuts else None,
        gap_texts=gap_texts, gap_images=gap_images,
        backends=("torch", "qdrant") if args.backend == "both" else (args.backend,),
        bootstrap=args.bootstrap, qdrant_location=args.location, api_key=args.api_key,
    )
    result = harness.evaluate(clip.model, clip.preprocess, clip.tokenizer, data, config, model_id=clip.model_id,
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


def cmd_info(args) -> int:
    from crossgap_qdrant.store import describe_collection
    from crossgap_qdrant.store.errors import CollectionNotFoundError

    collection = _open_collection(args, create=False)
    try:
        if not collection.exists():
            raise CollectionNotFoundError(f"no collection {args.collection!r} at {collection.location}; check "
                                          "--collection and --location")
        info = describe_collection(collection)
    finally:
        collection.close()
    rows = [(name, v["size"], v["distance"], v["points"]) for name, v in info["vectors"].items()]
    text = "\n".join([
        f"collection: {info['collection']} at {info['location']} ({info['engine']})",
        f"model: {info['model'] or 'unknown (not recorded)'}, id {info['model_id']} "
        f"(embedding width {info['embed_dim']})",
        f"points: {info['points']}",
        "",
        format_table(rows, ["vector", "size", "distance", "points"]),
    ])
    _emit(args, info, text)
    return EXIT_OK


COMMANDS = {"ingest": cmd_ingest, "search": cmd_search, "invert": cmd_invert, "evaluate": cmd_evaluate,
            "info": cmd_info}


def _setup_output(args) -> None:
    """Logging level, progress default (a terminal on stderr) and PyTorch threads from the flags."""
    import logging

    # our own messages at INFO by default; other libraries' (open_clip logs at INFO on the root logger) only
    # from WARNING, unless --verbose
    ours = logging.DEBUG if args.verbose else (logging.WARNING if args.quiet else logging.INFO)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format=f"{PROG}: %(levelname)s: %(message)s", stream=sys.stderr, force=True)
    logging.getLogger("crossgap_qdrant").setLevel(ours)
    if not args.debug:  # one line per warning, ours and libraries' alike, no source lines
        import warnings

        def one_line(message, category, filename, lineno, file=None, line=None):
            print(f"{PROG}: warning: {message}", file=sys.stderr)

        warnings.showwarning = one_line
    if args.quiet:
        args.progress = False
    elif args.progress is None:
        args.progress = sys.stderr.isatty()
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)


def _expected_errors() -> tuple[type[BaseException], ...]:
    from crossgap_qdrant.models import UnsupportedModelError

    return (OSError, ValueError, LookupError, RuntimeError, TypeError, UnsupportedModelError, PermissionError)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage and the error
        return int(exc.code or 0)
    try:
        _setup_output(args)
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
        message = str(exc).strip() or type(exc).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EXIT_ERROR


def run() -> None:  # pragma: no cover - `python -m crossgap_qdrant.cli`
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
