"""FedMeta vs FedAvg on Shakespeare (LEAF, 1,130 speaking roles) at a CPU-feasible budget.

The paper trains 400 rounds at 50 clients per round with LEAF's LSTM (8-d embedding,
2 x 256 LSTM, 80-character context). That is out of reach of a 2-core machine, so this
benchmark runs the same data and model family at a stated, smaller budget: every role
(80/10/10% train/validation/test roles), at most ``--windows`` randomly chosen
80-character windows per role, ``--clients`` roles per round, ``--rounds`` rounds, an
LSTM of width ``--width`` (default 128, a quarter of the compute of LEAF's 256), 20%
support with each role's support/query split fixed, the server mean weighted by sample
count.

Methods: FedAvg (1 local epoch of SGD, batch 10, lr 0.8: LEAF's Shakespeare rate; server
plain averaging), FedAvg(Meta) (FedAvg's model fine-tuned on each test role's support set,
steps and lr chosen on the validation roles), FedMeta(MAML) (one inner step at 0.5,
server Adam at ``--meta-lr``). Runs are resumable across sittings exactly like
``benchmarks.fedmeta_femnist`` (the same sitting code): checkpoints stay on the machine,
per-run JSON files are committed.

    python -m benchmarks.fedmeta_shakespeare --rounds 200 --seeds 0 --minutes 60
    python -m benchmarks.fedmeta_shakespeare --report-only
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from benchmarks._common import RESULTS, data_root, write_json
from benchmarks.fedmeta_femnist import (
    fairness,
    fairness_markdown,
    headline_row,
    note_section,
    run_sections,
    sitting,
)
from secure_fml.config import Config, config_from_dict
from secure_fml.data import load_preset

METHODS: dict[str, dict[str, Any]] = {
    "fedavg": {"name": "fedavg", "local_lr": 0.8, "batch_size": 10, "adapt_steps": 1},
    "maml": {"name": "maml", "inner_lr": 0.5, "inner_steps": 1},
    # A smaller inner step: at 0.5 the global theta collapses for long stretches.
    "maml01": {"name": "maml", "inner_lr": 0.1, "inner_steps": 1},
}
ROWS = (
    ("FedAvg", "fedavg", "global"),
    ("FedAvg(Meta)", "fedavg", "meta"),
    ("FedMeta(MAML)", "maml", "personalized"),
    ("FedMeta(MAML), inner step 0.1", "maml01", "personalized"),
)
# FedAvg(Meta)'s fine-tuning grid: around FedAvg's local lr of 0.8 (FEMNIST's grid is for 0.05).
FINETUNE_LRS = (0.1, 0.3, 1.0)
RUNS = RESULTS / "fedmeta_shakespeare_runs"
FAIRNESS_PNG = "fedmeta_shakespeare_fairness.png"
PER_RUN = RESULTS / "fedmeta_shakespeare"


def make_config(method: str, seed: int, args: argparse.Namespace) -> Config:
    return config_from_dict(
        {
            "data": {
                "preset": "shakespeare",
                "root": str(data_root()),
                "options": {"max_samples_per_client": args.windows},
            },
            "model": {"kind": "lstm", "hidden": [args.width]},
            "algorithm": {**METHODS[method], "support_fraction": 0.2, "split": "fixed"},
            "server": {
                "rounds": args.rounds,
                "clients_per_round": args.clients,
                "weighting": "samples",
                **({"lr": args.meta_lr} if method != "fedavg" else {}),
            },
            "eval": {
                "every": args.eval_every,
                "max_val_clients": args.val_roles,
                "local_only_steps": 0,
            },
            "run": {
                "seed": seed,
                "threads": args.threads,
                "checkpoint_every": args.eval_every,
                "device": args.device,
            },
        }
    )


def summarize() -> dict[str, Any]:
    runs = [json.loads(p.read_text()) for p in sorted(PER_RUN.glob("*.json"))]
    rows = []
    for name, method, kind in ROWS:
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        rows.append(headline_row(name, mine, kind))
    fair = fairness(runs, ROWS, RESULTS / FAIRNESS_PNG, unit="role")
    return {"rows": rows, "fairness": fair, "runs": runs}


def markdown(payload: dict[str, Any]) -> str:
    a = payload["budget"]
    lines = [
        "# FedMeta vs FedAvg on Shakespeare (LEAF roles, LSTM) at a stated CPU budget",
        "",
        f"Command (each sitting): `{payload['command']}`",
        "",
        f"**Budget** (the paper: 400 rounds, 50 clients per round, each role's full text): "
        f"{a['rounds']} rounds, {a['clients']} roles per round, at most {a['windows']} "
        "random 80-character windows per role, all 1,130 roles (80/10/10% train / "
        f"validation / test roles), validation on {a['val_roles']} roles every "
        f"{a['eval_every']} rounds, test on every test role. Model: LEAF's LSTM "
        f"(8-d embedding, 2 LSTM layers, 73-character vocabulary) at width {a['width']} "
        "(LEAF's: 256). 20% support, each "
        "role's split fixed, server mean weighted by sample count. FedAvg: 1 local epoch, "
        "SGD batch 10, lr 0.8 (LEAF's rate), plain averaging. FedMeta(MAML): 1 inner "
        f"step at 0.5, server Adam {a['meta_lr']:g}. FedAvg(Meta): FedAvg's model "
        "fine-tuned on each test role's support set, steps (1, 3, 5) and lr (0.1, 0.3, "
        "1.0) chosen on the validation roles. Accuracy is next-character accuracy pooled "
        "over the test roles' query windows; p10 is the 10th percentile over test roles.",
        "",
        "| method | rounds | test accuracy % (per seed) | mean ± std | per-role p10 |",
        "|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        lines.append(
            f"| {r['method']} | {', '.join(map(str, r['rounds_done']))} | "
            f"{' / '.join(f'{x:.2f}' for x in r['test'])} | "
            f"{r['test_mean']:.2f} ± {r['test_std']:.2f} (n={len(r['seeds'])}) | "
            f"{r['p10_mean']:.1f} |"
        )
    lines += fairness_markdown(payload["fairness"], FAIRNESS_PNG, "role")
    lines += run_sections(payload["runs"], "roles")
    lines += note_section("fedmeta_shakespeare")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--clients", type=int, default=10, help="roles per round")
    ap.add_argument("--windows", type=int, default=128, help="max 80-char windows per role")
    ap.add_argument("--width", type=int, default=128, help="LSTM width (LEAF's: 256)")
    ap.add_argument("--meta-lr", type=float, default=1e-3, help="FedMeta's server Adam lr")
    ap.add_argument("--val-roles", type=int, default=40, help="validation roles per evaluation")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--minutes", type=float, default=30.0, help="wall budget per run, per sitting")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--report-only", action="store_true", help="rebuild the .md/.json only")
    args = ap.parse_args()
    command = (
        "python -m benchmarks.fedmeta_shakespeare "
        f"--rounds {args.rounds} --clients {args.clients} --windows {args.windows} "
        f"--width {args.width} --meta-lr {args.meta_lr:g} "
        f"--val-roles {args.val_roles} --seeds {' '.join(map(str, args.seeds))} "
        f"--methods {' '.join(args.methods)} --eval-every {args.eval_every} "
        f"--minutes {args.minutes:g} --threads {args.threads}"
        + (f" --device {args.device}" if args.device != "cpu" else "")
    )
    budget = {
        k: getattr(args, k)
        for k in ("rounds", "clients", "windows", "width", "meta_lr", "val_roles", "eval_every")
    }

    def write() -> dict[str, Any]:
        payload = {"command": command, "budget": budget, **summarize()}
        write_json("fedmeta_shakespeare.json", payload)
        (RESULTS / "fedmeta_shakespeare.md").write_text(markdown(payload), encoding="utf-8")
        return payload

    if not args.report_only:
        dataset = load_preset("shakespeare", root=data_root(), max_samples_per_client=args.windows)
        for seed in args.seeds:
            for method in args.methods:
                cfg = make_config(method, seed, args)
                r = sitting(
                    method,
                    seed,
                    args,
                    dataset,
                    cfg=cfg,
                    runs=RUNS,
                    per_run=PER_RUN,
                    finetune_lrs=FINETUNE_LRS,
                )
                print(
                    f"{method} s{seed}: round {r['rounds_done']}, test global "
                    f"{100 * r['test']['global_accuracy']:.2f} personalized "
                    f"{100 * r['test']['personalized_accuracy']:.2f}",
                    flush=True,
                )
                write()
    print(markdown(write()))


if __name__ == "__main__":
    main()
