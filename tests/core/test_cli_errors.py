"""Every user mistake named in issue 15 (and its neighbours) is one line, no traceback, exit 2.

Each case drives the real ``secure-fml`` entry point (``secure_fml.cli.main``) in
process; an exception escaping ``main`` fails the test, so does a second line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from secure_fml.checkpoint import save_checkpoint
from secure_fml.cli import main
from secure_fml.config import config_from_dict, with_overrides
from secure_fml.models import describe_module
from secure_fml.simulation import Simulation, model_spec_for

TINY = [
    "--preset",
    "synthetic",
    "--set",
    "data.options={num_clients = 12, min_samples = 20, max_samples = 40, dim = 6, num_classes = 3}",
    "--set",
    "eval.local_only_steps=0",
    "--set",
    "model.hidden=[8]",
]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse exits itself on bad flags
        rc = int(e.code or 0)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str], *names: str) -> str:
    rc, _, err = run_cli(argv, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, (argv, rc, err)
    assert "Traceback" not in err
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines[0]
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, tiny simulation run directory (2 rounds, checkpoint at round 2)."""
    out = tmp_path_factory.mktemp("runs")
    argv = ["simulate", *TINY, "--rounds", "2", "--out", str(out), "--name", "r", "--no-progress"]
    assert main(argv) == 0
    return out / "r"


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Checkpoints of a custom nn.Module: as the simulation writes them today (the default
    spec) and with the spec of :func:`describe_module` (what the engine stores)."""

    class Wide(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(6, 5)
            self.b = nn.Linear(5, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.tanh(self.a(x)))

    d = tmp_path_factory.mktemp("custom")
    cfg = config_from_dict(
        {
            "data": {
                "preset": "synthetic",
                "options": {
                    "num_clients": 12,
                    "min_samples": 20,
                    "max_samples": 40,
                    "dim": 6,
                    "num_classes": 3,
                },
            },
            "server": {"rounds": 1},
            "eval": {"every": 0, "local_only_steps": 0},
        }
    )
    sim = Simulation(cfg, module=Wide(), run_dir=d / "legacy")
    sim.run(progress=False)
    spec = describe_module(sim.module, default=model_spec_for(cfg, sim.dataset))
    assert spec["kind"] == "custom"
    ckpt = sim.checkpoint()
    assert ckpt.model_spec == spec  # the engine records the custom module as custom
    save_checkpoint(d / "custom.pt", ckpt)
    return d / "legacy", d / "custom.pt"


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        (["--threads", "0"], ["run.threads"]),
        (["--seed", "-1"], ["run.seed"]),
        (["--set", "eval.max_val_clients=0"], ["eval.max_val_clients"]),
        (["--rounds", "0"], ["server.rounds"]),
        (["--clients-per-round", "0"], ["server.clients_per_round"]),
        (["--algorithm", "maml2"], ["algorithm.name"]),
        (["--set", "server.lrr=1"], ["server.lrr"]),
        (["--set", "data.client_fractions=[0.5, 0.5]"], ["data.client_fractions"]),
        (["--set", "data.client_fractions=[0.8, 0.1"], ["data.client_fractions"]),
        (["--set", "algorithm.support_fraction=1.5"], ["algorithm.support_fraction"]),
        (["--set", "noequals"], ["--set"]),
        (["--rounds", "many"], ["--rounds", "many"]),  # argparse, one line too
        (
            [
                "--set",
                "privacy.enabled=true",
                "--set",
                "privacy.noise_multiplier=1.0",
                "--set",
                "privacy.target_epsilon=4",
            ],
            ["privacy.noise_multiplier", "privacy.target_epsilon"],
        ),
        (
            [
                "--set",
                "privacy.enabled=true",
                "--set",
                "privacy.target_epsilon=8",
                "--set",
                "privacy.max_epsilon=4",
            ],
            ["privacy.max_epsilon"],
        ),
        (["--set", "privacy.delta=0.5"], ["privacy.delta"]),
        (["--set", "privacy.target_epsilon=1e6"], ["privacy.target_epsilon"]),
        (["--set", "privacy.target_epsilon=inf"], ["privacy.target_epsilon"]),
        (["--set", "privacy.max_epsilon=nan"], ["privacy.max_epsilon"]),
        (["--preset", "mnist"], ["mnist"]),
        (["--config", "does-not-exist.toml"], ["does-not-exist.toml"]),
        (["--log-to", "wandb"], ["--log-to"]),
    ],
)
def test_simulate_bad_input_is_one_line(
    extra: list[str], names: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_one_line_error(["simulate", "--out", str(tmp_path), *extra], capsys, *names)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # refused before training


def test_config_directory_and_bad_toml_name_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_one_line_error(["simulate", "--config", str(tmp_path)], capsys, str(tmp_path))
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nrounds = 3\n")
    assert_one_line_error(["simulate", "--config", str(bad)], capsys, "bad.toml", "TOML")


def test_client_fractions_list_can_be_set() -> None:
    from secure_fml.config import Config

    cfg = with_overrides(Config(), {"data.client_fractions": "[0.7, 0.15, 0.15]"})
    assert cfg.data.client_fractions == (0.7, 0.15, 0.15)
    cfg = with_overrides(Config(), {"data.client_fractions": "[0.8, 0.1, 0.1]"})
    assert cfg.data.client_fractions == (0.8, 0.1, 0.1)


def test_status_of_a_simulation_run_prints_its_rounds(
    sim_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run_cli(["status", "--run-dir", str(sim_run)], capsys)
    assert rc == 0 and "Traceback" not in err
    lines = out.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["round 1", "round 2"]
    assert "contributors" in lines[0] and "loss" in lines[0]
    assert_one_line_error(["status", "--run-dir", str(tmp_path)], capsys, "metrics.jsonl")
    (tmp_path / "metrics.jsonl").write_text("not json\n")
    assert_one_line_error(["status", "--run-dir", str(tmp_path)], capsys, "line 1")


def test_pki_without_a_ca_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nopki"
    for argv in (
        ["pki", "issue-site", "alpha", "--dir", str(missing)],
        ["pki", "issue-server", "--dir", str(missing)],
    ):
        assert_one_line_error(argv, capsys, str(missing), "pki init")


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_adapt_steps_must_be_positive(
    steps: str, sim_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["adapt", "--checkpoint", str(sim_run), "--data", "synthetic", "--client", "client_00"]
    assert_one_line_error([*argv, "--steps", steps], capsys, "--steps", steps)


def test_adapt_mistakes_are_one_line(
    sim_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["adapt", "--checkpoint", str(sim_run), "--data", "synthetic"]
    assert_one_line_error([*base, "--client", "nobody"], capsys, "nobody")
    assert_one_line_error([*base, "--client", "client_00", "--support-fraction", "1"], capsys)
    missing = tmp_path / "none.pt"
    assert_one_line_error(
        ["adapt", "--checkpoint", str(missing), "--data", "synthetic", "--client", "c"],
        capsys,
        str(missing),
    )
    broken = tmp_path / "broken.pt"
    broken.write_bytes((sim_run / "checkpoint.pt").read_bytes()[:-50])
    assert_one_line_error(
        ["adapt", "--checkpoint", str(broken), "--data", "synthetic", "--client", "c"],
        capsys,
        "integrity",
    )
    csv_missing = tmp_path / "site.csv"
    assert_one_line_error(
        [*base[:4], str(csv_missing), "--client", "a", "--client-column", "s"],
        capsys,
        "--label-column",
    )


def test_adapt_custom_module_checkpoints_are_one_line(
    custom_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    legacy, custom = custom_run
    for ckpt in (legacy, custom):
        line = assert_one_line_error(
            ["adapt", "--checkpoint", str(ckpt), "--data", "synthetic", "--client", "client_00"],
            capsys,
            "module=",
        )
        assert "secure_fml.personalize" in line


def test_resume_refuses_conflicting_flags_and_says_no_checkpoint_yet(
    sim_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for extra, flag in (
        (["--algorithm", "fedavg"], "--algorithm"),
        (["--config", "x.toml"], "--config"),
        (["--overwrite"], "--overwrite"),
        (["--set", "server.lr=1"], "--set"),
        (["--seed", "3"], "--seed"),
    ):
        assert_one_line_error(["simulate", "--resume", str(sim_run), *extra], capsys, flag)
    assert_one_line_error(
        ["simulate", "--resume", str(sim_run), "--rounds", "1"], capsys, "already completed 2"
    )
    assert_one_line_error(["simulate", "--resume", str(tmp_path)], capsys, "config.json")
    early = tmp_path / "early"
    early.mkdir()
    (early / "config.json").write_text((sim_run / "config.json").read_text())
    assert_one_line_error(["simulate", "--resume", str(early)], capsys, "no checkpoint yet")


def test_privacy_plan_checks_ranges(
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["privacy", "plan", "--rounds", "3", "--population", "300"]
    assert_one_line_error([*base, "--epsilon", "4", "--delta", "0.5"], capsys, "delta")
    assert_one_line_error([*base, "--epsilon", "1e6"], capsys, "target_epsilon")
    assert_one_line_error([*base, "--epsilon", "4", "--delta", "0.005"], capsys, "1/N")
    assert_one_line_error([*base, "--epsilon", "4", "--clients-per-round", "301"], capsys)


@pytest.mark.slow  # the accountant's calibration takes seconds
def test_privacy_plan_defaults_are_simulates(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["privacy", "plan", "--rounds", "3", "--population", "300"]
    rc, out, _ = run_cli([*base, "--epsilon", "4"], capsys)
    assert rc == 0
    from secure_fml.config import ServerConfig

    default = ServerConfig()
    # The plan's defaults are simulate's: fixed-size sampling of the same m.
    assert default.sampling.value == "fixed_size" and default.clients_per_round == 4
    assert "fixed" in out.lower() and "4" in out


def test_report_and_audit_targets_are_checked(
    sim_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_one_line_error(["report", str(tmp_path)], capsys, "config.json")
    assert_one_line_error(["report", str(tmp_path / "missing")], capsys, "missing")
    assert_one_line_error(["audit", str(tmp_path / "none.toml")], capsys, "none.toml")
    # A run without DP gets a report that says so, instead of an error or a number.
    rc, _, err = run_cli(["report", str(sim_run), "--no-progress"], capsys)
    assert rc == 0 and "Traceback" not in err
    assert "no DP guarantee" in (sim_run / "report.md").read_text(encoding="utf-8")


def test_help_shows_defaults_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(["privacy", "plan", "--help"], capsys)
    assert rc == 0 and "(default: 1e-05)" in out and "(default: fixed)" in out
    rc, out, _ = run_cli(["adapt", "--help"], capsys)
    assert rc == 0 and "(default: 100)" in out and "--ignore-columns" in out
    rc, out, _ = run_cli(["--version"], capsys)
    assert rc == 0 and out.startswith("secure-fml ")


def test_simulation_summary_has_baselines(sim_run: Path) -> None:
    summary = json.loads((sim_run / "summary.json").read_text())
    base = summary["baselines"]
    assert base["chance"]["accuracy"] == pytest.approx(1 / 3)
    assert 0 <= base["majority"]["accuracy"] <= 1
    assert "balanced_accuracy" in base["untrained_adapted"]
    assert base["local_only"] is None  # eval.local_only_steps = 0
    assert summary["held_out"] is None
    assert "balanced_accuracy" in summary["test"]["personalized_metrics"]
