"""Searches in a mode whose gallery vectors only part of the collection holds: a warning with the counts and the
command that completes them, or a refusal when strict (API and CLI)."""

import json
import os
import subprocess
import sys
import warnings

import pytest

from crossgap_qdrant.store.errors import PartialCoverageError, PartialCoverageWarning
from tests.support.image_folders import make_image_folder
from tests.support.store import ENGINES, Stores, images
from tests.support.tiny_models import TINY_CLIP


@pytest.fixture(params=ENGINES)
def stores(request, tiny_clip, tmp_path):
    s = Stores(request.param, tmp_path, tiny_clip)
    yield s
    s.close()


def test_a_partly_inverted_gallery_warns_with_the_counts_and_the_fix(stores):
    store = stores.make()
    pil = images(10, seed=3)
    store.ingest_images(pil[:4], progress=False)
    store.ingest_images(pil[4:], invert=False, progress=False)
    for mode in ("gallery_inverted", "fused"):
        with pytest.warns(PartialCoverageWarning, match=r"4 of the 10 images .* other 6 cannot be found.*"
                                                        r"`crossgap-qdrant backfill`.*crossgap-qdrant invert "
                                                        r"--modality image"):
            hits = store.search_images(image=pil[0], mode=mode, limit=10)
        assert len(hits) <= 4 if mode == "gallery_inverted" else len(hits) > 0
        with pytest.raises(PartialCoverageError, match="4 of the 10 images"):
            store.search_images(image=pil[0], mode=mode, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store.search_images(image=pil[0], mode="native")  # every image holds its native vector
        store.invert_missing("image", progress=False)
        assert len(store.search_images(image=pil[0], mode="gallery_inverted", limit=10, strict=True)) == 9


def test_the_cli_warns_in_one_line_and_refuses_with_strict(tmp_path):

    folder = make_image_folder(tmp_path / "imgs", per_class=2)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_CLIP))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    base = [sys.executable, "-m", "crossgap_qdrant.cli"]
    common = ["--model", "tiny", "--model-config", str(config), "--pretrained", "none", "--steps", "1",
              "--location", str(tmp_path / "q")]
    for part, extra in (("cat", []), ("dog", ["--no-invert"]), ("car", ["--no-invert"])):
        done = subprocess.run([*base, "ingest", str(folder / part), *common, *extra], capture_output=True,
                              text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
    query = str(folder / "cat" / "0.png")
    done = subprocess.run([*base, "search", query, *common, "--limit", "6", "--json"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["hits"]) == 1  # the other cat: the only other image with its OTI vector
    lines = [line for line in done.stderr.splitlines() if "image_oti" in line]
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith("crossgap-qdrant: warning: mode 'gallery_inverted' searches the 'image_oti' "
                               "vectors, which 2 of the 6 images")
    assert "crossgap-qdrant invert --modality image" in lines[0] and "`crossgap-qdrant backfill`" in lines[0]
    done = subprocess.run([*base, "search", query, *common, "--strict"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith("crossgap-qdrant: error: mode")
