"""Record-level DP inside the simulation: receipts charged per site, budgets, refusals."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from privacy import RecordLevelRelease, read_ledger
from privacy.errors import ConfigError
from secure_fml import Simulation, config_from_dict
from secure_fml.data import ClientData, FederatedDataset, InputKind


def _dataset(units: bool = False) -> FederatedDataset:
    rng = np.random.default_rng(0)
    clients = []
    for k, n in enumerate((40, 30, 20)):
        x = rng.standard_normal((n, 4)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.int64)
        u = np.array([f"p{i // 2}" for i in range(n)]) if units else None
        clients.append(ClientData(f"site{k}", x, y, u))
    meta = {"unit_column": "patient_id"} if units else {}
    return FederatedDataset("toy", tuple(clients), 2, InputKind.TABULAR, metadata=meta)


def _config(**privacy: Any) -> Any:
    return config_from_dict(
        {
            "data": {"preset": "synthetic", "client_fractions": [1.0, 0.0, 0.0]},
            "model": {"kind": "logreg"},
            "algorithm": {"name": "fedavg", "batch_size": 8, "local_steps": 2},
            "server": {"rounds": 4, "sampling": "all", "clients_per_round": None},
            "eval": {"every": 0},
            "privacy": {
                "enabled": True,
                "unit": "record",
                "record_noise_multiplier": 1.0,
                **privacy,
            },
            "run": {"insecure_seed": 1},
        }
    )


def _run(cfg: Any, ds: FederatedDataset, run_dir: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return Simulation(cfg, dataset=ds, run_dir=run_dir).run(progress=False)


@pytest.mark.slow
def test_every_site_round_is_charged_and_the_smallest_site_stops_at_its_budget(
    tmp_path: Path,
) -> None:
    res = _run(_config(record_max_epsilon=2.2, record_noise_multiplier=2.5), _dataset(), tmp_path)
    events = [e.event for e in read_ledger(tmp_path / "privacy_ledger.jsonl")]
    assert all(isinstance(e, RecordLevelRelease) for e in events)
    per_site: dict[str, list[int]] = {}
    for e in events:
        per_site.setdefault(e.site_id, []).append(e.round)
    # q = 8/20 at the smallest site costs the most per round: it stops first.
    assert per_site["site0"] == [1, 2, 3, 4]
    assert per_site["site2"] == [1, 2, 3]  # round 4 would bring it to 2.37 > 2.2
    rl = res.summary["record_level"]
    assert "site2" in rl["sites_at_budget"]
    assert all(e <= 2.2 for e in rl["epsilon_per_site"].values())
    assert rl["epsilon_worst_site"] == max(rl["epsilon_per_site"].values())
    first = next(e for e in events if e.site_id == "site0")
    assert first.sample_rates == (8 / 40,) and first.steps == (2,)


def test_refused_algorithm_and_unit_column_mismatch(tmp_path: Path) -> None:
    cfg = _config()
    bad = config_from_dict({**_plain(cfg), "algorithm": {"name": "maml", "batch_size": 8}})
    with pytest.raises(ConfigError, match="use 'fomaml'"):
        Simulation(bad, dataset=_dataset(), run_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match=r"set privacy\.unit_column"):
        Simulation(cfg, dataset=_dataset(units=True), run_dir=tmp_path / "b")
    wrong = config_from_dict(
        {**_plain(cfg), "privacy": {**_plain(cfg)["privacy"], "unit_column": "mrn"}}
    )
    with pytest.raises(ConfigError, match="grouped by 'patient_id'"):
        Simulation(wrong, dataset=_dataset(units=True), run_dir=tmp_path / "c")


def test_person_units_are_accounted_as_persons(tmp_path: Path) -> None:
    cfg = config_from_dict(
        {
            **_plain(_config()),
            "privacy": {**_plain(_config())["privacy"], "unit_column": "patient_id"},
        }
    )
    _run(cfg, _dataset(units=True), tmp_path)
    events = [e.event for e in read_ledger(tmp_path / "privacy_ledger.jsonl")]
    first = next(e for e in events if isinstance(e, RecordLevelRelease) and e.site_id == "site0")
    assert first.unit == "patient_id" and first.sample_rates == (8 / 20,)  # 40 rows, 20 persons


def _plain(cfg: Any) -> dict[str, Any]:
    from secure_fml.config import config_to_dict

    return {
        k: {f: v for f, v in sec.items() if v is not None} for k, sec in config_to_dict(cfg).items()
    }
