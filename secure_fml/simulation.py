"""In-process federated simulation: the same round logic the gRPC coordinator runs.

A run directory holds ``config.json`` / ``config.toml`` (resolved), ``metrics.jsonl``
(one line per round), ``checkpoint.pt`` (atomic; see :mod:`secure_fml.checkpoint`)
and ``summary.json`` (final test-client evaluation).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

import privacy
from privacy import LedgerHead
from privacy.errors import ConfigError, ProtocolAbort
from secure_fml._functional import Batch, FunctionalModel
from secure_fml.algorithms import Algorithm, make_algorithm
from secure_fml.checkpoint import (
    Checkpoint,
    load_checkpoint,
    restore_training_state,
    resume_round,
    save_checkpoint,
    training_checkpoint,
)
from secure_fml.config import Config, config_to_dict, dump_toml
from secure_fml.data import ClientData, ClientSplit, FederatedDataset, InputKind, load_preset
from secure_fml.evaluation import EvalResult, evaluate, to_batch
from secure_fml.models import default_model
from secure_fml.record_dp import RecordDPAlgorithm, RecordLevelLedger, wrap_for_config
from secure_fml.rounds import (
    AggregateResult,
    ClientSampler,
    PlainSum,
    RoundContext,
    ServerOptimizer,
    UpdatePath,
)
from secure_fml.update_paths import DifferentialPrivacy, build_update_path

__all__ = ["RunResult", "Simulation", "build_model", "load_dataset", "model_spec_for"]

log = logging.getLogger(__name__)


def load_dataset(config: Config) -> FederatedDataset:
    dc = config.data
    ds = load_preset(dc.preset, root=dc.root, **dc.options)
    return ds.filter_min_samples(dc.min_samples)


def split_dataset(config: Config, ds: FederatedDataset) -> ClientSplit:
    if config.data.leave_out is not None:
        return ds.leave_one_out(config.data.leave_out)
    return ds.split_clients(fractions=config.data.client_fractions, seed=config.data.split_seed)


def model_spec_for(config: Config, ds: FederatedDataset) -> dict[str, Any]:
    kind = config.model.kind
    if kind == "auto":
        if ds.input_kind is InputKind.IMAGE and ds.sample_shape == (28, 28):
            kind = "cnn"
        elif ds.input_kind is InputKind.SEQUENCE:
            kind = "lstm"
        else:
            kind = "mlp"
    return {
        "kind": kind,
        "sample_shape": list(ds.sample_shape),
        "num_classes": ds.num_classes,
        "hidden": list(config.model.hidden),
        "input_kind": ds.input_kind.value,
    }


def build_model(spec: Mapping[str, Any]) -> nn.Module:
    return default_model(
        str(spec["kind"]),
        sample_shape=tuple(spec["sample_shape"]),
        num_classes=int(spec["num_classes"]),
        hidden=tuple(spec["hidden"]),
    )


def _client_seed(seed: int, round_: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, round_, index]).generate_state(1)[0])


@dataclass(frozen=True)
class RunResult:
    run_dir: Path | None
    rounds: int
    state: torch.Tensor
    final: EvalResult | None
    summary: dict[str, Any]


class Simulation:
    """Runs federated (meta-)training rounds in one process."""

    def __init__(
        self,
        config: Config,
        *,
        dataset: FederatedDataset | None = None,
        module: nn.Module | None = None,
        update_path: UpdatePath | None = None,
        run_dir: Path | str | None = None,
    ) -> None:
        self.config = config
        if config.run.threads is not None:
            torch.set_num_threads(config.run.threads)
        torch.manual_seed(config.run.seed)
        self.dataset = dataset if dataset is not None else load_dataset(config)
        self.split = split_dataset(config, self.dataset)
        if not self.split.train:
            raise ConfigError("the client split left no training clients")
        self.model_spec = model_spec_for(config, self.dataset)
        self.module = module if module is not None else build_model(self.model_spec)
        self.fmodel = FunctionalModel(self.module)
        self.algorithm: Algorithm = make_algorithm(config.algorithm, self.fmodel)
        # Record-level DP (privacy.unit = record | both): every site's local steps are DP-SGD.
        self.algorithm = wrap_for_config(config, self.algorithm, self.dataset)
        self._record: RecordLevelLedger | None = None
        self._record_head: dict[str, Any] | None = None
        self.state = self.algorithm.initial_state(self.fmodel.initial_parameters())
        self.optimizer = ServerOptimizer(
            self.state, config.server.optimizer_config(self.algorithm.update_kind)
        )
        self.rng = np.random.default_rng([config.run.seed, 1])
        self.sampler = ClientSampler(
            [c.client_id for c in self.split.train],
            config.server.sampling_config(),
            rng=self.rng,
        )
        self._update_path = update_path
        self._train = {c.client_id: c for c in self.split.train}
        self._batches: dict[str, Batch] = {}
        self.round = 0
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.history: list[dict[str, Any]] = []

    # -- helpers ---------------------------------------------------------------------------
    @property
    def update_path(self) -> UpdatePath:
        if self._update_path is None:
            self._update_path = self._build_update_path(None)
        return self._update_path

    def _build_update_path(self, ledger_head: dict[str, Any] | None) -> UpdatePath:
        cfg = self.config
        if cfg.privacy.unit == "record":
            # Record-level only: no client-level noise in the update path.
            cfg = dataclasses.replace(cfg, privacy=dataclasses.replace(cfg.privacy, enabled=False))
        if not cfg.privacy.enabled and cfg.secure_aggregation.protocol == "none":
            return PlainSum()
        ledger_dir = self.run_dir
        if ledger_dir is None:
            ledger_dir = Path(tempfile.mkdtemp(prefix="secure-fml-ledger-"))
        head = LedgerHead(**ledger_head) if ledger_head else None
        return build_update_path(
            cfg,
            population=len(self.split.train),
            ledger_dir=ledger_dir,
            rng=np.random.default_rng([cfg.run.seed, 2]),
            expected_head=head,
        )

    def close(self) -> None:
        """Release the privacy ledger (its file lock), if one is open."""
        if isinstance(self._update_path, DifferentialPrivacy):
            self._update_path.ledger.close()
        elif self._record is not None:
            self._record.ledger.close()

    @property
    def record_level(self) -> RecordLevelLedger | None:
        """Record-level bookkeeping (the run's ledger), when record-level DP is on."""
        if not isinstance(self.algorithm, RecordDPAlgorithm):
            return None
        if self._record is None:
            pc = self.config.privacy
            path = self.update_path
            if isinstance(path, DifferentialPrivacy):
                ledger = path.ledger
            else:
                ledger_dir = self.run_dir or Path(tempfile.mkdtemp(prefix="secure-fml-ledger-"))
                ledger_dir.mkdir(parents=True, exist_ok=True)
                head = LedgerHead(**self._record_head) if self._record_head else None
                ledger = privacy.PrivacyLedger.open(
                    ledger_dir / privacy.LEDGER_FILENAME, expected_head=head
                )
            self._record = RecordLevelLedger(
                ledger,
                delta=pc.delta,
                accountant=pc.accountant,
                max_epsilon=pc.record_max_epsilon,
                population=len(self.split.train),
            )
        return self._record

    def _batch(self, client_id: str) -> Batch:
        if client_id not in self._batches:
            self._batches[client_id] = to_batch(self._train[client_id], self.dataset.input_kind)
        return self._batches[client_id]

    def evaluate_on(self, clients: Sequence[ClientData]) -> EvalResult:
        return evaluate(
            self.algorithm,
            self.state,
            clients,
            input_kind=self.dataset.input_kind,
            support_fraction=self.config.algorithm.support_fraction,
            seed=self.config.data.split_seed,
            adapt_steps=self.config.eval.adapt_steps,
        )

    # -- one round -------------------------------------------------------------------------
    def run_round(self) -> dict[str, Any]:
        r = self.round + 1
        t0 = time.perf_counter()
        sampled = self.sampler.sample(r)
        ctx = RoundContext(r, sampled, int(self.state.numel()))
        contributions: dict[str, np.ndarray] = {}
        losses: list[float] = []
        norms: list[float] = []
        t_clients = 0.0
        record = self.record_level
        for i, cid in enumerate(sampled.client_ids):
            gen = torch.Generator().manual_seed(_client_seed(self.config.run.seed, r, i))
            if record is not None and not record.admit(
                self.algorithm, round=r, site_id=cid, data=self._batch(cid)
            ):
                continue  # at its record-level budget: the site stops contributing
            tc = time.perf_counter()
            upd = self.algorithm.client_update(self.state, self._batch(cid), gen)
            if upd.receipt is not None and record is not None:
                record.charge(upd.receipt, round=r, site_id=cid)  # before the update is used
            vec = upd.vector.detach().cpu().numpy().astype(np.float32, copy=False)
            t_clients += time.perf_counter() - tc
            if math.isfinite(upd.loss):  # record-level DP releases no clear loss
                losses.append(upd.loss)
            norms.append(float(np.linalg.norm(vec)))
            contributions[cid] = self.update_path.client_side(ctx, cid, vec)
        aborted: str | None = None
        try:
            agg = self.update_path.aggregate(ctx, contributions)
        except ProtocolAbort as e:
            # The round releases nothing and is charged nothing (aborts happen before the
            # ledger records); training goes on. A spent budget is not an abort: it stops.
            log.warning("round %d aborted: %s", r, e)
            aborted = str(e)
            agg = AggregateResult(np.zeros(ctx.dim, np.float32), 0, 1.0, ())
        if agg.count > 0:
            self.state = self.optimizer.step(torch.from_numpy(agg.total / agg.denominator))
        self.round = r
        line: dict[str, Any] = {
            **sampled.as_dict(),
            "contributors": agg.count,
            "train_loss": float(np.mean(losses)) if losses else None,
            "update_norm_mean": float(np.mean(norms)) if norms else None,
            "client_compute_s": t_clients,
            "round_s": time.perf_counter() - t0,
            **{k: v for k, v in agg.info.items() if k != "clients"},
        }
        if aborted is not None:
            line["aborted"] = aborted
        if record is not None:
            eps = record.epsilons()
            line["record_dp_epsilon_worst_site"] = max(eps.values()) if eps else 0.0
            line["record_dp_sites_at_budget"] = len(record.exhausted)
        every = self.config.eval.every
        if every and r % every == 0 and self.split.val:
            val = self.split.val[: self.config.eval.max_val_clients]
            res = self.evaluate_on(val)
            line["val_global_accuracy"] = res.global_accuracy
            line["val_personalized_accuracy"] = res.personalized_accuracy
        self.history.append(line)
        return line

    # -- checkpoints -----------------------------------------------------------------------
    def checkpoint(self) -> Checkpoint:
        path = self.update_path
        return training_checkpoint(
            round=self.round,
            state=self.state,
            optimizer=self.optimizer,
            rng=self.rng,
            model_spec=self.model_spec,
            config=config_to_dict(self.config),
            algorithm=self.config.algorithm.name.value,
            ledger_head=path.ledger.head
            if isinstance(path, DifferentialPrivacy)
            else (self._record.ledger.head if self._record is not None else None),
        )

    def restore(self, ckpt: Checkpoint) -> None:
        self.state = restore_training_state(
            ckpt, expected_numel=self.state.numel(), optimizer=self.optimizer, rng=self.rng
        )
        self._record_head = ckpt.extra.get("ledger_head")
        if self._update_path is None:
            self._update_path = self._build_update_path(ckpt.extra.get("ledger_head"))
        last = (
            self._update_path.ledger.last_round
            if isinstance(self._update_path, DifferentialPrivacy)
            else None
        )
        self.round = resume_round(ckpt.round, last)

    # -- the whole run ---------------------------------------------------------------------
    def run(self, *, progress: bool = True, resume: bool = False) -> RunResult:
        cfg = self.config
        run_dir = self.run_dir
        metrics_f = None
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            ckpt_path = run_dir / "checkpoint.pt"
            if resume and ckpt_path.exists():
                self.restore(load_checkpoint(ckpt_path))
                log.info("resumed from round %d", self.round)
            elif not resume:
                (run_dir / "config.json").write_text(
                    json.dumps(config_to_dict(cfg), indent=2) + "\n", encoding="utf-8"
                )
                (run_dir / "config.toml").write_text(dump_toml(cfg), encoding="utf-8")
                (run_dir / "metrics.jsonl").write_text("", encoding="utf-8")
            metrics_f = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        try:
            bar = tqdm(
                total=cfg.server.rounds,
                initial=self.round,
                disable=not progress,
                desc=f"{cfg.algorithm.name.value}",
                unit="round",
            )
            while self.round < cfg.server.rounds:
                line = self.run_round()
                if metrics_f is not None:
                    metrics_f.write(json.dumps(line) + "\n")
                    metrics_f.flush()
                post = {"loss": f"{line['train_loss']:.3f}" if line["train_loss"] else "-"}
                if "val_personalized_accuracy" in line:
                    post["val_pers"] = f"{line['val_personalized_accuracy']:.3f}"
                bar.set_postfix(post)
                bar.update(1)
                if run_dir is not None and (
                    self.round % cfg.run.checkpoint_every == 0 or self.round == cfg.server.rounds
                ):
                    save_checkpoint(run_dir / "checkpoint.pt", self.checkpoint())
            bar.close()
        except BaseException:
            # Budget exhausted, abort, interrupt: release the ledger's lock so the run can
            # be resumed (or reported) by another process; what was charged stays charged.
            self.close()
            raise
        finally:
            if metrics_f is not None:
                metrics_f.close()
        final = self.evaluate_on(self.split.test) if self.split.test else None
        summary = self.summary(final)
        self.close()
        if run_dir is not None:
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return RunResult(run_dir, self.round, self.state, final, summary)

    def summary(self, final: EvalResult | None) -> dict[str, Any]:
        return {
            "algorithm": self.config.algorithm.name.value,
            "dataset": self.dataset.name,
            "rounds": self.round,
            "clients": {
                "train": len(self.split.train),
                "val": len(self.split.val),
                "test": len(self.split.test),
            },
            "model": self.model_spec,
            "parameters": self.fmodel.dim,
            "update_dim": int(self.state.numel()),
            "update_path": self.update_path.summary(),
            "record_level": self.record_level.summary() if self.record_level else None,
            "test": final.as_dict(per_client=True) if final is not None else None,
        }
