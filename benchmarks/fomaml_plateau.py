"""Why FedMeta(FOMAML) stalls on FEMNIST where MAML learns: a diagnostic run.

Trains FOMAML with the Table 2 benchmark's settings (``benchmarks.fedmeta_femnist``:
inverted pixels, 4 clients per round, 20% support, fixed splits, weighted mean, Adam
1e-3) for each inner step size, and at every evaluation point probes the global state
on a few training writers:

- ``L(theta)`` and ``L(theta')``: query loss before and after the one inner step;
- ``|g_s|``: the norm of the support gradient at theta (the inner step is lr * g_s);
- ``cos``: cosine between MAML's exact meta-gradient and FOMAML's first-order one at the
  same state, support/query split and mini-batches, and the ratio of their norms.

The global model's validation accuracy next to the personalized one shows whether theta
itself still predicts anything (a collapsed theta predicts one class: its accuracy is the
largest class's share) or only serves as a starting point for the inner step.

    python -m benchmarks.fomaml_plateau [--rounds 30] [--inner-lrs 0.05 0.01] [--seed 1]

Writes benchmarks/results/fomaml_plateau.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import torch

from benchmarks._common import RESULTS, environment, write_json
from benchmarks.fedmeta_femnist import make_config
from secure_fml.algorithms import make_algorithm
from secure_fml.config import AlgorithmName
from secure_fml.simulation import Simulation


def probe(sim: Simulation, names: list[str]) -> dict[str, float]:
    """Mean diagnostics of the current global state over ``names`` (training writers)."""
    fo = sim.algorithm
    maml = make_algorithm(
        dataclasses.replace(sim.config.algorithm, name=AlgorithmName.MAML), sim.fmodel
    )
    fm = sim.fmodel
    state = sim.state.detach().clone()
    theta = state[: fm.dim]
    lr = sim.config.algorithm.inner_lr
    rows: list[dict[str, float]] = []
    for name in names:
        data = sim.batch(name)
        support, query = fo.support_query(data, torch.Generator().manual_seed(0))
        g = fm.grad(theta, support)
        a = maml.meta_gradient(state, support, query, torch.Generator().manual_seed(1))
        b = fo.meta_gradient(state, support, query, torch.Generator().manual_seed(1))
        rows.append(
            {
                "loss_theta": float(fm.loss(theta, query)),
                "support_grad_norm": float(g.norm()),
                "loss_adapted": float(fm.loss(theta - lr * g, query)),
                "cos_maml_fomaml": float(
                    torch.nn.functional.cosine_similarity(a.vector, b.vector, dim=0)
                ),
                "norm_ratio_maml_over_fomaml": float(a.vector.norm() / b.vector.norm()),
            }
        )
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def run(
    inner_lr: float,
    seed: int,
    rounds: int,
    eval_every: int,
    probes: int,
    server_lr: float | None = None,
) -> dict[str, Any]:
    cfg = make_config("fomaml", seed, rounds, eval_every, 1)
    cfg = dataclasses.replace(
        cfg,
        algorithm=dataclasses.replace(cfg.algorithm, inner_lr=inner_lr),
        server=dataclasses.replace(cfg.server, lr=server_lr),
        eval=dataclasses.replace(cfg.eval, max_val_clients=40),
    )
    sim = Simulation(cfg)
    sim.open()
    names = list(sim.engine.population[:probes])
    points = [{"round": 0, **probe(sim, names)}]
    t0 = time.perf_counter()
    while not sim.engine.finished:
        line = sim.run_round()
        if "val_personalized_accuracy" in line:
            p = {
                "round": line["round"],
                "val_global_accuracy": line["val_global_accuracy"],
                "val_personalized_accuracy": line["val_personalized_accuracy"],
                "train_query_loss": line.get("train_loss"),
                **probe(sim, names),
            }
            points.append(p)
            print(
                f"inner lr {inner_lr:g} round {p['round']:3d}: val global "
                f"{100 * p['val_global_accuracy']:.1f} personalized "
                f"{100 * p['val_personalized_accuracy']:.1f}  L(theta) {p['loss_theta']:.2f} "
                f"|g_s| {p['support_grad_norm']:.1f} L(theta') {p['loss_adapted']:.2f} "
                f"cos {p['cos_maml_fomaml']:.3f}",
                flush=True,
            )
    sim.close()
    return {
        "inner_lr": inner_lr,
        "seed": seed,
        "wall_s": time.perf_counter() - t0,
        "points": points,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--inner-lrs", type=float, nargs="+", default=[0.05, 0.01])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--probes", type=int, default=5, help="training writers probed")
    ap.add_argument("--server-lr", type=float, default=None, help="server Adam lr (1e-3)")
    ap.add_argument(
        "--name", default="fomaml_plateau", help="result file stem under benchmarks/results"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    runs = [
        run(lr, args.seed, args.rounds, args.eval_every, args.probes, args.server_lr)
        for lr in args.inner_lrs
    ]
    cmd = (
        f"python -m benchmarks.fomaml_plateau --rounds {args.rounds} --inner-lrs "
        f"{' '.join(f'{x:g}' for x in args.inner_lrs)} --seed {args.seed} "
        f"--eval-every {args.eval_every} --probes {args.probes}"
        + (f" --server-lr {args.server_lr:g}" if args.server_lr is not None else "")
        + (f" --name {args.name}" if args.name != "fomaml_plateau" else "")
    )
    write_json(f"{args.name}.json", {"command": cmd, "environment": environment(), "runs": runs})
    lines = [
        "# Why FedMeta(FOMAML) stalls on FEMNIST",
        "",
        f"`{cmd}`",
        "",
        "FOMAML with the Table 2 benchmark's settings, one seed; validation accuracy on 40 "
        "validation writers; probes averaged over training writers (query loss before and "
        "after the inner step, support-gradient norm, cosine and norm ratio of MAML's exact "
        "meta-gradient to FOMAML's at the same state and mini-batches).",
        "",
        "| inner lr | round | val global | val personalized | L(theta) | \\|g_s\\| | "
        "L(theta') | cos(MAML, FOMAML) | \\|MAML\\| / \\|FOMAML\\| |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        for p in r["points"]:
            g = p.get("val_global_accuracy")
            pa = p.get("val_personalized_accuracy")
            lines.append(
                f"| {r['inner_lr']:g} | {p['round']} | "
                + (f"{100 * g:.1f}" if g is not None else "–")
                + " | "
                + (f"{100 * pa:.1f}" if pa is not None else "–")
                + f" | {p['loss_theta']:.2f} | {p['support_grad_norm']:.1f} | "
                f"{p['loss_adapted']:.2f} | {p['cos_maml_fomaml']:.3f} | "
                f"{p['norm_ratio_maml_over_fomaml']:.2f} |"
            )
    env = environment()
    walls = ", ".join(f"{r['wall_s']:.0f} s" for r in runs)
    lines += [
        "",
        f"Wall time per run: {walls} on "
        f"{env['cpus']} shared CPUs (other jobs running), commit {env['commit']}. "
        "The largest class of the validation writers is about 7% of their points: a "
        "global accuracy there means theta predicts one class.",
    ]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS / (args.name + '.md')}")


if __name__ == "__main__":
    main()
