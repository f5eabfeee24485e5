"""The coordinator as a plain state machine: messages in, messages out, no sockets.

One object owns the whole training run. Sites :meth:`~Coordinator.join` with
their certificate, :meth:`~Coordinator.poll` for their next instruction and
:meth:`~Coordinator.submit` their secure-aggregation replies; :meth:`tick`
closes stages whose deadline passed (silent sites become dropouts that SecAgg
recovers) and starts rounds. Transports (in-process or gRPC) only decode,
validate sizes and delegate here, so every path is testable without a network.

Per round: sample sites (the same :class:`~secure_fml.rounds.ClientSampler` as
the simulation), send the global state with its SHA-256 hash, drive the SecAgg
:class:`~aggregation.ServerSession` through its five stages, charge the DP
event to the ledger **before** the unmasking stage releases the sum to us,
decode the sum, step the :class:`~secure_fml.rounds.ServerOptimizer` and
checkpoint atomically (:mod:`secure_fml.checkpoint`).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography import x509

from aggregation import (
    AdvertiseKeys,
    ConsistencyResponse,
    FixedPointCodec,
    MaskedInput,
    Message,
    ServerSession,
    ShareKeys,
    Stage,
    UnmaskResponse,
    centered_lift,
)
from privacy import LedgerHead
from privacy.errors import (
    ConfigError,
    DropoutThresholdNotMet,
    InvalidMessage,
    OutOfOrder,
    PrivacyBudgetExhausted,
    PrivacyError,
    ProtocolError,
    RefusalReason,
    Refused,
    StaleMessage,
)
from secure_fml._functional import FunctionalModel
from secure_fml.algorithms import Algorithm, make_algorithm
from secure_fml.checkpoint import (
    Checkpoint,
    load_checkpoint,
    restore_training_state,
    resume_round,
    save_checkpoint,
    training_checkpoint,
)
from secure_fml.config import Config, config_to_dict
from secure_fml.deploy._messages import (
    Finished,
    Peer,
    RoundStart,
    ServerMessage,
    StageReply,
    StageRequest,
    Wait,
)
from secure_fml.deploy._pki import verify_site_certificate
from secure_fml.rounds import ClientSampler, RoundContext, ServerOptimizer, UpdatePath
from secure_fml.simulation import build_model
from secure_fml.update_paths import DifferentialPrivacy, SecureSum, build_update_path

__all__ = ["Coordinator", "Deadlines", "model_hash"]

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"

#: What each stage's reply must parse as, and the field naming its sender.
_REPLY_TYPES: dict[Stage, tuple[type[Message], str]] = {
    Stage.ADVERTISE_KEYS: (AdvertiseKeys, "client_id"),
    Stage.SHARE_KEYS: (ShareKeys, "sender"),
    Stage.MASKED_INPUT: (MaskedInput, "sender"),
    Stage.CONSISTENCY_CHECK: (ConsistencyResponse, "sender"),
    Stage.UNMASKING: (UnmaskResponse, "sender"),
}


def model_hash(state: np.ndarray) -> bytes:
    """SHA-256 of the packed float32 state exactly as it travels on the wire."""
    return hashlib.sha256(np.ascontiguousarray(state, dtype="<f4").tobytes()).digest()


@dataclass(frozen=True, kw_only=True)
class Deadlines:
    """Seconds each stage stays open; a site silent past its deadline is a dropout."""

    train_s: float = 300.0  # round start -> key advertisement (includes local training)
    stage_s: float = 60.0  # every later SecAgg stage
    lease_s: float = 15.0  # a site that has not polled for this long is not connected
    #: With min_sites but not all sites connected, wait this long for the rest.
    start_grace_s: float = 10.0
    retry_ms: int = 200  # how long an idle site waits before polling again

    def __post_init__(self) -> None:
        for name in ("train_s", "stage_s", "lease_s", "start_grace_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"deploy.{name} must be a positive number, got {v!r}")


@dataclass
class _Round:
    ctx: RoundContext
    session_id: bytes
    index_of: dict[str, int]
    server: ServerSession
    codec: FixedPointCodec
    noise_stddev_int: float
    started: float
    stage: Stage = Stage.ADVERTISE_KEYS
    expected: set[int] = field(default_factory=set)
    answered: set[int] = field(default_factory=set)
    deadline: float = 0.0
    charged: bool = False
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def number(self) -> int:
        return self.ctx.round


class Coordinator:
    """Runs federated rounds over whatever transport feeds it (see module docstring)."""

    def __init__(
        self,
        config: Config,
        *,
        sites: Sequence[str],
        ca_certificate: x509.Certificate,
        model_spec: Mapping[str, Any],
        run_dir: Path | str,
        deadlines: Deadlines | None = None,
        min_sites: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if config.secure_aggregation.protocol == "none":
            raise ConfigError(
                "deployment needs secure_aggregation.protocol = secagg or secagg+: sites send "
                "only masked updates"
            )
        if config.privacy.enabled and config.privacy.placement == "central":
            raise ConfigError("deployment adds noise on the sites: privacy.placement=distributed")
        names = tuple(sorted(set(sites)))
        if len(names) != len(sites) or len(names) < 3:
            raise ConfigError("deploy.sites must list >= 3 distinct site names")
        if not isinstance(min_sites, int) or not 3 <= min_sites <= len(names):
            raise ConfigError("deploy.min_sites must be an integer in [3, number of sites]")
        self.config = config
        self.sites = names
        self.ca = ca_certificate
        self.model_spec = dict(model_spec)
        self.run_dir = Path(run_dir)
        self.deadlines = deadlines or Deadlines()
        self.min_sites = min_sites
        self.clock = clock
        torch.manual_seed(config.run.seed)
        self.fmodel = FunctionalModel(build_model(self.model_spec))
        self.algorithm: Algorithm = make_algorithm(config.algorithm, self.fmodel)
        self.state = self.algorithm.initial_state(self.fmodel.initial_parameters())
        self.optimizer = ServerOptimizer(
            self.state, config.server.optimizer_config(self.algorithm.update_kind)
        )
        self.rng = np.random.default_rng([config.run.seed, 1])
        self.sampler = ClientSampler(names, config.server.sampling_config(), rng=self.rng)
        self.round = 0
        self.path: UpdatePath | None = None
        self._conn_site: dict[bytes, str] = {}
        self._site_conn: dict[str, bytes] = {}
        self._certs: dict[str, bytes] = {}
        self._identity: dict[str, Any] = {}
        self._last_seen: dict[str, float] = {}
        self._outbox: dict[str, collections.deque[ServerMessage]] = {}
        self._round: _Round | None = None
        self._quorum_since: float | None = None
        #: Why training stopped early (e.g. the privacy budget is spent), else None.
        self.stopped: str | None = None
        self.last_aggregate: np.ndarray | None = None
        self.history: list[dict[str, Any]] = []
        self.refusals: collections.Counter[str] = collections.Counter()

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Create or resume the run in ``run_dir`` (checkpoint + privacy ledger)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ckpt_path = self.run_dir / CHECKPOINT_FILE
        head: LedgerHead | None = None
        ckpt = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
        if ckpt is not None and ckpt.extra.get("ledger_head"):
            head = LedgerHead(**ckpt.extra["ledger_head"])
        self.path = build_update_path(
            self.config,
            population=len(self.sites),
            ledger_dir=self.run_dir,
            rng=np.random.default_rng([self.config.run.seed, 2]),
            expected_head=head,
        )
        if ckpt is not None:
            self._restore(ckpt)
            if self.round != ckpt.round:
                save_checkpoint(ckpt_path, self.checkpoint())
        else:
            save_checkpoint(ckpt_path, self.checkpoint())

    def close(self) -> None:
        if isinstance(self.path, DifferentialPrivacy):
            self.path.ledger.close()

    @property
    def finished(self) -> bool:
        return self.stopped is not None or self.round >= self.config.server.rounds

    @property
    def _dp(self) -> DifferentialPrivacy | None:
        return self.path if isinstance(self.path, DifferentialPrivacy) else None

    @property
    def _secure(self) -> SecureSum:
        inner = self.path.inner if isinstance(self.path, DifferentialPrivacy) else self.path
        if not isinstance(inner, SecureSum):
            raise ConfigError("coordinator was not opened")
        return inner

    def round_modulus_bits(self) -> int:
        return self._secure.modulus_bits

    def checkpoint(self) -> Checkpoint:
        dp = self._dp
        return training_checkpoint(
            round=self.round,
            state=self.state,
            optimizer=self.optimizer,
            rng=self.rng,
            model_spec=self.model_spec,
            config=config_to_dict(self.config),
            algorithm=self.config.algorithm.name.value,
            ledger_head=dp.ledger.head if dp is not None else None,
            extra={"deploy": {"sites": list(self.sites)}},
        )

    def _restore(self, ckpt: Checkpoint) -> None:
        self.state = restore_training_state(
            ckpt, expected_numel=self.state.numel(), optimizer=self.optimizer, rng=self.rng
        )
        dp = self._dp
        self.round = resume_round(ckpt.round, dp.ledger.last_round if dp is not None else None)
        log.info("resumed at round %d", self.round)

    # ------------------------------------------------------------------ sites

    def join(self, site: str, certificate: bytes) -> bytes:
        """Register a connection for ``site`` (already authenticated by the transport)."""
        now = self.clock()
        if site not in self.sites:
            self._refuse(site, "unknown_site")
            raise Refused(RefusalReason.UNKNOWN_SITE, f"site {site!r} is not on the allowlist")
        identity = verify_site_certificate(certificate, ca_cert=self.ca, expected_name=site)
        old = self._site_conn.get(site)
        if old is not None and now - self._last_seen.get(site, -math.inf) < self.deadlines.lease_s:
            self._refuse(site, "duplicate_connection")
            raise Refused(
                RefusalReason.DUPLICATE_CONNECTION,
                f"site {site!r} is already connected; a second connection is refused",
            )
        if old is not None:
            self._conn_site.pop(old, None)
        conn = secrets.token_bytes(16)
        self._conn_site[conn] = site
        self._site_conn[site] = conn
        self._certs[site] = certificate
        self._identity[site] = identity.public_key
        self._last_seen[site] = now
        log.info("site joined", extra={"site": site})
        return conn

    def _site_of(self, conn: bytes) -> str:
        site = self._conn_site.get(bytes(conn))
        if site is None:
            raise Refused(
                RefusalReason.UNAUTHENTICATED, "unknown or replaced connection; join again"
            )
        self._last_seen[site] = self.clock()
        return site

    def connection_site(self, conn: bytes) -> str:
        return self._site_of(conn)

    def _refuse(self, site: str, why: str) -> None:
        self.refusals[why] += 1
        log.warning("refused %s from %s", why, site)

    def poll(self, conn: bytes) -> ServerMessage:
        """The next instruction for this connection's site."""
        site = self._site_of(conn)
        self.tick()
        box = self._outbox.get(site)
        if box:
            return box.popleft()
        if self.finished:
            return Finished(self.round)
        return Wait(self.deadlines.retry_ms)

    def pending(self, conn: bytes) -> bool:
        site = self._conn_site.get(bytes(conn))
        return bool(site is not None and (self._outbox.get(site) or self.finished))

    def submit(self, conn: bytes, reply: StageReply) -> None:
        """Ingest one SecAgg reply; raises a typed error (and changes nothing) if refused."""
        site = self._site_of(conn)
        rd = self._round
        if (
            rd is None
            or reply.round != rd.number
            or not hmac.compare_digest(reply.session_id, rd.session_id)
        ):
            self._refuse(site, "stale")
            raise StaleMessage(
                f"reply for round {reply.round} of another session; the current round is "
                f"{rd.number if rd else 'none'} (replay or late site)"
            )
        idx = rd.index_of.get(site)
        if idx is None:
            self._refuse(site, "not_participant")
            raise OutOfOrder(f"site {site!r} is not a participant of round {rd.number}")
        if reply.stage.value < rd.stage.value:
            self._refuse(site, "replay")
            raise StaleMessage(
                f"{reply.stage.name} reply after that stage closed (replay or late site)"
            )
        if reply.stage is not rd.stage:
            self._refuse(site, "out_of_order")
            raise OutOfOrder(f"{reply.stage.name} reply while stage {rd.stage.name} is open")
        if idx in rd.answered:
            self._refuse(site, "replay")
            raise StaleMessage(f"duplicate {reply.stage.name} reply from {site!r} (replay)")
        if idx not in rd.expected:
            self._refuse(site, "out_of_order")
            raise OutOfOrder(f"site {site!r} is not expected in stage {rd.stage.name}")
        cls, sender_field = _REPLY_TYPES[rd.stage]
        try:
            msg = cls.from_bytes(reply.payload)
            if getattr(msg, sender_field) != idx:
                raise InvalidMessage(
                    f"message claims to be from client {getattr(msg, sender_field)}"
                )
            self._receive(rd, msg)
        except ProtocolError as e:
            # A site that sends an invalid message for its open stage is out of this
            # round (it becomes a dropout that SecAgg recovers); others are unaffected.
            rd.expected.discard(idx)
            rd.refused[site] = str(e)
            self._refuse(site, "invalid")
            self._maybe_advance()
            raise
        rd.answered.add(idx)
        rd.expected.discard(idx)
        self._maybe_advance()

    @staticmethod
    def _receive(rd: _Round, msg: Message) -> None:
        srv = rd.server
        if isinstance(msg, AdvertiseKeys):
            srv.receive_advertisement(msg)
        elif isinstance(msg, ShareKeys):
            srv.receive_shares(msg)
        elif isinstance(msg, MaskedInput):
            srv.receive_masked_input(msg)
        elif isinstance(msg, ConsistencyResponse):
            srv.receive_consistency(msg)
        elif isinstance(msg, UnmaskResponse):
            srv.receive_unmask(msg)
        else:  # pragma: no cover - _REPLY_TYPES covers every stage
            raise InvalidMessage(f"unexpected {type(msg).__name__}")

    # ------------------------------------------------------------------ rounds

    def connected(self) -> list[str]:
        now = self.clock()
        return [
            s
            for s in self.sites
            if s in self._site_conn and now - self._last_seen[s] < self.deadlines.lease_s
        ]

    def tick(self) -> None:
        """Close an expired stage, or start the next round when enough sites are connected."""
        now = self.clock()
        rd = self._round
        if rd is not None:
            if now >= rd.deadline:
                log.info("round %d: %s deadline passed", rd.number, rd.stage.name)
                self._advance(rd)
            return
        if self.path is None:
            raise ConfigError("call Coordinator.open() first")
        if self.finished:
            return
        n = len(self.connected())
        if n < self.min_sites:
            self._quorum_since = None
            return
        if self._quorum_since is None:
            self._quorum_since = now
        if n == len(self.sites) or now - self._quorum_since >= self.deadlines.start_grace_s:
            self._quorum_since = None
            self._start_round()

    def _maybe_advance(self) -> None:
        rd = self._round
        if rd is not None and not rd.expected:
            self._advance(rd)

    def _start_round(self) -> None:
        now = self.clock()
        r = self.round + 1
        sampled = self.sampler.sample(r)
        live = set(self.connected())
        participants = [s for s in sampled.client_ids if s in live]
        ctx = RoundContext(r, sampled, int(self.state.numel()))
        n = len(participants)
        if n < 3:
            log.warning("round %d: only %d sampled sites are connected; redrawing", r, n)
            return
        secure = self._secure
        dp = self._dp
        clip = secure.clip_norm
        d = ctx.dim
        if dp is not None:
            std_int, scale = dp.secagg_noise(ctx, n)
        else:
            std_int = 0.0
            scale = FixedPointCodec.create(
                clip_norm=clip, num_clients=n, modulus_bits=secure.modulus_bits, dimension=d
            ).scale
        codec = FixedPointCodec.create(
            clip_norm=clip,
            num_clients=n,
            modulus_bits=secure.modulus_bits,
            dimension=d,
            scale=scale,
            noise_stddev_int=std_int,
        )
        cfg = secure.secagg_config(n)
        sid = secrets.token_bytes(16)
        model = self.state.detach().cpu().numpy().astype("<f4")
        mh = model_hash(model)
        index_of = {s: i for i, s in enumerate(participants)}
        peers = tuple(Peer(i, s, self._certs[s]) for s, i in index_of.items())
        server = ServerSession(
            cfg,
            identity_keys={i: self._identity[s] for s, i in index_of.items()},
            session_id=sid,
            round_index=r,
            model_hash=mh,
            dimension=d,
        )
        rd = _Round(
            ctx=ctx,
            session_id=sid,
            index_of=index_of,
            server=server,
            codec=codec,
            noise_stddev_int=std_int,
            started=now,
            expected=set(index_of.values()),
            deadline=now + self.deadlines.train_s,
        )
        self._outbox = {s: collections.deque() for s in self.sites}
        for s, i in index_of.items():
            self._outbox[s].append(
                RoundStart(
                    round=r,
                    session_id=sid,
                    site_index=i,
                    peers=peers,
                    model=model,
                    model_hash=mh,
                    secagg=cfg,
                    clip_norm=clip,
                    scale=scale,
                    noise_stddev_int=std_int,
                    wrap_probability=codec.wrap_probability,
                )
            )
        self._round = rd
        log.info("round %d started with %d of %d sampled sites", r, n, len(sampled.client_ids))

    def _send(self, rd: _Round, stage: Stage, payloads: Mapping[int, bytes]) -> None:
        name_of = {i: s for s, i in rd.index_of.items()}
        for i, payload in payloads.items():
            self._outbox[name_of[i]].append(
                StageRequest(
                    round=rd.number, session_id=rd.session_id, stage=stage, payload=payload
                )
            )
        rd.stage = stage
        rd.expected = set(payloads)
        rd.answered = set()
        rd.deadline = self.clock() + self.deadlines.stage_s

    def _advance(self, rd: _Round) -> None:
        """Close the open stage (all replies in, or its deadline passed)."""
        srv = rd.server
        try:
            if rd.stage is Stage.ADVERTISE_KEYS:
                bc = srv.finish_advertising().to_bytes()
                self._send(rd, Stage.SHARE_KEYS, {a.client_id: bc for a in bc_ads(srv)})
            elif rd.stage is Stage.SHARE_KEYS:
                routing = srv.finish_sharing()
                self._send(rd, Stage.MASKED_INPUT, {u: m.to_bytes() for u, m in routing.items()})
            elif rd.stage is Stage.MASKED_INPUT:
                creq = srv.finish_masked_input()
                dp = self._dp
                if dp is not None and len(creq.survivors) < dp.min_survivors(rd.ctx):
                    # The noise was sized for at least min_survivors contributions; fewer
                    # would under-noise the sum, so it must never be unmasked.
                    raise DropoutThresholdNotMet(
                        f"{len(creq.survivors)} masked inputs, DP needs {dp.min_survivors(rd.ctx)}"
                    )
                raw = creq.to_bytes()
                self._send(rd, Stage.CONSISTENCY_CHECK, dict.fromkeys(creq.survivors, raw))
            elif rd.stage is Stage.CONSISTENCY_CHECK:
                ureq = srv.finish_consistency()
                self._charge(rd)
                raw = ureq.to_bytes()
                self._send(rd, Stage.UNMASKING, {i: raw for i, _ in ureq.signatures})
            elif rd.stage is Stage.UNMASKING:
                total = srv.finish_unmasking()
                srv.never_held_both_kinds()
                self._apply(rd, total)
        except (ProtocolError, PrivacyError) as e:
            self._abort(rd, e)

    def _charge(self, rd: _Round) -> None:
        """Record the release durably before any unmask request leaves (i.e. before
        the coordinator can learn the sum)."""
        dp = self._dp
        if dp is None:
            return
        event = dp.secagg_event(
            rd.ctx,
            noise_stddev_int=rd.noise_stddev_int,
            scale=rd.codec.scale,
            clients_surviving=len(rd.server.survivors),
        )
        dp.ledger.record(event)
        rd.charged = True

    def _apply(self, rd: _Round, total: np.ndarray) -> None:
        ints = centered_lift(total, rd.codec.modulus_bits)
        decoded = rd.codec.decode_integers(ints)
        count = len(rd.server.survivors)
        sampled = rd.ctx.sampled
        denom = (
            max(1.0, sampled.rate * sampled.population) if self._dp is not None else float(count)
        )
        self.last_aggregate = decoded.astype(np.float64)
        self.state = self.optimizer.step(torch.from_numpy((decoded / denom).astype(np.float32)))
        self.round = rd.number
        self._finish_round(rd, status="complete", survivors=count)

    def _abort(self, rd: _Round, err: Exception) -> None:
        log.warning("round %d aborted in %s: %s", rd.number, rd.stage.name, err)
        if isinstance(err, PrivacyBudgetExhausted):
            # No later round can be charged either: stop instead of retrying forever.
            self.stopped = f"privacy budget exhausted at round {rd.number}"
        if rd.charged:
            # The release may already be known to us: the round number is spent.
            self.round = rd.number
        self._finish_round(rd, status=f"aborted: {type(err).__name__}", survivors=0)

    def _finish_round(self, rd: _Round, *, status: str, survivors: int) -> None:
        self._round = None
        self._outbox = {s: collections.deque() for s in self.sites}
        dp = self._dp
        line: dict[str, Any] = {
            "round": rd.number,
            "status": status,
            "sampled": len(rd.ctx.sampled.client_ids),
            "sites_seen": len(rd.index_of),
            "survivors": survivors,
            "dropped": len(rd.index_of) - survivors,
            "refused": dict(rd.refused),
            "epsilon": dp.ledger.epsilon(delta=dp.delta) if dp is not None else None,
            "ledger_entries": dp.ledger.head.entries if dp is not None else None,
            "round_s": self.clock() - rd.started,
            "checkpoint_round": self.round,
        }
        if self.round == rd.number:
            save_checkpoint(self.run_dir / CHECKPOINT_FILE, self.checkpoint())
        with open(self.run_dir / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        self.history.append(line)
        log.info(
            "round %d %s: sites seen %d, dropped %d, epsilon %s, %.2fs",
            rd.number,
            status,
            line["sites_seen"],
            line["dropped"],
            f"{line['epsilon']:.3f}" if line["epsilon"] is not None else "-",
            line["round_s"],
        )

    def status(self) -> dict[str, Any]:
        rd = self._round
        return {
            "round": self.round,
            "rounds": self.config.server.rounds,
            "finished": self.finished,
            "stopped": self.stopped,
            "connected": self.connected(),
            "open_round": None
            if rd is None
            else {"round": rd.number, "stage": rd.stage.name, "waiting_for": len(rd.expected)},
            "last": self.history[-1] if self.history else None,
            "refusals": dict(self.refusals),
        }


def bc_ads(server: ServerSession) -> list[AdvertiseKeys]:
    """The advertisements the key broadcast carries (the sites that reach stage 1)."""
    return [server.state.adverts[i] for i in sorted(server.state.adverts)]
