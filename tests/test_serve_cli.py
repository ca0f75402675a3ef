"""``crossgap-qdrant serve`` (crossgap_qdrant.cli.serve_command): flags, refusals, and a real start."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from fastapi.testclient import TestClient

from crossgap_qdrant.cli import EXIT_OK, EXIT_USAGE, main
from tests.support.serve import shape_images

uvicorn = pytest.importorskip("uvicorn", reason="the serve extra (fastapi, uvicorn) is not installed")

MODEL = ["--model", "test-tiny-clip", "--pretrained", "none", "--steps", "2", "--quiet"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def location(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-cli")
    shape_images(root / "imgs")
    loc = ["--location", str(root / "q"), "--collection", "served"]
    assert main(["ingest", str(root / "imgs"), *MODEL, *loc]) == EXIT_OK
    return loc


def test_serve_hands_uvicorn_an_app_over_the_collection_on_loopback(location, monkeypatch, capsys):
    seen = {}

    def fake_run(app, host, port, **kwargs):  # answers a request while the store is open
        seen.update(host=host, port=port, workers=kwargs.get("workers"))
        with TestClient(app) as client:
            seen["info"] = client.get("/api/info").json()
            seen["search"] = client.get("/api/search", params={"text": "a red circle", "limit": 50}).json()
            seen["big"] = client.post("/api/search", files={"image": ("x.png", b"x" * 3 * 2**20, "image/png")})

    monkeypatch.setattr(uvicorn, "run", fake_run)
    assert main(["serve", *MODEL, *location, "--port", "8123", "--max-upload-mb", "2", "--max-limit", "5"]) == EXIT_OK
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123 and seen["workers"] == 1
    assert seen["info"]["collection"] == "served" and seen["info"]["counts"]["images"] == 7
    assert seen["info"]["limits"]["max_limit"] == 5
    assert seen["search"] == {"error": "limit must be between 1 and 5, got 50"}
    assert seen["big"].status_code == 413 and "2097152 bytes" in seen["big"].json()["error"]
    err = capsys.readouterr().err
    assert "serving collection 'served' (7 points) at http://127.0.0.1:8123/" in err and "authentication" not in err


def test_serve_warns_when_listening_beyond_this_machine(location, monkeypatch, capsys):
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kwargs: None)
    assert main(["serve", *MODEL, *location, "--host", "0.0.0.0"]) == EXIT_OK
    assert "there is no authentication" in capsys.readouterr().err


@pytest.mark.parametrize("flags, words", [
    (["--port", "0"], "--port must be in 1..65535"),
    (["--max-upload-mb", "0"], "--max-upload-mb must be > 0"),
    (["--max-pixels", "0"], "--max-pixels must be >= 1"),
    (["--location", ":memory:"], "--location :memory: keeps nothing"),
])
def test_serve_usage_errors(location, flags, words, capsys):
    assert main(["serve", *MODEL, *location, *flags]) == EXIT_USAGE
    assert words in capsys.readouterr().err


def test_serve_starts_and_answers_on_127_0_0_1(location):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    code = ("import sys, tests.support.tiny_models; from crossgap_qdrant.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", *MODEL, *location, "--port", str(port)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline, info = time.monotonic() + 120, None
        while info is None:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the service did not answer"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=5) as response:
                    info = json.load(response)
            except OSError:
                time.sleep(0.25)
        assert info["collection"] == "served" and info["counts"]["images"] == 7
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            assert b'id="search-form"' in response.read()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
