"""Simulation loop, sampling, server optimizer, checkpoints, config and CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy import SamplingMode
from secure_fml.checkpoint import load_checkpoint, save_checkpoint
from secure_fml.cli import main
from secure_fml.config import Config, config_from_dict, load_config, with_overrides
from secure_fml.errors import CheckpointError, ConfigError, DataError
from secure_fml.rounds import (
    ClientSampler,
    SamplingConfig,
    ServerOptimizer,
    ServerOptimizerConfig,
    ServerOptimizerKind,
)
from secure_fml.simulation import Simulation

SMALL = {
    "run": {"insecure_seed": 5},  # reproducible draws, so runs can be compared
    "data": {"preset": "synthetic", "options": {"num_clients": 30, "max_samples": 120}},
    "server": {"rounds": 6, "clients_per_round": 5},
    "eval": {"every": 3},
}


def _cfg(**sections: dict) -> Config:
    raw = json.loads(json.dumps(SMALL))
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v)
    return config_from_dict(raw)


@pytest.mark.parametrize(
    "alg", ["maml", "fomaml", "metasgd", "reptile", "perfedavg-fo", "perfedavg-hf", "fedavg"]
)
def test_every_algorithm_trains_and_improves_the_query_loss(alg: str) -> None:
    cfg = _cfg(
        algorithm={"name": alg, "inner_lr": 0.05, "local_lr": 0.05},
        server={"rounds": 15, "clients_per_round": 8},
    )
    sim = Simulation(cfg)
    before = sim.evaluate_on(sim.split.train[:10])
    res = sim.run(progress=False)
    after = sim.evaluate_on(sim.split.train[:10])
    assert res.rounds == 15
    assert after.personalized_loss < before.personalized_loss
    assert res.final is not None and 0.0 <= res.final.personalized_accuracy <= 1.0


def test_metasgd_learns_alpha_and_it_stays_positive() -> None:
    sim = Simulation(_cfg(algorithm={"name": "metasgd"}, server={"lr": 0.05}))
    alpha0 = sim.algorithm.alpha(sim.state)
    sim.run(progress=False)
    alpha1 = sim.algorithm.alpha(sim.state)
    assert isinstance(alpha1, torch.Tensor) and isinstance(alpha0, torch.Tensor)
    assert not torch.allclose(alpha0, alpha1)
    assert bool((alpha1 > 0).all())


def test_run_directory_contents_and_resume_matches_uninterrupted(tmp_path: Path) -> None:
    cfg = _cfg(run={"checkpoint_every": 3})
    full = Simulation(cfg, run_dir=tmp_path / "full").run(progress=False)
    lines = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6
    first = json.loads(lines[0])
    assert first["round"] == 1 and first["sampling"] == "fixed_size" and len(first["clients"]) == 5
    assert "val_personalized_accuracy" in json.loads(lines[2])
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["test"]["per_client_personalized"]["values"]
    assert load_config(tmp_path / "full" / "config.json") == cfg
    assert load_config(tmp_path / "full" / "config.toml").server == cfg.server

    # Stop after round 3 (the checkpoint), then resume in a fresh process-like object.
    part_cfg = with_overrides(cfg, {"server.rounds": 3})
    Simulation(part_cfg, run_dir=tmp_path / "part").run(progress=False)
    resumed = Simulation(cfg, run_dir=tmp_path / "part")
    res = resumed.run(progress=False, resume=True)
    assert res.rounds == 6
    torch.testing.assert_close(res.state, full.state, rtol=1e-5, atol=1e-6)


def test_checkpoint_detects_truncation_and_tampering(tmp_path: Path) -> None:
    sim = Simulation(_cfg())
    sim.run_round()
    path = tmp_path / "c.pt"
    save_checkpoint(path, sim.checkpoint())
    assert load_checkpoint(path).round == 1
    raw = path.read_bytes()
    path.write_bytes(raw[:-100])
    with pytest.raises(CheckpointError, match="integrity"):
        load_checkpoint(path)
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 1
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 60), m=st.integers(1, 60), seed=st.integers(0, 2**32 - 1))
def test_fixed_sampling_draws_m_distinct_clients(n: int, m: int, seed: int) -> None:
    ids = [f"c{i}" for i in range(n)]
    cfg = SamplingConfig(mode=SamplingMode.FIXED_SIZE, clients_per_round=m)
    if m > n:
        with pytest.raises(ConfigError, match="clients_per_round"):
            ClientSampler(ids, cfg, insecure_seed=seed)
        return
    s = ClientSampler(ids, cfg, insecure_seed=seed).sample(1)
    assert len(s.client_ids) == m == len(set(s.client_ids))
    assert set(s.client_ids) <= set(ids)
    assert s.rate == pytest.approx(m / n)


def test_fixed_sampling_is_uniform_over_clients_and_pairs() -> None:
    # Every client, and every pair, is equally likely: chi-square over 4000 CSPRNG draws.
    from itertools import combinations

    from scipy import stats

    ids = [f"c{i}" for i in range(8)]
    sampler = ClientSampler(ids, SamplingConfig(mode=SamplingMode.FIXED_SIZE, clients_per_round=3))
    singles = dict.fromkeys(ids, 0)
    pairs = dict.fromkeys(combinations(ids, 2), 0)
    for r in range(1, 4001):
        got = sampler.sample(r).client_ids
        for c in got:
            singles[c] += 1
        for pr in combinations(got, 2):
            pairs[pr] += 1
    assert stats.chisquare(list(singles.values())).pvalue > 1e-3
    assert stats.chisquare(list(pairs.values())).pvalue > 1e-3


def test_poisson_sampling_rate_is_q() -> None:
    ids = [f"c{i}" for i in range(200)]
    sampler = ClientSampler(ids, SamplingConfig(mode=SamplingMode.POISSON, rate=0.1))
    counts = [len(sampler.sample(r).client_ids) for r in range(1, 301)]
    # Binomial(200, 0.1): mean 20, std of the mean over 300 rounds ~0.24
    assert abs(np.mean(counts) - 20) < 1.0
    assert min(counts) < 20 < max(counts)  # the size varies, unlike fixed-size sampling


def test_a_round_is_never_redrawn_and_the_seeded_draw_depends_only_on_the_round() -> None:
    ids = [f"c{i}" for i in range(50)]
    cfg = SamplingConfig(mode=SamplingMode.POISSON, rate=0.2)
    a = ClientSampler(ids, cfg, insecure_seed=4)
    first = a.sample(3)
    with pytest.raises(ConfigError, match="never redrawn"):
        a.sample(3)
    with pytest.raises(ConfigError, match="never redrawn"):
        a.sample(2)
    # Resuming after round 7 continues with round 8's own draw, never an earlier one's.
    b = ClientSampler(ids, cfg, insecure_seed=4)
    b.resume_after(7)
    with pytest.raises(ConfigError, match="never redrawn"):
        b.sample(7)
    fresh = ClientSampler(ids, cfg, insecure_seed=4)
    assert fresh.sample(3) == first
    assert b.sample(8) == ClientSampler(ids, cfg, insecure_seed=4).sample(8)
    # Without the test seed two samplers draw independently (CSPRNG).
    x = [ClientSampler(ids, cfg).sample(1).client_ids for _ in range(5)]
    assert len(set(x)) > 1


def test_server_sgd_lr1_is_plain_averaging_and_adam_matches_torch() -> None:
    state = torch.randn(7)
    upd = torch.randn(7)
    sgd = ServerOptimizer(state, ServerOptimizerConfig(kind=ServerOptimizerKind.SGD, lr=1.0))
    torch.testing.assert_close(sgd.step(upd), state - upd)
    adam = ServerOptimizer(state, ServerOptimizerConfig(kind=ServerOptimizerKind.ADAM, lr=0.01))
    # first Adam step moves each coordinate by lr * sign(g) (bias-corrected m/sqrt(v))
    torch.testing.assert_close(adam.step(upd), state - 0.01 * torch.sign(upd), rtol=0, atol=1e-6)
    with pytest.raises(DataError, match="NaN"):
        adam.step(torch.full((7,), float("nan")))


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"server": {"rounds": 0}}, "server.rounds"),
        ({"server": {"rounds": "many"}}, "server.rounds"),
        ({"server": {"lrr": 1}}, "server.lrr"),
        ({"servr": {}}, "servr"),
        ({"algorithm": {"name": "maml2"}}, "algorithm.name"),
        ({"server": {"sampling": "poisson"}}, "server.sampling_rate"),
        ({"privacy": {"enabled": True}}, "privacy"),
        ({"model": {"kind": "resnet"}}, "model.kind"),
        ({"data": {"client_fractions": [0.5, 0.5]}}, "data.client_fractions"),
    ],
)
def test_bad_config_errors_name_the_field(raw: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        config_from_dict(raw)


def test_cli_simulate_adapt_datasets_and_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The README's main command, shortened.
    fast = ["--set", "eval.local_only_steps=0"]
    rc = main(["simulate", "--rounds", "3", "--out", str(tmp_path), "--no-progress", *fast])
    assert rc == 0
    out = capsys.readouterr().out
    assert "personalized" in out and "majority class" in out
    run_dir = tmp_path / "run"
    assert (run_dir / "checkpoint.pt").exists() and (run_dir / "summary.json").exists()

    assert main(["simulate", "--rounds", "3", "--out", str(tmp_path), "--no-progress", *fast]) == 2
    assert "already holds a run" in capsys.readouterr().err

    out_json = tmp_path / "adapt.json"
    assert (
        main(
            [
                "adapt",
                "--checkpoint",
                str(run_dir),
                "--data",
                "fewshot",
                "--client",
                "client_005",
                "--steps",
                "2",
                "--output",
                str(out_json),
            ]
        )
        == 0
    )
    res = json.loads(out_json.read_text())
    assert res["client"] == "client_005" and res["steps"] == 2
    assert 0 <= res["accuracy_after"] <= 1

    assert (
        main(["adapt", "--checkpoint", str(run_dir), "--data", "fewshot", "--client", "nobody"])
        == 2
    )
    assert "nobody" in capsys.readouterr().err
    assert main(["simulate", "--set", "server.rounds=-1", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: server.rounds")
    assert main(["datasets"]) == 0
    assert "fewshot" in capsys.readouterr().out


def test_cli_sets_preset_options_as_inline_table(tmp_path: Path) -> None:
    rc = main(
        [
            "simulate",
            "--rounds",
            "1",
            "--out",
            str(tmp_path),
            "--no-progress",
            "--preset",
            "synthetic",
            "--set",
            "data.options={num_clients = 12, max_samples = 60}",
        ]
    )
    assert rc == 0
    cfg = load_config(tmp_path / "run" / "config.json")
    assert cfg.data.options == {"num_clients": 12, "max_samples": 60}
    with pytest.raises(ConfigError, match=r"data\.options must be a table"):
        with_overrides(Config(), {"data.options": "num_clients=12"})


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_sparse_fixed_size_draw_equals_the_textbook_fisher_yates(
    n: int, data: st.DataObject, seed: int
) -> None:
    # Known-answer cross-check: the sampler's O(m) sparse partial Fisher-Yates makes
    # exactly the draws of the dense O(n) textbook version from the same CSPRNG words.
    from privacy import Csprng
    from secure_fml.rounds import _choose

    m = data.draw(st.integers(1, n))

    def textbook(rng: Csprng) -> list[int]:
        perm = list(range(n))
        words = [int(w) for w in rng.uint64(m)]
        for i in range(m):
            bound = n - i
            r = words[i]
            while r < (1 << 64) % bound:
                r = int(rng.uint64(1)[0])
            j = i + r % bound
            perm[i], perm[j] = perm[j], perm[i]
        return sorted(perm[:m])

    got = _choose(Csprng.insecure_from_seed(seed, "t"), n, m).tolist()
    assert got == textbook(Csprng.insecure_from_seed(seed, "t"))
