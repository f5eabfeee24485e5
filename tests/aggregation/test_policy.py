"""The client policy and the (k, t) analysis, checked against independent computations."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregation import ClientPolicy, SecAggConfig, SecAggMode, find_secagg_plus_parameters
from aggregation._policy import _graph_log2, _log_hyp_sf, _quorum_samples
from privacy.errors import ConfigError


def _exact_hyp_sf(population: int, successes: int, draws: int, at_least: int) -> Fraction:
    total = math.comb(population, draws)
    acc = sum(
        math.comb(successes, j) * math.comb(population - successes, draws - j)
        for j in range(max(0, at_least), min(successes, draws) + 1)
    )
    return Fraction(acc, total)


@settings(max_examples=60, deadline=None)
@given(
    population=st.integers(2, 300),
    data=st.data(),
)
def test_log_hypergeometric_tail_matches_exact_rationals(
    population: int, data: st.DataObject
) -> None:
    successes = data.draw(st.integers(0, population))
    draws = data.draw(st.integers(1, population))
    at_least = data.draw(st.integers(0, draws))
    exact = _exact_hyp_sf(population, successes, draws, at_least)
    got = float(_log_hyp_sf(population, np.array([successes]), draws, at_least)[0])
    if exact == 0:
        assert got == -math.inf
    else:
        assert got == pytest.approx(
            math.log(exact.numerator) - math.log(exact.denominator), abs=1e-9
        )


def _bad_set_exists(draws: dict[int, set[int]], corrupt: set[int], t: int, s_star: int) -> bool:
    """Brute force: is there a set S of honest clients, |S| < s*, in which every member
    has at least t of its draws in S or among the colluders?"""
    honest = [u for u in draws if u not in corrupt]
    for size in range(1, s_star):
        for s in itertools.combinations(honest, size):
            ss = set(s) | corrupt
            if all(len(draws[u] & ss) >= t for u in s):
                return True
    return False


@pytest.mark.parametrize(("n", "k", "t", "c", "s_star"), [(9, 3, 2, 1, 4), (10, 4, 3, 2, 5)])
def test_the_union_bound_dominates_a_monte_carlo_of_the_real_event(
    n: int, k: int, t: int, c: int, s_star: int
) -> None:
    rng = np.random.default_rng(1)
    corrupt = set(range(c))
    trials, hits = 400, 0
    for _ in range(trials):
        draws = {
            u: set(rng.choice([v for v in range(n) if v != u], size=k, replace=False).tolist())
            for u in range(n)
        }
        hits += _bad_set_exists(draws, corrupt, t, s_star)
    bound = 2.0 ** _graph_log2(n, k, t, c, s_star)
    freq = hits / trials
    # The bound must hold (allowing 4 standard errors of Monte Carlo noise) ...
    assert freq <= bound + 4 * math.sqrt(max(freq, 1e-3) * (1 - freq) / trials)
    # ... and these weak parameters do fail often, so the brute force is not vacuous.
    assert hits > 0


@pytest.mark.parametrize("n", [3, 10, 100, 1000])
def test_derived_parameters_pass_the_same_policy_and_meet_correctness(n: int) -> None:
    policy = ClientPolicy()
    for complete in (False, True):
        k, t = policy.derive(n, complete=complete)
        a = policy.check(n, k, t, 32)
        assert a.log2_security <= -policy.target_bits
        assert a.log2_correctness <= -policy.correctness_bits
        assert a.required_survivors >= math.ceil(0.9 * n - 1e-9)


def test_more_security_bits_or_attempts_never_lower_k() -> None:
    ks = [
        find_secagg_plus_parameters(
            1000, max_dropout_fraction=0.1, max_corrupt_fraction=0.05, security_bits=s
        )[0]
        for s in (20, 40, 80)
    ]
    assert ks == sorted(ks)
    k_tries = [
        find_secagg_plus_parameters(
            1000, max_dropout_fraction=0.1, max_corrupt_fraction=0.05, max_attempts_log2=a
        )[0]
        for a in (0, 20, 40)
    ]
    assert k_tries == sorted(k_tries) and k_tries[0] < k_tries[-1]


def test_quorum_samples_shrink_as_the_quorum_grows() -> None:
    loose = ClientPolicy(max_dropout_fraction=0.4, max_corrupt_fraction=0.05)
    tight = ClientPolicy(max_dropout_fraction=0.05, max_corrupt_fraction=0.05)
    n, k, t = 1000, 45, 26
    assert _quorum_samples(tight, n, k, t)[0] < _quorum_samples(loose, n, k, t)[0]
    s, log2p = _quorum_samples(ClientPolicy(), n, k, t)
    assert log2p <= -(ClientPolicy().target_bits + 1)
    assert _quorum_samples(ClientPolicy(), n, k, t - 10)[0] > s  # fewer holders needed to cheat


def test_policy_validation() -> None:
    with pytest.raises(ConfigError):
        ClientPolicy(max_dropout_fraction=0.3, max_corrupt_fraction=0.2)
    with pytest.raises(ConfigError):
        ClientPolicy(min_survivor_fraction=1.0)
    with pytest.raises(TypeError):
        ClientPolicy(security_bits=40.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        ClientPolicy(input_bits=1)
    with pytest.raises(TypeError):
        ClientPolicy(0.1)  # type: ignore[misc]
    p = ClientPolicy(min_survivor_fraction=0.6, min_survivors=10)
    assert p.dp_survivors(5) == 10 and p.dp_survivors(100) == 60
    assert p.required_survivors(100) == 90
    assert p.honest_in_sum(100) == 60 - 5


def test_config_derives_with_its_own_policy_and_is_checked_by_clients() -> None:
    cfg = SecAggConfig(num_clients=1000, mode=SecAggMode.SECAGG_PLUS, min_survivor_fraction=0.66)
    a = cfg.analysis()
    assert a.honest_in_sum == 660 - 50
    assert cfg.k > SecAggConfig(num_clients=1000, mode=SecAggMode.SECAGG_PLUS).k
    # A client that only requires half of the inputs accepts the stronger parameters too.
    ClientPolicy().check(1000, cfg.k, cfg.t, cfg.modulus_bits)
