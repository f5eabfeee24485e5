"""In-process driver: run every client and the server state machine for one round.

Every message is serialised with ``to_bytes`` and parsed with ``from_bytes`` on
each hop, exactly as the gRPC transport will do, so the byte counts reported
are real wire sizes (without transport framing).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregation._client import ClientSession
from aggregation._config import SecAggConfig, Stage
from aggregation._encoding import FixedPointCodec, centered_lift
from aggregation._evidence import Evidence
from aggregation._messages import Message
from aggregation._policy import ClientPolicy
from aggregation._primitives import Csprng
from aggregation._roster import Roster
from aggregation._server import ServerSession
from aggregation._session import Outbox
from privacy.errors import ConfigError, ProtocolError

__all__ = [
    "InMemoryNetwork",
    "RunStats",
    "SecureSumResult",
    "per_client_noise_stddev",
    "run_protocol",
    "secure_sum",
    "secure_sum_int",
]

_log = logging.getLogger(__name__)

_INSECURE_WARNING = (
    "insecure_deterministic_seed is set: identity keys, masks, Shamir shares and DP noise "
    "are derived from this seed, so anyone who knows it can unmask every client's input and "
    "remove the noise. Use only in tests; never in production."
)


@dataclass
class RunStats:
    """What :func:`run_protocol` measured, plus the sessions for inspection in tests."""

    survivors: tuple[int, ...]
    bytes_sent: dict[int, int]
    bytes_received: dict[int, int]
    client_seconds: dict[int, float]
    client_stage_seconds: dict[str, float]
    server_seconds: float
    server_unmask_seconds: float
    server: ServerSession
    clients: dict[int, ClientSession]
    #: Replies the server refused: (sender, stage, error). The sender then counts as silent.
    refusals: list[tuple[int, Stage, ProtocolError]] = field(default_factory=list)
    #: Clients that refused a server message (and left the round), with their error.
    client_errors: dict[int, ProtocolError] = field(default_factory=dict)
    #: Client -> stage -> seconds it spent there.
    client_stage_breakdown: dict[int, dict[str, float]] = field(default_factory=dict)
    #: Stage -> seconds the server spent ingesting that stage's replies and closing it.
    server_stage_seconds: dict[str, float] = field(default_factory=dict)
    #: CPU seconds (process time) per client and for the server: robust to other jobs
    #: sharing the machine, unlike the wall-clock figures above.
    client_cpu_seconds: dict[int, float] = field(default_factory=dict)
    server_cpu_seconds: float = 0.0
    excluded: tuple[int, ...] = ()
    evidence: tuple[Evidence, ...] = ()


@dataclass(frozen=True)
class SecureSumResult:
    """Outcome of one secure-aggregation round."""

    #: Decoded float sum over ``survivors`` (for the integer variant: the integer sum as float).
    sum: np.ndarray
    #: Exact integer sum (centered lift of the sum mod 2^b), int64.
    integer_sum: np.ndarray
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    bytes_sent: Mapping[int, int]
    bytes_received: Mapping[int, int]
    client_seconds: Mapping[int, float]
    #: Stage -> seconds spent by the client in that stage, summed over clients.
    client_stage_seconds: Mapping[str, float]
    server_seconds: float
    server_unmask_seconds: float
    codec: FixedPointCodec | None
    config: SecAggConfig
    #: Clients the server removed for an attributed offence, and the evidence.
    excluded: tuple[int, ...] = ()
    evidence: tuple[Evidence, ...] = ()


def per_client_noise_stddev(total_stddev_int: float, *, min_survivors: int) -> float:
    """Per-client sigma so that any >= ``min_survivors`` survivors give total noise >= the target.

    Dropouts shrink distributed noise (the sum carries only the survivors'
    noise), so size each client's share for the minimum surviving set, e.g.
    the SecAgg threshold, and account with ``min_survivors * sigma^2``.
    """
    if min_survivors < 1 or total_stddev_int < 0:
        raise ConfigError("need min_survivors >= 1 and total_stddev_int >= 0")
    return total_stddev_int / math.sqrt(min_survivors)


class InMemoryNetwork:
    """The in-process network of :func:`run_protocol`: serialises every message with
    ``to_bytes`` and parses it with ``from_bytes`` on each hop (so byte counts are real
    wire sizes, without transport framing), and makes a client silent from the stage
    ``dropouts`` names for it. Adversarial tests subclass it and override
    :meth:`to_client` / :meth:`to_server` to forge, withhold or rewrite messages:
    faults are injected through the network, not through the protocol's API.
    """

    def __init__(self, dropouts: Mapping[int, Stage] | None = None) -> None:
        self.dropouts = dict(dropouts or {})
        self.bytes_sent: dict[int, int] = {}
        self.bytes_received: dict[int, int] = {}

    def live(self, client: int, stage: Stage) -> bool:
        drop = self.dropouts.get(client)
        return drop is None or stage.value < drop.value

    def _hop(self, msg: Message, counter: dict[int, int], who: int) -> Message:
        raw = msg.to_bytes()
        counter[who] = counter.get(who, 0) + len(raw)
        return type(msg).from_bytes(raw)

    def to_client(self, stage: Stage, recipient: int, msg: Message) -> Message | None:
        """Deliver a server message opening ``stage``; None: the recipient never gets it."""
        if not self.live(recipient, stage):
            return None
        return self._hop(msg, self.bytes_received, recipient)

    def to_server(self, stage: Stage, sender: int, msg: Message) -> Message | None:
        """Deliver a client reply of ``stage``; None: it never arrives."""
        return self._hop(msg, self.bytes_sent, sender)


def run_protocol(
    int_vectors: Sequence[np.ndarray],
    *,
    config: SecAggConfig,
    dropouts: Mapping[int, Stage] | None = None,
    noise_stddev_int: float = 0.0,
    model_hashes: Mapping[int, bytes] | None = None,
    server_model_hash: bytes | None = None,
    rng_factory: Callable[[str], Csprng] | None = None,
    session_id: bytes | None = None,
    round_index: int = 0,
    network: InMemoryNetwork | None = None,
    min_inputs: int | None = None,
    policy: ClientPolicy | None = None,
) -> tuple[np.ndarray, RunStats]:
    """Run one round over integer inputs; returns (sum mod 2^b, stats).

    ``model_hashes`` is the hash of the model each client received (default: the
    server's), e.g. to model a server that sends different models. ``network``
    carries every message (default: an honest :class:`InMemoryNetwork` with
    ``dropouts``). ``policy`` is every client's own policy (default: the one
    ``config`` describes, i.e. a simulation whose clients hold the coordinator's
    settings). The loop below knows nothing of the stage order: the server session
    returns what to send next (see :mod:`aggregation._session`). As in a deployment,
    a reply the server refuses makes its sender silent, and a client that refuses
    a server message leaves the round (both are recorded in the stats); only the
    server aborting the round raises.
    """
    n = config.num_clients
    if len(int_vectors) != n:
        raise ConfigError(f"config expects {n} clients, got {len(int_vectors)} vectors")
    dims = {int(np.asarray(v).shape[0]) for v in int_vectors}
    if len(dims) != 1:
        raise ConfigError("all vectors must have the same dimension")
    d = dims.pop()
    if network is None:
        network = InMemoryNetwork(dropouts)
    elif dropouts:
        raise ConfigError("give dropouts to the network, not to run_protocol, when passing one")
    if any(not 0 <= c < n for c in network.dropouts):
        raise ConfigError("dropouts name an unknown client")
    rngf = rng_factory or (lambda _label: Csprng())
    sid = session_id if session_id is not None else rngf("session").bytes(16)
    model_hash = server_model_hash or hashlib.sha256(b"model" + sid).digest()
    hashes = {i: model_hash for i in range(n)}
    hashes.update(model_hashes or {})
    id_keys = {
        i: Ed25519PrivateKey.from_private_bytes(rngf(f"identity-{i}").bytes(32)) for i in range(n)
    }
    roster = Roster({i: k.public_key() for i, k in id_keys.items()})
    client_policy = policy if policy is not None else config.policy()
    clients = {
        i: ClientSession(
            config,
            client_id=i,
            identity_key=id_keys[i],
            identity_keys=roster,
            session_id=sid,
            round_index=round_index,
            model_hash=hashes[i],
            noise_stddev_int=noise_stddev_int,
            rng=rngf(f"client-{i}"),
            policy=client_policy,
        )
        for i in range(n)
    }
    server = ServerSession(
        config,
        identity_keys=roster,
        session_id=sid,
        round_index=round_index,
        model_hash=model_hash,
        dimension=d,
        min_inputs=min_inputs,
    )
    csec: dict[int, float] = dict.fromkeys(range(n), 0.0)
    stage_sec: dict[str, float] = {}
    breakdown: dict[int, dict[str, float]] = {i: {} for i in range(n)}
    refusals: list[tuple[int, Stage, ProtocolError]] = []
    client_errors: dict[int, ProtocolError] = {}
    server_stage: dict[str, float] = {}
    ccpu: dict[int, float] = dict.fromkeys(range(n), 0.0)
    ssec = 0.0
    scpu = 0.0

    def charge(stage: Stage, dt: float, cpu: float) -> None:
        nonlocal ssec, scpu
        ssec += dt
        scpu += cpu
        server_stage[stage.name.lower()] = server_stage.get(stage.name.lower(), 0.0) + dt

    def client_step(i: int, stage: Stage, fn: Callable[[], Message]) -> None:
        if i in client_errors:
            return  # a client that refused once has left the round
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            reply = fn()
        except ProtocolError as exc:
            client_errors[i] = exc
            _log.info("client %d leaves the round at %s: %s", i, stage.name, exc)
            return
        finally:
            dt = time.perf_counter() - t0
            ccpu[i] += time.process_time() - c0
            csec[i] += dt
            name = stage.name.lower()
            stage_sec[name] = stage_sec.get(name, 0.0) + dt
            breakdown[i][name] = breakdown[i].get(name, 0.0) + dt
        delivered = network.to_server(stage, i, reply)
        if delivered is not None:
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                server.receive(delivered)
            except ProtocolError as exc:
                refusals.append((i, stage, exc))
            charge(stage, time.perf_counter() - t0, time.process_time() - c0)

    for i, v in enumerate(int_vectors):
        clients[i].set_input(np.asarray(v))
    for i in range(n):
        if network.live(i, Stage.ADVERTISE_KEYS):
            client_step(i, Stage.ADVERTISE_KEYS, clients[i].start)
    t0, c0 = time.perf_counter(), time.process_time()
    out = server.close_stage()
    charge(Stage.ADVERTISE_KEYS, time.perf_counter() - t0, time.process_time() - c0)
    while isinstance(out, Outbox):
        stage = out.stage
        for i in sorted(out.messages):
            msg = network.to_client(stage, i, out.messages[i])
            if msg is not None and network.live(i, stage):
                client_step(i, stage, partial(clients[i].handle, msg))
        t0, c0 = time.perf_counter(), time.process_time()
        out = server.close_stage()
        charge(stage, time.perf_counter() - t0, time.process_time() - c0)
    stats = RunStats(
        survivors=out.contributors,
        bytes_sent=network.bytes_sent,
        bytes_received=network.bytes_received,
        client_seconds=csec,
        client_stage_seconds=stage_sec,
        server_seconds=ssec,
        server_unmask_seconds=server.unmask_seconds,
        server=server,
        clients=clients,
        refusals=refusals,
        client_errors=client_errors,
        client_stage_breakdown=breakdown,
        server_stage_seconds=server_stage,
        client_cpu_seconds=ccpu,
        server_cpu_seconds=scpu,
        excluded=out.excluded,
        evidence=tuple(out.evidence),
    )
    return out.total, stats


def _rng_factory(insecure_seed: int | None) -> Callable[[str], Csprng]:
    if insecure_seed is None:
        return lambda _label: Csprng()
    seed = int(insecure_seed)
    return lambda label: Csprng.insecure_from_seed(seed, label)


def _result(
    total: np.ndarray,
    stats: RunStats,
    config: SecAggConfig,
    codec: FixedPointCodec | None,
) -> SecureSumResult:
    ints = centered_lift(total, config.modulus_bits)
    decoded = codec.decode_integers(ints) if codec is not None else ints.astype(np.float64)
    survivors = stats.survivors
    return SecureSumResult(
        sum=decoded,
        integer_sum=ints,
        survivors=survivors,
        dropped=tuple(i for i in range(config.num_clients) if i not in set(survivors)),
        bytes_sent=stats.bytes_sent,
        bytes_received=stats.bytes_received,
        client_seconds=stats.client_seconds,
        client_stage_seconds=stats.client_stage_seconds,
        server_seconds=stats.server_seconds,
        server_unmask_seconds=stats.server_unmask_seconds,
        codec=codec,
        config=config,
        excluded=stats.excluded,
        evidence=stats.evidence,
    )


def secure_sum(
    vectors: Sequence[np.ndarray],
    *,
    config: SecAggConfig,
    clip_norm: float,
    dropouts: Mapping[int, Stage] | None = None,
    noise_stddev_int: float = 0.0,
    scale: float | None = None,
    rotate: bool = False,
    wrap_probability: float = 1e-9,
    insecure_deterministic_seed: int | None = None,
    policy: ClientPolicy | None = None,
    min_inputs: int | None = None,
) -> SecureSumResult:
    """Securely sum float vectors of the clients ``0..n-1`` in one in-process round.

    Each vector is clipped to ``clip_norm`` (idempotent after DP clipping),
    encoded to fixed point with unbiased stochastic rounding (``scale`` derived
    from ``config.modulus_bits`` when None), optionally noised with exact
    discrete Gaussian noise of ``noise_stddev_int`` integer units per client,
    masked, aggregated and decoded. The result is the sum over the survivors
    (clients that delivered a masked input); ``dropouts[i] = stage`` makes
    client i go silent from that stage on. Raises
    :class:`~privacy.errors.DropoutThresholdNotMet` when too few remain.

    In integer units one float unit is ``result.codec.scale``: a float noise
    stddev sigma_f per client is ``noise_stddev_int = sigma_f * scale``. Pass a
    fixed ``scale`` if the caller sizes noise in float units before the round.
    ``policy`` is every client's own :class:`~aggregation.ClientPolicy` (default:
    the one ``config`` describes); ``min_inputs`` aborts a round with fewer masked
    inputs before anything is unmasked (size it like the noise).
    """
    if insecure_deterministic_seed is not None:
        warnings.warn(_INSECURE_WARNING, stacklevel=2)
    if len(vectors) != config.num_clients:
        raise ConfigError(f"config expects {config.num_clients} vectors, got {len(vectors)}")
    d = int(np.asarray(vectors[0]).reshape(-1).shape[0])
    rngf = _rng_factory(insecure_deterministic_seed)
    session_id = rngf("session").bytes(16)
    codec = FixedPointCodec.create(
        clip_norm=clip_norm,
        num_clients=config.num_clients,
        modulus_bits=config.modulus_bits,
        dimension=d,
        scale=scale,
        noise_stddev_int=noise_stddev_int,
        wrap_probability=wrap_probability,
        rotation_seed=session_id if rotate else None,
    )
    ints = [codec.encode(np.asarray(v), rngf(f"encode-{i}")) for i, v in enumerate(vectors)]
    total, stats = run_protocol(
        ints,
        config=config,
        dropouts=dropouts,
        noise_stddev_int=noise_stddev_int,
        rng_factory=rngf,
        session_id=session_id,
        policy=policy,
        min_inputs=min_inputs,
    )
    return _result(total, stats, config, codec)


def secure_sum_int(
    vectors: Sequence[np.ndarray],
    *,
    config: SecAggConfig,
    dropouts: Mapping[int, Stage] | None = None,
    noise_stddev_int: float = 0.0,
    insecure_deterministic_seed: int | None = None,
    policy: ClientPolicy | None = None,
    min_inputs: int | None = None,
) -> SecureSumResult:
    """Integer-domain variant: the exact sum mod 2^b of integer vectors, centered-lifted.

    The caller is responsible for the range: the sum over survivors (plus
    noise) must stay in [-2^(b-1), 2^(b-1)) for ``integer_sum`` to be the true sum.
    """
    if insecure_deterministic_seed is not None:
        warnings.warn(_INSECURE_WARNING, stacklevel=2)
    rngf = _rng_factory(insecure_deterministic_seed)
    total, stats = run_protocol(
        [np.asarray(v) for v in vectors],
        config=config,
        dropouts=dropouts,
        noise_stddev_int=noise_stddev_int,
        rng_factory=rngf,
        policy=policy,
        min_inputs=min_inputs,
    )
    return _result(total, stats, config, None)
