"""``crossgap-qdrant serve``: the web service (search page and JSON API) over one collection, with the model
and the store kept open between searches."""

from __future__ import annotations

import argparse
import sys

from crossgap_qdrant.cli.common import EXIT_OK, PROG, UsageError, load_handle, open_store

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_serve_parser(sub) -> None:
    """Adds the ``serve`` subcommand to the parser's subcommands."""
    from crossgap_qdrant.cli.parser import location_flags, model_flags, output_flags, warm_flags

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
    p.add_argument("--max-pixels", type=int, default=25_000_000,
                   help="most pixels of an uploaded query image; larger ones are refused before decoding "
                        "(default: %(default)s)")
    p.add_argument("--max-limit", type=int, default=100, help="most results one search may ask for "
                                                             "(default: %(default)s)")
    model_flags(p)
    warm_flags(p)
    location_flags(p)
    output_flags(p)


def cmd_serve(args: argparse.Namespace) -> int:
    from crossgap_qdrant.serve.app import ServiceLimits

    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    if not args.max_upload_mb > 0:
        raise UsageError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    for flag, value in (("--max-pixels", args.max_pixels), ("--max-limit", args.max_limit)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if args.location == ":memory:":
        raise UsageError("--location :memory: would serve an empty collection; give the folder or server URL that "
                         "holds it")
    try:
        import uvicorn

        from crossgap_qdrant.serve import create_app
    except ImportError as exc:
        raise ImportError(f"serve needs FastAPI and uvicorn ({exc}); install them with: pip install "
                          "'crossgap-qdrant[serve]'") from None
    limits = ServiceLimits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
                           max_limit=args.max_limit)
    clip = load_handle(args)
    with open_store(args, clip, create=False) as store:
        app = create_app(store, limits=limits)
        shown = f"[{args.host}]" if ":" in args.host else args.host
        print(f"{PROG}: serving collection {store.collection_name!r} ({store.count()} points) at "
              f"http://{shown}:{args.port}/ ; Ctrl-C stops", file=sys.stderr)
        if args.host not in LOOPBACK:
            print(f"{PROG}: warning: listening on {args.host}: anyone who can reach this port can search the "
                  "collection and see its images (there is no authentication)", file=sys.stderr)
        uvicorn.run(app, host=args.host, port=args.port, log_level="debug" if args.verbose else
                    ("warning" if args.quiet else "info"), access_log=args.verbose, workers=1)
    return EXIT_OK
