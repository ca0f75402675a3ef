"""The Edge engine under stress: threads, damaged folders, full disks, a folder held by another process."""

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading

import pytest
from qdrant_client import models

from crossgap_qdrant.cli import EXIT_ERROR, main
from crossgap_qdrant.store import CrossModalStore, edge_files
from crossgap_qdrant.store import edge as edge_module
from crossgap_qdrant.store.engines import open_collection
from crossgap_qdrant.store.errors import CorruptCollectionError, StorageFullError
from tests.support.edge import DIM, N, first_segment, make_collection
from tests.support.store import FAST


def test_first_use_from_many_threads_opens_the_shard_once(tmp_path):
    folder = tmp_path / "db"
    make_collection(folder)
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


# ------------------------------------------------------------------------------------------- damaged folders
def _write(path, data: bytes):
    path.write_bytes(data)


def _truncate(path, size=0):
    with open(path, "r+b") as f:
        f.truncate(size)


def _zero_first_page(path):
    with open(path, "r+b") as f:
        f.write(b"\0" * 4096)


def _edge_config_with_size(root, size):
    path = root / "c" / "shard" / "edge_config.json"
    config = json.loads(path.read_text())
    config["vectors"]["text"]["size"] = size
    path.write_text(json.dumps(config))


DAMAGE = {
    "wal segment truncated": lambda r: _truncate(r / "c" / "shard" / "wal" / "open-1"),
    "wal segment's first page zeroed": lambda r: _zero_first_page(r / "c" / "shard" / "wal" / "open-1"),
    "first-index empty": lambda r: _write(r / "c" / "shard" / "wal" / "first-index", b""),
    "first-index garbage": lambda r: _write(r / "c" / "shard" / "wal" / "first-index", b"garbage!!"),
    "segment.json empty": lambda r: _write(first_segment(r) / "segment.json", b""),
    "segment.json garbage": lambda r: _write(first_segment(r) / "segment.json", b"{garbage"),
    "segment.json deleted": lambda r: (first_segment(r) / "segment.json").unlink(),
    "version.info garbage": lambda r: _write(first_segment(r) / "version.info", b"zzz"),
    "id tracker mappings garbage": lambda r: _write(first_segment(r) / "mutable_id_tracker.mappings", b"\xff" * 600),
    "payload index config garbage": lambda r: _write(first_segment(r) / "payload_index" / "config.json", b"{{"),
    "edge_config with another size": lambda r: _edge_config_with_size(r, DIM + 1),
    "edge_config deleted": lambda r: (r / "c" / "shard" / "edge_config.json").unlink(),
}


def _snapshot(root):
    """Every file's digest, but the payload tracker's journal: the engine replays and removes it on every
    opening attempt (its changes are in tracker.dat already)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "tracker_journal.dat"}


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("healthy") / "db"
    make_collection(folder, optimize=True)
    coll = open_collection(folder, "c")  # an opening folds the payload tracker's journal into the tracker
    assert coll.count() == N
    coll.close()
    return folder


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_shard_is_one_line_naming_the_folder_and_nothing_changes(healthy, tmp_path, capsys, damage):

    root = tmp_path / "db"
    shutil.copytree(healthy, root)
    DAMAGE[damage](root)
    before = _snapshot(root)
    code = main(["info", "--location", str(root), "--collection", "c"])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crossgap-qdrant: error:") and str(root) in lines[0], err
    assert "backup" in lines[0]
    assert _snapshot(root) == before


def test_ingest_into_a_shard_without_its_config_is_refused_without_writing(healthy, tmp_path):
    root = tmp_path / "db"
    shutil.copytree(healthy, root)
    (root / "c" / "shard" / "edge_config.json").unlink()
    before = _snapshot(root)
    coll = open_collection(root, "c", create_folder=True)
    with pytest.raises(CorruptCollectionError, match="edge_config.json"):
        if not coll.exists():
            coll.create({"image": DIM, "text": DIM}, {"m": 1})
    coll.close()
    assert _snapshot(root) == before


def test_an_engine_panic_is_a_store_error_naming_the_folder(healthy, tmp_path):
    root = tmp_path / "db"
    shutil.copytree(healthy, root)
    with open(first_segment(root) / "payload_storage" / "tracker.dat", "r+b") as f:
        f.write(b"\xff" * 4096)  # the engine panics reading payloads through this tracker
    coll = open_collection(root, "c")
    assert coll.count() == N
    with pytest.raises(CorruptCollectionError, match=f"{root}.*backup"):
        coll.scroll(limit=100, with_payload=True)
    coll.close()


def test_keyboard_interrupt_is_not_turned_into_a_store_error(healthy, tmp_path, monkeypatch):
    root = tmp_path / "db"
    shutil.copytree(healthy, root)
    coll = open_collection(root, "c")

    def interrupted(shard, operation):
        raise KeyboardInterrupt

    monkeypatch.setattr(edge_module, "apply_update", interrupted)
    with pytest.raises(KeyboardInterrupt):
        coll.set_payload([1], {"a": 1})
    coll.close()


# ------------------------------------------------------------------------------------------------ full disk
class FlushFails:
    """An opened shard whose flush finds the disk full, as on a full tmpfs."""

    def __init__(self, shard):
        self.shard = shard

    def flush(self):
        raise Exception("Service internal error: No space left on device (os error 28)")

    def __getattr__(self, name):
        return getattr(self.shard, name)


def test_the_first_error_is_kept_when_closing_fails_too(tiny_clip, tmp_path, monkeypatch):

    folder = str(tmp_path / "q")
    with CrossModalStore.open(folder, "gallery", tiny_clip, **FAST) as store:
        store.ingest_texts(["a cat"], progress=False)

    def full(shard, operation):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageFullError, match="nothing stored before") as info:
        with CrossModalStore.open(folder, "gallery", tiny_clip, **FAST) as store:
            store.count()
            store.collection._shard_handle = FlushFails(store.collection._shard_handle)
            monkeypatch.setattr(edge_module, "apply_update", full)
            store.ingest_texts(["a dog"], progress=False)
    assert info.value.__context__ is None or isinstance(info.value.__context__, OSError)
    monkeypatch.undo()
    with CrossModalStore.open(folder, "gallery", tiny_clip, **FAST) as store:
        assert store.count() == 1


def test_opening_for_reading_checks_the_headroom_first(healthy, monkeypatch):
    monkeypatch.setattr(edge_module, "opening_cost", lambda path: 64 * 2**20)  # as on a memory file system
    monkeypatch.setattr(edge_module, "free_bytes", lambda path: 40 * 2**20)
    coll = open_collection(healthy, "c")
    with pytest.raises(StorageFullError, match=r"opening the collection: 40 MiB free.*needs \d+ MiB to open it"):
        coll.count()
    coll.close()


def test_the_write_headroom_is_proportional_to_the_store(tmp_path, monkeypatch):
    folder = tmp_path / "db"
    make_collection(folder)
    coll = open_collection(folder, "c")
    assert coll.count() == N  # opened with the disk's real free space
    monkeypatch.setattr(edge_module, "free_bytes", lambda path: 68 * 2**20)  # plenty for a store of a few MiB
    coll.upsert([models.PointStruct(id=N, vector={"image": [1.0] * DIM})])
    assert coll.count() == N + 1
    monkeypatch.setattr(edge_module, "free_bytes", lambda path: edge_files.margin(coll.shard_path) - 1)
    with pytest.raises(StorageFullError, match="MiB free"):
        coll.upsert([models.PointStruct(id=N + 1, vector={"image": [1.0] * DIM})])
    coll.close()


def _mount_tmpfs(path, size_mib):
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("mounting a tmpfs needs root")


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0, reason="mounting needs root on Linux")
def test_reading_a_store_on_a_full_tmpfs_is_one_line_not_sigbus(tmp_path):
    mount = tmp_path / "tmpfs"
    _mount_tmpfs(mount, 200)
    try:
        folder = mount / "db"
        make_collection(folder)
        ballast = mount / "ballast"
        free = shutil.disk_usage(mount).free
        with open(ballast, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, free - 40 * 2**20)  # 40 MiB left; opening would fill 64
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-m", "crossgap_qdrant.cli", "info", "--location", str(folder),
                               "--collection", "c"], capture_output=True, text=True, env=env, timeout=120,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        assert done.returncode == 1, (done.returncode, done.stderr[-500:])
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "is full" in lines[0] and "MiB free" in lines[0], done.stderr
        ballast.unlink()
        coll = open_collection(folder, "c")  # with the space back, the store opens and holds everything
        assert coll.count() == N
        coll.close()
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
