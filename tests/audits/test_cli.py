"""``secure-fml audit`` through the entry-point plugin hook: report files and exit status."""

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


@pytest.mark.parametrize(("control", "rc"), [("none", 0), ("noise_off", 1)])
def test_audit_command_writes_report_and_fails_on_bound_above_claim(
    tmp_path: Path, control: str, rc: int, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text(CONFIG)
    out = tmp_path / "audit"
    code = main(["audit", str(cfg), "--suite", "quick", "--control", control, "--out", str(out)])
    assert code == rc
    data = json.loads((out / "audit.json").read_text())
    assert {r["audit"] for r in data["results"]} == {
        "canary_epsilon",
        "one_run",
        "membership_inference",
        "gradient_inversion",
        "malicious_server",
    }
    assert data["bound_exceeds_claim"] is (rc == 1)
    html = (out / "audit.html").read_text()
    assert "data:image/png;base64," in html
    assert "wrote" in capsys.readouterr().out
