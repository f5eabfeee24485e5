"""In-process federated simulation: the round engine and client pipelines, in memory.

The simulation is the deployed system with the network taken out: the same
:class:`~secure_fml.engine.RoundEngine` the gRPC coordinator runs, one
:class:`~secure_fml.pipeline.ClientPipeline` per client (the code a deployed
site runs), an :class:`InMemoryTransport` that hands messages over without a
network, and a :class:`ManualClock` that jumps to the next stage deadline when
the only clients left to answer are silent ones. A dropout is a client the
transport makes silent from a chosen stage on. Client work goes through an
executor (:class:`SequentialExecutor` here; a process pool or a distributed
engine plugs into the same seam).

A run directory holds ``config.json`` / ``config.toml`` (resolved),
``metrics.jsonl`` (one line per round), ``checkpoint.pt`` (atomic; see
:mod:`secure_fml.checkpoint`), the privacy ledger when DP is on, and
``summary.json`` (final test-client evaluation).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from torch import nn

from aggregation import Stage
from privacy import Csprng
from privacy.errors import ConfigError, ProtocolError, SecureFMLError
from secure_fml import executors
from secure_fml._functional import Batch, FunctionalModel
from secure_fml.algorithms import Algorithm, make_algorithm
from secure_fml.baselines import summary_fields
from secure_fml.checkpoint import Checkpoint
from secure_fml.config import Config, resolve_device
from secure_fml.data import (
    ClientData,
    ClientSplit,
    DatasetOutline,
    FederatedDataset,
    InputKind,
    load_preset,
    preprocessing_spec,
    preset_streams,
    stream_preset,
)
from secure_fml.engine import Identity, RoundEngine
from secure_fml.evaluation import EvalResult, evaluate, to_batch
from secure_fml.executors import ClientExecutor, SequentialExecutor
from secure_fml.messages import (
    EngineMessage,
    RoundStart,
    StageReply,
    StageRequest,
    withdrawal_from,
)
from secure_fml.models import check_output_size, default_hidden, default_model, describe_module
from secure_fml.observability import MetricsSink, Progress
from secure_fml.pipeline import ClientPipeline, seeded_generator, seeded_randomness
from secure_fml.record_dp import RecordDPAlgorithm, RecordLevelLedger, wrap_for_config

__all__ = [
    "POOL_MIN_CLIENTS",
    "ClientExecutor",
    "InMemoryTransport",
    "ManualClock",
    "RunResult",
    "SequentialExecutor",
    "Simulation",
    "build_model",
    "driver_outlines",
    "load_dataset",
    "model_spec_for",
    "outline_dataset",
]

log = logging.getLogger(__name__)

#: Jobs handed to the executor at once: their replies are what the driver holds in
#: flight (a pool splits each chunk over its workers).
_REPLY_CHUNK = 256

#: ``simulation.executor = auto`` picks the pool from this many expected clients per
#: round on (see :meth:`Simulation.executor_kind`).
POOL_MIN_CLIENTS = 64


def load_dataset(config: Config) -> FederatedDataset:
    dc = config.data
    ds = load_preset(dc.preset, root=dc.root, **dc.options)
    return ds.filter_min_samples(dc.min_samples)


def driver_outlines(config: Config) -> bool:
    """Whether a simulation of ``config`` (given no dataset) holds only an outline in its
    driver: its executor may be one whose workers load the training partitions (pool or
    Ray, no record-level DP). Under ``auto`` only for a generated preset, read one client
    at a time: a preset read from files would be loaded twice when ``auto`` then picks
    the sequential executor."""
    kind = config.simulation.executor
    return (
        kind != "sequential"
        and (kind != "auto" or preset_streams(config.data.preset))
        and executors.pool_refuses(config) is None
    )


def outline_dataset(config: Config) -> DatasetOutline:
    """:func:`split_dataset` of :func:`load_dataset`, holding only the evaluation clients
    and one training client (the driver of a pool or Ray run: its workers hold the
    training partitions). A generated preset never has every client in memory at once."""
    dc = config.data
    stream = stream_preset(dc.preset, root=dc.root, **dc.options)
    return stream.outline(
        min_samples=dc.min_samples,
        fractions=dc.client_fractions,
        seed=dc.split_seed,
        leave_out=dc.leave_out,
    )


def split_dataset(config: Config, ds: FederatedDataset) -> ClientSplit:
    if config.data.leave_out is not None:
        return ds.leave_one_out(config.data.leave_out)
    return ds.split_clients(fractions=config.data.client_fractions, seed=config.data.split_seed)


def model_spec(
    kind: str,
    *,
    input_kind: InputKind | str,
    sample_shape: Sequence[int],
    num_classes: int,
    hidden: Sequence[int] | None,
) -> dict[str, Any]:
    """The one place ``model.kind = "auto"`` and an unset ``model.hidden`` are resolved
    (simulation, coordinator, sites); the spec always records the widths used."""
    ik = InputKind(input_kind)
    shape = tuple(int(x) for x in sample_shape)
    if kind == "auto":
        if ik is InputKind.IMAGE and shape == (28, 28):
            kind = "cnn"
        elif ik is InputKind.SEQUENCE:
            kind = "lstm"
        else:
            kind = "mlp"
    return {
        "kind": kind,
        "sample_shape": list(shape),
        "num_classes": int(num_classes),
        "hidden": list(default_hidden(kind) if hidden is None else hidden),
        "input_kind": ik.value,
    }


def model_spec_for(config: Config, ds: FederatedDataset) -> dict[str, Any]:
    return model_spec(
        config.model.kind,
        input_kind=ds.input_kind,
        sample_shape=ds.sample_shape,
        num_classes=ds.num_classes,
        hidden=config.model.hidden,
    )


def build_model(spec: Mapping[str, Any]) -> nn.Module:
    return default_model(
        str(spec["kind"]),
        sample_shape=tuple(spec["sample_shape"]),
        num_classes=int(spec["num_classes"]),
        hidden=tuple(spec["hidden"]),
    )


# ---------------------------------------------------------------------- in-memory pieces


class ManualClock:
    """A clock the simulation moves itself: stage deadlines pass in no real time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance_to(self, t: float) -> None:
        self.now = max(self.now, float(t))


class InMemoryTransport:
    """Hands engine messages to clients and replies back, without a network.

    ``dropout_fraction`` makes that share of each round's participants go silent from
    a random stage on (recovery tests; who drops is not security relevant, so it comes
    from a seeded generator). Subclass and override :meth:`silent_from` to script
    faults (a client silent at a fixed stage of a fixed round).
    """

    def __init__(self, *, dropout_fraction: float = 0.0, seed: int = 0) -> None:
        if not 0.0 <= dropout_fraction < 1.0:
            raise ConfigError("secure_aggregation.dropout_fraction must be in [0, 1)")
        self.dropout_fraction = dropout_fraction
        self.seed = seed
        self._plan: tuple[int, dict[str, Stage]] = (0, {})

    def silent_from(
        self, round_: int, participants: Sequence[str], stages: Sequence[Stage]
    ) -> dict[str, Stage]:
        """Which participants go silent, and from which stage, in ``round_``."""
        k = math.floor(self.dropout_fraction * len(participants))
        if k == 0:
            return {}
        rng = np.random.default_rng([self.seed, round_, 7])
        who = rng.choice(len(participants), size=k, replace=False)
        return {participants[int(i)]: stages[int(rng.integers(len(stages)))] for i in who}

    def delivers(self, client: str, message: EngineMessage) -> bool:
        if isinstance(message, RoundStart):
            stages = (
                (Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY_CHECK, Stage.UNMASKING)
                if message.settings.protocol.secure
                else (Stage.MASKED_INPUT,)
            )
            if self._plan[0] != message.round:
                # Once per round, not per participant (an O(n log n) sort per client).
                names = [p.name for p in sorted(message.peers, key=lambda p: p.index)]
                self._plan = (message.round, self.silent_from(message.round, names, stages))
            stage = message.first_stage
        elif isinstance(message, StageRequest):
            stage = message.stage
        else:
            return True
        drop = self._plan[1].get(client)
        if drop is None:
            return True
        return stage.value < drop.value


@dataclass(frozen=True)
class RunResult:
    run_dir: Path | None
    rounds: int
    state: torch.Tensor
    final: EvalResult | None
    summary: dict[str, Any]


# ---------------------------------------------------------------------- the simulation


class Simulation:
    """The round engine plus one client pipeline per client, in one process.

    ``dataset``: the data to train on (None: ``config.data``). With a pool or Ray
    executor and no dataset given (or a :class:`~secure_fml.data.DatasetOutline` from
    :func:`outline_dataset`), the driver holds only an outline -- every training
    client's id and the evaluation clients' data -- and the workers load the training
    partitions themselves, so the driver's memory does not grow with the population
    (``outlined``; ``dataset`` and ``split`` are then refused, ``train_ids`` names the
    training clients). A :class:`~secure_fml.data.FederatedDataset` is held whole.
    """

    def __init__(
        self,
        config: Config,
        *,
        dataset: FederatedDataset | DatasetOutline | None = None,
        module: nn.Module | None = None,
        run_dir: Path | str | None = None,
        transport: InMemoryTransport | None = None,
        executor: ClientExecutor | None = None,
        client_factory: Callable[[str], ClientPipeline] | None = None,
        extra_clients: Mapping[str, Callable[[str], ClientPipeline]] | None = None,
        sinks: Sequence[MetricsSink] = (),
    ) -> None:
        self.config = config
        #: Where the clients' local training and the evaluation run (run.device).
        self.device = resolve_device(config.run.device)
        if config.run.threads is not None:
            torch.set_num_threads(config.run.threads)
        torch.manual_seed(config.run.seed)
        self._custom_clients = client_factory is not None or bool(extra_clients)
        given_outline = dataset if isinstance(dataset, DatasetOutline) else None
        whole = dataset if isinstance(dataset, FederatedDataset) else None
        self._dataset_given = whole is not None
        self._kind: str | None = None  # executor_kind(), once resolved
        outline = None
        custom = self._custom_clients
        if whole is None and executor is None and not custom and driver_outlines(config):
            outline = given_outline or outline_dataset(config)
            #: The training clients' ids, in the split's order (the sampled population).
            self.train_ids = outline.train_ids
            self._kind = self.executor_kind()  # resolved once: the data held depends on it
            if self._kind == "sequential":  # auto, for a small round: hold it all
                outline = None
        #: Whether this driver holds only an outline of the dataset (the evaluation
        #: clients and one training client): its pool or Ray workers load the training
        #: partitions themselves, so the driver's memory does not grow with them.
        self.outlined = outline is not None
        if outline is not None:
            self._dataset, self._split = outline.held, outline.split
        else:
            self._dataset = whole if whole is not None else load_dataset(config)
            self._split = split_dataset(config, self._dataset)
            self.train_ids = tuple(c.client_id for c in self._split.train)
        if not self.train_ids:
            raise ConfigError("the client split left no training clients")
        default_spec = model_spec_for(config, self._dataset)
        self.module = module if module is not None else build_model(default_spec)
        # A custom module is recorded as such (class and parameter layout), never as the
        # default model, so a checkpoint cannot be rebuilt into the wrong network.
        self.model_spec = describe_module(self.module, default=default_spec)
        sample = to_batch(self._split.train[0], self._dataset.input_kind).x[:1]
        check_output_size(self.module, sample, self._dataset.num_classes)
        self.fmodel = FunctionalModel(self.module)
        self.algorithm: Algorithm = make_algorithm(config.algorithm, self.fmodel)
        # Record-level DP (privacy.unit = record | both): every client's local steps are
        # DP-SGD; the clients run the wrapped algorithm, the engine needs only its shape.
        self.client_algorithm: Algorithm = wrap_for_config(
            config, self.algorithm, self._dataset, population=len(self.train_ids)
        )
        self._record: RecordLevelLedger | None = None
        self._train = {c.client_id: c for c in self._split.train}
        self._batches: dict[str, Batch] = {}
        # Raw 32-byte keys, not key objects (~470 and ~370 bytes of native memory each):
        # the driver of a 10,000-client round holds every client's identity.
        self._keys: dict[str, bytes] = {}
        self._public: dict[str, bytes] = {}
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.clock = ManualClock()
        self.transport = transport or InMemoryTransport(
            dropout_fraction=config.secure_aggregation.dropout_fraction, seed=config.run.seed
        )
        self.extra_clients = dict(extra_clients or {})
        clash = set(self.extra_clients) & set(self.train_ids)
        if clash:
            raise ConfigError(f"extra clients reuse training client ids: {sorted(clash)[:5]}")
        base = client_factory or self.client_pipeline

        def factory(name: str) -> ClientPipeline:
            extra = self.extra_clients.get(name)
            return extra(name) if extra is not None else base(name)

        self.executor = executor or self._make_executor(factory)
        self.engine = RoundEngine(
            config,
            population=[*self.train_ids, *sorted(self.extra_clients)],
            module=self.module,
            model_spec=self.model_spec,
            identities=self.identity,
            run_dir=self.run_dir,
            clock=self.clock,
            on_round_end=self._on_round_end,
            checkpoint_extra={"data": preprocessing_spec(self._dataset)},
            sinks=sinks,
        )
        self._round_participants: tuple[str, ...] = ()
        self._opened = False

    @property
    def dataset(self) -> FederatedDataset:
        """The whole dataset this simulation trains on (refused for an outline)."""
        if self.outlined:
            raise ConfigError(
                "this simulation holds an outline of its dataset (its pool or Ray workers "
                "load the training partitions): load it with load_dataset(config), or pass "
                "dataset= to hold it in the driver"
            )
        return self._dataset

    @property
    def split(self) -> ClientSplit:
        """The train / validation / test clients (refused for an outline: see ``dataset``;
        ``train_ids`` names the training clients either way)."""
        if self.outlined:
            raise ConfigError(
                "this simulation holds an outline of its dataset: its training clients' "
                "data is in the workers (train_ids names them)"
            )
        return self._split

    # -- clients ---------------------------------------------------------------------------
    def executor_kind(self) -> str:
        """The executor ``simulation.executor`` names, with ``auto`` resolved.

        ``auto`` is the pool when a round is expected to have at least
        :data:`POOL_MIN_CLIENTS` clients and this machine has at least one more idle core
        than the driver needs (cores minus the 1-minute load average >= 1, and more than
        one worker), else sequential. Measured (benchmarks/results/scale_out.md): the
        pool adds little CPU per client, but costs seconds to start and a message per
        worker per stage, and on a machine whose cores are already busy it gains nothing
        (every process just gets a smaller share). Every executor gives the same result
        under the insecure test seed, so the choice is about speed only. Custom client
        factories, extra clients and record-level DP always run sequentially.
        """
        if self._kind is not None:
            return self._kind
        sc = self.config.simulation
        kind = sc.executor
        if kind != "auto":
            return kind
        if self._custom_clients or executors.pool_refuses(self.config) is not None:
            return "sequential"
        workers = sc.workers or executors.available_cores()
        expected = self.config.server.sampling_config().expected_clients(len(self.train_ids))
        if workers > 1 and expected >= POOL_MIN_CLIENTS and executors.idle_cores() >= 1:
            return "pool"
        return "sequential"

    def _make_executor(self, factory: Callable[[str], ClientPipeline]) -> ClientExecutor:
        kind = self.executor_kind()
        if kind == "sequential":
            return SequentialExecutor(factory)
        if self._custom_clients:
            raise ConfigError(
                f"simulation.executor = {kind} runs the library's client pipeline only; custom "
                "client factories and extra clients need simulation.executor = sequential"
            )
        recipe = executors.ClientRecipe(
            config=self.config, module=self.module, load_data=not self._dataset_given
        )
        sc = self.config.simulation
        if kind == "ray":
            return executors.RayExecutor(
                recipe,
                workers=sc.workers,
                identity_key=self._identity_key,
                partition=self.batch,
                address=sc.ray_address,
            )
        return executors.PoolExecutor(
            recipe,
            workers=sc.workers or executors.available_cores(),
            identity_key=self._identity_key,
            partition=self.batch,
        )

    def _identity_key(self, name: str) -> Ed25519PrivateKey:
        raw = self._keys.get(name)
        if raw is None:
            seed = self.config.run.insecure_seed
            if seed is not None:
                raw = Csprng.insecure_from_seed(seed, f"identity/{name}").bytes(32)
            else:
                raw = Ed25519PrivateKey.generate().private_bytes_raw()
            self._keys[name] = raw
        return Ed25519PrivateKey.from_private_bytes(raw)

    def identity(self, name: str) -> Identity:
        pub = self._public.get(name)
        if pub is None:
            pub = self._public[name] = self._identity_key(name).public_key().public_bytes_raw()
        return Identity(pub, pub)

    def batch(self, client_id: str) -> Batch:
        if client_id not in self._batches:
            part = self._train.get(client_id)
            if part is None:
                if self.outlined and client_id in set(self.train_ids):
                    raise ConfigError(
                        f"client {client_id!r}: this driver holds an outline of the dataset; "
                        "its executor's workers hold the training partitions"
                    )
                raise ConfigError(f"{client_id!r} is not a training client of this simulation")
            self._batches[client_id] = to_batch(part, self._dataset.input_kind).to(self.device)
        return self._batches[client_id]

    def client_pipeline(self, name: str) -> ClientPipeline:
        """The pipeline a simulated client runs: the deployed site's, in memory."""
        insecure = self.config.run.insecure_seed
        return ClientPipeline(
            name=name,
            algorithm=self.client_algorithm,
            data=self.batch(name),
            identity_key=self._identity_key(name),
            training_generator=seeded_generator(self.config.run.seed, name),
            randomness=seeded_randomness(insecure, name) if insecure is not None else None,
            record_level=self.record_level,
        )

    @property
    def record_level(self) -> RecordLevelLedger | None:
        """Record-level bookkeeping on the run's ledger, when record-level DP is on.

        In a simulation every client charges its receipts to the run's ledger (one
        record-level accountant per site); a deployed site keeps its own ledger.
        """
        if not isinstance(self.client_algorithm, RecordDPAlgorithm):
            return None
        if self._record is None:
            self.open()
            ledger = self.engine.ledger
            assert ledger is not None
            pc = self.config.privacy
            self._record = RecordLevelLedger(
                ledger,
                delta=pc.delta,
                accountant=pc.accountant,
                max_epsilon=pc.record_max_epsilon,
                population=len(self.train_ids),
            )
        return self._record

    # -- state -----------------------------------------------------------------------------
    @property
    def state(self) -> torch.Tensor:
        return self.engine.state

    @property
    def round(self) -> int:
        return self.engine.round

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.engine.history

    def evaluate_on(self, clients: Sequence[ClientData]) -> EvalResult:
        return evaluate(
            self.algorithm,
            self.state,
            clients,
            input_kind=self._dataset.input_kind,
            support_fraction=self.config.algorithm.support_fraction,
            seed=self.config.data.split_seed,
            adapt_steps=self.config.eval.adapt_steps,
            device=self.device,
        )

    def checkpoint(self) -> Checkpoint:
        return self.engine.checkpoint()

    def open(self, *, resume: bool = False) -> None:
        if not self._opened:
            self.engine.open(resume=resume)
            self._opened = True

    def close(self) -> None:
        """Release the privacy ledger (its file lock), if one is open."""
        self.engine.close()
        self.executor.close()

    # -- one round -------------------------------------------------------------------------
    def _on_round_end(self, line: dict[str, Any]) -> None:
        infos = []
        for name in line.get("clients", ()):
            info = self.executor.last_update(name)
            if info is not None and info.round == line["round"]:
                infos.append(info)
        # Plain Python means: a handful of floats per round (np.mean costs ~15 us each).
        line["update_norm_mean"] = math.fsum(i.norm for i in infos) / len(infos) if infos else None
        line["client_compute_s"] = float(sum(i.compute_s for i in infos))
        if self.config.privacy.enabled:
            line["dp_fraction_clipped"] = (
                sum(1 for i in infos if i.clipped) / len(infos) if infos else 0.0
            )
        losses = [i.loss for i in infos if math.isfinite(i.loss)]
        line["train_loss"] = math.fsum(losses) / len(losses) if losses else None
        record = self._record
        if record is not None:
            eps = record.epsilons()
            line["record_dp_epsilon_worst_site"] = max(eps.values()) if eps else 0.0
            line["record_dp_sites_at_budget"] = len(record.exhausted)
        every = self.config.eval.every
        r = line["round"]
        if every and r % every == 0 and self._split.val:
            val = self._split.val[: self.config.eval.max_val_clients]
            res = self.evaluate_on(val)
            line["val_global_accuracy"] = res.global_accuracy
            line["val_personalized_accuracy"] = res.personalized_accuracy

    def run_round(self) -> dict[str, Any]:
        """Run the next round to its end (complete, aborted or skipped); its metrics line."""
        self.open()
        eng = self.engine
        before = len(eng.history)
        if eng.ready_at is not None:
            self.clock.advance_to(eng.ready_at)  # the watchdog's back-off, in simulated time
        eng.start_round(self.engine.population)
        while eng.round_open:
            jobs = [
                (client, msg)
                for client, msgs in sorted(eng.drain().items())
                for msg in msgs
                if self.transport.delivers(client, msg)
            ]
            if not jobs:
                deadline = eng.deadline
                assert deadline is not None
                self.clock.advance_to(deadline)
                eng.tick()
                continue
            # In chunks, so that the driver holds at most a chunk's replies (update
            # vectors) at once: the server folds each into its running sum.
            for lo in range(0, len(jobs), _REPLY_CHUNK):
                chunk = jobs[lo : lo + _REPLY_CHUNK]
                for (client, msg), result in zip(chunk, self.executor.handle(chunk), strict=True):
                    if isinstance(result, StageReply):
                        try:
                            eng.submit(client, result)
                        except ProtocolError as e:
                            log.warning(
                                "round %d: reply of %s refused: %s", eng.round + 1, client, e
                            )
                    elif isinstance(result, SecureFMLError):
                        # It says why, as a deployed site does: the stage need not wait.
                        log.warning("client %s leaves the round: %s", client, result)
                        notice = withdrawal_from(msg, result)
                        if notice is not None:
                            try:
                                eng.withdraw(client, notice)
                            except ProtocolError as e:
                                log.warning("withdrawal of %s refused: %s", client, e)
        if eng.stop_error is not None:
            raise eng.stop_error
        return eng.history[-1] if len(eng.history) > before else {}

    # -- the whole run ---------------------------------------------------------------------
    def run(self, *, progress: bool = True, resume: bool = False) -> RunResult:
        cfg = self.config
        try:
            self.open(resume=resume)
            if resume:
                log.info("resumed from round %d", self.round)
            bar = Progress(
                total=cfg.server.rounds,
                initial=self.round,
                enabled=progress,
                desc=f"{cfg.algorithm.name.value}",
                unit="round",
            )
            while not self.engine.finished:
                line = self.run_round()
                loss = line.get("train_loss")
                post = {"loss": f"{loss:.3f}" if loss else "-"}
                if "val_personalized_accuracy" in line:
                    post["val_pers"] = f"{line['val_personalized_accuracy']:.3f}"
                if line.get("epsilon") is not None:
                    post["eps"] = f"{line['epsilon']:.2f}"
                bar.set_postfix(post)
                bar.update(1)
            bar.close()
        except BaseException:
            # Budget exhausted, abort, interrupt: release the ledger's lock so the run can
            # be resumed (or reported) by another process; what was charged stays charged.
            self.close()
            raise
        final = self.evaluate_on(self._split.test) if self._split.test else None
        summary = self.summary(final)
        self.engine.metrics.event("summary", summary)
        self.close()
        if self.run_dir is not None:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return RunResult(self.run_dir, self.round, self.state, final, summary)

    def summary(self, final: EvalResult | None) -> dict[str, Any]:
        return {
            "algorithm": self.config.algorithm.name.value,
            "dataset": self._dataset.name,
            "rounds": self.round,
            "clients": {
                "train": len(self.train_ids),
                "val": len(self._split.val),
                "test": len(self._split.test),
            },
            "model": self.model_spec,
            "parameters": self.fmodel.dim,
            "update_dim": int(self.state.numel()),
            "mechanism": self.engine.summary(),
            "record_level": self._record.summary() if self._record is not None else None,
            "test": final.as_dict(per_client=True) if final is not None else None,
            **summary_fields(
                self.config, dataset=self._dataset, split=self._split, algorithm=self.algorithm
            ),
        }
