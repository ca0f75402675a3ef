"""The command line's flags and subcommands (argparse)."""

from __future__ import annotations

import argparse
import os

import crossgap_qdrant
from crossgap_qdrant.cli.common import PROG

SERVER_DEADLINE = 30.0
"""Default total seconds of one server operation, every retry included: an unanswering server costs this."""


def output_flags(parser: argparse.ArgumentParser, computes: bool = True) -> None:
    """--json, --quiet, --verbose, --debug; with ``computes`` (commands that run a model) --progress and
    --threads too."""
    g = parser.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print JSON instead of tables")
    g.add_argument("--quiet", "-q", action="store_true", help="warnings and errors only, no progress")
    g.add_argument("--verbose", "-v", action="store_true", help="log what happens (debug level)")
    g.add_argument("--debug", action="store_true", help="show tracebacks")
    if computes:
        g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="progress on stderr: a bar on a terminal, else a line every 10 s (default: on, off "
                            "with --quiet)")
        g.add_argument("--threads", type=int, default=None,
                       help="CPU threads for PyTorch (default: $OMP_NUM_THREADS when set, else 1: more threads "
                            "spin and slow down on a shared or small CPU)")
    else:
        parser.set_defaults(progress=False, threads=None)


def location_flags(parser: argparse.ArgumentParser, location_default: str = "./qdrant_data") -> None:
    g = parser.add_argument_group("collection")
    g.add_argument("--collection", default="crossgap", help="Qdrant collection (default: %(default)s)")
    g.add_argument("--location", default=location_default,
                   help="a folder (Qdrant's engine, embedded) or a server URL http(s)://host:port "
                        "(default: %(default)s)")
    g.add_argument("--engine", choices=("edge", "local"), default=None,
                   help="for a new folder: Qdrant's embedded engine (edge) or qdrant-client's local mode (default: "
                        "the engine that wrote the folder, edge for a new one)")
    g.add_argument("--api-key", default=os.environ.get("QDRANT_API_KEY"),
                   help="Qdrant server API key (default: $QDRANT_API_KEY)")
    g.add_argument("--timeout", type=float, default=SERVER_DEADLINE,
                   help="seconds one server operation may take, retries included (default: %(default)s)")
    g.add_argument("--retries", type=int, default=3,
                   help="retries of a server call on transient errors (default: %(default)s)")


def model_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help="crossgap-demo (the bundled demo model), an open_clip architecture such as ViT-B-32 (with "
                        "--pretrained), hf-hub:org/repo, or local-dir:PATH")
    g.add_argument("--pretrained", default=None,
                   help="open_clip pretrained tag (e.g. openai) or a checkpoint file; 'none' for random weights "
                        "(meaningless results, for tests)")
    g.add_argument("--model-config", default=None, metavar="JSON",
                   help="an open_clip model config file, registered under the --model name")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of random weights (--pretrained none) (default: %(default)s)")
    g.add_argument("--device", default=None,
                   help="where the model runs: cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    g.add_argument("--steps", type=int, default=None,
                   help="inversion steps from random tokens (OTI and OVI), overriding the published; after a "
                        "warm start, --warm-steps")
    g.add_argument("--background", default="white", metavar="COLOUR",
                   help="what transparent image pixels are flattened onto: white, black or R,G,B "
                        "(default: %(default)s)")
    g.add_argument("--isoclip", default=None, metavar="TOP,BOTTOM",
                   help="add the IsoCLIP vector (<modality>_isoclip) with these singular-direction cuts")
    g.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="refuse images of more pixels as possible decompression bombs; raise it for trusted "
                        "large images (default: PIL's limit, 89478485)")



def warm_flags(parser: argparse.ArgumentParser, use: bool = True) -> None:
    g = parser.add_argument_group("warm start")
    if use:
        g.add_argument("--warm-start", action="store_true",
                       help="invert with the collection's warm start (fit-warm-start): a few exact steps from its "
                            "prediction instead of the published 150 (OTI) or 1000 (OVI)")
        g.add_argument("--warm-steps", type=int, default=None, metavar="K",
                       help="exact steps after the warm start's prediction (implies --warm-start; default: the "
                            "recorded budget)")
    else:
        g.add_argument("--warm-steps", type=int, default=None, metavar="K",
                       help="exact steps after the prediction that later inversions take (default: the fewest that "
                            "the fit measured to reach the exact inversion's own spread)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inter-modal image and text search in Qdrant (OTI/OVI modality inversion).",
        epilog="Exit codes: 0 ok, 1 runtime or data error, 2 usage error, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {crossgap_qdrant.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("ingest", help="add images (folders or files) or texts to a collection")
    p.add_argument("inputs", nargs="+", help="image folders or files; with --texts, text files (one text a line)")
    p.add_argument("--texts", action="store_true", help="inputs are text files")
    p.add_argument("--no-invert", action="store_true", help="store native (and derived) vectors only")
    p.add_argument("--batch-size", type=int, default=64,
                   help="items encoded, inverted and written together (default: %(default)s)")
    model_flags(p)
    warm_flags(p)
    location_flags(p)
    output_flags(p)

    p = sub.add_parser("search", help="search the images (or --gallery texts) of a collection",
                       description="Search a collection. The query is an image file or a stored point id, or with "
                                   "--text a text. --gallery picks what is searched: images (default) or texts. "
                                   "text->image and image->text compare native CLIP vectors; image->image and "
                                   "text->text use --mode.")
    p.add_argument("query", help="an image file, a stored point id (an image or a text: the collection knows "
                                 "which), or with --text a text")
    p.add_argument("--text", action="store_true", help="the query is a text")
    p.add_argument("--gallery", choices=("images", "texts"), default="images",
                   help="search the images or the texts (default: %(default)s)")
    p.add_argument("--mode", default=None,
                   help="image->image and text->text: native, gallery_inverted, query_inverted, fused, or a derived "
                        "vector name (default: the collection's recorded mode, else gallery_inverted)")
    p.add_argument("--hubness", action=argparse.BooleanOptionalAction, default=None,
                   help="re-score by the hubness statistics fitted for the mode (evaluate --apply, or "
                        "CrossModalStore.fit_hubness); default: as recorded with the collection's mode")
    p.add_argument("--limit", type=int, default=10, help="results to show (default: %(default)s)")
    p.add_argument("--compare", default=None, metavar="MODE[,MODE]",
                   help="also search in these modes and show them side by side (table, JSON columns, --html)")
    p.add_argument("--html", default=None, metavar="FILE",
                   help="write a contact sheet: one HTML file with the query, thumbnails, scores and modes")
    p.add_argument("--strict", action="store_true",
                   help="refuse a search in a mode whose vectors only some of the gallery holds (default: warn)")
    model_flags(p)
    warm_flags(p)
    location_flags(p)
    output_flags(p)

    p = sub.add_parser("invert", help="compute the inverted vectors a collection lacks (after --no-invert)")
    p.add_argument("--modality", choices=("image", "text"), default="image",
                   help="invert the images (OTI) or the texts (OVI) (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="items inverted and written together (default: %(default)s)")
    model_flags(p)
    warm_flags(p)
    location_flags(p)
    output_flags(p)

    p = sub.add_parser("evaluate", help="measure every representation on a labelled set, recommend one (and "
                                        "with --apply make a collection's searches use it)")
    p.add_argument("data", nargs="?", default=None,
                   help="a folder of class subfolders of images, a labelled text file ('label<TAB>text' lines or JSON "
                        "lines), or with --queries the gallery file; left out with --label-field")
    p.add_argument("--label-field", default=None, metavar="FIELD",
                   help="evaluate on the points of --collection at --location instead: the class of each point is "
                        "this payload field, its item the image path or text in its payload (an adopted collection)")
    p.add_argument("--label-modality", choices=("image", "text"), default="image",
                   help="with --label-field: the points' modality (default: %(default)s)")
    p.add_argument("--queries", default=None, help="query file of a query/gallery split ('label<TAB>item' lines)")
    p.add_argument("--out", default=None, help="folder for report.md, map.png and results.json")
    p.add_argument("--methods", default=None, help="comma-separated subset of the methods (default: all; also "
                                                    "isoclip_hub, pca_hub, gap_shift_hub)")
    p.add_argument("--backend", choices=("torch", "qdrant", "both"), default="both",
                   help="rank exactly in PyTorch, through a Qdrant collection, or both and check that they agree "
                        "(default: %(default)s)")
    p.add_argument("--vocabulary", default=None, metavar="FILE",
                   help="texts (one a line) of the PCA projection (default: the set's texts for a text set, else "
                        "the bundled class names)")
    p.add_argument("--gap-texts", default=None, metavar="FILE",
                   help="texts (one a line) to fit the gap shift's text mean for an image set (default: the "
                        "--vocabulary texts)")
    p.add_argument("--gap-images", default=None,
                   help="image folder (searched recursively) to fit the gap shift's image mean (text sets)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples of the queries for the 95%% confidence intervals (default: "
                        "%(default)s)")
    p.add_argument("--apply", action="store_true",
                   help="record the recommended method in --collection at --location: later searches without "
                        "--mode use it (a rival's vectors and hubness statistics are computed for the stored points)")
    p.add_argument("--apply-method", default=None, metavar="METHOD",
                   help="with --apply, record this evaluated method instead of the recommended one")
    p.add_argument("--eval-location", default=":memory:",
                   help="where the evaluation's temporary Qdrant collection lives: ':memory:' (default), a folder "
                        "or a server URL")
    model_flags(p)
    location_flags(p)
    output_flags(p)

    p = sub.add_parser("fit-warm-start",
                       help="fit a warm start for query-side inversion and backfills from the stored vectors",
                       description="Distils exact inversions of up to --sample stored native vectors into a small "
                                   "network that predicts pseudo tokens; kept with the collection (a file in its "
                                   "folder, or --file for a server) and used with --warm-start.")
    p.add_argument("--modality", choices=("image", "text"), default="image",
                   help="image (OTI warm start) or text (OVI) (default: %(default)s)")
    p.add_argument("--sample", type=int, default=None,
                   help="stored vectors inverted exactly (default: 2000 images, 200 texts: an exact text inversion "
                        "costs 1000 vision-tower steps)")
    p.add_argument("--epochs", type=int, default=300, help="training epochs of the network (default: %(default)s)")
    p.add_argument("--file", default=None, help="where the warm start is written (needed for a server location)")
    model_flags(p)
    warm_flags(p, use=False)
    location_flags(p)
    output_flags(p)

    add_serve_parser(sub)

    p = sub.add_parser("info", help="collection, model, vector names and counts (no model needed)")
    p.add_argument("--verify", action="store_true", help="also check every stored point (see verify)")
    location_flags(p)
    output_flags(p, computes=False)

    p = sub.add_parser("verify", help="check a collection end to end: counts against a scan, finite unit vectors, "
                                      "each vector's coverage, the recorded layout (no model needed)")
    location_flags(p)
    output_flags(p, computes=False)
    add_adopt_parsers(sub)
    return parser


def add_serve_parser(sub) -> None:
    """Adds the ``serve`` subcommand to the parser's subcommands."""
    p = sub.add_parser("serve", help="a web page and JSON API for searching a collection (model kept loaded)",
                       description="Serves a search page (text box, image upload, thumbnails, native and inter-modal "
                                   "results side by side) and a JSON API (/api/search, /api/info, /thumb/ID) for "
                                   "one collection. There is no authentication: it listens on 127.0.0.1 unless "
                                   "--host says otherwise.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 exposes it to the "
                        "network without authentication)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    p.add_argument("--max-upload-mb", type=float, default=10.0,
                   help="largest uploaded query image, in MiB (default: %(default)s)")
    p.add_argument("--max-limit", type=int, default=100, help="most results one search may ask for "
                                                             "(default: %(default)s)")
    model_flags(p)
    warm_flags(p)
    location_flags(p)
    output_flags(p)


def add_adopt_parsers(sub) -> None:
    """Adds the ``adopt``, ``backfill`` and ``optimize`` subcommands to the parser's subcommands."""
    p = sub.add_parser("adopt", help="adopt a collection another tool built (its CLIP vectors become native)",
                       description="Records the model and the stored CLIP vector in the collection (or, for a "
                                   "single unnamed vector, in a companion collection) and adds the vectors this "
                                   "package fills; no point of the collection is rewritten. Then run backfill.")
    p.add_argument("--vector", required=True, metavar="NAME",
                   help="the stored CLIP vector's name ('' for a collection's single unnamed vector)")
    p.add_argument("--modality", choices=("image", "text"), default="image",
                   help="what the stored vectors embed (default: %(default)s)")
    p.add_argument("--check", type=int, default=8, metavar="N",
                   help="points with an image path or text in their payload encoded again and compared with the "
                        "stored vectors (default: %(default)s; 0: take the vectors on trust)")
    model_flags(p)
    location_flags(p)
    output_flags(p)

    p = sub.add_parser("backfill", help="compute the inverted vectors a collection lacks, resumably, on one "
                                        "process or a Ray cluster",
                       description="Inverts the stored native vectors that lack their inverted vector and writes "
                                   "the new vectors only (update_vectors). Run the same command again after any "
                                   "crash: it resumes.")
    p.add_argument("--modality", choices=("image", "text"), default="image",
                   help="fill the inverted vectors of the images (OTI) or the texts (OVI) (default: %(default)s)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on Ray Data: a local cluster (no ADDRESS) or the cluster at ADDRESS ('auto', "
                        "'ray://host:10001')")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="parallel workers (Ray actors, one model each; in-process: parts run in turn) "
                        "(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="points inverted and written together (default: %(default)s)")
    p.add_argument("--transform", action="append", default=[], metavar="KIND",
                   help="also add a rival vector computed from the stored vectors (no image read): "
                        "isoclip:TOP,BOTTOM (<modality>_isoclip) or pca (<modality>_pca, the bundled vocabulary); "
                        "repeatable; searchable as --mode <name> (default: none)")
    model_flags(p)
    warm_flags(p)
    location_flags(p)
    output_flags(p)

    p = sub.add_parser("optimize", help="build the search indexes of an embedded (Edge) collection after a large "
                                        "ingest or backfill (searches are exact until then)")
    location_flags(p)
    output_flags(p)
