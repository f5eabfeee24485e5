"""Every shipped config file parses and validates; a short run of each works on real data."""

from __future__ import annotations

from pathlib import Path

import pytest

from secure_fml.config import load_config, with_overrides
from secure_fml.simulation import Simulation

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_file_is_valid(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.run.name == path.stem


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_file_runs_two_rounds(path: Path, data_root: Path, tmp_path: Path) -> None:
    cfg = with_overrides(
        load_config(path),
        {
            "data.root": str(data_root),
            "server.rounds": 2,
            "eval.every": 0,
            "model.hidden": [16],
            "run.out_dir": str(tmp_path),
        },
    )
    if cfg.data.preset == "femnist":
        cfg = with_overrides(cfg, {"model.kind": "mlp"})  # keep the test cheap on 2 cores
    res = Simulation(cfg, run_dir=tmp_path / cfg.run.name).run(progress=False)
    assert res.rounds == 2 and res.final is not None
