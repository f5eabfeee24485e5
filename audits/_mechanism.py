"""The mechanism under test: what a canary audit asks of a training run.

dp_auditorium's three interfaces, for federated rounds:

- the *neighbouring-dataset generator* is a :class:`CanaryPlan`: m canary
  clients, each with a secret bit and a cheap synthetic update (a fixed random
  unit direction times a norm, Andrew et al. 2024), in one of two games that
  match the neighbouring relation of the claim being audited
  (:class:`CanaryGame`);
- the *mechanism under test* is anything with ``run(plan, control=...)``
  returning a :class:`MechanismRun`: the views an adversary has (each round's
  released sum, the final model) and the run's **own ledger**, in which the
  canaries are ordinary clients;
- the *property tester* is the audit (:mod:`audits._canary`).

Plugging in the round engine is one class: ``EngineMechanism.run`` adds the
plan's canaries as extra clients whose local update is
``plan.update(j, round)`` (no data, no training), runs the engine over the
in-memory transport, and returns the released sums it charged, θ_0 - θ_T and
the ledger it wrote. Positive controls are faults injected into that run
(:class:`Control`, e.g. the discrete Gaussian noise share switched off on the
real secure-aggregation path while the ledger records it), never options of
the production API. :class:`GaussianSumMechanism` is the same contract in
closed form (the released sum of clipped updates plus the exact noise
distribution), cheap enough for 10^4 canaries; the round engine is
:class:`audits._canary.EngineMechanism` (the shipped round engine).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from audits._core import Control
from privacy import (
    GaussianRelease,
    PrivacyEvent,
    Sampling,
    distributed_noise_std,
)
from privacy.errors import ConfigError

__all__ = [
    "CANARY_PREFIX",
    "CanaryGame",
    "CanaryPlan",
    "GaussianSumMechanism",
    "MechanismRun",
    "MechanismUnderTest",
    "ProgressFn",
    "zero_out_schedule",
]

CANARY_PREFIX = "__canary_"
#: ``progress(done, total, what)``: called on long work (the CLI prints it).
ProgressFn = Callable[[int, int, str], None]


class CanaryGame(enum.Enum):
    """How a canary's secret bit changes the run (the neighbouring relation audited).

    ``ZERO_OUT``: every canary is a client in a public set of rounds; its secret
    bit decides whether it sends its canary update or zeros. This is the game
    against anyone who knows who took part (the coordinator; an observer when
    ids or counts are published).
    ``ADD_REMOVE``: a canary is in the population with probability ½ and, when
    in, is sampled like any client. The game for an observer from whom the
    sample is secret (sampling-amplified claims).
    """

    ZERO_OUT = "zero_out"
    ADD_REMOVE = "add_remove"


@dataclass(frozen=True, kw_only=True)
class CanaryPlan:
    """m canaries: secret bits, (zero-out) public schedules and synthetic updates.

    Directions are regenerated from ``seed`` in chunks (never all held at once),
    so 10^4 canaries in 10^5 dimensions stay affordable.
    """

    game: CanaryGame
    secrets: npt.NDArray[np.bool_]
    norm: float
    seed: int
    schedule: npt.NDArray[np.bool_] | None = None  # (rounds, m); ZERO_OUT only
    chunk: int = 1024

    def __post_init__(self) -> None:
        if not isinstance(self.game, CanaryGame):
            raise ConfigError("game must be a CanaryGame")
        if self.secrets.ndim != 1 or self.secrets.size < 2:
            raise ConfigError("secrets must be a 1-D array of at least two canaries")
        if not (math.isfinite(self.norm) and self.norm > 0):
            raise ConfigError(f"canary norm must be > 0, got {self.norm!r}")
        if self.game is CanaryGame.ZERO_OUT:
            if self.schedule is None or self.schedule.ndim != 2:
                raise ConfigError("a zero-out plan needs a (rounds, canaries) schedule")
            if self.schedule.shape[1] != self.secrets.size:
                raise ConfigError("schedule and secrets disagree on the number of canaries")
        elif self.schedule is not None:
            raise ConfigError("an add/remove plan samples canaries like clients: no schedule")

    @property
    def size(self) -> int:
        return int(self.secrets.size)

    def ids(self) -> tuple[str, ...]:
        return tuple(f"{CANARY_PREFIX}{j:06d}" for j in range(self.size))

    def directions(self, start: int, stop: int, dim: int) -> npt.NDArray[np.float32]:
        """Unit directions of canaries ``start:stop`` (isotropic in R^dim)."""
        out = np.empty((stop - start, dim), dtype=np.float32)
        c = self.chunk
        for lo in range(start - start % c, stop, c):
            block = self._block(lo // c, dim)
            a, b = max(lo, start), min(lo + c, stop)
            out[a - start : b - start] = block[a - lo : b - lo]
        return out

    def _block(self, index: int, dim: int) -> npt.NDArray[np.float32]:
        n = min(self.chunk, self.size - index * self.chunk)
        rng = np.random.default_rng([self.seed, 91, index])
        d = rng.standard_normal((n, dim), dtype=np.float32)
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        return d

    def vectors(self, indices: npt.NDArray[np.int64], dim: int) -> npt.NDArray[np.float32]:
        """Unit directions of the canaries in ``indices`` (each block generated once)."""
        out = np.empty((indices.size, dim), dtype=np.float32)
        if indices.size == 0:
            return out
        blocks = indices // self.chunk
        for b in np.unique(blocks):
            rows = np.flatnonzero(blocks == b)
            out[rows] = self._block(int(b), dim)[indices[rows] - int(b) * self.chunk]
        return out

    def update(self, j: int, dim: int) -> npt.NDArray[np.float32]:
        """Canary j's local update: ``norm`` along its direction if its bit is set, else zeros."""
        if not self.secrets[j] and self.game is CanaryGame.ZERO_OUT:
            return np.zeros(dim, dtype=np.float32)
        return (self.norm * self.directions(j, j + 1, dim)[0]).astype(np.float32)

    def projections(
        self, vectors: npt.NDArray[np.float64], progress: ProgressFn | None = None
    ) -> npt.NDArray[np.float64]:
        """<c_j, v> for every canary j and every column v of ``vectors`` (dim, k)."""
        dim = vectors.shape[0]
        out = np.empty((self.size, vectors.shape[1]), dtype=np.float64)
        v32 = vectors.astype(np.float32)
        for lo in range(0, self.size, self.chunk):
            hi = min(lo + self.chunk, self.size)
            out[lo:hi] = self.directions(lo, hi, dim) @ v32
            if progress is not None:
                progress(hi, self.size, "canary projections")
        return out


@dataclass(frozen=True)
class MechanismRun:
    """The views of one audited run and its own ledger.

    ``released``: (dim, rounds) the noised aggregate of each released round (what
    the coordinator sees under secure aggregation); ``model_delta``: θ_0 - θ_T;
    ``contributed``: (rounds, m) which canaries the ledger records as
    contributors of each released round; ``events``: the run's ledger.
    """

    released: npt.NDArray[np.float64]
    rounds: tuple[int, ...]
    model_delta: npt.NDArray[np.float64]
    contributed: npt.NDArray[np.bool_]
    events: tuple[PrivacyEvent, ...]
    canary_ids: tuple[str, ...]
    noise_multipliers: tuple[float, ...] = ()
    details: dict[str, object] = field(default_factory=dict)

    @property
    def dimension(self) -> int:
        return int(self.released.shape[0])


class MechanismUnderTest(Protocol):
    """One training run of the audited mechanism with the plan's canaries as clients."""

    name: str
    dimension: int
    rounds: int
    sample_rate: float
    delta: float

    def run(
        self, plan: CanaryPlan, *, control: Control, progress: ProgressFn | None = None
    ) -> MechanismRun: ...


@dataclass(kw_only=True)
class GaussianSumMechanism:
    """The federated Gaussian release in closed form, with a real ledger.

    Each round releases the sum of the participants' clipped updates (canaries,
    plus ``background`` clients with random clipped updates standing in for
    real ones) plus Gaussian noise of exactly the distribution the deployed
    path produces: central σC, or distributed shares summing to
    ``sqrt(n - c)`` per-client stds of honest noise. Events are built with the
    real constructors (``GaussianRelease.central/distributed``) and carry the
    canaries as client ids. Add/remove plans sample canaries at ``sample_rate``.
    """

    dimension: int
    rounds: int
    noise_multiplier: float | None  # None: a run without DP (no noise, no ledger)
    clip_norm: float = 1.0
    sample_rate: float = 1.0
    background: int = 0
    distributed: bool = False
    secure_aggregation: bool = True
    colluding_sites: int = 0
    delta: float = 1e-5
    seed: int = 0
    name: str = "gaussian-sum"

    def run(
        self,
        plan: CanaryPlan,
        *,
        control: Control = Control.NONE,
        progress: ProgressFn | None = None,
    ) -> MechanismRun:
        if plan.game is CanaryGame.ZERO_OUT and (
            plan.schedule is None or plan.schedule.shape[0] != self.rounds
        ):
            raise ConfigError("the plan's schedule must cover every round")
        rng = np.random.default_rng([self.seed, 17])
        m, d = plan.size, self.dimension
        ids = plan.ids()
        population = m + self.background
        if plan.game is CanaryGame.ZERO_OUT:
            sampling = Sampling.full(population=population)
        else:
            sampling = Sampling.poisson(sample_rate=self.sample_rate, population=population)
        released = np.zeros((d, self.rounds), dtype=np.float64)
        kept: list[int] = []
        contributed = np.zeros((self.rounds, m), dtype=bool)
        events: list[PrivacyEvent] = []
        zs: list[float] = []
        for t in range(self.rounds):
            if plan.schedule is not None:
                joined = plan.schedule[t].copy()
            else:
                joined = plan.secrets & (rng.random(m) < self.sample_rate)
            idx = np.flatnonzero(joined)
            total = np.zeros(d, dtype=np.float64)
            # Canary updates: only set bits move the sum (a zero-out canary sends zeros).
            active = idx if plan.game is CanaryGame.ADD_REMOVE else idx[plan.secrets[idx]]
            for lo in range(0, active.size, plan.chunk):
                part = active[lo : lo + plan.chunk]
                vec = plan.norm * plan.vectors(part, d).astype(np.float64)
                if control is not Control.CLIPPING_OFF:
                    norms = np.linalg.norm(vec, axis=1, keepdims=True)
                    vec *= np.minimum(1.0, self.clip_norm / np.maximum(norms, 1e-30))
                total += vec.sum(axis=0)
            n_bg = int(np.sum(rng.random(self.background) < self.sample_rate))
            if n_bg:
                g = rng.standard_normal((n_bg, d))
                g *= self.clip_norm / np.linalg.norm(g, axis=1, keepdims=True)
                total += g.sum(axis=0)
            n = idx.size + n_bg
            if n == 0:
                continue
            contributors = [ids[j] for j in idx] + [f"bg{t}_{i}" for i in range(n_bg)]
            if self.noise_multiplier is None:
                released[:, t] = total
                contributed[t] = joined
                kept.append(t)
                zs.append(1.0)
                continue
            if self.distributed:
                m_min = max(self.colluding_sites + 1, n)
                std = distributed_noise_std(
                    noise_multiplier=self.noise_multiplier,
                    clip_norm=self.clip_norm,
                    min_survivors=m_min,
                    assumed_colluding_clients=self.colluding_sites,
                )
                event = GaussianRelease.distributed(
                    round=t,
                    per_client_noise_std=std,
                    clip_norm=self.clip_norm,
                    min_survivors=m_min,
                    sampling=sampling,
                    clients_sampled=n,
                    clients_surviving=n,
                    target_noise_multiplier=self.noise_multiplier,
                    assumed_colluding_clients=self.colluding_sites,
                    client_ids=contributors,
                    secure_aggregation=self.secure_aggregation,
                    sample_secret=plan.game is CanaryGame.ADD_REMOVE,
                    min_clients=0,
                )
                # n shares of std²: one Gaussian of variance n·std² (the same distribution).
                noise_std = math.sqrt(n) * std
            else:
                event = GaussianRelease.central(
                    round=t,
                    noise_multiplier=self.noise_multiplier,
                    clip_norm=self.clip_norm,
                    sampling=sampling,
                    clients_sampled=n,
                    clients_surviving=n,
                    client_ids=contributors,
                    sample_secret=plan.game is CanaryGame.ADD_REMOVE,
                    min_clients=0,
                )
                noise_std = self.noise_multiplier * self.clip_norm
            if control is not Control.NOISE_OFF:
                total += noise_std * rng.standard_normal(d)
            events.append(event)
            zs.append(event.noise_multiplier)
            released[:, t] = total
            contributed[t] = joined
            kept.append(t)
            if progress is not None:
                progress(t + 1, self.rounds, "rounds")
        return MechanismRun(
            released=released[:, kept],
            rounds=tuple(kept),
            model_delta=released[:, kept].sum(axis=1),
            contributed=contributed[kept],
            events=tuple(events),
            canary_ids=ids,
            noise_multipliers=tuple(zs),
            details={"mechanism": self.name, "distributed": self.distributed},
        )


def zero_out_schedule(
    *, canaries: int, rounds: int, participations: int, seed: int
) -> npt.NDArray[np.bool_]:
    """Each canary joins ``participations`` rounds chosen uniformly (public to the attacker)."""
    if not 1 <= participations <= rounds:
        raise ConfigError(f"participations must be in [1, {rounds}], got {participations}")
    rng = np.random.default_rng([seed, 23])
    sched = np.zeros((rounds, canaries), dtype=bool)
    for j in range(canaries):
        sched[rng.choice(rounds, size=participations, replace=False), j] = True
    return sched
