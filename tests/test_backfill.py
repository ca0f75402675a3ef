"""The backfill on a local Ray cluster, compared with the in-process one; and (slow) SIGKILLs of a Ray worker and
of the driver mid-backfill, followed by a rerun."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from crossgap_qdrant.cli import main
from crossgap_qdrant.inversion import OTIConfig
from crossgap_qdrant.models import load_model
from crossgap_qdrant.store import CrossModalStore
from crossgap_qdrant.store.backfill import BackfillWorker, backfill, missing_count
from crossgap_qdrant.store.backfill_ray import IN_FLIGHT_PER_WORKER, backfill_on_ray
from tests.support.adopt import NAME, STEPS, demo_features, make_foreign, snapshot, write_images

ray = pytest.importorskip("ray")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def demo():
    return load_model("crossgap-demo", device="cpu")


def adopted(foreign, clip, steps=STEPS):
    return CrossModalStore.adopt(foreign.location, NAME, clip, native_vector=foreign.vector,
                                 engine="local" if foreign.engine == "local" else None,
                                 oti_config=OTIConfig(steps=steps))


def inverted(store, ids):
    records = store.collection.retrieve(ids, with_vectors=[store.names.image_oti])
    return {str(r.id): np.asarray(r.vector[store.names.image_oti]) for r in records}


@pytest.mark.ray
def test_ray_backfill_matches_in_process(tmp_path, demo):
    on_ray = make_foreign(tmp_path / "ray", demo, "edge", "", "int", n=6)
    here = make_foreign(tmp_path / "here", demo, "edge", "", "int", n=6)
    before = snapshot(on_ray)
    try:
        with adopted(on_ray, demo) as store:
            report = backfill_on_ray(store.collection, store.encoder, store.names, workers=2, batch_size=2,
                                     progress=False)
            assert report.written == 6 and missing_count(store.collection, store.names, "image") == 0
            got = inverted(store, on_ray.ids)
    finally:
        ray.shutdown()
    with adopted(here, demo) as store:
        backfill(store.collection, store.encoder, store.names, batch_size=2, progress=False)
        want = inverted(store, here.ids)
    assert got.keys() == want.keys() and len(got) == 6  # same images, same ids
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-4)
    assert snapshot(on_ray) == before


@pytest.mark.ray
def test_an_embedded_backfill_on_ray_streams_its_pages(tmp_path, demo, monkeypatch):
    foreign = make_foreign(tmp_path, demo, "edge", "", "int", n=10)
    read, read_at_write = [], []
    pending = BackfillWorker.pending

    def counted(self, *args, **kwargs):
        for page in pending(self, *args, **kwargs):
            read.append(len(page[0]))
            yield page

    monkeypatch.setattr(BackfillWorker, "pending", counted)
    try:
        with adopted(foreign, demo) as store:
            report = backfill_on_ray(store.collection, store.encoder, store.names, workers=1, batch_size=1,
                                     progress=False, on_written=lambda n: read_at_write.append(len(read)))
            assert missing_count(store.collection, store.names, "image") == 0
            assert sorted(inverted(store, foreign.ids)) == sorted(map(str, foreign.ids))  # each point once
    finally:
        ray.shutdown()
    assert report.written == 10 and sum(read) == 10
    # the driver holds the pages in flight (IN_FLIGHT_PER_WORKER per actor) and the one it just read, not the
    # whole backlog: memory bounded whatever the collection's size
    assert read_at_write[0] <= IN_FLIGHT_PER_WORKER + 1 < 10
    assert all(n - i <= IN_FLIGHT_PER_WORKER + 1 for i, n in enumerate(read_at_write))


# ------------------------------------------------------------------------------------------ crashes (slow)
def _cli(foreign, *extra):
    return [sys.executable, "-m", "crossgap_qdrant.cli", "backfill", "--location", str(foreign.location),
            "--collection", NAME, *foreign.engine_flag, "--model", "crossgap-demo", "--steps", "40",
            "--batch-size", "2", "--threads", "1", *map(str, extra)]


def _env():
    return {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _wait_for_progress(proc, at_least: int, timeout: float = 400) -> None:
    """Reads the progress bar on stderr until ``at_least`` points are written."""
    deadline = time.monotonic() + timeout
    buffer = b""
    while time.monotonic() < deadline:
        chunk = os.read(proc.stderr.fileno(), 4096)
        if not chunk:
            raise AssertionError(f"the backfill ended before writing {at_least} points: {buffer[-2000:]!r}")
        buffer += chunk
        counts = [int(n) for n in re.findall(rb"\| *(\d+)/\d+ \[", buffer)]
        if counts and max(counts) >= at_least:
            return
    raise AssertionError("no progress in time")


def _session_processes(sid: int, marker: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getsid(int(entry)) != sid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    pids.append(int(entry))
        except (OSError, ProcessLookupError):
            continue
    return pids


def _check_complete(foreign, demo, before):
    with adopted(foreign, demo) as store:
        assert missing_count(store.collection, store.names, "image") == 0
        assert store.count() == len(foreign.ids)
        ids = [str(r.id) for page in store.collection.pages() for r in page]
        assert sorted(ids) == sorted(map(str, foreign.ids))  # nothing lost, nothing duplicated
        assert len(inverted(store, foreign.ids)) == len(foreign.ids)
    assert snapshot(foreign)["points"] == before["points"]  # natives and payloads unchanged


@pytest.mark.slow
def test_ray_worker_killed_mid_backfill(tmp_path, demo):
    foreign = make_foreign(tmp_path, demo, "local", "clip", "int", n=24)
    before = snapshot(foreign)
    adopted(foreign, demo).close()
    proc = subprocess.Popen(_cli(foreign, "--ray", "--workers", 2, "--progress", "--json"), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for_progress(proc, 2)
        actors = _session_processes(proc.pid, "_Inverter")  # the actor process titles name the class
        assert actors, "no Ray actor found"
        os.kill(actors[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        assert _json(out)["missing"] == 0
    finally:
        _end_session(proc)
    _check_complete(foreign, demo, before)


@pytest.mark.slow
@pytest.mark.parametrize("on_ray", [True, False])
def test_driver_killed_mid_backfill_then_rerun(tmp_path, demo, on_ray):
    foreign = make_foreign(tmp_path, demo, "edge", "", "uuid", n=24)
    before = snapshot(foreign)
    adopted(foreign, demo).close()
    extra = ["--ray", "--workers", 2] if on_ray else []
    proc = subprocess.Popen(_cli(foreign, *extra, "--progress"), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for_progress(proc, 2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        _end_session(proc)
    with adopted(foreign, demo) as store:
        left = missing_count(store.collection, store.names, "image")
    assert 0 < left < 24
    rerun = subprocess.run(_cli(foreign, *extra, "--json"), check=False, env=_env(), capture_output=True, timeout=900,
                           start_new_session=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _json(rerun.stdout)["written"] == left
    _check_complete(foreign, demo, before)


def _json(stdout: bytes) -> dict:
    """The command's JSON document (Ray's raylet writes a line on stdout when a worker dies)."""
    text = stdout.decode()
    return json.JSONDecoder().raw_decode(text[text.index("{\n"):])[0]


def _end_session(proc) -> None:
    """SIGKILLs what is left of the session the test started (a Ray cluster outliving its driver)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


@pytest.mark.server
@pytest.mark.parametrize("vector", ["", "clip"])
def test_ray_workers_write_to_a_server(tmp_path, demo, vector, capsys):
    """Against a server the actors read and write their parts themselves (CROSSGAP_QDRANT_URL names it)."""
    url = os.environ.get("CROSSGAP_QDRANT_URL")
    if not url:
        pytest.skip("set CROSSGAP_QDRANT_URL to a Qdrant server")
    name = f"adopt_{os.getpid()}_{vector or 'unnamed'}"
    paths = write_images(tmp_path / "images", 6)
    feats = demo_features(demo, paths)
    client = QdrantClient(url=url)
    params = models.VectorParams(size=feats.shape[1], distance=models.Distance.COSINE)
    client.create_collection(name, vectors_config=params if vector == "" else {vector: params})
    try:
        client.upsert(name, [models.PointStruct(id=i + 1, vector=f.tolist() if vector == "" else {vector: f.tolist()},
                                                payload={"path": p}) for i, (f, p) in enumerate(zip(feats, paths))])
        loc = ["--location", url, "--collection", name, "--model", "crossgap-demo", "--quiet"]
        assert main(["adopt", *loc, "--vector", vector]) == 0
        assert main(["backfill", *loc, "--steps", str(STEPS), "--ray", "--workers", "2", "--json"]) == 0
        assert _json(capsys.readouterr().out.encode())["written"] == 6
        with CrossModalStore.open(url, name, demo, create=False) as store:
            assert missing_count(store.collection, store.names, "image") == 0 and store.count() == 6
    finally:
        ray.shutdown()
        client.delete_collection(name)
        client.delete_collection(f"{name}__crossgap")
        client.close()
