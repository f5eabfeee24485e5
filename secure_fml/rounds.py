"""Round mechanics used by the round engine (:mod:`secure_fml.engine`).

- :class:`ClientSampler`: fixed-size without replacement, Poisson with rate q,
  or everyone. The sampling mode is the accountant's own value
  (:class:`privacy.SamplingMode`), so the draw and the amplification claimed for
  it can never disagree. Draws come from the CSPRNG, one independent draw per
  round index: a round is never redrawn, and a resumed run never replays a draw
  (in the insecure test mode the draw for round r is a function of (seed, r)).
- :class:`ServerOptimizer`: SGD or Adam on the packed global state, fed with
  the mean update ``sum / denominator``.
"""

from __future__ import annotations

import enum
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from privacy import INSECURE_SEED_WARNING, Csprng, Sampling, SamplingMode
from privacy.errors import CheckpointError, ConfigError, DataError

__all__ = [
    "ClientSampler",
    "SampledRound",
    "SamplingConfig",
    "ServerOptimizer",
    "ServerOptimizerConfig",
    "ServerOptimizerKind",
    "participation_bound",
]


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    mode: SamplingMode = SamplingMode.FIXED_SIZE
    clients_per_round: int | None = 4
    rate: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.mode, SamplingMode):
            raise ConfigError(f"server.sampling must be a SamplingMode, got {self.mode!r}")
        if self.mode is SamplingMode.FIXED_SIZE and (
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
        if self.mode is SamplingMode.FIXED_SIZE:
            assert self.clients_per_round is not None
            return float(min(self.clients_per_round, population))
        if self.mode is SamplingMode.POISSON:
            assert self.rate is not None
            return self.rate * population
        return float(population)

    def sample_rate(self, population: int) -> float:
        """Per-client inclusion probability (q = m / N for fixed-size sampling)."""
        return min(1.0, self.expected_clients(population) / population)

    def accounting(self, population: int) -> Sampling:
        """The accountant's description of this sampling over ``population`` clients."""
        if self.mode is SamplingMode.POISSON:
            assert self.rate is not None
            return Sampling.poisson(sample_rate=self.rate, population=population)
        if self.mode is SamplingMode.FIXED_SIZE:
            assert self.clients_per_round is not None
            return Sampling.fixed_size(
                clients_per_round=min(self.clients_per_round, population), population=population
            )
        return Sampling.full(population=population)


@dataclass(frozen=True)
class SampledRound:
    """One round's draw: who was sampled, and the sampling that justified it."""

    round: int
    client_ids: tuple[str, ...]
    sampling: Sampling

    @property
    def mode(self) -> SamplingMode:
        return self.sampling.mode

    @property
    def population(self) -> int:
        return self.sampling.population

    @property
    def rate(self) -> float:
        return self.sampling.sample_rate

    def as_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "clients": list(self.client_ids),
            "sampling": self.mode.value,
            "population": self.population,
            "rate": self.rate,
        }


class ClientSampler:
    """Draws the clients of each round from a fixed population, from the CSPRNG.

    ``insecure_seed`` (tests and reproducible research only) makes the draw of round
    ``r`` a function of (seed, r); it warns loudly. Either way each round index has
    exactly one draw: asking again for the same round is refused, so a round is never
    redrawn until its size suits someone.
    """

    def __init__(
        self,
        population: Sequence[str],
        config: SamplingConfig,
        *,
        insecure_seed: int | None = None,
    ) -> None:
        if not population:
            raise DataError("cannot sample rounds from an empty client population")
        if len(set(population)) != len(population):
            raise DataError("client population has duplicate ids")
        if config.mode is SamplingMode.FIXED_SIZE:
            assert config.clients_per_round is not None
            if config.clients_per_round > len(population):
                raise ConfigError(
                    f"server.clients_per_round={config.clients_per_round} exceeds the "
                    f"{len(population)} training clients"
                )
        if insecure_seed is not None:
            warnings.warn(INSECURE_SEED_WARNING, RuntimeWarning, stacklevel=2)
        self.population = tuple(population)
        self.config = config
        self.insecure_seed = insecure_seed
        self.accounting = config.accounting(len(self.population))
        self._rng = Csprng()
        self._last_round = 0

    def _stream(self, round_: int) -> Csprng:
        if self.insecure_seed is not None:
            return Csprng.insecure_from_seed(self.insecure_seed, f"client-sampling/{round_}")
        return self._rng

    def sample(self, round_: int) -> SampledRound:
        if not isinstance(round_, int) or round_ <= self._last_round:
            raise ConfigError(
                f"round {round_} was already drawn (last draw: round {self._last_round}); "
                "a round is never redrawn"
            )
        self._last_round = round_
        n = len(self.population)
        mode = self.config.mode
        rng = self._stream(round_)
        if mode is SamplingMode.FIXED_SIZE:
            assert self.config.clients_per_round is not None
            idx = _choose(rng, n, self.config.clients_per_round)
        elif mode is SamplingMode.POISSON:
            assert self.config.rate is not None
            idx = np.flatnonzero(rng.uniform01(n) < self.config.rate)
        else:
            idx = np.arange(n)
        ids = tuple(self.population[int(i)] for i in idx)
        return SampledRound(round_, ids, self.accounting)

    def resume_after(self, round_: int) -> None:
        """Continue after ``round_`` (the last round charged or applied)."""
        self._last_round = max(self._last_round, int(round_))


def _choose(rng: Csprng, n: int, m: int) -> np.ndarray:
    """m of range(n) uniformly without replacement (partial Fisher-Yates), sorted.

    Step i swaps position i with a uniform position in [i, n): an unbiased draw below
    n - i by rejection of the 2^64 mod (n - i) lowest words (arc4random_uniform). The
    permutation is kept sparse (only the positions swapped so far), so a draw costs
    O(m), not O(n), for a large population.
    """
    moved: dict[int, int] = {}  # position -> value, where it differs from the identity
    words = [int(w) for w in rng.uint64(m)]
    out = []
    for i in range(m):
        bound = n - i
        threshold = (1 << 64) % bound
        r = words[i]
        while r < threshold:
            r = int(rng.uint64(1)[0])
        j = i + r % bound
        vi, vj = moved.get(i, i), moved.get(j, j)
        moved[j] = vi
        out.append(vj)
    return np.sort(np.asarray(out, dtype=np.int64))


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
    #: Learning rate of the second block of the state (Meta-SGD's log alpha), in its own
    #: parameter group; None: the same as ``lr`` (one group).
    alpha_lr: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"server.lr must be a positive number, got {self.lr!r}")
        if self.alpha_lr is not None and not (
            isinstance(self.alpha_lr, int | float)
            and not isinstance(self.alpha_lr, bool)
            and math.isfinite(self.alpha_lr)
            and self.alpha_lr > 0
        ):
            raise ConfigError(f"server.alpha_lr must be a positive number, got {self.alpha_lr!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"server.momentum must be in [0, 1), got {self.momentum!r}")


class ServerOptimizer:
    """Applies the mean update to the packed global state (torch's own SGD/Adam).

    With ``alpha_offset`` (Meta-SGD: the length of theta) and ``config.alpha_lr``, the
    coordinates from ``alpha_offset`` on (log alpha) are a second parameter group at
    ``alpha_lr``: with Adam every coordinate moves by about its lr per round, so at
    theta's lr 1e-3 log alpha could move only about 0.15 (a factor 1.16) in 150 rounds.
    """

    def __init__(
        self,
        state: torch.Tensor,
        config: ServerOptimizerConfig,
        *,
        alpha_offset: int | None = None,
    ) -> None:
        self.config = config
        flat = state.detach().clone().float()
        if config.alpha_lr is not None:
            if alpha_offset is None or not 0 < alpha_offset < flat.numel():
                raise ConfigError(
                    "server.alpha_lr applies to an algorithm that learns its inner learning "
                    "rates (metasgd, metasgd-fo)"
                )
            parts = [flat[:alpha_offset], flat[alpha_offset:]]
            lrs = [config.lr, config.alpha_lr]
        else:
            parts, lrs = [flat], [config.lr]
        self.params = [torch.nn.Parameter(p.clone()) for p in parts]
        groups: list[dict[str, Any]] = [
            {"params": [p], "lr": lr} for p, lr in zip(self.params, lrs, strict=True)
        ]
        self.opt: torch.optim.Optimizer
        if config.kind is ServerOptimizerKind.ADAM:
            self.opt = torch.optim.Adam(groups, lr=config.lr, betas=config.betas, eps=config.eps)
        else:
            self.opt = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)

    @property
    def param(self) -> torch.Tensor:
        return torch.cat([p.detach() for p in self.params])

    @property
    def state(self) -> torch.Tensor:
        if len(self.params) == 1:
            return self.params[0].detach()
        return self.param

    def step(self, mean_update: torch.Tensor) -> torch.Tensor:
        dim = sum(p.numel() for p in self.params)
        if mean_update.shape != (dim,):
            raise ValueError(f"update has shape {tuple(mean_update.shape)}, state ({dim},)")
        if not bool(torch.isfinite(mean_update).all()):
            raise DataError("aggregated update contains NaN or Inf; refusing to apply it")
        g = mean_update.to(torch.float32)
        k = 0
        for p in self.params:
            p.grad = g[k : k + p.numel()].clone()
            k += p.numel()
        self.opt.step()
        for p in self.params:
            p.grad = None
        return self.state

    def state_dict(self) -> dict[str, Any]:
        return {"param": self.param.clone(), "opt": self.opt.state_dict()}

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        opt = dict(sd["opt"])
        if len(opt.get("param_groups", ())) != len(self.params):
            raise CheckpointError(
                f"the checkpoint's server optimizer has {len(opt.get('param_groups', ()))} "
                f"parameter group(s), this run's has {len(self.params)} (server.alpha_lr "
                "changed?): resume with the run's own config"
            )
        flat = torch.as_tensor(sd["param"]).float()
        with torch.no_grad():
            k = 0
            for p in self.params:
                p.copy_(flat[k : k + p.numel()])
                k += p.numel()
        self.opt.load_state_dict(opt)


def participation_bound(sampling: Sampling, *, rounds: int, miss: float = 0.01) -> int:
    """Rounds a client joins, at most, with probability 1 - ``miss`` for every client.

    The coordinator knows the sample, so against it a client's epsilon composes the
    rounds it joined, without amplification. A client joins Binomial(rounds, q) rounds;
    this is the smallest k with N * P[Binomial(rounds, q) > k] <= miss (a union bound
    over the population). A client that joins more is caught by the budget gate.
    """
    q = sampling.sample_rate
    if q >= 1.0:
        return rounds
    from scipy.stats import binom

    n = sampling.population
    for k in range(1, rounds + 1):
        if n * float(binom.sf(k, rounds, q)) <= miss:
            return k
    return rounds
