"""What an accountant composes: sampling schemes, neighbouring relations, mechanisms.

A ledger event (:mod:`privacy._events`) records *what was released*; a
mechanism here is *what one adversary's view of that release is*, in the
vocabulary an accountant understands (dp_accounting's ``DpEvent`` idea). The
same release is a Poisson-subsampled Gaussian to an outside observer who does
not know the sample, a plain Gaussian to the coordinator who does, and no
privacy at all to a coordinator who adds the noise itself. The translation
lives in :mod:`privacy._adversary`; accountants (:mod:`privacy._accounting`)
only ever see mechanisms and say with ``supports(mechanism)`` whether they can
compose one.

Every mechanism is a frozen, validated value object. Noise multipliers are
relative to the L2 sensitivity under the add/remove or zero-out relation (the
clip norm C): ``noise std = noise_multiplier * C``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

from privacy._analysis import RDP_ORDERS
from privacy._validation import (
    require_int,
    require_positive,
    require_probability,
)
from privacy.errors import ConfigError

__all__ = [
    "FixedSizeGaussianMechanism",
    "GaussianMechanism",
    "Mechanism",
    "NeighbouringRelation",
    "NonPrivateMechanism",
    "PoissonGaussianMechanism",
    "RdpCurveMechanism",
    "Sampling",
    "SamplingMode",
    "ThresholdPoissonGaussianMechanism",
]


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


class NeighbouringRelation(enum.Enum):
    """Which pairs of client populations a guarantee compares (THREAT_MODEL.md).

    - ``ADD_REMOVE``: one client's whole contribution present or absent (Poisson
      sampling with the sample and its size secret).
    - ``REPLACE_ONE``: one client's contribution replaced by another's, the
      population size N public (fixed-size sampling without replacement). The
      sum moves by up to 2C, so a Gaussian enters with multiplier σ/2.
    - ``ZERO_OUT``: one client's update replaced by zeros; the client still
      takes part, so the population, who took part and how many are public.
      The relation for distributed noise (its level depends on the number of
      survivors) and for any adversary who knows the sample.
    """

    ADD_REMOVE = "add_remove"
    REPLACE_ONE = "replace_one"
    ZERO_OUT = "zero_out"

    def describe(self) -> str:
        return {
            NeighbouringRelation.ADD_REMOVE: ("one client's entire contribution added or removed"),
            NeighbouringRelation.REPLACE_ONE: (
                "one client's contribution replaced by another's (population size public)"
            ),
            NeighbouringRelation.ZERO_OUT: (
                "one client's update replaced by zeros (the population, who took part and "
                "how many are public)"
            ),
        }[self]


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

    @property
    def relation(self) -> NeighbouringRelation:
        """The relation the sampling-amplified accounting of this scheme assumes."""
        if self.mode is SamplingMode.FIXED_SIZE:
            return NeighbouringRelation.REPLACE_ONE
        return NeighbouringRelation.ADD_REMOVE


# --------------------------------------------------------------------------
# Mechanisms
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class GaussianMechanism:
    """One Gaussian release of a sum the client is in (no sampling)."""

    noise_multiplier: float

    def __post_init__(self) -> None:
        require_positive("noise_multiplier", self.noise_multiplier)

    def describe(self) -> str:
        return f"Gaussian(σ={self.noise_multiplier:.4g})"


@dataclass(frozen=True)
class PoissonGaussianMechanism:
    """Poisson-subsampled Gaussian: the client joins with probability ``sample_rate``."""

    noise_multiplier: float
    sample_rate: float

    def __post_init__(self) -> None:
        require_positive("noise_multiplier", self.noise_multiplier)
        require_probability("sample_rate", self.sample_rate)

    def describe(self) -> str:
        return (
            f"Poisson-subsampled Gaussian(σ={self.noise_multiplier:.4g}, q={self.sample_rate:.4g})"
        )


@dataclass(frozen=True)
class FixedSizeGaussianMechanism:
    """Exactly ``sample_size`` of ``population`` clients without replacement, then a
    Gaussian; accounted under replace-one (sensitivity 2C)."""

    noise_multiplier: float
    population: int
    sample_size: int

    def __post_init__(self) -> None:
        require_positive("noise_multiplier", self.noise_multiplier)
        n = require_int("population", self.population, minimum=1)
        m = require_int("sample_size", self.sample_size, minimum=1)
        if m > n:
            raise ConfigError(f"sample_size={m} exceeds population={n}")

    def describe(self) -> str:
        return (
            f"FIXED_SIZE sampling without replacement ({self.sample_size} of "
            f"{self.population}) then Gaussian(σ={self.noise_multiplier:.4g}), replace-one"
        )


@dataclass(frozen=True)
class ThresholdPoissonGaussianMechanism:
    """One Poisson round whose sum is released only if at least ``min_clients`` were
    sampled; otherwise the round is skipped, and the skip is visible.

    What the observer sees is (released or skipped, and the noised sum when
    released), never the sample or its size. Whether the round released depends
    on the sample size, so the skip itself carries information about whether a
    client is in the population; see :func:`privacy._analysis.threshold_weights`.
    ``population`` is N, the number of eligible clients.
    """

    noise_multiplier: float
    sample_rate: float
    population: int
    min_clients: int

    def __post_init__(self) -> None:
        require_positive("noise_multiplier", self.noise_multiplier)
        require_probability("sample_rate", self.sample_rate)
        require_int("population", self.population, minimum=1)
        require_int("min_clients", self.min_clients, minimum=0)

    def describe(self) -> str:
        return (
            f"Poisson round released only with >= {self.min_clients} of {self.population} "
            f"clients (σ={self.noise_multiplier:.4g}, q={self.sample_rate:.4g}, skip visible)"
        )


@dataclass(frozen=True)
class RdpCurveMechanism:
    """A release known only by its RDP curve over :data:`privacy.RDP_ORDERS`
    (the distributed discrete Gaussian of Kairouz, Liu, Steinke 2021)."""

    rdp: tuple[float, ...]
    label: str = "RDP curve"

    def __post_init__(self) -> None:
        if not isinstance(self.rdp, tuple):
            raise TypeError("rdp must be a tuple of floats")
        if len(self.rdp) != len(RDP_ORDERS):
            raise ConfigError(f"rdp must have one value per RDP order ({len(RDP_ORDERS)})")
        # +inf is a valid (vacuous) RDP value at an order; NaN and negatives are not.
        if any(math.isnan(float(x)) or float(x) < 0 for x in self.rdp):
            raise ConfigError("rdp must be a non-negative vector over RDP_ORDERS")

    def describe(self) -> str:
        return f"{self.label} (RDP-curve release)"


@dataclass(frozen=True)
class NonPrivateMechanism:
    """A release with no DP guarantee against this adversary (ε = ∞)."""

    reason: str

    def describe(self) -> str:
        return f"no DP guarantee ({self.reason})"


Mechanism = (
    GaussianMechanism
    | PoissonGaussianMechanism
    | FixedSizeGaussianMechanism
    | ThresholdPoissonGaussianMechanism
    | RdpCurveMechanism
    | NonPrivateMechanism
)

MECHANISM_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        GaussianMechanism,
        PoissonGaussianMechanism,
        FixedSizeGaussianMechanism,
        ThresholdPoissonGaussianMechanism,
        RdpCurveMechanism,
        NonPrivateMechanism,
    )
}
