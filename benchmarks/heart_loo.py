"""Leave-one-hospital-out on UCI heart disease (4 hospitals).

For each hospital in turn, the other three train a meta-model (every hospital
every round: cross-silo), and the held-out hospital is the new site: it adapts
the meta-model on its support set (``--support`` of its patients) and is
evaluated on the rest. The comparison is the same hospital training a model of
the same architecture *alone* on the same support set (Adam, ``--alone-steps``
full-batch steps, best of a small learning-rate grid chosen on the support set
itself by 5-fold cross-validation, so the query set is never looked at).

    python -m benchmarks.heart_loo

Writes benchmarks/results/heart_loo.json and .md.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch

from benchmarks._common import RESULTS, data_root, environment, write_json
from secure_fml._functional import Batch, FunctionalModel
from secure_fml.config import config_from_dict
from secure_fml.data import load_preset
from secure_fml.evaluation import support_query_for_eval, to_batch
from secure_fml.models import MLP
from secure_fml.simulation import Simulation

HOSPITALS = ("cleveland", "hungarian", "switzerland", "va")


def train_alone(support: Batch, query: Batch, *, steps: int, seed: int) -> float:
    """Accuracy on ``query`` of an MLP trained only on ``support`` (lr picked by CV on support)."""
    fm, p = fit_alone(support, steps=steps, seed=seed)
    return fm.correct(p, query) / len(query)


def fit_alone(
    support: Batch, *, steps: int, seed: int, hidden: tuple[int, ...] = (64,)
) -> tuple[FunctionalModel, torch.Tensor]:
    """An MLP trained only on ``support`` (Adam; lr picked by 5-fold CV on support)."""

    def fit(train: Batch, lr: float) -> tuple[FunctionalModel, torch.Tensor]:
        torch.manual_seed(seed)
        fm = FunctionalModel(MLP(train.x.shape[1], 2, hidden=hidden))
        p = torch.nn.Parameter(fm.initial_parameters())
        opt = torch.optim.Adam([p], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            fm.loss(p, train).backward()
            opt.step()
        return fm, p.detach()

    n = len(support)
    folds = np.array_split(np.random.default_rng(seed).permutation(n), min(5, n))
    best_lr, best_acc = 1e-3, -1.0
    for lr in (1e-3, 3e-3, 1e-2, 3e-2):
        correct = 0
        for f in folds:
            mask = np.ones(n, dtype=bool)
            mask[f] = False
            fm, p = fit(support.take(torch.from_numpy(np.flatnonzero(mask))), lr)
            correct += fm.correct(p, support.take(torch.from_numpy(f)))
        if correct / n > best_acc:
            best_lr, best_acc = lr, correct / n
    fm, p = fit(support, best_lr)
    return fm, p


def run(args: argparse.Namespace) -> dict[str, Any]:
    ds = load_preset("heart", root=str(data_root()))
    rows = []
    for seed in args.seeds:
        for held in HOSPITALS:
            for alg in args.algorithms:
                cfg = config_from_dict(
                    {
                        "data": {
                            "preset": "heart",
                            "root": str(data_root()),
                            "leave_out": held,
                            "split_seed": seed,
                        },
                        "model": {"kind": "mlp", "hidden": [64]},
                        "algorithm": {
                            "name": alg,
                            "inner_lr": 0.1,
                            "inner_steps": 5,
                            "support_fraction": args.support,
                            "local_lr": 0.05,
                            "batch_size": 32,
                        },
                        "server": {
                            "rounds": args.rounds,
                            "sampling": "all",
                            "clients_per_round": None,
                        },
                        "eval": {"every": 0},
                        "run": {"seed": seed, "threads": 1},
                    }
                )
                t0 = time.perf_counter()
                res = Simulation(cfg, dataset=ds).run(progress=False)
                assert res.final is not None
                rows.append(
                    {
                        "held_out": held,
                        "algorithm": alg,
                        "seed": seed,
                        "global": res.final.global_accuracy,
                        "personalized": res.final.personalized_accuracy,
                        "query_points": res.final.num_query_points,
                        "wall_s": time.perf_counter() - t0,
                    }
                )
            # The same support/query split the evaluation used (seed = split_seed, index 0).
            support, query = support_query_for_eval(
                ds.client(held), support_fraction=args.support, seed=seed, index=0
            )
            s, q = to_batch(support, ds.input_kind), to_batch(query, ds.input_kind)
            rows.append(
                {
                    "held_out": held,
                    "algorithm": "alone",
                    "seed": seed,
                    "global": None,
                    "personalized": train_alone(s, q, steps=args.alone_steps, seed=seed),
                    "query_points": len(q),
                    "support_points": len(s),
                }
            )
            print(
                ", ".join(
                    f"{r['algorithm']}={100 * r['personalized']:.1f}"
                    for r in rows
                    if r["held_out"] == held and r["seed"] == seed
                ),
                f"[{held}, seed {seed}]",
                flush=True,
            )
    return {"rows": rows}


def markdown(payload: dict[str, Any]) -> str:
    rows = payload["rows"]
    algs = [*payload["algorithms"], "alone"]
    lines = [
        "# Leave-one-hospital-out, UCI heart disease",
        "",
        f"Command: `{payload['command']}`",
        "",
        f"Held-out hospital adapts on {payload['support']:.0%} of its patients (support) and is "
        f"tested on the rest; {payload['rounds']} rounds on the other three hospitals; seeds "
        f"{payload['seeds']}. 'alone' = same MLP trained only on the held-out support set. "
        "Personalized accuracy in %, mean ± std over seeds (global = before adaptation).",
        "",
        "| held-out hospital | " + " | ".join(algs) + " |",
        "|---|" + "---|" * len(algs),
    ]
    for h in HOSPITALS:
        cells = []
        for a in algs:
            v = [
                100 * r["personalized"] for r in rows if r["held_out"] == h and r["algorithm"] == a
            ]
            g = [
                100 * r["global"]
                for r in rows
                if r["held_out"] == h and r["algorithm"] == a and r["global"] is not None
            ]
            cell = f"{np.mean(v):.1f} ± {np.std(v):.1f}"
            if g:
                cell += f" (global {np.mean(g):.1f})"
            cells.append(cell)
        lines.append(f"| {h} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--support", type=float, default=0.2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--algorithms", nargs="+", default=["maml", "metasgd", "fedavg-meta"])
    ap.add_argument("--alone-steps", type=int, default=200)
    args = ap.parse_args()
    command = (
        f"python -m benchmarks.heart_loo --rounds {args.rounds} --support {args.support} "
        f"--seeds {' '.join(map(str, args.seeds))} --algorithms {' '.join(args.algorithms)} "
        f"--alone-steps {args.alone_steps}"
    )
    payload = {"command": command, "environment": environment(), **vars(args), **run(args)}
    write_json("heart_loo.json", payload)
    md = markdown(payload)
    (RESULTS / "heart_loo.md").write_text(md, encoding="utf-8")
    print(md)


if __name__ == "__main__":
    main()
