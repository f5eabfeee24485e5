"""The ε lower-bound math against independent computations (scipy tails, closed forms)."""

from __future__ import annotations

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
