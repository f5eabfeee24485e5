"""Aggregation server memory vs clients per round, at fixed dimension.

The server (a :class:`~aggregation.PlainSumServer`, or a SecAgg+
:class:`~aggregation.ServerSession`) runs alone in this process; the n clients run in
a child process (``multiprocessing``, spawn) and every message crosses the pipe as
its wire bytes (``to_bytes`` / ``parse_message``), as over a network. So what this
process allocates is the server's state plus the messages in flight: its peak is
measured with ``tracemalloc`` (Python and numpy allocations, started after imports
and key setup) and with ``ru_maxrss`` (peak RSS of the whole process, including the
interpreter and libraries). The server is driven the way the engine drives it: one
reply at a time, stage by stage.

    python -m benchmarks.aggregation_memory [--ns 100 200 400 800] [--d 20000]
        [--label after] [--protocols plain secagg+]

Writes benchmarks/results/aggregation_memory.json and .md; rows of other labels
already in the JSON are kept, so running it on two versions of the code (each with
its own ``--label``) puts both in one table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.connection
import resource
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks._common import RESULTS, environment, run_isolated, write_json

PROTOCOLS = ("plain", "secagg+")
_SID = bytes(range(16))
_MODEL = bytes(32)


def _config(n: int) -> Any:
    from aggregation import SecAggConfig, SecAggMode

    return SecAggConfig(num_clients=n, mode=SecAggMode.SECAGG_PLUS)


def _clients(conn: multiprocessing.connection.Connection, n: int, d: int, protocol: str) -> None:
    """The child: n clients; answers each batch of server messages with their replies."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from aggregation import ClientSession, PlainSumClient, Roster, parse_message

    rng = np.random.default_rng(0)
    if protocol == "plain":
        firsts = []
        for i in range(n):
            c = PlainSumClient(client_id=i, session_id=_SID, round_index=1)
            c.set_input(rng.standard_normal(d).astype(np.float32))
            firsts.append(c)
        conn.send([])
        _reply_each(conn, [c.start() for c in firsts])
        return
    keys = {i: Ed25519PrivateKey.generate() for i in range(n)}
    pub = {i: k.public_key() for i, k in keys.items()}
    roster = Roster(pub)
    cfg = _config(n)
    clients = {}
    for i in range(n):
        c = ClientSession(
            cfg,
            client_id=i,
            identity_key=keys[i],
            identity_keys=roster,
            session_id=_SID,
            round_index=1,
            model_hash=_MODEL,
        )
        c.set_input(rng.integers(-1000, 1000, size=d))
        clients[i] = c
    conn.send([k.public_bytes_raw() for k in pub.values()])
    _reply_each(conn, (clients[i].start() for i in range(n)))
    while True:
        batch = conn.recv()
        if batch is None:
            return
        _reply_each(conn, (clients[i].handle(parse_message(raw)) for i, raw in batch))


def _reply_each(conn: multiprocessing.connection.Connection, replies: Any) -> None:
    """Send replies one by one (the server takes each as it arrives), then None."""
    for m in replies:
        conn.send_bytes(m.to_bytes())
    conn.send_bytes(b"")


def _arrivals(conn: multiprocessing.connection.Connection) -> Any:
    while raw := conn.recv_bytes():
        yield raw


def run_one(n: int, d: int, protocol: str) -> dict[str, Any]:
    """One configuration: this process is the server."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from aggregation import Aggregate, PlainSumServer, Roster, ServerSession, parse_message

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_clients, args=(child, n, d, protocol), daemon=True)
    proc.start()
    raw_keys = parent.recv()
    server: Any
    # float32 inputs, or the SecAgg word: 32 bits up to a 32-bit modulus, else 64.
    width = 4 if protocol == "plain" else (4 if _config(n).modulus_bits <= 32 else 8)
    if protocol == "plain":
        server = PlainSumServer(participants=range(n), session_id=_SID, round_index=1, dimension=d)
    else:
        roster = Roster({i: Ed25519PublicKey.from_public_bytes(b) for i, b in enumerate(raw_keys)})
        server = ServerSession(
            _config(n),
            identity_keys=roster,
            session_id=_SID,
            round_index=1,
            model_hash=_MODEL,
            dimension=d,
        )
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()
    t0 = time.perf_counter()
    stage_peaks: dict[str, float] = {}
    while True:
        stage = server.stage.name
        for raw in _arrivals(parent):
            server.receive(parse_message(raw))
        del raw
        stage_peaks[stage] = tracemalloc.get_traced_memory()[1] / 2**20
        out = server.close_stage()
        if isinstance(out, Aggregate):
            break
        batch = [(i, m.to_bytes()) for i, m in out.messages.items()]
        del out
        parent.send(batch)
        del batch
    wall = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    if protocol != "plain":
        parent.send(None)
    proc.join(timeout=60)
    return {
        "n": n,
        "d": d,
        "protocol": protocol,
        "contributors": len(out.contributors),
        "peak_traced_mb": peak / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_round_mb": rss0,
        "stage_peaks_mb": stage_peaks,
        "input_mb": n * d * width / 2**20,
        "wall_s": wall,
    }


def _markdown(payload: dict[str, Any]) -> str:
    env = payload["environment"]
    lines = [
        "# Aggregation server memory vs clients per round (fixed d)",
        "",
        f"Commands: {'; '.join(f'`{c}`' for c in payload['commands'])} on "
        f"{env.get('platform', '?')}, Python {env.get('python', '?')}. Each row is one fresh "
        "process running only the server (the clients run in a spawned child process and "
        "every message crosses the pipe as wire bytes). `peak traced MB`: tracemalloc peak "
        "of the server process during the round (started after imports and key setup): "
        "the server's state plus the messages of one stage in flight; `peak RSS MB`: the "
        "server process's peak resident set (interpreter and libraries included); "
        "`inputs MB`: n x d x word size (float32, or the SecAgg+ modulus word): what "
        "holding every input vector costs. `before`: "
        "the code before the running sum (commit given in the label), `after`: this "
        "branch. SecAgg+ with the default client policy, no dropouts.",
        "",
        "| label | protocol | n | d | inputs MB | peak traced MB | peak RSS MB | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(payload["rows"], key=lambda r: (r["protocol"], r["label"], r["n"])):
        lines.append(
            f"| {r['label']} | {r['protocol']} | {r['n']} | {r['d']} | {r['input_mb']:.1f} | "
            f"{r['peak_traced_mb']:.1f} | {r['peak_rss_mb']:.0f} | {r['wall_s']:.1f} |"
        )
    notes = payload.get("notes")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--ns", type=int, nargs="+", default=[100, 200, 400, 800])
    ap.add_argument("--d", type=int, default=20_000)
    ap.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    ap.add_argument("--label", default="after")
    ap.add_argument("--one", nargs=3, metavar=("N", "D", "PROTOCOL"))
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(int(args.one[0]), int(args.one[1]), args.one[2])))
        return 0
    import sys

    path = RESULTS / "aggregation_memory.json"
    payload: dict[str, Any] = (
        json.loads(path.read_text(encoding="utf-8"))
        if path.exists()
        else {"commands": [], "rows": [], "environment": {}}
    )
    payload["environment"] = {**environment(), "platform": __import__("platform").platform()}
    command = "python -m benchmarks.aggregation_memory " + " ".join(argv or sys.argv[1:])
    payload["commands"] = [c for c in payload["commands"] if c != command.strip()] + [
        command.strip()
    ]
    payload["rows"] = [r for r in payload["rows"] if r["label"] != args.label]
    for proto in args.protocols:
        for n in args.ns:
            one = run_isolated("benchmarks.aggregation_memory", n, args.d, proto)
            row = {**one, "label": args.label}
            payload["rows"].append(row)
            print(
                f"{args.label} {proto} n={n}: peak traced {row['peak_traced_mb']:.1f} MB, "
                f"peak RSS {row['peak_rss_mb']:.0f} MB, {row['wall_s']:.1f} s",
                flush=True,
            )
            write_json("aggregation_memory.json", payload)
            (RESULTS / "aggregation_memory.md").write_text(_markdown(payload), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
