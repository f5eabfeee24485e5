"""The FedMeta paper's training settings: Meta-SGD's alpha at its own learning rate,
data-size weighted aggregation (plain only; refused under DP and secure aggregation),
and a per-client support/query split fixed across rounds."""

from __future__ import annotations

import json
import math

import pytest
import torch

from secure_fml._functional import Batch, FunctionalModel
from secure_fml.algorithms import AlgorithmConfig, AlgorithmName, SplitMode, make_algorithm
from secure_fml.config import Config, config_from_dict
from secure_fml.errors import CheckpointError, ConfigError
from secure_fml.models import MLP
from secure_fml.rounds import ServerOptimizer, ServerOptimizerConfig, ServerOptimizerKind
from secure_fml.simulation import Simulation

SMALL = {
    "run": {"insecure_seed": 5},
    "data": {"preset": "synthetic", "options": {"num_clients": 30, "max_samples": 120}},
    "server": {"rounds": 10, "clients_per_round": 5},
    "eval": {"every": 0, "local_only_steps": 0},
}


def _cfg(**sections: dict) -> Config:
    raw = json.loads(json.dumps(SMALL))
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v)
    return config_from_dict(raw)


# ------------------------------------------------------------------ Meta-SGD's alpha


def test_alpha_is_its_own_adam_parameter_group() -> None:
    state = torch.randn(10)
    cfg = ServerOptimizerConfig(kind=ServerOptimizerKind.ADAM, lr=1e-3, alpha_lr=0.1)
    opt = ServerOptimizer(state, cfg, alpha_offset=6)
    upd = torch.randn(10)
    new = opt.step(upd)
    # Adam's first step moves each coordinate by its group's lr * sign(g).
    torch.testing.assert_close(new[:6], state[:6] - 1e-3 * torch.sign(upd[:6]), atol=1e-6, rtol=0)
    torch.testing.assert_close(new[6:], state[6:] - 0.1 * torch.sign(upd[6:]), atol=1e-6, rtol=0)
    # State round trip (resume) and a mismatched checkpoint is refused by name.
    again = ServerOptimizer(torch.zeros(10), cfg, alpha_offset=6)
    again.load_state_dict(opt.state_dict())
    torch.testing.assert_close(again.step(upd), opt.step(upd))
    one_group = ServerOptimizer(state, ServerOptimizerConfig(kind=ServerOptimizerKind.ADAM))
    with pytest.raises(CheckpointError, match="parameter group"):
        one_group.load_state_dict(opt.state_dict())
    with pytest.raises(ConfigError, match="learns its inner learning rates"):
        ServerOptimizer(state, cfg)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), "fast"])
def test_alpha_lr_is_validated(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"server\.alpha_lr"):
        _cfg(server={"alpha_lr": bad})


def test_alpha_lr_for_an_algorithm_without_alpha_is_refused() -> None:
    with pytest.raises(ConfigError, match="alpha_lr"):
        Simulation(_cfg(algorithm={"name": "maml"}, server={"alpha_lr": 0.01}))


def test_alpha_moves_beyond_the_shared_lr_bound_with_its_own_lr() -> None:
    """At theta's Adam lr 1e-3 log alpha moves at most about rounds * lr (a factor ~1.01 in
    10 rounds; about 1.16 in 150); at its own lr it moves by far more than 15%."""

    def spread(alpha_lr: float | None) -> float:
        sim = Simulation(_cfg(algorithm={"name": "metasgd"}, server={"alpha_lr": alpha_lr}))
        a0 = sim.algorithm.alpha(sim.state)
        sim.run(progress=False)
        a1 = sim.algorithm.alpha(sim.state)
        assert isinstance(a0, torch.Tensor) and isinstance(a1, torch.Tensor)
        assert bool((a1 > 0).all())
        return float((torch.log(a1) - torch.log(a0)).abs().max())

    shared = spread(None)
    own = spread(0.05)
    assert shared <= 10 * 1e-3 * 1.05  # the old bound: about lr per round
    assert own > math.log(1.15)  # alpha moved by more than the old +-15% in 10 rounds


# ------------------------------------------------------------------ weighting


def test_samples_weighting_is_the_data_size_weighted_mean() -> None:
    """One round of FedAvg at server SGD lr 1: the new model is theta - sum n_i u_i / sum n_i."""
    cfg = _cfg(
        algorithm={"name": "fedavg"},
        server={"rounds": 1, "weighting": "samples", "sampling": "all", "clients_per_round": None},
        data={"options": {"num_clients": 6, "max_samples": 80}},
    )
    uniform = _cfg(
        algorithm={"name": "fedavg"},
        server={"rounds": 1, "sampling": "all", "clients_per_round": None},
        data={"options": {"num_clients": 6, "max_samples": 80}},
    )
    sim = Simulation(cfg)
    s0 = sim.state.clone()
    ups, ns = [], []
    for c in sim.split.train:
        pipe = sim.client_pipeline(c.client_id)
        u = pipe.local_update(s0, 1)
        ups.append(u.vector.double())
        ns.append(u.num_samples)
    assert len(set(ns)) > 1  # unequal sizes, so the weighting matters
    w = torch.tensor(ns, dtype=torch.float64)
    expect = s0.double() - sum(wi * ui for wi, ui in zip(w, ups, strict=True)) / w.sum()
    sim.run(progress=False)
    torch.testing.assert_close(sim.state.double(), expect, rtol=1e-5, atol=1e-6)
    plain = Simulation(uniform)
    plain.run(progress=False)
    assert not torch.allclose(plain.state, sim.state)


@pytest.mark.parametrize(
    "extra",
    [
        {"privacy": {"enabled": True, "noise_multiplier": 1.0}},
        {"secure_aggregation": {"protocol": "secagg"}},
    ],
)
def test_samples_weighting_is_refused_under_dp_and_secagg(extra: dict) -> None:
    with pytest.raises(ConfigError, match=r"server\.weighting = samples"):
        Simulation(_cfg(server={"weighting": "samples"}, **extra))


# ------------------------------------------------------------------ fixed split


def _alg(split: str) -> tuple[FunctionalModel, object]:
    fm = FunctionalModel(MLP(4, 3, hidden=(5,)))
    cfg = AlgorithmConfig(name=AlgorithmName.MAML, support_fraction=0.3, split=SplitMode(split))
    return fm, make_algorithm(cfg, fm)


def test_fixed_split_is_the_same_every_round_and_per_round_is_not() -> None:
    data = Batch(torch.arange(40, dtype=torch.float32).reshape(10, 4), torch.arange(10) % 3)
    _, fixed = _alg("fixed")
    _, fresh = _alg("per-round")
    splits_fixed = {
        tuple(fixed.support_query(data, torch.Generator().manual_seed(r))[0].x[:, 0].tolist())  # type: ignore[attr-defined]
        for r in range(6)
    }
    splits_fresh = {
        tuple(fresh.support_query(data, torch.Generator().manual_seed(r))[0].x[:, 0].tolist())  # type: ignore[attr-defined]
        for r in range(6)
    }
    assert len(splits_fixed) == 1 and len(splits_fresh) > 1
    s, q = fixed.support_query(data, torch.Generator().manual_seed(9))  # type: ignore[attr-defined]
    assert len(s) == 3 and len(q) == 7
    assert not set(s.x[:, 0].tolist()) & set(q.x[:, 0].tolist())


def test_fixed_split_under_record_level_dp_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"algorithm\.split = fixed"):
        Simulation(
            _cfg(
                algorithm={"name": "fomaml", "split": "fixed"},
                privacy={"enabled": True, "unit": "record", "record_noise_multiplier": 1.0},
            )
        )


def test_split_mode_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"algorithm\.split"):
        _cfg(algorithm={"split": "sometimes"})
