"""Labelled folders of synthetic images: one sub-folder per class, PNG files."""

from __future__ import annotations

import numpy as np
from PIL import Image


def make_image_folder(root, classes=("cat", "dog", "car"), per_class=3, size=36):
    """Writes ``per_class`` [size, size, 3] PNGs per class under ``root/<class>/`` and returns ``root``."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            base = np.zeros((size, size, 3), dtype=np.uint8)
            # a class colour plus noise; the last image of each class takes the next class's colour, so that
            # no method is perfect
            base[..., (c + (i == per_class - 1)) % len(classes)] = 200
            noise = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(base + noise).save(root / name / f"{i}.png")
    return root
