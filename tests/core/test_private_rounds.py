"""DP and secure aggregation wrapped around the update path, end to end in-process."""

from __future__ import annotations

import itertools
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from aggregation import PlainInput
from privacy import (
    DistributedDiscreteGaussianRelease,
    GaussianRelease,
    RoundNotApplied,
    SkippedRound,
    SkipReason,
    read_ledger,
)
from secure_fml.config import config_from_dict
from secure_fml.errors import ConfigError, PrivacyBudgetExhausted
from secure_fml.messages import StageReply
from secure_fml.simulation import SequentialExecutor, Simulation

BASE = {
    "data": {"preset": "synthetic", "options": {"num_clients": 40, "max_samples": 100}},
    "algorithm": {"name": "maml"},
    "server": {"rounds": 4, "clients_per_round": 6, "lr": 0.01},
    "eval": {"every": 0},
    "run": {"insecure_seed": 11},  # reproducible draws, so runs can be compared
}


def cfg(**sections: dict):
    raw = json.loads(json.dumps(BASE))
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v)
    return config_from_dict(raw)


def test_secure_aggregation_matches_plain_run_up_to_quantization(tmp_path: Path) -> None:
    # Server SGD, so the effect of quantization is linear and boundable: each client's
    # stochastic rounding moves each coordinate by < 1/scale, so after R rounds the
    # states differ by about lr * R / scale (Adam would renormalise tiny coordinates).
    sgd = {"optimizer": "sgd", "lr": 0.01}
    plain = Simulation(cfg(server=sgd)).run(progress=False)
    for protocol in ("secagg", "secagg+"):
        # clip_norm far above any update norm: only fixed-point quantization differs.
        c = cfg(secure_aggregation={"protocol": protocol}, privacy={"clip_norm": 1e3}, server=sgd)
        sim = Simulation(c)
        sec = sim.run(progress=False)
        assert sim.engine.last_plan is not None and sim.engine.last_plan.codec is not None
        scale = sim.engine.last_plan.codec.scale
        bound = 4 * 0.01 * 2.0 / scale  # 4 rounds, lr 0.01, 2x slack for the dynamics
        diff = float((sec.state - plain.state).abs().max())
        assert 0 < diff < bound, (protocol, diff, bound)


def test_secure_aggregation_recovers_dropouts_every_round() -> None:
    c = cfg(
        secure_aggregation={"protocol": "secagg+", "dropout_fraction": 0.2},
        privacy={"clip_norm": 1e3},
    )
    sim = Simulation(c)
    sim.run(progress=False)
    # One of 6 clients goes silent each round at a random stage. Before its masked input
    # it is excluded from the sum; during unmasking its input is already in and counts.
    assert all(line["contributors"] + line["dropped"] == 6 for line in sim.history)
    assert {line["contributors"] for line in sim.history} <= {5, 6}
    assert sum(line["dropped"] for line in sim.history) >= 1


class _RecordingExecutor(SequentialExecutor):
    """Keeps what each client sent in the clear (the plain protocol's inputs)."""

    def __init__(self, factory) -> None:  # type: ignore[no-untyped-def]
        super().__init__(factory)
        self.sent: dict[int, list[np.ndarray]] = {}

    def handle(self, jobs):  # type: ignore[no-untyped-def]
        out = super().handle(jobs)
        for reply in out:
            if isinstance(reply, StageReply) and isinstance(reply.message, PlainInput):
                self.sent.setdefault(reply.round, []).append(reply.message.vector.copy())
        return out


def test_central_dp_charges_before_apply_and_adds_sigma_c_noise(tmp_path: Path) -> None:
    sigma, clip = 1.0, 0.5
    c = cfg(privacy={"enabled": True, "noise_multiplier": sigma, "clip_norm": clip})
    holder: dict[str, Simulation] = {}
    executor = _RecordingExecutor(lambda name: holder["sim"].client_pipeline(name))
    sim = Simulation(c, run_dir=tmp_path, executor=executor)
    holder["sim"] = sim
    ledger_at_apply: list[tuple[int, int]] = []
    step = sim.engine.optimizer.step

    def checked_step(mean: torch.Tensor) -> torch.Tensor:
        # The round being applied is already durably on disk when its update is applied.
        on_disk = read_ledger(tmp_path / "privacy_ledger.jsonl")
        ledger_at_apply.append((sim.engine.round + 1, on_disk[-1].round if on_disk else 0))
        return step(mean)

    sim.engine.optimizer.step = checked_step  # type: ignore[method-assign]
    sim.run(progress=False)
    entries = read_ledger(tmp_path / "privacy_ledger.jsonl")
    assert [e.round for e in entries] == [1, 2, 3, 4]
    assert all(isinstance(e.event, GaussianRelease) for e in entries)
    assert ledger_at_apply == [(r, r) for r in (1, 2, 3, 4)]
    eps = [line["dp_epsilon"] for line in sim.history]
    assert eps == sorted(eps) and eps[0] > 0
    # Noise is present and of size sigma*C: the released sum minus the clients' clipped
    # inputs (what they sent in the clear) is N(0, (sigma C)^2) per coordinate.
    released = sim.engine.last_aggregate
    assert released is not None
    noiseless = np.sum(np.asarray(executor.sent[4], dtype=np.float64), axis=0)
    residual = released - noiseless
    assert residual.size > 1000
    assert np.std(residual) == pytest.approx(sigma * clip, rel=0.1)
    assert abs(np.mean(residual)) < 0.1 * sigma * clip
    assert all(np.linalg.norm(v) <= clip * (1 + 1e-5) for v in executor.sent[4])


def test_budget_refuses_the_round_that_would_exceed_it(tmp_path: Path) -> None:
    # Central noise, gated against an outside observer of the released models (the
    # sampled ids are published, so no amplification: the worst client's rounds compose).
    c = cfg(
        privacy={
            "enabled": True,
            "noise_multiplier": 3.0,
            "max_epsilon": 3.0,
            "budget_adversary": "outside_observer",
        },
        server={"rounds": 50},
    )
    sim = Simulation(c, run_dir=tmp_path)
    with pytest.raises(PrivacyBudgetExhausted, match=r"3"):
        sim.run(progress=False)
    spent = read_ledger(tmp_path / "privacy_ledger.jsonl")
    # Every recorded round was applied; the refused one was neither recorded nor applied.
    assert len(spent) == sim.round and sim.round >= 2
    # The ledger lock was released: a report (another reader/writer) can open it now.
    from privacy import PrivacyLedger

    PrivacyLedger.open(tmp_path / "privacy_ledger.jsonl").close()


def test_a_coordinator_budget_refuses_central_noise_at_the_first_round(tmp_path: Path) -> None:
    # The coordinator adds central noise itself and sees every update: no guarantee
    # against it, so a budget that names it refuses the first release.
    c = cfg(privacy={"enabled": True, "noise_multiplier": 1.0, "max_epsilon": 3.0})
    sim = Simulation(c, run_dir=tmp_path)
    with pytest.raises(PrivacyBudgetExhausted):
        sim.run(progress=False)
    assert sim.round == 0 and read_ledger(tmp_path / "privacy_ledger.jsonl") == ()


def test_distributed_discrete_gaussian_inside_secagg_with_dropouts(tmp_path: Path) -> None:
    c = cfg(
        privacy={"enabled": True, "noise_multiplier": 0.8, "clip_norm": 1.0},
        secure_aggregation={
            "protocol": "secagg+",
            "dropout_fraction": 0.2,
            "min_survivor_fraction": 0.75,
        },
        server={"sampling": "poisson", "sampling_rate": 0.2, "clients_per_round": None},
    )
    sim = Simulation(c, run_dir=tmp_path)
    sim.run(progress=False)
    every = read_ledger(tmp_path / "privacy_ledger.jsonl")
    # Every round is in the ledger: releases, and rounds skipped for too few participants.
    assert all(
        isinstance(e.event, DistributedDiscreteGaussianRelease | SkippedRound) for e in every
    )
    assert [e.round for e in every] == [line["round"] for line in sim.history]
    entries = [e for e in every if isinstance(e.event, DistributedDiscreteGaussianRelease)]
    assert entries
    for e in entries:
        assert e.event.secure_aggregation is True and e.event.client_ids
        # charged with the survivors actually present, never below the target noise
        assert e.event.clients_surviving >= e.event.min_survivors
        assert e.event.noise_multiplier >= 0.8 * 0.99
    assert any(e.event.clients_surviving < e.event.clients_sampled for e in entries)


def test_distributed_secagg_with_fixed_size_sampling_is_refused() -> None:
    c = cfg(
        privacy={"enabled": True, "noise_multiplier": 1.0, "placement": "distributed"},
        secure_aggregation={"protocol": "secagg"},
    )
    with pytest.raises(ConfigError, match="poisson"):
        Simulation(c)


def test_resume_after_crash_never_double_charges(tmp_path: Path) -> None:
    # Crash window: round 3 was charged to the ledger, but the last checkpoint is round 2.
    c2 = cfg(
        privacy={"enabled": True, "noise_multiplier": 1.0},
        server={"rounds": 5},
        run={"checkpoint_every": 2},
    )
    crash = tmp_path / "crash"
    s1 = Simulation(c2, run_dir=crash)
    for _ in range(3):
        s1.run_round()
    from secure_fml.checkpoint import save_checkpoint

    ck = s1.checkpoint()
    s1.close()
    save_checkpoint(crash / "checkpoint.pt", ck)
    from dataclasses import replace

    save_checkpoint(
        crash / "checkpoint.pt", replace(ck, round=2, extra={**ck.extra, "ledger_head": None})
    )
    s2 = Simulation(c2, run_dir=crash)
    res = s2.run(progress=False, resume=True)
    entries = read_ledger(crash / "privacy_ledger.jsonl")
    rounds = [e.round for e in entries if not isinstance(e.event, RoundNotApplied)]
    assert rounds == [1, 2, 3, 4, 5] and res.rounds == 5
    # Round 3's update was lost with the process: the ledger says so (its charge stays).
    assert [e.round for e in entries if isinstance(e.event, RoundNotApplied)] == [3]
    lost = [ln for ln in s2.history if ln["round"] == 3]
    assert lost == [] or lost[0]["status"] == "charged-not-applied"
    metrics = [json.loads(x) for x in (crash / "metrics.jsonl").read_text().splitlines()]
    assert [ln["status"] for ln in metrics if ln["round"] == 3][-1] == "charged-not-applied"


def test_insecure_noise_seed_warns_loudly() -> None:
    c = cfg(privacy={"enabled": True, "noise_multiplier": 1.0}, run={"insecure_seed": 7})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        Simulation(c)
    assert any("INSECURE TEST MODE" in str(x.message) for x in w)
    # Without the insecure seed nothing warns: sampling, masks and noise use the CSPRNG.
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        Simulation(
            cfg(privacy={"enabled": True, "noise_multiplier": 1.0}, run={"insecure_seed": None})
        )
    assert not any("INSECURE" in str(x.message) for x in w)


def test_dp_changes_the_model_and_clips(tmp_path: Path) -> None:
    plain = Simulation(cfg()).run(progress=False)
    c = cfg(privacy={"enabled": True, "noise_multiplier": 0.5, "clip_norm": 0.01})
    sim = Simulation(c)
    res = sim.run(progress=False)
    assert not torch.allclose(res.state, plain.state)
    assert all(line["dp_fraction_clipped"] == 1.0 for line in sim.history)


def test_aborted_rounds_release_and_charge_nothing_and_training_continues(tmp_path: Path) -> None:
    # Poisson rate 0.05 of 32 clients: many rounds draw fewer than the 3 clients SecAgg needs.
    c = cfg(
        privacy={"enabled": True, "noise_multiplier": 1.0},
        secure_aggregation={"protocol": "secagg", "min_survivor_fraction": 0.75},
        server={
            "rounds": 12,
            "sampling": "poisson",
            "sampling_rate": 0.05,
            "clients_per_round": None,
        },
    )
    sim = Simulation(c, run_dir=tmp_path)
    res = sim.run(progress=False)
    assert res.rounds == 12
    not_run = [line["round"] for line in sim.history if line["status"] != "complete"]
    every = read_ledger(tmp_path / "privacy_ledger.jsonl")
    charged = [e.round for e in every if not isinstance(e.event, SkippedRound)]
    skipped = [e for e in every if isinstance(e.event, SkippedRound)]
    assert not_run, "the setup should produce skipped or aborted rounds"
    assert not set(not_run) & set(charged)
    assert sorted(set(not_run) | set(charged)) == list(range(1, 13))
    # ... and every round that released nothing is recorded as a SkippedRound (never
    # charged, never redrawn), with the participants it had.
    assert [e.round for e in skipped] == not_run
    assert all(e.event.reason is SkipReason.TOO_FEW_SAMPLED for e in skipped)
    # A round is never redrawn: every round index was drawn once, skipped ones included.
    assert [line["round"] for line in sim.history] == list(range(1, 13))


@pytest.mark.parametrize("placement", ["central", "distributed"])
@pytest.mark.parametrize(("start", "direction"), [(100.0, -1), (1e-4, +1)])
def test_adaptive_clipping_tracks_the_quantile_and_charges_the_bit(
    tmp_path: Path, placement: str, start: float, direction: int
) -> None:
    c = cfg(
        privacy={
            "enabled": True,
            "noise_multiplier": 1.0,
            "clip_norm": start,
            "adaptive_clipping": True,
            "clipped_count_stddev": 1.0,
            "placement": placement,
        },
        server={"rounds": 6, "clients_per_round": 10},
    )
    sim = Simulation(c, run_dir=tmp_path)
    sim.run(progress=False)
    entries = read_ledger(tmp_path / "privacy_ledger.jsonl")
    releases = [e.event for e in entries if isinstance(e.event, GaussianRelease)]
    stats = [e.event for e in entries if type(e.event).__name__ == "ClipStatistics"]
    assert len(releases) == len(stats) == 6
    clips = [r.clip_norm for r in releases]
    # geometric steps towards the median norm: monotone in the expected direction
    assert all(direction * (b - a) > 0 for a, b in itertools.pairwise(clips))
    for r in releases:
        # the joint (update, bit) release costs exactly the configured multiplier
        # (central: exactly; distributed: at least, sized for the minimum survivor set)
        if placement == "central":
            assert r.noise_multiplier == pytest.approx(1.0, rel=1e-6)
        else:
            assert r.noise_multiplier >= 1.0 - 1e-9
        assert r.clipped_count_stddev is not None
        assert r.value_noise_multiplier > r.noise_multiplier


@pytest.mark.slow  # ~3.5 s each: a CLI run with SecAgg and DDGauss, then a report
@pytest.mark.parametrize("protocol", ["secagg", "secagg+"])
def test_cli_simulate_with_secure_aggregation_and_distributed_noise(
    tmp_path: Path, protocol: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from secure_fml.cli import main

    argv = [
        "simulate",
        "--rounds",
        "3",
        "--out",
        str(tmp_path),
        "--name",
        protocol,
        "--algorithm",
        "metasgd",
        "--preset",
        "synthetic",
        "--secure-aggregation",
        protocol,
        "--no-progress",
        "--set",
        "server.sampling=poisson",
        "--set",
        "server.sampling_rate=0.3",
        "--set",
        "privacy.enabled=true",
        "--set",
        "privacy.noise_multiplier=1.0",
        "--set",
        "privacy.placement=distributed",
        "--set",
        "secure_aggregation.dropout_fraction=0.1",
    ]
    assert main(argv) == 0
    assert "personalized accuracy" in capsys.readouterr().out
    entries = read_ledger(tmp_path / protocol / "privacy_ledger.jsonl")
    assert entries and all(isinstance(e.event, DistributedDiscreteGaussianRelease) for e in entries)
    lines = [
        json.loads(x) for x in (tmp_path / protocol / "metrics.jsonl").read_text().splitlines()
    ]
    assert all(line["protocol"] == protocol for line in lines if line["status"] == "complete")
    assert main(["report", str(tmp_path / protocol)]) == 0
    assert (tmp_path / protocol / "report.html").exists()
