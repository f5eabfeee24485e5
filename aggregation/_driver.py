"""In-process driver: run every client and the server state machine for one round.

Every message is serialised with ``to_bytes`` and parsed with ``from_bytes`` on
each hop, exactly as the gRPC transport will do, so the byte counts reported
are real wire sizes (without transport framing).
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregation._client import ClientSession
from aggregation._config import SecAggConfig, Stage
from aggregation._encoding import FixedPointCodec, centered_lift
from aggregation._messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencyResponse,
    KeyBroadcast,
    MaskedInput,
    Message,
    ShareKeys,
    ShareRouting,
    UnmaskRequest,
    UnmaskResponse,
)
from aggregation._primitives import Csprng
from aggregation._server import ServerSession
from privacy.errors import ConfigError

__all__ = [
    "RunStats",
    "SecureSumResult",
    "per_client_noise_stddev",
    "run_protocol",
    "secure_sum",
    "secure_sum_int",
]

M = TypeVar("M", bound=Message)

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


def per_client_noise_stddev(total_stddev_int: float, *, min_survivors: int) -> float:
    """Per-client sigma so that any >= ``min_survivors`` survivors give total noise >= the target.

    Dropouts shrink distributed noise (the sum carries only the survivors'
    noise), so size each client's share for the minimum surviving set, e.g.
    the SecAgg threshold, and account with ``min_survivors * sigma^2``.
    """
    if min_survivors < 1 or total_stddev_int < 0:
        raise ConfigError("need min_survivors >= 1 and total_stddev_int >= 0")
    return total_stddev_int / math.sqrt(min_survivors)


def _hop(msg: M, cls: type[M], counter: dict[int, int], who: int) -> M:
    raw = msg.to_bytes()
    counter[who] = counter.get(who, 0) + len(raw)
    return cls.from_bytes(raw)


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
    tamper: Callable[[str, int, Message], Message] | None = None,
) -> tuple[np.ndarray, RunStats]:
    """Run one round over integer inputs; returns (sum mod 2^b, stats).

    ``model_hashes`` overrides the model hash per client (to simulate a server
    that sends different models), ``tamper(stage, client_id, msg)`` lets tests
    rewrite server->client messages. Both exist for adversarial tests.
    """
    n = config.num_clients
    if len(int_vectors) != n:
        raise ConfigError(f"config expects {n} clients, got {len(int_vectors)} vectors")
    dims = {int(np.asarray(v).shape[0]) for v in int_vectors}
    if len(dims) != 1:
        raise ConfigError("all vectors must have the same dimension")
    d = dims.pop()
    drops = dict(dropouts or {})
    if any(not 0 <= c < n for c in drops):
        raise ConfigError("dropouts name an unknown client")
    rngf = rng_factory or (lambda _label: Csprng())
    sid = session_id if session_id is not None else rngf("session").bytes(16)
    model_hash = server_model_hash or hashlib.sha256(b"model" + sid).digest()
    hashes = {i: model_hash for i in range(n)}
    hashes.update(model_hashes or {})
    id_keys = {
        i: Ed25519PrivateKey.from_private_bytes(rngf(f"identity-{i}").bytes(32)) for i in range(n)
    }
    pki = {i: k.public_key() for i, k in id_keys.items()}
    clients = {
        i: ClientSession(
            config,
            client_id=i,
            identity_key=id_keys[i],
            identity_keys=pki,
            session_id=sid,
            round_index=round_index,
            model_hash=hashes[i],
            noise_stddev_int=noise_stddev_int,
            rng=rngf(f"client-{i}"),
        )
        for i in range(n)
    }
    server = ServerSession(
        config,
        identity_keys=pki,
        session_id=sid,
        round_index=round_index,
        model_hash=model_hash,
        dimension=d,
    )
    sent: dict[int, int] = {}
    recv: dict[int, int] = {}
    csec: dict[int, float] = dict.fromkeys(range(n), 0.0)
    stage_sec: dict[str, float] = {}
    ssec = 0.0

    def live(i: int, stage: Stage) -> bool:
        s = drops.get(i)
        return s is None or stage.value < s.value

    def timed_client(i: int, stage: str, fn: Callable[[], M]) -> M:
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        csec[i] += dt
        stage_sec[stage] = stage_sec.get(stage, 0.0) + dt
        return out

    def deliver(stage: str, i: int, msg: M, cls: type[M]) -> M:
        if tamper is not None:
            msg = tamper(stage, i, msg)  # type: ignore[assignment]
        return _hop(msg, cls, recv, i)

    for i, v in enumerate(int_vectors):
        clients[i].set_input(np.asarray(v))

    # Stage 0: advertise keys.
    for i in range(n):
        if live(i, Stage.ADVERTISE_KEYS):
            ad = timed_client(i, "advertise", clients[i].advertise_keys)
            raw = _hop(ad, AdvertiseKeys, sent, i)
            t0 = time.perf_counter()
            server.receive_advertisement(raw)
            ssec += time.perf_counter() - t0
    t0 = time.perf_counter()
    broadcast = server.finish_advertising()
    ssec += time.perf_counter() - t0

    # Stage 1: share keys.
    for i in range(n):
        if live(i, Stage.SHARE_KEYS):
            b = deliver("broadcast", i, broadcast, KeyBroadcast)
            sk = timed_client(i, "share_keys", partial(clients[i].share_keys, b))
            parsed = _hop(sk, ShareKeys, sent, i)
            t0 = time.perf_counter()
            server.receive_shares(parsed)
            ssec += time.perf_counter() - t0
    t0 = time.perf_counter()
    routing = server.finish_sharing()
    ssec += time.perf_counter() - t0

    # Stage 2: masked input.
    for i in range(n):
        if live(i, Stage.MASKED_INPUT):
            r = deliver("routing", i, routing[i], ShareRouting)
            y = timed_client(i, "masked_input", partial(clients[i].masked_input, r))
            parsed_y = _hop(y, MaskedInput, sent, i)
            t0 = time.perf_counter()
            server.receive_masked_input(parsed_y)
            ssec += time.perf_counter() - t0
    t0 = time.perf_counter()
    creq = server.finish_masked_input()
    ssec += time.perf_counter() - t0

    # Stage 3: consistency check.
    for i in creq.survivors:
        if live(i, Stage.CONSISTENCY_CHECK):
            q = deliver("consistency", i, creq, ConsistencyRequest)
            sig = timed_client(i, "consistency", partial(clients[i].consistency_check, q))
            parsed_sig = _hop(sig, ConsistencyResponse, sent, i)
            t0 = time.perf_counter()
            server.receive_consistency(parsed_sig)
            ssec += time.perf_counter() - t0
    t0 = time.perf_counter()
    ureq = server.finish_consistency()
    ssec += time.perf_counter() - t0

    # Stage 4: unmasking.
    for i in sorted(dict(ureq.signatures)):
        if live(i, Stage.UNMASKING):
            q4 = deliver("unmask", i, ureq, UnmaskRequest)
            resp = timed_client(i, "unmask", partial(clients[i].unmask, q4))
            parsed_resp = _hop(resp, UnmaskResponse, sent, i)
            t0 = time.perf_counter()
            server.receive_unmask(parsed_resp)
            ssec += time.perf_counter() - t0
    t0 = time.perf_counter()
    total = server.finish_unmasking()
    ssec += time.perf_counter() - t0
    server.never_held_both_kinds()
    stats = RunStats(
        survivors=server.survivors,
        bytes_sent=sent,
        bytes_received=recv,
        client_seconds=csec,
        client_stage_seconds=stage_sec,
        server_seconds=ssec,
        server_unmask_seconds=server.unmask_seconds,
        server=server,
        clients=clients,
    )
    return total, stats


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
    )
    return _result(total, stats, config, codec)


def secure_sum_int(
    vectors: Sequence[np.ndarray],
    *,
    config: SecAggConfig,
    dropouts: Mapping[int, Stage] | None = None,
    noise_stddev_int: float = 0.0,
    insecure_deterministic_seed: int | None = None,
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
    )
    return _result(total, stats, config, None)
