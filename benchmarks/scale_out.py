"""Scale-out: one simulated round vs clients per round, sequential executor vs process pool.

Task: the synthetic preset (``num_clients`` = n, every client trains), an MLP with one
hidden layer of 64, FedAvg (local SGD), every client every round (``server.sampling =
all``), no dropouts. Protocols: ``plain`` (the coordinator sums clear updates) and
``secagg+`` (SecAgg+ with client-level DP: distributed discrete Gaussian noise,
noise multiplier 1). Each (n, protocol, executor) runs in a fresh subprocess so that
its peak driver memory (``ru_maxrss`` of the driver process; pool workers excluded) is
its own. A run times, separately: building the simulation (dataset, model), starting
the pool's workers (pool only), and one round (``Simulation.run_round``: sampling,
plan, every client's local update, clipping, encoding, noise, SecAgg+ masking in the
executor, the server's unmasking, the ledger charge and the server step).

With ``--client-cost`` (sequential executor only) the per-client SecAgg+ protocol cost
is measured too: CPU time (``time.process_time``) of every client's handling of the
stage requests, plus its round-start handling minus its local update.

    python -m benchmarks.scale_out [--sizes 100 1000 3000] [--workers N] [--quick]

With ``--flower-python PY`` each size also runs Flower's Ray simulation of the same task
(plain FedAvg; ``benchmarks/_flower_scale.py``) in the interpreter ``PY``, kept apart from
this project's environment because Flower pins its own grpcio and protobuf::

    python3 -m venv /tmp/flwr-venv
    PIP_CONSTRAINT=constraints.txt /tmp/flwr-venv/bin/pip install 'flwr[simulation]' torch==2.13.0
    python -m benchmarks.scale_out --flower-python /tmp/flwr-venv/bin/python

Writes benchmarks/results/scale_out.json and .md (after every size, so a partial run
leaves its rows).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import RESULTS, environment, write_json

EXECUTORS = ("sequential", "pool", "ray")
DEFAULT_EXECUTORS = ("sequential", "pool")  # ray: needs secure-fml[ray]
PROTOCOLS = ("plain", "secagg+")


def _task_options(n: int) -> dict[str, Any]:
    """The synthetic task's preset options, shared by our runs and Flower's export."""
    return {"num_clients": n, "max_samples": 60}


def _config(n: int, protocol: str, executor: str, workers: int | None) -> Any:
    from secure_fml.config import config_from_dict

    raw: dict[str, Any] = {
        "data": {
            "preset": "synthetic",
            "options": _task_options(n),
            "client_fractions": [1.0, 0.0, 0.0],
        },
        "model": {"kind": "mlp", "hidden": [64]},
        "algorithm": {"name": "fedavg"},
        "server": {"rounds": 2, "sampling": "all", "clients_per_round": None},
        "eval": {"every": 0},
        "run": {"threads": 1},
        "simulation": {"executor": executor, "workers": workers},
    }
    if protocol == "secagg+":
        raw["secure_aggregation"] = {"protocol": "secagg+"}
        raw["privacy"] = {
            "enabled": True,
            "noise_multiplier": 1.0,
            "clip_norm": 1.0,
            "delta": 0.1 / n,
        }
    return config_from_dict(raw)


def run_one(
    n: int, protocol: str, executor: str, workers: int | None, client_cost: bool, rounds: int = 2
) -> dict:
    """One configuration, in this (fresh) process: ``rounds`` (1 or 2) rounds. With 2, the
    second round is the one timed (and costed); with 1, the first (which also builds every
    client's pipeline and data partition)."""
    if rounds not in (1, 2):
        raise ValueError("rounds must be 1 or 2")
    warnings.simplefilter("ignore")
    from secure_fml.executors import PoolExecutor, SequentialExecutor
    from secure_fml.messages import RoundStart, StageRequest
    from secure_fml.simulation import Simulation

    cfg = _config(n, protocol, executor, workers)
    t0 = time.perf_counter()
    sim = Simulation(cfg)
    build_s = time.perf_counter() - t0
    cost: dict[str, float] = {}
    if client_cost:
        assert isinstance(sim.executor, SequentialExecutor)
        inner = sim.executor.handle

        def timed(jobs: Sequence[tuple[str, Any]]) -> list[Any]:
            out = []
            for job in jobs:
                c0 = time.process_time()
                out.extend(inner([job]))
                dt = time.process_time() - c0
                name, msg = job
                if isinstance(msg, RoundStart):
                    info = sim.executor.last_update(name)
                    dt -= info.compute_s if info is not None else 0.0
                if isinstance(msg, RoundStart | StageRequest):
                    cost[name] = cost.get(name, 0.0) + max(0.0, dt)
            return out

        sim.executor.handle = timed  # type: ignore[method-assign]
    start_s = 0.0
    if isinstance(sim.executor, PoolExecutor):
        t0 = time.perf_counter()
        sim.executor.start()
        start_s = time.perf_counter() - t0
    sim.open()
    first_s = 0.0
    if rounds == 2:
        t0 = time.perf_counter()
        sim.run_round()  # the first round also builds every client's pipeline and partition
        first_s = time.perf_counter() - t0
        cost.clear()
    worker0 = getattr(sim.executor, "worker_cpu_s", 0.0)
    c0 = time.process_time()
    t0 = time.perf_counter()
    line = sim.run_round()
    round_s = time.perf_counter() - t0
    driver_cpu_s = time.process_time() - c0
    if rounds == 1:
        first_s = round_s
    sim.close()
    out: dict[str, Any] = {
        "n": n,
        "rounds": rounds,
        "protocol": protocol,
        "executor": executor,
        "workers": getattr(sim.executor, "workers", 1),
        "status": line.get("status"),
        "contributors": line.get("contributors"),
        "build_s": build_s,
        "pool_start_s": start_s,
        "first_round_s": first_s,
        "round_s": round_s,
        "driver_cpu_s": driver_cpu_s,
        "worker_cpu_s": getattr(sim.executor, "worker_cpu_s", 0.0) - worker0,
        "load_average": list(os.getloadavg()),
        "updates_per_s": (line.get("contributors") or 0) / round_s,
        "peak_driver_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "dimension": int(sim.state.numel()),
    }
    plan = sim.engine.last_plan
    if plan is not None and plan.settings.secagg is not None:
        out["secagg_k"], out["secagg_t"] = plan.settings.secagg.k, plan.settings.secagg.t
    if cost:
        vals = sorted(cost.values())
        out["client_protocol_cpu_ms_mean"] = 1000 * sum(vals) / len(vals)
        out["client_protocol_cpu_ms_p90"] = 1000 * vals[int(0.9 * (len(vals) - 1))]
    return out


def export_task(n: int, path: str) -> None:
    """The synthetic task of ``_config(n, ...)`` as one .npz for Flower's clients: all
    rows' x (float32) and y (int64), per-client row offsets, the class count."""
    from secure_fml.data import load_preset

    ds = load_preset("synthetic", **_task_options(n))
    offsets = np.concatenate([[0], np.cumsum([len(c.y) for c in ds.clients])])
    np.savez(
        path,
        x=np.concatenate([c.x for c in ds.clients]).astype(np.float32),
        y=np.concatenate([c.y for c in ds.clients]).astype(np.int64),
        offsets=offsets,
        classes=ds.num_classes,
    )


def secagg_kt(n: int) -> tuple[int, int]:
    """The SecAgg+ share holders k and threshold t our round uses at n on this task (the
    engine's round plan; no client runs)."""
    warnings.simplefilter("ignore")
    from secure_fml.simulation import Simulation

    sim = Simulation(_config(n, "secagg+", "sequential", None))
    sim.open()
    sim.engine.start_round(sim.engine.population)
    plan = sim.engine.last_plan
    sim.close()
    assert plan is not None and plan.settings.secagg is not None
    return plan.settings.secagg.k, plan.settings.secagg.t


def run_flower(
    python: str, n: int, workers: int, timeout: float, protocol: str = "plain"
) -> dict | None:
    """Flower's Ray simulation of the same task (``benchmarks/_flower_scale.py`` in the
    interpreter ``python``, which has ``flwr[simulation]``), or None if it failed. With
    ``secagg+``: Flower's SecAgg+ workflow with our round's threshold t and k share
    holders: Flower's ``num_shares`` counts its neighbours and itself and must be odd,
    so it is k + 1, or k (one neighbour fewer than ours) when k + 1 is even."""
    script = Path(__file__).with_name("_flower_scale.py")
    extra: list[str] = []
    if protocol == "secagg+":
        k, t = secagg_kt(n)
        shares = k + 1 if (k + 1) % 2 else k
        extra = ["secagg+", str(shares), str(t)]
    with tempfile.TemporaryDirectory() as tmp:
        task = str(Path(tmp) / "task.npz")
        export_task(n, task)
        row = _subprocess(
            [str(script), task, str(n), str(workers), *extra],
            timeout=timeout,
            python=python,
            cwd=tmp,
        )
    if row is not None and protocol == "secagg+":
        row["secagg_k"], row["secagg_t"] = int(extra[1]) - 1, int(extra[2])
        row["flower_num_shares"] = int(extra[1])
    return row


def _subprocess(
    args: list[str], timeout: float, *, python: str | None = None, cwd: str | None = None
) -> dict | None:
    cmd = (
        [python, *args]
        if python is not None
        else [sys.executable, "-m", "benchmarks.scale_out", "--one", *args]
    )
    try:
        res = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd
        )
    except subprocess.TimeoutExpired:
        print(f"  timed out after {timeout:.0f} s: {' '.join(args)}", flush=True)
        return None
    if res.returncode != 0:
        print(f"  failed: {' '.join(args)}\n{res.stderr[-2000:]}", flush=True)
        return None
    line: dict = json.loads(res.stdout.strip().splitlines()[-1])
    return line


def _flower_version(python: str) -> str:
    res = subprocess.run(
        [python, "-c", "import flwr; print(flwr.__version__)"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    return res.stdout.strip() or "unknown"


def _scheduler() -> dict[str, str]:
    """How this machine shares its CPUs (autogroup: per session, not per process)."""
    out = {}
    for key, path in (
        ("sched_autogroup_enabled", "/proc/sys/kernel/sched_autogroup_enabled"),
        ("cpu_pressure", "/proc/pressure/cpu"),
    ):
        try:
            with open(path, encoding="utf-8") as f:
                out[key] = f.read().strip().splitlines()[0]
        except OSError:
            out[key] = "unavailable"
    return out


def _markdown(payload: dict[str, Any]) -> str:
    env = payload["environment"]
    rows = payload["rows"]
    out = [
        "# Scale-out: one round vs clients per round, by executor (and Flower's simulation)",
        "",
        f"Command: `{payload['command']}` on {env['platform']}, {env['cpus']} CPUs "
        "(the `load` column says how busy the machine was when each row finished), "
        f"Python {env['python']}, torch {env['torch']}, {env['when']}. "
        + (
            f"Latest appended run: {payload['appended_environment'].get('when', '?')}, "
            f"commit {payload['appended_environment'].get('commit', '?')} (rows it "
            "replaced or added carry its time in `when` in scale_out.json). "
            if payload.get("appended_environment")
            else ""
        )
        + ("PARTIAL run. " if payload.get("partial") else ""),
        "",
        "Task: synthetic preset with n clients (all training), MLP (hidden 64, "
        f"d = {rows[0]['dimension'] if rows else '?'}), FedAvg, every client in the round, "
        "no dropouts, torch threads 1 per process. `plain`: clear sum at the coordinator; "
        "`secagg+`: SecAgg+ with distributed discrete Gaussian noise (client-level DP, "
        "noise multiplier 1). Each row is one fresh process running two rounds: `round s` "
        "is the wall time of the second `Simulation.run_round()` (every client's update, "
        "clipping, encoding, noise, masking, the server's unmasking, ledger charge, server "
        "step); `1st round s` the first, which also builds every client's pipeline and "
        "data partition (in the workers, for the pool); `start s` is starting the pool's "
        "workers (once per run); `driver CPU s` / `worker CPU s` the CPU time of the "
        "second round in the driver and summed over the workers; `peak MB` is the "
        "driver process's peak RSS (workers not counted). `updates/s` = contributions / "
        "round s. `load` is the machine's 1-minute load average when the row finished "
        "(2 cores: above 2, other jobs competed for them). "
        + (
            "`flower-ray` rows: Flower's Ray simulation (flwr "
            f"{payload.get('flower_version', '?')}, one Ray actor per worker) of the same "
            "task: its ClientApp does what our FedAvg client does here (one full-batch SGD "
            "step on the same MLP and partition). `plain`: Message API FedAvg, timed from "
            "configure_train to the end of aggregate_train; `secagg+`: Flower's "
            "SecAggPlusWorkflow (legacy FedAvg strategy, `secaggplus_mod` on the clients) "
            "with our round's k share holders and threshold t, timed from configure_fit to "
            "the end of aggregate_fit; Flower's SecAgg+ quantizes and masks but adds no DP "
            "noise (ours adds distributed discrete Gaussian noise). Ray's start-up is in its "
            "first round; CPU times are not measured for it (—)."
            if any(r["executor"] == "flower-ray" for r in rows)
            else "Flower's Ray simulation was not run."
        ),
        "",
        "| n | protocol | executor | workers | round s | updates/s | 1st round s | start s "
        "| driver CPU s | worker CPU s | peak driver MB | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def num(r: dict[str, Any], key: str, fmt: str = ".2f") -> str:
        v = r.get(key)
        return "—" if v is None else format(v, fmt)

    for r in sorted(rows, key=lambda r: int(r["n"])):  # stable: appended rows join their n
        out.append(
            f"| {r['n']} | {r['protocol']} | {r['executor']} | {r['workers']} | "
            f"{num(r, 'round_s')} | {num(r, 'updates_per_s', '.0f')} | "
            f"{num(r, 'first_round_s')} | {num(r, 'pool_start_s')} | "
            f"{num(r, 'driver_cpu_s')} | {num(r, 'worker_cpu_s')} | "
            f"{num(r, 'peak_driver_rss_mb', '.0f')} | {r['load_average'][0]:.1f} |"
        )
    cc = [r for r in payload.get("client_cost", [])]
    if cc:
        out += [
            "",
            "Per-client SecAgg+ protocol cost (sequential executor, second round, CPU ms per "
            "client: its stage requests plus its round start minus its local update, so "
            "roster check, encoding, discrete Gaussian noise, keys, shares and masking; "
            "mean and p90):",
            "",
            "| n | client protocol CPU ms | p90 |",
            "|---|---|---|",
        ]
        for r in cc:
            out.append(
                f"| {r['n']} | {r['client_protocol_cpu_ms_mean']:.1f} | "
                f"{r['client_protocol_cpu_ms_p90']:.1f} |"
            )
    if payload.get("notes"):
        out += ["", *payload["notes"]]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 3000])
    ap.add_argument("--workers", type=int, default=None, help="pool workers (default: cores)")
    ap.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    ap.add_argument("--executors", nargs="+", default=list(DEFAULT_EXECUTORS), choices=EXECUTORS)
    ap.add_argument(
        "--append",
        action="store_true",
        help="add this run's rows to the existing scale_out.json (its notes are kept); a "
        "row replaces the earlier one of the same n, protocol and executor",
    )
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per configuration")
    ap.add_argument("--client-cost", action="store_true", help="per-client SecAgg+ cost too")
    ap.add_argument(
        "--plain-sizes",
        type=int,
        nargs="*",
        default=[],
        help="further sizes run with the plain protocol only (e.g. 10000)",
    )
    ap.add_argument(
        "--flower-python",
        default=None,
        help="an interpreter with flwr[simulation] and torch: also run Flower's Ray "
        "simulation of the same task at every size (plain FedAvg)",
    )
    ap.add_argument(
        "--flower-protocols",
        nargs="+",
        default=["plain"],
        choices=PROTOCOLS,
        help="protocols Flower runs (secagg+: its SecAggPlusWorkflow, at the sizes that "
        "run secagg+)",
    )
    ap.add_argument(
        "--flower-only",
        action="store_true",
        help="run only Flower's rows (with --append: add them to the existing table)",
    )
    ap.add_argument("--quick", action="store_true", help="sizes 20 and 100 only")
    ap.add_argument(
        "--render", action="store_true", help="rewrite scale_out.md from scale_out.json only"
    )
    ap.add_argument("--one", nargs=5, metavar=("N", "PROTOCOL", "EXECUTOR", "WORKERS", "COST"))
    ap.add_argument(
        "--one-rounds",
        type=int,
        choices=(1, 2),
        default=2,
        help="with --one: rounds run (1: the first round is the one timed and costed)",
    )
    args = ap.parse_args(argv)
    if args.one:
        n, proto, ex, workers, cost = args.one
        res = run_one(int(n), proto, ex, int(workers) or None, cost == "1", args.one_rounds)
        print(json.dumps(res))
        return 0
    if args.render:
        stored = json.loads((RESULTS / "scale_out.json").read_text(encoding="utf-8"))
        (RESULTS / "scale_out.md").write_text(_markdown(stored), encoding="utf-8")
        return 0
    sizes = [20, 100] if args.quick else args.sizes
    command = "python -m benchmarks.scale_out " + " ".join(argv or sys.argv[1:])
    env = {
        **environment(),
        "platform": platform.platform(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "scheduler": _scheduler(),
    }
    payload: dict[str, Any] = {
        "flower_version": _flower_version(args.flower_python) if args.flower_python else None,
        "command": command.strip(),
        "environment": env,
        "rows": [],
        "client_cost": [],
        "partial": True,
    }
    if args.append:
        old = json.loads((RESULTS / "scale_out.json").read_text(encoding="utf-8"))
        payload = {
            **old,
            "command": f"{old['command']}`, then `{command.strip()}",
            "appended_environment": env,
            "partial": True,
        }
    plan = [(n, list(args.protocols)) for n in sizes] + [(n, ["plain"]) for n in args.plain_sizes]
    for n, protocols in plan:
        for proto in protocols:
            for ex in [] if args.flower_only else args.executors:
                print(f"n = {n}, {proto}, {ex} ...", flush=True)
                row = _subprocess(
                    [str(n), proto, ex, str(args.workers or 0), "0"], timeout=args.timeout
                )
                if row is not None:
                    _add(payload["rows"], row)
                    print(
                        f"  round {row['round_s']:.2f} s, {row['updates_per_s']:.0f} updates/s, "
                        f"pool start {row['pool_start_s']:.2f} s, "
                        f"peak driver {row['peak_driver_rss_mb']:.0f} MB",
                        flush=True,
                    )
        for proto in protocols if args.flower_python else []:
            if proto not in args.flower_protocols:
                continue
            print(f"n = {n}, {proto}, flower-ray ...", flush=True)
            row = run_flower(
                args.flower_python, n, args.workers or os.cpu_count() or 1, args.timeout, proto
            )
            if row is not None:
                row.update(protocol=proto, pool_start_s=None, driver_cpu_s=None)
                row.update(worker_cpu_s=None, dimension=None)
                _add(payload["rows"], row)
                print(
                    f"  round {row['round_s']:.2f} s, {row['updates_per_s']:.0f} updates/s, "
                    f"peak driver {row['peak_driver_rss_mb']:.0f} MB",
                    flush=True,
                )
        if args.client_cost and "secagg+" in protocols and not args.flower_only:
            row = _subprocess([str(n), "secagg+", "sequential", "0", "1"], timeout=args.timeout)
            if row is not None:
                _add(payload["client_cost"], row)
                print(
                    f"  per-client SecAgg+ protocol CPU {row['client_protocol_cpu_ms_mean']:.1f} "
                    f"ms (p90 {row['client_protocol_cpu_ms_p90']:.1f})",
                    flush=True,
                )
        write_json("scale_out.json", payload)
        (RESULTS / "scale_out.md").write_text(_markdown(payload), encoding="utf-8")
    payload["partial"] = False
    write_json("scale_out.json", payload)
    (RESULTS / "scale_out.md").write_text(_markdown(payload), encoding="utf-8")
    print(f"wrote {RESULTS / 'scale_out.md'}")
    return 0


def _add(rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
    """Add ``row``, replacing an earlier row of the same n, protocol and executor (a
    rerun with --append), at its place in the table."""
    key = (row["n"], row.get("protocol"), row.get("executor"))
    row["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for i, r in enumerate(rows):
        if (r["n"], r.get("protocol"), r.get("executor")) == key:
            rows[i] = row
            return
    rows.append(row)


if __name__ == "__main__":
    raise SystemExit(main())
