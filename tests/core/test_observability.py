"""Metrics sinks (JSONL with timestamps, JSON log lines, TensorBoard, MLflow) and progress."""

from __future__ import annotations

import importlib.util
import io
import json
import logging
from pathlib import Path

import pytest

from secure_fml.errors import ConfigError
from secure_fml.observability import (
    JsonlSink,
    LoggingSink,
    MultiSink,
    Progress,
    build_sink,
    progress,
    stage,
)


def _line(r: int) -> dict:
    return {"round": r, "clients": ["a", "b"], "train_loss": 1.0 / r, "round_s": 0.1}


def test_jsonl_sink_timestamps_and_resume_drops_rounds_after_the_checkpoint(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.jsonl"
    with JsonlSink(path) as sink:
        for r in range(1, 6):
            sink.round(_line(r))
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(isinstance(r["ts"], float) and r["time"].endswith("+00:00") for r in rows)
    assert rows[0]["ts"] <= rows[-1]["ts"]
    # Resume from the round-3 checkpoint: rounds 4, 5 run again and are not duplicated.
    with JsonlSink(path, resume_after_round=3) as sink:
        for r in (4, 5, 6):
            sink.round(_line(r))
    assert [json.loads(x)["round"] for x in path.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    path.write_text("garbage\n")
    with pytest.raises(ConfigError, match="line 1"):
        JsonlSink(path, resume_after_round=1)
    # A crash mid-write leaves a torn last line (no newline): dropped on resume; a torn
    # line anywhere else is not a crash artefact and stays an error.
    path.write_text('{"round": 1}\n{"round": 2, "sta')
    JsonlSink(path, resume_after_round=5).close()
    assert path.read_text() == '{"round": 1}\n'
    path.write_text('{"round": 1}\n{"round": 2, "sta\n{"round": 3}\n')
    with pytest.raises(ConfigError, match="line 2"):
        JsonlSink(path, resume_after_round=5)


def test_logging_sink_writes_one_json_line_per_round(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="secure_fml.rounds"):
        sink = LoggingSink()
        sink.round(_line(1))
        sink.round(_line(2))
    recs = [json.loads(r.getMessage()) for r in caplog.records if r.name == "secure_fml.rounds"]
    assert [r["round"] for r in recs] == [1, 2]
    assert recs[0]["event"] == "round" and recs[0]["sampled"] == 2 and "clients" not in recs[0]


def test_multisink_switches_off_a_failing_optional_sink(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(LoggingSink):
        def round(self, line: object) -> None:  # type: ignore[override]
            raise OSError("disk full")

    good, bad = LoggingSink(), Broken()
    multi = MultiSink([good], optional=[bad])
    multi.round(_line(1))
    assert bad not in multi.sinks and good in multi.sinks
    assert "disk full" in caplog.text
    with pytest.raises(OSError):
        MultiSink([Broken()]).round(_line(1))  # a required sink's failure propagates


def test_build_sink_rejects_unknown_kinds(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="wandb"):
        build_sink(["wandb"], run_dir=tmp_path)
    sink = build_sink(["jsonl", "log"], run_dir=tmp_path)
    sink.round(_line(1))
    sink.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["round"] == 1


@pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed"
)
def test_tensorboard_sink_writes_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sink = build_sink(["tensorboard"], run_dir=tmp_path)
    for r in (1, 2, 3):
        sink.round(_line(r))
    sink.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train_loss")] == [1, 2, 3]


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed")
def test_mlflow_sink_logs_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from secure_fml.observability import MLflowSink

    sink = MLflowSink(tracking_uri=(tmp_path / "mlruns").as_uri(), run_name="t")
    for r in (1, 2):
        sink.round(_line(r))
    run_id = sink.run_id
    sink.close()
    hist = mlflow.tracking.MlflowClient().get_metric_history(run_id, "train_loss")
    assert [m.step for m in hist] == [1, 2]


def test_missing_optional_package_is_a_config_error(tmp_path: Path) -> None:
    for kind, pkg in (("tensorboard", "tensorboard"), ("mlflow", "mlflow")):
        if importlib.util.find_spec(pkg) is not None:
            continue
        with pytest.raises(ConfigError, match=rf"secure-fml\[{kind}\]"):
            build_sink([kind], run_dir=tmp_path)


def test_progress_writes_plain_lines_without_carriage_returns_when_not_a_tty() -> None:
    buf = io.StringIO()
    with Progress(total=5, desc="rounds", unit="round", stream=buf, min_interval_s=0.0) as bar:
        for _ in range(5):
            bar.update(1)
            bar.set_postfix({"loss": "0.5"})
    text = buf.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("rounds: 1/5 round (20%)")
    assert lines[-1].startswith("rounds: done 5/5 round (100%)") and "loss=0.5" in lines[-1]
    # Rate-limited: with a long interval only the first and the final line appear.
    buf = io.StringIO()
    assert list(progress(range(50), desc="eval", stream=buf, min_interval_s=3600)) == list(
        range(50)
    )
    assert len(buf.getvalue().splitlines()) == 2


def test_progress_on_a_tty_is_a_bar_and_disabled_is_silent() -> None:
    buf = io.StringIO()
    with Progress(total=3, desc="r", stream=buf, tty=True) as bar:
        bar.update(3)
    assert "\r" in buf.getvalue()
    buf = io.StringIO()
    with Progress(total=3, desc="r", stream=buf, enabled=False) as bar:
        bar.update(3)
    assert buf.getvalue() == ""


def test_stage_is_silent_when_quick_and_announces_slow_steps() -> None:
    import time

    buf = io.StringIO()
    with stage("loading", stream=buf, after_s=5.0):
        pass
    assert buf.getvalue() == ""
    with stage("loading", stream=buf, after_s=0.01):
        time.sleep(0.2)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "loading ..." and lines[1].startswith("loading: done in ")
