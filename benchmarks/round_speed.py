"""Per-client round compute for the FEMNIST CNN vs the obvious reference code.

For MAML (second order), FOMAML and Meta-SGD with 4 clients per round, we time
``Algorithm.client_update`` (what a round runs) and, in the same process on the
same clients, data and splits, a plain sequential reference written the
obvious way with ``torch.autograd.grad(create_graph=True)`` over the module's
named parameters (FOMAML's reference detaches the inner gradient instead).
Timings alternate ours/reference per repetition and report medians, so
background load affects both alike. Target: ratio <= 1.0.

    python -m benchmarks.round_speed [--reps 5]

Writes benchmarks/results/round_speed.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from benchmarks._common import RESULTS, data_root, environment, write_json
from secure_fml._functional import Batch, FunctionalModel
from secure_fml.algorithms import AlgorithmConfig, AlgorithmName, make_algorithm
from secure_fml.algorithms import split_support_query as split
from secure_fml.data import load_preset
from secure_fml.evaluation import to_batch
from secure_fml.models import FemnistCNN

INNER_LR = 0.05


def reference_update(
    module: nn.Module, alg: str, support: Batch, query: Batch, steps: int
) -> torch.Tensor:
    """The obvious MAML / FOMAML / Meta-SGD meta-gradient for one client."""
    params = {n: p.detach().clone().requires_grad_(True) for n, p in module.named_parameters()}
    alphas = (
        {n: torch.full_like(p, INNER_LR).requires_grad_(True) for n, p in params.items()}
        if alg == "metasgd"
        else None
    )
    fast = dict(params)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(functional_call(module, fast, (support.x,)), support.y)
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=alg != "fomaml")
        if alg == "fomaml":
            grads = tuple(g.detach() for g in grads)
        fast = {
            n: p - (alphas[n] if alphas is not None else INNER_LR) * g
            for (n, p), g in zip(fast.items(), grads, strict=True)
        }
    qloss = nn.functional.cross_entropy(functional_call(module, fast, (query.x,)), query.y)
    leaves = list(params.values()) + (list(alphas.values()) if alphas is not None else [])
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(qloss, leaves)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--algorithms", nargs="+", default=["maml", "fomaml", "metasgd"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_preset("femnist", root=str(data_root())).filter_min_samples(10)
    clients = [c for c in ds.clients if 100 <= len(c) <= 200][: args.clients]
    data = [to_batch(c, ds.input_kind) for c in clients]
    torch.manual_seed(0)
    module = FemnistCNN()
    fm = FunctionalModel(module)
    results: dict[str, Any] = {}
    for alg in args.algorithms:
        algo = make_algorithm(
            AlgorithmConfig(name=AlgorithmName(alg), inner_lr=INNER_LR, inner_steps=args.steps), fm
        )
        state = algo.initial_state(fm.initial_parameters())
        splits = [split(b, 0.2, torch.Generator().manual_seed(i)) for i, b in enumerate(data)]
        # Same answer first: the comparison is only meaningful if both compute the same thing.
        for s, q in splits[:1]:
            ours = algo.meta_gradient(state, s, q, torch.Generator())  # type: ignore[attr-defined]
            ref = reference_update(module, alg, s, q, args.steps)
            if alg == "metasgd":  # ours returns dL/dlog(alpha) = alpha * dL/dalpha
                ref = torch.cat([ref[: fm.dim], INNER_LR * ref[fm.dim :]])
            err = float((ours.vector - ref).norm() / ref.norm())
            if err > 1e-4:
                raise SystemExit(f"{alg}: ours and reference differ (relative error {err:.2e})")
        t_ours, t_ref = [], []

        def time_ours(algo: Any = algo, state: torch.Tensor = state, splits: Any = splits) -> float:
            t0 = time.perf_counter()
            for s, q in splits:
                algo.meta_gradient(state, s, q, torch.Generator())
            return (time.perf_counter() - t0) / len(splits)

        def time_ref(alg: str = alg, splits: Any = splits) -> float:
            t0 = time.perf_counter()
            for s, q in splits:
                reference_update(module, alg, s, q, args.steps)
            return (time.perf_counter() - t0) / len(splits)

        for rep in range(args.reps + 1):
            # Alternate which side runs first so drifting background load cannot favour one.
            if rep % 2:
                r_time = time_ref()
                pair = (time_ours(), r_time)
            else:
                pair = (time_ours(), time_ref())
            if rep:  # the first repetition warms up both paths
                t_ours.append(pair[0])
                t_ref.append(pair[1])
        mo, mr = statistics.median(t_ours), statistics.median(t_ref)
        results[alg] = {
            "ours_s_per_client": mo,
            "reference_s_per_client": mr,
            "ratio": mo / mr,
            "relative_error_vs_reference": err,
        }
        print(
            f"{alg:8s} ours {1000 * mo:7.1f} ms/client  reference {1000 * mr:7.1f} ms/client  "
            f"ratio {mo / mr:.3f}",
            flush=True,
        )
    payload = {
        "command": f"python -m benchmarks.round_speed --reps {args.reps} --clients {args.clients} "
        f"--steps {args.steps} --threads {args.threads}",
        "environment": environment(),
        "client_sizes": [len(c) for c in clients],
        "results": results,
    }
    write_json("round_speed.json", payload)
    lines = [
        "# Per-client round compute, FEMNIST CNN",
        "",
        f"Command: `{payload['command']}`",
        "",
        f"Clients of sizes {payload['client_sizes']}, 20% support, {args.steps} inner step(s); "
        "median over repetitions, ours and reference interleaved.",
        "",
        "| algorithm | ours (ms/client) | reference (ms/client) | ratio |",
        "|---|---|---|---|",
    ]
    for alg, r in results.items():
        lines.append(
            f"| {alg} | {1000 * r['ours_s_per_client']:.1f} | "
            f"{1000 * r['reference_s_per_client']:.1f} | {r['ratio']:.3f} |"
        )
    (RESULTS / "round_speed.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
