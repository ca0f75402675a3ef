"""The command line, in-process (main(argv)) and once as a subprocess."""

import argparse
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from crossgap_qdrant import _ext, demo
from crossgap_qdrant.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, commands, evaluate_command, format_table, main
from crossgap_qdrant.cli.parser import build_parser
from crossgap_qdrant.cli.resources import retry_policy
from crossgap_qdrant.store import CollectionNotFoundError, engines
from crossgap_qdrant.store import edge as edge_module
from tests.support.cli import MODEL, run
from tests.support.tiny_models import TINY_CLIP


def test_ingest_info_search(capsys, tmp_path, images):
    loc = ["--location", tmp_path / "q", "--collection", "photos"]
    code, out, err = run(capsys, "ingest", images, *MODEL, *loc, "--isoclip", "1,2", "--json")
    assert code == EXIT_OK, err
    report = json.loads(out)
    assert report["inserted"] == 6 and report["inverted"] == 6 and report["points"] == 6 and not report["failed"]
    assert report["engine"] == "qdrant-edge"

    code, out, err = run(capsys, "info", *loc, "--json")
    assert code == EXIT_OK, err
    info = json.loads(out)
    assert info["points"] == 6 and info["model_id"].startswith("test-tiny-clip") and info["engine"] == "qdrant-edge"
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
    assert code == EXIT_OK and out.splitlines()[0].startswith("query: ")  # the header line, then the table
    assert out.splitlines()[1].split() == ["rank", "cosine", "id", "item"]  # no empty label column
    assert len(out.splitlines()) == 6 and out.splitlines()[-1].startswith("image->image search, mode native; cosine")
    code, out, err = run(capsys, "search", query, *MODEL, *loc, "--mode", "fused", "--limit", "2")
    assert code == EXIT_OK and out.splitlines()[1].split()[:2] == ["rank", "rrf"], out  # a rank score, not a cosine
    assert "mode fused; rrf: reciprocal rank fusion" in out

    # a second ingestion of the same folder adds nothing
    code, out, _ = run(capsys, "ingest", images, *MODEL, *loc, "--isoclip", "1,2", "--json")
    assert code == EXIT_OK and json.loads(out)["skipped_existing"] == 6


def test_text_to_image_and_text_to_text(capsys, tmp_path, images):
    texts = tmp_path / "texts.txt"
    texts.write_text("a red apple\na green apple\na fast car\n")
    loc = ["--location", tmp_path / "q"]
    assert run(capsys, "ingest", images, *MODEL, *loc)[0] == EXIT_OK
    code, out, err = run(capsys, "ingest", texts, "--texts", *MODEL, *loc, "--json")
    assert code == EXIT_OK, err
    assert json.loads(out)["inserted"] == 3
    code, out, err = run(capsys, "search", "an apple", "--text", *MODEL, *loc, "--json")  # text -> image
    assert code == EXIT_OK, err
    result = json.loads(out)
    assert result["gallery"] == "image" and result["mode"] == "native"
    assert len(result["hits"]) == 6 and all(h["payload"]["modality"] == "image" for h in result["hits"])
    code, out, err = run(capsys, "search", "an apple", "--text", "--gallery", "texts", *MODEL, *loc, "--json")
    assert code == EXIT_OK, err
    hits = json.loads(out)["hits"]
    assert len(hits) == 3 and all(h["payload"]["modality"] == "text" for h in hits)
    code, out, err = run(capsys, "search", images / "car" / "0.png", "--gallery", "texts", *MODEL, *loc, "--json")
    assert code == EXIT_OK and len(json.loads(out)["hits"]) == 3  # image -> text
    code, _, err = run(capsys, "search", "an apple", *MODEL, *loc)
    assert code == EXIT_USAGE and "--text" in err


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
    assert code == EXIT_OK and "native" in out


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["ingest", "/no/such/folder", *MODEL], EXIT_ERROR, "no such file or folder"),
        (["search", "x.png", *MODEL, "--limit", "0"], EXIT_USAGE, "--limit must be >= 1"),
        (["search", "x.png", *MODEL, "--limit", "1.5"], EXIT_USAGE, "invalid int value"),
        (["evaluate", ".", *MODEL, "--methods", "native,magic"], EXIT_USAGE, "unknown method"),
        (["ingest", ".", *MODEL, "--isoclip", "3"], EXIT_USAGE, "TOP,BOTTOM"),
        (["ingest", ".", "--model", "no-such-model", "--pretrained", "none"], EXIT_ERROR, "no-such-model"),
        (["ingest", ".", "--model", "test-tiny-clip"], EXIT_ERROR, "random"),
        (["ingest", "."], EXIT_USAGE, "--model is required"),
        (["frobnicate"], EXIT_USAGE, "invalid choice"),
        (["search"], EXIT_USAGE, "required"),
        (["ingest", ".", *MODEL, "--threads", "0"], EXIT_USAGE, "--threads"),
        (["ingest", ".", *MODEL, "--timeout", "0"], EXIT_USAGE, "--timeout"),
        (["evaluate", "/no/such/labels.tsv", *MODEL], EXIT_ERROR, "no such file"),
        (["ingest", ".", *MODEL, "--background", "purple"], EXIT_USAGE, "--background"),
    ],
)
def test_errors(capsys, tmp_path, argv, code, message):
    got, out, err = run(capsys, *argv)
    assert got == code, err
    assert message in err and "Traceback" not in err


def test_reads_never_write_and_name_the_fix(capsys, tmp_path, images):
    folder = tmp_path / "q"
    loc = ["--location", folder]
    code, _, err = run(capsys, "info", *loc)
    assert code == EXIT_ERROR and "nothing is created" in err and not folder.exists()
    code, _, err = run(capsys, "search", images / "dog" / "0.png", *MODEL, *loc)
    assert code == EXIT_ERROR and not folder.exists()
    code, _, err = run(capsys, "info", "--location", tmp_path / "127.0.0.1:6333")
    assert code == EXIT_ERROR and not (tmp_path / "127.0.0.1:6333").exists()
    assert run(capsys, "ingest", images / "dog", *MODEL, *loc, "--no-invert")[0] == EXIT_OK
    code, _, err = run(capsys, "search", images / "dog" / "0.png", *MODEL, *loc, "--collection", "typo")
    assert code == EXIT_ERROR and "'typo'" in err
    code, _, err = run(capsys, "search", images / "dog" / "0.png", *MODEL, *loc)  # gallery_inverted, no OTI yet
    assert code == EXIT_ERROR and "invert" in err and "image_oti" in err
    code, out, err = run(capsys, "invert", *MODEL, *loc, "--json")
    assert code == EXIT_OK and json.loads(out)["inverted"] == 2
    assert run(capsys, "search", images / "dog" / "0.png", *MODEL, *loc)[0] == EXIT_OK
    # another model (other random weights) must not write into this collection
    code, _, err = run(capsys, "ingest", images / "dog", *MODEL, *loc, "--seed", "1")
    assert code == EXIT_ERROR and "different models" in err
    code, _, err = run(capsys, "search", "123456", *MODEL, *loc, "--mode", "native")
    assert code == EXIT_ERROR and "123456" in err
    code, _, err = run(capsys, "search", images / "dog" / "0.png", *MODEL, *loc, "--mode", "bogus")
    assert code == EXIT_USAGE and "--mode must be one of" in err


def test_query_image_errors_name_the_file(capsys, tmp_path, images):
    loc = ["--location", tmp_path / "q"]
    assert run(capsys, "ingest", images / "dog", *MODEL, *loc)[0] == EXIT_OK
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not an image")
    code, _, err = run(capsys, "search", broken, *MODEL, *loc)
    assert code == EXIT_ERROR and "broken.png" in err and "BytesIO" not in err and "Traceback" not in err
    bomb = tmp_path / "bomb.png"
    Image.new("L", (13000, 13000)).save(bomb)  # 169 Mpixel: over PIL's decompression-bomb limit
    code, _, err = run(capsys, "search", bomb, *MODEL, *loc)
    assert code == EXIT_ERROR and "bomb.png" in err and "Traceback" not in err


def test_ingest_fails_when_every_input_fails(capsys, tmp_path, images):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png")
    (folder / "b.jpg").write_bytes(b"not a jpeg")
    code, out, err = run(capsys, "ingest", folder, *MODEL, "--location", tmp_path / "q")
    assert code == EXIT_ERROR and "every input failed" in err
    code, _, err = run(capsys, "info", "--location", tmp_path / "q")
    assert code == EXIT_ERROR and "no collection" in err  # the failed call left no empty collection behind
    assert run(capsys, "ingest", images / "dog", *MODEL, "--location", tmp_path / "q")[0] == EXIT_OK
    assert run(capsys, "ingest", folder, *MODEL, "--location", tmp_path / "q")[0] == EXIT_ERROR
    code, out, _ = run(capsys, "info", "--location", tmp_path / "q", "--json")
    assert code == EXIT_OK and json.loads(out)["points"] == 2  # a collection that existed is kept as it was


def test_verbose_shows_what_the_package_does(capsys, tmp_path, images):
    loc = ["--location", tmp_path / "q"]
    code, _, err = run(capsys, "ingest", images / "dog", *MODEL, *loc, "--verbose")
    assert code == EXIT_OK
    assert "DEBUG: loaded test-tiny-clip" in err and "DEBUG: image batch: 2 new" in err
    assert "DEBUG: OTI: 2 samples" in err
    code, _, err = run(capsys, "ingest", images / "dog", *MODEL, *loc)
    assert code == EXIT_OK and "DEBUG" not in err


def test_format_table():
    assert format_table([(1, "ab")], ["n", "name"]).splitlines() == ["n  name", "-  ----", "1  ab"]


@pytest.mark.parametrize("model", ["crossgap-demo", "local-dir:/nowhere", "hf-hub:org/repo"])
def test_pretrained_with_a_model_that_carries_its_weights_is_a_usage_error(capsys, tmp_path, model):
    code, _, err = run(capsys, "search", "a cat", "--text", "--model", model, "--pretrained", "none",
                       "--location", tmp_path / "q")
    assert code == EXIT_USAGE and "carries its own weights" in err


def test_a_model_config_that_is_not_an_object_is_one_line(capsys, tmp_path):
    config = tmp_path / "list.json"
    config.write_text("[1, 2]")
    code, _, err = run(capsys, "search", "a cat", "--text", "--model", "my-list", "--model-config", config,
                       "--pretrained", "none", "--location", tmp_path / "q")
    assert code == EXIT_ERROR and "JSON object" in err and "Traceback" not in err


def test_subprocess_with_model_config_file(tmp_path, images):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_CLIP))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    base = [sys.executable, "-m", "crossgap_qdrant.cli"]
    loc = ["--location", str(tmp_path / "q")]
    model = ["--model", "my-tiny", "--model-config", str(config), "--pretrained", "none", "--steps", "1"]
    proc = subprocess.run([*base, "ingest", str(images / "car"), *model, *loc, "--json"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["inserted"] == 2
    assert "UserWarning" not in proc.stderr and "random" in proc.stderr  # our one-line warning, not PIL's
    proc = subprocess.run([*base, "info", *loc, "--collection", "missing"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith("crossgap-qdrant: error: no collection")
    assert "Traceback" not in proc.stderr


def test_fit_warm_start_then_search_with_it(capsys, tmp_path, images):
    loc = ["--location", tmp_path / "q"]
    assert run(capsys, "ingest", images, *MODEL, *loc)[0] == EXIT_OK
    warm_model = [f for f in MODEL if f not in ("--steps", "2")]  # the warm start's budget is --warm-steps
    code, _, err = run(capsys, "search", images / "dog" / "0.png", *warm_model, *loc, "--warm-start")
    assert code == EXIT_ERROR and "fit-warm-start" in err  # nothing fitted yet
    for bad in (["--warm-steps", "-1"], ["--epochs", "-1"]):  # refused before the model loads
        code, _, err = run(capsys, "fit-warm-start", *MODEL, *loc, *bad)
        assert code == EXIT_USAGE and bad[0] in err
    code, out, err = run(capsys, "fit-warm-start", *MODEL, *loc, "--sample", "6", "--epochs", "5",
                         "--warm-steps", "3", "--json")
    assert code == EXIT_OK, err
    fit = json.loads(out)  # strict JSON: a held-out set this small has no token R^2 (null, not NaN)
    assert (fit["samples"], fit["steps"], fit["file"]) == (6, 3, "warm_start_oti.pt")
    assert "NaN" not in out
    for flags in (["--warm-start"], ["--warm-steps", "0"]):
        code, out, err = run(capsys, "search", images / "dog" / "0.png", *warm_model, *loc, "--mode",
                             "query_inverted", "--limit", "2", "--json", *flags)
        assert code == EXIT_OK and len(json.loads(out)["hits"]) == 2, err
    code, _, err = run(capsys, "search", images / "dog" / "0.png", *MODEL, *loc, "--warm-start")
    assert code == EXIT_USAGE and "--warm-steps" in err  # --steps would be silently replaced
    code, out, _ = run(capsys, "info", *loc, "--json")
    assert json.loads(out)["warm_start"]["image"]["steps"] == 3
    for command in (["fit-warm-start", *MODEL], ["ingest", images / "dog", *MODEL], ["info"]):
        code, _, err = run(capsys, *command, "--location", ":memory:")  # nothing would be kept
        assert code == EXIT_USAGE and ":memory: keeps nothing" in err


def test_a_missing_build_is_one_line_naming_the_rebuild(capsys, tmp_path, images, monkeypatch):
    monkeypatch.setattr(_ext, "_loaded", False)
    monkeypatch.setattr(_ext, "library_path", lambda: None)
    code, _, err = run(capsys, "ingest", images / "dog", *MODEL, "--location", tmp_path / "q")
    assert code == EXIT_ERROR and "pip install --no-build-isolation -e ." in err and "Traceback" not in err


def test_default_server_deadline_is_at_most_30_seconds():
    for command in (["info"], ["search", "q", "--text"], ["ingest", "x"]):
        args = build_parser().parse_args(command)
        assert args.timeout <= 30 and retry_policy(args).deadline <= 30


def test_help_and_usage_errors_import_neither_torch_nor_open_clip_nor_qdrant():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "crossgap_qdrant.cli", "--help"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0 and "usage: crossgap-qdrant" in done.stdout, done.stderr
    probe = ("import sys\n"
             "from crossgap_qdrant.cli import main\n"
             "codes = [main(['--help']), main(['search', '--help']), main(['search'])]\n"
             "heavy = [m for m in ('torch', 'open_clip', 'qdrant_client', 'qdrant_edge') if m in sys.modules]\n"
             "print(codes, heavy)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[0, 0, 2] []"


def test_a_bug_keeps_its_traceback_and_a_known_error_is_one_line(capsys, monkeypatch, tmp_path):
    def bug(args):
        raise TypeError("unsupported operand")

    def known(args):
        raise CollectionNotFoundError("no collection 'photos' here; check --collection")

    monkeypatch.setattr(commands, "cmd_info", bug)
    with pytest.raises(TypeError, match="unsupported operand"):  # not turned into an "expected" one-liner
        main(["info", "--location", str(tmp_path / "q")])
    monkeypatch.setattr(commands, "cmd_info", known)
    code, _, err = run(capsys, "info", "--location", tmp_path / "q")
    assert code == EXIT_ERROR
    assert err.strip() == "crossgap-qdrant: error: no collection 'photos' here; check --collection"
    # as a program: a bug exits 1 with the traceback on stderr
    probe = ("import sys\n"
             "from crossgap_qdrant.cli import commands, run\n"
             "def bug(args):\n"
             "    raise RuntimeError('an internal invariant broke')\n"
             "commands.cmd_info = bug\n"
             f"sys.argv = ['crossgap-qdrant', 'info', '--location', {str(tmp_path / 'q')!r}]\n"
             "run()\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert "RuntimeError: an internal invariant broke" in done.stderr


def test_the_engine_that_wrote_a_folder_is_used_and_another_refused(capsys, tmp_path, images):
    edge, local = tmp_path / "edge", tmp_path / "local"
    assert run(capsys, "ingest", images / "dog", *MODEL, "--location", edge, "--no-invert")[0] == EXIT_OK
    for command in (["info"], ["ingest", images / "cat", *MODEL, "--no-invert"]):
        code, _, err = run(capsys, *command, "--location", edge, "--engine", "local")
        assert code == EXIT_ERROR and "written by Qdrant's embedded engine (edge)" in err, err
        assert "--engine" in err and "Traceback" not in err
    assert sorted(p.name for p in edge.iterdir()) == ["crossgap"]  # no meta.json, .lock or second collection
    code, out, _ = run(capsys, "info", "--location", edge, "--json")
    assert code == EXIT_OK and json.loads(out)["points"] == 2
    assert run(capsys, "ingest", images / "dog", *MODEL, "--location", local, "--engine", "local",
               "--no-invert")[0] == EXIT_OK
    code, out, err = run(capsys, "info", "--location", local, "--json")  # no --engine: the one that wrote it
    assert code == EXIT_OK and json.loads(out)["engine"] == "qdrant-client", err
    code, _, err = run(capsys, "info", "--location", local, "--engine", "edge")
    assert code == EXIT_ERROR and "written by qdrant-client's local mode" in err


def test_a_folder_that_cannot_be_written_is_one_line(capsys, tmp_path, images, monkeypatch):
    folder = tmp_path / "q"
    assert run(capsys, "ingest", images / "dog", *MODEL, "--location", folder, "--no-invert")[0] == EXIT_OK
    real = edge_module.qe

    class ReadOnlyShard:
        @staticmethod
        def load(path):  # what qdrant-edge raises on a read-only mount (os error 30) or without permission
            raise Exception("Service runtime error: failed to load segment: Failed to open mmap payload storage: "
                            "Read-only file system (os error 30)")

    class ReadOnlyEdge:
        EdgeShard = ReadOnlyShard

        def __getattr__(self, name):
            return getattr(real, name)

    monkeypatch.setattr(edge_module, "qe", ReadOnlyEdge())
    for command in (["info"], ["search", images / "dog" / "0.png", *MODEL, "--mode", "native"]):
        code, _, err = run(capsys, *command, "--location", folder)
        errors = [line for line in err.splitlines() if "error" in line]
        assert code == EXIT_ERROR and len(errors) == 1 and "Traceback" not in err, err
        assert "cannot be written" in err and "copy the folder" in err


def test_arguments_and_locations_are_checked_before_the_model_loads(capsys, tmp_path, images, monkeypatch):
    def no_model(args):
        raise AssertionError("the model was loaded before the arguments were checked")

    loc = ["--location", tmp_path / "q"]
    assert run(capsys, "ingest", images / "dog", *MODEL, *loc, "--no-invert")[0] == EXIT_OK
    monkeypatch.setattr(commands, "load_handle", no_model)
    monkeypatch.setattr(evaluate_command, "load_handle", no_model)
    code, _, err = run(capsys, "search", "  ", "--text", *MODEL, *loc)
    assert code == EXIT_USAGE and "text query is empty" in err
    for command in (["search", "a cat", "--text"], ["invert"], ["fit-warm-start"]):
        code, _, err = run(capsys, *command, *MODEL, *loc, "--collection", "typo")
        assert code == EXIT_ERROR and "no collection 'typo'" in err, command
    report = tmp_path / "report.txt"
    report.write_text("mine")
    code, _, err = run(capsys, "evaluate", images, *MODEL, "--out", report)
    assert code == EXIT_USAGE and "is a file" in err and report.read_text() == "mine"


def test_every_option_says_what_it_does_and_its_default():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in [*subparsers.choices.items(), ("demo", demo.build_parser())]:
        for action in sub._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or action.dest == "help":
                continue
            assert action.help, (name, action.option_strings)
            if action.default not in (None, False, argparse.SUPPRESS) and not isinstance(action.default, bool):
                assert "default" in action.help, (name, action.option_strings)
        assert "%%" not in sub.format_help() and "%(" not in sub.format_help(), name
    info = subparsers.choices["info"].format_help()
    assert "--threads" not in info and "--progress" not in info and "--model" not in info  # info uses neither


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == EXIT_OK and out.startswith("crossgap-qdrant ") and len(out.split()) == 2


def test_info_is_stable_names_the_search_mode_and_stays_compact(capsys, tmp_path, images):
    loc = ["--location", tmp_path / "q"]
    assert run(capsys, "ingest", images / "dog", *MODEL, *loc, "--isoclip", "1,2")[0] == EXIT_OK
    code, out, _ = run(capsys, "info", *loc, "--json")
    info = json.loads(out)
    assert list(info["vectors"]) == sorted(info["vectors"])
    assert info["default_modes"] == {"image": "gallery_inverted", "text": "gallery_inverted"}
    code, out, _ = run(capsys, "info", *loc)
    assert "search mode: image->image gallery_inverted (default), text->text gallery_inverted (default)" in out
    assert commands.compact({"basis": "A" * 45000, "cuts": [1, 2], "mean": [0.5] * 512}) == {
        "basis": "<45000 characters>", "cuts": [1, 2], "mean": "<512 numbers>"}


@pytest.mark.parametrize("command, kept", [("ingest", "run the same command again to resume"),
                                           ("info", "nothing was changed")])
def test_ctrl_c_exits_130_saying_what_was_kept(capsys, monkeypatch, tmp_path, command, kept):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, f"cmd_{command}", interrupted)
    argv = [command, *([tmp_path, *MODEL] if command == "ingest" else []), "--location", tmp_path / "q"]
    code, _, err = run(capsys, *argv)
    assert code == 130 and "interrupted" in err and kept in err and "Traceback" not in err


def test_a_closed_pipe_is_quiet(capsys, tmp_path, images):
    assert run(capsys, "ingest", images / "dog", *MODEL, "--location", tmp_path / "q", "--no-invert")[0] == EXIT_OK
    read, write = os.pipe()
    os.close(read)  # the reader went away before anything was written, as `| head -1` does
    try:
        done = subprocess.run([sys.executable, "-m", "crossgap_qdrant.cli", "info", "--location", tmp_path / "q"],
                              stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        os.close(write)
    assert done.stderr == "" and done.returncode == 141


def test_the_client_s_version_check_is_off_so_its_warning_does_not_leak(capsys, monkeypatch):
    seen = {}

    class Client:  # qdrant-client warns from its version check on any server it cannot ask for a version
        def __init__(self, **kwargs):
            seen.update(kwargs)
            raise ConnectionRefusedError("connection refused")

    monkeypatch.setattr(engines, "QdrantClient", Client)
    code, _, err = run(capsys, "info", "--location", "http://127.0.0.1:9", "--retries", "0")
    assert code == EXIT_ERROR and seen.get("check_compatibility") is False, seen
