"""The model, inversion settings and store the flags name (imported when a command runs: it loads torch,
open_clip and Qdrant)."""

from __future__ import annotations

import torch
from PIL import Image

from crossgap_qdrant.cli.common import UsageError, parse_cuts
from crossgap_qdrant.images import WHITE
from crossgap_qdrant.inversion import OTIConfig, OVIConfig
from crossgap_qdrant.models import load_model, register_model_config
from crossgap_qdrant.models.specs import carries_weights, read_model_config
from crossgap_qdrant.rivals import IsoCLIPProjector
from crossgap_qdrant.store import (
    CollectionNotFoundError,
    CrossModalStore,
    RetryPolicy,
    describe_collection,
    open_collection,
)
from crossgap_qdrant.store.adopt import adopted_view
from crossgap_qdrant.store.verify import verify_collection


def check_model_flags(args) -> None:
    """Usage errors of --model/--pretrained, found without loading anything."""
    if args.model is None:
        raise UsageError("--model is required, e.g. --model crossgap-demo (the bundled demo model) or "
                         "--model ViT-B-32 --pretrained openai")
    if args.model_config is not None:
        register_model_config(args.model, read_model_config(args.model_config))
    if args.pretrained is not None and carries_weights(args.model):
        raise UsageError(f"--model {args.model} carries its own weights: leave out --pretrained "
                         f"(got {args.pretrained!r})")


def load_handle(args):
    """The model handle named by --model/--pretrained (never random weights unless --pretrained none)."""
    check_model_flags(args)
    random_weights = args.pretrained is not None and args.pretrained.lower() == "none"
    if random_weights:
        torch.manual_seed(args.seed)  # random weights must be the same in every run against one collection
    return load_model(args.model, None if random_weights else args.pretrained, device=args.device,
                      allow_random=random_weights)


def inversion_configs(args):
    if args.steps is None:
        return None, None
    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    return OTIConfig(steps=args.steps), OVIConfig(steps=args.steps)


def derived_vectors(args, model) -> dict:
    cuts = parse_cuts(args.isoclip)
    if cuts is None:
        return {}
    projector = IsoCLIPProjector.from_model(model, *cuts)
    return {"image_isoclip": projector.vector("image"), "text_isoclip": projector.vector("text")}


def retry_policy(args):
    if args.retries < 0:
        raise UsageError(f"--retries must be >= 0, got {args.retries}")
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {args.timeout}")
    return RetryPolicy(attempts=args.retries + 1, deadline=args.timeout)


def open_collection_at(args, create: bool):
    return open_collection(args.location, args.collection, engine=args.engine, api_key=args.api_key,
                           timeout=args.timeout, retry=retry_policy(args), create_folder=create)


def open_store(args, clip, create: bool = True, use_warm_start: bool = True):
    """The store the flags name; with --warm-start / --warm-steps (and ``use_warm_start``) it inverts from the
    collection's warm start."""
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


def require_collection(args) -> None:
    """Raises CollectionNotFoundError unless --collection exists at --location (checked before a model loads,
    after the model flags)."""
    check_model_flags(args)
    collection = open_collection_at(args, create=False)
    try:
        if not collection.exists():
            raise CollectionNotFoundError(f"no collection {args.collection!r} at {collection.location}; check "
                                          "--collection and --location (nothing is created by a read)")
    finally:
        collection.close()


def described_collection(args, verify: bool = False) -> dict:
    """describe_collection of --collection at --location (with ``verify``, its verification report under
    "verify"); CollectionNotFoundError when it does not exist."""
    collection = open_collection_at(args, create=False)
    try:
        if not collection.exists():
            raise CollectionNotFoundError(f"no collection {args.collection!r} at {collection.location}; check "
                                          "--collection and --location")
        collection = adopted_view(collection)
        info = describe_collection(collection)
        if verify:
            info["verify"] = verify_collection(collection)
        return info
    finally:
        collection.close()


def apply_image_limit(args) -> None:
    """--max-pixels: the pixel count above which images are refused as possible decompression bombs."""
    if args.max_pixels is None:
        return
    if args.max_pixels < 1:
        raise UsageError(f"--max-pixels must be >= 1, got {args.max_pixels}")
    Image.MAX_IMAGE_PIXELS = args.max_pixels  # read at each call by the image loader; PIL stops at twice it


def background_colour(spec: str) -> tuple[int, int, int]:
    """--background: white, black, or R,G,B (0-255 each)."""
    named = {"white": WHITE, "black": (0, 0, 0)}
    if spec.lower() in named:
        return named[spec.lower()]
    try:
        rgb = tuple(int(x) for x in spec.split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise UsageError(f"--background takes white, black or R,G,B (0-255 each), got {spec!r}")
    return rgb
