"""The command line, in-process (main(argv)) and once as a subprocess."""

import json
import os
import subprocess
import sys

import pytest

from crossgap_qdrant.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, format_table, main
from tests.conftest import TINY_CLIP
from tests.test_evaluate import make_image_folder

MODEL = ["--model", "test-tiny-clip", "--steps", "2"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("cli") / "imgs", per_class=2)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_ingest_info_search(capsys, tmp_path, images):
    loc = ["--location", tmp_path / "q", "--collection", "photos"]
    code, out, err = run(capsys, "ingest", images, *MODEL, *loc, "--isoclip", "1,2", "--json")
    assert code == EXIT_OK, err
    report = json.loads(out)
    assert report["inserted"] == 6 and report["inverted"] == 6 and report["points"] == 6 and not report["failed"]

    code, out, err = run(capsys, "info", *loc, "--json")
    assert code == EXIT_OK, err
    info = json.loads(out)
    assert info["points"] == 6 and info["model_id"] == "test-tiny-clip/random-seed0"
    assert info["vectors"]["image_oti"]["points"] == 6 and info["vectors"]["image_isoclip"]["points"] == 6

    code, out, err = run(capsys, "info", *loc)
    assert code == EXIT_OK and "image_oti" in out and "points: 6" in out

    query = images / "cat" / "0.png"
    for mode in ("native", "gallery_inverted", "fused", "image_isoclip"):
        code, out, err = run(capsys, "search", query, *MODEL, *loc, "--mode", mode, "--limit", "3", "--isoclip",
                             "1,2", "--json")
        assert code == EXIT_OK, (mode, err)
        hits = json.loads(out)["hits"]
        assert len(hits) == 3 and all(h["payload"]["source"] != str(query) for h in hits)  # query excluded
    code, out, err = run(capsys, "search", query, *MODEL, *loc, "--mode", "native", "--limit", "2")
    assert code == EXIT_OK and out.splitlines()[0].split() == ["rank", "score", "id", "item", "label"]
    assert len(out.splitlines()) == 4

    # a second ingestion of the same folder adds nothing
    code, out, _ = run(capsys, "ingest", images, *MODEL, *loc, "--isoclip", "1,2", "--json")
    assert code == EXIT_OK and json.loads(out)["skipped_existing"] == 6


def test_texts(capsys, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("a red apple\na green apple\na fast car\n")
    loc = ["--location", tmp_path / "q"]
    code, out, err = run(capsys, "ingest", texts, "--texts", *MODEL, *loc, "--json")
    assert code == EXIT_OK, err
    assert json.loads(out)["inserted"] == 3
    code, out, err = run(capsys, "search", "an apple", "--text", *MODEL, *loc, "--mode", "native", "--json")
    assert code == EXIT_OK, err
    assert len(json.loads(out)["hits"]) == 3


def test_evaluate_writes_report(capsys, tmp_path, images):
    out_dir = tmp_path / "report"
    code, out, err = run(capsys, "evaluate", images, *MODEL, "--out", out_dir, "--bootstrap", "20", "--json",
                         "--isoclip", "1,2", "--methods", "native,gallery_inverted,fused,isoclip")
    assert code == EXIT_OK, err
    result = json.loads(out)
    assert {r["backend"] for r in result["results"]} == {"torch", "qdrant"}
    assert max(result["agreement"].values()) < 1e-6
    assert (out_dir / "report.md").is_file() and (out_dir / "map.png").is_file()
    code, out, err = run(capsys, "evaluate", images, *MODEL, "--backend", "torch", "--methods", "native")
    assert code == EXIT_OK and "| native | torch |" in out


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["ingest", "/no/such/folder", *MODEL], EXIT_ERROR, "no such file or folder"),
        (["search", "x.png", *MODEL, "--limit", "0"], EXIT_USAGE, "--limit must be >= 1"),
        (["evaluate", ".", *MODEL, "--methods", "native,magic"], EXIT_USAGE, "unknown method"),
        (["ingest", ".", *MODEL, "--isoclip", "3"], EXIT_USAGE, "TOP,BOTTOM"),
        (["ingest", ".", "--model", "no-such-model"], EXIT_ERROR, "unknown open_clip model"),
        (["frobnicate"], EXIT_USAGE, "invalid choice"),
        (["search"], EXIT_USAGE, "required"),
        (["evaluate", "/no/such/labels.tsv", *MODEL], EXIT_ERROR, "no such file"),
    ],
)
def test_errors(capsys, tmp_path, argv, code, message):
    got, out, err = run(capsys, *argv)
    assert got == code
    assert message in err and "Traceback" not in err


def test_runtime_errors_against_a_collection(capsys, tmp_path, images):
    loc = ["--location", tmp_path / "q"]
    code, _, err = run(capsys, "info", *loc)
    assert code == EXIT_ERROR and "no collection 'crossgap'" in err
    code, _, err = run(capsys, "ingest", images / "dog", *MODEL, *loc, "--no-invert")
    assert code == EXIT_OK, err
    # another model (other random weights) must not write into this collection
    code, _, err = run(capsys, "ingest", images / "dog", *MODEL, *loc, "--seed", "1")
    assert code == EXIT_ERROR and "random-seed0" in err and "Traceback" not in err
    code, _, err = run(capsys, "search", "123456", *MODEL, *loc, "--mode", "native")
    assert code == EXIT_ERROR and "123456" in err
    code, _, err = run(capsys, "search", images / "dog" / "0.png", *MODEL, *loc, "--mode", "bogus")
    assert code == EXIT_ERROR and "mode must be one of" in err


def test_format_table():
    assert format_table([(1, "ab")], ["n", "name"]).splitlines() == ["n  name", "-  ----", "1  ab"]


def test_subprocess_with_model_config_file(tmp_path, images):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_CLIP))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    base = [sys.executable, "-m", "crossgap_qdrant.cli"]
    loc = ["--location", str(tmp_path / "q")]
    model = ["--model", "my-tiny", "--model-config", str(config), "--steps", "1"]
    proc = subprocess.run([*base, "ingest", str(images / "car"), *model, *loc, "--json"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["inserted"] == 2
    proc = subprocess.run([*base, "info", *loc, "--collection", "missing"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith("crossgap-qdrant: error: no collection")
    assert "Traceback" not in proc.stderr
