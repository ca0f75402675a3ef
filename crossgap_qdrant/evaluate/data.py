"""Labelled retrieval sets for the evaluation harness: folder-per-class images, labelled texts, query/gallery
splits given as files."""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from crossgap_qdrant.errors import CrossgapError
from crossgap_qdrant.images import ImageError, check_pixel_count, is_image_file, list_image_files

logger = logging.getLogger(__name__)


class DataError(CrossgapError, ValueError):
    """The labelled data cannot be read or is unusable (the message names the file and the problem)."""


@dataclass
class LabelledSet:
    """A labelled retrieval set.

    Attributes:
        modality: "image" (items are file paths) or "text" (items are strings).
        gallery: the gallery items.
        gallery_labels: one label per gallery item.
        queries: the query items, or None when every gallery item is also a query (own item excluded).
        query_labels: one label per query (None with ``queries``).
        name: shown in the report.
    """

    modality: str
    gallery: list[str]
    gallery_labels: list[str]
    queries: list[str] | None = None
    query_labels: list[str] | None = None
    name: str = ""

    def __post_init__(self):
        if self.modality not in ("image", "text"):
            raise DataError(f"modality must be 'image' or 'text', got {self.modality!r}")
        if len(self.gallery) != len(self.gallery_labels):
            raise DataError(f"{len(self.gallery)} gallery items but {len(self.gallery_labels)} labels")
        if (self.queries is None) != (self.query_labels is None):
            raise DataError("queries and query_labels go together")
        if self.queries is not None and len(self.queries) != len(self.query_labels):
            raise DataError(f"{len(self.queries)} queries but {len(self.query_labels)} labels")
        if len(self.gallery) < 2:
            raise DataError(f"the gallery needs at least 2 items, got {len(self.gallery)}")
        if self.queries is not None and not self.queries:
            raise DataError("the query file lists no item")
        classes = sorted(set(self.gallery_labels))
        if len(classes) < 2:  # every item would be relevant to every query: 100 mAP for any method
            raise DataError(f"the gallery has one class ({classes[0]!r}); ranking by class needs at least two: add "
                            "class subfolders (or labels) of other kinds")

    @property
    def split(self) -> bool:
        """True when queries are given apart from the gallery."""
        return self.queries is not None

    @property
    def all_items(self) -> list[str]:
        """Gallery items, then queries (the order of every feature tensor of the harness)."""
        return list(self.gallery) + list(self.queries or [])

    @property
    def num_queries(self) -> int:
        return len(self.queries) if self.split else len(self.gallery)


def load_image_folder(root: str | os.PathLike) -> LabelledSet:
    """Folder-per-class images: ``root/<label>/**/<image>``; every image is a query and a gallery item."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"no such folder: {root}")
    items, labels = [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in list_image_files(class_dir):
            items.append(str(path))
            labels.append(class_dir.name)
    if not items:
        raise DataError(f"no images in class subfolders of {root} (expected {root}/<label>/<image>)")
    loose = [p for p in root.iterdir() if p.is_file() and is_image_file(p)]
    if loose:
        logger.warning("%d image file(s) directly in %s are left out: they are in no class subfolder, so they have "
                       "no label", len(loose), root)
    return LabelledSet("image", items, labels, name=root.name)


def drop_unreadable_images(data: LabelledSet) -> tuple[LabelledSet, dict[str, str]]:
    """The set without the images that cannot be opened or are too large to decode (checked from each file's
    header, without decoding it), and {path: reason} of those left out.

    Raises:
        DataError: too few items are left (see :class:`LabelledSet`).
    """
    if data.modality != "image":
        return data, {}
    dropped: dict[str, str] = {}
    for path in data.all_items:
        try:
            with warnings.catch_warnings():  # PIL's own bomb warning would report the image a second time
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    check_pixel_count(image, path)
        except ImageError as exc:
            dropped[path] = str(exc).removeprefix(f"{path}: ")
        except Exception as exc:  # PIL raises several types on files it cannot identify
            dropped[path] = f"not an image file PIL can read ({type(exc).__name__})"
    if not dropped:
        return data, {}

    def keep(items, labels):
        kept = [(i, lab) for i, lab in zip(items, labels) if i not in dropped]
        return [i for i, _ in kept], [lab for _, lab in kept]

    gallery, gallery_labels = keep(data.gallery, data.gallery_labels)
    queries, query_labels = keep(data.queries, data.query_labels) if data.split else (None, None)
    for path, reason in dropped.items():
        logger.warning("left out of the evaluation: %s: %s", path, reason)
    return LabelledSet("image", gallery, gallery_labels, queries, query_labels, data.name), dropped


def _read_records(path: Path) -> list[tuple[str, str, int]]:
    """(item, label, line number) from a TSV file ("label<TAB>item") or JSON lines ({"label", "text"|"image"})."""
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if path.suffix.lower() in (".jsonl", ".json"):
                try:
                    rec = json.loads(line)
                    item = rec.get("text", rec.get("image"))
                    label = rec["label"]
                except (json.JSONDecodeError, KeyError, AttributeError) as exc:
                    raise DataError(f"{path}:{lineno}: expected a JSON object with 'label' and 'text' or 'image' "
                                    f"({exc})")
            else:
                if "\t" not in line:
                    raise DataError(f"{path}:{lineno}: expected 'label<TAB>item'")
                label, item = line.split("\t", 1)
            if not isinstance(item, str) or not item.strip():
                raise DataError(f"{path}:{lineno}: empty item")
            out.append((item, str(label), lineno))
    if not out:
        raise DataError(f"{path} lists no item")
    return out


def _resolve_modality(records: list[tuple[str, str, int]], base: Path) -> tuple[str, list[str]]:
    """Items that all name image files (relative to ``base``) are images; otherwise texts."""
    paths = [Path(item) if os.path.isabs(item) else base / item for item, _, _ in records]
    if all(is_image_file(p) for p in paths):
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise DataError(f"{len(missing)} image file(s) not found, e.g. {missing[0]}")
        return "image", [str(p) for p in paths]
    return "text", [item for item, _, _ in records]


def load_labelled_texts(path: str | os.PathLike) -> LabelledSet:
    """Labelled texts: TSV lines "label<TAB>text" or JSON lines {"label": ..., "text": ...}."""
    path = Path(path)
    records = _read_records(path)
    return LabelledSet("text", [r[0] for r in records], [r[1] for r in records], name=path.stem)


def load_split(query_file: str | os.PathLike, gallery_file: str | os.PathLike) -> LabelledSet:
    """A query/gallery split: two files of "label<TAB>item" lines (or JSON lines).

    Items that are all image file names (absolute, or relative to the file's folder) make an image set;
    otherwise the items are texts.
    """
    qpath, gpath = Path(query_file), Path(gallery_file)
    qrec, grec = _read_records(qpath), _read_records(gpath)
    qmod, queries = _resolve_modality(qrec, qpath.parent)
    gmod, gallery = _resolve_modality(grec, gpath.parent)
    if qmod != gmod:
        raise DataError(f"queries ({qpath}) are {qmod}s but the gallery ({gpath}) holds {gmod}s")
    return LabelledSet(gmod, gallery, [r[1] for r in grec], queries, [r[1] for r in qrec], name=gpath.stem)


def load_labelled_set(path: str | os.PathLike, queries: str | os.PathLike | None = None) -> LabelledSet:
    """A folder -> :func:`load_image_folder`; a file -> :func:`load_labelled_texts` (or, with ``queries``,
    ``path`` is the gallery file of :func:`load_split`)."""
    if queries is not None:
        return load_split(queries, path)
    if Path(path).is_dir():
        return load_image_folder(path)
    return load_labelled_texts(path)


def read_lines(path: str | os.PathLike | None, what: str) -> list[str] | None:
    """The non-blank lines (stripped) of a UTF-8 text file, or None without a path; ``what`` names it in errors."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: no such file: {path}") from None
    if not lines:
        raise DataError(f"{what}: {path} holds no text")
    return lines


def read_images(folder: str | os.PathLike | None, what: str) -> list[str] | None:
    """The image files under a folder (recursively), or None without a folder; ``what`` names it in errors."""
    if folder is None:
        return None
    images = [str(p) for p in list_image_files(Path(folder))]
    if not images:
        raise FileNotFoundError(f"{what}: no image files under {folder}")
    return images
