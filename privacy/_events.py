"""Immutable privacy events, one per round, in the style of ``dp_accounting``.

The meaning of a recorded event never changes: a new kind of release gets a new
event type, and a new field gets a default that means exactly what the older
ledger lines meant (so they stay readable). Every event validates itself in
``__post_init__`` so a ledger line that decodes into an event is also a
self-consistent release description.

Ledger schema 1 -> 2 (what each release now records for per-adversary accounting):

``secure_aggregation``  whether the sum was computed under secure aggregation.
                        ``None`` (schema 1): not recorded. A distributed-noise
                        release without a recorded ``True`` is accounted as
                        local DP against the coordinator, which then saw each
                        noisy update; a discrete-Gaussian release is always
                        inside secure aggregation.
``neighbouring``        the relation the sampling-amplified accounting of this
                        release assumes: add/remove (central noise, Poisson or
                        full), replace-one (fixed size), zero-out (distributed
                        noise, N and the count public). ``None`` (schema 1):
                        implied by the sampling and placement the same way.
``sample_secret``       whether the sample *and its size* were kept from
                        outside observers (no ids, no counts published).
                        ``False`` (schema 1): both were published.
``min_clients``         the sampled-client threshold below which the round is
                        skipped instead of released (``None``: not recorded).
``same_sample_as``      the earlier round whose sample this release reused (a
                        replay after a restore). ``None``: a fresh draw.

``assumed_colluding_clients`` (already in schema 1) is the number of colluding
sites the distributed noise was sized for. New event type: :class:`SkippedRound`.
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
from privacy._mechanisms import NeighbouringRelation
from privacy._noise import NoisePlacement, distributed_effective_noise_multiplier
from privacy._validation import (
    require_finite,
    require_int,
    require_positive,
    require_probability,
)
from privacy.errors import ConfigError

__all__ = [
    "EVENT_SCHEMA_VERSION",
    "EVENT_TYPES",
    "ClipStatistics",
    "DistributedDiscreteGaussianRelease",
    "GaussianRelease",
    "PrivacyEvent",
    "RecordLevelRelease",
    "ReleaseEvent",
    "RoundNotApplied",
    "SkipReason",
    "SkippedRound",
    "event_from_dict",
    "event_to_dict",
    "implied_relation",
]

#: Schema of events written now (1: before per-adversary fields).
EVENT_SCHEMA_VERSION = 2

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


def implied_relation(*, sampling_mode: SamplingMode, distributed: bool) -> NeighbouringRelation:
    """The neighbouring relation the amplified accounting of a release assumes."""
    if distributed:
        # Distributed noise is sized by the number of survivors, which must be
        # public: compare populations that differ in one client's *data*.
        return NeighbouringRelation.ZERO_OUT
    if sampling_mode is SamplingMode.FIXED_SIZE:
        return NeighbouringRelation.REPLACE_ONE
    return NeighbouringRelation.ADD_REMOVE


def _check_accounting_fields(
    event: Any, *, distributed: bool, sampled: int, allow_sample_secret: bool = True
) -> None:
    sa = event.secure_aggregation
    if sa is not None and not isinstance(sa, bool):
        raise TypeError("secure_aggregation must be a bool or None")
    if not isinstance(event.sample_secret, bool):
        raise TypeError("sample_secret must be a bool")
    rel = event.neighbouring
    if rel is not None:
        if not isinstance(rel, NeighbouringRelation):
            raise TypeError("neighbouring must be a NeighbouringRelation")
        expected = implied_relation(sampling_mode=event.sampling_mode, distributed=distributed)
        if rel is not expected:
            raise ConfigError(
                f"neighbouring={rel.value} does not match what the sampling and noise "
                f"placement imply ({expected.value})"
            )
    if event.min_clients is not None:
        m = require_int("min_clients", event.min_clients, minimum=0)
        if sampled < m:
            raise ConfigError(
                f"clients_sampled={sampled} is below min_clients={m}: such a round is "
                "skipped (SkippedRound), never released"
            )
    if event.same_sample_as is not None:
        prev = require_int("same_sample_as", event.same_sample_as, minimum=0)
        if prev >= event.round:
            raise ConfigError(
                f"same_sample_as={prev} must name an earlier round than {event.round}"
            )


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
    # Schema 2 (see the module docstring); the defaults are what schema 1 meant.
    secure_aggregation: bool | None = None
    neighbouring: NeighbouringRelation | None = None
    sample_secret: bool = False
    min_clients: int | None = None
    same_sample_as: int | None = None

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
        _check_accounting_fields(
            self, distributed=self.placement is NoisePlacement.DISTRIBUTED, sampled=sampled
        )

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
        secure_aggregation: bool | None = None,
        sample_secret: bool = False,
        min_clients: int | None = None,
        same_sample_as: int | None = None,
    ) -> GaussianRelease:
        """Server adds N(0, (noise_multiplier·C)²) to the sum (and N(0, σ_b²) to
        the clip-bit sum when ``clipped_count_stddev`` is given). The coordinator
        adds the noise, so it is trusted: against it this release has no DP
        guarantee whatever ``secure_aggregation`` says."""
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
            secure_aggregation=secure_aggregation,
            neighbouring=implied_relation(sampling_mode=sampling.mode, distributed=False),
            sample_secret=sample_secret,
            min_clients=min_clients,
            same_sample_as=same_sample_as,
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
        secure_aggregation: bool | None = None,
        sample_secret: bool = False,
        min_clients: int | None = None,
        same_sample_as: int | None = None,
    ) -> GaussianRelease:
        """Each surviving client added N(0, per_client_noise_std²) (and
        N(0, per_client_count_stddev²) to its clip bit). The charged multiplier
        is computed from the survivors actually present; fewer than
        ``min_survivors`` raises :class:`DropoutThresholdNotMet`. Record
        ``secure_aggregation=True`` only when the server saw nothing but the
        sum; otherwise the coordinator's ε is that of local DP per client."""
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
            secure_aggregation=secure_aggregation,
            neighbouring=implied_relation(sampling_mode=sampling.mode, distributed=True),
            sample_secret=sample_secret,
            min_clients=min_clients,
            same_sample_as=same_sample_as,
        )

    @property
    def relation(self) -> NeighbouringRelation:
        """The recorded relation, or (schema 1) the one the sampling and placement imply."""
        if self.neighbouring is not None:
            return self.neighbouring
        return implied_relation(
            sampling_mode=self.sampling_mode,
            distributed=self.placement is NoisePlacement.DISTRIBUTED,
        )

    def apply_to(self, accountant: Accountant) -> None:
        """Charge this release to ``accountant`` with its sampling-amplified mechanism
        (what the ledger-wide :meth:`PrivacyLedger.epsilon` reports)."""
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
    ``secure_aggregation`` is ``None`` in schema 1 and means *on*: the discrete
    noise is added in secure aggregation's integer domain.
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
    # Schema 2 (see the module docstring).
    secure_aggregation: bool | None = None
    neighbouring: NeighbouringRelation | None = None
    sample_secret: bool = False
    min_clients: int | None = None
    same_sample_as: int | None = None

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
        _check_accounting_fields(self, distributed=True, sampled=sampled)

    @property
    def placement(self) -> NoisePlacement:
        return NoisePlacement.DISTRIBUTED

    @property
    def in_secure_aggregation(self) -> bool:
        return self.secure_aggregation is not False

    @property
    def relation(self) -> NeighbouringRelation:
        return NeighbouringRelation.ZERO_OUT

    @property
    def noise_multiplier(self) -> float:
        """Continuous-Gaussian equivalent σ√n/(C·scale), for plots only (the
        accountant uses the exact RDP curve with the τ term)."""
        honest = self.clients_surviving - self.assumed_colluding_clients
        return math.sqrt(honest) * self.local_stddev / (self.clip_norm * self.scale)

    def rdp(
        self, *, sample_rate: float | None = None, colluding: int | None = None
    ) -> npt.NDArray[np.float64]:
        """RDP curve over :data:`privacy.RDP_ORDERS` (at the recorded sampling rate and
        colluders unless ``sample_rate`` / ``colluding`` say otherwise)."""
        k = self.assumed_colluding_clients if colluding is None else colluding
        return ddgauss_rdp(
            local_stddev=self.local_stddev,
            num_survivors=self.clients_surviving,
            scale=self.scale,
            clip_norm=self.clip_norm,
            dimension=self.dimension,
            beta=self.beta,
            sample_rate=self.sample_rate if sample_rate is None else sample_rate,
            assumed_colluding_clients=min(k, self.clients_surviving - 1),
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
class RoundNotApplied:
    """Annotation written *after* round ``round``'s release: its aggregate never
    changed the model (the round aborted after it was charged, e.g. a refused sum,
    or the coordinator died between the charge and the checkpoint and resumed from
    the round before). The charge stands -- the sum may have been revealed -- and
    this records what became of the round, so no charged round is left without a
    record. Costs no privacy."""

    kind: ClassVar[str] = "RoundNotApplied"

    round: int
    #: What happened (free text: an abort's error, or the crash it was recovered from).
    cause: str

    def __post_init__(self) -> None:
        require_int("round", self.round, minimum=0)
        if not isinstance(self.cause, str) or not self.cause.strip():
            raise ConfigError("cause must be a non-empty string")

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


class SkipReason(enum.Enum):
    """Why a round released nothing."""

    #: Fewer clients were sampled than the round needs. The engine never redraws
    #: within a round (a redraw would condition the sample on its size).
    TOO_FEW_SAMPLED = "too_few_sampled"
    #: Enough were sampled, but fewer survived than the noise was sized for.
    TOO_FEW_SURVIVORS = "too_few_survivors"


@dataclass(frozen=True, kw_only=True)
class SkippedRound:
    """Round ``round`` released no aggregate; recorded so that every round is in the ledger.

    Nothing about any client's data left the round, but the skip itself is
    visible. Against anyone who knows the sample (the coordinator, or an
    observer when ids or counts are published) it costs nothing: who was
    sampled does not depend on the data. Against an outside observer from whom
    the sample is secret, the skip reveals that fewer than ``required`` clients
    were sampled, which depends on whether a client is in the population; that
    is accounted with the round's threshold mechanism (the same one a released
    round of the run is charged with), using ``noise_multiplier`` (the
    multiplier the release would have been charged).

    ``required``: the minimum that was not met (sampled clients for
    ``TOO_FEW_SAMPLED``, survivors for ``TOO_FEW_SURVIVORS``).
    ``client_ids``: who was sampled (nothing of theirs is charged).
    """

    kind: ClassVar[str] = "SkippedRound"

    round: int
    reason: SkipReason
    clients_sampled: int
    required: int
    sampling_mode: SamplingMode
    sample_rate: float
    population: int | None
    noise_multiplier: float | None = None
    placement: NoisePlacement | None = None
    clients_surviving: int | None = None
    sample_secret: bool = False
    client_ids: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        require_int("round", self.round, minimum=0)
        if not isinstance(self.reason, SkipReason):
            raise TypeError("reason must be a SkipReason")
        sampled = require_int("clients_sampled", self.clients_sampled, minimum=0)
        need = require_int("required", self.required, minimum=1)
        _check_sampling(self.sampling_mode, self.sample_rate, self.population)
        if self.noise_multiplier is not None:
            require_positive("noise_multiplier", self.noise_multiplier)
        if self.placement is not None and not isinstance(self.placement, NoisePlacement):
            raise TypeError("placement must be a NoisePlacement or None")
        if not isinstance(self.sample_secret, bool):
            raise TypeError("sample_secret must be a bool")
        if self.reason is SkipReason.TOO_FEW_SAMPLED:
            if self.clients_surviving is not None:
                raise ConfigError("a round skipped for too few sampled has no survivors")
            if sampled >= need:
                raise ConfigError(
                    f"clients_sampled={sampled} meets required={need}: not a skip for "
                    "too few sampled clients"
                )
        else:
            if self.clients_surviving is None:
                raise ConfigError("TOO_FEW_SURVIVORS needs clients_surviving")
            surv = require_int("clients_surviving", self.clients_surviving, minimum=0)
            if surv > sampled or surv >= need:
                raise ConfigError(
                    f"clients_surviving={surv} must be < required={need} and <= "
                    f"clients_sampled={sampled}"
                )
        if self.client_ids is not None:
            _check_ids(self.client_ids, sampled)

    @property
    def min_clients(self) -> int | None:
        """The sampled-client threshold, when that is what was not met."""
        return self.required if self.reason is SkipReason.TOO_FEW_SAMPLED else None

    def apply_to(self, accountant: Accountant) -> None:
        """No cost in the ledger-wide amplified accounting (which ignores skips);
        the per-adversary accounting (:mod:`privacy._adversary`) charges the skip
        where it is visible information."""
        del accountant


ReleaseEvent = GaussianRelease | DistributedDiscreteGaussianRelease
PrivacyEvent = (
    GaussianRelease
    | DistributedDiscreteGaussianRelease
    | ClipStatistics
    | SkippedRound
    | RecordLevelRelease
    | RoundNotApplied
)

#: Events that annotate the release of their round (not a round of their own).
ROUND_ANNOTATIONS = (ClipStatistics, RoundNotApplied)

EVENT_TYPES: Mapping[str, type[Any]] = {
    cls.kind: cls
    for cls in (
        GaussianRelease,
        DistributedDiscreteGaussianRelease,
        ClipStatistics,
        SkippedRound,
        RecordLevelRelease,
        RoundNotApplied,
    )
}

# Fields added in schema 2, per event type: a schema-1 line lacks them and gets
# the default (which means what schema 1 meant); a schema-2 line must have them.
_SCHEMA2_FIELDS: Mapping[str, frozenset[str]] = {
    "GaussianRelease": frozenset(
        {"secure_aggregation", "neighbouring", "sample_secret", "min_clients", "same_sample_as"}
    ),
    "DistributedDiscreteGaussianRelease": frozenset(
        {"secure_aggregation", "neighbouring", "sample_secret", "min_clients", "same_sample_as"}
    ),
    "ClipStatistics": frozenset(),
}
_SCHEMA2_ONLY_TYPES = frozenset({"SkippedRound", "RoundNotApplied"})


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
    "neighbouring": NeighbouringRelation,
    "reason": SkipReason,
}


# List-valued fields (JSON arrays) stored as tuples, per event type.
_TUPLE_FIELDS: Mapping[str, tuple[str, ...]] = {
    "RecordLevelRelease": ("sample_rates", "steps"),
}


def event_from_dict(
    kind: str, data: Mapping[str, Any], *, schema: int = EVENT_SCHEMA_VERSION
) -> PrivacyEvent:
    """Rebuild (and thereby re-validate) an event; raises ``ConfigError``/``TypeError``.

    ``schema`` is the ledger line's schema: schema-1 lines predate the fields in
    :data:`_SCHEMA2_FIELDS` and must not carry them.
    """
    cls = EVENT_TYPES.get(kind)
    if cls is None:
        raise ConfigError(f"unknown event type {kind!r}")
    if schema not in (1, EVENT_SCHEMA_VERSION):
        raise ConfigError(f"unsupported event schema {schema!r}")
    if schema == 1 and kind in _SCHEMA2_ONLY_TYPES:
        raise ConfigError(f"{kind} does not exist in schema 1")
    names = {f.name for f in dataclasses.fields(cls)}
    if schema == 1:
        names -= _SCHEMA2_FIELDS.get(kind, frozenset())
    if set(data) != names:
        raise ConfigError(
            f"{kind} fields mismatch: missing {sorted(names - set(data))}, "
            f"unexpected {sorted(set(data) - names)}"
        )
    kwargs: dict[str, Any] = {}
    for name, v in data.items():
        if name in _ENUM_FIELDS and v is not None:
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
