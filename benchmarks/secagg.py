"""Secure-aggregation benchmark: cost of SecAgg / SecAgg+ vs n, d and dropouts.

Commands::

    python -m benchmarks.secagg              # grid + Flower stage-level comparison + expansion
    python -m benchmarks.secagg --quick      # small grid, about a minute
    python -m benchmarks.secagg --scaling    # per-client / server cost for n = 100 ... 10,000
    python -m benchmarks.secagg --scaling --resume   # continue a scaling run (keeps done n)

The grid and comparison write ``benchmarks/results/secagg.json`` and ``secagg.md``;
the scaling run writes ``secagg_scaling.json`` / ``.md`` after every n, so a run that
is stopped can be resumed. Every cell runs the real in-process protocol (all
clients and the server, every message serialised and parsed). Per-client times are
means over the clients that took part to the end; bytes are wire sizes without
transport framing.

Peer: if ``/tmp/flwr-venv`` (or ``$FLWR_PYTHON``) has ``flwr`` installed, its SecAgg+
client stages (``secaggplus_mod``'s setup, share-keys, collect-masked-vectors and
unmask functions) are timed on the same n, d and share count in a subprocess, and
its server stages are replayed with Flower's own helpers (``combine_shares``,
``pseudo_rand_gen``, ``generate_shared_key``) in the order its workflow uses them.
Flower's code is only called, never copied.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from aggregation import (
    AdvertiseKeys,
    ClientPolicy,
    ConsistencyRequest,
    ConsistencyResponse,
    MaskedInput,
    NeighbourKeys,
    PeerKey,
    QuorumCertificate,
    QuorumChallenge,
    Review,
    ReviewResponse,
    SecAggConfig,
    SecAggMode,
    ShareKeys,
    ShareRouting,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
    centered_lift,
    run_protocol,
)
from aggregation._messages import EncryptedShare, RevealedKey, RoutedShare

RESULTS = Path(__file__).parent / "results"
FLWR_PYTHON = os.environ.get("FLWR_PYTHON", "/tmp/flwr-venv/bin/python")

_FLOWER_SCRIPT = r"""
import json, os, sys, time
import numpy as np
from flwr.client.mod.secure_aggregation.secaggplus_mod import (
    SecAggPlusState, _setup, _share_keys, _collect_masked_vectors, _unmask)
from flwr.common import ndarrays_to_parameters
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    parameters_addition, parameters_mod, parameters_subtraction, get_parameters_shape)
from flwr.common.secure_aggregation.secaggplus_constants import Key
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
import flwr

p = json.loads(sys.argv[1])
n, d, num_shares, t, drop = p["n"], p["d"], p["k"] + 1, p["t"], p["dropout"]
half = num_shares >> 1
ids = list(range(1, n + 1))
rng = np.random.default_rng(0)
order = list(rng.permutation(ids))
nbrs = {
    nid: {int(order[(i + o) % n]) for o in range(-half, half + 1)}
    for i, nid in enumerate(order)
}
cfg0 = {Key.SAMPLE_NUMBER: n, Key.SHARE_NUMBER: num_shares, Key.THRESHOLD: t,
        Key.CLIPPING_RANGE: 8.0, Key.TARGET_RANGE: 1 << 16, Key.MOD_RANGE: 1 << 32,
        Key.MAX_WEIGHT: 1000.0}
clock = {"client": {}, "server": {}}
def tick(side, stage, dt):
    clock[side][stage] = clock[side].get(stage, 0.0) + dt
states, pks = {}, {}
for nid in ids:
    st = SecAggPlusState(); st.nid = nid
    t0 = time.perf_counter()
    out = _setup(st, dict(cfg0))
    tick("client", "setup", time.perf_counter() - t0)
    states[nid] = st; pks[nid] = (out[Key.PUBLIC_KEY_1], out[Key.PUBLIC_KEY_2])
fwd = {nid: ([], []) for nid in ids}
for nid in ids:
    t0 = time.perf_counter()
    cfg = {str(j): pks[j] for j in nbrs[nid]}
    tick("server", "share_keys", time.perf_counter() - t0)
    t0 = time.perf_counter()
    out = _share_keys(states[nid], cfg)
    tick("client", "share_keys", time.perf_counter() - t0)
    t0 = time.perf_counter()
    for dst, ct in zip(out[Key.DESTINATION_LIST], out[Key.CIPHERTEXT_LIST]):
        fwd[dst][0].append(nid); fwd[dst][1].append(ct)
    tick("server", "share_keys", time.perf_counter() - t0)
dropped = set(ids[::int(round(1 / drop))]) if drop else set()
alive = [nid for nid in ids if nid not in dropped]
params = ndarrays_to_parameters([np.zeros(d, dtype=np.float32)])
masked = None
for nid in alive:
    cfg = {Key.CIPHERTEXT_LIST: fwd[nid][1], Key.SOURCE_LIST: fwd[nid][0]}
    t0 = time.perf_counter(); out = _collect_masked_vectors(states[nid], cfg, 10, params)
    tick("client", "collect_masked_vectors", time.perf_counter() - t0)
    t0 = time.perf_counter()
    vec = [bytes_to_ndarray(b) for b in out[Key.MASKED_PARAMETERS]]
    masked = vec if masked is None else parameters_addition(masked, vec)
    tick("server", "collect_masked_vectors", time.perf_counter() - t0)
masked = parameters_mod(masked, 1 << 32)
active, dead = set(alive), set(dropped)
collected = {nid: [] for nid in ids}
for nid in alive:
    cfg = {
        Key.ACTIVE_NODE_ID_LIST: list(nbrs[nid] & active),
        Key.DEAD_NODE_ID_LIST: list(nbrs[nid] & dead),
    }
    t0 = time.perf_counter()
    out = _unmask(states[nid], cfg)
    tick("client", "unmask", time.perf_counter() - t0)
    for owner, share in zip(out[Key.NODE_ID_LIST], out[Key.SHARE_LIST]):
        collected[owner].append(share)
t0 = time.perf_counter()
shape = get_parameters_shape(masked)
for nid, shares in collected.items():
    secret = combine_shares(shares)
    if nid in active:
        masked = parameters_subtraction(masked, pseudo_rand_gen(secret, 1 << 32, shape))
    else:
        for j in nbrs[nid] - {nid}:
            sk = generate_shared_key(
                bytes_to_private_key(secret), bytes_to_public_key(pks[j][0]))
            pm = pseudo_rand_gen(sk, 1 << 32, shape)
            if nid > j:
                masked = parameters_addition(masked, pm)
            else:
                masked = parameters_subtraction(masked, pm)
masked = parameters_mod(masked, 1 << 32)
tick("server", "unmask", time.perf_counter() - t0)
# Sanity: all inputs were zero, so the unmasked coordinates must agree with each other.
if len(np.unique(masked[0])) > 1:
    raise SystemExit("Flower replay did not unmask the sum")
for stage in clock["client"]:
    users = len(ids) if stage in ("setup", "share_keys") else len(alive)
    clock["client"][stage] /= users
print(json.dumps({"flwr_version": flwr.__version__, "client_stage_s": clock["client"],
                  "server_stage_s": clock["server"]}))
"""


# ------------------------------------------------------------------ measurement


def measure(
    n: int,
    d: int,
    mode: SecAggMode,
    dropout: float,
    *,
    degree: int | None = None,
    threshold: int | None = None,
    policy: ClientPolicy | None = None,
) -> dict[str, Any]:
    """One real round; returns per-client and server costs."""
    kw: dict[str, Any] = {}
    if degree is not None:
        kw = {"degree": degree, "threshold": threshold}
    pol = policy or ClientPolicy()
    cfg = SecAggConfig(
        num_clients=n,
        mode=mode,
        max_dropout_fraction=pol.max_dropout_fraction,
        max_corrupt_fraction=pol.max_corrupt_fraction,
        min_survivor_fraction=pol.min_survivor_fraction,
        min_survivors=pol.min_survivors,
        **kw,
    )
    rng = np.random.default_rng(0)
    xs = [rng.integers(-1000, 1000, size=d, dtype=np.int64) for _ in range(n)]
    drops = {i: Stage.MASKED_INPUT for i in range(0, n, round(1 / dropout))} if dropout else {}
    t0 = time.perf_counter()
    total, st = run_protocol(xs, config=cfg, dropouts=drops, policy=pol)
    wall = time.perf_counter() - t0
    expected = np.sum([xs[i] for i in st.survivors], axis=0)
    if not np.array_equal(centered_lift(total, cfg.modulus_bits), expected):
        raise AssertionError("secure sum does not match the plain sum")
    live = list(st.survivors)
    per_stage: dict[str, float] = {}
    for i in live:
        for stage, sec in st.client_stage_breakdown[i].items():
            per_stage[stage] = per_stage.get(stage, 0.0) + sec / len(live)
    masking = float(np.median([st.clients[i].timings["masking"] for i in live]))
    a = cfg.analysis(pol)
    return {
        "n": n,
        "d": d,
        "mode": mode.value,
        "dropout": dropout,
        "k": cfg.k,
        "t": cfg.t,
        "samples": a.samples,
        "required_survivors": a.required_survivors,
        "honest_in_sum": a.honest_in_sum,
        "log2_security": a.log2_security,
        "survivors": len(live),
        "client_total_s": float(np.mean([st.client_seconds[i] for i in live])),
        "client_cpu_s": float(np.mean([st.client_cpu_seconds[i] for i in live])),
        "client_cpu_p90_s": float(np.percentile([st.client_cpu_seconds[i] for i in live], 90)),
        "client_stage_s": per_stage,
        "client_masking_s": masking,
        "mask_vectors": float(np.median([st.clients[i].timings["mask_vectors"] for i in live])),
        "server_total_s": st.server_seconds,
        "server_cpu_s": st.server_cpu_seconds,
        "server_stage_s": st.server_stage_seconds,
        "server_unmask_s": st.server_unmask_seconds,
        "bytes_sent_per_client": float(np.mean([st.bytes_sent[i] for i in live])),
        "bytes_received_per_client": float(np.mean([st.bytes_received.get(i, 0) for i in live])),
        "server_bytes_in": float(sum(st.bytes_sent.values())),
        "server_bytes_out": float(sum(st.bytes_received.values())),
        "plaintext_bytes": d * 4,
        "wall_s": wall,
    }


def fit_exponent(ns: list[int], ys: list[float]) -> float:
    """Least-squares slope of log y against log n."""
    x = np.log(np.asarray(ns, dtype=np.float64))
    y = np.log(np.asarray(ys, dtype=np.float64))
    return float(np.polyfit(x, y, 1)[0])


# ------------------------------------------------------------------ expansion


def wire_sizes(n: int, d: int, input_bits: int, mode: SecAggMode) -> dict[str, Any]:
    """Per-client bytes of one round with no dropouts, from the real encoders: every
    message is built at its true size (n, k, d, b) and serialised."""
    bits = input_bits + math.ceil(math.log2(n))
    cfg = SecAggConfig(num_clients=n, mode=mode, modulus_bits=bits)
    a = cfg.analysis()
    k = cfg.k
    hdr = {"session_id": bytes(16), "round_index": 0}
    key = PeerKey(client_id=1, enc_public=bytes(32), mask_public=bytes(32), signature=bytes(64))
    ids = tuple(range(1, k + 1))
    ct = bytes(33)
    in_dealers = k  # expected number of clients that drew this one (k in SecAgg)
    sent = {
        "advertise": AdvertiseKeys(
            **hdr,
            key=key,
            seed_commitment=bytes(32),
            neighbours=() if cfg.complete else ids,
            commitment_signature=bytes(64),
        ),
        "share_keys": ShareKeys(
            **hdr,
            sender=0,
            shares=tuple(
                EncryptedShare(recipient=h, ephemeral_public=bytes(32), self_mask=ct, mask_key=ct)
                for h in ids
            ),
            signature=bytes(64),
        ),
        "masked_input": MaskedInput(
            **hdr,
            sender=0,
            bits=bits,
            vector=np.zeros(d, dtype=np.uint32 if bits <= 32 else np.uint64),
            tags=tuple((h, bytes(16)) for h in ids),
            tag_signature=bytes(64),
        ),
        "review": ReviewResponse(**hdr, sender=0, bad_tags=(), signature=bytes(64)),
        "consistency": ConsistencyResponse(**hdr, sender=0, signature=bytes(64)),
        "challenge": QuorumChallenge(**hdr, sender=0, indices=tuple(range(1, a.samples + 1))),
        "unmask": UnmaskResponse(
            **hdr,
            sender=0,
            keys=tuple(
                RevealedKey(owner=h, kind=0, key=bytes(16)) for h in range(1, in_dealers + 1)
            ),
            signature=bytes(64),
        ),
    }
    extra_keys = 0 if cfg.complete else in_dealers  # dealers it did not draw itself
    received = {
        "neighbour_keys": NeighbourKeys(
            **hdr, recipient=0, keys=tuple(dataclasses.replace(key, client_id=h) for h in ids)
        ),
        "share_routing": ShareRouting(
            **hdr,
            recipient=0,
            shares=tuple(
                RoutedShare(dealer=h, ephemeral_public=bytes(32), self_mask=ct, mask_key=ct)
                for h in range(1, in_dealers + 1)
            ),
            shared=ids,
            keys=tuple(
                PeerKey(
                    client_id=h, enc_public=bytes(32), mask_public=bytes(32), signature=bytes(64)
                )
                for h in range(1, extra_keys + 1)
            ),
        ),
        "review": Review(
            **hdr, recipient=0, tags=tuple((h, bytes(16)) for h in range(1, in_dealers + 1))
        ),
        "consistency": ConsistencyRequest(
            **hdr,
            recipient=0,
            status=np.full(n, 3, dtype=np.uint8),
            graph_root=bytes(32),
            proof=tuple(bytes(32) for _ in range(max(1, (n - 1).bit_length()))),
        ),
        "certificate": QuorumCertificate(**hdr, signers=np.ones(n, dtype=bool)),
        "unmask_request": UnmaskRequest(
            **hdr,
            signatures=tuple((h, bytes(64)) for h in range(1, a.samples + 1)),
            survivors=tuple(range(1, in_dealers + 1)),
            dropped=(),
        ),
    }
    sent_b = {name: len(m.to_bytes()) for name, m in sent.items()}
    recv_b = {name: len(m.to_bytes()) for name, m in received.items()}
    plain = d * input_bits / 8
    s, r = sum(sent_b.values()), sum(recv_b.values())
    return {
        "n": n,
        "d": d,
        "input_bits": input_bits,
        "modulus_bits": bits,
        "mode": mode.value,
        "k": k,
        "sent": sent_b,
        "received": recv_b,
        "sent_total": s,
        "received_total": r,
        "expansion_sent": s / plain,
        "expansion_total": (s + r) / plain,
        "masked_vector_only": math.ceil(d * bits / 8) / plain,
    }


def bonawitz_count(n: int, d: int, input_bits: int) -> float:
    """Bonawitz et al.'s own count for the honest-but-curious protocol: 2n public keys
    received, (5n - 4) shares, and d sums of input_bits + log2 n bits, all 256-bit
    keys and shares, no signatures or framing."""
    r = input_bits + math.ceil(math.log2(n))
    total_bits = 2 * n * 256 + (5 * n - 4) * 256 + d * r
    return total_bits / (d * input_bits)


# ------------------------------------------------------------------ Flower


def run_flower(n: int, d: int, k: int, t: int, dropout: float) -> dict[str, Any] | None:
    if not Path(FLWR_PYTHON).exists():
        return None
    params = json.dumps({"n": n, "d": d, "k": k, "t": t, "dropout": dropout})
    proc = subprocess.run(
        [FLWR_PYTHON, "-c", _FLOWER_SCRIPT, params], capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        print(f"  flower run failed: {proc.stderr.strip().splitlines()[-3:]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


#: Our stage -> the Flower stage doing the same job.
STAGE_MAP = [
    ("advertise_keys", "setup"),
    ("share_keys", "share_keys"),
    ("masked_input", "collect_masked_vectors"),
    ("review", None),
    ("dispute", None),
    ("consistency_check", None),
    ("quorum_challenge", None),
    ("unmasking", "unmask"),
]

#: Our client policy for the Flower row: k = 10 holders at n = 100 is accepted once the
#: client requires 25 honest inputs per sum (not the default 45) and at most 5% missing.
FLOWER_POLICY = ClientPolicy(max_dropout_fraction=0.05, min_survivor_fraction=0.3)


def flower_comparison(dropout: float) -> dict[str, Any] | None:
    n, d, k, t = 100, 100_000, 10, 7
    fl = run_flower(n, d, k, t, dropout)
    if fl is None:
        return None
    ours = measure(
        n, d, SecAggMode.SECAGG_PLUS, dropout, degree=k, threshold=t, policy=FLOWER_POLICY
    )
    stages = []
    for our, theirs in STAGE_MAP:
        stages.append(
            {
                "ours": our,
                "flower": theirs,
                "ours_client_ms": 1e3 * ours["client_stage_s"].get(our, 0.0),
                "flower_client_ms": None
                if theirs is None
                else 1e3 * fl["client_stage_s"].get(theirs, 0.0),
                "ours_server_s": ours["server_stage_s"].get(our, 0.0),
                "flower_server_s": None
                if theirs is None
                else fl["server_stage_s"].get(theirs, 0.0),
            }
        )
    return {
        "n": n,
        "d": d,
        "k": k,
        "t": t,
        "dropout": dropout,
        "ours": ours,
        "flower": fl,
        "stages": stages,
    }


# ------------------------------------------------------------------ rendering


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }


def render_scaling(out: dict[str, Any]) -> str:
    rows = out["rows"]
    lines = [
        "# Secure aggregation: cost vs roster size (SecAgg+)",
        "",
        f"Command: `{out['command']}` on {out['machine']['platform']}, {out['machine']['cpus']} "
        f"CPUs (shared with other jobs, run under `nice -n 19`), Python "
        f"{out['machine']['python']}. d = {out['d']} integer inputs, b = 32, default client "
        "policy (delta 10%, gamma 5%, 40 + 20 bits, half the roster in every sum) and the "
        "(k, t) it derives; 10% dropouts (every 10th client silent from the masked-input "
        "stage on). Real protocol in one process: every message serialised and parsed. "
        "Per-client figures are means over the clients that took part to the end; bytes are "
        "sent + received, without framing. The run writes this file after every n and "
        "`--resume` continues it.",
        "",
        "Times are CPU seconds (process time), which other jobs on the machine do not "
        "inflate; wall-clock figures are in the JSON.",
        "",
        "| n | k | t | samples | client CPU ms (p90) | client KB | server CPU s |"
        " server MB in / out | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        kb = (r["bytes_sent_per_client"] + r["bytes_received_per_client"]) / 1e3
        lines.append(
            f"| {r['n']} | {r['k']} | {r['t']} | {r['samples']} | "
            f"{r['client_cpu_s'] * 1e3:.1f} ({r['client_cpu_p90_s'] * 1e3:.1f}) | {kb:.1f} | "
            f"{r['server_cpu_s']:.2f} | {r['server_bytes_in'] / 1e6:.1f} / "
            f"{r['server_bytes_out'] / 1e6:.1f} | {r['wall_s']:.0f} |"
        )
    if len(rows) >= 2:
        e = out["exponents"]
        lines += [
            "",
            f"Fitted growth exponents (least squares of log cost on log n, n = "
            f"{rows[0]['n']} to {rows[-1]['n']}): per-client CPU time **{e['client_time']:.2f}** "
            f"(wall clock {e['client_wall_time']:.2f}), "
            f"per-client bytes **{e['client_bytes']:.2f}** (target <= 0.3); server time "
            f"{e['server_time']:.2f}, server bytes {e['server_bytes']:.2f}.",
        ]
    lines += [
        "",
        "Per-client time by stage (wall-clock ms, so inflated by other jobs on the machine; "
        "the stage mix, not the absolute value, is the point):",
        "",
    ]
    stages = sorted(
        {s for r in rows for s in r["client_stage_s"]}, key=lambda s: Stage[s.upper()].value
    )
    lines.append("| n | " + " | ".join(stages) + " |")
    lines.append("|---|" + "---|" * len(stages))
    for r in rows:
        lines.append(
            f"| {r['n']} | "
            + " | ".join(f"{1e3 * r['client_stage_s'].get(s, 0.0):.2f}" for s in stages)
            + " |"
        )
    if out.get("pending"):
        lines += [
            "",
            f"Not yet measured (resume the run): n = {', '.join(map(str, out['pending']))}.",
        ]
    lines.append("")
    return "\n".join(lines)


def render_main(out: dict[str, Any]) -> str:
    lines = [
        "# Secure aggregation benchmark",
        "",
        f"Command: `{out['command']}` on {out['machine']['platform']}, {out['machine']['cpus']} "
        f"CPUs (shared with other jobs), Python {out['machine']['python']}. Integer inputs, "
        "b = 32, every message serialised and parsed. Times are per client (mean) and for the "
        "server; 10% dropout = every 10th client silent from the masked-input stage on. "
        "Default client policy (see `docs/secure_aggregation.md`).",
        "",
        "| mode | n | d | drop | k | t | client ms | masking ms | server s | unmask s |"
        " sent / float32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        lines.append(
            f"| {r['mode']} | {r['n']} | {r['d']} | {r['dropout']:.0%} | {r['k']} | {r['t']} | "
            f"{r['client_total_s'] * 1e3:.2f} | {r['client_masking_s'] * 1e3:.2f} | "
            f"{r['server_total_s']:.3f} | {r['server_unmask_s']:.3f} | "
            f"{r['bytes_sent_per_client'] / r['plaintext_bytes']:.3f} |"
        )
    for fc in out["flower"]:
        fl, ours = fc["flower"], fc["ours"]
        lines += [
            "",
            f"## Flower SecAgg+ at n = {fc['n']}, d = {fc['d']}, k = {fc['k']}, t = {fc['t']}, "
            f"{fc['dropout']:.0%} dropouts (flwr {fl['flwr_version']})",
            "",
            "Stage by stage. Flower's client functions are its `secaggplus_mod` stages; its "
            "server stages replay its workflow's computations with its own helpers (routing, "
            "summing, and for unmasking `combine_shares` + `pseudo_rand_gen`). Flower's "
            "collect-masked-vectors stage includes its own float quantization; ours receives "
            "integers already encoded by the codec. Ours runs with a client policy that "
            "accepts k = 10 at n = 100 (every revealed sum holds >= "
            f"{ours['honest_in_sum']} honest inputs, 2^{ours['log2_security']:.0f} per attempt) "
            f"and masks with ~{ours['mask_vectors']:.0f} vectors per client (its k draws, those "
            "that drew it, and the self mask) where Flower's ring masks with k + 1.",
            "",
            "| our stage | Flower stage | client ms ours / Flower | server s ours / Flower |",
            "|---|---|---|---|",
        ]
        for s in fc["stages"]:
            fcl = "–" if s["flower_client_ms"] is None else f"{s['flower_client_ms']:.2f}"
            fsv = "–" if s["flower_server_s"] is None else f"{s['flower_server_s']:.3f}"
            lines.append(
                f"| {s['ours']} | {s['flower'] or '(none)'} | {s['ours_client_ms']:.2f} / {fcl} "
                f"| {s['ours_server_s']:.3f} / {fsv} |"
            )
        oc = sum(s["ours_client_ms"] for s in fc["stages"])
        fcs = sum(s["flower_client_ms"] or 0.0 for s in fc["stages"])
        osv = sum(s["ours_server_s"] for s in fc["stages"])
        fsvt = sum(s["flower_server_s"] or 0.0 for s in fc["stages"])
        lines.append(f"| **total** | | {oc:.2f} / {fcs:.2f} | {osv:.3f} / {fsvt:.3f} |")
    if out["flower"]:
        lines += [
            "",
            "Security difference: Flower's masks come from numpy's Mersenne Twister "
            "(`np.random.RandomState`), a non-cryptographic PRG, seeded with a 32-bit XOR-fold "
            "of the 32-byte shared secret, so every mask is one of at most 2^32 sequences and "
            "can be found by search; ours are AES-256-CTR keystreams under a full 256-bit HKDF "
            "key. Flower also trusts the server with the neighbour graph, the survivor lists "
            "and the threshold; ours pays for the client-side checks in the review, "
            "consistency and quorum stages.",
        ]
    lines += ["", "## Communication at 2^10 users x 2^20 dims, 16-bit inputs", ""]
    for e in out["expansion"]:
        lines.append(
            f"- {e['mode']} (k = {e['k']}, b = {e['modulus_bits']} bits, bit-packed): upload "
            f"**{e['expansion_sent']:.3f}x**, upload + download {e['expansion_total']:.3f}x the "
            f"plaintext (masked vector alone {e['masked_vector_only']:.3f}x)."
        )
    b = out["bonawitz_count"]
    lines += [
        "",
        f"Bonawitz et al. report 1.73x (their count, honest-but-curious, no signatures: "
        f"{b:.3f}x here); with the 64-byte signature on each of the n keys a client receives "
        f"in their active variant the same count gives {out['bonawitz_active']:.3f}x. Sizes "
        "come from our real encoders (every message built at full size and serialised).",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------ commands


def scaling(args: argparse.Namespace) -> int:
    ns = [int(x) for x in args.ns.split(",")]
    path = RESULTS / "secagg_scaling.json"
    done: dict[int, dict[str, Any]] = {}
    if args.resume and path.exists():
        for r in json.loads(path.read_text())["rows"]:
            if r["d"] == args.d:
                done[r["n"]] = r
    RESULTS.mkdir(parents=True, exist_ok=True)
    for n in ns:
        if n in done:
            print(f"n={n}: kept from the previous run")
            continue
        print(f"n={n}: running ...", flush=True)
        done[n] = measure(n, args.d, SecAggMode.SECAGG_PLUS, 0.1)
        r = done[n]
        print(
            f"n={n} k={r['k']} t={r['t']}: client {r['client_cpu_s'] * 1e3:.1f} ms CPU "
            f"({r['client_total_s'] * 1e3:.1f} wall), "
            f"{(r['bytes_sent_per_client'] + r['bytes_received_per_client']) / 1e3:.1f} KB; "
            f"server {r['server_cpu_s']:.2f} s CPU (round wall {r['wall_s']:.0f} s)",
            flush=True,
        )
        write_scaling(args, ns, done, path)
    write_scaling(args, ns, done, path)
    return 0


def write_scaling(
    args: argparse.Namespace, ns: list[int], done: dict[int, dict[str, Any]], path: Path
) -> None:
    rows = [done[n] for n in sorted(done)]
    out: dict[str, Any] = {
        "command": "python -m benchmarks.secagg --scaling"
        + (f" --ns {args.ns}" if args.ns != DEFAULT_NS else "")
        + (f" --d {args.d}" if args.d != 1000 else ""),
        "machine": _machine(),
        "d": args.d,
        "rows": rows,
        "pending": [n for n in ns if n not in done],
    }
    if len(rows) >= 2:
        xs = [r["n"] for r in rows]
        out["exponents"] = {
            "client_time": fit_exponent(xs, [r["client_cpu_s"] for r in rows]),
            "client_wall_time": fit_exponent(xs, [r["client_total_s"] for r in rows]),
            "client_bytes": fit_exponent(
                xs, [r["bytes_sent_per_client"] + r["bytes_received_per_client"] for r in rows]
            ),
            "server_time": fit_exponent(xs, [r["server_cpu_s"] for r in rows]),
            "server_bytes": fit_exponent(
                xs, [r["server_bytes_in"] + r["server_bytes_out"] for r in rows]
            ),
        }
        print(
            "exponents: " + ", ".join(f"{k} {v:.3f}" for k, v in out["exponents"].items()),
            flush=True,
        )
    path.write_text(json.dumps(out, indent=2))
    (RESULTS / "secagg_scaling.md").write_text(render_scaling(out))


DEFAULT_NS = "100,300,1000,3000,10000"


def parameter_table() -> int:
    """The (k, t) a client derives, and the failure probabilities, for the docs."""
    rows = []
    for alpha in (0.5, 0.66):
        policy = ClientPolicy(min_survivor_fraction=alpha)
        for n in (100, 1000, 10_000):
            k, t = policy.derive(n, complete=False)
            a = policy.analyse(n, k, t)
            rows.append(
                {
                    "min_survivor_fraction": alpha,
                    "n": n,
                    "k": k,
                    "t": t,
                    "corrupt": a.corrupt,
                    "honest_in_sum": a.honest_in_sum,
                    "required_survivors": a.required_survivors,
                    "samples": a.samples,
                    "log2_graph": a.log2_graph,
                    "log2_quorum": a.log2_quorum,
                    "log2_security": a.log2_security,
                    "log2_correctness": a.log2_correctness,
                }
            )
    lines = [
        "# SecAgg+ parameters a client derives (gamma = 5%, delta = 10%)",
        "",
        "Command: `python -m benchmarks.secagg --table`. Policy: 40 security bits per round "
        "plus 20 for up to 2^20 attempts by the server (target 2^-60 per attempt), 20 "
        "correctness bits; min survivors m(n) = f n; every revealed sum holds >= m(n) - c "
        "honest inputs. log2 columns are per attempt (see docs/secure_aggregation.md).",
        "",
        "| f | n | k | t | c | honest in any sum | survivors required | samples |"
        " log2 P[graph] | log2 P[quorum] | log2 P[security] | log2 P[round fails] |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['min_survivor_fraction']} | {r['n']} | {r['k']} | {r['t']} | {r['corrupt']} | "
            f"{r['honest_in_sum']} | {r['required_survivors']} | {r['samples']} | "
            f"{r['log2_graph']:.1f} | {r['log2_quorum']:.1f} | {r['log2_security']:.1f} | "
            f"{r['log2_correctness']:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "secagg_parameters.md").write_text(text)
    (RESULTS / "secagg_parameters.json").write_text(json.dumps(rows, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small grid")
    ap.add_argument("--scaling", action="store_true", help="cost vs n at fixed d")
    ap.add_argument("--ns", default=DEFAULT_NS, help="roster sizes for --scaling")
    ap.add_argument("--d", type=int, default=1000, help="dimension for --scaling")
    ap.add_argument("--resume", action="store_true", help="keep finished n of a scaling run")
    ap.add_argument("--no-flower", action="store_true")
    ap.add_argument("--table", action="store_true", help="derived (k, t) for the docs")
    args = ap.parse_args(argv)
    if args.table:
        return parameter_table()
    if args.scaling:
        return scaling(args)
    ns = [10, 50] if args.quick else [10, 50, 100]
    ds = [10_000] if args.quick else [10_000, 100_000]
    rows = []
    for mode in (SecAggMode.SECAGG, SecAggMode.SECAGG_PLUS):
        for n in ns:
            for d in ds:
                for drop in (0.0, 0.1):
                    r = measure(n, d, mode, drop)
                    rows.append(r)
                    print(
                        f"{mode.value:8s} n={n:4d} d={d:7d} drop={drop:.0%} k={r['k']} "
                        f"t={r['t']}: client {r['client_total_s'] * 1e3:8.2f} ms (mask "
                        f"{r['client_masking_s'] * 1e3:6.2f} ms), server "
                        f"{r['server_total_s']:.3f} s (unmask {r['server_unmask_s']:.3f} s)",
                        flush=True,
                    )
    flower = []
    if not args.no_flower:
        if not Path(FLWR_PYTHON).exists():
            print(f"flwr venv not found at {FLWR_PYTHON}: Flower comparison skipped")
        else:
            for drop in (0.0,):
                fc = flower_comparison(drop)
                if fc is not None:
                    flower.append(fc)
                    for s in fc["stages"]:
                        print(
                            f"flower d={drop:.0%} {s['ours']:18s} client "
                            f"{s['ours_client_ms']:8.2f} ms vs {s['flower_client_ms']} ms; server "
                            f"{s['ours_server_s']:.3f} s vs {s['flower_server_s']} s",
                            flush=True,
                        )
    n, d, ib = 2**10, 2**20, 16
    expansion = [
        wire_sizes(n, d, ib, SecAggMode.SECAGG),
        wire_sizes(n, d, ib, SecAggMode.SECAGG_PLUS),
    ]
    hbc = bonawitz_count(n, d, ib)
    active = hbc + n * 64 * 8 / (d * ib)
    for e in expansion:
        print(
            f"2^10 x 2^20 @16 bit {e['mode']}: upload {e['expansion_sent']:.3f}x, total "
            f"{e['expansion_total']:.3f}x (Bonawitz count {hbc:.3f}x, active {active:.3f}x)"
        )
    out = {
        "command": "python -m benchmarks.secagg" + (" --quick" if args.quick else ""),
        "machine": _machine(),
        "rows": rows,
        "flower": flower,
        "expansion": expansion,
        "bonawitz_count": hbc,
        "bonawitz_active": active,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "secagg_quick" if args.quick else "secagg"
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2))
    (RESULTS / f"{name}.md").write_text(render_main(out))
    print(f"wrote {RESULTS / (name + '.json')} and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
