"""Cost of one record-level DP local step vs the non-private step and vs Opacus' DP-SGD step.

On the same model and the same batch, in the same process, interleaved (every
repetition times every method once, in rotating order, so that load from other
jobs on a shared machine falls on all of them alike):

- ``plain``: the non-private step (mean-loss gradient + SGD update);
- ``ours``: one record-level DP-SGD step of :mod:`secure_fml.record_dp` (per-example
  gradients by ``torch.func.vmap``, per-unit clipping, CSPRNG Gaussian noise from
  :class:`privacy.GaussianNoiseSource`, fixed denominator) + SGD update; q = 1 so that
  exactly the same batch is used;
- ``opacus``: Opacus' own DP-SGD step (``GradSampleModule`` hooks + ``DPOptimizer``,
  default mode: its noise comes from ``torch.normal``, not a CSPRNG);
- the parts: ``ours_grads`` (per-example gradients + clipped sum, no noise),
  ``ours_noise`` (the CSPRNG noise alone), ``opacus_grads`` (hooks forward/backward
  + per-sample clipping, no noise).

    python -m benchmarks.dp_step_cost [--reps 7] [--batch-sizes 32 64] [--threads 1]
        [--models femnist_cnn heart_mlp char_lstm]

Writes benchmarks/results/dp_step_cost.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks._common import RESULTS, data_root, environment, write_json
from privacy import GaussianNoiseSource
from secure_fml._functional import Batch, FunctionalModel
from secure_fml._per_example import PerExampleGradients
from secure_fml.data import load_preset
from secure_fml.evaluation import to_batch
from secure_fml.models import MLP, CharLSTM, FemnistCNN
from secure_fml.record_dp import _PrivateOracle

SIGMA, CLIP, LR = 1.0, 1.0, 0.05


def _femnist(n: int) -> Batch:
    ds = load_preset("femnist", root=str(data_root()))
    c = next(c for c in ds.clients if len(c) >= n)
    return to_batch(c.subset(np.arange(n)), ds.input_kind)


def _heart(n: int) -> Batch:
    ds = load_preset("heart", root=str(data_root()))
    return to_batch(ds.client("cleveland").subset(np.arange(n)), ds.input_kind)


def _text(n: int) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(
        torch.randint(0, 73, (n, 80), generator=g), torch.randint(0, 73, (n,), generator=g)
    )


def _methods(make: Callable[[], nn.Module], batch: Batch, opacus_ok: bool) -> dict[str, Any]:
    torch.manual_seed(0)
    fm = FunctionalModel(make())
    flat = fm.initial_parameters()
    engine = PerExampleGradients(fm, chunk_size=len(batch))
    source = GaussianNoiseSource()

    def plain() -> None:
        nonlocal flat
        flat = flat - LR * fm.grad(flat, batch)

    def ours() -> None:
        nonlocal flat
        oracle = _PrivateOracle(
            engine=engine,
            data=batch,
            noise_multiplier=SIGMA,
            clip_norm=CLIP,
            batch_size=None,  # q = 1: the whole (same) batch
            query_batch_size=None,
            source=source,
        )
        flat = flat - LR * oracle.grad(flat, batch)

    def ours_grads() -> None:
        engine.clipped_sum(flat, batch, clip_norm=CLIP)

    def ours_noise() -> None:
        source.normal(fm.dim, std=SIGMA * CLIP)

    out: dict[str, Callable[[], None]] = {
        "plain": plain,
        "ours": ours,
        "ours_grads": ours_grads,
        "ours_noise": ours_noise,
    }
    if opacus_ok:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        torch.manual_seed(0)
        gsm = GradSampleModule(make())
        opt = DPOptimizer(
            torch.optim.SGD(gsm.parameters(), lr=LR),
            noise_multiplier=SIGMA,
            max_grad_norm=CLIP,
            expected_batch_size=len(batch),
        )
        gsm_g = GradSampleModule(make())
        opt_g = DPOptimizer(
            torch.optim.SGD(gsm_g.parameters(), lr=LR),
            noise_multiplier=0.0,
            max_grad_norm=CLIP,
            expected_batch_size=len(batch),
        )

        def opacus() -> None:
            opt.zero_grad()
            nn.functional.cross_entropy(gsm(batch.x), batch.y).backward()
            opt.step()

        def opacus_grads() -> None:
            opt_g.zero_grad()
            nn.functional.cross_entropy(gsm_g(batch.x), batch.y).backward()
            opt_g.pre_step()  # per-sample clipping and summation, no noise, no update

        out["opacus"] = opacus
        out["opacus_grads"] = opacus_grads
    return {"methods": out, "params": fm.dim}


def _time(methods: dict[str, Callable[[], None]], reps: int) -> dict[str, list[float]]:
    """Per-call seconds; fast methods are timed over enough calls to span ~50 ms."""
    names = list(methods)
    calls: dict[str, int] = {}
    for n, f in methods.items():  # warm-up (vmap tracing, allocator) and call counts
        f()
        t0 = time.perf_counter()
        f()
        calls[n] = max(1, min(200, round(0.05 / max(time.perf_counter() - t0, 1e-6))))
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            for _ in range(calls[n]):
                methods[n]()
            times[n].append((time.perf_counter() - t0) / calls[n])
    return times


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="opacus")
    warnings.filterwarnings("ignore", message=".*Full backward hook.*")
    models: list[tuple[str, Callable[[], nn.Module], Callable[[int], Batch], bool]] = [
        ("femnist_cnn", FemnistCNN, _femnist, True),
        ("heart_mlp", lambda: MLP(13, 2, hidden=(64,)), _heart, True),
        ("char_lstm", CharLSTM, _text, False),
    ]
    models = [m for m in models if m[0] in args.models]
    rows = []
    for name, make, data, opacus_ok in models:
        for b in args.batch_sizes:
            batch = data(b)
            m = _methods(make, batch, opacus_ok)
            times = _time(m["methods"], args.reps)
            med = {k: statistics.median(v) for k, v in times.items()}
            row: dict[str, Any] = {
                "model": name,
                "batch": b,
                "params": m["params"],
                "median_s": med,
                "min_s": {k: min(v) for k, v in times.items()},
                "ours_over_plain": med["ours"] / med["plain"],
            }
            if "opacus" in med:
                row["ours_over_opacus"] = med["ours"] / med["opacus"]
                row["ours_grads_over_opacus_grads"] = med["ours_grads"] / med["opacus_grads"]
            rows.append(row)
            print(
                f"{name} B={b}: "
                + ", ".join(f"{k}={1e3 * v:.1f}ms" for k, v in med.items())
                + f" | ours/plain={row['ours_over_plain']:.2f}"
                + (f" ours/opacus={row['ours_over_opacus']:.2f}" if "opacus" in med else ""),
                flush=True,
            )
    return {"rows": rows}


def markdown(payload: dict[str, Any]) -> str:
    env = payload["environment"]
    lines = [
        "# Cost of one record-level DP local step",
        "",
        f"Command: `{payload['command']}`",
        "",
        f"Machine: {env['cpus']} CPU(s) ({env['machine']}), torch {env['torch']}, "
        f"{payload['threads']} thread(s); a shared machine (other jobs were running), so every "
        f"repetition times every method in rotating order; medians of {payload['reps']} "
        "repetitions (each repetition of a fast method averages enough calls to span ~50 ms). "
        "σ = 1, C = 1, SGD lr 0.05; q = 1 so all methods use the same batch.",
        "",
        "`ours` = per-example gradients (torch.func vmap) + per-unit clipping + CSPRNG "
        "Gaussian noise (ChaCha20, sum of 4 Box–Muller draws, float64) + update. `opacus` = "
        "Opacus 1.6 GradSampleModule + DPOptimizer in its default mode (noise from "
        "`torch.normal`, **not** a CSPRNG; Opacus' secure mode needs torchcsprng, which is not "
        "available for this torch). `*_grads` = the same without noise or update.",
        "",
        "| model | params | B | plain ms | ours ms | opacus ms | ours / plain | ours / opacus "
        "| ours grads ms | opacus grads ms | grads ratio | CSPRNG noise ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        m = r["median_s"]

        def ms(k: str, m: dict[str, float] = m) -> str:
            return f"{1e3 * m[k]:.1f}" if k in m else "n/a"

        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['batch']} | {ms('plain')} | {ms('ours')} | "
            f"{ms('opacus')} | {r['ours_over_plain']:.2f} | "
            f"{r.get('ours_over_opacus', float('nan')):.2f} | {ms('ours_grads')} | "
            f"{ms('opacus_grads')} | {r.get('ours_grads_over_opacus_grads', float('nan')):.2f} | "
            f"{ms('ours_noise')} |"
        )
    lines += [
        "",
        "Target: ours / opacus <= 1.0. Opacus cannot run `nn.LSTM` (it needs its own DPLSTM), "
        "so the LSTM row (if present) has no Opacus column.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--models",
        nargs="+",
        default=["femnist_cnn", "heart_mlp", "char_lstm"],
        choices=["femnist_cnn", "heart_mlp", "char_lstm"],
    )
    ap.add_argument("--out", default="dp_step_cost")
    args = ap.parse_args()
    command = (
        f"python -m benchmarks.dp_step_cost --reps {args.reps} --batch-sizes "
        f"{' '.join(map(str, args.batch_sizes))} --threads {args.threads} --models "
        f"{' '.join(args.models)} --out {args.out}"
    )
    payload = {"command": command, "environment": environment(), **vars(args), **run(args)}
    write_json(f"{args.out}.json", payload)
    md = markdown(payload)
    (RESULTS / f"{args.out}.md").write_text(md, encoding="utf-8")
    print(md)


if __name__ == "__main__":
    main()
