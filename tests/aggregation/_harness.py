"""A hand-built round for protocol tests: known identity keys, real sessions, a driver
loop with the same shape as :func:`aggregation.run_protocol`, and helpers to play a
dishonest coordinator or insider. Every hook lives here, in the tests."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregation import (
    Aggregate,
    ClientPolicy,
    ClientSession,
    InMemoryNetwork,
    Message,
    Outbox,
    Roster,
    SecAggConfig,
    SecAggMode,
    ServerSession,
    Stage,
    UnmaskResponse,
)
from aggregation import _primitives as P
from aggregation._client import share_aad
from aggregation._messages import SHARE_KIND_MASK_KEY, SHARE_KIND_SELF_MASK
from privacy.errors import ProtocolError

SMALL_POLICY = ClientPolicy(min_survivors=3)


@dataclass
class Round:
    cfg: SecAggConfig
    sid: bytes
    model: bytes
    ids: dict[int, Ed25519PrivateKey]
    roster: Roster
    x: dict[int, np.ndarray]
    clients: dict[int, ClientSession]
    server: ServerSession
    d: int
    policy: ClientPolicy
    corrupt: frozenset[int] = frozenset()

    @property
    def n(self) -> int:
        return self.cfg.num_clients


def make_round(
    n: int = 6,
    *,
    mode: SecAggMode = SecAggMode.SECAGG,
    d: int = 8,
    policy: ClientPolicy | None = None,
    corrupt: frozenset[int] = frozenset(),
    seed: int = 0,
    server_cls: type[ServerSession] = ServerSession,
    deterministic: bool = False,
    **cfg_kw: object,
) -> Round:
    """A fresh round. ``policy`` is every client's policy and, unless ``cfg_kw`` says
    otherwise, what the config is derived from. ``deterministic`` seeds every client's
    CSPRNG and identity key from ``seed`` (insecure test mode), so probabilistic checks
    and hypothesis examples replay exactly."""
    pol = policy or ClientPolicy()
    kw: dict[str, object] = {
        "max_dropout_fraction": pol.max_dropout_fraction,
        "max_corrupt_fraction": pol.max_corrupt_fraction,
        "security_bits": pol.security_bits,
        "correctness_bits": pol.correctness_bits,
        "min_survivor_fraction": pol.min_survivor_fraction,
        "min_survivors": pol.min_survivors,
        "max_attempts_log2": pol.max_attempts_log2,
    }
    kw.update(cfg_kw)
    cfg = SecAggConfig(num_clients=n, mode=mode, **kw)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    sid = rng.bytes(16)
    model = hashlib.sha256(b"model" + sid).digest()
    ids = {
        i: Ed25519PrivateKey.from_private_bytes(rng.bytes(32))
        if deterministic
        else Ed25519PrivateKey.generate()
        for i in range(n)
    }
    roster = Roster({i: k.public_key() for i, k in ids.items()})
    x = {i: rng.integers(-1000, 1000, size=d).astype(np.int64) for i in range(n)}
    clients = {}
    for i in range(n):
        c = ClientSession(
            cfg,
            client_id=i,
            identity_key=ids[i],
            identity_keys=roster,
            session_id=sid,
            round_index=7,
            model_hash=model,
            policy=pol,
            rng=P.Csprng.insecure_from_seed(seed, f"client-{i}") if deterministic else None,
        )
        c.set_input(x[i])
        clients[i] = c
    server = server_cls(
        cfg, identity_keys=roster, session_id=sid, round_index=7, model_hash=model, dimension=d
    )
    return Round(cfg, sid, model, ids, roster, x, clients, server, d, pol, corrupt)


def with_budgets(rd: Round, **budgets: int) -> Round:
    """``rd`` with a fresh server of the same round given memory budgets
    (``input_memory_bytes``, ``share_memory_bytes``)."""
    rd.server = ServerSession(
        rd.cfg,
        identity_keys=rd.roster,
        session_id=rd.sid,
        round_index=7,
        model_hash=rd.model,
        dimension=rd.d,
        **budgets,
    )
    return rd


@dataclass
class Outcome:
    aggregate: Aggregate | None = None
    abort: ProtocolError | None = None
    client_errors: dict[int, ProtocolError] = field(default_factory=dict)
    error_stage: dict[int, Stage] = field(default_factory=dict)
    refusals: list[tuple[int, Stage, ProtocolError]] = field(default_factory=list)
    #: Every message that crossed the network: (stage, sender or recipient, message).
    to_server: list[tuple[Stage, int, Message]] = field(default_factory=list)
    to_client: list[tuple[Stage, int, Message]] = field(default_factory=list)
    stages: list[tuple[Stage, bool]] = field(default_factory=list)

    def replies(self, stage: Stage) -> dict[int, Message]:
        return {i: m for s, i, m in self.to_server if s is stage}


def drive(
    rd: Round,
    network: InMemoryNetwork | None = None,
    *,
    client_hook: Callable[[int, Stage, Message], Message | None] | None = None,
    order: Callable[[Stage, list[int]], list[int]] | None = None,
) -> Outcome:
    """Run the round like :func:`run_protocol` (refusals make senders silent, a refusing
    client leaves); ``client_hook`` lets a corrupt client rewrite (or drop) its reply;
    ``order(stage, clients)`` the order in which each stage's replies arrive (default:
    ascending ids)."""
    net = network or InMemoryNetwork()
    arrival = order or (lambda _stage, ids: ids)
    out = Outcome()
    server = rd.server

    def step(i: int, stage: Stage, fn: Callable[[], Message]) -> None:
        if i in out.client_errors:
            return
        try:
            reply: Message | None = fn()
        except ProtocolError as exc:
            out.client_errors[i] = exc
            out.error_stage[i] = stage
            return
        if client_hook is not None and reply is not None:
            reply = client_hook(i, stage, reply)
        if reply is None:
            return
        delivered = net.to_server(stage, i, reply)
        if delivered is None:
            return
        out.to_server.append((stage, i, delivered))
        try:
            server.receive(delivered)
        except ProtocolError as exc:
            out.refusals.append((i, stage, exc))

    for i in arrival(Stage.ADVERTISE_KEYS, list(range(rd.n))):
        if net.live(i, Stage.ADVERTISE_KEYS):
            step(i, Stage.ADVERTISE_KEYS, rd.clients[i].start)
    try:
        res = server.close_stage()
        while isinstance(res, Outbox):
            out.stages.append((res.stage, res.reveals_sum))
            for i in arrival(res.stage, sorted(res.messages)):
                msg = net.to_client(res.stage, i, res.messages[i])
                if msg is not None and net.live(i, res.stage):
                    out.to_client.append((res.stage, i, msg))
                    step(i, res.stage, lambda i=i, msg=msg: rd.clients[i].handle(msg))
            res = server.close_stage()
        out.aggregate = res
    except ProtocolError as exc:
        out.abort = exc
    return out


def plain_sum(rd: Round, ids: tuple[int, ...]) -> np.ndarray:
    return np.sum([rd.x[i] for i in ids], axis=0).astype(np.int64)


def lifted(rd: Round, total: np.ndarray) -> np.ndarray:
    from aggregation import centered_lift

    return centered_lift(total, rd.cfg.modulus_bits)


def adversary_shares(rd: Round, out: Outcome) -> dict[tuple[int, int], set[int]]:
    """(owner, kind) -> holders whose share the adversary can open: every share whose
    key an honest holder revealed, and every share dealt to a corrupt holder."""
    shares = {
        m.sender: m
        for m in out.replies(Stage.SHARE_KEYS).values()  # type: ignore[attr-defined]
    }
    known: dict[tuple[int, int], set[int]] = {}
    for s, i, m in out.to_server:
        if s is Stage.UNMASKING and isinstance(m, UnmaskResponse):
            for rk in m.keys:
                dealt = {e.recipient: e for e in shares[rk.owner].shares}.get(i)
                if dealt is None:
                    continue
                ct = dealt.self_mask if rk.kind == SHARE_KIND_SELF_MASK else dealt.mask_key
                try:
                    P.unseal(rk.key, ct, share_aad(rd.clients[i].ctx, rk.kind, rk.owner, i))
                except ProtocolError:
                    continue
                known.setdefault((rk.owner, rk.kind), set()).add(i)
    for owner, sk in shares.items():
        for e in sk.shares:
            if e.recipient in rd.corrupt:
                for kind in (SHARE_KIND_SELF_MASK, SHARE_KIND_MASK_KEY):
                    known.setdefault((owner, kind), set()).add(e.recipient)
    return known


def both_kinds(rd: Round, known: Mapping[tuple[int, int], set[int]]) -> list[int]:
    """Honest owners for which the adversary could rebuild both secrets."""
    t = rd.cfg.t
    return [
        u
        for u in range(rd.n)
        if u not in rd.corrupt
        and len(known.get((u, SHARE_KIND_SELF_MASK), ())) >= t
        and len(known.get((u, SHARE_KIND_MASK_KEY), ())) >= t
    ]
