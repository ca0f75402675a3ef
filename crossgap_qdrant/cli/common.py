"""What the commands share: exit codes, usage errors, the model and store the flags name, and output."""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Sequence

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
PROG = "crossgap-qdrant"


class UsageError(Exception):
    """Arguments that parse but do not make sense together (exit code 2)."""


def parse_cuts(spec: str | None) -> tuple[int, int] | None:
    if spec is None:
        return None
    try:
        top, bottom = (int(x) for x in spec.split(","))
    except ValueError:
        raise UsageError(f"--isoclip takes TOP,BOTTOM (two integers), got {spec!r}") from None
    if top < 0 or bottom < 0:
        raise UsageError(f"--isoclip cuts must be >= 0, got {spec!r}")
    return top, bottom


def load_handle(args):
    """The model handle named by --model/--pretrained (never random weights unless --pretrained none)."""
    import torch

    from crossgap_qdrant.model_specs import carries_weights, read_model_config
    from crossgap_qdrant.models import load_model, register_model_config

    if args.model is None:
        raise UsageError("--model is required, e.g. --model crossgap-demo (the bundled demo model) or "
                         "--model ViT-B-32 --pretrained openai")
    if args.model_config is not None:
        register_model_config(args.model, read_model_config(args.model_config))
    if args.pretrained is not None and carries_weights(args.model):
        raise UsageError(f"--model {args.model} carries its own weights: leave out --pretrained "
                         f"(got {args.pretrained!r})")
    random_weights = args.pretrained is not None and args.pretrained.lower() == "none"
    if random_weights:
        torch.manual_seed(args.seed)  # random weights must be the same in every run against one collection
    return load_model(args.model, None if random_weights else args.pretrained, device=args.device,
                      allow_random=random_weights)


def inversion_configs(args):
    from crossgap_qdrant.inversion import OTIConfig, OVIConfig

    if args.steps is None:
        return None, None
    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    return OTIConfig(steps=args.steps), OVIConfig(steps=args.steps)


def derived_vectors(args, model) -> dict:
    cuts = parse_cuts(args.isoclip)
    if cuts is None:
        return {}
    from crossgap_qdrant.rivals import IsoCLIPProjector

    projector = IsoCLIPProjector.from_model(model, *cuts)
    return {"image_isoclip": projector.vector("image"), "text_isoclip": projector.vector("text")}


def retry_policy(args):
    from crossgap_qdrant.store import RetryPolicy

    if args.retries < 0:
        raise UsageError(f"--retries must be >= 0, got {args.retries}")
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {args.timeout}")
    return RetryPolicy(attempts=args.retries + 1, deadline=args.timeout)


def open_collection_at(args, create: bool):
    from crossgap_qdrant.store import open_collection

    return open_collection(args.location, args.collection, engine=args.engine, api_key=args.api_key,
                           timeout=args.timeout, retry=retry_policy(args), create_folder=create)


def open_store(args, clip, create: bool = True, use_warm_start: bool = True):
    """The store the flags name; with --warm-start / --warm-steps (and ``use_warm_start``) it inverts from the
    collection's warm start."""
    from crossgap_qdrant.store import CrossModalStore

    oti, ovi = inversion_configs(args)
    steps = getattr(args, "warm_steps", None) if use_warm_start else None
    if steps is not None and steps < 0:
        raise UsageError(f"--warm-steps must be >= 0, got {steps}")
    if use_warm_start and args.steps is not None and (steps is not None or getattr(args, "warm_start", False)):
        raise UsageError("--steps sets the budget of exact inversion from random tokens; after a warm start "
                         "give its budget with --warm-steps")
    store = CrossModalStore.open(args.location, args.collection, clip, engine=args.engine, create=create,
                                 api_key=args.api_key, timeout=args.timeout, retry=retry_policy(args),
                                 oti_config=oti, ovi_config=ovi, derived_vectors=derived_vectors(args, clip.model),
                                 image_background=background_colour(args.background))
    try:
        if steps is not None or (use_warm_start and getattr(args, "warm_start", False)):
            store.use_warm_start(steps=steps)
    except BaseException:
        store.close()
        raise
    return store


def background_colour(spec: str) -> tuple[int, int, int]:
    """--background: white, black, or R,G,B (0-255 each)."""
    named = {"white": (255, 255, 255), "black": (0, 0, 0)}
    if spec.lower() in named:
        return named[spec.lower()]
    try:
        rgb = tuple(int(x) for x in spec.split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise UsageError(f"--background takes white, black or R,G,B (0-255 each), got {spec!r}")
    return rgb


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain-text table, columns padded to their widest cell."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def emit(args, data: Any, text: str) -> None:
    print(json.dumps(finite_json(data), indent=2, default=str, allow_nan=False) if args.json else text)


def finite_json(data: Any) -> Any:
    """``data`` with NaN and infinite floats as None (JSON has no NaN; strict parsers reject it)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(v) for v in data]
    return data


def report_rows(report, totals: dict[str, Any]) -> None:
    for key in totals:
        value = getattr(report, key)
        totals[key] = totals[key] + (list(value) if key == "failed" else value)



def setup_output(args) -> None:
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


def expected_errors() -> tuple[type[BaseException], ...]:
    """Errors printed as one line (exit 1): data, model, storage and server errors (PermissionError is an
    OSError, UnsupportedModelError a ValueError), and ImportError (a missing build names its rebuild command)."""
    return (OSError, ValueError, LookupError, RuntimeError, TypeError, ImportError)


def described_collection(args) -> dict:
    """describe_collection of --collection at --location; CollectionNotFoundError when it does not exist."""
    from crossgap_qdrant.store import describe_collection
    from crossgap_qdrant.store.adopt import adopted_view
    from crossgap_qdrant.store.errors import CollectionNotFoundError

    collection = open_collection_at(args, create=False)
    try:
        if not collection.exists():
            raise CollectionNotFoundError(f"no collection {args.collection!r} at {collection.location}; check "
                                          "--collection and --location")
        collection = adopted_view(collection)
        return describe_collection(collection)
    finally:
        collection.close()


def adopted_lines(adopted: dict | None) -> list[str]:
    """What ``info`` says of an adopted collection: its source vector and whether the model was checked."""
    if not adopted:
        return []
    check = adopted.get("check")
    checked = check if isinstance(check, str) else (f"checked on {check['points']} point(s), cosine >= "
                                                     f"{check['min_cosine']:.4f}")
    vector = "the unnamed vector" if adopted.get("vector") == "" else f"vector {adopted.get('vector')!r}"
    where = f", added vectors in {adopted['companion']}" if adopted.get("companion") else ""
    return [f"adopted: {vector} ({adopted.get('modality')}s), model {checked}{where}"]
