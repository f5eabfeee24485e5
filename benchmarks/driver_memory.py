"""Where the driver's memory goes in one SecAgg+ round of the scale-out task.

Runs one round of ``benchmarks.scale_out``'s task (synthetic preset, MLP d = 4,554,
FedAvg, SecAgg+ with distributed discrete Gaussian noise) with the given executor, with
``tracemalloc`` on in the driver from the round's start. Around every executor call
(one chunk of at most 256 jobs) and every stage close it checks the traced size and
the peak since the last check. It takes a snapshot whenever that size exceeds the
largest seen so far by 5 %, so the last snapshot is within 5 % of the round's peak at a
call boundary. It prints and records that snapshot's largest allocation sites, and the
interval in which the round's peak fell. The measurement's own allocations (the
snapshot it keeps, the deep-size walk) are left out of both figures.

    python -m benchmarks.driver_memory [--n 1000] [--executor pool]

Writes benchmarks/results/driver_memory.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import linecache
import sys
import time
import tracemalloc
import types
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import RESULTS, environment, write_json
from benchmarks.scale_out import _config

_LAZY_IMPORTS = (
    "scipy.optimize",
    "scipy.stats",
    "dp_accounting",
    "dp_accounting.pld.pld_pmf",
    "dp_accounting.pld.privacy_loss_distribution",
    "dp_accounting.rdp",
    "opacus.accountants",
    "opacus.accountants.analysis.gdp",
    "opacus.accountants.analysis.rdp",
    "opacus.accountants.utils",
)
_ROOT = str(Path(__file__).resolve().parent.parent) + "/"


def _site(frame: tracemalloc.Frame) -> str:
    name = frame.filename.replace(_ROOT, "")
    code = linecache.getline(frame.filename, frame.lineno).strip()
    return f"{name}:{frame.lineno} `{code[:90]}`"


def _deep_size(root: object, seen: set[int]) -> int:
    """Bytes reachable from ``root`` and not counted yet (``seen``): containers, slots,
    instance dicts, and numpy arrays by the buffer they own."""
    total = 0
    todo = [root]
    while todo:
        o = todo.pop()
        if id(o) in seen or isinstance(o, type) or type(o).__name__ == "module":
            continue
        seen.add(id(o))
        if isinstance(o, np.ndarray):
            total += sys.getsizeof(o) if o.base is None else 112
            continue
        total += sys.getsizeof(o)
        if isinstance(o, (bytes, str, int, float, bool)) or o is None:
            continue
        if isinstance(o, dict):
            todo.extend(o.keys())
            todo.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            todo.extend(o)
        else:
            if hasattr(o, "__dict__"):
                todo.append(vars(o))
            for cls in type(o).__mro__:
                for slot in getattr(cls, "__slots__", ()):
                    # Stored slots only: a property of the same name (a view that builds
                    # its value when read) holds nothing.
                    desc = inspect.getattr_static(o, slot, None)
                    if isinstance(desc, types.MemberDescriptorType):
                        with contextlib.suppress(AttributeError):  # an unset slot
                            todo.append(desc.__get__(o, type(o)))
    return total


def run(n: int, executor: str, top: int) -> dict[str, Any]:
    warnings.simplefilter("ignore")
    from aggregation import ServerSession, Stage
    from secure_fml.executors import PoolExecutor
    from secure_fml.simulation import Simulation

    # What the SecAgg+ server holds after each stage closes, attribute by attribute, and
    # the outbox it returns (deep sizes: which holder has the memory, measured directly).
    held: list[dict[str, Any]] = []
    close = ServerSession.close_stage

    best: dict[str, Any] = {"size": 0, "snapshot": None, "where": ""}
    # The kept snapshot's own traced bytes, subtracted from every later reading; the
    # highest peak between two checks and where it fell.
    state: dict[str, Any] = {"overhead": 0, "peak": 0, "peak_in": "", "last": "the round's start"}

    def check(where: str) -> None:
        size, peak = (v - state["overhead"] for v in tracemalloc.get_traced_memory())
        if peak > state["peak"]:
            state.update(peak=peak, peak_in=f"between {state['last']} and {where}")
        state["last"] = where
        if size > best["size"] * 1.05:
            best["snapshot"] = None  # released before the next is taken
            base = tracemalloc.get_traced_memory()[0]
            snapshot = tracemalloc.take_snapshot()
            state["overhead"] = tracemalloc.get_traced_memory()[0] - base
            best.update(size=size, snapshot=snapshot, where=where)
        tracemalloc.reset_peak()

    def traced_close(self: ServerSession) -> Any:
        stage: Stage = self.stage
        out = close(self)
        check(f"the close of {stage.name}")
        seen: set[int] = set()
        sizes = {k: _deep_size(v, seen) for k, v in vars(self).items()}
        sizes["(outbox it returned)"] = _deep_size(out, seen)
        held.append({"after": stage.name, "mb": {k: v / 2**20 for k, v in sizes.items()}})
        del seen
        tracemalloc.reset_peak()  # the walk's own allocations are not the server's
        return out

    ServerSession.close_stage = traced_close  # type: ignore[method-assign]
    sim = Simulation(_config(n, "secagg+", executor, None))
    if isinstance(sim.executor, PoolExecutor):
        sim.executor.start()
    sim.open()
    inner = sim.executor.handle
    calls = 0

    def handle(jobs: Sequence[tuple[str, Any]]) -> list[Any]:
        nonlocal calls
        kind = type(jobs[0][1]).__name__ if jobs else "-"
        check(f"before executor call {calls} ({len(jobs)} jobs, {kind})")
        out = inner(jobs)
        calls += 1
        check(f"after executor call {calls - 1} ({len(jobs)} jobs, {kind})")
        return out

    sim.executor.handle = handle  # type: ignore[method-assign]
    # Libraries the round imports lazily (accounting, metrics), loaded before tracing
    # starts: a module's code is not the driver's working memory.
    for name in _LAZY_IMPORTS:
        importlib.import_module(name)
    tracemalloc.start(8)
    t0 = time.perf_counter()
    line = sim.run_round()
    round_s = time.perf_counter() - t0
    check("the round's end")
    snap = best["snapshot"]
    tracemalloc.stop()
    plan = sim.engine.last_plan
    sim.close()
    ServerSession.close_stage = close  # type: ignore[method-assign]
    sites = []
    if snap is not None:
        snap = snap.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        for stat in snap.statistics("lineno")[:top]:
            sites.append(
                {"mb": stat.size / 2**20, "blocks": stat.count, "site": _site(stat.traceback[0])}
            )
    out: dict[str, Any] = {
        "n": n,
        "executor": executor,
        "status": line.get("status"),
        "contributors": line.get("contributors"),
        "round_s": round_s,
        "executor_calls": calls,
        "peak_traced_mb": state["peak"] / 2**20,
        "peak_in": state["peak_in"],
        "snapshot_mb": best["size"] / 2**20,
        "snapshot_at": best["where"],
        "sites": sites,
        "server_held_after_each_stage": held,
        "environment": environment(),
    }
    if plan is not None and plan.settings.secagg is not None:
        out["secagg_k"], out["secagg_t"] = plan.settings.secagg.k, plan.settings.secagg.t
    return out


def _markdown(r: dict[str, Any], command: str) -> str:
    lines = [
        "# Driver memory in one SecAgg+ round: where it goes",
        "",
        f"Command: `{command}`. Task as in `scale_out.md` (synthetic, MLP d = 4,554, FedAvg, "
        f"SecAgg+ with distributed discrete Gaussian noise), n = {r['n']}, executor "
        f"{r['executor']}, k = {r.get('secagg_k')}, t = {r.get('secagg_t')}; one round, "
        f"{r['status']}, {r['contributors']} contributions, {r['round_s']:.0f} s (tracemalloc on, "
        "so slower than untraced).",
        "",
        f"Traced peak of the driver during the round (Python allocations since the round "
        f"began, interpreter, libraries and the measurement's own allocations excluded): "
        f"**{r['peak_traced_mb']:.1f} MB**, {r['peak_in']}. "
        f"Largest snapshot at an executor-call boundary: {r['snapshot_mb']:.1f} MB, "
        f"{r['snapshot_at']}. Its largest allocation sites:",
        "",
        "| MB | blocks | site |",
        "|---|---|---|",
    ]
    lines += [f"| {s['mb']:.2f} | {s['blocks']} | {s['site']} |" for s in r["sites"]]
    held = r.get("server_held_after_each_stage") or []
    if held:
        names = sorted(
            {k for h in held for k in h["mb"]}, key=lambda k: -max(h["mb"].get(k, 0) for h in held)
        )
        names = [k for k in names if max(h["mb"].get(k, 0) for h in held) >= 0.05]
        lines += [
            "",
            "Held by the SecAgg+ server after each stage closes (deep size in MB of each "
            "attribute, and of the outbox that stage returned; a reference counted once, under "
            "the first holder listed; attributes under 0.05 MB throughout left out):",
            "",
            "| after | " + " | ".join(f"`{k}`" for k in names) + " | total |",
            "|---|" + "---|" * (len(names) + 1),
        ]
        for h in held:
            row = [f"{h['mb'].get(k, 0):.2f}" for k in names]
            lines.append(
                f"| {h['after']} | " + " | ".join(row) + f" | {sum(h['mb'].values()):.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--executor", default="pool", choices=("sequential", "pool"))
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args(argv)
    r = run(args.n, args.executor, args.top)
    command = f"python -m benchmarks.driver_memory --n {args.n} --executor {args.executor}"
    write_json("driver_memory.json", {"command": command, **r})
    md = _markdown(r, command)
    (RESULTS / "driver_memory.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
