"""Round-engine overhead: a simulated round vs the raw algorithm calls it makes.

For each model (the FEMNIST CNN on FEMNIST writers when ``../shared/data`` is present,
and an MLP on the embedded synthetic task) we run rounds of a plain-sum simulation
through the engine -- sampling, round plan, RoundStart messages, the client pipelines
(model hash check, local update), the aggregation session, the server step, metrics --
and, in the same process on the same round's clients, state and server optimizer, the
raw calls: ``Algorithm.client_update`` for each client, a float64 sum and the
optimizer step. Timings alternate engine/raw per repetition and report medians, so
background load affects both alike. Target: ratio <= 1.05.

    python -m benchmarks.engine_overhead [--reps 7] [--algorithm maml] [--threads 1]

Writes benchmarks/results/engine_overhead.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from typing import Any

import numpy as np
import torch

from benchmarks._common import RESULTS, data_root, environment, write_json
from secure_fml.config import config_from_dict
from secure_fml.data import load_preset
from secure_fml.pipeline import seeded_generator
from secure_fml.rounds import ClientSampler
from secure_fml.simulation import Simulation


def _setups(algorithm: str) -> list[tuple[str, dict[str, Any], Any]]:
    out: list[tuple[str, dict[str, Any], Any]] = []
    root = data_root()
    if (root / "femnist").exists():
        ds = load_preset("femnist", root=str(root)).filter_min_samples(10)
        ds = ds.with_clients(ds.clients[:40])
        out.append(
            (
                "FEMNIST CNN (6.6M params)",
                {"data": {"preset": "femnist", "root": str(root)}, "model": {"kind": "cnn"}},
                ds,
            )
        )
    out.append(
        (
            "MLP on synthetic (hidden 64)",
            {"data": {"preset": "synthetic"}, "model": {"kind": "mlp", "hidden": [64]}},
            load_preset("synthetic"),
        )
    )
    for _, raw, _ in out:
        raw.update(
            {
                "algorithm": {"name": algorithm},
                "server": {"rounds": 10_000, "clients_per_round": 4},
                "eval": {"every": 0},
                "run": {"insecure_seed": 1},  # the same draws for both measurements
            }
        )
    return out


def _raw_round(
    sim: Simulation, round_: int, clients: list[str], state: torch.Tensor, opt: Any
) -> float:
    """The raw calls of one round: client updates, a float64 sum, the server step."""
    t0 = time.perf_counter()
    total = np.zeros(sim.algorithm.state_dim, dtype=np.float64)
    for name in clients:
        gen = seeded_generator(sim.config.run.seed, name)(round_)
        upd = sim.algorithm.client_update(state, sim.batch(name), gen)
        total += upd.vector.detach().numpy()
    opt.step(torch.from_numpy((total / len(clients)).astype(np.float32)))
    return time.perf_counter() - t0


def measure(label: str, raw: dict[str, Any], ds: Any, reps: int) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cfg = config_from_dict(raw)
        sim = Simulation(cfg, dataset=ds)
        sim.open()
        # The seeded draw of round r is a function of (seed, r): predict each round's
        # clients, so the raw calls can run before or after the engine round.
        predict = ClientSampler(
            sim.engine.population, cfg.server.sampling_config(), insecure_seed=1
        )
    sim.run_round()  # warm-up (allocations, first autograd graph)
    engine_s, raw_s = [], []
    for rep in range(reps):
        r = sim.round + 1
        clients = list(predict.sample(r).client_ids)
        state = sim.state.clone()
        opt = copy.deepcopy(sim.engine.optimizer)
        times: dict[str, float] = {}
        for which in ("engine", "raw") if rep % 2 == 0 else ("raw", "engine"):
            if which == "engine":
                t0 = time.perf_counter()
                line = sim.run_round()
                times["engine"] = time.perf_counter() - t0
                assert list(line["clients"]) == clients
            else:
                times["raw"] = _raw_round(sim, r, clients, state, opt)
        engine_s.append(times["engine"])
        raw_s.append(times["raw"])
    e, rr = statistics.median(engine_s), statistics.median(raw_s)
    row = {
        "model": label,
        "parameters": int(sim.fmodel.dim),
        "clients_per_round": 4,
        "engine_round_s": e,
        "raw_calls_s": rr,
        "ratio": e / rr,
        "engine_all_s": engine_s,
        "raw_all_s": raw_s,
    }
    print(f"{label:32s} engine {e * 1e3:8.1f} ms  raw {rr * 1e3:8.1f} ms  ratio {e / rr:.3f}")
    sim.close()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--algorithm", default="maml")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(label, raw, ds, args.reps) for label, raw, ds in _setups(args.algorithm)]
    cmd = (
        f"python -m benchmarks.engine_overhead --reps {args.reps} "
        f"--algorithm {args.algorithm} --threads {args.threads}"
    )
    payload = {"command": cmd, "environment": environment(), "rows": rows, "target": 1.05}
    write_json("engine_overhead.json", payload)
    lines = [
        "# Round-engine overhead",
        "",
        f"`{cmd}`",
        "",
        "A simulated round through the round engine over the in-memory transport (sampling, "
        "round plan, RoundStart messages, client pipelines with model-hash check, plain-sum "
        "aggregation session, server step, metrics line) against the raw calls it makes "
        "(`client_update` per client, float64 sum, server step) on the same clients, state "
        "and optimizer, alternating per repetition; medians. Target <= 1.05x.",
        "",
        "| model | parameters | engine round | raw calls | ratio |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['parameters']:,} | {r['engine_round_s'] * 1e3:.1f} ms | "
            f"{r['raw_calls_s'] * 1e3:.1f} ms | {r['ratio']:.3f} |"
        )
    env = payload["environment"]
    lines += [
        "",
        f"Algorithm {args.algorithm}, 4 clients per round, {args.reps} repetitions, "
        f"{env['threads']} torch thread(s), {env['cpus']} CPUs, commit {env['commit']}. "
        "The machine is shared with other jobs; both sides see the same load.",
    ]
    (RESULTS / "engine_overhead.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS / 'engine_overhead.md'}")


if __name__ == "__main__":
    main()
