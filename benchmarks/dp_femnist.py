"""FedMeta(Meta-SGD) and FedMeta(MAML) on FEMNIST with client-level DP at several ε.

Each configuration trains on the 80% training writers with Poisson client
sampling (expected ``--clients`` per round), clips every client's whole update
(θ and α parts together) to ``--clip``, adds central Gaussian noise calibrated
by the RDP accountant to reach the target ε at δ after ``--rounds`` rounds, and
records every release in the privacy ledger. The non-private row uses the same
sampling, clipping off and no noise. Accuracy is over all query points of the
unseen test writers (20% support).

    python -m benchmarks.dp_femnist

Writes benchmarks/results/dp_femnist.json and .md (after every run), and the
privacy plan/projection for 300, 3,000 and 30,000 clients.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import privacy
from benchmarks._common import RESULTS, data_root, environment, write_json
from secure_fml.config import config_from_dict
from secure_fml.privacy_text import render_projection
from secure_fml.simulation import Simulation


def run_one(alg: str, eps: float | None, args: argparse.Namespace) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "data": {"preset": "femnist", "root": str(data_root()), "min_samples": 10},
        "algorithm": {"name": alg, "inner_lr": 0.05, "support_fraction": 0.2},
        "server": {
            "rounds": args.rounds,
            "sampling": "poisson",
            "clients_per_round": None,
            "sampling_rate": 0.5,
        },
        "eval": {"every": 0},
        "run": {
            "seed": args.seed,
            "threads": args.threads,
            "name": f"dp_{alg}_{eps}",
            "out_dir": "/tmp/secure-fml-dp-runs",
        },
    }
    sim0 = Simulation(config_from_dict(raw))  # to learn N (training writers)
    population = len(sim0.split.train)
    raw["server"]["sampling_rate"] = args.clients / population
    if eps is not None:
        raw["privacy"] = {
            "enabled": True,
            "target_epsilon": eps,
            "delta": args.delta,
            "clip_norm": args.clip,
            "placement": "central",
        }
    cfg = config_from_dict(raw)
    t0 = time.perf_counter()
    sim = Simulation(cfg)
    res = sim.run(progress=True)
    assert res.final is not None
    out = {
        "algorithm": alg,
        "target_epsilon": eps,
        "population": population,
        "rounds": args.rounds,
        "wall_s": time.perf_counter() - t0,
        "test": res.final.as_dict(),
        "update_path": res.summary["mechanism"],
        "train_loss_last10": sum(h["train_loss"] or 0 for h in sim.history[-10:]) / 10,
    }
    print(
        f"{alg} eps={eps}: global {100 * res.final.global_accuracy:.2f} personalized "
        f"{100 * res.final.personalized_accuracy:.2f} ({out['wall_s']:.0f}s) "
        f"{res.summary['mechanism']}",
        flush=True,
    )
    return out


def markdown(payload: dict[str, Any]) -> str:
    lines = [
        "# FEMNIST FedMeta with client-level DP",
        "",
        f"Command: `{payload['command']}`",
        "",
        f"{payload['rounds']} rounds, Poisson sampling with expected {payload['clients']} of "
        f"N={payload['population']} training writers per round, clip C={payload['clip']}, "
        f"central Gaussian noise, δ={payload['delta']}, RDP accountant, seed {payload['seed']}. "
        "ε is client-level (the privacy unit is a writer).",
        "",
        "| algorithm | target ε | ε spent | noise multiplier | global acc % | personalized acc % |",
        "|---|---|---|---|---|---|",
    ]
    for r in payload["runs"]:
        up = r["update_path"]
        eps = f"{r['target_epsilon']:g}" if r["target_epsilon"] else "∞ (no DP)"
        spent = f"{up['epsilon']:.2f}" if "epsilon" in up else "–"
        z = f"{up['noise_multiplier']:.3f}" if "noise_multiplier" in up else "0"
        lines.append(
            f"| {r['algorithm']} | {eps} | {spent} | {z} | "
            f"{100 * r['test']['global_accuracy']:.2f} | "
            f"{100 * r['test']['personalized_accuracy']:.2f} |"
        )
    lines += [
        "",
        "Privacy plan and projection (same rounds and clients per round):",
        "",
        "```",
        payload["projection"],
        "```",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--clients", type=int, default=8, help="expected clients per round")
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--epsilons", type=float, nargs="+", default=[2.0, 4.0, 8.0])
    ap.add_argument("--algorithms", nargs="+", default=["metasgd", "maml"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    command = (
        f"python -m benchmarks.dp_femnist --rounds {args.rounds} --clients {args.clients} "
        f"--clip {args.clip} --delta {args.delta} --epsilons "
        f"{' '.join(f'{e:g}' for e in args.epsilons)} --algorithms "
        f"{' '.join(args.algorithms)} --seed {args.seed}"
    )
    runs: list[dict[str, Any]] = []
    payload: dict[str, Any] = {}
    for alg in args.algorithms:
        for eps in [None, *args.epsilons]:
            runs.append(run_one(alg, eps, args))
            population = runs[-1]["population"]
            proj = privacy.project(
                target_epsilon=max(args.epsilons),
                rounds=args.rounds,
                clients_per_round=args.clients,
                populations=(population, 3000, 30000),
            )
            payload = {
                "command": command,
                "environment": environment(),
                **vars(args),
                "population": population,
                "runs": runs,
                "projection": render_projection(proj),
            }
            write_json("dp_femnist.json", payload)
            (RESULTS / "dp_femnist.md").write_text(markdown(payload), encoding="utf-8")
    print(markdown(payload))


if __name__ == "__main__":
    main()
