"""Pure privacy math behind the accountants (Opacus' ``accountants/analysis`` layer).

No state and no I/O: every function maps parameters to numbers, so each can be
tested against an independent computation (dp_accounting, mpmath integration,
brute-force hockey-stick integrals).

- Gaussian and Poisson-subsampled Gaussian RDP (Opacus ``compute_rdp``, Mironov
  et al. 2019) and RDP-to-(ε, δ) conversion.
- Exact (ε, δ) of μ-GDP (Dong, Roth, Su 2019, Cor. 2.13). A composition of
  Gaussian mechanisms without sampling *is* a Gaussian mechanism with
  μ² = Σ 1/σ_i², so this is exact, not an approximation, for every client
  whose rounds are known to the adversary.
- Fixed-size sampling without replacement under replace-one (Wang, Balle,
  Kasiviswanathan 2019, via dp_accounting).
- The distributed discrete Gaussian (Kairouz, Liu, Steinke 2021).
- A Poisson round whose release requires a minimum number of sampled clients
  (:func:`threshold_weights`, :func:`threshold_rdp`, :func:`threshold_pld`):
  the visible skip changes both the effective inclusion probability of a
  released round and adds an atom of privacy loss.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special

from privacy._validation import (
    require_finite,
    require_int,
    require_positive,
    require_probability,
)
from privacy.errors import ConfigError

__all__ = [
    "PLD_DISCRETIZATION",
    "RDP_ORDERS",
    "ThresholdWeights",
    "ddgauss_rdp",
    "ddgauss_tau",
    "fixed_size_epsilon",
    "gaussian_delta",
    "gaussian_epsilon",
    "poisson_pld",
    "poisson_rdp",
    "rdp_to_epsilon",
    "rounded_l2_norm_bound",
    "subsampled_rdp_upper",
    "threshold_pld",
    "threshold_rdp",
    "threshold_weights",
]

#: RDP orders (the superset of Opacus' and dp_accounting's defaults).
RDP_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024]
)

#: Privacy-loss grid of the PLD accountant (dp_accounting's default).
PLD_DISCRETIZATION = 1e-4


# --------------------------------------------------------------------------
# Gaussian, Poisson-subsampled Gaussian, RDP conversion
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _poisson_rdp_one_step(q: float, noise_multiplier: float) -> tuple[float, ...]:
    # Fractional orders cost ~1 ms each in Opacus; ledgers repeat (q, σ), so
    # cache the one-step curve (RDP composes additively over steps).
    from opacus.accountants.analysis import rdp as rdp_analysis

    return tuple(
        float(x)
        for x in rdp_analysis.compute_rdp(
            q=q, noise_multiplier=noise_multiplier, steps=1, orders=list(RDP_ORDERS)
        )
    )


def poisson_rdp(*, q: float, noise_multiplier: float, steps: int = 1) -> npt.NDArray[np.float64]:
    """RDP over :data:`RDP_ORDERS` of ``steps`` Poisson-subsampled Gaussians (q = 1: Gaussian)."""
    return steps * np.asarray(_poisson_rdp_one_step(float(q), float(noise_multiplier)))


def rdp_to_epsilon(rdp: npt.NDArray[np.float64], delta: float) -> float:
    """Smallest ε over :data:`RDP_ORDERS` (Opacus' conversion, Balle et al. 2020)."""
    from opacus.accountants.analysis import rdp as rdp_analysis

    arr = np.asarray(rdp, dtype=np.float64)
    if np.all(np.isinf(arr)):
        return math.inf
    if not np.any(arr > 0):
        return 0.0
    with warnings.catch_warnings():
        # Opacus warns when the optimum sits at the extreme order; with our
        # order range that only happens for ε far outside any useful budget.
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = rdp_analysis.get_privacy_spent(orders=list(RDP_ORDERS), rdp=arr, delta=delta)
    # The conversion can dip below 0 at large δ; every mechanism is (0, δ)-DP there.
    return max(0.0, float(eps))


def gaussian_delta(mu: float, epsilon: float) -> float:
    """δ(ε) of μ-GDP: Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2), in log space for large ε."""
    if mu <= 0:
        return 0.0
    if math.isinf(mu):
        return 1.0
    log_a = float(special.log_ndtr(-epsilon / mu + mu / 2))
    log_b = epsilon + float(special.log_ndtr(-epsilon / mu - mu / 2))
    if log_b >= log_a:
        return 0.0
    return float(math.exp(log_a) * -math.expm1(log_b - log_a))


def gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact ε at ``delta`` of μ-GDP (a Gaussian of sensitivity 1 and std 1/μ)."""
    if mu <= 0:
        return 0.0
    if math.isinf(mu):
        return math.inf
    if gaussian_delta(mu, 0.0) <= delta:
        return 0.0
    hi = 1.0
    while gaussian_delta(mu, hi) > delta:
        hi *= 2
        if hi > 1e7:
            return math.inf
    from scipy import optimize  # scipy.optimize/stats take ~1 s to import: only when used

    return float(optimize.brentq(lambda e: gaussian_delta(mu, e) - delta, 0.0, hi, xtol=1e-12))


def fixed_size_epsilon(steps: Sequence[tuple[float, int, int, int]], delta: float) -> float:
    """ε of fixed-size rounds under replace-one: ``steps`` = (σ, N, m, count).

    dp_accounting's RDP for sampling without replacement (Wang, Balle,
    Kasiviswanathan 2019, Thm. 27). Replacing one client moves the clipped sum
    by up to 2C, so the Gaussian enters with noise multiplier σ/2.
    """
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    acc = RdpAccountant(
        orders=list(RDP_ORDERS),
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE,
    )
    for sigma, pop, m, count in steps:
        event = dp_accounting.SampledWithoutReplacementDpEvent(
            pop, m, dp_accounting.GaussianDpEvent(sigma / 2.0)
        )
        acc.compose(dp_accounting.SelfComposedDpEvent(event, count))
    return float(acc.get_epsilon(delta))


# --------------------------------------------------------------------------
# Distributed discrete Gaussian (Kairouz, Liu, Steinke 2021)
# --------------------------------------------------------------------------


def ddgauss_tau(*, local_stddev: float, num_clients: int) -> float:
    """τ of Kairouz, Liu, Steinke (ICML 2021), Thm. 1.

    The sum of n independent discrete Gaussians N_Z(0, σ²) is close to
    N_Z(0, nσ²); τ = 10 Σ_{k=1}^{n-1} exp(-2π²σ² k/(k+1)) measures the gap and
    inflates the RDP bound. ``local_stddev`` is in the integer (scaled) domain.
    """
    s = require_positive("local_stddev", local_stddev)
    n = require_int("num_clients", num_clients, minimum=1)
    k = np.arange(1, n, dtype=np.float64)
    return float(10.0 * np.sum(np.exp(-2.0 * math.pi**2 * s**2 * k / (k + 1.0))))


def rounded_l2_norm_bound(*, l2_norm: float, beta: float, dimension: int) -> float:
    """L2 norm bound after conditional randomized rounding (KLS 2021, Thm. 1 / Prop. 22).

    ``l2_norm`` is the norm in the scaled domain (c · scale); ``beta`` in [0, 1)
    (0 = unconditional rounding, bound c + sqrt(d)).
    """
    c = require_positive("l2_norm", l2_norm)
    b = require_finite("beta", beta)
    if not 0.0 <= b < 1.0:
        raise ConfigError(f"beta must be in [0, 1), got {b}")
    d = require_int("dimension", dimension, minimum=1)
    bound_1 = c + math.sqrt(d)
    if b == 0.0:
        return bound_1
    bound_2_sq = c**2 + d / 4.0 + math.sqrt(2.0 * math.log(1.0 / b)) * (c + math.sqrt(d) / 2.0)
    return min(bound_1, math.sqrt(bound_2_sq))


def subsampled_rdp_upper(alpha: int, q: float, eps_fn: Callable[[int], float]) -> float:
    """Poisson-subsampled RDP of a mechanism with RDP curve ``eps_fn`` at integer α >= 2.

    Zhu & Wang (ICML 2019), "Poisson Subsampled Rényi Differential Privacy",
    Thm. 5 (general upper bound):
      (α-1) ε'(α) <= log[ (1-q)^{α-1}(αq - q + 1) + C(α,2) q² (1-q)^{α-2} e^{ε(2)}
                         + 3 Σ_{l=3}^{α} C(α,l) (1-q)^{α-l} q^l e^{(l-1) ε(l)} ].
    """
    if q >= 1.0:
        return eps_fn(alpha)
    log_q, log_1mq = math.log(q), math.log1p(-q)
    terms = [(alpha - 1) * log_1mq + math.log(alpha * q - q + 1.0)]
    if alpha >= 2:
        terms.append(
            math.log(special.comb(alpha, 2)) + 2 * log_q + (alpha - 2) * log_1mq + eps_fn(2)
        )
    for ell in range(3, alpha + 1):
        log_binom = (
            special.gammaln(alpha + 1) - special.gammaln(ell + 1) - special.gammaln(alpha - ell + 1)
        )
        terms.append(
            math.log(3.0)
            + float(log_binom)
            + (alpha - ell) * log_1mq
            + ell * log_q
            + (ell - 1) * eps_fn(ell)
        )
    return float(special.logsumexp(terms)) / (alpha - 1)


def ddgauss_rdp(
    *,
    local_stddev: float,
    num_survivors: int,
    scale: float,
    clip_norm: float,
    dimension: int,
    beta: float = math.exp(-0.5),
    sample_rate: float = 1.0,
    assumed_colluding_clients: int = 0,
    orders: Sequence[float] = RDP_ORDERS,
) -> npt.NDArray[np.float64]:
    """RDP curve of one distributed discrete Gaussian release (KLS 2021, Prop. 14).

    Clients clip to ``clip_norm``, multiply by ``scale`` (1/γ), rotate, round to
    integers (conditional rounding with ``beta``) and add N_Z(0, local_stddev²)
    (integer domain). With n honest survivors (``num_survivors`` minus
    ``assumed_colluding_clients``), Δ₂ the rounded L2 bound, Δ₁ = Δ₂·min(√d, Δ₂),
    σ the local stddev and τ from :func:`ddgauss_tau`::

        ε(α) = min{ α/2 · Δ₂²/(nσ²) + τd,
                    α/2 · (Δ₂²/(nσ²) + 2Δ₁τ/(√n σ) + τ²d),
                    α/2 · (Δ₂/(√n σ) + τ√d)² }

    then Poisson subsampling at ``sample_rate`` (Zhu & Wang 2019, Thm. 5,
    evaluated at ⌈α⌉ since RDP is non-decreasing in α). Returns ε(α) for
    ``orders``.
    """
    return np.array(
        _ddgauss_rdp_cached(
            float(require_positive("local_stddev", local_stddev)),
            require_int("num_survivors", num_survivors, minimum=1),
            float(require_positive("scale", scale)),
            float(require_positive("clip_norm", clip_norm)),
            require_int("dimension", dimension, minimum=1),
            float(require_finite("beta", beta)),
            float(require_probability("sample_rate", sample_rate)),
            require_int("assumed_colluding_clients", assumed_colluding_clients, minimum=0),
            tuple(float(a) for a in orders),
        ),
        dtype=np.float64,
    )


@functools.lru_cache(maxsize=1024)
def _ddgauss_rdp_cached(
    s: float,
    n_total: int,
    sc: float,
    c: float,
    d: int,
    beta: float,
    q: float,
    k: int,
    orders: tuple[float, ...],
) -> tuple[float, ...]:
    # Ledgers repeat the same release parameters round after round; the
    # subsampled bound costs ~1024 terms per order, so cache it.
    if k >= n_total:
        raise ConfigError(f"assumed_colluding_clients={k} must be < num_survivors={n_total}")
    n = n_total - k
    l2 = rounded_l2_norm_bound(l2_norm=c * sc, beta=beta, dimension=d)
    l1 = l2 * min(math.sqrt(d), l2)
    tau = ddgauss_tau(local_stddev=s, num_clients=n)
    l2_scale = l2 / (math.sqrt(n) * s)
    l1_scale = l1 / (math.sqrt(n) * s)

    def eps(alpha: float) -> float:
        t1 = alpha / 2.0 * l2_scale**2 + tau * d
        t2 = alpha / 2.0 * (l2_scale**2 + 2.0 * l1_scale * tau + tau**2 * d)
        t3 = alpha / 2.0 * (l2_scale + math.sqrt(d) * tau) ** 2
        return min(t1, t2, t3)

    out = []
    for a in orders:
        if q >= 1.0:
            out.append(eps(float(a)))
        else:
            ai = max(2, math.ceil(a))
            out.append(min(subsampled_rdp_upper(ai, q, lambda ell: eps(float(ell))), eps(ai)))
    return tuple(out)


# --------------------------------------------------------------------------
# A Poisson round released only with enough clients (the skip is visible)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ThresholdWeights:
    """Probabilities of one threshold round for one neighbouring pair.

    The pair is a population *with* a client x and the same population
    *without* it; ``others`` is the number of other clients (so the populations
    have ``others + 1`` and ``others`` members). With B ~ Bin(others, q) the
    other clients sampled and the worst case that they contribute nothing
    (the dominating pair of the subsampled Gaussian):

    - with x, released and x in the sample:   ``in_sample = q P[B >= m-1]``
    - with x, released and x not sampled:      ``out_sample = (1-q) P[B >= m]``
    - without x, released:                     ``released_without = P[B >= m]``
    - the skips are the complements.

    Conditioned on a release, x was sampled with probability
    ``effective_rate = in_sample / (in_sample + out_sample)`` >= q: a round
    that needs enough clients is more likely to contain any given client.
    """

    in_sample: float
    out_sample: float
    released_without: float

    @property
    def released_with(self) -> float:
        return self.in_sample + self.out_sample

    @property
    def skipped_with(self) -> float:
        return max(0.0, 1.0 - self.released_with)

    @property
    def skipped_without(self) -> float:
        return max(0.0, 1.0 - self.released_without)

    @property
    def effective_rate(self) -> float:
        r = self.released_with
        return 1.0 if r <= 0 else min(1.0, self.in_sample / r)


def threshold_weights(*, sample_rate: float, others: int, min_clients: int) -> ThresholdWeights:
    """:class:`ThresholdWeights` for B ~ Bin(``others``, q) and threshold m."""
    q = require_probability("sample_rate", sample_rate)
    n = require_int("others", others, minimum=0)
    m = require_int("min_clients", min_clients, minimum=0)

    def tail(k: int) -> float:  # P[B >= k]
        if k <= 0:
            return 1.0
        from scipy import stats

        return float(stats.binom.sf(k - 1, n, q))

    return ThresholdWeights(
        in_sample=q * tail(m - 1), out_sample=(1.0 - q) * tail(m), released_without=tail(m)
    )


def _log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


def _threshold_pair_rdp(w: ThresholdWeights, noise_multiplier: float) -> npt.NDArray[np.float64]:
    """max over both orders of D_α for one (with, without) pair, over :data:`RDP_ORDERS`.

    Outcomes: skip (an atom) or release (a density). With R = released_with,
    c = released_without and q' the effective rate, the release density is
    R·mix_{q'} with x and c·N(0, σ²) without it, so

        e^{(α-1) D_α(with‖without)} = s₁^α s₀^{1-α} + R^α c^{1-α} A_{q'}(α)

    exactly, with A_{q'}(α) = E[(mix/N(0))^α] = e^{(α-1) ε_{q'}(α)} of the
    Poisson-subsampled Gaussian. The other order has the atom term
    s₀^α s₁^{1-α} and c^α R^{1-α} E_{N(0)}[(N(0)/mix)^{α-1}], which is at most
    the same A_{q'}(α): for the sampled Gaussian the removal direction dominates
    (Mironov, Talwar, Zhang 2019, Thm. 5).
    """
    orders = np.asarray(RDP_ORDERS, dtype=np.float64)
    eps_q = np.asarray(_poisson_rdp_one_step(float(w.effective_rate), float(noise_multiplier)))
    log_a = (orders - 1.0) * eps_q  # log A_{q'}(α)
    s1, s0, big_r, c = w.skipped_with, w.skipped_without, w.released_with, w.released_without
    out = np.empty_like(orders)
    for i, a in enumerate(orders):
        terms_fwd, terms_bwd = [], []
        if s1 > 0:
            if s0 <= 0:
                out[i] = math.inf
                continue
            terms_fwd.append(a * _log(s1) + (1 - a) * _log(s0))
        if s0 > 0:
            if s1 <= 0:
                out[i] = math.inf
                continue
            terms_bwd.append(a * _log(s0) + (1 - a) * _log(s1))
        if big_r > 0:
            if c <= 0:
                out[i] = math.inf
                continue
            terms_fwd.append(a * _log(big_r) + (1 - a) * _log(c) + log_a[i])
        if c > 0:
            if big_r <= 0:
                out[i] = math.inf
                continue
            terms_bwd.append(a * _log(c) + (1 - a) * _log(big_r) + log_a[i])
        fwd = float(special.logsumexp(terms_fwd)) / (a - 1) if terms_fwd else 0.0
        bwd = float(special.logsumexp(terms_bwd)) / (a - 1) if terms_bwd else 0.0
        out[i] = max(0.0, fwd, bwd)
    return out


@functools.lru_cache(maxsize=1024)
def _threshold_rdp_cached(
    noise_multiplier: float, sample_rate: float, population: int, min_clients: int
) -> tuple[float, ...]:
    # Add/remove: the actual population (N clients) is compared with N - 1
    # (remove x: N - 1 others) and with N + 1 (add y: N others).
    curves = [
        _threshold_pair_rdp(
            threshold_weights(sample_rate=sample_rate, others=others, min_clients=min_clients),
            noise_multiplier,
        )
        for others in (max(population - 1, 0), population)
    ]
    return tuple(float(x) for x in np.maximum(curves[0], curves[1]))


def threshold_rdp(
    *, noise_multiplier: float, sample_rate: float, population: int, min_clients: int
) -> npt.NDArray[np.float64]:
    """RDP over :data:`RDP_ORDERS` of one Poisson round released only with at least
    ``min_clients`` sampled (add/remove, both neighbouring pairs, both orders)."""
    return np.asarray(
        _threshold_rdp_cached(
            float(require_positive("noise_multiplier", noise_multiplier)),
            float(require_probability("sample_rate", sample_rate)),
            require_int("population", population, minimum=1),
            require_int("min_clients", min_clients, minimum=0),
        )
    )


def _shifted(pmf: Any, shift: float, weight: float) -> Any:
    """``weight`` times a dense PLD pmf with every loss increased by ``shift``,
    rounded up to the grid (pessimistic: δ(ε) can only grow)."""
    from dp_accounting.pld import pld_pmf

    dense = pmf.to_dense_pmf()
    d = dense._discretization
    k = math.ceil(shift / d - 1e-9)
    return pld_pmf.DensePLDPmf(
        d, dense._lower_loss + k, weight * dense._probs, weight * dense._infinity_mass, True
    )


def _atom(loss: float, weight: float, discretization: float) -> Any:
    from dp_accounting.pld import pld_pmf

    if math.isinf(loss):
        return pld_pmf.DensePLDPmf(discretization, 0, np.zeros(1), weight, True)
    k = math.ceil(loss / discretization - 1e-9)
    return pld_pmf.DensePLDPmf(discretization, k, np.array([weight]), 0.0, True)


def _mix(parts: Sequence[Any]) -> Any:
    """Sum of already-weighted dense pmfs on one grid (weights sum to 1)."""
    from dp_accounting.pld import pld_pmf

    dense = [p.to_dense_pmf() for p in parts]
    d = dense[0]._discretization
    lo = min(p._lower_loss for p in dense)
    hi = max(p._lower_loss + p.size for p in dense)
    probs = np.zeros(hi - lo, dtype=np.float64)
    inf_mass = 0.0
    for p in dense:
        start = p._lower_loss - lo
        probs[start : start + p.size] += p._probs
        inf_mass += p._infinity_mass
    return pld_pmf.DensePLDPmf(d, lo, probs, inf_mass, True)


def _threshold_pair_pld(w: ThresholdWeights, noise_multiplier: float, discretization: float) -> Any:
    """PLD (remove and add pmfs) of one (with, without) pair of a threshold round.

    Removal direction (upper = with x): the release part is R times the
    Poisson-subsampled Gaussian PLD at q' shifted by log(R / c); the skip is an
    atom of mass s₁ at log(s₁ / s₀). The other direction (upper = without x)
    is c times the subsampled Gaussian's *add* PLD at q' shifted by log(c / R),
    plus the atom s₀ at log(s₀ / s₁). Both are exact decompositions of the
    two output distributions; dp_accounting's pessimistic discretization and
    our upward rounding of the shifts keep the result an upper bound.
    """
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

    base = poisson_pld(float(noise_multiplier), float(w.effective_rate), float(discretization))
    s1, s0, big_r, c = w.skipped_with, w.skipped_without, w.released_with, w.released_without
    remove_parts, add_parts = [], []
    if big_r > 0:
        if c > 0:
            remove_parts.append(_shifted(base._pmf_remove, math.log(big_r / c), big_r))
        else:
            remove_parts.append(_atom(math.inf, big_r, discretization))
    if s1 > 0:
        remove_parts.append(_atom(math.log(s1 / s0) if s0 > 0 else math.inf, s1, discretization))
    if c > 0:
        if big_r > 0:
            add_parts.append(_shifted(base._pmf_add, math.log(c / big_r), c))
        else:
            add_parts.append(_atom(math.inf, c, discretization))
    if s0 > 0:
        add_parts.append(_atom(math.log(s0 / s1) if s1 > 0 else math.inf, s0, discretization))
    return pld_lib.PrivacyLossDistribution(_mix(remove_parts), _mix(add_parts))


@functools.lru_cache(maxsize=256)
def poisson_pld(noise_multiplier: float, sample_rate: float, discretization: float) -> Any:
    """dp_accounting PLD of one Poisson-subsampled Gaussian (q = 1: a Gaussian), cached:
    building the pmf is the expensive part and ledgers repeat (σ, q)."""
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

    return pld_lib.from_gaussian_mechanism(
        standard_deviation=noise_multiplier,
        sampling_prob=sample_rate,
        value_discretization_interval=discretization,
    )


@functools.lru_cache(maxsize=256)
def _threshold_pld_cached(
    z: float, q: float, n: int, m: int, discretization: float
) -> tuple[Any, Any]:
    a, b = (
        _threshold_pair_pld(
            threshold_weights(sample_rate=q, others=others, min_clients=m), z, discretization
        )
        for others in (max(n - 1, 0), n)
    )
    return a, b


def threshold_pld(
    *,
    noise_multiplier: float,
    sample_rate: float,
    population: int,
    min_clients: int,
    discretization: float = PLD_DISCRETIZATION,
) -> tuple[Any, Any]:
    """dp_accounting PLDs of one threshold round for the two add/remove pairs.

    Returns (PLD for N vs N-1, PLD for N+1 vs N); compose each over rounds
    separately (the neighbouring pair is fixed for the whole run) and take the
    larger ε.
    """
    z = require_positive("noise_multiplier", noise_multiplier)
    q = require_probability("sample_rate", sample_rate)
    n = require_int("population", population, minimum=1)
    m = require_int("min_clients", min_clients, minimum=0)
    return _threshold_pld_cached(float(z), float(q), n, m, float(discretization))
