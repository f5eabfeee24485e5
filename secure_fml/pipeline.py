"""The client pipeline: one client's side of every round, in simulation and deployment.

On a :class:`~secure_fml.messages.RoundStart` a client checks the model (finite
float32 of the dimension its algorithm expects, matching the announced SHA-256)
and the roster (distinct names and identities, itself at its index), runs its
algorithm's ``client_update`` on its own data, clips the update
(:func:`privacy.clip_update`), appends the adaptive-clipping bit or its sample
count where the round asks for them, adds its share of the noise, and opens the
round's aggregation client session: plain (the coordinator is trusted), or
SecAgg / SecAgg+ (the update is encoded to fixed point, the exact discrete
Gaussian share is added in the integer domain, then masked). Nothing else ever
leaves the client. Later :class:`~secure_fml.messages.StageRequest` messages go
to that session.

The same class is the simulated client and the deployed site; a deployed site
only adds how peers are verified (certificates from the consortium CA, see
``secure_fml.deploy``) and the network around it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

import privacy
from aggregation import (
    AggregationClient,
    ClientPolicy,
    ClientSession,
    FixedPointCodec,
    MaskedInput,
    PlainInput,
    PlainSumClient,
    Roster,
    Stage,
    all_finite,
)
from privacy import Csprng, GaussianNoiseSource
from privacy.errors import ConfigError, InvalidMessage, PrivacyBudgetExhausted, StaleMessage
from secure_fml._functional import Batch
from secure_fml.algorithms import Algorithm, ClientUpdate
from secure_fml.messages import (
    ClientNoise,
    EngineMessage,
    Finished,
    Peer,
    RoundSettings,
    RoundStart,
    StageReply,
    StageRequest,
)
from secure_fml.record_dp import RecordLevelLedger

__all__ = [
    "VERIFIED_MODELS",
    "VERIFIED_ROSTERS",
    "ClientPipeline",
    "UpdateInfo",
    "codec_for",
    "model_hash",
    "name_seed",
    "raw_ed25519_peer",
    "secure_clip_range",
    "seeded_generator",
    "seeded_randomness",
]

log = logging.getLogger(__name__)


def model_hash(state: np.ndarray) -> bytes:
    """SHA-256 of the packed float32 state exactly as it travels on the wire."""
    return hashlib.sha256(np.ascontiguousarray(state, dtype="<f4").data).digest()


class _VerifiedModels:
    """The last read-only model array this process checked, with its hash and tensor.

    An in-memory transport hands the engine's one read-only array to every client of
    a round: it is checked (finite, hashed) once per process instead of once per
    client. Arrays that arrive over a network are writeable copies and never cached.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slot: tuple[np.ndarray, bytes, torch.Tensor] | None = None

    def check(self, m: np.ndarray) -> tuple[bytes, torch.Tensor]:
        with self._lock:
            slot = self._slot
            if slot is not None and slot[0] is m and not m.flags.writeable:
                return slot[1], slot[2]
        if not all_finite(m):
            raise InvalidMessage("model contains NaN or Inf")
        digest = model_hash(m)
        if m.flags.writeable:
            return digest, torch.from_numpy(m.copy())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only: never written to
            tensor = torch.from_numpy(m)
        with self._lock:
            self._slot = (m, digest, tensor)
        return digest, tensor


VERIFIED_MODELS = _VerifiedModels()


@dataclass(frozen=True)
class _CheckedRoster:
    """What the roster-wide checks of one ``RoundStart.peers`` established."""

    by_index: tuple[Peer, ...]  # peers[i] has index i
    roster: Roster | None  # the verified identity keys (secure rounds only)


class _VerifiedRosters:
    """The rosters this process checked recently, keyed by the very (immutable) tuple.

    Every check of a roster that does not depend on which client is looking (indices
    0..n-1 exactly once, distinct names, distinct identities, every identity verified
    by ``verify_peer``, the distinct, valid Ed25519 keys and the digest of
    :class:`~aggregation.Roster`) is a function of the roster and ``verify_peer``
    alone. An in-memory transport hands one tuple to every client of a round, so the
    checks run once per process and round instead of once per client (O(n) each);
    each client still runs its own O(1) checks (itself at its index, its own key, the
    parameters' n) on the result. A hit needs the same tuple object (held here, so
    its id cannot be reused) and the same ``verify_peer``: a roster that arrives over
    a network is a fresh object and is checked in full.
    """

    _SLOTS = 4

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: list[tuple[tuple[Peer, ...], object, bool, _CheckedRoster]] = []

    def check(
        self,
        peers: tuple[Peer, ...],
        verify_peer: Callable[[Peer], Ed25519PublicKey],
        *,
        secure: bool,
    ) -> _CheckedRoster:
        cacheable = type(peers) is tuple  # immutable, and so are its (frozen) Peers
        with self._lock:
            for slot in self._slots:
                if slot[0] is peers and slot[1] is verify_peer and (slot[2] or not secure):
                    return slot[3]
        checked = _check_roster(peers, verify_peer, secure=secure)
        if cacheable:
            with self._lock:
                self._slots = [(peers, verify_peer, secure, checked), *self._slots][: self._SLOTS]
        return checked


def _check_roster(
    peers: tuple[Peer, ...], verify_peer: Callable[[Peer], Ed25519PublicKey], *, secure: bool
) -> _CheckedRoster:
    """The roster-wide checks (see :class:`_VerifiedRosters`); raises InvalidMessage."""
    by_index = tuple(sorted(peers, key=lambda p: p.index))
    if [p.index for p in by_index] != list(range(len(peers))):
        raise InvalidMessage("roster must name participants 0..n-1 exactly once")
    names = [p.name for p in peers]
    if len(set(names)) != len(names):
        raise InvalidMessage("roster repeats a participant name (Sybil roster)")
    identities = [p.identity for p in peers]
    if len(set(identities)) != len(identities):
        raise InvalidMessage("roster repeats an identity under two names (Sybil roster)")
    if not secure:
        # The plain protocol signs and encrypts nothing: identities are only checked
        # for distinctness (above); the transport authenticated the coordinator.
        return _CheckedRoster(by_index, None)
    # Distinct, valid Ed25519 keys (two certificates of one key are refused with
    # PolicyViolation) and the digest every signature of the round binds.
    return _CheckedRoster(by_index, Roster({p.index: verify_peer(p) for p in by_index}))


VERIFIED_ROSTERS = _VerifiedRosters()


def secure_clip_range(settings: RoundSettings) -> float:
    """L2 bound of the vector that enters the fixed-point encoder.

    The clipped update has norm <= C; the appended clip bit is +-1/2, so with it the
    norm is <= sqrt(C^2 + 1/4). Engine and client derive the codec from this one rule.
    """
    assert settings.clip_norm is not None
    extra = 0.25 if settings.adaptive_clip_bit else 0.0
    return math.sqrt(settings.clip_norm**2 + extra)


def codec_for(settings: RoundSettings, *, dimension: int) -> FixedPointCodec:
    """The round's fixed-point codec, from the client-visible settings alone."""
    if settings.secagg is None or settings.scale is None:
        raise InvalidMessage("a secure round needs SecAgg parameters and a scale")
    std_int = settings.noise_std if settings.noise is ClientNoise.DISCRETE_GAUSSIAN else 0.0
    try:
        return FixedPointCodec.create(
            clip_norm=secure_clip_range(settings),
            num_clients=settings.secagg.num_clients,
            modulus_bits=settings.secagg.modulus_bits,
            dimension=dimension,
            scale=settings.scale,
            noise_stddev_int=std_int,
            wrap_probability=settings.wrap_probability if std_int else 1e-9,
        )
    except ConfigError as e:
        raise InvalidMessage(f"unusable fixed-point parameters: {e}") from None


@dataclass(frozen=True)
class UpdateInfo:
    """What a client knows about its own last update (diagnostics; never sent)."""

    round: int
    loss: float
    norm: float
    clipped: bool
    num_samples: int
    compute_s: float


@dataclass
class _Session:
    round: int
    session_id: bytes
    client: AggregationClient
    start: RoundStart
    stages: set[Stage] = field(default_factory=set)
    released: bool = False
    #: Under record-level DP: what the update cost, sent with the message carrying it.
    record_release: privacy.RecordLevelRelease | None = None


def raw_ed25519_peer(peer: Peer) -> Ed25519PublicKey:
    """Peer verification of an in-process simulation: ``identity`` is the raw public key."""
    if len(peer.identity) != 32:
        raise InvalidMessage(f"peer {peer.name!r} has no 32-byte Ed25519 identity")
    return Ed25519PublicKey.from_public_bytes(peer.identity)


class ClientPipeline:
    """One client's side of the rounds it is sampled for (see module docstring).

    ``verify_peer`` turns a roster entry into its verified Ed25519 identity key (raises
    on an invalid one). ``training_generator(round)`` gives the torch generator that
    picks this round's mini-batches and support/query split; ``randomness(round)`` the
    CSPRNG stream for everything security relevant (encoding, noise, keys, masks).
    ``require_noise`` refuses rounds that ask for no DP noise.
    """

    def __init__(
        self,
        *,
        name: str,
        algorithm: Algorithm,
        data: Batch,
        identity_key: Ed25519PrivateKey,
        verify_peer: Callable[[Peer], Ed25519PublicKey] = raw_ed25519_peer,
        training_generator: Callable[[int], torch.Generator] | None = None,
        randomness: Callable[[int], Csprng] | None = None,
        require_noise: bool = False,
        record_level: RecordLevelLedger | None = None,
        secagg_policy: ClientPolicy | None = None,
    ) -> None:
        if not isinstance(require_noise, bool):
            raise TypeError("require_noise must be a bool")
        if not isinstance(identity_key, Ed25519PrivateKey):
            raise TypeError("identity_key must be an Ed25519PrivateKey")
        self.name = name
        self.algorithm = algorithm
        self.data = data
        self._identity = identity_key
        self._verify_peer = verify_peer
        self._generator = training_generator or _fresh_generator
        self._randomness = randomness or (lambda _round: Csprng())
        self.require_noise = require_noise
        #: Record-level DP bookkeeping of this client (its patients' budget), or None.
        self.record_level = record_level
        #: What this client requires of every secure-aggregation round (its own policy);
        #: None: the parameters the round itself states (a simulated client's trust).
        self.secagg_policy = secagg_policy
        self.dim = int(algorithm.state_dim)
        self._session: _Session | None = None
        self.finished = False
        self.rounds_done: list[int] = []
        self.last_update: UpdateInfo | None = None

    # ------------------------------------------------------------------ dispatch

    def handle(self, message: EngineMessage) -> StageReply | None:
        """Answer one engine message (None: nothing to send)."""
        if isinstance(message, RoundStart):
            return self._start(message)
        if isinstance(message, StageRequest):
            return self._stage(message)
        if isinstance(message, Finished):
            self.finished = True
            self._session = None
        return None

    # ------------------------------------------------------------------ round start

    def _check_model(self, msg: RoundStart) -> torch.Tensor:
        m = msg.model
        if not isinstance(m, np.ndarray) or m.dtype != np.float32 or m.ndim != 1:
            raise InvalidMessage("model must be a 1-D float32 array")
        if m.shape[0] != self.dim:
            raise InvalidMessage(
                f"model is float32[{m.shape[0]}]; this client's algorithm needs float32[{self.dim}]"
            )
        digest, tensor = VERIFIED_MODELS.check(m)
        if not hmac.compare_digest(digest, msg.model_hash):
            raise InvalidMessage("model does not match its announced SHA-256 hash")
        return tensor

    def _check_roster(self, msg: RoundStart) -> Roster | None:
        """The verified roster of ``msg`` (None for the plain protocol)."""
        s = msg.settings
        checked = VERIFIED_ROSTERS.check(msg.peers, self._verify_peer, secure=s.protocol.secure)
        i = msg.client_index
        by_index = checked.by_index
        if not (isinstance(i, int) and 0 <= i < len(by_index)) or by_index[i].name != self.name:
            raise InvalidMessage("roster does not list this client at its index")
        roster = checked.roster
        if roster is None or not s.protocol.secure:
            return None  # the plain protocol verifies no keys (see _check_roster)
        mine = roster.raw(i)
        if not hmac.compare_digest(mine, self._identity.public_key().public_bytes_raw()):
            raise InvalidMessage("roster lists another identity key for this client")
        if s.secagg is not None and s.secagg.num_clients != len(by_index):
            raise InvalidMessage("SecAgg parameters are for another number of participants")
        return roster

    # The steps of a round start, in order. Subclasses replace a step to change what
    # a client is (an audit's canary client replaces ``local_update``; an audit's
    # positive control replaces ``clip`` or ``noise``), never the protocol around it.

    def training_generator(self, round_: int) -> torch.Generator:
        """The generator that picks this round's mini-batches and support/query split."""
        return self._generator(round_)

    def local_update(self, state: torch.Tensor, round_: int) -> ClientUpdate:
        """This client's update of the global ``state`` on its own data (computed on the
        device its data is on; the update comes back to the CPU to be encoded)."""
        return self.algorithm.client_update(
            state.to(self.data.x.device), self.data, self.training_generator(round_)
        )

    def clip(self, vector: np.ndarray, clip_norm: float) -> tuple[np.ndarray, bool]:
        """The update clipped to L2 norm ``clip_norm``, and whether it was clipped."""
        res = privacy.clip_update(vector, clip_norm=clip_norm)
        return res.vector, bool(res.clipped)

    def noise(self, settings: RoundSettings) -> tuple[ClientNoise, float]:
        """The noise this client adds (kind, std): what the round asks for."""
        return settings.noise, settings.noise_std

    # Two hooks for a client with its own policy and ledger (a deployed site): ``admit``
    # may refuse a verified round start before anything is computed; ``before_release``
    # runs right before the first message derived from this round's update leaves the
    # client (plain: the round start's reply; SecAgg: the masked input), and may refuse.

    def admit(self, msg: RoundStart) -> None:
        """Raise a typed error to refuse ``msg`` (model and roster already verified)."""
        return None

    def before_release(self, msg: RoundStart) -> None:
        """Raise to withhold this round's update; return once its release may happen."""
        return None

    def _start(self, msg: RoundStart) -> StageReply:
        self._session = None  # a new round always replaces an unfinished one
        try:
            return self._start_round(msg)
        except ConfigError as e:
            # Parameters chosen by the coordinator that this client's code cannot use
            # (codec, sampler, session): the round is refused, the client stays up.
            raise InvalidMessage(f"round {msg.round} refused: {e}") from None

    def _start_round(self, msg: RoundStart) -> StageReply:
        s = msg.settings
        if self.require_noise and s.noise is ClientNoise.NONE:
            raise InvalidMessage("coordinator asked for a round without DP noise; refused")
        state = self._check_model(msg)
        keys = self._check_roster(msg)
        self.admit(msg)
        rl = self.record_level
        if rl is not None and not rl.admit(
            self.algorithm, round=msg.round, site_id=self.name, data=self.data
        ):
            raise PrivacyBudgetExhausted(
                f"client {self.name} is at its record-level budget: it stops contributing"
            )
        t0 = time.perf_counter()
        upd = self.local_update(state, msg.round)
        if rl is not None and upd.receipt is not None:
            # Charged (durably, budget-checked) before anything derived from it leaves.
            rl.charge(upd.receipt, round=msg.round, site_id=self.name)
        vec = upd.vector.detach().cpu().numpy().astype(np.float32, copy=False)
        compute_s = time.perf_counter() - t0
        # The update's squared norm before clipping (float32 BLAS): the adaptive clipping
        # bit and the diagnostics use it (clipping itself measures the norm in float64).
        # A finite value also proves every entry finite (see ``all_finite``); only a
        # non-finite one needs the element-wise test.
        with np.errstate(over="ignore", invalid="ignore"):
            sq = float(np.dot(vec, vec))
        if not math.isfinite(sq) and not all_finite(vec):
            raise InvalidMessage(
                f"round {msg.round}: the local update is not finite (unusable global model)"
            )
        clipped = False
        norm = math.sqrt(max(0.0, sq))
        if s.clip_norm is not None:
            vec, clipped = self.clip(vec, s.clip_norm)
        extras: list[float] = []
        if s.adaptive_clip_bit:
            assert s.clip_norm is not None
            # The clipped/not-clipped bit travels inside the (noised, aggregated) update:
            # it is never sent in the clear.
            extras.append(privacy.adaptive_clip_bit(norm=norm, clip_norm=s.clip_norm))
        if s.weighted:
            vec = vec * np.float32(upd.num_samples)
            extras.append(float(upd.num_samples))
        if extras:
            vec = np.concatenate([vec, np.asarray(extras, dtype=np.float32)])
        noise, noise_std = self.noise(s)
        # The round's CSPRNG stream, only when something security relevant is drawn.
        rng = (
            self._randomness(msg.round)
            if (noise is not ClientNoise.NONE or s.protocol.secure)
            else None
        )
        if noise is ClientNoise.GAUSSIAN:
            assert rng is not None
            vec = privacy.add_noise(
                vec,
                std=noise_std,
                source=GaussianNoiseSource(rng=rng.child("noise")),
                last_coordinate_std=s.bit_noise_std,
            )
        # Under record-level DP the clear loss is not released (it is NaN).
        self.last_update = UpdateInfo(
            msg.round, float(upd.loss), norm, clipped, int(upd.num_samples), compute_s
        )
        client: AggregationClient
        if not s.protocol.secure:
            plain = PlainSumClient(
                client_id=msg.client_index, session_id=msg.session_id, round_index=msg.round
            )
            plain.set_input(vec)
            client = plain
        else:
            assert s.secagg is not None and rng is not None and keys is not None
            codec = codec_for(s, dimension=vec.shape[0])
            session = ClientSession(
                s.secagg,
                client_id=msg.client_index,
                identity_key=self._identity,
                identity_keys=keys,
                session_id=msg.session_id,
                round_index=msg.round,
                model_hash=msg.model_hash,
                noise_stddev_int=noise_std if noise is ClientNoise.DISCRETE_GAUSSIAN else 0.0,
                rng=rng.child("secagg"),
                policy=self.secagg_policy or s.secagg.policy(),
            )
            session.set_input(codec.encode(vec, rng.child("encode")))
            client = session
        first = client.start()
        current = _Session(msg.round, msg.session_id, client, msg, {msg.first_stage})
        if upd.receipt is not None:
            current.record_release = upd.receipt.event(round=msg.round, site_id=self.name)
        released = None
        if isinstance(first, MaskedInput | PlainInput):
            self.before_release(msg)
            current.released = True
            released = current.record_release
        self._session = current
        if not s.protocol.secure:
            # The plain protocol has one stage: this client's part of the round is done.
            self.rounds_done.append(msg.round)
            self._session = None
        log.debug("client %s round %d: update computed and sent", self.name, msg.round)
        return StageReply(
            round=msg.round,
            session_id=msg.session_id,
            stage=msg.first_stage,
            message=first,
            record_release=released,
        )

    # ------------------------------------------------------------------ later stages

    def _stage(self, msg: StageRequest) -> StageReply:
        s = self._session
        if (
            s is None
            or s.round != msg.round
            or not hmac.compare_digest(s.session_id, msg.session_id)
        ):
            raise StaleMessage(f"stage request for round {msg.round} of an unknown session")
        if msg.stage in s.stages:
            raise StaleMessage(f"{msg.stage.name} was already answered (replay)")
        try:
            reply = s.client.handle(msg.message)
        except ConfigError as e:
            raise InvalidMessage(f"{msg.stage.name} refused: {e}") from None
        released = None
        if isinstance(reply, MaskedInput | PlainInput) and not s.released:
            self.before_release(s.start)
            s.released = True
            released = s.record_release
        s.stages.add(msg.stage)
        if msg.stage is Stage.UNMASKING:
            self.rounds_done.append(msg.round)
            self._session = None
        return StageReply(
            round=msg.round,
            session_id=msg.session_id,
            stage=msg.stage,
            message=reply,
            record_release=released,
        )

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "rounds_done": list(self.rounds_done)}


def _fresh_generator(_round: int) -> torch.Generator:
    """Mini-batch randomness for one release, fresh from the CSPRNG (deployment default):
    a replayed round start never reproduces an earlier update bit for bit."""
    seed = int.from_bytes(Csprng().bytes(8), "little") & ((1 << 63) - 1)
    return torch.Generator().manual_seed(seed)


def name_seed(*parts: object) -> int:
    """A 63-bit seed from names and numbers (mini-batch choice only; not security relevant)."""
    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def seeded_generator(seed: int, name: str) -> Callable[[int], torch.Generator]:
    """Mini-batch randomness of client ``name`` in round r, a function of (seed, name, r).

    Simulation and deployment derive it the same way, so the two can be compared round
    for round; it picks data, never masks or noise.
    """

    def generator(round_: int) -> torch.Generator:
        return torch.Generator().manual_seed(name_seed("train", seed, round_, name))

    return generator


def seeded_randomness(insecure_seed: int, name: str) -> Callable[[int], Csprng]:
    """INSECURE TEST MODE: the security randomness of client ``name`` in round r from the
    seed (keys, masks, encoding, noise). Callers warn (the engine does, once)."""

    def randomness(round_: int) -> Csprng:
        return Csprng.insecure_from_seed(insecure_seed, f"client/{name}/{round_}")

    return randomness
