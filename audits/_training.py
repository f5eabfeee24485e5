"""Build and run the deployed training pipeline with audit instrumentation.

Audits never change an algorithm: they build the update path the config asks
for (:func:`secure_fml.update_paths.build_update_path`), optionally break it
for a positive control (:class:`~audits._core.Control`), wrap it, and run the
ordinary :class:`~secure_fml.simulation.Simulation` rounds. Positive controls
are faults injected here, in the audit's own instrumentation: the ledger is
charged as usual, exactly as a real bug would leave it. The noise-off control
works on every path, including the discrete Gaussian inside secure
aggregation (:class:`_NoiselessSecureSum` drops each client's noise share).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from audits._core import Control
from privacy import Adversary, GaussianNoiseSource, adversary_epsilon
from privacy.errors import ConfigError
from secure_fml.config import Config
from secure_fml.data import FederatedDataset
from secure_fml.rounds import PlainSum, UpdatePath
from secure_fml.simulation import Simulation, load_dataset
from secure_fml.update_paths import DifferentialPrivacy, SecureSum, build_update_path

__all__ = ["TrainedRun", "ZeroNoise", "build_path", "dataset_for", "train"]


class ZeroNoise(GaussianNoiseSource):
    """A broken noise source (positive control only): every sample is 0.

    The ledger is still charged with the configured σ, exactly as a real bug
    that silently dropped the noise would leave it.
    """

    def standard_normal(self, n: int) -> npt.NDArray[np.float64]:
        return np.zeros(int(n), dtype=np.float64)


class _NoiselessSecureSum(SecureSum):
    """Secure aggregation whose clients add no discrete Gaussian share (positive control).

    The DP wrapper still computes the noise and scale and records the release
    with them: the bug "the noise share was never added on the DDGauss path".
    """

    def aggregate(
        self,
        ctx: Any,
        contributions: Any,
        *,
        noise_stddev_int: float = 0.0,
        scale: float | None = None,
    ) -> Any:
        del noise_stddev_int
        return super().aggregate(ctx, contributions, noise_stddev_int=0.0, scale=scale)


class _UnclippedDP(DifferentialPrivacy):
    """DP path whose clipping is switched off (positive control only)."""

    def client_side(self, ctx: Any, client_id: str, vector: np.ndarray) -> np.ndarray:
        return self.inner.client_side(ctx, client_id, vector)


def dataset_for(config: Config, dataset: FederatedDataset | None) -> FederatedDataset:
    return dataset if dataset is not None else load_dataset(config)


def build_path(
    config: Config, *, population: int, ledger_dir: Path, control: Control, seed: int
) -> UpdatePath:
    """The configured update path, sabotaged as ``control`` asks."""
    if control is Control.SECAGG_OFF and config.secure_aggregation.protocol != "none":
        config = dataclasses.replace(
            config,
            secure_aggregation=dataclasses.replace(config.secure_aggregation, protocol="none"),
            privacy=dataclasses.replace(config.privacy, placement="central")
            if config.privacy.enabled
            else config.privacy,
        )
    if not config.privacy.enabled and config.secure_aggregation.protocol == "none":
        path: UpdatePath = PlainSum()
    else:
        path = build_update_path(
            config,
            population=population,
            ledger_dir=ledger_dir,
            rng=np.random.default_rng([seed, 2]),
        )
    if control is Control.NOISE_OFF:
        if not isinstance(path, DifferentialPrivacy):
            raise ConfigError("the noise_off control needs privacy.enabled = true")
        path.source = ZeroNoise()
        if isinstance(path.inner, SecureSum):
            inner = path.inner
            broken = _NoiselessSecureSum(
                mode=inner.mode,
                clip_norm=inner.clip_norm,
                dropout_fraction=inner.dropout_fraction,
                modulus_bits=inner.modulus_bits,
                rng=inner.rng,
            )
            path.inner = broken
    elif control is Control.CLIPPING_OFF:
        if not isinstance(path, DifferentialPrivacy) or isinstance(path.inner, SecureSum):
            raise ConfigError(
                "the clipping_off control needs privacy.enabled = true without secure "
                "aggregation (the SecAgg encoder clips by itself)"
            )
        path = _UnclippedDP(
            clip_norm=path.clip_norm,
            noise_multiplier=path.noise_multiplier,
            placement=path.placement,
            ledger=path.ledger,
            inner=path.inner,
            min_survivor_fraction=path.min_survivor_fraction,
            assumed_colluding_clients=path.colluding,
            noise_source=path.source,
            delta=path.delta,
        )
    return path


@dataclass
class TrainedRun:
    """A finished instrumented run: the simulation, θ_0, its ledger and the claimed ε.

    ``claimed_epsilon`` is the run's own ledger's ε against an outside observer
    (who sees the released models), the figure a model-based attack tests.
    """

    sim: Simulation
    initial_state: torch.Tensor
    claimed_epsilon: float | None
    path: UpdatePath
    events: tuple[Any, ...] = ()

    @property
    def final_state(self) -> torch.Tensor:
        return self.sim.state


def train(
    config: Config,
    dataset: FederatedDataset,
    *,
    control: Control = Control.NONE,
    wrap: Callable[[UpdatePath], UpdatePath] | None = None,
    rounds: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> TrainedRun:
    """Run ``rounds`` (default: the config's) instrumented rounds in-process."""
    split = dataset.split_clients(
        fractions=config.data.client_fractions, seed=config.data.split_seed
    )
    with tempfile.TemporaryDirectory(prefix="secure-fml-audit-") as tmp:
        inner = build_path(
            config,
            population=len(split.train),
            ledger_dir=Path(tmp),
            control=control,
            seed=config.run.seed,
        )
        path = wrap(inner) if wrap is not None else inner
        sim = Simulation(config, dataset=dataset, update_path=path)
        theta0 = sim.state.clone()
        total = rounds if rounds is not None else config.server.rounds
        events: tuple[Any, ...] = ()
        claimed: float | None = None
        try:
            for t in range(total):
                sim.run_round()
                if progress is not None:
                    progress(t + 1, total, "training rounds")
            if isinstance(inner, DifferentialPrivacy):
                events = inner.ledger.events
                accountant = config.privacy.accountant
                claimed = float(
                    adversary_epsilon(
                        events,
                        adversary=Adversary.OUTSIDE_OBSERVER,
                        delta=config.privacy.delta,
                        accountant="rdp" if accountant == "gdp" else accountant,
                    ).epsilon
                )
        finally:
            if isinstance(inner, DifferentialPrivacy):
                inner.ledger.close()
    return TrainedRun(
        sim=sim, initial_state=theta0, claimed_epsilon=claimed, path=path, events=events
    )
