"""``secure-fml audit`` through the entry-point plugin hook: claims from the ledger,
report files, progress output and the release-gate exit status (0/1/2/3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secure_fml.cli import main

CONFIG = """
[data]
preset = "synthetic"
[algorithm]
name = "fomaml"
[server]
rounds = 30
sampling = "poisson"
sampling_rate = 0.1
optimizer = "sgd"
lr = 1.0
[privacy]
enabled = true
target_epsilon = 1.0
[eval]
every = 0
[run]
insecure_seed = 1
"""


def test_a_run_directory_with_privacy_on_and_no_ledger_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(
        json.dumps({"privacy": {"enabled": True, "noise_multiplier": 1.0}})
    )
    assert main(["audit", str(run), "--out", str(tmp_path / "a")]) == 2
    assert "no privacy_ledger.jsonl" in capsys.readouterr().err
    # A corrupted ledger is an error too (exit 2), never an audit of a made-up claim.
    (run / "privacy_ledger.jsonl").write_text('{"not": "a ledger line"}\n')
    assert main(["audit", str(run), "--out", str(tmp_path / "a")]) == 2
    assert not (tmp_path / "a").exists()


def test_a_missing_target_is_an_error(tmp_path: Path) -> None:
    assert main(["audit", str(tmp_path / "nope.toml")]) == 2


@pytest.mark.slow
def test_audit_command_writes_report_and_gates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Noise off must exit 1. (A correct central-DP run exits 1 too: the gradient-inversion
    # audit sees the coordinator's view, the un-noised updates; central DP trusts it.)
    control, adversary, rc = "noise_off", "outside_observer", 1
    cfg = tmp_path / "run.toml"
    cfg.write_text(CONFIG)
    out = tmp_path / "audit"
    code = main(
        [
            "audit",
            str(cfg),
            "--suite",
            "quick",
            "--control",
            control,
            "--out",
            str(out),
            "--rounds",
            "10",
            "--adversary",
            adversary,
        ]
    )
    assert code == rc
    data = json.loads((out / "audit.json").read_text())
    assert data["exit_code"] == rc
    assert {r["audit"] for r in data["results"]} == {
        "canary_epsilon",
        "one_run",
        "membership_inference",
        "gradient_inversion",
        "malicious_server",
    }
    html = (out / "audit.html").read_text()
    assert "data:image/png;base64," in html
    captured = capsys.readouterr()
    assert "wrote" in captured.out and f"exit {rc}" in captured.out
    assert "[1/5] canary_epsilon: started" in captured.err  # progress on long work


@pytest.mark.slow
def test_privacy_off_leaks_are_reported_as_leaks_exit_1(tmp_path: Path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text(CONFIG.replace("enabled = true", "enabled = false"))
    out = tmp_path / "audit"
    code = main(["audit", str(cfg), "--suite", "quick", "--out", str(out), "--rounds", "3"])
    assert code == 1
    data = json.loads((out / "audit.json").read_text())
    assert any(r["verdict"] == "leak_found" for r in data["results"])


def test_a_deployment_run_directory_runs_the_audits_that_need_no_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A coordinator's run directory: its config.json is the coordinator's (its [data] is a
    # default it never trains on), run.json says "deployment".
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"secure_aggregation": {"protocol": "secagg"}}))
    (run / "run.json").write_text(json.dumps({"kind": "deployment"}))
    assert main(["audit", str(run), "--out", str(tmp_path / "a"), "--quiet"]) == 3
    results = {
        r["audit"]: r for r in json.loads((tmp_path / "a" / "audit.json").read_text())["results"]
    }
    assert results["malicious_server"]["verdict"] == "pass"
    retrained = {"canary_epsilon", "one_run", "membership_inference", "gradient_inversion"}
    assert set(results) == retrained | {"malicious_server"}
    for name in retrained:
        assert results[name]["verdict"] == "inconclusive"
        assert results[name]["summary"].startswith("not run: it retrains the mechanism")
        assert "\n" not in results[name]["summary"]
    capsys.readouterr()

    # A site's state directory holds its ledger and policy, no run config: refused in a line.
    site = tmp_path / "state-alpha"
    site.mkdir()
    (site / "config.json").write_text(
        json.dumps({"privacy": {"enabled": True, "delta": 1e-5}, "site": {"name": "alpha"}})
    )
    assert main(["audit", str(site), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "site's state directory" in err, err
