"""Flower's Ray simulation on scale_out's task, for ``benchmarks.scale_out --flower-python``.

Runs in an interpreter with ``flwr[simulation]`` (and torch) installed; it imports neither
secure_fml nor the rest of this repository, so Flower's pinned dependencies never meet
ours. ``scale_out`` exports the synthetic task's partitions (one float32 x, int64 y per
client) to an ``.npz``; every Flower ClientApp loads its partition from that file (once
per Ray worker process) and does what secure-fml's FedAvg client does on this task: one
full-batch SGD step at lr 0.05 on the same MLP (dim -> 64 -> classes), returning its
weights and sample count. The ServerApp is Flower's FedAvg (Message API) over all n
nodes, no evaluation, two rounds; the second round is timed from ``configure_train`` to
the end of ``aggregate_train``, as scale_out times the engine's second round.

With ``secagg+`` (and the SecAgg+ share count K and threshold T scale_out's own round
uses at this n), the same clients run under Flower's SecAgg+: its legacy
``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(K, T))`` with the legacy FedAvg
strategy on the server and ``secaggplus_mod`` on every ClientApp (Flower's own SecAgg+
example does the same). Flower's SecAgg+ quantizes the clipped weights and masks them;
it adds no DP noise. The second round is timed from ``configure_fit`` to the end of
``aggregate_fit``.

    python benchmarks/_flower_scale.py TASK.npz N WORKERS [secagg+ K T]   # one JSON line
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import ndarrays_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation
from torch import nn

TASK = os.environ.get("SFML_FLOWER_TASK", "")
_PARTS: dict[str, Any] = {}


def _model(dim: int, classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, classes))


def _partition(pid: int) -> tuple[torch.Tensor, torch.Tensor]:
    if "z" not in _PARTS:
        with np.load(TASK or os.environ["SFML_FLOWER_TASK"]) as z:
            _PARTS["z"] = {k: z[k] for k in z.files}
    z = _PARTS["z"]
    lo, hi = int(z["offsets"][pid]), int(z["offsets"][pid + 1])
    return torch.from_numpy(z["x"][lo:hi]), torch.from_numpy(z["y"][lo:hi])


client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    x, y = _partition(int(context.node_config["partition-id"]))
    model = _model(x.shape[1], int(_PARTS["z"]["classes"]))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loss_value = _sgd_step(model, x, y)
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"num-examples": len(y), "train_loss": loss_value}),
        }
    )
    return Message(content=content, reply_to=msg)


def _sgd_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """One full-batch SGD step at lr 0.05 (secure-fml's FedAvg client on this task)."""
    loss = nn.functional.cross_entropy(model(x), y)
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            assert p.grad is not None
            p -= 0.05 * p.grad
    return float(loss.detach())


class _NumPyTrain(NumPyClient):
    """The same local step as ``train``, as a legacy client (what ``secaggplus_mod``
    wraps)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def fit(self, parameters: list[np.ndarray], config: Any) -> Any:
        torch.set_num_threads(1)
        x, y = _partition(self.pid)
        model = _model(x.shape[1], int(_PARTS["z"]["classes"]))
        keys = list(model.state_dict())
        model.load_state_dict(
            {k: torch.from_numpy(np.asarray(v)) for k, v in zip(keys, parameters, strict=True)}
        )
        loss = _sgd_step(model, x, y)
        out = [v.detach().numpy().copy() for v in model.state_dict().values()]
        return out, len(y), {"train_loss": loss}


def _client_fn(context: Context) -> Any:
    return _NumPyTrain(int(context.node_config["partition-id"])).to_client()


secagg_client = ClientApp(client_fn=_client_fn, mods=[secaggplus_mod])


class _RoundClock:
    """When each round's configure and aggregate calls happened, and its reply count."""

    def __init__(self) -> None:
        self.t0: dict[int, float] = {}
        self.t1: dict[int, float] = {}
        self.replies: dict[int, int] = {}

    def start(self, server_round: int) -> None:
        self.t0[server_round] = time.perf_counter()

    def end(self, server_round: int, replies: int) -> None:
        self.t1[server_round] = time.perf_counter()
        self.replies[server_round] = replies

    def seconds(self, server_round: int) -> float:
        return self.t1[server_round] - self.t0[server_round]


class TimedLegacyFedAvg(LegacyFedAvg):
    def __init__(self, n: int, initial: Any) -> None:
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=n,
            min_evaluate_clients=0,
            min_available_clients=n,
            initial_parameters=initial,
        )
        self.clock = _RoundClock()
        #: Inputs the SecAgg+ workflow's unmasking stage summed (set by the workflow).
        self.survivors = 0

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
        self.clock.start(server_round)
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
        out = super().aggregate_fit(server_round, results, failures)
        # The workflow hands the strategy one unmasked sum of the survivors; count them.
        self.clock.end(server_round, self.survivors)
        return out


class TimedFedAvg(FedAvg):
    def __init__(self, n: int) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=n,
            min_evaluate_nodes=0,
            min_available_nodes=n,
        )
        self.clock = _RoundClock()

    def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Grid) -> Any:
        self.clock.start(server_round)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        replies = list(replies)
        out = super().aggregate_train(server_round, replies)
        self.clock.end(server_round, sum(1 for r in replies if r.has_content()))
        return out


class _CountingSecAggPlus(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow, counting the inputs its unmasking stage summed."""

    def __init__(self, strategy: TimedLegacyFedAvg, shares: int, threshold: int) -> None:
        super().__init__(num_shares=shares, reconstruction_threshold=threshold)
        self.strategy = strategy

    def unmask_stage(self, grid: Grid, context: Any, state: Any) -> bool:
        self.strategy.survivors = len(state.active_node_ids)
        return bool(super().unmask_stage(grid, context, state))


def main() -> int:
    task, n, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    secure = len(sys.argv) > 4 and sys.argv[4] == "secagg+"
    os.environ["SFML_FLOWER_TASK"] = task
    global TASK
    TASK = task
    with np.load(task) as z:
        dim, classes = int(z["x"].shape[1]), int(z["classes"])
    server = ServerApp()
    strategy: Any
    if secure:
        shares, threshold = int(sys.argv[5]), int(sys.argv[6])
        torch.manual_seed(0)
        init = [v.numpy() for v in _model(dim, classes).state_dict().values()]
        strategy = TimedLegacyFedAvg(n, ndarrays_to_parameters(init))

        @server.main()
        def _secure_main(grid: Grid, context: Context) -> None:
            legacy = LegacyContext(
                context=context, config=ServerConfig(num_rounds=2), strategy=strategy
            )
            workflow = _CountingSecAggPlus(strategy, shares, threshold)
            DefaultWorkflow(fit_workflow=workflow)(grid, legacy)

    else:
        strategy = TimedFedAvg(n)

        @server.main()
        def _main(grid: Grid, context: Context) -> None:
            torch.manual_seed(0)
            strategy.start(
                grid=grid,
                initial_arrays=ArrayRecord(_model(dim, classes).state_dict()),
                num_rounds=2,
            )

    t = time.perf_counter()
    run_simulation(
        server_app=server,
        client_app=secagg_client if secure else client,
        num_supernodes=n,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": workers, "num_gpus": 0},
        },
    )
    total = time.perf_counter() - t
    clock = strategy.clock
    r2 = clock.seconds(2)
    print(
        json.dumps(
            {
                "n": n,
                "executor": "flower-ray",
                "protocol": "secagg+" if secure else "plain",
                "workers": workers,
                "contributors": clock.replies.get(2, 0),
                "first_round_contributors": clock.replies.get(1, 0),
                "first_round_s": clock.seconds(1),
                "round_s": r2,
                "updates_per_s": clock.replies.get(2, 0) / r2,
                "total_s": total,
                "peak_driver_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "load_average": list(os.getloadavg()),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
