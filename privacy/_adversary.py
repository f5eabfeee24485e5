"""ε against each adversary of THREAT_MODEL.md, computed from the ledger alone.

Every ε the product reports names the adversary it holds against. Two are
computed here; both are pure functions of the recorded events.

Coordinator (honest-but-curious, with up to c colluding sites)
    It draws the sample and sends every participant the roster, so no
    amplification by sampling holds against it: each client's ε composes the
    rounds that client actually contributed to (``client_ids``), under the
    zero-out relation (the client's update replaced by zeros; who took part is
    known anyway). Per release:

    - central noise: the coordinator adds the noise and sees the exact sum, so
      it is trusted: no DP guarantee against it (ε = ∞);
    - distributed noise *recorded* as inside secure aggregation: the noise of
      the honest survivors, ``sqrt(n - c)`` shares (c colluding sites know and
      subtract theirs; c defaults to what the noise was sized for);
    - distributed noise without (or without a record of) secure aggregation:
      the coordinator saw each noisy update, so it is local DP per client with
      that client's own noise share, and the result says so;
    - the distributed discrete Gaussian: its RDP curve at sampling rate 1 with
      n - c honest survivors (RDP accountant only).

Outside observer (sees the released models only)
    Amplification by sampling holds only if the sample *and its size* stay
    secret from it (``sample_secret`` on every round) and only where the
    amplified analysis is exact for what was released: central noise, with
    Poisson rounds accounted as the threshold mechanism (a round with fewer than
    ``min_clients`` sampled is skipped, visibly, which both reveals the skip and
    raises the inclusion probability of released rounds; add/remove), fixed-size
    rounds under replace-one (RDP), full participation as plain Gaussians. A
    round that replays an earlier round's sample (``same_sample_as``) shares that
    round's sampling: the two releases are one sampled mechanism, not two
    independent ones. Otherwise no amplification: each client composes the rounds
    it contributed to, like the coordinator but with all the released noise
    (central noise protects against observers), and every client when ids were
    not recorded.

Skipped rounds (:class:`SkippedRound`) release nothing about any client's data.
Under zero-out the sample (and so whether a round was skipped) is independent of
the data, so they cost nothing against anyone who knows the sample; only the
amplified observer analysis charges them, as threshold rounds.
"""

from __future__ import annotations

import enum
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from privacy._accounting import create_accountant, require_upper_bound
from privacy._clipping import adaptive_effective_noise_multiplier
from privacy._events import (
    ROUND_ANNOTATIONS,
    DistributedDiscreteGaussianRelease,
    GaussianRelease,
    PrivacyEvent,
    RecordLevelRelease,
    SkippedRound,
    SkipReason,
)
from privacy._mechanisms import (
    FixedSizeGaussianMechanism,
    GaussianMechanism,
    Mechanism,
    NeighbouringRelation,
    NonPrivateMechanism,
    PoissonGaussianMechanism,
    RdpCurveMechanism,
    SamplingMode,
    ThresholdPoissonGaussianMechanism,
)
from privacy._noise import NoisePlacement
from privacy._validation import require_int, require_probability
from privacy.errors import ConfigError, PrivacyError

__all__ = [
    "Adversary",
    "AdversaryEpsilon",
    "EpsilonByAdversary",
    "EpsilonCache",
    "adversary_epsilon",
    "client_composition",
    "epsilon_by_adversary",
    "events_of",
]


class Adversary(enum.Enum):
    """Who a guarantee holds against (THREAT_MODEL.md)."""

    COORDINATOR = "coordinator"
    OUTSIDE_OBSERVER = "outside_observer"

    def describe(self) -> str:
        if self is Adversary.COORDINATOR:
            return "the coordinator (honest-but-curious) and colluding sites"
        return "an outside observer who sees only the released models"


@dataclass(frozen=True, kw_only=True)
class AdversaryEpsilon:
    """ε against one adversary. ``epsilon`` is the headline: the worst client.

    ``per_client`` maps each client id that contributed to a recorded release to
    its own ε (None when every client has the same ε: amplified accounting, or
    no ids recorded). ``unlisted_epsilon`` is the ε of a client that appears in
    no release (0 unless some release recorded no ids and so charged everyone).
    """

    adversary: Adversary
    epsilon: float
    delta: float
    accountant: str
    upper_bound: bool
    relation: NeighbouringRelation
    amplification: bool
    per_client: Mapping[str, float] | None
    unlisted_epsilon: float
    worst_client: str | None
    releases: int
    skipped_rounds: int
    colluding_sites: int | None = None
    colluding_sites_recorded: tuple[int, ...] = ()
    local_dp_releases: int = 0
    central_releases: int = 0
    notes: tuple[str, ...] = ()

    @property
    def guaranteed(self) -> bool:
        """False when ε is infinite (no DP guarantee against this adversary)."""
        return math.isfinite(self.epsilon)

    def distribution(self) -> dict[str, float]:
        """Summary of the per-client ε (count, min, median, p90, max)."""
        if not self.per_client:
            return {"clients": 0}
        vals = sorted(self.per_client.values())
        finite = [v for v in vals if math.isfinite(v)]
        p90 = vals[min(len(vals) - 1, math.ceil(0.9 * len(vals)) - 1)]
        return {
            "clients": len(vals),
            "min": vals[0],
            "median": statistics.median(vals) if finite else math.inf,
            "p90": p90,
            "max": vals[-1],
        }

    def as_dict(self) -> dict[str, Any]:
        def num(x: float) -> float | str:
            return x if math.isfinite(x) else "inf"

        return {
            "adversary": self.adversary.value,
            "epsilon": num(self.epsilon),
            "delta": self.delta,
            "accountant": self.accountant,
            "upper_bound": self.upper_bound,
            "relation": self.relation.value,
            "amplification": self.amplification,
            "worst_client": self.worst_client,
            "unlisted_epsilon": num(self.unlisted_epsilon),
            "releases": self.releases,
            "skipped_rounds": self.skipped_rounds,
            "colluding_sites": self.colluding_sites,
            "colluding_sites_recorded": list(self.colluding_sites_recorded),
            "local_dp_releases": self.local_dp_releases,
            "central_releases": self.central_releases,
            "notes": list(self.notes),
            "distribution": {k: num(v) for k, v in self.distribution().items()},
        }


@dataclass(frozen=True)
class EpsilonByAdversary:
    """One :class:`AdversaryEpsilon` per adversary."""

    coordinator: AdversaryEpsilon
    outside_observer: AdversaryEpsilon

    def __getitem__(self, adversary: Adversary) -> AdversaryEpsilon:
        if adversary is Adversary.COORDINATOR:
            return self.coordinator
        if adversary is Adversary.OUTSIDE_OBSERVER:
            return self.outside_observer
        raise KeyError(adversary)

    def as_dict(self) -> dict[str, Any]:
        return {a.value: self[a].as_dict() for a in Adversary}


@dataclass
class EpsilonCache:
    """Memo of ε per (accountant, δ, composed mechanisms); share it across calls."""

    values: dict[tuple[Any, ...], float] = field(default_factory=dict)

    def epsilon(self, accountant: str, delta: float, items: frozenset[tuple[Any, int]]) -> float:
        key = (accountant, delta, items)
        if key not in self.values:
            acc = create_accountant(accountant)
            # Deterministic order (composition is commutative; floats sum in order).
            for mech, count in sorted(items, key=lambda mc: repr(mc)):
                acc.compose(mech, count)
            self.values[key] = acc.get_epsilon(delta)
        return self.values[key]


def events_of(source: Any) -> tuple[PrivacyEvent, ...]:
    """The events of a ledger, of ledger entries, or of events."""
    if hasattr(source, "events") and not isinstance(source, Sequence):
        return tuple(source.events)
    out = []
    for item in source:
        out.append(item.event if hasattr(item, "event") and hasattr(item, "seq") else item)
    return tuple(out)


# --------------------------------------------------------------------------
# What each release costs one client, seen by each adversary
# --------------------------------------------------------------------------


_CENTRAL_NOTE = (
    "{n} release(s) used central noise: the coordinator adds it and sees the exact sum, "
    "so there is no DP guarantee against the coordinator (it is trusted)"
)
_LOCAL_NOTE = (
    "{n} distributed-noise release(s) without secure aggregation on record: the coordinator "
    "saw each client's noisy update, accounted as local DP per client with that client's "
    "own noise share"
)
_NO_IDS_NOTE = "{n} release(s) recorded no client ids: charged to every client"
_SKIP_NOTE = (
    "{n} skipped round(s): nothing was released; free against anyone who knows the sample "
    "(whether a round is skipped does not depend on any client's data)"
)


def _honest(n: int, c: int) -> int:
    # x is honest; at most the other n - 1 contributors can collude with the coordinator.
    return max(n - c, 1)


def _coordinator_mechanism(
    ev: GaussianRelease | DistributedDiscreteGaussianRelease, colluding: int | None
) -> tuple[Mechanism, str]:
    """(mechanism charged to each contributor, category) against the coordinator."""
    if isinstance(ev, DistributedDiscreteGaussianRelease):
        c = ev.assumed_colluding_clients if colluding is None else colluding
        if ev.in_secure_aggregation:
            curve = ev.rdp(sample_rate=1.0, colluding=min(c, ev.clients_surviving - 1))
            return RdpCurveMechanism(
                tuple(float(x) for x in curve), "distributed discrete Gaussian"
            ), "secagg"
        local = DistributedDiscreteGaussianRelease(
            round=ev.round,
            local_stddev=ev.local_stddev,
            scale=ev.scale,
            clip_norm=ev.clip_norm,
            beta=ev.beta,
            dimension=ev.dimension,
            sampling_mode=ev.sampling_mode,
            sample_rate=ev.sample_rate,
            population=ev.population,
            clients_sampled=1,
            clients_surviving=1,
            min_survivors=1,
        )
        curve = local.rdp(sample_rate=1.0)
        return RdpCurveMechanism(tuple(float(x) for x in curve), "local discrete Gaussian"), "local"
    if ev.placement is NoisePlacement.CENTRAL:
        return NonPrivateMechanism("central noise is added by the coordinator"), "central"
    if ev.per_client_noise_std is None:  # pragma: no cover - validated by the event
        raise PrivacyError("distributed release without per_client_noise_std")
    n, k_rec = ev.clients_surviving, ev.assumed_colluding_clients
    bit_local = (
        None if ev.clipped_count_stddev is None else ev.clipped_count_stddev / math.sqrt(n - k_rec)
    )
    if ev.secure_aggregation is True:
        c = k_rec if colluding is None else colluding
        h = _honest(n, c)
        zv = math.sqrt(h) * ev.per_client_noise_std / ev.clip_norm
        bit = None if bit_local is None else math.sqrt(h) * bit_local
        category = "secagg"
    else:
        zv = ev.per_client_noise_std / ev.clip_norm
        bit = bit_local
        category = "local"
    z = (
        zv
        if bit is None
        else adaptive_effective_noise_multiplier(
            value_noise_multiplier=zv, clipped_count_stddev=bit
        )
    )
    return GaussianMechanism(z), category


def _observer_mechanism(ev: GaussianRelease | DistributedDiscreteGaussianRelease) -> Mechanism:
    """What one release costs a contributor against an observer who knows it contributed."""
    if isinstance(ev, DistributedDiscreteGaussianRelease):
        curve = ev.rdp(sample_rate=1.0)
        return RdpCurveMechanism(tuple(float(x) for x in curve), "distributed discrete Gaussian")
    return GaussianMechanism(ev.noise_multiplier)


class _PerClient:
    """Per-client multisets of mechanisms; ε per distinct multiset (cached)."""

    def __init__(self) -> None:
        self.everyone: Counter[Mechanism] = Counter()
        self.clients: dict[str, Counter[Mechanism]] = {}

    def add(self, mech: Mechanism, clients: Iterable[str] | None) -> None:
        if clients is None:
            self.everyone[mech] += 1
            return
        for cid in clients:
            self.clients.setdefault(cid, Counter())[mech] += 1

    def result(
        self, accountant: str, delta: float, cache: EpsilonCache
    ) -> tuple[dict[str, float], float]:
        def eps(own: Counter[Mechanism]) -> float:
            total = self.everyone + own
            if not total:
                return 0.0
            return cache.epsilon(accountant, delta, frozenset(total.items()))

        per = {cid: eps(own) for cid, own in sorted(self.clients.items())}
        return per, eps(Counter())


def _headline(per: Mapping[str, float], unlisted: float) -> tuple[float, str | None]:
    if not per:
        return unlisted, None
    worst = max(per, key=lambda k: (per[k], k))
    if unlisted > per[worst]:
        return unlisted, None
    return per[worst], worst


def _split(events: Sequence[PrivacyEvent]) -> tuple[list[Any], list[SkippedRound]]:
    releases: list[Any] = []
    skips: list[SkippedRound] = []
    for ev in events:
        if isinstance(ev, GaussianRelease | DistributedDiscreteGaussianRelease):
            releases.append(ev)
        elif isinstance(ev, SkippedRound):
            skips.append(ev)
        elif isinstance(ev, RecordLevelRelease):
            # Another privacy unit (a patient inside one site), accounted per site by
            # the record-level accountant; it is not a client-level release.
            continue
        elif not isinstance(ev, ROUND_ANNOTATIONS):
            raise TypeError(f"not a privacy event: {type(ev).__name__}")
    return releases, skips


def _check_args(delta: float, accountant: str, colluding_sites: int | None) -> float:
    d = require_probability("delta", delta)
    if d >= 1.0:
        raise ConfigError("delta must be < 1")
    create_accountant(accountant)  # rejects unknown names
    if colluding_sites is not None:
        require_int("colluding_sites", colluding_sites, minimum=0)
    return d


def _coordinator(
    releases: Sequence[Any],
    skips: Sequence[SkippedRound],
    *,
    delta: float,
    accountant: str,
    colluding_sites: int | None,
    cache: EpsilonCache,
) -> AdversaryEpsilon:
    pc = _PerClient()
    cats: Counter[str] = Counter()
    no_ids = 0
    recorded: set[int] = set()
    for ev in releases:
        mech, cat = _coordinator_mechanism(ev, colluding_sites)
        cats[cat] += 1
        if ev.placement is NoisePlacement.DISTRIBUTED:
            recorded.add(ev.assumed_colluding_clients)
        if ev.client_ids is None:
            no_ids += 1
        pc.add(mech, ev.client_ids)
    per, unlisted = pc.result(accountant, delta, cache)
    eps, worst = _headline(per, unlisted)
    notes = []
    if cats["central"]:
        notes.append(_CENTRAL_NOTE.format(n=cats["central"]))
    if cats["local"]:
        notes.append(_LOCAL_NOTE.format(n=cats["local"]))
    if no_ids:
        notes.append(_NO_IDS_NOTE.format(n=no_ids))
    if skips:
        notes.append(_SKIP_NOTE.format(n=len(skips)))
    if colluding_sites is not None and recorded and max(recorded) < colluding_sites:
        notes.append(
            f"computed against {colluding_sites} colluding site(s), more than the noise was "
            f"sized for ({max(recorded)})"
        )
    return AdversaryEpsilon(
        adversary=Adversary.COORDINATOR,
        epsilon=eps,
        delta=delta,
        accountant=accountant,
        upper_bound=type(create_accountant(accountant)).upper_bound,
        relation=NeighbouringRelation.ZERO_OUT,
        amplification=False,
        per_client=MappingProxyType(per) if per else None,
        unlisted_epsilon=unlisted,
        worst_client=worst,
        releases=len(releases),
        skipped_rounds=len(skips),
        colluding_sites=colluding_sites,
        colluding_sites_recorded=tuple(sorted(recorded)),
        local_dp_releases=cats["local"],
        central_releases=cats["central"],
        notes=tuple(notes),
    )


def _combine(zs: Sequence[float]) -> float:
    """Noise multiplier of Gaussians that share one sample: 1/sqrt(Σ 1/z²)."""
    return 1.0 / math.sqrt(math.fsum(1.0 / z**2 for z in zs))


def _poisson_round(z: float, q: float, population: int, min_clients: int) -> Mechanism:
    # Without a threshold nothing is ever skipped: the plain Poisson-subsampled Gaussian.
    if min_clients <= 0:
        return PoissonGaussianMechanism(z, q)
    return ThresholdPoissonGaussianMechanism(z, q, population, min_clients)


def _amplified_mechanisms(
    releases: Sequence[Any], skips: Sequence[SkippedRound], accountant: str
) -> tuple[list[Mechanism], NeighbouringRelation] | str:
    """The amplified observer composition, or why it cannot be claimed."""
    if not all(ev.sample_secret for ev in releases) or not all(s.sample_secret for s in skips):
        return "the sample or its size was not kept secret from outside observers"
    if any(
        not isinstance(ev, GaussianRelease) or ev.placement is not NoisePlacement.CENTRAL
        for ev in releases
    ):
        return (
            "distributed noise is sized by the number of survivors, which a sample-secret "
            "analysis would have to hide"
        )
    if any(s.reason is SkipReason.TOO_FEW_SURVIVORS for s in skips):
        return "a round aborted for too few survivors (dropout-dependent aborts are not modelled)"
    # Group releases that share one draw (a replayed sample after a restore).
    root: dict[int, int] = {}
    groups: dict[int, list[GaussianRelease]] = {}
    for ev in releases:
        r = ev.round if ev.same_sample_as is None else root.get(ev.same_sample_as)
        if r is None:
            return f"round {ev.round} names an unknown round {ev.same_sample_as} as its sample"
        root[ev.round] = r
        groups.setdefault(r, []).append(ev)
    mechs: list[Mechanism] = []
    relation: NeighbouringRelation | None = None
    for evs in groups.values():
        first = evs[0]
        if any(e.sampling_mode is not first.sampling_mode for e in evs):
            return "a replayed sample changed its sampling mode"
        z = _combine([e.noise_multiplier for e in evs])
        mode = first.sampling_mode
        if mode is SamplingMode.POISSON:
            if first.min_clients is None or first.population is None:
                return "the skip threshold (min_clients) or the population was not recorded"
            mechs.append(_poisson_round(z, first.sample_rate, first.population, first.min_clients))
            rel = NeighbouringRelation.ADD_REMOVE
        elif mode is SamplingMode.FIXED_SIZE:
            if first.population is None:  # pragma: no cover - validated by the event
                return "the population was not recorded"
            mechs.append(
                FixedSizeGaussianMechanism(
                    z, first.population, round(first.sample_rate * first.population)
                )
            )
            rel = NeighbouringRelation.REPLACE_ONE
        else:
            mechs.append(GaussianMechanism(z))
            rel = NeighbouringRelation.ADD_REMOVE
        if relation is not None and relation is not rel:
            return "the run mixes fixed-size (replace-one) and add/remove rounds"
        relation = rel
    for s in skips:
        if s.sampling_mode is SamplingMode.POISSON:
            if s.noise_multiplier is None or s.population is None:
                return "a skipped round did not record its noise multiplier or population"
            mechs.append(
                _poisson_round(s.noise_multiplier, s.sample_rate, s.population, s.required)
            )
        # A fixed-size or full round is never short of sampled clients.
    probe = create_accountant(accountant)
    for m in mechs:
        if not probe.supports(m):
            return f"accountant {accountant!r} cannot compose {m.describe()}"
    return mechs, relation or NeighbouringRelation.ADD_REMOVE


def _observer(
    releases: Sequence[Any],
    skips: Sequence[SkippedRound],
    *,
    delta: float,
    accountant: str,
    cache: EpsilonCache,
) -> AdversaryEpsilon:
    upper = type(create_accountant(accountant)).upper_bound
    amplified = _amplified_mechanisms(releases, skips, accountant) if releases else "no releases"
    notes: list[str] = []
    if not isinstance(amplified, str):
        mechs, relation = amplified
        items = frozenset(Counter(mechs).items())
        try:
            eps = cache.epsilon(accountant, delta, items)
        except PrivacyError as exc:
            amplified = f"accountant {accountant!r}: {exc}"
        else:
            notes.append(
                "amplification by sampling claimed: the sample and its size were secret from "
                "outside observers; skipped rounds are charged as visible threshold events"
            )
            return AdversaryEpsilon(
                adversary=Adversary.OUTSIDE_OBSERVER,
                epsilon=eps,
                delta=delta,
                accountant=accountant,
                upper_bound=upper,
                relation=relation,
                amplification=True,
                per_client=None,
                unlisted_epsilon=eps,
                worst_client=None,
                releases=len(releases),
                skipped_rounds=len(skips),
                notes=tuple(notes),
            )
    if releases:
        notes.append(f"no amplification by sampling: {amplified}")
    pc = _PerClient()
    no_ids = 0
    for ev in releases:
        if ev.client_ids is None:
            no_ids += 1
        pc.add(_observer_mechanism(ev), ev.client_ids)
    per, unlisted = pc.result(accountant, delta, cache)
    eps, worst = _headline(per, unlisted)
    if no_ids:
        notes.append(_NO_IDS_NOTE.format(n=no_ids))
    if skips:
        notes.append(_SKIP_NOTE.format(n=len(skips)))
    return AdversaryEpsilon(
        adversary=Adversary.OUTSIDE_OBSERVER,
        epsilon=eps,
        delta=delta,
        accountant=accountant,
        upper_bound=upper,
        relation=NeighbouringRelation.ZERO_OUT,
        amplification=False,
        per_client=MappingProxyType(per) if per else None,
        unlisted_epsilon=unlisted,
        worst_client=worst,
        releases=len(releases),
        skipped_rounds=len(skips),
        notes=tuple(notes),
    )


def client_composition(
    source: Any,
    *,
    adversary: Adversary,
    client_id: str,
    colluding_sites: int | None = None,
) -> tuple[Mechanism, ...]:
    """The mechanisms charged to ``client_id`` against ``adversary`` when the sample is
    known (one per release it contributed to, or that recorded no ids).

    What an audit needs to state the claimed trade-off curve of one client.
    """
    releases, _ = _split(events_of(source))
    out: list[Mechanism] = []
    for ev in releases:
        if ev.client_ids is not None and client_id not in ev.client_ids:
            continue
        if adversary is Adversary.COORDINATOR:
            out.append(_coordinator_mechanism(ev, colluding_sites)[0])
        else:
            out.append(_observer_mechanism(ev))
    return tuple(out)


def adversary_epsilon(
    source: Any,
    *,
    adversary: Adversary,
    delta: float,
    accountant: str = "rdp",
    colluding_sites: int | None = None,
    cache: EpsilonCache | None = None,
) -> AdversaryEpsilon:
    """ε against ``adversary`` from a ledger, its entries, or a sequence of events.

    ``colluding_sites`` (coordinator only): evaluate against this many colluding
    sites instead of the number each release's noise was sized for.
    """
    if not isinstance(adversary, Adversary):
        raise TypeError("adversary must be an Adversary")
    d = _check_args(delta, accountant, colluding_sites)
    releases, skips = _split(events_of(source))
    memo = cache if cache is not None else EpsilonCache()
    if adversary is Adversary.COORDINATOR:
        return _coordinator(
            releases,
            skips,
            delta=d,
            accountant=accountant,
            colluding_sites=colluding_sites,
            cache=memo,
        )
    return _observer(releases, skips, delta=d, accountant=accountant, cache=memo)


def epsilon_by_adversary(
    source: Any,
    *,
    delta: float,
    accountant: str = "rdp",
    colluding_sites: int | None = None,
    cache: EpsilonCache | None = None,
) -> EpsilonByAdversary:
    """ε against every adversary (see the module docstring for the rules)."""
    memo = cache if cache is not None else EpsilonCache()
    events = events_of(source)
    return EpsilonByAdversary(
        coordinator=adversary_epsilon(
            events,
            adversary=Adversary.COORDINATOR,
            delta=delta,
            accountant=accountant,
            colluding_sites=colluding_sites,
            cache=memo,
        ),
        outside_observer=adversary_epsilon(
            events,
            adversary=Adversary.OUTSIDE_OBSERVER,
            delta=delta,
            accountant=accountant,
            cache=memo,
        ),
    )


def budget_epsilon(
    events: Sequence[PrivacyEvent],
    *,
    adversary: Adversary,
    delta: float,
    accountant: str,
    colluding_sites: int | None,
    cache: EpsilonCache,
) -> AdversaryEpsilon:
    """The figure a budget gates on (upper-bound accountants only)."""
    require_upper_bound(accountant, purpose="budget enforcement")
    return adversary_epsilon(
        events,
        adversary=adversary,
        delta=delta,
        accountant=accountant,
        colluding_sites=colluding_sites,
        cache=cache,
    )
