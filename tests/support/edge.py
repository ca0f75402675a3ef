"""Small Edge collections written directly (no model), for tests of the engine's failure handling."""

from __future__ import annotations

import numpy as np
from qdrant_client import models

from crossgap_qdrant.store.engines import open_collection

DIM = 8
N = 50


def make_collection(folder, name="c", n=N, optimize=False):
    """Writes collection ``name`` under ``folder``: ``n`` points with a random [DIM] "image" vector (and an
    empty "text" vector), payload {"n": i}; closed afterwards."""
    coll = open_collection(folder, name, create_folder=True)
    rng = np.random.default_rng(0)
    coll.create({"image": DIM, "text": DIM}, {"m": 1})
    coll.upsert([models.PointStruct(id=i, vector={"image": rng.normal(size=DIM).tolist()}, payload={"n": i})
                 for i in range(n)])
    if optimize:
        coll.optimize()
    coll.close()


def first_segment(root, name="c"):
    """The first segment folder of collection ``name`` under ``root``."""
    return next((root / name / "shard" / "segments").iterdir())
