"""Progress on stderr (crossgap_qdrant.progress): bars on terminals that leave nothing behind, a plain line
every few seconds elsewhere, and the warning with an estimate before a long inversion."""

import io
import logging

import pytest
import torch

from crossgap_qdrant.cli import main
from crossgap_qdrant.inversion import OTIConfig, oti_invert
from crossgap_qdrant.inversion import engine as engine_module
from crossgap_qdrant.progress import LINE_INTERVAL_S, LineProgress, SilentProgress, format_seconds, progress_bar
from tests.support.inversion_targets import reachable_text_targets


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_without_a_terminal_a_line_every_interval_with_an_estimate():
    clock, stream = Clock(), io.StringIO()
    bar = LineProgress(100, "OVI (10 samples x 10 steps)", "step", stream, interval=10, clock=clock)
    for _ in range(100):
        clock.now += 0.5  # 50 s in all: 4 lines (at 10, 20, 30, 40 s), then the last one on close
        bar.update(1)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 6 and "\r" not in stream.getvalue()
    assert lines[0] == "crossgap-qdrant: OVI (10 samples x 10 steps): 20/100 steps (20%), 10 s, about 40 s left"
    assert lines[-1].endswith("100/100 steps (100%), 50 s, done")


def test_a_short_task_without_a_terminal_stays_silent():
    stream = io.StringIO()
    with progress_bar(5, "encode images", "item", stream=stream) as bar:
        bar.update(5)
    assert isinstance(bar, LineProgress) and stream.getvalue() == "" and LINE_INTERVAL_S >= 5


def test_a_terminal_bar_is_removed_when_done_and_off_shows_nothing():
    terminal = Terminal()
    bar = progress_bar(3, "ingest images", "image", stream=terminal)
    assert bar.leave is False  # a run of many batches leaves no line per batch behind
    bar.update(3)
    bar.close()
    assert isinstance(progress_bar(3, "x", enabled=False, stream=terminal), SilentProgress)


def test_format_seconds():
    assert [format_seconds(s) for s in (41, 210, 9000)] == ["41 s", "3.5 min", "2.5 h"]


def test_the_api_shows_no_bar_on_a_stream_that_is_not_a_terminal(stores, images, capsys):
    store = stores.make()
    store.ingest_images(images / "dog", progress=True)
    assert "\r" not in capsys.readouterr().err  # captured stderr is not a terminal


def test_a_long_inversion_is_announced_with_an_estimate(tiny_clip, monkeypatch, caplog):
    model, _, tok = tiny_clip
    targets = reachable_text_targets(model, tok, "a photo of {}", 1, n=4, seed=0)
    monkeypatch.setattr(engine_module, "LONG_INVERSION_S", 0.0)
    with caplog.at_level(logging.WARNING, logger="crossgap_qdrant"):
        oti_invert(tiny_clip, targets, OTIConfig(steps=5, batch_size=2), progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "OTI of 4 sample(s) will take about" in warnings[0] and "5 steps" in warnings[0]
    caplog.clear()
    monkeypatch.setattr(engine_module, "LONG_INVERSION_S", 1e9)
    with caplog.at_level(logging.WARNING, logger="crossgap_qdrant"):
        oti_invert(tiny_clip, targets, OTIConfig(steps=5, batch_size=2), progress=False)
    assert not caplog.records


@pytest.mark.parametrize("env, flag, expected", [(None, [], 1), ("3", [], None), (None, ["--threads", "2"], 2)])
def test_the_cli_runs_on_one_thread_unless_told_otherwise(monkeypatch, tmp_path, capsys, env, flag, expected):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS")
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    main(["search", "a cat", "--text", "--model", "crossgap-demo", "--location", str(tmp_path / "none"), *flag])
    capsys.readouterr()
    assert calls == ([] if expected is None else [expected])
