"""``crossgap-qdrant serve``: the web service (search page and JSON API) over one collection, with the model
and the store kept open between searches."""

from __future__ import annotations

import argparse
import sys

from crossgap_qdrant.cli.common import EXIT_OK, PROG, UsageError
from crossgap_qdrant.cli.resources import apply_image_limit, load_handle, open_store
from crossgap_qdrant.errors import MissingDependencyError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def cmd_serve(args: argparse.Namespace) -> int:
    from crossgap_qdrant.serve.service import ServiceLimits

    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    if not args.max_upload_mb > 0:
        raise UsageError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    if args.max_limit < 1:
        raise UsageError(f"--max-limit must be >= 1, got {args.max_limit}")
    apply_image_limit(args)  # --max-pixels: uploads and every image the service reads
    try:
        import uvicorn

        from crossgap_qdrant.serve import create_app
    except ImportError as exc:
        raise MissingDependencyError(f"serve needs FastAPI and uvicorn ({exc}); install them with: pip install "
                          "'crossgap-qdrant[serve]'") from None
    limits = ServiceLimits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_limit=args.max_limit,
                           max_pixels=args.max_pixels or ServiceLimits.max_pixels)
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
