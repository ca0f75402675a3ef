"""``crossgap-qdrant evaluate``: every representation with CIs and a recommendation in --json, --apply making
later searches use it, and ``search --hubness``."""

import json
import shutil
import socket
import time
import warnings

import pytest
import torch
from PIL import Image

from crossgap_qdrant import images as images_module
from crossgap_qdrant.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE
from crossgap_qdrant.evaluate import METHODS
from tests.support.cli import MODEL, run


def test_evaluate_json_lists_every_method_with_cis_and_a_recommendation(capsys, tmp_path, images):
    vocabulary = tmp_path / "vocab.txt"
    vocabulary.write_text("\n".join(f"a photo of thing {i}" for i in range(40)) + "\n")
    code, out, err = run(capsys, "evaluate", images, *MODEL, "--json", "--bootstrap", "30", "--vocabulary",
                         vocabulary, "--out", tmp_path / "report")
    assert code == EXIT_OK, err
    result = json.loads(out)
    assert set(result["methods"]) == set(METHODS)
    for method, entry in result["methods"].items():
        assert entry["ci95"][0] <= entry["mAP"] <= entry["ci95"][1]
        assert entry["query_ms"] > 0 and isinstance(entry["recommended"], bool)
        if method != "native":
            low, high = entry["diff_ci95"]
            assert low <= entry["diff_vs_native"] <= high
    rec = result["recommended"]
    assert rec["method"] in METHODS and result["methods"][rec["method"]]["recommended"]
    for entry in [rec, *result["results"], *result["methods"].values()]:  # one schema: scalar + [low, high]
        diff, ci = entry["diff_vs_native"], entry["diff_ci95"]
        assert (diff is None and ci is None) or (isinstance(diff, float) and len(ci) == 2 and ci[0] <= diff <= ci[1])
        assert 0 <= entry.get("mAP", entry.get("metrics", {}).get("mAP")) <= 1  # fractions, not percentages
    assert result["representations"]["pca"]["vocabulary"] == "--vocabulary vocab.txt"
    assert result["representations"]["isoclip"]["cuts_source"] == "tuned"
    assert "applied" not in result
    assert "Recommended:" in (tmp_path / "report" / "report.md").read_text()


def test_apply_makes_later_searches_use_the_choice(capsys, tmp_path, images):
    loc = ["--location", tmp_path / "q", "--collection", "photos"]
    code, _, err = run(capsys, "ingest", images, *MODEL, *loc)
    assert code == EXIT_OK, err
    code, out, err = run(capsys, "evaluate", images, *MODEL, *loc, "--json", "--bootstrap", "20", "--backend",
                         "torch", "--methods", "native,isoclip,native_hub", "--apply-method", "native_hub")
    assert code == EXIT_OK, err
    applied = json.loads(out)["applied"]
    assert applied["mode"] == "native" and applied["hubness"] and applied["hubness_fit"]["points"] == 6
    query = next(images.glob("*/*.png"))
    code, out, err = run(capsys, "search", query, *MODEL, *loc, "--json", "--limit", "3")
    assert code == EXIT_OK, err
    default = json.loads(out)
    assert default["mode"] == "native" and default["hubness"] is True
    code, out, _ = run(capsys, "search", query, *MODEL, *loc, "--json", "--limit", "3", "--no-hubness")
    plain = json.loads(out)
    assert plain["hubness"] is False and [h["score"] for h in plain["hits"]] != [h["score"] for h in default["hits"]]
    # --apply takes the recommendation; a rival gets its vectors for the stored points
    code, out, err = run(capsys, "evaluate", images, *MODEL, *loc, "--json", "--bootstrap", "20", "--backend",
                         "torch", "--methods", "native,isoclip", "--apply-method", "isoclip")
    assert code == EXIT_OK, err
    assert json.loads(out)["applied"]["computed"] == 6
    code, out, err = run(capsys, "search", query, *MODEL, *loc, "--json", "--limit", "3")
    assert code == EXIT_OK and json.loads(out)["mode"] == "image_isoclip" and json.loads(out)["hubness"] is False
    code, out, err = run(capsys, "evaluate", images, *MODEL, *loc, "--json", "--bootstrap", "20", "--backend",
                         "torch", "--methods", "native,pca", "--apply")
    assert code == EXIT_OK, err
    result = json.loads(out)
    assert result["applied"]["method"] == result["recommended"]["method"]


@pytest.mark.parametrize("argv, code, message", [
    (["--apply-method", "pca", "--methods", "native,isoclip"], EXIT_USAGE, "not among the evaluated"),
    (["--methods", "native,fused_hub"], EXIT_USAGE, "unknown method"),
    (["--vocabulary", "/no/such/file.txt"], EXIT_ERROR, "no such file"),
])
def test_evaluate_flag_errors(capsys, images, argv, code, message):
    got, _, err = run(capsys, "evaluate", images, *MODEL, *argv)
    assert got == code and message in err


def test_apply_to_a_missing_collection_is_a_clear_error(capsys, tmp_path, images):
    code, _, err = run(capsys, "evaluate", images, *MODEL, "--location", tmp_path / "none", "--backend", "torch",
                       "--methods", "native", "--bootstrap", "10", "--apply")
    assert code == EXIT_ERROR and "no Qdrant folder" in err
    (tmp_path / "folder").mkdir()
    code, _, err = run(capsys, "evaluate", images, *MODEL, "--location", tmp_path / "folder", "--collection", "x",
                       "--backend", "torch", "--methods", "native", "--bootstrap", "10", "--apply")
    assert code == EXIT_ERROR and "no collection 'x'" in err


def test_evaluation_collection_is_removed_and_reads_create_nothing(capsys, tmp_path, images, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "eval_db"
    code, _, err = run(capsys, "evaluate", images, *MODEL, "--bootstrap", "10", "--methods", "native",
                       "--eval-location", folder)
    assert code == EXIT_OK, err
    assert folder.is_dir() and not any(folder.iterdir())  # the temporary Edge collection is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval_db"]  # no ./qdrant_data or anything else


def test_evaluation_server_follows_timeout_and_retries(capsys, images):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # accepts connections (the kernel does), never answers
    try:
        url = f"http://user:hunter2@127.0.0.1:{server.getsockname()[1]}"
        start = time.monotonic()
        code, _, err = run(capsys, "evaluate", images, *MODEL, "--methods", "native", "--eval-location", url,
                           "--timeout", "2", "--retries", "0")
        elapsed = time.monotonic() - start
    finally:
        server.close()
    assert code == EXIT_ERROR and elapsed < 15, (elapsed, err)
    assert "2 s deadline" in err and "hunter2" not in err and "Traceback" not in err


def test_evaluate_flattens_transparency_onto_the_background_given(capsys, tmp_path, images, monkeypatch):
    code, _, err = run(capsys, "evaluate", images, *MODEL, "--background", "purple")
    assert code == EXIT_USAGE and "--background" in err
    seen = []
    load_pixels = images_module.load_pixels

    def recording(preprocess, sources, *, background=images_module.WHITE):
        if any(not isinstance(s, torch.Tensor) for s in sources):  # decoded here, not already preprocessed
            seen.append(background)
        return load_pixels(preprocess, sources, background=background)

    monkeypatch.setattr(images_module, "load_pixels", recording)
    code, _, err = run(capsys, "evaluate", images, *MODEL, "--background", "black", "--methods", "native,pca",
                       "--backend", "qdrant", "--bootstrap", "10", "--json")
    assert code == EXIT_OK, err
    assert seen and set(seen) == {(0, 0, 0)}


def test_a_set_of_one_class_is_refused(capsys, tmp_path, images):
    one = tmp_path / "one"
    shutil.copytree(images / "cat", one / "cat")
    code, out, err = run(capsys, "evaluate", one, *MODEL, "--backend", "torch", "--bootstrap", "10")
    assert code == EXIT_ERROR and "one class ('cat')" in err and not out  # not 100 mAP for every method


def test_a_refused_image_is_reported_once(capsys, tmp_path, images, monkeypatch):
    data = tmp_path / "set"
    shutil.copytree(images, data)
    Image.new("L", (10000, 10000)).save(data / "dog" / "bomb.png")  # 100 Mpixel: above PIL's limit, below twice it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, err = run(capsys, "evaluate", data, *MODEL, "--backend", "torch", "--methods", "native",
                             "--bootstrap", "10")
    assert code == EXIT_OK, err
    assert (out + err).count("bomb.png") == 1 and "1 unreadable or oversized image(s) left out" in out
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_max_pixels_sets_the_limit(capsys, tmp_path, images, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # the flag sets it for the process
    loc = ["--location", tmp_path / "q"]
    assert run(capsys, "ingest", images / "dog", *MODEL, *loc, "--no-invert")[0] == EXIT_OK
    code, _, err = run(capsys, "search", images / "cat" / "0.png", *MODEL, *loc, "--mode", "native",
                       "--max-pixels", "100")
    assert code == EXIT_ERROR and "0.png: refused as a possible decompression bomb" in err, err
    code, _, err = run(capsys, "search", images / "cat" / "0.png", *MODEL, *loc, "--mode", "native",
                       "--max-pixels", "0")
    assert code == EXIT_USAGE and "--max-pixels" in err


def test_the_terminal_summary_is_compact(capsys, images):
    code, out, err = run(capsys, "evaluate", images, *MODEL, "--methods", "native,gallery_inverted,pca",
                         "--bootstrap", "10")
    assert code == EXIT_OK, err
    lines = out.splitlines()
    assert lines[0].split() == ["method", "mAP", "95%", "CI", "vs", "native", "95%", "CI", "of", "the", "difference"]
    assert [line.split()[0] for line in lines[2:5]] == ["native", "gallery_inverted", "pca"]
    assert max(len(line) for line in lines[:5]) < 100 and "Recommended:" in out
