"""Round mechanics shared by the simulation and the gRPC coordinator.

- :class:`ClientSampler`: fixed-size without replacement, Poisson with rate q,
  or everyone; the draw is recorded in the round metadata because the privacy
  accountant needs to know which sampling justified which amplification.
- :class:`ServerOptimizer`: SGD or Adam on the packed global state, fed with
  the mean update ``sum / denominator``.
- :class:`UpdatePath`: where each client's flat update goes between the
  algorithm and the server step. The plain path sums; privacy (clip + noise +
  ledger) and secure aggregation are other implementations of the same
  interface, so algorithms never change when they are switched on.
"""

from __future__ import annotations

import enum
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from privacy.errors import ConfigError, DataError

__all__ = [
    "AggregateResult",
    "ClientSampler",
    "PlainSum",
    "RoundContext",
    "SampledRound",
    "SamplingConfig",
    "SamplingMode",
    "ServerOptimizer",
    "ServerOptimizerConfig",
    "ServerOptimizerKind",
    "UpdatePath",
]


class SamplingMode(enum.Enum):
    FIXED = "fixed"  # m clients uniformly without replacement
    POISSON = "poisson"  # each client independently with probability q
    ALL = "all"  # every client every round (no amplification)


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    mode: SamplingMode = SamplingMode.FIXED
    clients_per_round: int | None = 4
    rate: float | None = None

    def __post_init__(self) -> None:
        if self.mode is SamplingMode.FIXED and (
            not isinstance(self.clients_per_round, int) or self.clients_per_round < 1
        ):
            raise ConfigError(
                f"server.clients_per_round must be an integer >= 1 for fixed sampling, "
                f"got {self.clients_per_round!r}"
            )
        if self.mode is SamplingMode.POISSON and (
            self.rate is None or not (0.0 < self.rate <= 1.0)
        ):
            raise ConfigError(
                f"server.sampling_rate must be in (0, 1] for Poisson sampling, got {self.rate!r}"
            )

    def expected_clients(self, population: int) -> float:
        if self.mode is SamplingMode.FIXED:
            assert self.clients_per_round is not None
            return float(min(self.clients_per_round, population))
        if self.mode is SamplingMode.POISSON:
            assert self.rate is not None
            return self.rate * population
        return float(population)

    def sample_rate(self, population: int) -> float:
        """Per-client inclusion probability (q = m / N for fixed-size sampling)."""
        return min(1.0, self.expected_clients(population) / population)


@dataclass(frozen=True)
class SampledRound:
    round: int
    client_ids: tuple[str, ...]
    mode: SamplingMode
    population: int
    rate: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "clients": list(self.client_ids),
            "sampling": self.mode.value,
            "population": self.population,
            "rate": self.rate,
        }


class ClientSampler:
    """Draws the clients of each round from a fixed population."""

    def __init__(
        self, population: Sequence[str], config: SamplingConfig, *, rng: np.random.Generator
    ) -> None:
        if not population:
            raise DataError("cannot sample rounds from an empty client population")
        if config.mode is SamplingMode.FIXED:
            assert config.clients_per_round is not None
            if config.clients_per_round > len(population):
                raise ConfigError(
                    f"server.clients_per_round={config.clients_per_round} exceeds the "
                    f"{len(population)} training clients"
                )
        self.population = tuple(population)
        self.config = config
        self.rng = rng

    def sample(self, round_: int) -> SampledRound:
        n = len(self.population)
        mode = self.config.mode
        if mode is SamplingMode.FIXED:
            assert self.config.clients_per_round is not None
            idx = np.sort(self.rng.choice(n, size=self.config.clients_per_round, replace=False))
        elif mode is SamplingMode.POISSON:
            assert self.config.rate is not None
            idx = np.flatnonzero(self.rng.random(n) < self.config.rate)
        else:
            idx = np.arange(n)
        ids = tuple(self.population[int(i)] for i in idx)
        return SampledRound(round_, ids, mode, n, self.config.sample_rate(n))


class ServerOptimizerKind(enum.Enum):
    SGD = "sgd"
    ADAM = "adam"


@dataclass(frozen=True, kw_only=True)
class ServerOptimizerConfig:
    kind: ServerOptimizerKind = ServerOptimizerKind.ADAM
    lr: float = 1e-3
    momentum: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"server.lr must be a positive number, got {self.lr!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"server.momentum must be in [0, 1), got {self.momentum!r}")


class ServerOptimizer:
    """Applies the mean update to the packed global state (torch's own SGD/Adam)."""

    def __init__(self, state: torch.Tensor, config: ServerOptimizerConfig) -> None:
        self.config = config
        self.param = torch.nn.Parameter(state.detach().clone().float())
        self.opt: torch.optim.Optimizer
        if config.kind is ServerOptimizerKind.ADAM:
            self.opt = torch.optim.Adam(
                [self.param], lr=config.lr, betas=config.betas, eps=config.eps
            )
        else:
            self.opt = torch.optim.SGD([self.param], lr=config.lr, momentum=config.momentum)

    @property
    def state(self) -> torch.Tensor:
        return self.param.detach()

    def step(self, mean_update: torch.Tensor) -> torch.Tensor:
        if mean_update.shape != self.param.shape:
            raise ValueError(
                f"update has shape {tuple(mean_update.shape)}, state {tuple(self.param.shape)}"
            )
        if not bool(torch.isfinite(mean_update).all()):
            raise DataError("aggregated update contains NaN or Inf; refusing to apply it")
        self.param.grad = mean_update.to(self.param.dtype).clone()
        self.opt.step()
        self.param.grad = None
        return self.state

    def state_dict(self) -> dict[str, Any]:
        return {"param": self.param.detach().clone(), "opt": self.opt.state_dict()}

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        with torch.no_grad():
            self.param.copy_(sd["param"])
        self.opt.load_state_dict(dict(sd["opt"]))


@dataclass(frozen=True)
class RoundContext:
    round: int
    sampled: SampledRound
    dim: int


@dataclass(frozen=True)
class AggregateResult:
    """What the server sees: the sum of contributions and how many there were."""

    total: np.ndarray
    count: int
    denominator: float
    contributors: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict)


class UpdatePath(ABC):
    """Client-side transform plus aggregation of the flat updates of one round."""

    def client_side(self, ctx: RoundContext, client_id: str, vector: np.ndarray) -> np.ndarray:
        """Runs on the client before anything leaves it (identity by default)."""
        return vector

    @abstractmethod
    def aggregate(
        self, ctx: RoundContext, contributions: Mapping[str, np.ndarray]
    ) -> AggregateResult:
        """Combine the client-side outputs; the server only learns the result."""

    def summary(self) -> dict[str, Any]:
        return {"update_path": type(self).__name__}


class PlainSum(UpdatePath):
    """No privacy, no masking: the server sums the plaintext updates (baseline)."""

    def aggregate(
        self, ctx: RoundContext, contributions: Mapping[str, np.ndarray]
    ) -> AggregateResult:
        ids = tuple(contributions)
        total = np.zeros(ctx.dim, dtype=np.float64)
        for cid in ids:
            total += contributions[cid]
        return AggregateResult(total.astype(np.float32), len(ids), float(len(ids)), ids)
