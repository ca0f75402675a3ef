"""Fixtures of the web service's and the contact sheet's tests: small stores built with the demo model."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from crossgap_qdrant.datasets import OPENCLIPART_PNG
from crossgap_qdrant.inversion import OTIConfig, OVIConfig
from crossgap_qdrant.store import CrossModalStore

#: Colours and shapes of the generated gallery (one image each).
COLOURS = ("red", "blue", "green")
SHAPES = ("ellipse", "rectangle")
TEXTS = ("a red circle", "a blue square", "a green triangle", "a yellow star")

#: Held-out openclipart categories the browser test's gallery is drawn from, where the Debian package exists.
OPENCLIPART_CATEGORIES = ("food", "plants", "tools", "buildings")


def shape_images(folder: Path) -> list[Path]:
    """Writes one 96x96 PNG per colour and shape (and a transparent one) into ``folder``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for colour in COLOURS:
        for shape in SHAPES:
            image = Image.new("RGB", (96, 96), "white")
            getattr(ImageDraw.Draw(image), shape)((16, 16, 80, 80), fill=colour)
            path = folder / f"{colour}_{shape}.png"
            image.save(path)
            paths.append(path)
    transparent = Image.new("RGBA", (80, 60), (0, 0, 0, 0))
    ImageDraw.Draw(transparent).polygon([(40, 5), (75, 55), (5, 55)], fill=(200, 160, 0, 255))
    transparent.save(folder / "yellow_triangle.png")
    return paths + [folder / "yellow_triangle.png"]


def openclipart_images(per_category: int = 4) -> list[Path]:
    """The first ``per_category`` PNGs (by name) of each of :data:`OPENCLIPART_CATEGORIES`; [] without the
    Debian package."""

    out: list[Path] = []
    for category in OPENCLIPART_CATEGORIES:
        folder = OPENCLIPART_PNG / category
        if folder.is_dir():
            out += sorted(p for p in folder.iterdir() if p.suffix == ".png" and p.is_file())[:per_category]
    return out


def build_store(location: Path, clip, images: list[Path], texts=TEXTS, collection: str = "serve",
                exact_images: bool = False):
    """A store at ``location`` holding ``images`` and ``texts``, inverted with 2 steps (fast, not exact), or
    with ``exact_images`` the images with the published OTI budget (what a user's collection holds)."""

    oti = None if exact_images else OTIConfig(steps=2)
    store = CrossModalStore.open(str(location), collection, clip, oti_config=oti, ovi_config=OVIConfig(steps=2))
    report = store.ingest_images([str(p) for p in images], progress=False)
    assert not report.failed, report.failed
    store.ingest_texts(list(texts), progress=False)
    return store
