"""The engine's progress watchdog: an aborted round attempt is retried after a back-off;
after ``server.max_aborted_rounds`` aborts in a row the run stops with NoProgress,
naming the reason of the last abort, instead of retrying forever."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from aggregation import Stage
from secure_fml.config import config_from_dict
from secure_fml.errors import ConfigError, NoProgress
from secure_fml.simulation import InMemoryTransport, Simulation

BASE: dict[str, Any] = {
    "data": {"preset": "synthetic", "options": {"num_clients": 12, "max_samples": 60}},
    "model": {"kind": "mlp", "hidden": [4]},
    "algorithm": {"name": "maml"},
    "server": {"rounds": 8, "sampling": "all", "lr": 0.01},
    "eval": {"every": 0, "local_only_steps": 0},
    "secure_aggregation": {"protocol": "secagg"},
    "run": {"insecure_seed": 3},
}


def _cfg(**server: Any) -> Any:
    raw = json.loads(json.dumps(BASE))
    raw["server"].update(server)
    return config_from_dict(raw)


class _SilentRounds(InMemoryTransport):
    """Most participants go silent after advertising keys in the scripted rounds."""

    def __init__(self, rounds: set[int]) -> None:
        super().__init__()
        self.rounds = rounds

    def silent_from(
        self, round_: int, participants: Sequence[str], stages: Sequence[Stage]
    ) -> dict[str, Stage]:
        if round_ not in self.rounds:
            return {}
        return {p: Stage.SHARE_KEYS for p in participants[: len(participants) - 2]}


@pytest.mark.slow
def test_aborting_rounds_back_off_then_stop_with_no_progress(tmp_path: Any) -> None:
    sim = Simulation(
        _cfg(max_aborted_rounds=3, abort_backoff_s=5.0),
        run_dir=tmp_path,
        transport=_SilentRounds(set(range(1, 100))),
    )
    with pytest.raises(NoProgress, match=r"3 round attempts in a row aborted.*round 3") as ei:
        sim.run(progress=False)
    assert "DropoutThresholdNotMet" in str(ei.value)  # the reason of the last abort
    assert [ln["status"] for ln in sim.history] == ["aborted: DropoutThresholdNotMet"] * 3
    assert sim.engine.finished and sim.engine.stopped == str(ei.value)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [ln["round"] for ln in lines] == [1, 2, 3]
    assert all("clients shared keys" in ln["reason"] for ln in lines)


@pytest.mark.slow
def test_backoff_doubles_and_a_complete_round_resets_the_count() -> None:
    sim = Simulation(
        _cfg(max_aborted_rounds=3, abort_backoff_s=5.0, rounds=6),
        transport=_SilentRounds({1, 2, 4, 5}),
    )
    sim.open()
    ends: list[float] = []
    starts: list[float] = []
    while not sim.engine.finished:
        line = sim.run_round()
        ends.append(sim.engine.clock())
        starts.append(ends[-1] - line["round_s"])
    assert [ln["status"] == "complete" for ln in sim.history] == [
        False,
        False,
        True,
        False,
        False,
        True,
    ]
    # Waits before rounds 2, 3 (after 1, 2 aborts in a row), 5, 6; none before round 4.
    gaps = [starts[i + 1] - ends[i] for i in range(5)]
    assert gaps[0] == pytest.approx(5.0) and gaps[1] == pytest.approx(10.0)
    assert gaps[2] == pytest.approx(0.0)
    assert gaps[3] == pytest.approx(5.0) and gaps[4] == pytest.approx(10.0)
    assert sim.engine.stop_error is None and sim.engine.aborts_in_a_row == 0
    sim.close()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_aborted_rounds", 0),
        ("max_aborted_rounds", 2.5),
        ("max_aborted_rounds", True),
        ("abort_backoff_s", 0.0),
        ("abort_backoff_s", float("inf")),
    ],
)
def test_watchdog_settings_are_validated(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"server.{field}"):
        _cfg(**{field: value})
