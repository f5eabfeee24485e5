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

    python benchmarks/_flower_scale.py TASK.npz N WORKERS     # prints one JSON line
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
from flwr.clientapp import ClientApp
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
    loss = nn.functional.cross_entropy(model(x), y)
    loss_value = float(loss.detach())
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            assert p.grad is not None
            p -= 0.05 * p.grad
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"num-examples": len(y), "train_loss": loss_value}),
        }
    )
    return Message(content=content, reply_to=msg)


class TimedFedAvg(FedAvg):
    def __init__(self, n: int) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=n,
            min_evaluate_nodes=0,
            min_available_nodes=n,
        )
        self.t0: dict[int, float] = {}
        self.t1: dict[int, float] = {}
        self.replies: dict[int, int] = {}

    def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Grid) -> Any:
        self.t0[server_round] = time.perf_counter()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        replies = list(replies)
        out = super().aggregate_train(server_round, replies)
        self.t1[server_round] = time.perf_counter()
        self.replies[server_round] = sum(1 for r in replies if r.has_content())
        return out


def main() -> int:
    task, n, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    os.environ["SFML_FLOWER_TASK"] = task
    global TASK
    TASK = task
    with np.load(task) as z:
        dim, classes = int(z["x"].shape[1]), int(z["classes"])
    strategy = TimedFedAvg(n)
    server = ServerApp()

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
        client_app=client,
        num_supernodes=n,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": workers, "num_gpus": 0},
        },
    )
    total = time.perf_counter() - t
    r2 = strategy.t1[2] - strategy.t0[2]
    print(
        json.dumps(
            {
                "n": n,
                "executor": "flower-ray",
                "workers": workers,
                "contributors": strategy.replies.get(2, 0),
                "first_round_s": strategy.t1[1] - strategy.t0[1],
                "round_s": r2,
                "updates_per_s": strategy.replies.get(2, 0) / r2,
                "total_s": total,
                "peak_driver_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "load_average": list(os.getloadavg()),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
