"""Ingestion: identify items, plan what each lacks, encode, invert, and write each point whole.

Ingestion is idempotent and resumable. Point ids are uuid5 of a content hash unless given; each point is
written whole (native, inverted, derived vectors and payload in one request per batch) once its batch is
computed, so a crash loses at most the batch in flight, and a re-run skips what is stored and inverts only
the items that lack their inverted vector.

Id policy: a given id that already holds other content, or an item of the other modality, is refused with
:class:`~crossgap_qdrant.store.errors.IdConflictError` before anything of the call is written, unless
``overwrite=True`` (then the point is replaced whole). Ids repeated within one call are refused.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from PIL import Image
from qdrant_client import models

from crossgap_qdrant.features import normalize_features
from crossgap_qdrant.images import IMAGE_EXTENSIONS, list_image_files
from crossgap_qdrant.progress import progress_bar
from crossgap_qdrant.store import ids as pid_lib
from crossgap_qdrant.store.collection import Collection
from crossgap_qdrant.store.encoder import Encoder, checked_rows, unit_vectors
from crossgap_qdrant.store.errors import IdConflictError, InvalidRequestError, ReservedPayloadKeyError
from crossgap_qdrant.store.ids import CONTENT_KEY, PointId
from crossgap_qdrant.store.schema import VectorNames, reserved_payload_keys

logger = logging.getLogger(__name__)


@dataclass
class IngestReport:
    """What one ingestion call did.

    Attributes:
        inserted: new points written (and points replaced with ``overwrite=True``).
        skipped_existing: items already stored with every vector this call would write (a payload given for
            them is merged into the stored one).
        inverted: inverted vectors computed and written (new items and items resumed after a crash).
        duplicates: items repeating an earlier item of the same call (same content), ignored.
        failed: (item, reason) for each item that was skipped (unreadable or corrupt file, empty text).
        ids: the point id of each input item, in input order (None where it failed).
        seconds_encoding: decoding, preprocessing, native and derived encoders.
        seconds_inversion: OTI / OVI.
        seconds_database: Qdrant reads and writes.
    """

    inserted: int = 0
    skipped_existing: int = 0
    inverted: int = 0
    duplicates: int = 0
    failed: list[tuple[Any, str]] = field(default_factory=list)
    ids: list[PointId | None] = field(default_factory=list)
    seconds_encoding: float = 0.0
    seconds_inversion: float = 0.0
    seconds_database: float = 0.0

    @property
    def seconds_total(self) -> float:
        return self.seconds_encoding + self.seconds_inversion + self.seconds_database


class _Timer:
    def __init__(self, report: IngestReport, attr: str):
        self.report, self.attr = report, attr

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        setattr(self.report, self.attr, getattr(self.report, self.attr) + time.perf_counter() - self.start)


@dataclass
class Item:
    """One input item on its way into the collection."""

    index: int  # position in the caller's input
    source: Any  # what the caller passed (path, PIL image, text, or the feature row's index)
    pid: PointId | None = None
    digest: str | None = None  # sha256 of the content (see ids.CONTENT_KEY)
    payload: dict = field(default_factory=dict)
    raw: Any = None  # file bytes, PIL image, or text: what the encoders need
    features: torch.Tensor | None = None  # [E] native feature, when given or computed
    inverted: torch.Tensor | None = None  # [E] inverted feature, when given
    given_payload: dict | None = None  # the caller's payload, merged into the stored one when already stored


# ------------------------------------------------------------------------------------------ building items
def image_items(images: Any, dim: int) -> list[Item] | torch.Tensor:
    """Items from a folder, an image path, a list of paths or PIL images; or checked features [N, E]."""
    if isinstance(images, (torch.Tensor,)) or type(images).__module__ == "numpy":
        return checked_rows(images, dim, "image features")
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if path.is_dir():
            files = list_image_files(path)
            if not files:
                raise InvalidRequestError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {path}")
            images = files
        elif path.is_file():
            images = [path]
        else:
            raise FileNotFoundError(f"no such folder or image file: {path}")
    items = []
    for i, image in enumerate(images):
        if isinstance(image, (str, os.PathLike)):
            items.append(Item(i, str(image), payload={"modality": "image", "source": os.path.abspath(image)}))
        elif isinstance(image, Image.Image):
            items.append(Item(i, image, raw=image, payload={"modality": "image"}))
        else:
            raise TypeError(f"image #{i}: expected a path or a PIL image, got {type(image).__name__}")
    return items


def text_items(texts: Any, dim: int) -> list[Item] | torch.Tensor:
    """Items from a list of strings or a UTF-8 file (one text a line); or checked features [N, E]."""
    if isinstance(texts, torch.Tensor) or type(texts).__module__ == "numpy":
        return checked_rows(texts, dim, "text features")
    if isinstance(texts, (str, os.PathLike)):
        path = Path(texts)
        if not path.is_file():
            raise FileNotFoundError(
                f"no such text file: {str(path)[:80]!r} (pass a list of strings to ingest texts directly)"
            )
        items = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                text = line.rstrip("\r\n")
                if text.strip():
                    payload = {"modality": "text", "text": text, "source": os.path.abspath(path), "line": lineno}
                    items.append(Item(len(items), text, raw=text, payload=payload))
        return items
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings or a file path")
    return [Item(i, text, raw=text, payload={"modality": "text", "text": text}) for i, text in enumerate(texts)]


def _identify(modality: str, item: Item) -> None:
    """Sets item.digest and item.pid (content id unless given); loads a file's bytes. Raises OSError/ValueError."""
    if item.features is not None:
        if item.digest is None:
            item.digest = pid_lib.features_digest(item.features)
    elif modality == "text":
        if not isinstance(item.raw, str) or not item.raw.strip():
            # an item's rejection, listed in the report as "ValueError: ..." (never raised to the caller)
            raise ValueError("empty text" if isinstance(item.raw, str) else f"not a string: {type(item.raw).__name__}")
        item.digest = pid_lib.text_digest(item.raw)
    elif isinstance(item.source, str):
        with open(item.source, "rb") as f:
            item.raw = f.read()
        item.digest = pid_lib.bytes_digest(item.raw)
    else:
        item.digest = pid_lib.pil_digest(item.raw)
    if item.pid is None:
        item.pid = pid_lib.content_id(modality, item.digest)
    item.payload[CONTENT_KEY] = f"{modality}:{item.digest}"


def _vector_list(row: torch.Tensor) -> list[float]:
    return row.detach().to(torch.float32).cpu().numpy().tolist()


# ----------------------------------------------------------------------------------------------- ingestion
class Ingestion:
    """One ingestion call of one modality (see the module docstring).

    Args:
        collection: where points go.
        encoder: computes native, derived and inverted vectors.
        names: the collection's vector names.
        modality: "image" or "text".
        invert: compute (or take given) inverted vectors.
        overwrite: replace points whose given id holds other content.
        write_batch: points per write request.
    """

    def __init__(self, collection: Collection, encoder: Encoder, names: VectorNames, modality: str, *,
                 invert: bool, overwrite: bool, write_batch: int):
        self.collection = collection
        self.encoder = encoder
        self.modality = modality
        self.native = names.native(modality)
        self.inverted_name = names.inverted(modality)
        self.derived = encoder.derived_for(modality)
        self.invert = invert
        self.overwrite = overwrite
        self.write_batch = write_batch

    def run(self, items: list[Item] | torch.Tensor, payloads, ids, inverted_features, batch_size: int,
            progress: bool) -> IngestReport:
        if batch_size < 1:
            raise InvalidRequestError(f"batch_size must be >= 1, got {batch_size}")
        self.invert = self.invert or inverted_features is not None  # given vectors are written, none computed
        if isinstance(items, torch.Tensor):  # features as given, validated as a whole already
            # ids hash the caller's rows: normalising unit rows again can change their last bits
            unit = normalize_features(items, f"{self.modality} features")
            items = [Item(i, i, features=unit[i], digest=pid_lib.features_digest(row),
                          payload={"modality": self.modality}) for i, row in enumerate(items)]
        n = len(items)
        # every check of the caller's arguments happens here, before the first write
        if payloads is not None and len(payloads) != n:
            raise InvalidRequestError(f"got {len(payloads)} payloads for {n} items")
        if ids is not None:
            if len(ids) != n:
                raise InvalidRequestError(f"got {len(ids)} ids for {n} items")
            given = [pid_lib.normalize_point_id(pid) for pid in ids]
            repeated = sorted(str(p) for p, count in Counter(given).items() if count > 1)
            if repeated:
                raise IdConflictError(f"ids must be unique within a call; repeated: {', '.join(repeated[:5])}")
            for item, pid in zip(items, given):
                item.pid = pid
        if inverted_features is not None:
            inverted = unit_vectors(inverted_features, self.encoder.dim, "inverted features")
            if inverted.shape[0] != n:
                raise InvalidRequestError(f"got {inverted.shape[0]} inverted features for {n} items")
            for item, row in zip(items, inverted):
                item.inverted = row
        for i, item in enumerate(items):
            if payloads is not None and payloads[i] is not None:
                if not isinstance(payloads[i], Mapping):
                    raise TypeError(f"payload #{i} must be a dict or None, got {type(payloads[i]).__name__}")
                reserved = reserved_payload_keys(payloads[i], item.payload)
                if reserved:
                    raise ReservedPayloadKeyError(
                        f"payload #{i} sets {', '.join(repr(k) for k in reserved)}, which the store writes itself "
                        "(modality, content hash, source file, text, and derived values such as hub_*); use other keys")
                item.given_payload = dict(payloads[i])
                item.payload.update(payloads[i])
        if ids is not None and not self.overwrite:
            self._check_given_ids(items)

        report = IngestReport(ids=[None] * n)
        seen: set = set()

        with progress_bar(n, f"ingest {self.modality}s", self.modality, enabled=progress) as bar:
            for start in range(0, n, batch_size):
                chunk = items[start : start + batch_size]
                self._chunk(chunk, report, seen, bar, progress)
        if report.inserted or report.inverted:
            with _Timer(report, "seconds_database"):
                self.collection.optimize()
        return report

    def _check_given_ids(self, items: list[Item]) -> None:
        """Refuses, before any write, given ids that hold another modality or other content."""
        conflicts = []
        for start in range(0, len(items), 256):
            chunk = items[start : start + 256]
            digests = {}
            for item in chunk:
                try:
                    _identify(self.modality, item)
                except (OSError, ValueError):
                    continue  # reported as failed when the chunk is ingested
                digests[item.pid] = item.payload[CONTENT_KEY]
                if isinstance(item.source, str) and item.features is None and self.modality == "image":
                    item.raw = None  # read again when its chunk is ingested
            records = self.collection.retrieve(list(digests), with_payload=["modality", CONTENT_KEY])
            for record in records:
                pid = pid_lib.normalize_point_id(record.id)
                conflict = self._conflict(record.payload or {}, digests[pid])
                if conflict:
                    conflicts.append(f"{pid} ({conflict})")
        if conflicts:
            raise IdConflictError(
                f"{len(conflicts)} given id(s) already hold other items: {'; '.join(conflicts[:5])}. Nothing was "
                "written. Use new ids, or overwrite=True to replace those points."
            )

    def _conflict(self, payload: Mapping[str, Any], content: str) -> str | None:
        """Why a stored point cannot take this item under the same id, or None."""
        stored_modality = payload.get("modality")
        if stored_modality is not None and stored_modality != self.modality:
            return f"it is a stored {stored_modality}, this is an {self.modality}"
        stored = payload.get(CONTENT_KEY)
        if stored is None:  # written by another tool: its content cannot be shown to be this item
            return f"it holds an item without a {CONTENT_KEY!r} record (written elsewhere), so its content is unknown"
        if stored != content:
            return "it holds other content"
        return None

    def _chunk(self, chunk: list[Item], report: IngestReport, seen: set, bar, progress: bool) -> None:
        live: list[Item] = []
        with _Timer(report, "seconds_encoding"):
            for item in chunk:
                try:
                    _identify(self.modality, item)
                except (OSError, ValueError) as exc:
                    report.failed.append((item.source, f"{type(exc).__name__}: {exc}"))
                    bar.update(1)
                    continue
                report.ids[item.index] = item.pid
                if item.pid in seen:
                    report.duplicates += 1
                    bar.update(1)
                    continue
                seen.add(item.pid)
                live.append(item)
        if not live:
            return
        raw_available = live[0].features is None
        wanted = [self.native] + ([self.inverted_name] if self.invert else []) + (
            list(self.derived) if raw_available else [])
        with _Timer(report, "seconds_database"):
            records = self.collection.retrieve([it.pid for it in live], with_payload=["modality", CONTENT_KEY],
                                               with_vectors=wanted)
        stored = {pid_lib.normalize_point_id(r.id): r for r in records}

        new: list[Item] = []
        partial: list[tuple[Item, set]] = []  # stored items lacking some vectors
        payload_updates: list[tuple[PointId, dict]] = []  # stored items given a payload in this call
        for item in live:
            record = stored.get(item.pid)
            if record is None:
                new.append(item)
                continue
            conflict = self._conflict(record.payload or {}, item.payload[CONTENT_KEY])
            if conflict:
                if not self.overwrite:
                    raise IdConflictError(f"point {item.pid} already holds another item ({conflict}); use "
                                          "overwrite=True to replace it")
                new.append(item)  # replaced whole
                continue
            if item.given_payload:
                payload_updates.append((item.pid, item.given_payload))
            vectors = record.vector or {}
            lacking = {name for name in wanted if name not in vectors}
            if not lacking:
                report.skipped_existing += 1
                bar.update(1)
            else:
                partial.append((item, lacking))
                if self.native in vectors:
                    item.features = torch.tensor(vectors[self.native], dtype=torch.float32)

        need_raw = new + [it for it, lacking in partial if self.native in lacking or lacking & set(self.derived)]
        with _Timer(report, "seconds_encoding"):
            computed = self._encode(need_raw, report, raw_available)
        for it in new:
            if it.pid not in computed:  # failed to decode: a later copy in this run may still go in
                seen.discard(it.pid)
        new = [it for it in new if it.pid in computed]
        partial = [(it, lacking) for it, lacking in partial if it.pid in computed or self.native not in lacking]

        todo = (new + [it for it, lacking in partial if self.inverted_name in lacking]) if self.invert else []
        to_run = [it for it in todo if it.inverted is None]
        if to_run:
            with _Timer(report, "seconds_inversion"):
                feats = torch.stack([it.features for it in to_run])
                out = self.encoder.invert(self.modality, feats, [str(it.pid) for it in to_run], progress=progress)
            for it, row in zip(to_run, out):
                it.inverted = row
        for it in todo:
            computed.setdefault(it.pid, {})[self.inverted_name] = it.inverted

        points = [models.PointStruct(id=it.pid, payload=it.payload,
                                     vector={k: _vector_list(v) for k, v in computed[it.pid].items()}) for it in new]
        updates = []
        for it, lacking in partial:
            vectors = {k: v for k, v in computed.get(it.pid, {}).items() if k in lacking}
            if vectors:
                updates.append(models.PointVectors(id=it.pid, vector={k: _vector_list(v) for k, v in vectors.items()}))
        with _Timer(report, "seconds_database"):
            step = self.write_batch
            for start in range(0, len(points), step):
                self.collection.upsert(points[start : start + step])
            for start in range(0, len(updates), step):
                self.collection.update_vectors(updates[start : start + step])
            if payload_updates:
                self.collection.set_payloads(payload_updates)
        report.inserted += len(points)
        report.inverted += len(todo)
        logger.debug("%s batch: %d new, %d completed, %d inverted (%d given), %d already stored, %d failed so far",
                     self.modality, len(points), len(updates), len(todo), len(todo) - len(to_run),
                     report.skipped_existing, len(report.failed))
        bar.update(len(points) + len(partial))

    def _encode(self, items: list[Item], report: IngestReport, raw_available: bool) -> dict[PointId, dict]:
        """Native (unless known) and derived vectors of items; decoding failures go to the report."""
        out: dict[PointId, dict[str, torch.Tensor]] = {}
        if not items:
            return out
        if not raw_available:
            return {it.pid: {self.native: it.features} for it in items}
        if self.modality == "image":
            ok, pixels = [], []
            for it in items:
                name = str(it.source) if isinstance(it.source, str) else f"image #{it.index}"
                try:
                    pixels.append(self.encoder.pixels(it.raw, name=name))
                    ok.append(it)
                except Exception as exc:  # the loader names the image; the report lists it beside the reason
                    report.failed.append((it.source, str(exc).removeprefix(f"{name}: ")))
                    report.ids[it.index] = None
            if not ok:
                return out
            inputs = torch.stack(pixels)
        else:
            ok = items
            inputs = self.encoder.tokens([it.raw for it in ok])
        native = self.encoder.native(self.modality, inputs)
        extra = self.encoder.derived_vectors(self.modality, inputs)
        for i, it in enumerate(ok):
            if it.features is None:
                it.features = native[i]
            out[it.pid] = {self.native: it.features, **{k: v[i] for k, v in extra.items()}}
        return out


def invert_missing(collection: Collection, encoder: Encoder, names: VectorNames, modality: str, *,
                   batch_size: int, progress: bool, query_filter: models.Filter | None) -> IngestReport:
    """Computes the inverted vector of every stored point that has the native one but lacks it.

    Stored native vectors that are not finite non-zero rows (written by another tool) are reported in
    ``failed`` and skipped, so the healthy points still get their inverted vectors.
    """
    native, inverted = names.native(modality), names.inverted(modality)
    report = IngestReport()
    flt = models.Filter(
        must=[models.HasVectorCondition(has_vector=native)] + ([query_filter] if query_filter else []),
        must_not=[models.HasVectorCondition(has_vector=inverted)],
    )
    with _Timer(report, "seconds_database"):
        total = collection.count(flt)
    offset = None

    # offset pagination in id order: points that get their inverted vector leave the filter behind the offset
    with progress_bar(total, f"invert {modality}s", modality, enabled=progress) as bar:
        while True:
            with _Timer(report, "seconds_database"):
                records, offset = collection.scroll(scroll_filter=flt, limit=batch_size, offset=offset,
                                                    with_payload=False, with_vectors=[native])
            good, feats = [], []
            for r in records:
                pid = pid_lib.normalize_point_id(r.id)
                try:
                    feats.append(unit_vectors(torch.tensor(r.vector[native], dtype=torch.float32),
                                              encoder.dim, f"stored {native!r} vector of point {pid}", "")[0])
                    good.append(pid)
                except (TypeError, ValueError) as exc:
                    report.failed.append((pid, str(exc)))
                    bar.update(1)
            if good:
                with _Timer(report, "seconds_inversion"):
                    out = encoder.invert(modality, torch.stack(feats), [str(p) for p in good], progress=progress)
                with _Timer(report, "seconds_database"):
                    collection.update_vectors([models.PointVectors(id=pid, vector={inverted: _vector_list(row)})
                                               for pid, row in zip(good, out)])
                report.ids.extend(good)
                report.inverted += len(good)
                bar.update(len(good))
            if offset is None:
                break
    if report.inverted:
        collection.optimize()
    return report
