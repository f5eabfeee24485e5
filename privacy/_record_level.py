"""Record-level (person-level) accounting per site: ε of a step schedule, calibration, plans.

A site that trains with DP-SGD releases, per round, a *schedule* of local
steps: ``((q_1, k_1), (q_2, k_2), ...)`` means ``k_i`` steps in which each
privacy unit of the pool is included independently with probability ``q_i``
(Poisson sampling; ``q = 1`` is the whole pool), clipped to C and noised with
N(0, σ²C²). Over ``R`` rounds the site's ε is the composition of ``R`` copies of
that schedule, accounted by the same Opacus RDP / PRV analyses as client-level
releases (:class:`privacy.Accountant`). Sites are accounted separately; the
headline of a consortium is its worst site.

The site's size ``n`` (number of units) is treated as public, as Opacus does
for a dataset's size: it sets ``q = B / n`` and the number of steps.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from privacy._accounting import ACCOUNTANTS, Accountant, _bisect, create_accountant
from privacy._mechanisms import GaussianMechanism, PoissonGaussianMechanism
from privacy._validation import require_int, require_positive, require_probability
from privacy.errors import ConfigError

__all__ = [
    "RecordLevelPlan",
    "RecordLevelSitePlan",
    "calibrate_record_level",
    "plan_record_level",
    "record_level_epsilon",
    "record_level_schedule",
    "render_record_level_plan",
]

Schedule = tuple[tuple[float, int], ...]


def _check_schedule(schedule: Sequence[tuple[float, int]]) -> Schedule:
    if not isinstance(schedule, Sequence) or not schedule:
        raise ConfigError("schedule must be a non-empty sequence of (sample_rate, steps)")
    out = []
    for item in schedule:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise ConfigError(f"schedule entries must be (sample_rate, steps), got {item!r}")
        q = require_probability("sample_rate", item[0])
        k = require_int("steps", item[1], minimum=1)
        out.append((q, k))
    return tuple(out)


def _check_accountant(accountant: str) -> str:
    if accountant not in ACCOUNTANTS:
        raise ConfigError(f"unknown accountant {accountant!r}; choose one of {sorted(ACCOUNTANTS)}")
    if accountant == "gdp":
        # Only upper-bound accountants may calibrate or gate a budget.
        raise ConfigError(
            "accountant 'gdp' is an approximation; record-level calibration uses 'rdp' or 'prv'"
        )
    return accountant


def record_level_schedule(
    *,
    site_size: int,
    local_steps: int,
    batch_size: int | None,
    support_fraction: float | None = None,
    inner_steps: int | None = None,
    query_batch_size: int | None = None,
) -> Schedule:
    """The per-round step schedule of a site with ``site_size`` units.

    Local training (FedAvg, Reptile, Per-FedAvg FO): ``local_steps`` steps at
    q = B/n (q = 1 when ``batch_size`` is None or >= n). First-order meta-learning
    (FOMAML, Meta-SGD FO; give ``support_fraction`` and ``inner_steps``):
    ``inner_steps`` support steps at q = B/(p·n) and one query step at
    q = B_q/((1-p)·n), p the support fraction (each unit is in the support set
    with probability p, drawn independently per unit).
    """
    n = require_int("site_size", site_size, minimum=1)

    def rate(b: int | None, pool: float) -> float:
        if b is None:
            return 1.0
        require_int("batch_size", b, minimum=1)
        return min(1.0, b / pool)

    if support_fraction is None:
        return ((rate(batch_size, n), require_int("local_steps", local_steps, minimum=1)),)
    p = require_probability("support_fraction", support_fraction)
    if p >= 1.0:
        raise ConfigError("support_fraction must be < 1")
    k = require_int("inner_steps", inner_steps if inner_steps is not None else 1, minimum=1)
    qs, qq = rate(batch_size, p * n), rate(query_batch_size, (1 - p) * n)
    if qs == qq:
        return ((qs, k + 1),)
    return ((qs, k), (qq, 1))


def _accountant_for(
    noise_multiplier: float, schedule: Schedule, rounds: int, name: str
) -> Accountant:
    acc = create_accountant(name)
    for q, k in schedule:
        mech = (
            GaussianMechanism(noise_multiplier)
            if q == 1.0
            else PoissonGaussianMechanism(noise_multiplier, q)
        )
        acc.compose(mech, count=k * rounds)
    return acc


def record_level_epsilon(
    *,
    noise_multiplier: float,
    schedule: Sequence[tuple[float, int]],
    rounds: int,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """ε at ``delta`` of ``rounds`` repetitions of a per-round step ``schedule`` at σ."""
    z = require_positive("noise_multiplier", noise_multiplier)
    sch = _check_schedule(schedule)
    T = require_int("rounds", rounds, minimum=1)
    d = require_probability("delta", delta)
    if accountant not in ACCOUNTANTS:
        raise ConfigError(f"unknown accountant {accountant!r}; choose one of {sorted(ACCOUNTANTS)}")
    return _accountant_for(z, sch, T, accountant).get_epsilon(d)


def calibrate_record_level(
    *,
    target_epsilon: float,
    delta: float,
    rounds: int,
    schedule: Sequence[tuple[float, int]],
    accountant: str = "rdp",
    epsilon_tolerance: float = 0.01,
) -> float:
    """Smallest σ (within ``epsilon_tolerance`` in ε) whose ε over ``rounds`` is <= target."""
    eps_t = require_positive("target_epsilon", target_epsilon)
    sch = _check_schedule(schedule)
    T = require_int("rounds", rounds, minimum=1)
    d = require_probability("delta", delta)
    name = _check_accountant(accountant)
    tol = require_positive("epsilon_tolerance", epsilon_tolerance)
    return _calibrate_cached(eps_t, sch, T, d, name, tol)


@functools.lru_cache(maxsize=256)
def _calibrate_cached(
    eps_t: float, sch: Schedule, T: int, d: float, name: str, tol: float
) -> float:
    # A pure function of its (validated, hashable) arguments: every site of the same
    # size, and every run of a benchmark grid, asks for the same few calibrations.
    def eps_of(z: float) -> float:
        return _accountant_for(z, sch, T, name).get_epsilon(d)

    try:
        # The upper end of the final bracket: its ε is <= the target.
        return _bisect(eps_of, eps_t, tol)
    except ValueError as exc:
        raise ConfigError(
            f"cannot reach record-level target_epsilon={eps_t} at delta={d} in {T} rounds: {exc}"
        ) from exc


@dataclass(frozen=True, kw_only=True)
class RecordLevelSitePlan:
    """One site: its size, per-round schedule, σ for the target and ε at the common σ."""

    site: str
    size: int
    schedule: Schedule
    noise_multiplier_for_target: float | None
    epsilon_at_own: float | None
    epsilon_at_common: float


@dataclass(frozen=True, kw_only=True)
class RecordLevelPlan:
    """Per-site record-level calibration for one training schedule."""

    target_epsilon: float | None
    delta: float
    rounds: int
    accountant: str
    common_noise_multiplier: float
    sites: tuple[RecordLevelSitePlan, ...]

    @property
    def worst_epsilon(self) -> float:
        """The headline: the worst site's ε at the common σ."""
        return max(s.epsilon_at_common for s in self.sites)


def plan_record_level(
    *,
    site_sizes: Sequence[int],
    rounds: int,
    delta: float,
    local_steps: int = 1,
    batch_size: int | None = None,
    target_epsilon: float | None = None,
    noise_multiplier: float | None = None,
    support_fraction: float | None = None,
    inner_steps: int | None = None,
    query_batch_size: int | None = None,
    accountant: str = "rdp",
    site_names: Sequence[str] | None = None,
) -> RecordLevelPlan:
    """σ per site for ``target_epsilon`` (each site joins every round), or ε per site at
    ``noise_multiplier``; the common σ is the largest per-site σ (or the given one)."""
    if (target_epsilon is None) == (noise_multiplier is None):
        raise ConfigError("give exactly one of target_epsilon and noise_multiplier")
    name = _check_accountant(accountant)
    T = require_int("rounds", rounds, minimum=1)
    d = require_probability("delta", delta)
    sizes = [require_int("site_size", n, minimum=1) for n in site_sizes]
    if not sizes:
        raise ConfigError("site_sizes must list at least one site")
    names = list(site_names) if site_names is not None else [f"site {i}" for i in range(len(sizes))]
    if len(names) != len(sizes):
        raise ConfigError("site_names and site_sizes differ in length")
    schedules = [
        record_level_schedule(
            site_size=n,
            local_steps=local_steps,
            batch_size=batch_size,
            support_fraction=support_fraction,
            inner_steps=inner_steps,
            query_batch_size=query_batch_size,
        )
        for n in sizes
    ]
    own: list[float | None] = [None] * len(sizes)
    if target_epsilon is not None:
        own = [
            calibrate_record_level(
                target_epsilon=target_epsilon, delta=d, rounds=T, schedule=s, accountant=name
            )
            for s in schedules
        ]
        common = max(z for z in own if z is not None)
    else:
        common = require_positive("noise_multiplier", noise_multiplier)
    rows = []
    for nm, n, s, z in zip(names, sizes, schedules, own, strict=True):
        rows.append(
            RecordLevelSitePlan(
                site=nm,
                size=n,
                schedule=s,
                noise_multiplier_for_target=z,
                epsilon_at_own=None
                if z is None
                else record_level_epsilon(
                    noise_multiplier=z, schedule=s, rounds=T, delta=d, accountant=name
                ),
                epsilon_at_common=record_level_epsilon(
                    noise_multiplier=common, schedule=s, rounds=T, delta=d, accountant=name
                ),
            )
        )
    return RecordLevelPlan(
        target_epsilon=target_epsilon,
        delta=d,
        rounds=T,
        accountant=name,
        common_noise_multiplier=common,
        sites=tuple(rows),
    )


def render_record_level_plan(p: RecordLevelPlan) -> str:
    """Plain-text table of a :class:`RecordLevelPlan` (for the CLI)."""

    def sched(s: Schedule) -> str:
        return " + ".join(f"{k}x q={q:.4g}" for q, k in s)

    head = [
        "privacy unit:      record (per site; each site accounted separately, every round)",
        f"accountant:        {p.accountant}",
        f"rounds:            {p.rounds}",
        f"delta:             {p.delta:.3g}",
    ]
    if p.target_epsilon is not None:
        head.append(f"target epsilon:    {p.target_epsilon:g}")
    head.append(f"common sigma:      {p.common_noise_multiplier:.4f}")
    w = max([4, *(len(r.site) for r in p.sites)])
    cols = f"{'site':>{w}} {'n':>7}  {'steps per round':<28}"
    if p.target_epsilon is not None:
        cols += f" {'sigma@target':>12} {'eps@own':>8}"
    cols += f" {'eps@common':>10}"
    lines = [*head, "", cols]
    for r in p.sites:
        line = f"{r.site:>{w}} {r.size:>7}  {sched(r.schedule):<28}"
        if p.target_epsilon is not None:
            line += f" {r.noise_multiplier_for_target:>12.4f} {r.epsilon_at_own:>8.4f}"
        eps = r.epsilon_at_common
        line += f" {eps:>10.4f}" if math.isfinite(eps) else f" {'inf':>10}"
        lines.append(line)
    lines.append("")
    lines.append(f"headline (worst site) epsilon at the common sigma: {p.worst_epsilon:.4f}")
    return "\n".join(lines)
