"""Table 2 of FedMeta (Chen et al. 2018) at 20% support on the 396-writer FEMNIST.

Trains FedAvg, FedMeta(MAML) and FedMeta(Meta-SGD) for ``--rounds`` rounds with
4 clients per round on the 80% training writers, for each seed; FedAvg(Meta)
is the FedAvg model fine-tuned on each test writer's support set. Accuracy is
over all query points of the unseen test writers (the paper's convention),
with the per-writer distribution. Learning curves (validation writers every
``--eval-every`` rounds) are kept as evidence of convergence.

    python -m benchmarks.fedmeta_femnist                       # the committed run
    python -m benchmarks.fedmeta_femnist --rounds 20 --seeds 0  # smoke test

Writes benchmarks/results/fedmeta_femnist.json and .md (after every run, so a
partial result survives an interruption).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from benchmarks._common import RESULTS, data_root, environment, write_json
from secure_fml.config import config_from_dict
from secure_fml.simulation import Simulation

PAPER_20 = {  # Table 2, FEMNIST, 20% support (mean ± std over their runs), 2000 rounds
    "FedAvg": (76.79, 0.45),
    "FedAvg(Meta)": (83.58, 0.13),
    "FedMeta(MAML)": (88.46, 0.25),
    "FedMeta(Meta-SGD)": (89.26, 0.12),
}

# (row name, algorithm, config overrides, which accuracy is the row's headline)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "fedavg": ("fedavg", {"local_lr": 0.05, "batch_size": 32, "adapt_steps": 5}),
    "maml": ("maml", {"inner_lr": 0.05, "inner_steps": 1}),
    "metasgd": ("metasgd", {"inner_lr": 0.05, "inner_steps": 1}),
}


def run_one(method: str, seed: int, rounds: int, eval_every: int, threads: int) -> dict[str, Any]:
    alg, overrides = METHODS[method]
    cfg = config_from_dict(
        {
            "data": {"preset": "femnist", "root": str(data_root()), "min_samples": 10},
            "algorithm": {"name": alg, "support_fraction": 0.2, **overrides},
            "server": {"rounds": rounds, "clients_per_round": 4},
            "eval": {"every": eval_every, "max_val_clients": None},
            "run": {"seed": seed, "threads": threads},
        }
    )
    t0 = time.perf_counter()
    sim = Simulation(cfg)
    res = sim.run(progress=True)
    assert res.final is not None
    curve = [
        {k: line[k] for k in ("round", "val_global_accuracy", "val_personalized_accuracy")}
        for line in sim.history
        if "val_personalized_accuracy" in line
    ]
    return {
        "method": method,
        "seed": seed,
        "rounds": rounds,
        "wall_s": time.perf_counter() - t0,
        "test": res.final.as_dict(),
        "curve": curve,
        "config": json.loads(json.dumps(cfg.algorithm.__dict__, default=str)),
    }


def table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    spec = [
        ("FedAvg", "fedavg", "global_accuracy"),
        ("FedAvg(Meta)", "fedavg", "personalized_accuracy"),
        ("FedMeta(MAML)", "maml", "personalized_accuracy"),
        ("FedMeta(Meta-SGD)", "metasgd", "personalized_accuracy"),
    ]
    for name, method, key in spec:
        vals = [100 * r["test"][key] for r in runs if r["method"] == method]
        p10 = [
            100
            * r["test"]["per_client_" + ("global" if key.startswith("global") else "personalized")][
                "p10"
            ]
            for r in runs
            if r["method"] == method
        ]
        if not vals:
            continue
        rows.append(
            {
                "method": name,
                "seeds": len(vals),
                "mean": float(np.mean(vals)),
                "std": float(np.std(vals)),
                "p10_mean": float(np.mean(p10)),
                "paper_mean": PAPER_20[name][0],
                "paper_std": PAPER_20[name][1],
            }
        )
    return rows


def markdown(payload: dict[str, Any]) -> str:
    lines = [
        "# FedMeta Table 2 on FEMNIST, 20% support",
        "",
        f"Command: `{payload['command']}`",
        "",
        f"Rounds: {payload['rounds']} (paper: 2000), 4 clients/round, seeds {payload['seeds']}, "
        f"CPU threads {payload['environment']['threads']}.",
        "Accuracy over all query points of the unseen test writers; p10 = 10th percentile "
        "of per-writer accuracy (fairness).",
        "",
        "| method | ours (mean ± std) | per-writer p10 | paper (2000 rounds) |",
        "|---|---|---|---|",
    ]
    for r in payload["table"]:
        lines.append(
            f"| {r['method']} | {r['mean']:.2f} ± {r['std']:.2f} (n={r['seeds']}) | "
            f"{r['p10_mean']:.1f} | {r['paper_mean']:.2f} ± {r['paper_std']:.2f} |"
        )
    lines += ["", "Validation learning curves (personalized accuracy, seed mean):", ""]
    by_method: dict[str, dict[int, list[float]]] = {}
    for run in payload["runs"]:
        for pt in run["curve"]:
            by_method.setdefault(run["method"], {}).setdefault(pt["round"], []).append(
                pt["val_personalized_accuracy"]
            )
    for m, pts in by_method.items():
        s = ", ".join(f"r{r}: {100 * np.mean(v):.1f}" for r, v in sorted(pts.items()))
        lines.append(f"- {m}: {s}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=150)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="fedmeta_femnist")
    args = ap.parse_args()
    command = "python -m benchmarks.fedmeta_femnist " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
    )
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        for method in args.methods:
            runs.append(run_one(method, seed, args.rounds, args.eval_every, args.threads))
            r = runs[-1]
            print(
                f"{method} seed={seed}: global {100 * r['test']['global_accuracy']:.2f} "
                f"personalized {100 * r['test']['personalized_accuracy']:.2f} "
                f"({r['wall_s']:.0f}s)",
                flush=True,
            )
            payload = {
                "command": command,
                "rounds": args.rounds,
                "seeds": args.seeds,
                "environment": environment(),
                "table": table(runs),
                "runs": runs,
            }
            write_json(f"{args.out}.json", payload)
            (RESULTS / f"{args.out}.md").write_text(markdown(payload), encoding="utf-8")
    print(markdown(payload))


if __name__ == "__main__":
    main()
