"""The Edge engine under stress: threads, damaged folders, full disks, a folder held by another process."""

import threading

import numpy as np
import pytest
from qdrant_client import models

from crossgap_qdrant.store.engines import open_collection

DIM = 8
N = 50


def _make(folder, name="c", n=N):
    coll = open_collection(folder, name, create_folder=True)
    rng = np.random.default_rng(0)
    coll.create({"image": DIM, "text": DIM}, {"m": 1})
    coll.upsert([models.PointStruct(id=i, vector={"image": rng.normal(size=DIM).tolist()}, payload={"n": i})
                 for i in range(n)])
    coll.close()


def test_first_use_from_many_threads_opens_the_shard_once(tmp_path):
    folder = tmp_path / "db"
    _make(folder)
    for _ in range(10):
        coll = open_collection(folder, "c")  # fresh: the shard is opened on first use
        barrier, errors, counts = threading.Barrier(8), [], []

        def use():
            barrier.wait()
            try:
                counts.append(coll.count())
            except Exception as exc:  # collected: an error in a thread would otherwise go unnoticed
                errors.append(exc)

        threads = [threading.Thread(target=use) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        coll.close()
        assert not errors, errors[0]
        assert counts == [N] * 8
