"""Per-client cost of a SecAgg+ round start vs roster size, in the client pipeline.

What a simulated client does on a ``RoundStart`` before its first message leaves,
minus its local update: model check, roster checks (indices, distinct names and
identities, every identity key verified and validated, the roster digest), SecAgg+
parameter check against its policy, fixed-point encoding, discrete Gaussian noise,
its session's keys and holder draw. ``m`` clients of a roster of n handle the one
``RoundStart.peers`` tuple an in-memory transport hands every client of a round
(the others of the n are listed, not run). CPU time (``time.process_time``), torch
threads 1. ``first`` is the first client of the process, ``others`` the mean of the
rest, ``amortized`` the mean over all n clients of a round run in one process,
(first + (n - 1) others) / n.

    python -m benchmarks.client_roster [--ns 100 300 1000 3000 10000] [--m 20]
        [--label after]

Writes benchmarks/results/client_roster.json and .md; rows of other labels in the
JSON are kept (run it on two versions of the code with two labels).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks._common import RESULTS, environment, run_isolated, write_json

_CONFIG: dict[str, Any] = {
    "data": {
        "preset": "synthetic",
        "options": {"num_clients": 2, "max_samples": 60},
        "client_fractions": [1.0, 0.0, 0.0],
    },
    "model": {"kind": "mlp", "hidden": [64]},
    "algorithm": {"name": "fedavg"},
    "server": {"rounds": 1, "sampling": "all"},
    "run": {"threads": 1},
    "secure_aggregation": {"protocol": "secagg+"},
    "privacy": {"enabled": True, "noise_multiplier": 1.0, "clip_norm": 1.0},
}


def run_one(n: int, m: int) -> dict[str, Any]:
    warnings.simplefilter("ignore")
    import torch
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from privacy import Sampling
    from secure_fml.config import config_from_dict
    from secure_fml.engine import plan_round, privacy_setup
    from secure_fml.messages import Peer, RoundStart
    from secure_fml.pipeline import ClientPipeline
    from secure_fml.rounds import SampledRound
    from secure_fml.simulation import Simulation

    class Timed(ClientPipeline):
        """Measures its local update's CPU time (to take it out of the round start)."""

        update_cpu = 0.0

        def local_update(self, state: Any, round_: int) -> Any:
            c0 = time.process_time()
            upd = super().local_update(state, round_)
            self.update_cpu = time.process_time() - c0
            return upd

    torch.set_num_threads(1)
    raw = json.loads(json.dumps(_CONFIG))
    raw["privacy"]["delta"] = 0.1 / n
    cfg = config_from_dict(raw)
    sim = Simulation(cfg)
    data = sim.batch(sim.split.train[0].client_id)
    dim = int(sim.client_algorithm.state_dim)
    names = tuple(f"site-{i:05d}" for i in range(n))
    keys = [Ed25519PrivateKey.generate() for _ in range(n)]
    peers = tuple(
        Peer(i, nm, keys[i].public_key().public_bytes_raw()) for i, nm in enumerate(names)
    )
    plan = plan_round(
        cfg,
        privacy_setup(cfg, population=n),
        sampled=SampledRound(1, names, Sampling.full(population=n)),
        participants=names,
        dimension=dim,
        clip_norm=cfg.privacy.clip_norm,
    )
    model = np.zeros(dim, np.float32)
    model.setflags(write=False)
    start = RoundStart(
        round=1,
        session_id=bytes(16),
        client_index=0,
        peers=peers,
        model=model,
        model_hash=hashlib.sha256(model.astype("<f4").tobytes()).digest(),
        settings=plan.settings,
    )
    costs = []
    for i in range(m):
        p = Timed(name=names[i], algorithm=sim.client_algorithm, data=data, identity_key=keys[i])
        msg = dataclasses.replace(start, client_index=i)
        c0 = time.process_time()
        reply = p.handle(msg)
        dt = time.process_time() - c0
        assert reply is not None
        costs.append(dt - p.update_cpu)
    first, others = costs[0], float(np.mean(costs[1:]))
    return {
        "n": n,
        "m": m,
        "k": plan.settings.secagg.k if plan.settings.secagg else None,
        "first_ms": 1000 * first,
        "others_ms": 1000 * others,
        "others_p90_ms": 1000 * float(np.quantile(costs[1:], 0.9)),
        "amortized_ms": 1000 * (first + (n - 1) * others) / n,
    }


def _markdown(payload: dict[str, Any]) -> str:
    env = payload["environment"]
    lines = [
        "# Client round-start cost vs roster size (SecAgg+, client pipeline)",
        "",
        f"Commands: {'; '.join(f'`{c}`' for c in payload['commands'])}; Python "
        f"{env.get('python', '?')}, torch {env.get('torch', '?')}, on the project's shared "
        "2-core machine (other jobs running: CPU time, not wall time, is reported). "
        "Per client: CPU ms of handling a SecAgg+ `RoundStart` minus its local update "
        "(see the module docstring); MLP d = 4554, default client policy. `before`: the "
        "code before the roster cache (commit in the label), `after`: this branch.",
        "",
        "| label | n | k | first client ms | other clients ms (p90) | amortized over n ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(payload["rows"], key=lambda r: (r["label"], r["n"])):
        lines.append(
            f"| {r['label']} | {r['n']} | {r['k']} | {r['first_ms']:.1f} | "
            f"{r['others_ms']:.1f} ({r['others_p90_ms']:.1f}) | {r['amortized_ms']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--ns", type=int, nargs="+", default=[100, 300, 1000, 3000, 10000])
    ap.add_argument("--m", type=int, default=20)
    ap.add_argument("--label", default="after")
    ap.add_argument("--one", nargs=2, type=int, metavar=("N", "M"))
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(*args.one)))
        return 0
    path = RESULTS / "client_roster.json"
    payload: dict[str, Any] = (
        json.loads(path.read_text(encoding="utf-8"))
        if path.exists()
        else {"commands": [], "rows": [], "environment": {}}
    )
    payload["environment"] = environment()
    command = ("python -m benchmarks.client_roster " + " ".join(argv or sys.argv[1:])).strip()
    payload["commands"] = [c for c in payload["commands"] if c != command] + [command]
    payload["rows"] = [r for r in payload["rows"] if r["label"] != args.label]
    for n in args.ns:
        row = {**run_isolated("benchmarks.client_roster", n, args.m), "label": args.label}
        payload["rows"].append(row)
        print(
            f"{args.label} n={n}: first {row['first_ms']:.1f} ms, others {row['others_ms']:.1f} "
            f"ms, amortized {row['amortized_ms']:.1f} ms",
            flush=True,
        )
        write_json("client_roster.json", payload)
        (RESULTS / "client_roster.md").write_text(_markdown(payload), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
