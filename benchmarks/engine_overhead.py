"""Round-engine overhead: a simulated round vs the raw algorithm calls it makes.

For each model (the FEMNIST CNN on FEMNIST writers when ``../shared/data`` is present,
and an MLP on the embedded synthetic task) we run rounds of a plain-sum simulation
through the engine -- sampling, round plan, RoundStart messages, the client pipelines
(model hash check, local update), the aggregation session, the server step, metrics --
and, in the same process on the same round's clients, state and server optimizer, the
raw calls: ``Algorithm.client_update`` for each client, a float64 sum and the
optimizer step. The engine runs as in production (clients drawn from the CSPRNG, no
insecure test seed): each repetition is an engine round followed by the raw calls on
that round's clients, so every engine round follows raw calls and every raw round
follows an engine round (and finds its clients' data warm, which favours the raw side).
Medians, so background load affects both alike. Target: ratio <= 1.05.

    python -m benchmarks.engine_overhead [--reps 7] [--algorithm maml] [--threads 1]

Writes benchmarks/results/engine_overhead.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
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
    cfg = config_from_dict(raw)
    sim = Simulation(cfg, dataset=ds)
    sim.open()
    sim.run_round()  # warm-up (allocations, first autograd graph)
    engine_s, raw_s = [], []
    for _ in range(reps):
        r = sim.round + 1
        state = sim.state.clone()
        opt = copy.deepcopy(sim.engine.optimizer)
        t0 = time.perf_counter()
        line = sim.run_round()
        engine_s.append(time.perf_counter() - t0)
        assert line["round"] == r and line["status"] == "complete", line
        # The same round's clients, generators, state and optimizer, called directly.
        raw_s.append(_raw_round(sim, r, list(line["clients"]), state, opt))
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
        **cold_cache_probe(sim),
    }
    print(f"{label:32s} engine {e * 1e3:8.1f} ms  raw {rr * 1e3:8.1f} ms  ratio {e / rr:.3f}")
    sim.close()
    return row


def cold_cache_probe(sim: Simulation, reps: int = 201) -> dict[str, float]:
    """One small engine call (drawing a round's clients) timed back to back, and right
    after a client's local update, on the same sampler: the median of each, in µs.

    The engine's own work per round is a few hundred small Python calls. Run between
    client updates (as in a round), each finds the interpreter's caches cleared by the
    update's kernels; this probe measures that factor on one such call."""
    sampler = ClientSampler(sim.engine.population, sim.config.server.sampling_config())
    name = sim.engine.population[0]
    state = sim.state.clone()
    batch = sim.batch(name)
    warm: list[float] = []
    cold: list[float] = []
    for i in range(reps):
        if i % 2:
            gen = seeded_generator(sim.config.run.seed, name)(i)
            sim.algorithm.client_update(state, batch, gen)
        t0 = time.perf_counter()
        sampler.sample(i + 1)
        (cold if i % 2 else warm).append(time.perf_counter() - t0)
    return {
        "sample_warm_us": statistics.median(warm) * 1e6,
        "sample_after_client_update_us": statistics.median(cold) * 1e6,
    }


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
    payload: dict[str, Any] = {
        "command": cmd,
        "environment": environment(),
        "rows": rows,
        "target": 1.05,
    }
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
    lines += [
        "",
        "Cold caches: one small engine call (`ClientSampler.sample`, a round's draw of 4 "
        "clients from the CSPRNG), median µs, back to back vs right after a client's "
        "local update (as it runs in a round):",
        "",
        "| model | back to back | after a client update | factor |",
        "|---|---|---|---|",
    ]
    for r in rows:
        w, c = r["sample_warm_us"], r["sample_after_client_update_us"]
        lines.append(f"| {r['model']} | {w:.1f} µs | {c:.1f} µs | {c / w:.1f}x |")
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
