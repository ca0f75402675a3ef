"""``crossgap-qdrant adopt``, ``backfill`` and ``optimize``: collections built elsewhere, filled at any scale."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time

from tqdm.auto import tqdm

from crossgap_qdrant.cli.common import EXIT_OK, UsageError, emit, format_table, parse_cuts
from crossgap_qdrant.cli.resources import (
    background_colour,
    inversion_configs,
    load_handle,
    open_collection_at,
    open_store,
    retry_policy,
)
from crossgap_qdrant.evaluate.data import DataError, LabelledSet
from crossgap_qdrant.rivals import IsoCLIPProjector, fit_pca_projector
from crossgap_qdrant.store import CrossModalStore
from crossgap_qdrant.store.adopt import IMAGE_FIELDS, TEXT_FIELDS, adopted_view, payload_item
from crossgap_qdrant.store.backfill import backfill, missing_count
from crossgap_qdrant.store.backfill_ray import ServerSpec, backfill_on_ray
from crossgap_qdrant.store.connection import is_server_location
from crossgap_qdrant.store.stored_transforms import add_stored_transform, stored_map


def cmd_adopt(args) -> int:
    if args.check < 0:
        raise UsageError(f"--check must be >= 0, got {args.check}")
    clip = load_handle(args)
    oti, ovi = inversion_configs(args)
    store = CrossModalStore.adopt(args.location, args.collection, clip, native_vector=args.vector,
                                  modality=args.modality, engine=args.engine, check=args.check,
                                  api_key=args.api_key, timeout=args.timeout, retry=retry_policy(args),
                                  oti_config=oti, ovi_config=ovi, image_background=background_colour(args.background))
    with store:
        info = store.info()
    adopted = info["adopted"]
    check = adopted["check"]
    checked = check if isinstance(check, str) else (f"{check['points']} point(s) encoded again from payload "
                                                     f"{check['field']!r}, cosine >= {check['min_cosine']:.4f}")
    rows = [("collection", f"{info['collection']} at {info['location']} ({info['engine']})"),
            ("vector", repr(adopted["vector"]) + (" (unnamed)" if adopted["vector"] == "" else "")),
            ("modality", adopted["modality"]), ("model", info["model"]), ("vectors checked", checked),
            ("added vectors in", adopted["companion"] or "the collection itself"), ("points", info["points"])]
    text = format_table(rows, ["", "value"]) + (f"\nnext: crossgap-qdrant backfill --location {args.location} "
                                                f"--collection {args.collection} --model {args.model}")
    emit(args, info, text)
    return EXIT_OK


def cmd_backfill(args) -> int:
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    clip = load_handle(args)
    with open_store(args, clip, create=False) as store:
        transforms = stored_transforms(args.transform, args.modality, store.clip)
        start = time.perf_counter()
        if args.ray is not None:
            server = None
            if is_server_location(args.location):
                server = ServerSpec(args.location, args.collection, api_key=args.api_key, timeout=args.timeout)
            with contextlib.redirect_stdout(sys.stderr):  # Ray reports dead workers on stdout: keep it for --json
                report = backfill_on_ray(store.collection, store.encoder, store.names, args.modality,
                                         address=None if args.ray == "local" else args.ray, workers=args.workers,
                                         batch_size=args.batch_size, threads=args.threads or 1, server=server,
                                         progress=args.progress)
        else:
            report = backfill(store.collection, store.encoder, store.names, args.modality,
                              batch_size=args.batch_size, workers=args.workers, progress=args.progress)
        seconds = time.perf_counter() - start
        left = missing_count(store.collection, store.names, args.modality)
        added = {name: add_stored_transform(store, name, vector, progress=args.progress)
                 for name, vector in transforms.items()}
        engine = store.engine
    data = {"written": report.written, "missing": left, "seconds": round(seconds, 3),
            "points_per_second": round(report.written / seconds, 3) if seconds > 0 else None,
            "workers": args.workers, "ray": args.ray, "partition": report.partition, "transforms": added,
            "failed": [{"item": str(i), "reason": r} for i, r in report.failed]}
    text = format_table([(k, v) for k, v in data.items() if k != "failed"], ["", "value"])
    if engine == "qdrant-edge" and report.written:
        text += "\nsearches are exact until the index is built: crossgap-qdrant optimize"
    if data["failed"]:
        text += "\nfailed:\n" + "\n".join(f"  {f['item']}: {f['reason']}" for f in data["failed"])
    emit(args, data, text)
    return EXIT_OK


def stored_transforms(specs: list[str], modality: str, clip) -> dict:
    """{name: derived vector} of --transform isoclip:TOP,BOTTOM / pca, checked before anything runs."""
    out = {}
    for spec in specs:
        kind, _, cuts = spec.partition(":")
        if kind == "isoclip" and cuts:
            vector = IsoCLIPProjector.from_model(clip.model, *parse_cuts(cuts)).vector(modality)
        elif kind == "pca" and not cuts:
            vector = fit_pca_projector(clip.model, clip.tokenizer).vector(modality)
        else:
            raise UsageError(f"--transform takes isoclip:TOP,BOTTOM or pca, got {spec!r} (the gap shift moves "
                             "queries only and is not linear in the normalised vector: it is not stored)")
        stored_map(vector, clip.model)  # refuses what stored vectors cannot give, before anything is written
        out[f"{modality}_{kind}"] = vector
    return out


def cmd_optimize(args) -> int:
    collection = adopted_view(open_collection_at(args, create=False))
    try:
        target = getattr(collection, "companion", collection)
        before = _indexed(target)
        done = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                collection.optimize()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                failure.append(exc)
            finally:
                done.set()

        start = time.perf_counter()
        threading.Thread(target=run, daemon=True).start()
        with tqdm(desc="building the search index", unit="s", disable=not args.progress,
                  bar_format="{desc}: {elapsed}") as bar:
            while not done.wait(0.5):
                bar.update(0)
        if failure:
            raise failure[0]
        data = {"collection": collection.name, "engine": collection.engine, "seconds": round(time.perf_counter()
                                                                                              - start, 3),
                "indexed_vectors_before": before, "indexed_vectors": _indexed(target)}
    finally:
        collection.close()
    text = format_table(list(data.items()), ["", "value"])
    if data["engine"] != "qdrant-edge":
        text += "\n(a Qdrant server and local mode index on their own: nothing to do)"
    emit(args, data, text)
    return EXIT_OK


def labelled_set_from_collection(args, field: str, modality: str, limit: int = 100_000):
    """The labelled set of a collection's points: class ``payload[field]``, item the image path (or text) in
    the payload, as the adoption check reads them. Points lacking either are left out (logged)."""
    collection = adopted_view(open_collection_at(args, create=False))
    items, labels, left_out = [], [], 0
    try:
        for page in collection.pages(page_size=512, limit=limit, with_payload=True):
            for r in page:
                payload = r.payload or {}
                _, item = payload_item(payload, IMAGE_FIELDS if modality == "image" else TEXT_FIELDS, modality)
                label = payload.get(field)
                if item is None or label is None or isinstance(label, (dict, list)):
                    left_out += 1
                    continue
                items.append(item)
                labels.append(str(label))
    finally:
        collection.close()
    if left_out:
        logging.getLogger("crossgap_qdrant").warning(
            "%d point(s) of %s have no %r label or no %s in their payload: left out", left_out, args.collection,
            field, "readable image path" if modality == "image" else "text")
    if len(items) < 2:
        raise DataError(f"collection {args.collection!r} has {len(items)} point(s) with a {field!r} payload field and "
                        f"an {'image path' if modality == 'image' else 'text'} in their payload: the evaluation "
                        "needs at least 2")
    return LabelledSet(modality, items, labels, name=f"{args.collection} ({field})")


def _indexed(collection) -> int | None:
    indexed = getattr(collection, "indexed_vectors", None)
    return indexed() if callable(indexed) else None


__all__ = ["cmd_adopt", "cmd_backfill", "cmd_optimize", "labelled_set_from_collection"]
