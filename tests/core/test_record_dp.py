"""Record-level DP-SGD through the algorithms' gradient seam."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from privacy import GaussianNoiseSource, PrivacyError
from privacy.errors import ConfigError
from secure_fml._functional import Batch, FunctionalModel
from secure_fml.algorithms import AlgorithmConfig, AlgorithmName, make_algorithm
from secure_fml.models import MLP
from secure_fml.record_dp import RecordDPAlgorithm, RecordLevelDP

SUPPORTED = ["fedavg", "fedavg-meta", "reptile", "fomaml", "metasgd-fo", "perfedavg-fo"]


def _source() -> GaussianNoiseSource:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return GaussianNoiseSource(seed=7, insecure_test_mode=True)


def _data(n: int = 90, persons: int | None = None) -> Batch:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 5, generator=g)
    y = (x[:, 0] > 0).long()
    unit = None if persons is None else torch.arange(n) % persons
    return Batch(x, y, unit)


def _wrapped(
    name: str, *, sigma: float = 1.0, clip: float = 1.0, **cfg: object
) -> RecordDPAlgorithm:
    kw: dict[str, object] = {
        "batch_size": 12,
        "query_batch_size": 24,
        "inner_steps": 2,
        "local_steps": 3,
    }
    kw.update(cfg)
    alg = make_algorithm(
        AlgorithmConfig(name=AlgorithmName(name), **kw),  # type: ignore[arg-type]
        FunctionalModel(MLP(5, 2, hidden=(6,))),
    )
    return RecordDPAlgorithm(
        alg, RecordLevelDP(clip_norm=clip, noise_multiplier=sigma), noise_source=_source()
    )


@pytest.mark.parametrize(
    ("name", "alternative"),
    [("maml", "fomaml"), ("metasgd", "metasgd-fo"), ("perfedavg-hf", "perfedavg-fo")],
)
def test_second_order_algorithms_are_refused_with_a_one_line_typed_error(
    name: str, alternative: str
) -> None:
    alg = make_algorithm(
        AlgorithmConfig(name=AlgorithmName(name)), FunctionalModel(MLP(5, 2, hidden=()))
    )
    with pytest.raises(ConfigError) as err:
        RecordDPAlgorithm(alg, RecordLevelDP(clip_norm=1.0, noise_multiplier=1.0))
    msg = str(err.value)
    assert "\n" not in msg and f"use {alternative!r}" in msg and name in msg


class _ConstantOracle:
    """A test oracle: fixed gradients per pool, identity split (records every call)."""

    def __init__(self, gs: torch.Tensor, gq: torch.Tensor) -> None:
        self.gs, self.gq = gs, gq
        self.support: Batch | None = None
        self.calls: list[str] = []

    def split(self, data: Batch, support_fraction: float) -> tuple[Batch, Batch]:
        self.support, self.query = data.take(torch.arange(10)), data.take(torch.arange(10, 30))
        return self.support, self.query

    def grad(self, flat: torch.Tensor, pool: Batch) -> torch.Tensor:
        is_support = pool is self.support
        self.calls.append("support" if is_support else "query")
        return self.gs if is_support else self.gq


def test_the_seam_routes_meta_sgd_fo_through_the_oracle_known_answer() -> None:
    """Meta-SGD FO's update is [g_q, -alpha * g_s * g_q] with the oracle's g_s, g_q."""
    fm = FunctionalModel(MLP(5, 2, hidden=()))
    alg = make_algorithm(
        AlgorithmConfig(name=AlgorithmName.METASGD_FO, inner_lr=0.1, inner_steps=1), fm
    )
    gs, gq = torch.randn(fm.dim), torch.randn(fm.dim)
    oracle = _ConstantOracle(gs, gq)
    alg.oracle = oracle
    state = alg.initial_state(fm.initial_parameters())
    upd = alg.client_update(state, _data(), torch.Generator().manual_seed(0))
    torch.testing.assert_close(upd.vector[: fm.dim], gq)
    torch.testing.assert_close(upd.vector[fm.dim :], -0.1 * gs * gq)
    assert oracle.calls == ["support", "query"]


def test_a_second_order_algorithm_never_takes_an_oracle() -> None:
    fm = FunctionalModel(MLP(5, 2, hidden=()))
    for name in ("maml", "metasgd", "perfedavg-hf"):
        alg = make_algorithm(AlgorithmConfig(name=AlgorithmName(name), local_steps=1), fm)
        alg.oracle = _ConstantOracle(torch.zeros(fm.dim), torch.zeros(fm.dim))
        with pytest.raises(ConfigError):
            alg.client_update(
                alg.initial_state(fm.initial_parameters()),
                _data(),
                torch.Generator().manual_seed(0),
            )


@pytest.mark.parametrize("name", SUPPORTED)
def test_every_local_gradient_goes_through_the_private_oracle(name: str) -> None:
    """With the model's own gradient paths disabled the update still computes, and its
    receipt is exactly the planned schedule."""
    w = _wrapped(name)
    fm = w.model

    def forbidden(*a: object, **k: object) -> torch.Tensor:
        raise AssertionError("a non-private gradient was computed")

    fm.grad = forbidden  # type: ignore[method-assign]
    fm.loss_params = forbidden  # type: ignore[method-assign]
    data = _data(persons=30)
    state = w.initial_state(fm.initial_parameters())
    upd = w.client_update(state, data, torch.Generator().manual_seed(0))
    assert upd.receipt is not None
    planned = w.planned_receipt(data)
    assert upd.receipt.schedule == planned.schedule
    assert upd.receipt.noise_multiplier == planned.noise_multiplier == 1.0
    assert upd.receipt.units == 30
    assert math.isnan(upd.loss)  # the clear training loss is not released
    assert torch.isfinite(upd.vector).all()
    assert w.inner.oracle is None


def test_receipt_schedule_and_ledger_event() -> None:
    w = _wrapped("fomaml", inner_steps=3, batch_size=6, query_batch_size=24)
    data = _data(n=90, persons=45)
    upd = w.client_update(
        w.initial_state(w.model.initial_parameters()), data, torch.Generator().manual_seed(1)
    )
    assert upd.receipt is not None
    # 45 persons, support p = 0.2: q_s = 6/9, q_q = 24/36.
    assert upd.receipt.schedule == ((6 / 9, 3), (24 / 36, 1)) or upd.receipt.schedule == (
        (6 / 9, 4),
    )
    ev = upd.receipt.event(round=4, site_id="va")
    assert ev.site_id == "va" and ev.round == 4 and ev.total_steps == 4
    assert ev.unit == "record" and ev.noise_multiplier == 1.0


def test_noise_has_the_accounted_scale() -> None:
    """Full-batch step (q = 1) at a zero-gradient point: output = noise / n, std σC/n."""
    n, dim = 50, 400
    fm = FunctionalModel(MLP(dim, 2, hidden=()))
    alg = make_algorithm(
        AlgorithmConfig(name=AlgorithmName.FEDAVG, local_steps=1, local_lr=1.0), fm
    )
    w = RecordDPAlgorithm(
        alg, RecordLevelDP(clip_norm=0.5, noise_multiplier=3.0), noise_source=_source()
    )
    data = Batch(torch.zeros(n, dim), torch.zeros(n, dtype=torch.long))
    state = torch.zeros(fm.dim)  # weights 0: logits 0, gradient w.r.t. W is x = 0
    upd = w.client_update(state, data, torch.Generator().manual_seed(0))
    noise = upd.vector[: dim * 2]  # the weight block; its clean gradient is exactly 0
    assert float(noise.std()) == pytest.approx(3.0 * 0.5 / n, rel=0.1)


def test_poisson_sampling_of_persons_at_rate_b_over_n() -> None:
    w = _wrapped("fedavg", local_steps=60, batch_size=10, clip=1e6)
    data = _data(n=120, persons=40)  # 40 persons of 3 records; q = 10/40
    from secure_fml import record_dp

    seen: list[int] = []
    orig = record_dp.PerExampleGradients.clipped_sum

    def spy(self: object, flat: torch.Tensor, batch: Batch, **kw: object) -> object:
        codes = kw["unit_codes"]
        assert isinstance(codes, torch.Tensor)
        # Whole persons only: each sampled person brings all 3 of its records.
        assert torch.all(torch.bincount(codes)[torch.unique(codes)] == 3)
        seen.append(int(torch.unique(codes).numel()))
        return orig(self, flat, batch, **kw)  # type: ignore[arg-type]

    record_dp.PerExampleGradients.clipped_sum = spy  # type: ignore[method-assign]
    try:
        w.client_update(
            w.initial_state(w.model.initial_parameters()), data, torch.Generator().manual_seed(0)
        )
    finally:
        record_dp.PerExampleGradients.clipped_sum = orig  # type: ignore[method-assign]
    assert len(seen) == 60
    mean = sum(seen) / len(seen)
    # Binomial(40, 0.25): mean 10, sd of the mean over 60 steps ~0.35.
    assert 8.6 < mean < 11.4
    assert len(set(seen)) > 3  # a random count, not a fixed batch


def test_a_pool_the_oracle_did_not_issue_is_refused() -> None:
    w = _wrapped("fedavg")
    from secure_fml.record_dp import _PrivateOracle

    data = _data()
    oracle = _PrivateOracle(
        engine=w.engine,
        data=data,
        noise_multiplier=1.0,
        clip_norm=1.0,
        batch_size=10,
        query_batch_size=None,
        source=_source(),
    )
    with pytest.raises(PrivacyError, match="did not issue"):
        oracle.grad(w.model.initial_parameters(), data.take(torch.arange(5)))


def test_support_query_split_keeps_each_person_on_one_side() -> None:
    from secure_fml.record_dp import _PrivateOracle

    w = _wrapped("fomaml")
    data = _data(n=120, persons=40)
    oracle = _PrivateOracle(
        engine=w.engine,
        data=data,
        noise_multiplier=1.0,
        clip_norm=1.0,
        batch_size=10,
        query_batch_size=None,
        source=_source(),
    )
    support, query = oracle.split(data, 0.3)
    assert support.unit is not None and query.unit is not None
    assert len(support) + len(query) == 120
    assert not set(support.unit.tolist()) & set(query.unit.tolist())
    assert len(support) % 3 == 0 and 0 < len(support) < 120


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        RecordLevelDP(clip_norm=1.0)
    with pytest.raises(ConfigError, match="rounds"):
        RecordLevelDP(clip_norm=1.0, target_epsilon=3.0)
    with pytest.raises(ConfigError, match="clip_norm"):
        RecordLevelDP(clip_norm=0.0, noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="upper bounds"):
        RecordLevelDP(clip_norm=1.0, noise_multiplier=1.0, accountant="gdp")


@pytest.mark.slow
def test_target_epsilon_calibrates_per_site_size() -> None:
    alg = make_algorithm(
        AlgorithmConfig(name=AlgorithmName.FEDAVG, batch_size=16, local_steps=5),
        FunctionalModel(MLP(5, 2, hidden=())),
    )
    w = RecordDPAlgorithm(
        alg,
        RecordLevelDP(clip_norm=1.0, target_epsilon=3.0, rounds=10, delta=1e-5),
        noise_source=_source(),
    )
    small, large = w.planned_receipt(_data(n=60)), w.planned_receipt(_data(n=240))
    assert small.noise_multiplier > large.noise_multiplier  # higher q, more noise
    import privacy

    for r in (small, large):
        eps = privacy.record_level_epsilon(
            noise_multiplier=r.noise_multiplier, schedule=r.schedule, rounds=10, delta=1e-5
        )
        assert 2.95 <= eps <= 3.0


def test_production_noise_is_csprng_and_seed_warns() -> None:
    alg = make_algorithm(AlgorithmConfig(name=AlgorithmName.FEDAVG), FunctionalModel(MLP(5, 2)))
    assert RecordDPAlgorithm(
        alg, RecordLevelDP(clip_norm=1.0, noise_multiplier=1.0)
    ).source.is_secure
    with pytest.warns(RuntimeWarning, match="INSECURE"):
        RecordDPAlgorithm(alg, RecordLevelDP(clip_norm=1.0, noise_multiplier=1.0, insecure_seed=3))


def test_an_update_that_deviates_from_its_plan_is_not_released() -> None:
    """The receipt charged is what was planned (and budget-checked) or nothing."""
    w = _wrapped("reptile", local_steps=3)
    real = w.schedule
    w.schedule = lambda **kw: ((real(**kw)[0][0], 2),)  # type: ignore[method-assign]
    with pytest.raises(PrivacyError, match="refusing to release"):
        w.client_update(
            w.initial_state(w.model.initial_parameters()), _data(), torch.Generator().manual_seed(0)
        )


@pytest.mark.slow
def test_cli_privacy_plan_record_unit_calibrates(capsys: pytest.CaptureFixture[str]) -> None:
    from secure_fml.cli import main

    args = ["privacy", "plan", "--unit", "record", "--rounds", "5", "--local-steps", "4"]
    rc = main([*args, "--epsilon", "3", "--site-sizes", "303", "123", "--batch-size", "32"])
    out = capsys.readouterr().out
    assert rc == 0
    rows = [r for r in (line.split() for line in out.splitlines()) if r[:1] == ["site"]][1:]
    assert [r[2] for r in rows] == ["303", "123"]
    sigma_303, sigma_123 = float(rows[0][5]), float(rows[1][5])
    assert sigma_123 > sigma_303  # the smaller site needs more noise
    assert f"common sigma:      {sigma_123:.4f}" in out


def test_cli_privacy_plan_record_unit(capsys: pytest.CaptureFixture[str]) -> None:
    import privacy
    from secure_fml.cli import main

    args = ["privacy", "plan", "--unit", "record", "--rounds", "5", "--local-steps", "4"]
    sizes = ["--site-sizes", "303", "123", "--batch-size", "32"]
    assert main([*args, *sizes, "--noise-multiplier", "2.0"]) == 0
    out = capsys.readouterr().out
    rows = [r for r in (line.split() for line in out.splitlines()) if r[:1] == ["site"]][1:]
    ref = privacy.record_level_epsilon(
        noise_multiplier=2.0, schedule=((32 / 123, 4),), rounds=5, delta=1e-5
    )
    assert float(rows[1][-1]) == pytest.approx(ref, abs=1e-4)
    assert f"epsilon at the common sigma: {ref:.4f}" in out
    assert main([*args, "--epsilon", "3"]) == 2
    err = capsys.readouterr().err
    assert "--site-sizes" in err and err.count("\n") == 1


def test_record_level_calibration_counts_the_rounds_a_sampled_site_can_join() -> None:
    """Under client sampling a site is calibrated for the rounds it may join (the
    union-bound participation quantile the client-level calibration uses), not for every
    round; cross-silo (every site every round) keeps every round."""
    from scipy.stats import binom

    from secure_fml.config import Config, config_from_dict
    from secure_fml.record_dp import record_level_from_config

    def cfg(server: dict[str, object]) -> Config:
        return config_from_dict(
            {
                "algorithm": {"name": "fomaml"},
                "server": {"rounds": 150, **server},
                "privacy": {"enabled": True, "unit": "record", "record_target_epsilon": 8.0},
            }
        )

    n, q = 311, 10 / 311
    sampled = record_level_from_config(
        cfg({"sampling": "poisson", "sampling_rate": q, "clients_per_round": None}),
        population=n,
    )
    assert sampled is not None and sampled.rounds is not None
    k = sampled.rounds
    # The smallest k that every one of the n sites exceeds with total probability <= 1%.
    assert n * binom.sf(k, 150, q) <= 0.01 < n * binom.sf(k - 1, 150, q)
    assert k < 150
    every = record_level_from_config(
        cfg({"sampling": "all", "clients_per_round": None}), population=n
    )
    assert every is not None and every.rounds == 150
    unknown = record_level_from_config(
        cfg({"sampling": "poisson", "sampling_rate": q, "clients_per_round": None})
    )
    assert unknown is not None and unknown.rounds == 150


def test_cli_privacy_plan_record_unit_under_sampling_matches_simulate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With a population and client sampling, `privacy plan --unit record` plans each site
    for the rounds it may join, as `simulate` calibrates (less noise than every round)."""
    from secure_fml.cli import main
    from secure_fml.config import config_from_dict
    from secure_fml.record_dp import record_level_rounds

    base = ["privacy", "plan", "--unit", "record", "--rounds", "150", "--local-steps", "4"]
    sizes = ["--epsilon", "8", "--site-sizes", "160", "--batch-size", "16"]

    def sigma(extra: list[str]) -> tuple[float, str]:
        assert main([*base, *sizes, *extra]) == 0
        out, err = capsys.readouterr()
        row = [r for r in (line.split() for line in out.splitlines()) if r[:1] == ["site"]][1]
        return float(row[5]), err

    every, _ = sigma([])
    sampled, notice = sigma(
        ["--population", "311", "--clients-per-round", "10", "--sampling", "poisson"]
    )
    cfg = config_from_dict(
        {
            "algorithm": {"name": "fedavg"},
            "server": {
                "rounds": 150,
                "sampling": "poisson",
                "sampling_rate": 10 / 311,
                "clients_per_round": None,
            },
        }
    )
    k = record_level_rounds(cfg, population=311)
    assert f"planned for the {k} of 150 rounds" in notice
    assert sampled < every
