"""Privacy and secure aggregation as wrappers of the update path.

Algorithms produce one flat update per client; these :class:`UpdatePath`
implementations decide what happens to it, so switching DP or SecAgg on never
touches an algorithm:

- :class:`SecureSum`: SecAgg / SecAgg+ (``aggregation``) over clipped updates;
  the server learns only the decoded sum over the survivors.
- :class:`DifferentialPrivacy`: clips each client's whole update (theta and alpha
  parts together) to C, adds Gaussian noise (central, or distributed across
  clients: continuous Gaussian with a plain sum, exact discrete Gaussian inside
  secure aggregation), and records the release in the privacy ledger **before**
  returning the aggregate, so nothing is applied that was not durably charged.

:func:`build_update_path` assembles them from a :class:`~secure_fml.config.Config`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import privacy
from aggregation import DISCRETE_GAUSSIAN_MAX_SIGMA, SecAggConfig, SecAggMode, Stage, secure_sum
from privacy import (
    GaussianNoiseSource,
    GaussianRelease,
    NoisePlacement,
    PrivacyBudget,
    PrivacyLedger,
    Sampling,
)
from privacy.errors import ConfigError, DropoutThresholdNotMet, ProtocolAbort
from secure_fml.config import Config
from secure_fml.rounds import (
    AggregateResult,
    PlainSum,
    RoundContext,
    SampledRound,
    SamplingMode,
    UpdatePath,
)

__all__ = [
    "AdaptiveClipping",
    "DifferentialPrivacy",
    "SecureSum",
    "build_update_path",
    "privacy_sampling",
]

log = logging.getLogger(__name__)

# Simulated dropouts happen at one of these stages (each is recovered differently).
_DROP_STAGES = (Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY_CHECK, Stage.UNMASKING)


def privacy_sampling(sampled: SampledRound) -> Sampling:
    """The accountant's view of how this round's clients were drawn."""
    if sampled.mode is SamplingMode.POISSON:
        return Sampling.poisson(sample_rate=sampled.rate, population=sampled.population)
    if sampled.mode is SamplingMode.FIXED:
        m = round(sampled.rate * sampled.population)
        return Sampling.fixed_size(clients_per_round=m, population=sampled.population)
    return Sampling.full(population=sampled.population)


class SecureSum(UpdatePath):
    """Secure aggregation of the round's updates (in-process state machines).

    Updates are clipped to ``clip_norm`` because the fixed-point encoding needs
    a bounded range. ``dropout_fraction`` makes that share of each round's
    clients go silent at a random protocol stage (a test of recovery; the
    choice of who drops is not security relevant).
    """

    def __init__(
        self,
        *,
        mode: SecAggMode,
        clip_norm: float,
        dropout_fraction: float = 0.0,
        modulus_bits: int = 32,
        rng: np.random.Generator | None = None,
    ) -> None:
        if not clip_norm > 0:
            raise ConfigError(f"secure aggregation needs clip_norm > 0, got {clip_norm}")
        self.mode = mode
        self.clip_norm = float(clip_norm)
        self.dropout_fraction = dropout_fraction
        self.modulus_bits = modulus_bits
        self.rng = rng if rng is not None else np.random.default_rng()
        self.last: Any = None

    def client_side(self, ctx: RoundContext, client_id: str, vector: np.ndarray) -> np.ndarray:
        return privacy.clip_update(vector, clip_norm=self.clip_norm).vector

    def secagg_config(self, n: int) -> SecAggConfig:
        return SecAggConfig(
            num_clients=n,
            mode=self.mode,
            modulus_bits=self.modulus_bits,
            max_dropout_fraction=max(0.1, min(0.4, self.dropout_fraction + 0.05)),
        )

    def aggregate(
        self,
        ctx: RoundContext,
        contributions: Mapping[str, np.ndarray],
        *,
        noise_stddev_int: float = 0.0,
        scale: float | None = None,
    ) -> AggregateResult:
        ids = list(contributions)
        n = len(ids)
        if n < 3:
            raise ProtocolAbort(
                f"round {ctx.round}: secure aggregation needs >= 3 clients, got {n}"
            )
        k = math.floor(self.dropout_fraction * n)
        drop_idx = self.rng.choice(n, size=k, replace=False) if k else np.array([], dtype=int)
        dropouts = {
            int(i): _DROP_STAGES[int(self.rng.integers(len(_DROP_STAGES)))] for i in drop_idx
        }
        res = secure_sum(
            [contributions[c] for c in ids],
            config=self.secagg_config(n),
            clip_norm=self.clip_norm,
            dropouts=dropouts,
            noise_stddev_int=noise_stddev_int,
            scale=scale,
        )
        self.last = res
        survivors = tuple(ids[i] for i in res.survivors)
        info = {
            "secagg": self.mode.value,
            "secagg_dropped": len(res.dropped),
            "secagg_bytes_sent_per_client": float(np.mean(list(res.bytes_sent.values()))),
            "secagg_server_s": res.server_seconds,
        }
        total = np.asarray(res.sum, dtype=np.float64)
        return AggregateResult(
            total.astype(np.float32), len(survivors), float(len(survivors)), survivors, info
        )

    def summary(self) -> dict[str, Any]:
        return {
            "update_path": "SecureSum",
            "protocol": self.mode.value,
            "clip_norm": self.clip_norm,
            "modulus_bits": self.modulus_bits,
            "dropout_fraction": self.dropout_fraction,
        }


@dataclass(frozen=True, kw_only=True)
class AdaptiveClipping:
    """Adaptive clipping to a target quantile of update norms (Andrew et al. 2021)."""

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    expected_clients_per_round: float
    clipped_count_stddev: float | None = None  # None: expected_clients_per_round / 20

    def __post_init__(self) -> None:
        if not 0.0 < self.target_quantile < 1.0:
            raise ConfigError(
                f"privacy.target_quantile must be in (0, 1), got {self.target_quantile}"
            )
        if not self.learning_rate > 0:
            raise ConfigError(f"privacy.clip_lr must be > 0, got {self.learning_rate}")
        if not self.expected_clients_per_round > 0:
            raise ConfigError("adaptive clipping needs a positive expected number of clients")


class DifferentialPrivacy(UpdatePath):
    """Client-level DP around an inner aggregation (plain sum or secure aggregation)."""

    def __init__(
        self,
        *,
        clip_norm: float,
        noise_multiplier: float,
        placement: NoisePlacement,
        ledger: PrivacyLedger,
        inner: UpdatePath,
        min_survivor_fraction: float = 1.0,
        assumed_colluding_clients: int = 0,
        noise_source: GaussianNoiseSource | None = None,
        delta: float = 1e-5,
        adaptive: AdaptiveClipping | None = None,
    ) -> None:
        if not (math.isfinite(clip_norm) and clip_norm > 0):
            raise ConfigError(f"privacy.clip_norm must be > 0, got {clip_norm}")
        if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise ConfigError(f"privacy.noise_multiplier must be > 0, got {noise_multiplier}")
        if not isinstance(placement, NoisePlacement):
            raise TypeError("placement must be a NoisePlacement")
        self.clip_norm = float(clip_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.placement = placement
        self.ledger = ledger
        self.inner = inner
        self.min_survivor_fraction = min_survivor_fraction
        self.colluding = assumed_colluding_clients
        self.source = noise_source if noise_source is not None else GaussianNoiseSource()
        self.delta = delta
        self._clipped: dict[str, bool] = {}
        self.adaptive = adaptive
        # Without adaptive clipping the whole noise multiplier protects the update; with
        # it, the target is split between the update and the appended clip bit so that
        # the joint release costs exactly noise_multiplier (Andrew et al. 2021).
        self.value_noise_multiplier = self.noise_multiplier
        self.bit_std: float | None = None
        if adaptive is not None:
            if placement is NoisePlacement.DISTRIBUTED and isinstance(inner, SecureSum):
                raise ConfigError(
                    "privacy.adaptive_clipping with distributed noise inside secure aggregation "
                    "is not supported (the clip bit would need its own discrete noise); use "
                    "privacy.placement = central or fixed clipping"
                )
            split = privacy.adaptive_clip_noise_split(
                noise_multiplier=self.noise_multiplier,
                expected_clients_per_round=adaptive.expected_clients_per_round,
                clipped_count_stddev=adaptive.clipped_count_stddev,
            )
            self.value_noise_multiplier = split.value_noise_multiplier
            self.bit_std = split.clipped_count_stddev
        self._sync_inner_clip()

    def _sync_inner_clip(self) -> None:
        """Secure aggregation's fixed-point range follows the (possibly adaptive) clip norm."""
        if isinstance(self.inner, SecureSum):
            # The appended clip bit is +-1/2, so the vector's norm is <= sqrt(C^2 + 1/4).
            extra = 0.25 if self.adaptive is not None else 0.0
            self.inner.clip_norm = math.sqrt(self.clip_norm**2 + extra)

    def _inner_ctx(self, ctx: RoundContext) -> RoundContext:
        return dataclasses.replace(ctx, dim=ctx.dim + 1) if self.adaptive is not None else ctx

    @property
    def _secure(self) -> bool:
        return isinstance(self.inner, SecureSum)

    def min_survivors(self, ctx: RoundContext) -> int:
        n = len(ctx.sampled.client_ids)
        return max(1, math.ceil(self.min_survivor_fraction * n))

    def _per_client_std(self, ctx: RoundContext) -> float:
        return privacy.distributed_noise_std(
            noise_multiplier=self.value_noise_multiplier,
            clip_norm=self.clip_norm,
            min_survivors=self.min_survivors(ctx),
            assumed_colluding_clients=self.colluding,
        )

    def client_side(self, ctx: RoundContext, client_id: str, vector: np.ndarray) -> np.ndarray:
        res = privacy.clip_update(vector, clip_norm=self.clip_norm)
        self._clipped[client_id] = res.clipped
        out = res.vector
        if self.adaptive is not None:
            # The clipped/not-clipped bit travels inside the (noised, aggregated) update:
            # it is never sent in the clear.
            bit = privacy.adaptive_clip_bit(norm=res.norm, clip_norm=self.clip_norm)
            out = np.append(out, np.float32(bit))
        if self.placement is NoisePlacement.DISTRIBUTED and not self._secure:
            # Continuous Gaussian on the client; with SecAgg the noise is an exact
            # discrete Gaussian added in the integer domain inside the protocol.
            out = privacy.add_noise(
                out,
                std=self._per_client_std(ctx),
                source=self.source,
                last_coordinate_std=self._per_client_bit_std(ctx),
            )
        return self.inner.client_side(self._inner_ctx(ctx), client_id, out)

    def _per_client_bit_std(self, ctx: RoundContext) -> float | None:
        if self.bit_std is None:
            return None
        return self.bit_std / math.sqrt(self.min_survivors(ctx) - self.colluding)

    def _scale_for(self, n: int, per_client_std: float) -> float:
        """Fixed-point scale: as fine as the modulus and the exact sampler allow.

        A larger scale shrinks the rounding term sqrt(d) relative to C*scale in the
        sensitivity bound the accountant charges; it is capped so that the sum of n
        clipped updates plus 12 noise standard deviations fits in the modulus, and so
        that the per-client integer sigma stays within the exact sampler's range.
        """
        bits = self.inner.modulus_bits if isinstance(self.inner, SecureSum) else 32
        span = n * self.clip_norm + 12.0 * math.sqrt(n) * per_client_std
        by_modulus = 2 ** (bits - 2) / span
        by_sampler = 0.99 * DISCRETE_GAUSSIAN_MAX_SIGMA / per_client_std
        return float(min(by_modulus, by_sampler))

    def secagg_noise(self, ctx: RoundContext, n: int) -> tuple[float, float]:
        """(per-client discrete Gaussian sigma in integer units, fixed-point scale) for
        ``n`` clients inside secure aggregation; shared with the gRPC coordinator."""
        std = self._per_client_std(ctx)
        scale = self._scale_for(n, std)
        return std * scale, scale

    def secagg_event(
        self,
        ctx: RoundContext,
        *,
        noise_stddev_int: float,
        scale: float,
        clients_surviving: int,
        client_ids: tuple[str, ...] | None = None,
    ) -> privacy.DistributedDiscreteGaussianRelease:
        """The ledger event of a distributed discrete Gaussian release inside SecAgg."""
        sampling = privacy_sampling(ctx.sampled)
        return privacy.DistributedDiscreteGaussianRelease(
            round=ctx.round,
            local_stddev=noise_stddev_int,
            scale=scale,
            clip_norm=self.clip_norm,
            beta=0.0,  # unconditional stochastic rounding: Δ2 <= C*scale + sqrt(d)
            dimension=ctx.dim,
            sampling_mode=sampling.mode,
            sample_rate=sampling.sample_rate,
            population=sampling.population,
            clients_sampled=len(ctx.sampled.client_ids),
            clients_surviving=clients_surviving,
            min_survivors=self.min_survivors(ctx),
            assumed_colluding_clients=self.colluding,
            client_ids=client_ids,
        )

    def aggregate(
        self, ctx: RoundContext, contributions: Mapping[str, np.ndarray]
    ) -> AggregateResult:
        sampled = ctx.sampled
        sampling = privacy_sampling(sampled)
        n_sampled = len(sampled.client_ids)
        if n_sampled == 0:
            return AggregateResult(np.zeros(ctx.dim, np.float32), 0, 1.0, ())
        m_min = self.min_survivors(ctx)
        event: Any
        if self.placement is NoisePlacement.DISTRIBUTED and isinstance(self.inner, SecureSum):
            std_int, scale = self.secagg_noise(ctx, len(contributions))
            agg = self.inner.aggregate(ctx, contributions, noise_stddev_int=std_int, scale=scale)
            event = self.secagg_event(
                ctx,
                noise_stddev_int=std_int,
                scale=scale,
                clients_surviving=agg.count,
                client_ids=agg.contributors,
            )
            total = agg.total.astype(np.float64)
        elif self.placement is NoisePlacement.DISTRIBUTED:
            agg = self.inner.aggregate(self._inner_ctx(ctx), contributions)
            event = GaussianRelease.distributed(
                round=ctx.round,
                per_client_noise_std=self._per_client_std(ctx),
                clip_norm=self.clip_norm,
                min_survivors=m_min,
                sampling=sampling,
                clients_sampled=n_sampled,
                clients_surviving=agg.count,
                target_noise_multiplier=self.noise_multiplier,
                assumed_colluding_clients=self.colluding,
                per_client_count_stddev=self._per_client_bit_std(ctx),
                client_ids=agg.contributors,
            )
            total = agg.total.astype(np.float64)
        else:
            agg = self.inner.aggregate(self._inner_ctx(ctx), contributions)
            if agg.count < m_min:
                raise DropoutThresholdNotMet(
                    f"round {ctx.round}: {agg.count} of {n_sampled} clients survived, "
                    f"below the minimum {m_min}"
                )
            std = privacy.central_noise_std(
                noise_multiplier=self.value_noise_multiplier, clip_norm=self.clip_norm
            )
            total = agg.total.astype(np.float64)
            total[: ctx.dim] += self.source.normal(ctx.dim, std=std)
            if self.bit_std is not None:
                total[ctx.dim] += self.source.normal(1, std=self.bit_std)[0]
            event = GaussianRelease.central(
                round=ctx.round,
                noise_multiplier=self.value_noise_multiplier,
                clip_norm=self.clip_norm,
                sampling=sampling,
                clients_sampled=n_sampled,
                clients_surviving=agg.count,
                clipped_count_stddev=self.bit_std,
                client_ids=agg.contributors,
            )
        # Durable before the aggregate is applied or released (raises on budget).
        self.ledger.record(event)
        clip_used = self.clip_norm
        unclipped_noisy: float | None = None
        if self.adaptive is not None:
            total, bit_sum = total[: ctx.dim], float(total[ctx.dim])
            if agg.count > 0:
                # Post-processing of the release just charged: costs no privacy.
                step = privacy.adaptive_clip_step(
                    clip_norm=self.clip_norm,
                    noisy_bit_sum=bit_sum,
                    num_clients=agg.count,
                    target_quantile=self.adaptive.target_quantile,
                    learning_rate=self.adaptive.learning_rate,
                )
                self.ledger.record(
                    privacy.ClipStatistics(
                        round=ctx.round,
                        unclipped_fraction=step.unclipped_fraction,
                        next_clip_norm=step.new_clip_norm,
                    )
                )
                unclipped_noisy = step.unclipped_fraction
                self.clip_norm = step.new_clip_norm
                self._sync_inner_clip()
        clipped = [self._clipped.get(c, False) for c in agg.contributors]
        self._clipped.clear()
        info = dict(agg.info)
        info.update(
            {
                "dp_noise_multiplier": float(event.noise_multiplier),
                "dp_clip_norm": clip_used,
                "dp_unclipped_fraction_noisy": unclipped_noisy,
                "dp_fraction_clipped": float(np.mean(clipped)) if clipped else 0.0,
                "dp_epsilon": self.ledger.epsilon(delta=self.delta),
            }
        )
        # A fixed, public denominator (the expected number of clients) keeps the
        # sensitivity of the mean at C / E[m] whatever the realized count was.
        denom = max(1.0, sampled.rate * sampled.population)
        return AggregateResult(total.astype(np.float32), agg.count, denom, agg.contributors, info)

    def summary(self) -> dict[str, Any]:
        return {
            "update_path": "DifferentialPrivacy",
            "placement": self.placement.value,
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.clip_norm,
            "delta": self.delta,
            "epsilon": self.ledger.epsilon(delta=self.delta),
            "inner": self.inner.summary(),
        }


def resolve_noise_multiplier(config: Config, *, population: int) -> float:
    pc = config.privacy
    if pc.noise_multiplier is not None:
        return pc.noise_multiplier
    assert pc.target_epsilon is not None
    sc = config.server.sampling_config()
    if sc.mode is SamplingMode.POISSON:
        assert sc.rate is not None
        sampling = Sampling.poisson(sample_rate=sc.rate, population=population)
    elif sc.mode is SamplingMode.FIXED:
        assert sc.clients_per_round is not None
        sampling = Sampling.fixed_size(
            clients_per_round=sc.clients_per_round, population=population
        )
    else:
        sampling = Sampling.full(population=population)
    p = privacy.plan(
        target_epsilon=pc.target_epsilon,
        delta=pc.delta,
        rounds=config.server.rounds,
        sampling=sampling,
        accountant=pc.accountant,
    )
    return float(p.noise_multiplier)


def build_update_path(
    config: Config,
    *,
    population: int,
    ledger_dir: Path,
    rng: np.random.Generator,
    expected_head: privacy.LedgerHead | None = None,
) -> UpdatePath:
    """The update path a config asks for: plain, SecAgg, DP, or DP around SecAgg."""
    sa = config.secure_aggregation
    pc = config.privacy
    inner: UpdatePath = PlainSum()
    if sa.protocol != "none":
        inner = SecureSum(
            mode=SecAggMode(sa.protocol),
            clip_norm=pc.clip_norm,
            dropout_fraction=sa.dropout_fraction,
            modulus_bits=sa.bits or (48 if pc.enabled else 32),
            rng=rng,
        )
    elif sa.dropout_fraction > 0:
        raise ConfigError("secure_aggregation.dropout_fraction needs a secure_aggregation.protocol")
    if not pc.enabled:
        return inner
    placement_name = pc.placement
    if placement_name == "auto":
        placement_name = "distributed" if sa.protocol != "none" else "central"
    placement = NoisePlacement(placement_name)
    if (
        placement is NoisePlacement.DISTRIBUTED
        and sa.protocol != "none"
        and config.server.sampling is SamplingMode.FIXED
    ):
        raise ConfigError(
            "privacy.placement=distributed with secure aggregation is accounted with the "
            "distributed discrete Gaussian analysis, which needs server.sampling = poisson or all"
        )
    source = (
        GaussianNoiseSource(seed=pc.insecure_seed, insecure_test_mode=True)
        if pc.insecure_seed is not None
        else GaussianNoiseSource()
    )
    budget = (
        PrivacyBudget(max_epsilon=pc.max_epsilon, delta=pc.delta, accountant=pc.accountant)
        if pc.max_epsilon is not None
        else None
    )
    ledger_dir.mkdir(parents=True, exist_ok=True)
    ledger = PrivacyLedger.open(
        ledger_dir / privacy.LEDGER_FILENAME, budget=budget, expected_head=expected_head
    )
    return DifferentialPrivacy(
        clip_norm=pc.clip_norm,
        noise_multiplier=resolve_noise_multiplier(config, population=population),
        placement=placement,
        ledger=ledger,
        inner=inner,
        min_survivor_fraction=sa.min_survivor_fraction
        if placement is NoisePlacement.DISTRIBUTED
        else 1.0 - sa.dropout_fraction,
        noise_source=source,
        delta=pc.delta,
        adaptive=(
            AdaptiveClipping(
                target_quantile=pc.target_quantile,
                learning_rate=pc.clip_lr,
                expected_clients_per_round=config.server.sampling_config().expected_clients(
                    population
                ),
                clipped_count_stddev=pc.clipped_count_stddev,
            )
            if pc.adaptive_clipping
            else None
        ),
    )
