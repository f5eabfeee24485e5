"""Immutable privacy events, one per release, in the style of ``dp_accounting``.

The meaning of a recorded event never changes: a new kind of release gets a new
event type (and, if a field's meaning must change, a new schema version). Every
event validates itself in ``__post_init__`` so a ledger line that decodes into
an event is also a self-consistent release description.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from privacy._accounting import RDP_ORDERS, Accountant, Sampling, SamplingMode, ddgauss_rdp
from privacy._clipping import adaptive_effective_noise_multiplier
from privacy._noise import NoisePlacement, distributed_effective_noise_multiplier
from privacy._validation import (
    require_finite,
    require_int,
    require_positive,
    require_probability,
)
from privacy.errors import ConfigError

__all__ = [
    "EVENT_TYPES",
    "ClipStatistics",
    "DistributedDiscreteGaussianRelease",
    "GaussianRelease",
    "PrivacyEvent",
    "RecordLevelRelease",
    "event_from_dict",
    "event_to_dict",
]

# Relative tolerance when checking a recorded effective noise multiplier against
# the one recomputed from the recorded noise (JSON round-trips floats exactly;
# this only absorbs the order of float operations).
_REL_TOL = 1e-9


def _check_ids(ids: tuple[str, ...] | None, surviving: int) -> None:
    if ids is None:
        return
    if not isinstance(ids, tuple) or not all(isinstance(i, str) for i in ids):
        raise TypeError("client_ids must be a tuple of str")
    if len(set(ids)) != len(ids):
        raise ConfigError("client_ids contains duplicates")
    if len(ids) != surviving:
        raise ConfigError(f"client_ids lists {len(ids)} clients but clients_surviving={surviving}")


def _check_sampling(mode: Any, rate: float, population: int | None) -> None:
    if not isinstance(mode, SamplingMode):
        raise TypeError(f"sampling_mode must be a SamplingMode, got {type(mode).__name__}")
    require_probability("sample_rate", rate)
    if population is not None:
        require_int("population", population, minimum=1)
    if mode is SamplingMode.FULL and rate != 1.0:
        raise ConfigError(f"FULL sampling has sample_rate 1, got {rate}")
    if mode is SamplingMode.FIXED_SIZE and population is None:
        raise ConfigError("FIXED_SIZE sampling needs population")


@dataclass(frozen=True, kw_only=True)
class GaussianRelease:
    """A noised sum of clipped client updates (optionally with the adaptive-clip bit).

    ``noise_multiplier`` is the *effective* multiplier of the whole release, the
    value the accountant is charged with: for distributed noise it is computed
    from the per-client std and the actual survivors; with adaptive clipping it
    combines the value part and the bit part. Build with :meth:`central` or
    :meth:`distributed` rather than by hand.
    """

    kind: ClassVar[str] = "GaussianRelease"

    round: int
    noise_multiplier: float
    value_noise_multiplier: float
    clip_norm: float
    placement: NoisePlacement
    sampling_mode: SamplingMode
    sample_rate: float
    population: int | None
    clients_sampled: int
    clients_surviving: int
    target_noise_multiplier: float
    min_survivors: int | None = None
    assumed_colluding_clients: int = 0
    per_client_noise_std: float | None = None
    clipped_count_stddev: float | None = None
    client_ids: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        require_int("round", self.round, minimum=0)
        z = require_positive("noise_multiplier", self.noise_multiplier)
        zv = require_positive("value_noise_multiplier", self.value_noise_multiplier)
        c = require_positive("clip_norm", self.clip_norm)
        require_positive("target_noise_multiplier", self.target_noise_multiplier)
        if not isinstance(self.placement, NoisePlacement):
            raise TypeError("placement must be a NoisePlacement")
        _check_sampling(self.sampling_mode, self.sample_rate, self.population)
        sampled = require_int("clients_sampled", self.clients_sampled, minimum=1)
        surviving = require_int("clients_surviving", self.clients_surviving, minimum=1)
        if surviving > sampled:
            raise ConfigError(f"clients_surviving={surviving} exceeds clients_sampled={sampled}")
        k = require_int("assumed_colluding_clients", self.assumed_colluding_clients, minimum=0)
        if self.placement is NoisePlacement.DISTRIBUTED:
            if self.min_survivors is None or self.per_client_noise_std is None:
                raise ConfigError(
                    "a DISTRIBUTED release needs min_survivors and per_client_noise_std"
                )
            expected_zv = distributed_effective_noise_multiplier(
                per_client_std=self.per_client_noise_std,
                clip_norm=c,
                num_survivors=surviving,
                min_survivors=self.min_survivors,
                assumed_colluding_clients=k,
            )
            if not math.isclose(zv, expected_zv, rel_tol=_REL_TOL):
                raise ConfigError(
                    f"value_noise_multiplier={zv} does not match the noise present "
                    f"({expected_zv} from per_client_noise_std and {surviving} survivors)"
                )
        elif self.per_client_noise_std is not None or self.min_survivors is not None:
            raise ConfigError("per_client_noise_std/min_survivors only apply to DISTRIBUTED")
        if self.clipped_count_stddev is None:
            expected_z = zv
        else:
            expected_z = adaptive_effective_noise_multiplier(
                value_noise_multiplier=zv, clipped_count_stddev=self.clipped_count_stddev
            )
        if not math.isclose(z, expected_z, rel_tol=_REL_TOL):
            raise ConfigError(
                f"noise_multiplier={z} is not the effective multiplier {expected_z} of "
                "the value and clip-count noise"
            )
        _check_ids(self.client_ids, surviving)

    @classmethod
    def central(
        cls,
        *,
        round: int,
        noise_multiplier: float,
        clip_norm: float,
        sampling: Sampling,
        clients_sampled: int,
        clients_surviving: int,
        clipped_count_stddev: float | None = None,
        client_ids: Sequence[str] | None = None,
    ) -> GaussianRelease:
        """Server adds N(0, (noise_multiplier·C)²) to the sum (and N(0, σ_b²) to
        the clip-bit sum when ``clipped_count_stddev`` is given)."""
        zv = require_positive("noise_multiplier", noise_multiplier)
        z = (
            zv
            if clipped_count_stddev is None
            else adaptive_effective_noise_multiplier(
                value_noise_multiplier=zv, clipped_count_stddev=clipped_count_stddev
            )
        )
        return cls(
            round=round,
            noise_multiplier=z,
            value_noise_multiplier=zv,
            clip_norm=clip_norm,
            placement=NoisePlacement.CENTRAL,
            sampling_mode=sampling.mode,
            sample_rate=sampling.sample_rate,
            population=sampling.population,
            clients_sampled=clients_sampled,
            clients_surviving=clients_surviving,
            target_noise_multiplier=z,
            clipped_count_stddev=clipped_count_stddev,
            client_ids=None if client_ids is None else tuple(client_ids),
        )

    @classmethod
    def distributed(
        cls,
        *,
        round: int,
        per_client_noise_std: float,
        clip_norm: float,
        min_survivors: int,
        sampling: Sampling,
        clients_sampled: int,
        clients_surviving: int,
        target_noise_multiplier: float,
        assumed_colluding_clients: int = 0,
        per_client_count_stddev: float | None = None,
        client_ids: Sequence[str] | None = None,
    ) -> GaussianRelease:
        """Each surviving client added N(0, per_client_noise_std²) (and
        N(0, per_client_count_stddev²) to its clip bit). The charged multiplier
        is computed from the survivors actually present; fewer than
        ``min_survivors`` raises :class:`DropoutThresholdNotMet`."""
        zv = distributed_effective_noise_multiplier(
            per_client_std=per_client_noise_std,
            clip_norm=clip_norm,
            num_survivors=clients_surviving,
            min_survivors=min_survivors,
            assumed_colluding_clients=assumed_colluding_clients,
        )
        count_std = None
        if per_client_count_stddev is not None:
            honest = clients_surviving - assumed_colluding_clients
            count_std = math.sqrt(honest) * require_positive(
                "per_client_count_stddev", per_client_count_stddev
            )
        z = (
            zv
            if count_std is None
            else adaptive_effective_noise_multiplier(
                value_noise_multiplier=zv, clipped_count_stddev=count_std
            )
        )
        return cls(
            round=round,
            noise_multiplier=z,
            value_noise_multiplier=zv,
            clip_norm=clip_norm,
            placement=NoisePlacement.DISTRIBUTED,
            sampling_mode=sampling.mode,
            sample_rate=sampling.sample_rate,
            population=sampling.population,
            clients_sampled=clients_sampled,
            clients_surviving=clients_surviving,
            target_noise_multiplier=target_noise_multiplier,
            min_survivors=min_survivors,
            assumed_colluding_clients=assumed_colluding_clients,
            per_client_noise_std=per_client_noise_std,
            clipped_count_stddev=count_std,
            client_ids=None if client_ids is None else tuple(client_ids),
        )

    def apply_to(self, accountant: Accountant) -> None:
        """Charge this release to ``accountant``."""
        accountant.step(
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            sampling=self.sampling_mode,
            population=self.population,
        )


@dataclass(frozen=True, kw_only=True)
class DistributedDiscreteGaussianRelease:
    """A SecAgg sum of scaled, rotated, rounded updates plus per-client discrete
    Gaussian noise (Kairouz, Liu, Steinke 2021). ``local_stddev`` is in the
    integer domain (after multiplying by ``scale``). Accounted by its RDP curve
    (:func:`privacy.ddgauss_rdp`), so only the ``"rdp"`` accountant composes it.
    """

    kind: ClassVar[str] = "DistributedDiscreteGaussianRelease"

    round: int
    local_stddev: float
    scale: float
    clip_norm: float
    beta: float
    dimension: int
    sampling_mode: SamplingMode
    sample_rate: float
    population: int | None
    clients_sampled: int
    clients_surviving: int
    min_survivors: int
    assumed_colluding_clients: int = 0
    client_ids: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        require_int("round", self.round, minimum=0)
        require_positive("local_stddev", self.local_stddev)
        require_positive("scale", self.scale)
        require_positive("clip_norm", self.clip_norm)
        b = require_finite("beta", self.beta)
        if not 0.0 <= b < 1.0:
            raise ConfigError(f"beta must be in [0, 1), got {b}")
        require_int("dimension", self.dimension, minimum=1)
        _check_sampling(self.sampling_mode, self.sample_rate, self.population)
        if self.sampling_mode is SamplingMode.FIXED_SIZE:
            raise ConfigError(
                "distributed discrete Gaussian accounting supports POISSON and FULL "
                "sampling only (the subsampling bound used is for Poisson sampling)"
            )
        sampled = require_int("clients_sampled", self.clients_sampled, minimum=1)
        surviving = require_int("clients_surviving", self.clients_surviving, minimum=1)
        if surviving > sampled:
            raise ConfigError(f"clients_surviving={surviving} exceeds clients_sampled={sampled}")
        m = require_int("min_survivors", self.min_survivors, minimum=1)
        k = require_int("assumed_colluding_clients", self.assumed_colluding_clients, minimum=0)
        if k >= m:
            raise ConfigError(f"assumed_colluding_clients={k} must be < min_survivors={m}")
        if surviving < m:
            from privacy.errors import DropoutThresholdNotMet

            raise DropoutThresholdNotMet(
                f"only {surviving} clients survived, below min_survivors={m}: the "
                "discrete Gaussian sum would be under-noised; abort the round"
            )
        _check_ids(self.client_ids, surviving)

    @property
    def noise_multiplier(self) -> float:
        """Continuous-Gaussian equivalent σ√n/(C·scale), for plots only (the
        accountant uses the exact RDP curve with the τ term)."""
        honest = self.clients_surviving - self.assumed_colluding_clients
        return math.sqrt(honest) * self.local_stddev / (self.clip_norm * self.scale)

    def rdp(self) -> npt.NDArray[np.float64]:
        """RDP curve over :data:`privacy.RDP_ORDERS`."""
        return ddgauss_rdp(
            local_stddev=self.local_stddev,
            num_survivors=self.clients_surviving,
            scale=self.scale,
            clip_norm=self.clip_norm,
            dimension=self.dimension,
            beta=self.beta,
            sample_rate=self.sample_rate,
            assumed_colluding_clients=self.assumed_colluding_clients,
            orders=RDP_ORDERS,
        )

    def apply_to(self, accountant: Accountant) -> None:
        """Charge this release to ``accountant`` (``"rdp"`` only)."""
        accountant.step_rdp(self.rdp())


@dataclass(frozen=True, kw_only=True)
class ClipStatistics:
    """Post-processing annotation written *after* round ``round``'s release:
    the noisy unclipped fraction it revealed and the clip norm it implies for
    the next round. Costs no privacy (it is a function of an accounted release);
    recorded so the report can plot it."""

    kind: ClassVar[str] = "ClipStatistics"

    round: int
    unclipped_fraction: float
    next_clip_norm: float

    def __post_init__(self) -> None:
        require_int("round", self.round, minimum=0)
        require_finite("unclipped_fraction", self.unclipped_fraction)
        require_positive("next_clip_norm", self.next_clip_norm)

    def apply_to(self, accountant: Accountant) -> None:
        """No privacy cost."""
        del accountant


@dataclass(frozen=True, kw_only=True)
class RecordLevelRelease:
    """One site's record-level (person-level) DP-SGD release in one round.

    The site ran ``sum(steps)`` local gradient steps; in each, every privacy
    unit of the pool it drew from (a record, or all of one person's records
    when ``unit`` names a person column) was included independently with
    probability ``sample_rates[i]`` (``steps[i]`` steps at that rate; rate 1
    means the whole pool), its gradient was clipped to L2 norm ``clip_norm``
    and N(0, (noise_multiplier * clip_norm)^2) was added to the sum before it
    was used. Composed per site, never with client-level releases and never
    across sites (no amplification across sites is claimed): each step is a
    Poisson-subsampled Gaussian under add/remove-one-unit neighbours, and every
    step the site takes in every round it joins adds up.

    Unlike client-level releases, a site's record-level releases carry no
    round-order constraint: a coordinator that resumes from a checkpoint may
    ask a site for the same round again, and the second answer is a second
    release, charged again.
    """

    kind: ClassVar[str] = "RecordLevelRelease"

    round: int
    site_id: str
    unit: str
    noise_multiplier: float
    clip_norm: float
    sample_rates: tuple[float, ...]
    steps: tuple[int, ...]

    def __post_init__(self) -> None:
        require_int("round", self.round, minimum=0)
        for name in ("site_id", "unit"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                raise ConfigError(f"{name} must be a non-empty str, got {v!r}")
        require_positive("noise_multiplier", self.noise_multiplier)
        require_positive("clip_norm", self.clip_norm)
        if not isinstance(self.sample_rates, tuple) or not isinstance(self.steps, tuple):
            raise TypeError("sample_rates and steps must be tuples")
        if len(self.sample_rates) != len(self.steps) or not self.steps:
            raise ConfigError(
                f"sample_rates ({len(self.sample_rates)}) and steps ({len(self.steps)}) "
                "must be non-empty and of equal length"
            )
        for q in self.sample_rates:
            require_probability("sample_rate", q)
        for k in self.steps:
            require_int("steps", k, minimum=1)
        if len(set(self.sample_rates)) != len(self.sample_rates):
            raise ConfigError("sample_rates must not repeat (merge the step counts)")

    @property
    def total_steps(self) -> int:
        return sum(self.steps)

    def apply_to(self, accountant: Accountant) -> None:
        """Charge every step (to a record-level accountant of this site)."""
        for q, k in zip(self.sample_rates, self.steps, strict=True):
            mode = SamplingMode.FULL if q == 1.0 else SamplingMode.POISSON
            for _ in range(k):
                accountant.step(
                    noise_multiplier=self.noise_multiplier, sample_rate=q, sampling=mode
                )


PrivacyEvent = (
    GaussianRelease | DistributedDiscreteGaussianRelease | ClipStatistics | RecordLevelRelease
)

EVENT_TYPES: Mapping[str, type[Any]] = {
    cls.kind: cls
    for cls in (
        GaussianRelease,
        DistributedDiscreteGaussianRelease,
        ClipStatistics,
        RecordLevelRelease,
    )
}


def event_to_dict(event: PrivacyEvent) -> dict[str, Any]:
    """JSON-ready dict of an event's fields (enums by value, tuples as lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(event):
        v = getattr(event, f.name)
        if isinstance(v, enum.Enum):
            v = v.value
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


_ENUM_FIELDS: Mapping[str, type[enum.Enum]] = {
    "placement": NoisePlacement,
    "sampling_mode": SamplingMode,
}


# List-valued fields (JSON arrays) stored as tuples, per event type.
_TUPLE_FIELDS: Mapping[str, tuple[str, ...]] = {
    "RecordLevelRelease": ("sample_rates", "steps"),
}


def event_from_dict(kind: str, data: Mapping[str, Any]) -> PrivacyEvent:
    """Rebuild (and thereby re-validate) an event; raises ``ConfigError``/``TypeError``."""
    cls = EVENT_TYPES.get(kind)
    if cls is None:
        raise ConfigError(f"unknown event type {kind!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    if set(data) != names:
        raise ConfigError(
            f"{kind} fields mismatch: missing {sorted(names - set(data))}, "
            f"unexpected {sorted(set(data) - names)}"
        )
    kwargs: dict[str, Any] = {}
    for name, v in data.items():
        if name in _ENUM_FIELDS:
            try:
                v = _ENUM_FIELDS[name](v)
            except ValueError as exc:
                raise ConfigError(f"{kind}.{name}: {exc}") from exc
        elif name == "client_ids" and v is not None:
            if not isinstance(v, list):
                raise ConfigError("client_ids must be a list")
            v = tuple(v)
        elif name in _TUPLE_FIELDS.get(kind, ()):
            if not isinstance(v, list):
                raise ConfigError(f"{kind}.{name} must be a list")
            v = tuple(v)
        kwargs[name] = v
    event: PrivacyEvent = cls(**kwargs)
    return event
