"""Privacy accounting: sampling modes, an accountant registry, calibration, DDGauss RDP.

State apart from math: :class:`Accountant` is a small stateful object
(``step(*, noise_multiplier, sample_rate)``, ``get_epsilon(delta)``,
``state_dict()``) and every number comes from pure functions (Opacus'
RDP/PRV/GDP analyses, ``dp_accounting`` for sampling without replacement, and
the distributed discrete Gaussian bound below).

Sampling modes and what we claim
--------------------------------
* ``POISSON`` (each client joins a round independently with probability q):
  Poisson-subsampled Gaussian, add/remove-one-client neighbours, rate q.
* ``FULL`` (every client, every round): q = 1, no amplification.
* ``FIXED_SIZE`` (exactly m of N clients, uniformly without replacement):
  there is no amplification theorem for this scheme under add/remove
  neighbours that matches Poisson, and using q = m/N in a Poisson accountant
  can under-report ε. We therefore account it honestly under the *replace-one*
  (substitution) relation with N public, using the subsampled-RDP bound of Wang,
  Balle & Kasiviswanathan (AISTATS 2019, Thm. 27) as implemented by
  ``dp_accounting`` (``SampledWithoutReplacementDpEvent``). Replacing one
  client moves the sum of clipped updates by up to 2C, so the Gaussian enters
  with noise multiplier σ/2. Only the ``"rdp"`` accountant supports this mode,
  and a ledger cannot mix it with add/remove releases.
"""

from __future__ import annotations

import copy
import enum
import functools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import optimize, special, stats

from privacy._validation import (
    require_finite,
    require_int,
    require_positive,
    require_probability,
)
from privacy.errors import ConfigError, PrivacyError

__all__ = [
    "ACCOUNTANTS",
    "RDP_ORDERS",
    "Accountant",
    "PrivacyPlan",
    "PrivacyProjection",
    "ProjectionRow",
    "Sampling",
    "SamplingMode",
    "ddgauss_rdp",
    "ddgauss_tau",
    "plan",
    "project",
    "render_plan",
    "render_projection",
    "rounded_l2_norm_bound",
]

#: RDP orders (the superset of Opacus' and dp_accounting's defaults).
RDP_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024]
)


class SamplingMode(enum.Enum):
    """How the clients of a round are chosen; decides the amplification claimed.

    The one sampling enum of the project: the round engine draws with it and the
    accountant amplifies (or not) by it. ``"fixed"`` and ``"all"`` are accepted as
    the configuration's spellings of FIXED_SIZE and FULL.
    """

    POISSON = "poisson"
    FIXED_SIZE = "fixed_size"
    FULL = "full"

    @classmethod
    def _missing_(cls, value: object) -> SamplingMode | None:
        return {"fixed": cls.FIXED_SIZE, "all": cls.FULL}.get(str(value))


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """A round's sampling scheme.

    Build with :meth:`poisson`, :meth:`fixed_size` or :meth:`full`.
    ``population`` is N (number of eligible clients); ``clients_per_round`` is m
    (expected for Poisson, exact for fixed-size, N for full).
    """

    mode: SamplingMode
    population: int
    clients_per_round: float

    def __post_init__(self) -> None:
        if not isinstance(self.mode, SamplingMode):
            raise TypeError(f"mode must be a SamplingMode, got {type(self.mode).__name__}")
        n = require_int("population", self.population, minimum=1)
        m = require_positive("clients_per_round", self.clients_per_round)
        if m > n:
            raise ConfigError(f"clients_per_round={m} exceeds population={n}")
        if self.mode is SamplingMode.FIXED_SIZE and m != int(m):
            raise ConfigError(f"clients_per_round must be an integer for FIXED_SIZE, got {m}")
        if self.mode is SamplingMode.FULL and m != n:
            raise ConfigError("FULL sampling needs clients_per_round == population")

    @classmethod
    def poisson(cls, *, sample_rate: float, population: int) -> Sampling:
        q = require_probability("sample_rate", sample_rate)
        return cls(
            mode=SamplingMode.POISSON, population=population, clients_per_round=q * population
        )

    @classmethod
    def fixed_size(cls, *, clients_per_round: int, population: int) -> Sampling:
        require_int("clients_per_round", clients_per_round, minimum=1)
        return cls(
            mode=SamplingMode.FIXED_SIZE,
            population=population,
            clients_per_round=float(clients_per_round),
        )

    @classmethod
    def full(cls, *, population: int) -> Sampling:
        return cls(
            mode=SamplingMode.FULL, population=population, clients_per_round=float(population)
        )

    @property
    def sample_rate(self) -> float:
        """The rate the accountant uses: q for Poisson, m/N for fixed-size, 1 for full."""
        if self.mode is SamplingMode.FULL:
            return 1.0
        return self.clients_per_round / self.population


# --------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------


def _opacus_rdp(*, q: float, noise_multiplier: float, steps: int) -> npt.NDArray[np.float64]:
    return steps * np.asarray(_opacus_rdp_one_step(float(q), float(noise_multiplier)))


@functools.lru_cache(maxsize=1024)
def _opacus_rdp_one_step(q: float, noise_multiplier: float) -> tuple[float, ...]:
    # Fractional orders cost ~1 ms each in Opacus; ledgers repeat (q, σ), so
    # cache the one-step curve (RDP composes additively over steps).
    from opacus.accountants.analysis import rdp as rdp_analysis

    return tuple(
        float(x)
        for x in rdp_analysis.compute_rdp(
            q=q, noise_multiplier=noise_multiplier, steps=1, orders=list(RDP_ORDERS)
        )
    )


def _rdp_to_epsilon(rdp: npt.NDArray[np.float64], delta: float) -> float:
    from opacus.accountants.analysis import rdp as rdp_analysis

    if not np.any(rdp > 0):
        return 0.0
    with warnings.catch_warnings():
        # Opacus warns when the optimum sits at the extreme order; with our
        # order range that only happens for ε far outside any useful budget.
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = rdp_analysis.get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)
    return float(eps)


def _gdp_mu_to_epsilon(mu: float, delta: float) -> float:
    """Exact (ε, δ) of μ-GDP (Dong, Roth, Su 2019, Cor. 2.13), solved for ε."""
    if mu <= 0:
        return 0.0

    def delta_of(eps: float) -> float:
        return float(
            stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2)
        )

    if delta_of(0.0) <= delta:
        return 0.0
    hi = 1.0
    while delta_of(hi) > delta:
        hi *= 2
        if hi > 1e6:
            return math.inf
    return float(optimize.brentq(lambda e: delta_of(e) - delta, 0.0, hi, xtol=1e-10))


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


def _subsampled_rdp_upper(alpha: int, q: float, eps_fn: Callable[[int], float]) -> float:
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


@functools.lru_cache(maxsize=256)
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
            out.append(min(_subsampled_rdp_upper(ai, q, lambda ell: eps(float(ell))), eps(ai)))
    return tuple(out)


# --------------------------------------------------------------------------
# Stateful accountant
# --------------------------------------------------------------------------

#: Registry of accountant names; values describe what each computes.
ACCOUNTANTS: Mapping[str, str] = {
    "rdp": "Rényi DP (Opacus compute_rdp; dp_accounting for sampling without replacement)",
    "prv": "Privacy random variables (Opacus PRVAccountant, Gopi et al. 2021), eps_error 0.01",
    "gdp": (
        "Gaussian DP: exact μ-GDP for full participation; Opacus' CLT approximation "
        "for Poisson (constant σ and q only; can under-estimate, Opacus warns)"
    ),
}


@dataclass
class _GaussianStep:
    noise_multiplier: float
    sample_rate: float
    mode: SamplingMode
    population: int | None
    count: int


@dataclass
class _AccountantState:
    gaussian: list[_GaussianStep] = field(default_factory=list)
    extra_rdp: list[list[float]] = field(default_factory=list)


class Accountant:
    """A small stateful accountant selected by name from :data:`ACCOUNTANTS`.

    ``step(*, noise_multiplier, sample_rate)`` records one Gaussian release
    (Poisson-subsampled at ``sample_rate``; pass ``sampling=SamplingMode.FULL``
    with rate 1, or ``SamplingMode.FIXED_SIZE`` with ``population``).
    ``step_rdp(rdp)`` records an arbitrary RDP curve over :data:`RDP_ORDERS`
    (used for distributed discrete Gaussian releases; ``"rdp"`` only).
    """

    def __init__(self, name: str = "rdp") -> None:
        if not isinstance(name, str):
            raise TypeError(f"accountant name must be a str, got {type(name).__name__}")
        if name not in ACCOUNTANTS:
            raise ConfigError(f"unknown accountant {name!r}; choose one of {sorted(ACCOUNTANTS)}")
        self.name = name
        self._state = _AccountantState()

    def __len__(self) -> int:
        return sum(s.count for s in self._state.gaussian) + len(self._state.extra_rdp)

    def copy(self) -> Accountant:
        out = Accountant(self.name)
        out._state = copy.deepcopy(self._state)
        return out

    def step(
        self,
        *,
        noise_multiplier: float,
        sample_rate: float,
        sampling: SamplingMode = SamplingMode.POISSON,
        population: int | None = None,
    ) -> None:
        """Record one Gaussian release with noise multiplier σ (noise std / C)."""
        z = require_positive("noise_multiplier", noise_multiplier)
        q = require_probability("sample_rate", sample_rate)
        if not isinstance(sampling, SamplingMode):
            raise TypeError("sampling must be a SamplingMode")
        if sampling is SamplingMode.FULL and q != 1.0:
            raise ConfigError(f"FULL sampling must be accounted with sample_rate=1, got {q}")
        if sampling is SamplingMode.FIXED_SIZE:
            if population is None:
                raise ConfigError("FIXED_SIZE sampling needs population=N")
            pop = require_int("population", population, minimum=1)
            m = q * pop
            if abs(m - round(m)) > 1e-6:
                raise ConfigError(f"sample_rate*population must be an integer, got {m}")
            if self.name != "rdp":
                raise PrivacyError(
                    f"accountant {self.name!r} cannot account FIXED_SIZE sampling without "
                    "replacement; use 'rdp'"
                )
        else:
            pop = None
        modes = {s.mode is SamplingMode.FIXED_SIZE for s in self._state.gaussian}
        if self._state.extra_rdp:
            modes.add(False)
        if modes and modes != {sampling is SamplingMode.FIXED_SIZE}:
            raise PrivacyError(
                "cannot compose FIXED_SIZE (replace-one) releases with POISSON/FULL "
                "(add/remove) releases in one ledger"
            )
        hist = self._state.gaussian
        if (
            hist
            and hist[-1].noise_multiplier == z
            and hist[-1].sample_rate == q
            and hist[-1].mode is sampling
            and hist[-1].population == pop
        ):
            hist[-1].count += 1
        else:
            hist.append(_GaussianStep(z, q, sampling, pop, 1))

    def step_rdp(self, rdp: Sequence[float] | npt.NDArray[np.float64]) -> None:
        """Record a release given by its RDP curve over :data:`RDP_ORDERS`."""
        arr = np.asarray(rdp, dtype=np.float64)
        if arr.shape != (len(RDP_ORDERS),) or np.any(np.isnan(arr)) or np.any(arr < 0):
            raise ConfigError("rdp must be a non-negative vector over RDP_ORDERS")
        if any(s.mode is SamplingMode.FIXED_SIZE for s in self._state.gaussian):
            raise PrivacyError("cannot compose RDP-curve releases with FIXED_SIZE releases")
        self._require_rdp_capable()
        self._state.extra_rdp.append([float(x) for x in arr])

    def _require_rdp_capable(self) -> None:
        if self.name != "rdp":
            raise PrivacyError(
                f"accountant {self.name!r} cannot compose RDP-curve releases "
                "(distributed discrete Gaussian); use 'rdp'"
            )

    def get_epsilon(self, delta: float) -> float:
        """ε spent so far at ``delta``."""
        d = require_probability("delta", delta)
        if d >= 1.0:
            raise ConfigError("delta must be < 1")
        if len(self) == 0:
            return 0.0
        if self.name == "rdp":
            return self._eps_rdp(d)
        if self.name == "prv":
            return self._eps_prv(d)
        return self._eps_gdp(d)

    def rdp_curve(self) -> npt.NDArray[np.float64]:
        """Total RDP over :data:`RDP_ORDERS` (add/remove releases only)."""
        total = np.zeros(len(RDP_ORDERS), dtype=np.float64)
        for s in self._state.gaussian:
            if s.mode is SamplingMode.FIXED_SIZE:
                raise PrivacyError("FIXED_SIZE releases are accounted by dp_accounting")
            total += _opacus_rdp(
                q=s.sample_rate, noise_multiplier=s.noise_multiplier, steps=s.count
            )
        for extra in self._state.extra_rdp:
            total += np.asarray(extra)
        return total

    def _eps_rdp(self, delta: float) -> float:
        if any(s.mode is SamplingMode.FIXED_SIZE for s in self._state.gaussian):
            return _eps_wor(self._state.gaussian, delta)
        return _rdp_to_epsilon(self.rdp_curve(), delta)

    def _eps_prv(self, delta: float) -> float:
        if self._state.extra_rdp:
            self._require_rdp_capable()
        from opacus.accountants import PRVAccountant

        acc = PRVAccountant()
        # Composition is commutative: merge identical (σ, q) steps so PRV
        # composes one distribution per distinct release, not one per round.
        grouped: dict[tuple[float, float], int] = {}
        for s in self._state.gaussian:
            key = (s.noise_multiplier, s.sample_rate)
            grouped[key] = grouped.get(key, 0) + s.count
        acc.history = [(z, q, n) for (z, q), n in grouped.items()]
        return float(acc.get_epsilon(delta=delta, eps_error=0.01))

    def _eps_gdp(self, delta: float) -> float:
        if self._state.extra_rdp:
            self._require_rdp_capable()
        steps = self._state.gaussian
        if all(s.sample_rate == 1.0 for s in steps):
            # Composition of Gaussian mechanisms is exactly μ-GDP, μ² = Σ T_i/σ_i².
            mu = math.sqrt(sum(s.count / s.noise_multiplier**2 for s in steps))
            return _gdp_mu_to_epsilon(mu, delta)
        if len({(s.noise_multiplier, s.sample_rate) for s in steps}) != 1:
            raise PrivacyError(
                "the GDP (CLT) accountant needs a constant noise multiplier and sample "
                "rate under subsampling; use 'rdp' or 'prv'"
            )
        from opacus.accountants.analysis import gdp as gdp_analysis

        s = steps[0]
        return float(
            gdp_analysis.compute_eps_poisson(
                steps=sum(x.count for x in steps),
                noise_multiplier=s.noise_multiplier,
                sample_rate=s.sample_rate,
                delta=delta,
            )
        )

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (name, Gaussian history, extra RDP curves)."""
        return {
            "name": self.name,
            "gaussian": [
                {
                    "noise_multiplier": s.noise_multiplier,
                    "sample_rate": s.sample_rate,
                    "mode": s.mode.value,
                    "population": s.population,
                    "count": s.count,
                }
                for s in self._state.gaussian
            ],
            "extra_rdp": [list(x) for x in self._state.extra_rdp],
            "orders": list(RDP_ORDERS),
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> Accountant:
        """Inverse of :meth:`state_dict`; raises :class:`ConfigError` on bad input."""
        try:
            out = cls(str(state["name"]))
            if list(state["orders"]) != list(RDP_ORDERS):
                raise ConfigError("accountant state was saved with different RDP orders")
            for g in state["gaussian"]:
                for _ in range(require_int("count", g["count"], minimum=1)):
                    out.step(
                        noise_multiplier=g["noise_multiplier"],
                        sample_rate=g["sample_rate"],
                        sampling=SamplingMode(g["mode"]),
                        population=g["population"],
                    )
            for extra in state["extra_rdp"]:
                out.step_rdp(extra)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"malformed accountant state: {exc!r}") from exc
        return out


def _eps_wor(steps: Sequence[_GaussianStep], delta: float) -> float:
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    acc = RdpAccountant(
        orders=list(RDP_ORDERS),
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE,
    )
    for s in steps:
        pop = s.population
        if pop is None:  # pragma: no cover - guarded in step()
            raise PrivacyError("FIXED_SIZE step without population")
        m = round(s.sample_rate * pop)
        # Replacing one client moves the clipped sum by up to 2C: the
        # replace-one noise multiplier is σC / 2C = σ/2.
        event = dp_accounting.SampledWithoutReplacementDpEvent(
            pop, m, dp_accounting.GaussianDpEvent(s.noise_multiplier / 2.0)
        )
        acc.compose(dp_accounting.SelfComposedDpEvent(event, s.count))
    return float(acc.get_epsilon(delta))


# --------------------------------------------------------------------------
# Calibration and projection
# --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PrivacyPlan:
    """Noise multiplier that reaches ``target_epsilon`` at ``delta`` after ``rounds``."""

    noise_multiplier: float
    epsilon: float
    target_epsilon: float
    delta: float
    rounds: int
    sampling: Sampling
    accountant: str


def _epsilon_for(
    *, noise_multiplier: float, rounds: int, sampling: Sampling, delta: float, accountant: str
) -> float:
    if sampling.mode is SamplingMode.FIXED_SIZE and accountant != "rdp":
        raise PrivacyError(f"accountant {accountant!r} cannot account FIXED_SIZE sampling")
    acc = Accountant(accountant)
    g = _GaussianStep(
        noise_multiplier,
        sampling.sample_rate,
        sampling.mode,
        sampling.population if sampling.mode is SamplingMode.FIXED_SIZE else None,
        rounds,
    )
    acc._state.gaussian.append(g)
    return acc.get_epsilon(delta)


def plan(
    *,
    target_epsilon: float,
    delta: float,
    rounds: int,
    sampling: Sampling,
    accountant: str = "rdp",
    epsilon_tolerance: float = 0.01,
) -> PrivacyPlan:
    """Smallest noise multiplier (within ``epsilon_tolerance``) with ε <= target.

    Poisson and full participation go through Opacus ``get_noise_multiplier``;
    fixed-size sampling (dp_accounting, replace-one) and exact GDP use the same
    doubling-then-bisection search on our own ε function.
    """
    eps_t = require_positive("target_epsilon", target_epsilon)
    d = require_probability("delta", delta)
    T = require_int("rounds", rounds, minimum=1)
    tol = require_positive("epsilon_tolerance", epsilon_tolerance)
    if not isinstance(sampling, Sampling):
        raise TypeError("sampling must be a Sampling")
    if accountant not in ACCOUNTANTS:
        raise ConfigError(f"unknown accountant {accountant!r}; choose one of {sorted(ACCOUNTANTS)}")

    def eps_of(z: float) -> float:
        return _epsilon_for(
            noise_multiplier=z, rounds=T, sampling=sampling, delta=d, accountant=accountant
        )

    use_opacus = sampling.mode is not SamplingMode.FIXED_SIZE and not (
        accountant == "gdp" and sampling.mode is SamplingMode.FULL
    )
    try:
        if use_opacus:
            from opacus.accountants.utils import get_noise_multiplier

            kwargs: dict[str, Any] = {"alphas": list(RDP_ORDERS)} if accountant == "rdp" else {}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                z = float(
                    get_noise_multiplier(
                        target_epsilon=eps_t,
                        target_delta=d,
                        sample_rate=sampling.sample_rate,
                        steps=T,
                        accountant=accountant,
                        epsilon_tolerance=tol,
                        **kwargs,
                    )
                )
        else:
            z = _bisect(eps_of, eps_t, tol)
    except ValueError as exc:
        raise ConfigError(
            f"cannot reach target_epsilon={eps_t} at delta={d} in {T} rounds: {exc}"
        ) from exc
    return PrivacyPlan(
        noise_multiplier=z,
        epsilon=eps_of(z),
        target_epsilon=eps_t,
        delta=d,
        rounds=T,
        sampling=sampling,
        accountant=accountant,
    )


def _bisect(eps_of: Callable[[float], float], target: float, tol: float) -> float:
    lo, hi = 0.0, 1.0
    eps_hi = eps_of(hi)
    while eps_hi > target:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise ValueError("the privacy budget is too low (noise multiplier > 1e6)")
        eps_hi = eps_of(hi)
    while target - eps_hi > tol and hi - lo > 1e-9:
        mid = (lo + hi) / 2
        e = eps_of(mid)
        if e <= target:
            hi, eps_hi = mid, e
        else:
            lo = mid
    return hi


@dataclass(frozen=True, kw_only=True)
class ProjectionRow:
    """One population size: Poisson rate q = m/N, δ used, σ for the target ε, and
    ε reached at the given σ (if one was given)."""

    population: int
    sample_rate: float
    delta: float
    noise_multiplier_for_target: float | None
    epsilon_at_noise_multiplier: float | None


@dataclass(frozen=True, kw_only=True)
class PrivacyProjection:
    """What the same training schedule would cost at other population sizes."""

    target_epsilon: float
    rounds: int
    clients_per_round: int
    accountant: str
    noise_multiplier: float | None
    delta_rule: str
    rows: tuple[ProjectionRow, ...]


def project(
    *,
    target_epsilon: float,
    rounds: int,
    clients_per_round: int,
    populations: Sequence[int] = (300, 3000, 30000),
    delta: float | None = None,
    noise_multiplier: float | None = None,
    accountant: str = "rdp",
) -> PrivacyProjection:
    """ε/σ at each population N for a fixed (expected) clients-per-round m.

    Sampling is Poisson with q = m/N (FULL when m == N). ``delta=None`` uses
    δ = N^-1.1 for each N (so δ stays below 1/N). For each N the row gives the
    σ needed for ``target_epsilon`` and, if ``noise_multiplier`` is given, the ε
    that σ reaches.
    """
    eps_t = require_positive("target_epsilon", target_epsilon)
    T = require_int("rounds", rounds, minimum=1)
    m = require_int("clients_per_round", clients_per_round, minimum=1)
    z = None if noise_multiplier is None else require_positive("noise_multiplier", noise_multiplier)
    rows = []
    for pop in populations:
        n = require_int("population", pop, minimum=1)
        if m > n:
            raise ConfigError(f"clients_per_round={m} exceeds population={n}")
        d = n**-1.1 if delta is None else require_probability("delta", delta)
        sampling = (
            Sampling.full(population=n)
            if m == n
            else Sampling.poisson(sample_rate=m / n, population=n)
        )
        try:
            sigma: float | None = plan(
                target_epsilon=eps_t, delta=d, rounds=T, sampling=sampling, accountant=accountant
            ).noise_multiplier
        except ConfigError:
            sigma = None
        eps = (
            None
            if z is None
            else _epsilon_for(
                noise_multiplier=z, rounds=T, sampling=sampling, delta=d, accountant=accountant
            )
        )
        rows.append(
            ProjectionRow(
                population=n,
                sample_rate=sampling.sample_rate,
                delta=d,
                noise_multiplier_for_target=sigma,
                epsilon_at_noise_multiplier=eps,
            )
        )
    return PrivacyProjection(
        target_epsilon=eps_t,
        rounds=T,
        clients_per_round=m,
        accountant=accountant,
        noise_multiplier=z,
        delta_rule="N^-1.1" if delta is None else f"{delta:g}",
        rows=tuple(rows),
    )


def render_plan(p: PrivacyPlan) -> str:
    """Plain-text rendering of a :class:`PrivacyPlan` (for the CLI)."""
    s = p.sampling
    return "\n".join(
        [
            f"accountant:        {p.accountant}",
            f"sampling:          {s.mode.value} (N={s.population}, m={s.clients_per_round:g}, "
            f"rate={s.sample_rate:.6g})",
            f"rounds:            {p.rounds}",
            f"delta:             {p.delta:.3g}",
            f"target epsilon:    {p.target_epsilon:g}",
            f"noise multiplier:  {p.noise_multiplier:.4f}",
            f"epsilon reached:   {p.epsilon:.4f}",
        ]
    )


def render_projection(p: PrivacyProjection) -> str:
    """Plain-text table of a :class:`PrivacyProjection` (for the CLI)."""
    head = (
        f"Projection: {p.clients_per_round} clients/round (Poisson, q = m/N), "
        f"{p.rounds} rounds, accountant {p.accountant}, delta = {p.delta_rule}"
    )
    cols = f"{'N':>8} {'q':>10} {'delta':>10} {'sigma@eps=' + format(p.target_epsilon, 'g'):>16}"
    if p.noise_multiplier is not None:
        cols += f" {'eps@sigma=' + format(p.noise_multiplier, '.3g'):>16}"
    lines = [head, cols]
    for r in p.rows:
        sig = (
            "unreachable"
            if r.noise_multiplier_for_target is None
            else (f"{r.noise_multiplier_for_target:.4f}")
        )
        line = f"{r.population:>8} {r.sample_rate:>10.5g} {r.delta:>10.3g} {sig:>16}"
        if p.noise_multiplier is not None and r.epsilon_at_noise_multiplier is not None:
            line += f" {r.epsilon_at_noise_multiplier:>16.4f}"
        lines.append(line)
    return "\n".join(lines)
