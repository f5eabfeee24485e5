"""Train through the round engine that ships, with audit instrumentation.

Audits never change an algorithm or the round engine: they run the ordinary
:class:`~secure_fml.simulation.Simulation` (the engine plus the client
pipelines a deployment runs) and inject faults the way a test fixture would:

- ``Control.NOISE_OFF``: every client pipeline adds no noise (continuous or the
  discrete Gaussian inside SecAgg) and the coordinator's central noise is zero,
  while the ledger is still charged with the configured σ -- exactly what a real
  bug that silently dropped the noise would leave behind;
- ``Control.CLIPPING_OFF``: client pipelines skip clipping (refused with secure
  aggregation, whose encoder clips by itself);
- ``Control.SECAGG_OFF``: the run is configured without secure aggregation.

Extra clients (an audit's canaries) join the population through the
simulation's ``extra_clients`` and are sampled like everyone else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from audits._core import Control
from privacy import Adversary, GaussianNoiseSource, adversary_epsilon
from privacy.errors import ConfigError
from secure_fml.config import Config
from secure_fml.data import FederatedDataset
from secure_fml.messages import ClientNoise, RoundSettings
from secure_fml.pipeline import ClientPipeline
from secure_fml.simulation import Simulation, load_dataset

__all__ = ["TrainedRun", "ZeroNoise", "dataset_for", "instrumented_config", "train"]


class ZeroNoise(GaussianNoiseSource):
    """A broken noise source (positive control only): every sample is 0."""

    def standard_normal(self, n: int) -> npt.NDArray[np.float64]:
        return np.zeros(int(n), dtype=np.float64)


def dataset_for(config: Config, dataset: FederatedDataset | None) -> FederatedDataset:
    return dataset if dataset is not None else load_dataset(config)


def instrumented_config(config: Config, control: Control) -> Config:
    """The configuration a control runs: SECAGG_OFF removes secure aggregation."""
    if control is Control.SECAGG_OFF and config.secure_aggregation.protocol != "none":
        return dataclasses.replace(
            config,
            secure_aggregation=dataclasses.replace(config.secure_aggregation, protocol="none"),
            privacy=dataclasses.replace(config.privacy, placement="central")
            if config.privacy.enabled
            else config.privacy,
        )
    if control is Control.NOISE_OFF and not config.privacy.enabled:
        raise ConfigError("the noise_off control needs privacy.enabled = true")
    if control is Control.CLIPPING_OFF and (
        not config.privacy.enabled or config.secure_aggregation.protocol != "none"
    ):
        raise ConfigError(
            "the clipping_off control needs privacy.enabled = true without secure "
            "aggregation (the SecAgg encoder clips by itself)"
        )
    return config


def _faulty(pipeline: ClientPipeline, control: Control) -> ClientPipeline:
    """The same pipeline with the control's fault injected (a fixture, not an API)."""
    if control is Control.NOISE_OFF:

        def no_noise(settings: RoundSettings) -> tuple[ClientNoise, float]:
            return ClientNoise.NONE, 0.0

        pipeline.noise = no_noise  # type: ignore[method-assign]
    elif control is Control.CLIPPING_OFF:

        def no_clip(vector: np.ndarray, clip_norm: float) -> tuple[np.ndarray, bool]:
            return vector, False

        pipeline.clip = no_clip  # type: ignore[method-assign]
    return pipeline


@dataclass
class TrainedRun:
    """A finished instrumented run: the simulation, θ_0, the claimed ε (against an
    outside observer, read from the run's own ledger) and the ledger's events."""

    sim: Simulation
    initial_state: torch.Tensor
    claimed_epsilon: float | None
    events: tuple[Any, ...] = ()

    @property
    def final_state(self) -> torch.Tensor:
        return self.sim.state


def train(
    config: Config,
    dataset: FederatedDataset,
    *,
    control: Control = Control.NONE,
    rounds: int | None = None,
    extra_clients: Mapping[str, Callable[[Simulation, str], ClientPipeline]] | None = None,
    before_rounds: Callable[[Simulation], None] | None = None,
    after_round: Callable[[Simulation], None] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> TrainedRun:
    """Run ``rounds`` (default: the config's) instrumented rounds in-process."""
    config = instrumented_config(config, control)
    holder: dict[str, Simulation] = {}

    def real(name: str) -> ClientPipeline:
        return _faulty(holder["sim"].client_pipeline(name), control)

    def extra(make: Callable[[Simulation, str], ClientPipeline]) -> Callable[[str], ClientPipeline]:
        return lambda name: _faulty(make(holder["sim"], name), control)

    sim = Simulation(
        config,
        dataset=dataset,
        client_factory=real,
        extra_clients={n: extra(f) for n, f in (extra_clients or {}).items()},
    )
    holder["sim"] = sim
    if control is Control.NOISE_OFF:
        sim.engine.central_noise_source = lambda _round: ZeroNoise()  # type: ignore[method-assign,assignment]
    theta0 = sim.state.clone()
    claimed: float | None = None
    events: tuple[Any, ...] = ()
    total = rounds if rounds is not None else config.server.rounds
    try:
        sim.open()
        if before_rounds is not None:
            before_rounds(sim)
        for t in range(total):
            sim.run_round()
            if after_round is not None:
                after_round(sim)
            if progress is not None:
                progress(t + 1, total, "training rounds")
        ledger = sim.engine.ledger
        if ledger is not None and sim.engine.dp is not None:
            events = ledger.events
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
        sim.close()
    return TrainedRun(sim=sim, initial_state=theta0, claimed_epsilon=claimed, events=events)
