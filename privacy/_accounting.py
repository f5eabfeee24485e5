"""Accountants: a registry of small stateful classes over the pure math in ``_analysis``.

Shape after Opacus' ``accountants/registry.py``: each accountant is a class
with a ``name`` registered in :data:`ACCOUNTANTS`; :func:`create_accountant`
(or ``Accountant(name)``) builds one and rejects unknown names. State apart
from math: an accountant only records which mechanisms it composed (and how
often); every number comes from :mod:`privacy._analysis`. Events know what
they support (dp_accounting's ``supports(event)``): an accountant refuses a
mechanism it cannot compose with a :class:`PrivacyError` instead of guessing.

Registered accountants
----------------------
``rdp``  Rényi DP (Opacus ``compute_rdp``; dp_accounting for sampling without
         replacement; the distributed discrete Gaussian by its RDP curve). An
         upper bound.
``pld``  Privacy loss distributions (dp_accounting ``PLDAccountant``,
         pessimistic discretization 1e-4); exact μ-GDP for compositions of
         Gaussians. An upper bound, and the tightest we have.
``prv``  Privacy random variables (Opacus ``PRVAccountant``, Gopi et al.
         2021), ε error 0.01. An upper bound.
``gdp``  Gaussian DP: exact μ-GDP without sampling, Opacus' central-limit
         approximation under Poisson sampling (which can *under*-estimate ε).
         Labelled an approximation: it may be shown, never used to calibrate
         noise (:func:`plan`) or to gate a budget.

Sampling modes and what the amplified accounting claims
-------------------------------------------------------
* ``POISSON``: Poisson-subsampled Gaussian, add/remove-one-client, rate q.
* ``FULL``: q = 1, no amplification.
* ``FIXED_SIZE`` (exactly m of N without replacement): there is no
  amplification theorem for this scheme under add/remove that matches Poisson,
  and q = m/N in a Poisson accountant can under-report ε. It is accounted
  under *replace-one* with N public (Wang, Balle, Kasiviswanathan 2019, Thm.
  27, via dp_accounting), sensitivity 2C; only ``rdp`` supports it, and a
  composition cannot mix it with add/remove mechanisms.

Which adversary such an amplified figure holds against is decided in
:mod:`privacy._adversary`: only an outside observer from whom the sample and
its size are secret.
"""

from __future__ import annotations

import abc
import copy
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from privacy import _analysis as analysis
from privacy._analysis import (
    RDP_ORDERS,
    ddgauss_rdp,
    ddgauss_tau,
    rounded_l2_norm_bound,
)
from privacy._mechanisms import (
    MECHANISM_TYPES,
    FixedSizeGaussianMechanism,
    GaussianMechanism,
    Mechanism,
    NeighbouringRelation,
    NonPrivateMechanism,
    PoissonGaussianMechanism,
    RdpCurveMechanism,
    Sampling,
    SamplingMode,
    ThresholdPoissonGaussianMechanism,
)
from privacy._validation import (
    require_int,
    require_positive,
    require_probability,
)
from privacy.errors import ConfigError, PrivacyError

__all__ = [
    "ACCOUNTANTS",
    "RDP_ORDERS",
    "Accountant",
    "GDPAccountant",
    "PLDAccountant",
    "PRVAccountant",
    "PrivacyPlan",
    "PrivacyProjection",
    "ProjectionRow",
    "RDPAccountant",
    "Sampling",
    "SamplingMode",
    "create_accountant",
    "ddgauss_rdp",
    "ddgauss_tau",
    "mechanism_for_sampling",
    "plan",
    "project",
    "register_accountant",
    "require_upper_bound",
    "rounded_l2_norm_bound",
]

_REGISTRY: dict[str, type[Accountant]] = {}

#: Registered accountant classes by name (read-only view of the registry).
ACCOUNTANTS: Mapping[str, type[Accountant]] = MappingProxyType(_REGISTRY)


def register_accountant(cls: type[Accountant]) -> type[Accountant]:
    """Class decorator: add an :class:`Accountant` subclass under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError("an accountant class needs a non-empty str name")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ConfigError(f"accountant {name!r} is already registered")
    _REGISTRY[name] = cls
    return cls


def _lookup(name: Any) -> type[Accountant]:
    if not isinstance(name, str):
        raise TypeError(f"accountant name must be a str, got {type(name).__name__}")
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ConfigError(f"unknown accountant {name!r}; choose one of {sorted(_REGISTRY)}")
    return cls


def create_accountant(name: str = "rdp") -> Accountant:
    """A fresh accountant of the registered ``name`` (unknown names are refused)."""
    return _lookup(name)()


def require_upper_bound(name: str, *, purpose: str) -> None:
    """Refuse an accountant that is not an upper bound for ``purpose`` (calibration,
    budget enforcement) with a :class:`ConfigError`."""
    cls = _lookup(name)
    if not cls.upper_bound:
        upper = sorted(n for n, c in _REGISTRY.items() if c.upper_bound)
        raise ConfigError(
            f"accountant {name!r} is an approximation ({cls.description}); it cannot be "
            f"used for {purpose}. Use an upper-bound accountant: {', '.join(upper)}"
        )


def mechanism_for_sampling(*, noise_multiplier: float, sampling: Sampling) -> Mechanism:
    """The sampling-amplified mechanism of one round under ``sampling``."""
    if sampling.mode is SamplingMode.FULL:
        return GaussianMechanism(noise_multiplier)
    if sampling.mode is SamplingMode.FIXED_SIZE:
        return FixedSizeGaussianMechanism(
            noise_multiplier, sampling.population, round(sampling.clients_per_round)
        )
    return PoissonGaussianMechanism(noise_multiplier, sampling.sample_rate)


def _relation_of(mech: Mechanism) -> NeighbouringRelation | None:
    if isinstance(mech, FixedSizeGaussianMechanism):
        return NeighbouringRelation.REPLACE_ONE
    if isinstance(mech, NonPrivateMechanism):
        return None
    return NeighbouringRelation.ADD_REMOVE


class Accountant(abc.ABC):
    """A small stateful accountant: ``compose(mechanism)``, ``get_epsilon(delta)``.

    ``Accountant("rdp")`` is the same as :func:`create_accountant` (it returns
    the registered subclass). ``step(*, noise_multiplier, sample_rate)`` is the
    Opacus-style shortcut for one Gaussian release under a sampling mode;
    ``step_rdp(rdp)`` composes a release known by its RDP curve.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: True when get_epsilon is a valid upper bound (only those may calibrate or gate).
    upper_bound: ClassVar[bool] = True

    def __new__(cls, name: str | None = None) -> Accountant:
        if cls is Accountant:
            if name is None:
                name = "rdp"
            target = _lookup(name)
            return super().__new__(target)
        if name is not None and name != cls.name:
            raise ConfigError(f"{cls.__name__} is accountant {cls.name!r}, not {name!r}")
        return super().__new__(cls)

    def __init__(self, name: str | None = None) -> None:
        del name  # resolved in __new__
        self._history: list[list[Any]] = []  # [mechanism, count], adjacent repeats merged

    # -- composition -----------------------------------------------------------

    @abc.abstractmethod
    def supports(self, mechanism: Mechanism) -> bool:
        """Whether this accountant can compose ``mechanism``."""

    def _unsupported(self, mechanism: Mechanism) -> str:
        return f"accountant {self.name!r} cannot compose {mechanism.describe()}"

    @property
    def relation(self) -> NeighbouringRelation | None:
        """The neighbouring relation of the composed mechanisms (None if empty)."""
        for mech, _ in self._history:
            rel = _relation_of(mech)
            if rel is not None:
                return rel
        return None

    def compose(self, mechanism: Mechanism, count: int = 1) -> None:
        """Compose ``count`` independent copies of ``mechanism``; refuse what it cannot."""
        if not isinstance(mechanism, tuple(MECHANISM_TYPES.values())):
            raise TypeError(f"not a mechanism: {type(mechanism).__name__}")
        n = require_int("count", count, minimum=1)
        if not self.supports(mechanism):
            raise PrivacyError(self._unsupported(mechanism))
        rel, new = self.relation, _relation_of(mechanism)
        if rel is not None and new is not None and rel is not new:
            raise PrivacyError(
                "cannot compose FIXED_SIZE (replace-one) releases with POISSON/FULL "
                "(add/remove) releases in one accounting"
            )
        if self._history and self._history[-1][0] == mechanism:
            self._history[-1][1] += n
        else:
            self._history.append([mechanism, n])

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
        mech: Mechanism
        if sampling is SamplingMode.FULL:
            if q != 1.0:
                raise ConfigError(f"FULL sampling must be accounted with sample_rate=1, got {q}")
            mech = GaussianMechanism(z)
        elif sampling is SamplingMode.FIXED_SIZE:
            if population is None:
                raise ConfigError("FIXED_SIZE sampling needs population=N")
            pop = require_int("population", population, minimum=1)
            m = q * pop
            if abs(m - round(m)) > 1e-6:
                raise ConfigError(f"sample_rate*population must be an integer, got {m}")
            mech = FixedSizeGaussianMechanism(z, pop, round(m))
        else:
            mech = PoissonGaussianMechanism(z, q)
        self.compose(mech)

    def step_rdp(self, rdp: Sequence[float] | npt.NDArray[np.float64]) -> None:
        """Record a release given by its RDP curve over :data:`RDP_ORDERS`."""
        arr = np.asarray(rdp, dtype=np.float64)
        if arr.shape != (len(RDP_ORDERS),) or np.any(np.isnan(arr)) or np.any(arr < 0):
            raise ConfigError("rdp must be a non-negative vector over RDP_ORDERS")
        self.compose(RdpCurveMechanism(tuple(float(x) for x in arr)))

    def __len__(self) -> int:
        return sum(int(c) for _, c in self._history)

    @property
    def history(self) -> tuple[tuple[Mechanism, int], ...]:
        """What was composed, as (mechanism, count) pairs in order."""
        return tuple((m, int(c)) for m, c in self._history)

    def copy(self) -> Accountant:
        out = type(self)()
        out._history = copy.deepcopy(self._history)
        return out

    # -- privacy spent ---------------------------------------------------------

    def get_epsilon(self, delta: float) -> float:
        """ε spent so far at ``delta`` (math.inf after any non-private release)."""
        d = require_probability("delta", delta)
        if d >= 1.0:
            raise ConfigError("delta must be < 1")
        if not self._history:
            return 0.0
        if any(isinstance(m, NonPrivateMechanism) for m, _ in self._history):
            return math.inf
        return float(self._epsilon(d))

    @abc.abstractmethod
    def _epsilon(self, delta: float) -> float:
        """ε of a non-empty, private history."""

    def _grouped(self) -> dict[Mechanism, int]:
        # Composition is commutative: one entry per distinct mechanism.
        out: dict[Mechanism, int] = {}
        for m, c in self._history:
            out[m] = out.get(m, 0) + int(c)
        return out

    def _gaussian_mu_squared(self) -> float:
        return math.fsum(
            c / m.noise_multiplier**2
            for m, c in self._grouped().items()
            if isinstance(m, GaussianMechanism)
        )

    # -- state -------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: name, RDP orders and the composed mechanisms."""
        return {
            "name": self.name,
            "orders": list(RDP_ORDERS),
            "history": [
                {
                    "mechanism": type(m).__name__,
                    "fields": {
                        f.name: (list(v) if isinstance(v := getattr(m, f.name), tuple) else v)
                        for f in fields(m)
                    },
                    "count": int(c),
                }
                for m, c in self._history
            ],
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> Accountant:
        """Inverse of :meth:`state_dict`; raises :class:`ConfigError` on bad input."""
        try:
            out = create_accountant(str(state["name"]))
            if list(state["orders"]) != list(RDP_ORDERS):
                raise ConfigError("accountant state was saved with different RDP orders")
            for item in state["history"]:
                mcls = MECHANISM_TYPES[str(item["mechanism"])]
                kw = {
                    k: (tuple(v) if isinstance(v, list) else v) for k, v in item["fields"].items()
                }
                out.compose(mcls(**kw), require_int("count", item["count"], minimum=1))
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"malformed accountant state: {exc!r}") from exc
        return out


@register_accountant
class RDPAccountant(Accountant):
    name = "rdp"
    description = "Rényi DP (Opacus compute_rdp; dp_accounting for sampling without replacement)"

    def supports(self, mechanism: Mechanism) -> bool:
        return isinstance(
            mechanism,
            GaussianMechanism
            | PoissonGaussianMechanism
            | FixedSizeGaussianMechanism
            | ThresholdPoissonGaussianMechanism
            | RdpCurveMechanism
            | NonPrivateMechanism,
        )

    def compose(self, mechanism: Mechanism, count: int = 1) -> None:
        if isinstance(mechanism, FixedSizeGaussianMechanism) and any(
            isinstance(m, RdpCurveMechanism | ThresholdPoissonGaussianMechanism)
            for m, _ in self._history
        ):
            raise PrivacyError("cannot compose RDP-curve releases with FIXED_SIZE releases")
        if isinstance(mechanism, RdpCurveMechanism | ThresholdPoissonGaussianMechanism) and any(
            isinstance(m, FixedSizeGaussianMechanism) for m, _ in self._history
        ):
            raise PrivacyError("cannot compose RDP-curve releases with FIXED_SIZE releases")
        super().compose(mechanism, count)

    def rdp_curve(self) -> npt.NDArray[np.float64]:
        """Total RDP over :data:`RDP_ORDERS` (add/remove or zero-out mechanisms only)."""
        total = np.zeros(len(RDP_ORDERS), dtype=np.float64)
        mu2 = self._gaussian_mu_squared()
        if mu2 > 0:
            total += np.asarray(RDP_ORDERS) * mu2 / 2.0
        for m, c in self._grouped().items():
            if isinstance(m, PoissonGaussianMechanism):
                total += analysis.poisson_rdp(
                    q=m.sample_rate, noise_multiplier=m.noise_multiplier, steps=c
                )
            elif isinstance(m, ThresholdPoissonGaussianMechanism):
                total += c * analysis.threshold_rdp(
                    noise_multiplier=m.noise_multiplier,
                    sample_rate=m.sample_rate,
                    population=m.population,
                    min_clients=m.min_clients,
                )
            elif isinstance(m, RdpCurveMechanism):
                total += c * np.asarray(m.rdp, dtype=np.float64)
            elif isinstance(m, FixedSizeGaussianMechanism):
                raise PrivacyError("FIXED_SIZE releases are accounted by dp_accounting")
        return total

    def _epsilon(self, delta: float) -> float:
        grouped = self._grouped()
        if any(isinstance(m, FixedSizeGaussianMechanism) for m in grouped):
            steps = []
            for m, c in grouped.items():
                if isinstance(m, FixedSizeGaussianMechanism):
                    steps.append((m.noise_multiplier, m.population, m.sample_size, c))
                elif isinstance(m, GaussianMechanism):
                    # A full-participation round under replace-one: N of N.
                    raise PrivacyError("cannot compose FULL releases with FIXED_SIZE releases")
            return analysis.fixed_size_epsilon(steps, delta)
        return analysis.rdp_to_epsilon(self.rdp_curve(), delta)


@register_accountant
class PLDAccountant(Accountant):
    name = "pld"
    description = (
        "Privacy loss distributions (dp_accounting PLD, pessimistic, grid 1e-4); exact "
        "μ-GDP for compositions of Gaussians"
    )

    def supports(self, mechanism: Mechanism) -> bool:
        return isinstance(
            mechanism,
            GaussianMechanism
            | PoissonGaussianMechanism
            | ThresholdPoissonGaussianMechanism
            | NonPrivateMechanism,
        )

    def _unsupported(self, mechanism: Mechanism) -> str:
        if isinstance(mechanism, FixedSizeGaussianMechanism):
            return (
                f"accountant {self.name!r} cannot account FIXED_SIZE sampling without "
                "replacement (replace-one); use 'rdp'"
            )
        if isinstance(mechanism, RdpCurveMechanism):
            return (
                f"accountant {self.name!r} cannot compose RDP-curve releases "
                "(distributed discrete Gaussian); use 'rdp'"
            )
        return super()._unsupported(mechanism)

    def _epsilon(self, delta: float) -> float:
        grouped = self._grouped()
        mu2 = self._gaussian_mu_squared()
        sampled = {m: c for m, c in grouped.items() if not isinstance(m, GaussianMechanism)}
        if not sampled:
            # Gaussians compose exactly into one Gaussian: no discretization needed.
            return analysis.gaussian_epsilon(math.sqrt(mu2), delta)
        from dp_accounting.pld import privacy_loss_distribution as pld_lib

        d = analysis.PLD_DISCRETIZATION
        pairs: list[Any] = [None, None]

        def add(i: int, pld: Any) -> None:
            pairs[i] = pld if pairs[i] is None else pairs[i].compose(pld)

        for m, c in sampled.items():
            if isinstance(m, PoissonGaussianMechanism):
                pld = analysis.poisson_pld(float(m.noise_multiplier), float(m.sample_rate), d)
                pld = pld if c == 1 else pld.self_compose(c)
                add(0, pld)
                add(1, pld)
            elif isinstance(m, ThresholdPoissonGaussianMechanism):
                for i, pld in enumerate(
                    analysis.threshold_pld(
                        noise_multiplier=m.noise_multiplier,
                        sample_rate=m.sample_rate,
                        population=m.population,
                        min_clients=m.min_clients,
                        discretization=d,
                    )
                ):
                    add(i, pld if c == 1 else pld.self_compose(c))
        if mu2 > 0:
            g = pld_lib.from_gaussian_mechanism(
                standard_deviation=1.0 / math.sqrt(mu2), value_discretization_interval=d
            )
            add(0, g)
            add(1, g)
        return max(float(p.get_epsilon_for_delta(delta)) for p in pairs if p is not None)


class _GaussianOnlyAccountant(Accountant):
    """An accountant that composes (Poisson-subsampled) Gaussians only: fixed-size
    sampling and RDP-curve releases are refused with the accountant that can."""

    def supports(self, mechanism: Mechanism) -> bool:
        return isinstance(
            mechanism, GaussianMechanism | PoissonGaussianMechanism | NonPrivateMechanism
        )

    def _unsupported(self, mechanism: Mechanism) -> str:
        if isinstance(mechanism, FixedSizeGaussianMechanism):
            return (
                f"accountant {self.name!r} cannot account FIXED_SIZE sampling without "
                "replacement; use 'rdp'"
            )
        if isinstance(mechanism, RdpCurveMechanism):
            return (
                f"accountant {self.name!r} cannot compose RDP-curve releases "
                "(distributed discrete Gaussian); use 'rdp'"
            )
        return super()._unsupported(mechanism)


@register_accountant
class PRVAccountant(_GaussianOnlyAccountant):
    name = "prv"
    description = (
        "Privacy random variables (Opacus PRVAccountant, Gopi et al. 2021), eps_error 0.01"
    )

    def _epsilon(self, delta: float) -> float:
        from opacus.accountants import PRVAccountant as OpacusPRV

        acc = OpacusPRV()
        history = []
        for m, c in self._grouped().items():
            if isinstance(m, GaussianMechanism):
                history.append((m.noise_multiplier, 1.0, c))
            elif isinstance(m, PoissonGaussianMechanism):
                history.append((m.noise_multiplier, m.sample_rate, c))
        acc.history = history
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(acc.get_epsilon(delta=delta, eps_error=0.01))


@register_accountant
class GDPAccountant(_GaussianOnlyAccountant):
    name = "gdp"
    description = (
        "Gaussian DP: exact μ-GDP for full participation; Opacus' CLT approximation "
        "for Poisson (constant σ and q only; can under-estimate, Opacus warns). "
        "An approximation: never used to calibrate or to gate a budget"
    )
    upper_bound = False

    def _epsilon(self, delta: float) -> float:
        grouped = self._grouped()
        poisson = {m: c for m, c in grouped.items() if isinstance(m, PoissonGaussianMechanism)}
        if not poisson:
            return analysis.gaussian_epsilon(math.sqrt(self._gaussian_mu_squared()), delta)
        if len(poisson) != 1 or len(grouped) != 1:
            raise PrivacyError(
                "the GDP (CLT) accountant needs a constant noise multiplier and sample "
                "rate under subsampling; use 'rdp' or 'prv'"
            )
        from opacus.accountants.analysis import gdp as gdp_analysis

        ((m, c),) = poisson.items()
        return float(
            gdp_analysis.compute_eps_poisson(
                steps=c,
                noise_multiplier=m.noise_multiplier,
                sample_rate=m.sample_rate,
                delta=delta,
            )
        )


# --------------------------------------------------------------------------
# Calibration and projection
# --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PrivacyPlan:
    """Noise multiplier that reaches ``target_epsilon`` at ``delta`` after ``rounds``.

    ``participations`` is None for the sampling-amplified plan (valid only
    against an observer from whom the sample and its size are secret), else the
    number of rounds one client may join, composed without amplification (the
    plan against the coordinator).
    """

    noise_multiplier: float
    epsilon: float
    target_epsilon: float
    delta: float
    rounds: int
    sampling: Sampling
    accountant: str
    participations: int | None = None


def _epsilon_for(
    *,
    noise_multiplier: float,
    rounds: int,
    sampling: Sampling,
    delta: float,
    accountant: str,
    participations: int | None = None,
) -> float:
    acc = create_accountant(accountant)
    if participations is not None:
        acc.compose(GaussianMechanism(noise_multiplier), participations)
    else:
        acc.compose(
            mechanism_for_sampling(noise_multiplier=noise_multiplier, sampling=sampling), rounds
        )
    return acc.get_epsilon(delta)


def plan(
    *,
    target_epsilon: float,
    delta: float,
    rounds: int,
    sampling: Sampling,
    accountant: str = "rdp",
    epsilon_tolerance: float = 0.01,
    participations: int | None = None,
) -> PrivacyPlan:
    """Smallest noise multiplier (within ``epsilon_tolerance``) with ε <= target.

    Only upper-bound accountants calibrate (``gdp`` is refused with a
    :class:`ConfigError`). Poisson and full participation under ``rdp``/``prv``
    go through Opacus ``get_noise_multiplier``; everything else uses a
    doubling-then-bisection search on our own ε function. With
    ``participations`` (<= rounds) the plan composes that many Gaussian
    releases per client without amplification: the plan that holds against the
    coordinator, who knows the sample.
    """
    eps_t = require_positive("target_epsilon", target_epsilon)
    d = require_probability("delta", delta)
    T = require_int("rounds", rounds, minimum=1)
    tol = require_positive("epsilon_tolerance", epsilon_tolerance)
    if not isinstance(sampling, Sampling):
        raise TypeError("sampling must be a Sampling")
    require_upper_bound(accountant, purpose="calibration (privacy plan)")
    if participations is not None:
        k = require_int("participations", participations, minimum=1)
        if k > T:
            raise ConfigError(f"participations={k} exceeds rounds={T}")
    if sampling.mode is SamplingMode.FIXED_SIZE and participations is None:
        probe = create_accountant(accountant)
        mech = mechanism_for_sampling(noise_multiplier=1.0, sampling=sampling)
        if not probe.supports(mech):
            raise PrivacyError(f"accountant {accountant!r} cannot account FIXED_SIZE sampling")

    def eps_of(z: float) -> float:
        return _epsilon_for(
            noise_multiplier=z,
            rounds=T,
            sampling=sampling,
            delta=d,
            accountant=accountant,
            participations=participations,
        )

    use_opacus = (
        participations is None
        and sampling.mode is not SamplingMode.FIXED_SIZE
        and accountant in ("rdp", "prv")
    )
    try:
        if use_opacus:
            from opacus.accountants.utils import get_noise_multiplier

            kwargs: dict[str, Any] = {"alphas": list(RDP_ORDERS)} if accountant == "rdp" else {}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
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
        participations=participations,
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
    that σ reaches. Amplified figures: see :class:`PrivacyPlan`.
    """
    eps_t = require_positive("target_epsilon", target_epsilon)
    T = require_int("rounds", rounds, minimum=1)
    m = require_int("clients_per_round", clients_per_round, minimum=1)
    z = None if noise_multiplier is None else require_positive("noise_multiplier", noise_multiplier)
    require_upper_bound(accountant, purpose="calibration (privacy projection)")
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
