"""Warm starts kept with a collection: crash-atomic refits, leftovers cleaned, recorded paths confined."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.support.store import Stores, images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Fits a warm start, then refits it and dies (os._exit, as a SIGKILL) at the Nth os.replace of the refit.
WORKER = """
import os, sys
from tests.support.tiny_models import load_tiny
from crossgap_qdrant.store import warm
from tests.support.store import Stores, images
from pathlib import Path

stores = Stores("edge", Path(sys.argv[1]), load_tiny("test-tiny-clip", 0))
store = stores.make()
store.ingest_images(images(8, seed=4), progress=False)
store.fit_warm_start("image", sample=6, steps=1, epochs=2, hidden=32, progress=False)
calls, real = [0], os.replace

def dying_replace(src, dst):
    calls[0] += 1
    if calls[0] == int(sys.argv[2]):
        os._exit(9)
    real(src, dst)

warm.os.replace = dying_replace
store.fit_warm_start("image", sample=6, steps=2, epochs=3, hidden=48, progress=False)
os._exit(0)
"""


@pytest.mark.parametrize("kill_at", [1, 2])
def test_a_kill_during_a_refit_leaves_a_usable_warm_start_and_no_leftovers(tiny_clip, tmp_path, kill_at):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", WORKER, str(tmp_path), str(kill_at)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 9), done.stderr[-2000:]
    stores = Stores("edge", tmp_path, tiny_clip)
    store = stores.make(warm_start=True)  # the old or the new warm start, whichever was recorded
    assert store.encoder.oti_config.warm_start is not None and store.encoder.oti_config.steps in (1, 2)
    folder = tmp_path / "edge" / "gallery"
    assert sorted(f for f in os.listdir(folder) if f.startswith("warm_start")) == ["warm_start_oti.pt"]
    stores.close()


def test_leftovers_of_earlier_crashes_are_removed_on_the_next_open(tiny_clip, tmp_path):
    stores = Stores("edge", tmp_path, tiny_clip)
    store = stores.make()
    store.ingest_images(images(8, seed=4), progress=False)
    store.fit_warm_start("image", sample=6, steps=1, epochs=2, hidden=32, progress=False)
    folder = tmp_path / "edge" / "gallery"
    for junk in ("warm_start_oti.pt.new-999999", "warm_start_oti.pt.previous-999999", "warm_start_oti.pt.previous",
                 "warm_start_oti.pt.tmp"):
        shutil.copy(folder / "warm_start_oti.pt", folder / junk)
    stores.make()
    assert sorted(f for f in os.listdir(folder) if f.startswith("warm_start")) == ["warm_start_oti.pt"]
    stores.close()


def test_a_recorded_path_outside_the_collection_folder_is_refused(tiny_clip, tmp_path):
    stores = Stores("edge", tmp_path, tiny_clip)
    store = stores.make()
    store.ingest_images(images(8, seed=4), progress=False)
    store.fit_warm_start("image", sample=6, steps=1, epochs=2, hidden=32, progress=False)
    folder = tmp_path / "edge" / "gallery"
    shutil.copy(folder / "warm_start_oti.pt", tmp_path / "x.pt")
    store._record(lambda record: {"warm_start": {"image": {**record["warm_start"]["image"], "file": "../../x.pt"}}})
    with pytest.raises(ValueError, match="must lie in the collection's folder"):
        store.use_warm_start("image")
    with pytest.raises(ValueError, match="must lie in the collection's folder"):
        store.fit_warm_start("image", sample=6, epochs=1, hidden=32, path=tmp_path / "elsewhere.pt", progress=False)
    stores.close()
