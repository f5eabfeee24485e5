"""FEMNIST: record-level DP (each writer's images are the records) vs client-level DP
(the writer is the unit) at the same ε, and no DP, with the same rounds.

FedMeta(FOMAML) (first order: record-level DP refuses second-order MAML), an MLP with
one hidden layer (``--hidden``; not the 6.6M-parameter CNN, whose per-example step
costs ~2 s on this 2-core machine, see ``dp_step_cost.md``), 20% support, fixed-size
Poisson sampling of an expected ``--clients`` training writers per round, ``--rounds`` rounds.

- **client-level**: each writer's whole update clipped to C and distributed discrete
  Gaussian noise inside SecAgg, calibrated so that the worst writer's ε against the
  coordinator (no amplification: it knows the sample) is ``--epsilon`` at δ;
- **record-level**: every local DP-SGD step samples the writer's images at
  q = B / n, clips each image's gradient to C_r and adds Gaussian noise, each writer
  calibrated to ``--epsilon`` at δ for the rounds it may join (holds against the
  coordinator and every other writer, with or without secure aggregation).

The two guarantees protect different things (a whole writer vs one image of a writer);
the table shows what each costs in accuracy at the same ε.

    python -m benchmarks.femnist_record_dp [--rounds 150] [--epsilon 8]

Writes benchmarks/results/femnist_record_dp.json and .md after every run (finished
runs in the JSON are kept: an interrupted run resumes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from typing import Any

from benchmarks._common import RESULTS, data_root, environment, write_json
from secure_fml.config import config_from_dict
from secure_fml.data import load_preset
from secure_fml.simulation import Simulation

VARIANTS = ("none", "client", "record")


def _config(args: argparse.Namespace, variant: str, seed: int = 0) -> Any:
    raw: dict[str, Any] = {
        "data": {"preset": "femnist", "root": str(data_root()), "min_samples": 10},
        "model": {"kind": "mlp", "hidden": [args.hidden]},
        "algorithm": {
            "name": "fomaml",
            "inner_lr": args.inner_lr,
            "support_fraction": 0.2,
            "batch_size": args.batch_size,
        },
        "server": {
            "rounds": args.rounds,
            "sampling": "poisson",
            "clients_per_round": None,
            "sampling_rate": args.sampling_rate,
        },
        "eval": {"every": 0},
        "run": {"seed": seed, "threads": 1},
    }
    if variant == "client":
        raw["privacy"] = {
            "enabled": True,
            "unit": "client",
            "target_epsilon": args.epsilon,
            "delta": args.delta,
            "clip_norm": args.clip,
            "placement": "distributed",
        }
        raw["secure_aggregation"] = {"protocol": "secagg"}
    elif variant == "record":
        raw["privacy"] = {
            "enabled": True,
            "unit": "record",
            "record_clip_norm": args.record_clip,
            "record_target_epsilon": args.epsilon,
            "delta": args.delta,
        }
    return config_from_dict(raw)


def run_one(args: argparse.Namespace, ds: Any, variant: str, seed: int) -> dict[str, Any]:
    cfg = _config(args, variant, seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as run_dir:
        warnings.simplefilter("ignore", UserWarning)
        sim = Simulation(cfg, dataset=ds, run_dir=run_dir)
        res = sim.run(progress=args.progress)
    summary = res.summary
    test = summary["test"]
    row: dict[str, Any] = {
        "variant": variant,
        "seed": seed,
        "rounds": args.rounds,
        "wall_s": time.perf_counter() - t0,
        "global_accuracy": test["global_metrics"]["accuracy"],
        "personalized_accuracy": test["personalized_metrics"]["accuracy"],
        "personalized_p10": test["per_client_personalized"]["p10"],
    }
    mech = summary.get("mechanism") or {}
    if mech.get("epsilon_by_adversary"):
        row["client_epsilon_by_adversary"] = {
            k: v["epsilon"] for k, v in mech["epsilon_by_adversary"].items()
        }
        row["client_noise_multiplier"] = mech.get("noise_multiplier")
    rl = summary.get("record_level")
    if rl:
        row["record_epsilon_worst_site"] = rl["epsilon_worst_site"]
        row["record_sites"] = len(rl["epsilon_per_site"])
    print(
        f"{variant:7s} seed {seed} global {row['global_accuracy']:.3f} personalized "
        f"{row['personalized_accuracy']:.3f} ({row['wall_s']:.0f} s)",
        flush=True,
    )
    return row


def _eps(r: dict[str, Any]) -> str:
    if r["variant"] == "record":
        return f"record-level {r['record_epsilon_worst_site']:.2f} (worst writer)"
    if r["variant"] == "client":
        e = r["client_epsilon_by_adversary"]["coordinator"]
        return f"client-level {e:.2f} (worst writer, vs coordinator)"
    return "∞ (no DP)"


def markdown(payload: dict[str, Any]) -> str:
    a = payload["args"]
    lines = [
        "# FEMNIST: record-level vs client-level DP at the same ε",
        "",
        f"Command: `{payload['command']}`",
        "",
        f"FedMeta(FOMAML), MLP (hidden {a['hidden']}), {a['rounds']} rounds, {a['clients']} "
        f"training writers expected per round (Poisson), 20% support, δ = {a['delta']}, seeds "
        f"{', '.join(str(x) for x in a['seeds'])}; accuracy on all query points of the "
        "unseen test writers after "
        "adapting on their support sets. Client-level: clip C = "
        f"{a['clip']}, distributed discrete Gaussian noise in SecAgg, ε against the "
        f"coordinator. Record-level: DP-SGD in every local step (B = {a['batch_size']}, "
        f"C_r = {a['record_clip']}), each writer calibrated for the rounds it may join "
        "(the union-bound participation quantile the client-level calibration uses).",
        "",
    ]
    runs = sorted(payload["runs"], key=lambda r: (VARIANTS.index(r["variant"]), r["seed"]))
    seeds = sorted({r["seed"] for r in runs})
    if len(seeds) > 1:
        lines += [
            f"Mean ± std over seeds {', '.join(map(str, seeds))} (population std; "
            "per-seed rows below):",
            "",
            "| privacy | seeds | global acc | personalized acc | p10 writer |",
            "|---|---|---|---|---|",
        ]
        for v in VARIANTS:
            rs = [r for r in runs if r["variant"] == v]
            if not rs:
                continue
            cells = [
                f"{statistics.fmean(r[k] for r in rs):.3f} ± "
                f"{statistics.pstdev(r[k] for r in rs):.3f}"
                for k in ("global_accuracy", "personalized_accuracy", "personalized_p10")
            ]
            lines.append(f"| {v} | {len(rs)} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "| privacy | seed | ε | global acc | personalized acc | p10 writer | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['variant']} | {r['seed']} | {_eps(r)} | {r['global_accuracy']:.3f} | "
            f"{r['personalized_accuracy']:.3f} | {r['personalized_p10']:.3f} | "
            f"{r['wall_s']:.0f} |"
        )
    lines += ["", payload.get("note", "")]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=150)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--record-clip", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--inner-lr", type=float, default=0.05)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--name", default="femnist_record_dp")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    base = (
        f"python -m benchmarks.femnist_record_dp --rounds {args.rounds} --clients "
        f"{args.clients} --hidden {args.hidden} --epsilon {args.epsilon:g}"
    )
    path = RESULTS / f"{args.name}.json"
    done: list[dict[str, Any]] = []
    if path.exists():
        # Runs of the same settings are kept, whatever seeds that sitting asked for
        # (a run without a seed field is from before --seeds: seed 0).
        old = json.loads(path.read_text())
        if old.get("base_command", old.get("command")) == base:
            done = [{**r, "seed": r.get("seed", 0)} for r in old["runs"]]
    all_seeds = sorted({*args.seeds, *(r["seed"] for r in done)})
    cmd = base + (f" --seeds {' '.join(map(str, all_seeds))}" if all_seeds != [0] else "")
    args.seeds = all_seeds
    ds = load_preset("femnist", root=str(data_root())).filter_min_samples(10)
    args.sampling_rate = 1.0
    population = len(Simulation(_config(args, "none"), dataset=ds).split.train)
    args.sampling_rate = args.clients / population
    # Notes written by hand after a run are kept when the file is rewritten.
    note_path = RESULTS / f"{args.name}.note.md"
    payload: dict[str, Any] = {
        "command": cmd,
        "base_command": base,
        "args": vars(args),
        "environment": environment(),
        "runs": done,
        "note": note_path.read_text(encoding="utf-8") if note_path.exists() else "",
    }
    for seed in all_seeds:
        for variant in args.variants:
            if any(r["variant"] == variant and r["seed"] == seed for r in done):
                continue
            done.append(run_one(args, ds, variant, seed))
            write_json(f"{args.name}.json", payload)
            (RESULTS / f"{args.name}.md").write_text(markdown(payload), encoding="utf-8")
    print(f"wrote {RESULTS / (args.name + '.md')}")


if __name__ == "__main__":
    main()
