"""verify: a collection checked end to end; impossible cosine scores refused as corruption."""

import shutil

import numpy as np
import pytest
from qdrant_client import models

from crossgap_qdrant.cli import EXIT_ERROR, EXIT_OK, main
from crossgap_qdrant.store.engines import open_collection
from crossgap_qdrant.store.errors import CorruptCollectionError
from crossgap_qdrant.store.verify import verify_collection
from tests.support.edge import DIM, N, first_segment, make_collection


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("healthy") / "db"
    make_collection(folder, optimize=True)
    coll = open_collection(folder, "c")
    assert coll.count() == N
    coll.close()
    return folder


def _damaged(healthy, tmp_path, what, data, offset=0):
    root = tmp_path / "db"
    shutil.copytree(healthy, root)
    with open(first_segment(root) / f"vector_storage-image/{what}", "r+b") as f:
        f.seek(offset)
        f.write(data)
    return root


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_healthy_collection_verifies(healthy, capsys):
    coll = open_collection(healthy, "c")
    report = verify_collection(coll)
    coll.close()
    assert report["ok"] and report["scanned"] == N and report["vectors"]["image"]["counted"] == N
    assert report["vectors"]["text"] == {"size": DIM, "counted": 0, "scanned": 0, "bad": 0}
    code, out, err = _cli(capsys, "verify", "--location", healthy, "--collection", "c")
    assert code == EXIT_OK and "verified: 50 points" in out and not err


def test_flipped_vector_bytes_are_refused_in_search_and_found_by_verify(healthy, tmp_path, capsys):
    root = _damaged(healthy, tmp_path, "vectors/chunk_0.mmap", np.full(16, 40.0, dtype=np.float32).tobytes())
    coll = open_collection(root, "c")
    with pytest.raises(CorruptCollectionError, match=r"cosine score of 113.*crossgap-qdrant verify"):
        coll.query([models.QueryRequest(query=[0.3] * DIM, using="image", limit=5)])
    report = verify_collection(coll)
    coll.close()
    assert not report["ok"] and report["vectors"]["image"]["bad"] == 2
    for argv in (["verify"], ["info", "--verify"]):
        code, out, err = _cli(capsys, *argv, "--location", root, "--collection", "c")
        lines = err.strip().splitlines()
        assert code == EXIT_ERROR and len(lines) == 1 and "fails verification" in lines[0] and "norm 113" in lines[0]


def test_a_zeroed_chunk_is_found_by_verify(healthy, tmp_path):
    root = _damaged(healthy, tmp_path, "vectors/chunk_0.mmap", b"\0" * (4 * DIM * N))
    coll = open_collection(root, "c")
    hits = coll.query([models.QueryRequest(query=[0.3] * DIM, using="image", limit=5)])[0]
    assert all(h.score == 0 for h in hits)  # every score 0: in range, so only a verification can tell
    report = verify_collection(coll)
    coll.close()
    assert not report["ok"] and report["vectors"]["image"]["bad"] == N


def test_counts_that_disagree_with_the_scan_are_found(healthy, tmp_path):
    root = _damaged(healthy, tmp_path, "deleted/flags_a.dat", b"\xff" * 64)
    coll = open_collection(root, "c")
    report = verify_collection(coll)
    coll.close()
    assert not report["ok"] and any("hold no vector" in p for p in report["problems"]), report
