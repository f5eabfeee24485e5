"""The ε lower-bound math against independent computations (scipy tails, closed forms)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import integrate, special, stats

from audits._stats import (
    auc,
    epsilon_two_gaussians,
    gdp_delta,
    gdp_epsilon,
    one_run_epsilon_lower_bound,
    one_run_p_value,
    roc,
    threshold_epsilon_lower_bound,
    tpr_at_fpr,
)


@pytest.mark.parametrize(("r", "v"), [(10, 10), (100, 90), (500, 400), (1000, 990), (50, 30)])
def test_one_run_bound_delta0_is_clopper_pearson_logit(r: int, v: int) -> None:
    # δ = 0: the bound solves P[Bin(r, q) >= v] = β, i.e. q is the one-sided
    # Clopper–Pearson lower limit, computed independently from the beta quantile.
    beta = 0.05
    p_lo = stats.beta.ppf(beta, v, r - v + 1)
    expected = max(0.0, math.log(p_lo / (1 - p_lo)))
    got = one_run_epsilon_lower_bound(
        num_canaries=r, num_guesses=r, num_correct=v, delta=0.0, significance=beta
    )
    assert got == pytest.approx(expected, abs=1e-5)


def _p_value_bruteforce(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Steinke et al. Prop. 5.2 written out with explicit pmf sums (no sf calls)."""
    q = special.expit(eps)
    pmf = [stats.binom.pmf(k, r, q) for k in range(r + 1)]

    def tail(a: int) -> float:
        return float(sum(pmf[max(a, 0) :]))

    beta = tail(v)
    alpha = max((tail(v - i) - beta) / i for i in range(1, v + 1))
    return min(1.0, beta + 2 * m * delta * alpha)


@pytest.mark.parametrize(
    ("m", "r", "v", "delta"), [(1000, 100, 90, 1e-5), (200, 60, 50, 1e-4), (5000, 300, 250, 1e-6)]
)
def test_one_run_p_value_and_bound_with_delta(m: int, r: int, v: int, delta: float) -> None:
    for eps in (0.5, 1.0, 2.0):
        assert one_run_p_value(
            num_canaries=m, num_guesses=r, num_correct=v, epsilon=eps, delta=delta
        ) == pytest.approx(_p_value_bruteforce(m, r, v, eps, delta), rel=1e-6, abs=1e-12)
    lb = one_run_epsilon_lower_bound(
        num_canaries=m, num_guesses=r, num_correct=v, delta=delta, significance=0.05
    )
    assert lb > 0
    # At the bound the independent p-value equals the significance level; above it, larger.
    assert _p_value_bruteforce(m, r, v, lb, delta) == pytest.approx(0.05, rel=1e-3)
    assert _p_value_bruteforce(m, r, v, lb + 0.05, delta) > 0.05
    # δ only weakens the bound.
    assert lb <= one_run_epsilon_lower_bound(
        num_canaries=m, num_guesses=r, num_correct=v, delta=0.0, significance=0.05
    )


def test_one_run_bound_is_zero_for_chance_guessing() -> None:
    assert (
        one_run_epsilon_lower_bound(
            num_canaries=1000, num_guesses=1000, num_correct=500, delta=1e-5
        )
        == 0.0
    )


def test_idealized_gaussian_reference_steinke() -> None:
    # Steinke et al. 2023 idealized setting (Mahloujifar et al. Table 1, σ = 1, δ = 1e-5):
    # 1-GDP is ε = 4.37; the one-run bound with expected counts is 2.61.
    from scipy.optimize import brentq

    assert gdp_epsilon(1.0, 1e-5) == pytest.approx(4.37, abs=0.01)
    m = 1_000_000
    best = 0.0
    for r in np.geomspace(12_000, 40_000, 12).astype(int):
        f = r / m / 2
        th = brentq(lambda x, f=f: 0.5 * stats.norm.sf(x - 1) + 0.5 * stats.norm.sf(x) - f, -20, 20)
        prec = 0.5 * stats.norm.sf(th - 1) / f
        best = max(
            best,
            one_run_epsilon_lower_bound(
                num_canaries=m, num_guesses=int(r), num_correct=round(prec * r), delta=1e-5
            ),
        )
    assert best == pytest.approx(2.61, abs=0.05)


def test_gdp_and_two_gaussians_agree_and_match_integration() -> None:
    for mu in (0.5, 1.0, 2.0):
        e = gdp_epsilon(mu, 1e-5)
        assert gdp_delta(mu, e) == pytest.approx(1e-5, rel=1e-4)
        assert epsilon_two_gaussians(0.0, 1.0, mu, 1.0, delta=1e-5) == pytest.approx(e, rel=1e-6)
    # Unequal variances: the exact hockey-stick divergence vs numerical integration.
    from audits._stats import _hockey_stick

    for m_p, s_p, m_q, s_q in ((0.5, 1.7, 0.0, 1.0), (0.0, 1.0, 0.5, 1.7), (1.0, 0.4, 0.0, 1.0)):
        for eps in (0.0, 0.5, 1.0, 3.0):

            def integrand(x: float, m_p=m_p, s_p=s_p, m_q=m_q, s_q=s_q, eps=eps) -> float:
                return max(
                    0.0, stats.norm.pdf(x, m_p, s_p) - math.exp(eps) * stats.norm.pdf(x, m_q, s_q)
                )

            d_num = integrate.quad(integrand, -40, 40, limit=400, points=[-5, -1, 0, 1, 5])[0]
            assert _hockey_stick(m_p, s_p, m_q, s_q, eps) == pytest.approx(d_num, abs=1e-7)
    # ε is where the worse direction's divergence equals δ.
    e = epsilon_two_gaussians(0.0, 1.0, 0.5, 1.7, delta=1e-3)
    worst = max(_hockey_stick(0.5, 1.7, 0.0, 1.0, e), _hockey_stick(0.0, 1.0, 0.5, 1.7, e))
    assert worst == pytest.approx(1e-3, rel=1e-5)


def test_threshold_bound_matches_manual_clopper_pearson() -> None:
    rng = np.random.default_rng(0)
    ins, outs = rng.normal(3, 1, 400), rng.normal(0, 1, 400)
    thr, delta, sig = 1.5, 1e-5, 0.05
    fp, fn = int((outs >= thr).sum()), int((ins < thr).sum())
    fpr_hi = stats.beta.ppf(1 - sig / 2, fp + 1, 400 - fp)
    fnr_hi = stats.beta.ppf(1 - sig / 2, fn + 1, 400 - fn)
    expected = max(math.log((1 - fnr_hi - delta) / fpr_hi), math.log((1 - fpr_hi - delta) / fnr_hi))
    got = threshold_epsilon_lower_bound(ins, outs, threshold=thr, delta=delta, significance=sig)
    assert got == pytest.approx(expected, rel=1e-9)


def test_roc_auc_equals_mann_whitney() -> None:
    rng = np.random.default_rng(1)
    s_in, s_out = rng.normal(0.5, 1, 300), rng.normal(0, 1, 500)
    scores = np.r_[s_in, s_out]
    labels = np.r_[np.ones(300, bool), np.zeros(500, bool)]
    u = stats.mannwhitneyu(s_in, s_out).statistic / (300 * 500)
    c = roc(scores, labels)
    assert auc(c) == pytest.approx(u, abs=1e-9)
    assert tpr_at_fpr(c, 0.0) <= tpr_at_fpr(c, 0.01) <= tpr_at_fpr(c, 1.0) == 1.0


# --------------------------------------------------------------------------- f-DP one run


def _deterministic_normal(mu: float, n: int) -> np.ndarray:
    return stats.norm.ppf(np.linspace(0, 1, n, endpoint=False) + 1 / (2 * n)) + mu


@pytest.mark.parametrize(
    ("shift", "fdp", "steinke"),
    [
        pytest.param(1.0, 2.164749, 1.13346, marks=pytest.mark.slow),
        pytest.param(2.0, 4.7218075, 2.311945, marks=pytest.mark.slow),
        (4.0, 9.133752, 4.395568),
    ],
)
def test_one_run_bounds_match_published_reference_values(
    shift: float, fdp: float, steinke: float
) -> None:
    """Known values of an independent implementation (google-deepmind/jax_privacy,
    auditing_test.py): 10^4 held-in scores N(shift, 1) and 10^4 held-out N(0, 1) on a
    deterministic quantile grid, δ = 1e-6, 95%, Bonferroni over the hull thresholds."""
    from audits._stats import one_run_bound_over_thresholds

    ins, outs = _deterministic_normal(shift, 10_000), _deterministic_normal(0.0, 10_000)
    got_fdp, _ = one_run_bound_over_thresholds(ins, outs, delta=1e-6, method="fdp")
    assert got_fdp == pytest.approx(fdp, rel=1e-5)
    got_st, _ = one_run_bound_over_thresholds(ins, outs, delta=1e-6, method="steinke")
    assert got_st == pytest.approx(steinke, rel=1e-5)
    assert got_fdp > got_st  # the whole curve says more than one (ε, δ) pair


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        ([[0, 0], [0, 2], [3, 2], [3, 5], [5, 5]], [0, 1, 3, 4]),
        ([[0, 0], [0, 2], [2, 2], [2, 3], [3, 3], [3, 5], [5, 5]], [0, 1, 5, 6]),
        ([[0, 0], [0, 2], [1, 2], [1, 4], [3, 4], [3, 5], [5, 5]], [0, 1, 3, 5, 6]),
        ([[0, 0], [0, 2], [1, 2], [1, 3], [2, 3], [2, 4], [4, 4]], [0, 1, 5, 6]),
    ],
)
def test_hull_keeps_exactly_the_undominated_thresholds(
    points: list[list[int]], expected: list[int]
) -> None:
    # Brute force: a point is dropped iff it lies on or below a segment between an
    # earlier and a later point (the definition, O(n^3)).
    from itertools import combinations

    pts = np.array(points, dtype=float)

    def signed_area(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
        return float((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))

    dominated = {
        j
        for i, j, k in combinations(range(len(pts)), 3)
        if signed_area(pts[i], pts[j], pts[k]) >= 0
    }
    assert sorted(set(range(len(pts))) - dominated) == expected
    # Our hull over (fn, tn) staircases reproduces it from scores: build scores whose
    # counts walk exactly these points (fn from in-scores, tn from out-scores).
    from audits._stats import hull_thresholds

    ins, outs, t = [], [], 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        t += 1.0
        ins += [t] * (x1 - x0)
        outs += [t] * (y1 - y0)
    _thr, fn, tn = hull_thresholds(np.array(ins), np.array(outs))
    walked = [[int(a), int(b)] for a, b in zip(fn, tn, strict=True)]
    assert walked == [points[i] for i in expected]


def test_fdp_tradeoffs_inverse_powers() -> None:
    from audits._stats import GaussianTradeoff, ProfileTradeoff

    g = GaussianTradeoff(1.5)
    for alpha in (1e-6, 1e-3, 0.1, 0.5):
        power = stats.norm.cdf(stats.norm.ppf(alpha) + 1.5)  # f̄(α) of 1.5-GDP
        assert g.inverse_power(power) == pytest.approx(alpha, rel=1e-9)
    eps, delta = 2.0, 1e-3
    p = ProfileTradeoff(((eps, delta),))
    for alpha in (1e-4, 0.01, 0.2):
        power = min(1.0, delta + math.exp(eps) * alpha, 1 - math.exp(-eps) * (1 - delta - alpha))
        assert p.inverse_power(power) == pytest.approx(alpha, rel=1e-9)
    # More pairs can only make the claim stronger (a larger inverse power).
    p2 = ProfileTradeoff(((eps, delta), (1.0, 0.05)))
    assert all(p2.inverse_power(y) >= p.inverse_power(y) for y in (0.05, 0.3, 0.9))


def test_fdp_test_holds_its_level_on_a_true_gaussian_mechanism_and_has_power() -> None:
    """Monte Carlo of the idealised game: m canaries, secret bits, scores N(μ b, 1);
    guess the top and bottom 10%. At the true μ the test rejects at most τ of the time
    (plus Monte-Carlo slack); at a claim of μ/3 it rejects almost always."""
    from audits._stats import GaussianTradeoff, fdp_one_run_rejects

    rng = np.random.default_rng(0)
    m, mu, tau, trials = 1000, 2.0, 0.1, 300
    rejections = {mu: 0, mu / 3: 0}
    for _ in range(trials):
        b = rng.random(m) < 0.5
        s = rng.standard_normal(m) + mu * b
        order = np.argsort(s)
        k = 50
        correct = int(b[order[-k:]].sum() + (~b[order[:k]]).sum())
        for claim in rejections:
            rejections[claim] += fdp_one_run_rejects(
                num_canaries=m,
                num_guesses=2 * k,
                num_correct=correct,
                tradeoff=GaussianTradeoff(claim),
                significance=tau,
            )
    assert rejections[mu] / trials <= tau + 3 * math.sqrt(tau * (1 - tau) / trials)
    assert rejections[mu / 3] / trials > 0.95


def test_fdp_bound_is_monotone_and_zero_at_chance() -> None:
    from audits._stats import fdp_gaussian_epsilon_lower_bound

    bounds = [
        fdp_gaussian_epsilon_lower_bound(
            num_canaries=2000, num_guesses=400, num_correct=c, delta=1e-5
        )
        for c in (200, 300, 360, 400)
    ]
    assert bounds[0] == 0.0
    assert bounds == sorted(bounds) and bounds[-1] > bounds[-2] > 0
