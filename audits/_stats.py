"""Pure statistics behind the audits: ε lower bounds, ε estimates, ROC metrics.

Everything here is a pure function of scores or counts, so it can be tested
against independent computations (scipy binomial tails, closed-form GDP).

- :func:`fdp_one_run_rejects` / :func:`fdp_one_run_epsilon_lower_bound` —
  Mahloujifar, Melis, Chaudhuri (2024), "Auditing f-Differential Privacy in One
  Run", Algorithm 3 (the guessing game with abstentions, analysed with the whole
  hypothesised trade-off curve f instead of one (ε, δ) pair). With m canaries, k
  guesses and c correct at level τ it starts from r = τc/m (correct-guess mass)
  and h = τ(k - c)/m (wrong-guess mass) and, for i = c-1, ..., 0, raises the
  wrong mass to at least the inverse power function of the correct mass,
  h' = max(h, f̄⁻¹(r)), moving the matching share i/(k - i) of it into r; the
  claim is rejected when r + h exceeds the guess budget k/m. Trade-off curves:
  :class:`GaussianTradeoff` (μ-GDP) and :class:`ProfileTradeoff` (any list of
  (ε, δ) pairs the mechanism satisfies, e.g. its privacy profile from the ledger).
- :func:`one_run_epsilon_lower_bound` — Steinke, Nasr, Jagielski (NeurIPS 2023),
  "Privacy auditing with one (1) training run", Theorem 3 / Proposition 5.2 with
  the δ correction: with m canaries each included independently with
  probability ½, an (ε, δ)-DP mechanism and r guesses of which v are correct,
  ``P[V >= v] <= β(ε) + 2mδ·α(ε)`` where ``β(ε) = P[Bin(r, e^ε/(1+e^ε)) >= v]``
  and ``α(ε) = max_{1<=i<=v} (P[Bin(r, q) >= v-i] - β(ε)) / i``. The lower bound
  is the largest ε whose p-value is still <= the significance level.
- :func:`epsilon_two_gaussians` — Andrew et al. (ICLR 2024): the ε at δ of
  distinguishing N(μ0, σ0²) from N(μ1, σ1²) (both directions, the worse one).
- :func:`threshold_epsilon_lower_bound` — Jagielski et al. (2020) recipe with
  Clopper–Pearson intervals at one threshold fixed in advance.
- :func:`roc` / :func:`tpr_at_fpr` / :func:`auc` — membership-inference metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from scipy import optimize, special, stats

from privacy.errors import ConfigError

__all__ = [
    "GaussianTradeoff",
    "ProfileTradeoff",
    "RocCurve",
    "Tradeoff",
    "auc",
    "clopper_pearson_interval",
    "epsilon_two_gaussians",
    "fdp_gaussian_epsilon_lower_bound",
    "fdp_one_run_rejects",
    "gaussian_mu_for_epsilon",
    "gdp_delta",
    "gdp_epsilon",
    "hull_thresholds",
    "max_one_run_bound",
    "one_run_bound_over_thresholds",
    "one_run_epsilon_lower_bound",
    "one_run_p_value",
    "roc",
    "threshold_epsilon_lower_bound",
    "tpr_at_fpr",
]

_EPS_MAX = 60.0


def _check_prob(name: str, value: float, *, open_low: bool = True) -> float:
    v = float(value)
    if not (0.0 < v < 1.0) if open_low else not (0.0 <= v < 1.0):
        raise ConfigError(f"{name} must be in {'(0, 1)' if open_low else '[0, 1)'}, got {value!r}")
    return v


# --------------------------------------------------------------------------- one-run audit


def one_run_p_value(
    *, num_canaries: int, num_guesses: int, num_correct: int, epsilon: float, delta: float
) -> float:
    """Upper bound on P[>= num_correct correct guesses] under (ε, δ)-DP (Steinke et al. 2023)."""
    m, r, v = int(num_canaries), int(num_guesses), int(num_correct)
    if not (0 <= v <= r <= m) or m < 1:
        raise ConfigError(f"need 0 <= correct <= guesses <= canaries, got {v}, {r}, {m}")
    if v == 0:
        return 1.0
    q = float(special.expit(epsilon))
    beta = float(stats.binom.sf(v - 1, r, q))
    if delta == 0:
        return beta
    i = np.arange(1, v + 1)
    tails = stats.binom.sf(v - i - 1, r, q) - beta  # P[Bin >= v - i] - P[Bin >= v]
    alpha = float(np.max(tails / i))
    return min(1.0, beta + 2.0 * m * delta * alpha)


def one_run_epsilon_lower_bound(
    *,
    num_canaries: int,
    num_guesses: int,
    num_correct: int,
    delta: float,
    significance: float = 0.05,
) -> float:
    """Largest ε that (num_correct of num_guesses) rejects at level ``significance``.

    Returns 0.0 when no ε >= 0 is rejected. The p-value is decreasing in ε, so
    the set of rejected ε is an interval [0, ε_LB]; we bisect for its end.
    """
    _check_prob("significance", significance)
    if not 0.0 <= delta < 1.0:
        raise ConfigError(f"delta must be in [0, 1), got {delta!r}")

    def p(eps: float) -> float:
        return one_run_p_value(
            num_canaries=num_canaries,
            num_guesses=num_guesses,
            num_correct=num_correct,
            epsilon=eps,
            delta=delta,
        )

    if p(0.0) > significance:
        return 0.0
    hi = 1.0
    while p(hi) <= significance:
        hi *= 2.0
        if hi > _EPS_MAX:
            return _EPS_MAX
    return float(optimize.brentq(lambda e: significance - p(e), 0.0, hi, xtol=1e-7))


def max_one_run_bound(
    *, num_canaries: int, num_guesses: int, delta: float, significance: float
) -> float:
    """The bound if every one of ``num_guesses`` guesses were right: the audit's ceiling.

    An audit whose ceiling is below the claimed ε cannot detect a violation of
    the claim, whatever the mechanism does; it is reported INCONCLUSIVE.
    """
    return one_run_epsilon_lower_bound(
        num_canaries=num_canaries,
        num_guesses=num_guesses,
        num_correct=num_guesses,
        delta=delta,
        significance=significance,
    )


# --------------------------------------------------------------------------- f-DP one run


class Tradeoff(Protocol):
    """A hypothesised trade-off curve, through its inverse power function.

    ``inverse_power(y)`` is the smallest false-positive rate at which any test
    between a canary's two worlds can reach true-positive rate ``y`` (the
    inverse of f̄(α) = 1 - f(α)).
    """

    def inverse_power(self, y: float) -> float: ...


@dataclass(frozen=True)
class GaussianTradeoff:
    """μ-GDP: f̄(α) = Φ(Φ⁻¹(α) + μ), so f̄⁻¹(y) = Φ(Φ⁻¹(y) - μ)."""

    mu: float

    def __post_init__(self) -> None:
        if not (self.mu >= 0 and math.isfinite(self.mu)):
            raise ConfigError(f"mu must be finite and >= 0, got {self.mu!r}")

    def inverse_power(self, y: float) -> float:
        if y <= 0.0:
            return 0.0
        if y >= 1.0:
            return 1.0
        return float(special.ndtr(special.ndtri(y) - self.mu))


@dataclass(frozen=True)
class ProfileTradeoff:
    """The trade-off implied by (ε, δ) pairs that all hold (a privacy profile).

    Each (ε, δ) gives f̄(α) = min(1, δ + e^ε α, 1 - e^{-ε}(1 - δ - α)); holding
    all of them gives the pointwise smallest power, i.e. the largest inverse.
    """

    pairs: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if not self.pairs:
            raise ConfigError("a profile needs at least one (epsilon, delta) pair")
        for eps, delta in self.pairs:
            if not (eps >= 0 and 0 <= delta < 1):
                raise ConfigError(f"invalid (epsilon, delta) pair {(eps, delta)!r}")

    def inverse_power(self, y: float) -> float:
        if y <= 0.0:
            return 0.0
        best = 0.0
        for eps, delta in self.pairs:
            if math.isinf(eps):
                continue
            a = (y - delta) * math.exp(-eps)
            b = 1.0 - delta - math.exp(eps) * (1.0 - y) if eps < 700 else -math.inf
            best = max(best, a, b)
        return min(1.0, best)


def gaussian_mu_for_epsilon(epsilon: float, delta: float) -> float:
    """μ of the Gaussian mechanism whose ε at ``delta`` is ``epsilon``."""
    import dp_accounting

    if epsilon <= 0:
        return 0.0
    sigma = float(dp_accounting.get_sigma_gaussian(epsilon, delta))
    return math.inf if sigma == 0 else 1.0 / sigma


def fdp_one_run_rejects(
    *,
    num_canaries: int,
    num_guesses: int,
    num_correct: int,
    tradeoff: Tradeoff,
    significance: float,
) -> bool:
    """Whether ``num_correct`` of ``num_guesses`` rejects "the mechanism is f-DP"
    at level ``significance`` (Mahloujifar et al. 2024, Algorithm 3, binary secrets)."""
    m, k, c = int(num_canaries), int(num_guesses), int(num_correct)
    if not (0 <= c <= k <= m) or m < 1:
        raise ConfigError(f"need 0 <= correct <= guesses <= canaries, got {c}, {k}, {m}")
    _check_prob("significance", significance)
    if c == 0:
        return False
    r = significance * c / m
    h = significance * (k - c) / m
    g: Callable[[float], float] = tradeoff.inverse_power
    for i in range(c - 1, -1, -1):
        h_new = max(h, g(r))
        if h_new == h:
            break  # a fixed point: neither mass changes again
        r = min(1.0, r + (i / (k - i)) * (h_new - h))
        h = h_new
    return r + h > k / m


def fdp_gaussian_epsilon_lower_bound(
    *,
    num_canaries: int,
    num_guesses: int,
    num_correct: int,
    delta: float,
    significance: float = 0.05,
    eps_lo: float = 0.0,
) -> float:
    """Largest ε such that the Gaussian mechanism with that ε at ``delta`` is rejected.

    Returns ``eps_lo`` when nothing above it is rejected (a bisection over the GDP
    family; the rejection is monotone in μ).
    """

    def rejects(eps: float) -> bool:
        return fdp_one_run_rejects(
            num_canaries=num_canaries,
            num_guesses=num_guesses,
            num_correct=num_correct,
            tradeoff=GaussianTradeoff(gaussian_mu_for_epsilon(eps, delta)),
            significance=significance,
        )

    if not rejects(eps_lo):
        return eps_lo
    lo, hi = eps_lo, max(1.0, 2 * eps_lo)
    while rejects(hi):
        lo, hi = hi, hi * 2
        if hi > _EPS_MAX:
            return _EPS_MAX
    return float(optimize.brentq(lambda e: 0.5 - float(rejects(e)), lo, hi, xtol=1e-6))


def hull_thresholds(
    in_scores: Sequence[float] | npt.NDArray[np.float64],
    out_scores: Sequence[float] | npt.NDArray[np.float64],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Thresholds on the upper convex hull of (in below t, out below t), with the counts.

    Guessing "in" for scores >= t, every threshold strictly inside the hull is
    beaten by randomising between two hull thresholds, so only hull vertices
    (collinear points dropped) are candidates; their number is the Bonferroni
    factor of a search over thresholds.
    """
    ins = np.sort(np.asarray(in_scores, dtype=np.float64))
    outs = np.sort(np.asarray(out_scores, dtype=np.float64))
    thr = np.concatenate([np.union1d(ins, outs), [np.inf]])
    fn = np.searchsorted(ins, thr, side="left")
    tn = np.searchsorted(outs, thr, side="left")
    keep: list[int] = []
    for i in range(thr.size):
        while len(keep) >= 2:
            o, a = keep[-2], keep[-1]
            cross = (fn[a] - fn[o]) * (tn[i] - tn[o]) - (tn[a] - tn[o]) * (fn[i] - fn[o])
            if cross >= 0:
                keep.pop()
            else:
                break
        keep.append(i)
    idx = np.asarray(keep)
    return thr[idx], fn[idx].astype(np.int64), tn[idx].astype(np.int64)


def one_run_bound_over_thresholds(
    in_scores: Sequence[float] | npt.NDArray[np.float64],
    out_scores: Sequence[float] | npt.NDArray[np.float64],
    *,
    delta: float,
    significance: float = 0.05,
    method: str = "fdp",
) -> tuple[float, float]:
    """(ε lower bound, threshold) of the best one-sided threshold, Bonferroni over the hull.

    ``method``: ``"fdp"`` (Mahloujifar et al., GDP family) or ``"steinke"``.
    Every canary counts (in and out together are the m canaries).
    """
    if method not in ("fdp", "steinke"):
        raise ConfigError(f"method must be 'fdp' or 'steinke', got {method!r}")
    thr, fn, tn = hull_thresholds(in_scores, out_scores)
    n_in, n_out = int(fn[-1]), int(tn[-1])
    m = n_in + n_out
    sig = significance / thr.size
    tp, fp = n_in - fn, n_out - tn
    order = np.argsort(-(tp / np.maximum(tp + fp, 1)), kind="mergesort")
    best, best_thr = 0.0, math.inf
    for j in order:
        k, c = int(tp[j] + fp[j]), int(tp[j])
        if k == 0 or c / k <= special.expit(best):
            # A threshold this imprecise cannot beat the bound already found.
            continue
        if method == "fdp":
            eps = fdp_gaussian_epsilon_lower_bound(
                num_canaries=m,
                num_guesses=k,
                num_correct=c,
                delta=delta,
                significance=sig,
                eps_lo=best,
            )
        else:
            eps = one_run_epsilon_lower_bound(
                num_canaries=m, num_guesses=k, num_correct=c, delta=delta, significance=sig
            )
        if eps > best:
            best, best_thr = eps, float(thr[j])
    return best, best_thr


# --------------------------------------------------------------------------- Gaussian DP


def gdp_delta(mu: float, epsilon: float) -> float:
    """δ(ε) of μ-GDP: Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2) (Dong, Roth, Su 2019)."""
    if mu <= 0:
        return 0.0
    a = stats.norm.cdf(-epsilon / mu + mu / 2)
    log_b = epsilon + stats.norm.logcdf(-epsilon / mu - mu / 2)
    return float(max(0.0, a - math.exp(log_b)))


def gdp_epsilon(mu: float, delta: float) -> float:
    """Smallest ε with δ(ε) <= delta for μ-GDP."""
    if mu <= 0 or gdp_delta(mu, 0.0) <= delta:
        return 0.0
    hi = 1.0
    while gdp_delta(mu, hi) > delta:
        hi *= 2.0
        if hi > 1e4:
            return math.inf
    return float(optimize.brentq(lambda e: gdp_delta(mu, e) - delta, 0.0, hi, xtol=1e-9))


def _hockey_stick(mu_p: float, s_p: float, mu_q: float, s_q: float, eps: float) -> float:
    """sup_S P(S) - e^ε Q(S) for P = N(mu_p, s_p²), Q = N(mu_q, s_q²), exactly.

    The set {p/q > e^ε} is where a quadratic in x is positive: an interval, its
    complement, a half-line or empty; the probabilities are normal CDFs.
    """
    # log p - log q - eps = a x² + b x + c
    a = 0.5 / s_q**2 - 0.5 / s_p**2
    b = mu_p / s_p**2 - mu_q / s_q**2
    c = mu_q**2 / (2 * s_q**2) - mu_p**2 / (2 * s_p**2) + math.log(s_q / s_p) - eps

    def mass(lo: float, hi: float) -> float:
        pp = stats.norm.cdf(hi, mu_p, s_p) - stats.norm.cdf(lo, mu_p, s_p)
        qq = stats.norm.cdf(hi, mu_q, s_q) - stats.norm.cdf(lo, mu_q, s_q)
        # exp(ε) overflows past ~709; the mass there is negative anyway.
        return float(pp - math.exp(min(eps, 700.0)) * qq)

    if abs(a) < 1e-12 * max(abs(b), 1e-300):
        if b == 0:
            return max(0.0, mass(-math.inf, math.inf)) if c > 0 else 0.0
        root = -c / b
        return max(0.0, mass(root, math.inf) if b > 0 else mass(-math.inf, root))
    disc = b * b - 4 * a * c
    if disc <= 0:
        return max(0.0, mass(-math.inf, math.inf)) if a > 0 else 0.0
    r1, r2 = sorted(((-b - math.sqrt(disc)) / (2 * a), (-b + math.sqrt(disc)) / (2 * a)))
    if a > 0:  # positive outside the roots
        return max(0.0, mass(-math.inf, r1) + mass(r2, math.inf))
    return max(0.0, mass(r1, r2))


def epsilon_two_gaussians(
    mu0: float, sigma0: float, mu1: float, sigma1: float, *, delta: float
) -> float:
    """ε at δ for telling N(mu0, sigma0²) from N(mu1, sigma1²), worst direction.

    This is Andrew et al.'s ε_est when (mu0, sigma0) is the null (unseen canary)
    fit and (mu1, sigma1) the fit of inserted canaries' cosines.
    """
    if sigma0 <= 0 or sigma1 <= 0:
        raise ConfigError("Gaussian fits need positive standard deviations")
    _check_prob("delta", delta)

    def worst(eps: float) -> float:
        return max(
            _hockey_stick(mu1, sigma1, mu0, sigma0, eps),
            _hockey_stick(mu0, sigma0, mu1, sigma1, eps),
        )

    if worst(0.0) <= delta:
        return 0.0
    hi = 1.0
    while worst(hi) > delta:
        hi *= 2.0
        if hi > 1e4:
            return math.inf
    return float(optimize.brentq(lambda e: worst(e) - delta, 0.0, hi, xtol=1e-9))


# --------------------------------------------------------------------------- threshold bounds


def clopper_pearson_interval(k: int, n: int, *, significance: float) -> tuple[float, float]:
    """Two one-sided Clopper–Pearson limits, each at level ``significance``."""
    if n <= 0 or not 0 <= k <= n:
        raise ConfigError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    lo = 0.0 if k == 0 else float(stats.beta.ppf(significance, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - significance, k + 1, n - k))
    return lo, hi


def threshold_epsilon_lower_bound(
    in_scores: Sequence[float] | npt.NDArray[np.float64],
    out_scores: Sequence[float] | npt.NDArray[np.float64],
    *,
    threshold: float,
    delta: float,
    significance: float = 0.05,
) -> float:
    """ε lower bound from one pre-chosen threshold (Jagielski et al. 2020).

    Guess "in" when score >= threshold. With FPR_hi, FNR_hi the Clopper–Pearson
    upper limits (each at significance/2, so both hold with prob. >= 1 - significance),
    (ε, δ)-DP implies TPR <= e^ε FPR + δ and TNR <= e^ε FNR + δ, so
    ε >= max(ln((1 - FNR_hi - δ)/FPR_hi), ln((1 - FPR_hi - δ)/FNR_hi)).
    The threshold must not have been chosen on these scores.
    """
    ins = np.asarray(in_scores, dtype=np.float64)
    outs = np.asarray(out_scores, dtype=np.float64)
    if ins.size == 0 or outs.size == 0:
        return 0.0
    fp = int(np.sum(outs >= threshold))
    fn = int(np.sum(ins < threshold))
    _, fpr_hi = clopper_pearson_interval(fp, outs.size, significance=significance / 2)
    _, fnr_hi = clopper_pearson_interval(fn, ins.size, significance=significance / 2)
    best = 0.0
    for num, den in ((1 - fnr_hi - delta, fpr_hi), (1 - fpr_hi - delta, fnr_hi)):
        if num > 0 and den > 0:
            best = max(best, math.log(num / den))
    return best


# --------------------------------------------------------------------------- ROC


@dataclass(frozen=True)
class RocCurve:
    """ROC of a score where larger means "member"; arrays share one index."""

    fpr: npt.NDArray[np.float64]
    tpr: npt.NDArray[np.float64]
    thresholds: npt.NDArray[np.float64]


def roc(
    scores: Sequence[float] | npt.NDArray[np.float64],
    labels: Sequence[bool] | npt.NDArray[np.bool_],
) -> RocCurve:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ConfigError("scores and labels must be 1-D arrays of equal length")
    if y.all() or (~y).all():
        raise ConfigError("ROC needs both members and non-members")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps = np.cumsum(y)[distinct]
    fps = np.cumsum(~y)[distinct]
    tpr = np.r_[0.0, tps / y.sum()]
    fpr = np.r_[0.0, fps / (~y).sum()]
    thr = np.r_[np.inf, s[distinct]]
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=thr)


def auc(curve: RocCurve) -> float:
    return float(np.trapezoid(curve.tpr, curve.fpr))


def tpr_at_fpr(curve: RocCurve, fpr: float) -> float:
    """Largest TPR among thresholds whose FPR is <= ``fpr`` (no interpolation)."""
    ok = curve.fpr <= fpr + 1e-12
    return float(curve.tpr[ok].max()) if ok.any() else 0.0
