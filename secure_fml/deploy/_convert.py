"""``*_to_proto`` / ``*_from_proto``: the only place that knows the protobuf layout.

A stream is one :class:`Header` frame followed by payload chunks. Readers check
the protocol version first, refuse a declared size above the caller's limit
before reading any chunk, bound every chunk, and verify the total length and
the SHA-256 of the payload; every failure is a typed error.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from aggregation import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencyResponse,
    DisputeRequest,
    DisputeResponse,
    MaskedInput,
    Message,
    NeighbourKeys,
    PlainInput,
    QuorumCertificate,
    QuorumChallenge,
    Review,
    ReviewResponse,
    SecAggConfig,
    ShareKeys,
    ShareRouting,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
    parse_message,
)
from privacy import RecordLevelRelease
from privacy.errors import ConfigError, InvalidMessage, RefusalReason, Refused
from secure_fml.messages import (
    MAX_WITHDRAWAL_REASON,
    PROTOCOL_VERSION,
    AggregationProtocol,
    ClientNoise,
    EngineMessage,
    Finished,
    Peer,
    RecordLevelRequest,
    RoundSettings,
    RoundStart,
    StageReply,
    StageRequest,
    Wait,
    Withdrawal,
)
from secure_fml.proto import secure_fml_v1_pb2 as pb

#: What the coordinator may send to a site in each stage, and what a site may answer.
TO_SITE: dict[Stage, tuple[type[Message], ...]] = {
    Stage.SHARE_KEYS: (NeighbourKeys,),
    Stage.MASKED_INPUT: (ShareRouting,),
    Stage.REVIEW: (Review,),
    Stage.DISPUTE: (DisputeRequest,),
    Stage.CONSISTENCY_CHECK: (ConsistencyRequest,),
    Stage.QUORUM_CHALLENGE: (QuorumCertificate,),
    Stage.UNMASKING: (UnmaskRequest,),
}
FROM_SITE: dict[Stage, tuple[type[Message], ...]] = {
    Stage.ADVERTISE_KEYS: (AdvertiseKeys,),
    Stage.SHARE_KEYS: (ShareKeys,),
    Stage.MASKED_INPUT: (MaskedInput, PlainInput),
    Stage.REVIEW: (ReviewResponse,),
    Stage.DISPUTE: (DisputeResponse,),
    Stage.CONSISTENCY_CHECK: (ConsistencyResponse,),
    Stage.QUORUM_CHALLENGE: (QuorumChallenge,),
    Stage.UNMASKING: (UnmaskResponse,),
}

__all__ = [
    "FROM_SITE",
    "MAX_CHUNK_BYTES",
    "MAX_FRAME_BYTES",
    "TO_SITE",
    "check_version",
    "declared_tensor",
    "read_stream",
    "server_message_from_proto",
    "server_message_to_proto",
    "site_message_from_proto",
    "stage_reply_to_proto",
    "withdrawal_to_proto",
    "write_stream",
]

#: Payload bytes per chunk frame; frames stay far below gRPC's 4 MB default.
MAX_CHUNK_BYTES = 1 << 20
#: Largest single protobuf frame either side accepts (chunk + header headroom).
MAX_FRAME_BYTES = MAX_CHUNK_BYTES + (64 << 10)
_SESSION_ID_BYTES = 16
_MAX_PEERS = 100_000


def check_version(version: int) -> None:
    if version != PROTOCOL_VERSION:
        raise Refused(
            RefusalReason.VERSION,
            f"protocol version {version} is not supported; this side speaks {PROTOCOL_VERSION}",
        )


def write_stream(header: pb.Header, payload: bytes) -> Iterator[pb.Frame]:
    header.protocol_version = PROTOCOL_VERSION
    header.payload_bytes = len(payload)
    header.payload_sha256 = hashlib.sha256(payload).digest()
    yield pb.Frame(header=header)
    mv = memoryview(payload)
    for off in range(0, len(payload), MAX_CHUNK_BYTES):
        yield pb.Frame(chunk=bytes(mv[off : off + MAX_CHUNK_BYTES]))


def read_stream(
    frames: Iterable[pb.Frame], *, max_payload: Callable[[pb.Header], int]
) -> tuple[pb.Header, bytes]:
    """Header plus the reassembled payload; ``max_payload(header)`` bounds the size."""
    it = iter(frames)
    first = next(it, None)
    if first is None or first.WhichOneof("body") != "header":
        raise InvalidMessage("stream must start with a header frame")
    header = first.header
    check_version(header.protocol_version)
    limit = max_payload(header)
    size = int(header.payload_bytes)
    if size > limit:
        raise Refused(
            RefusalReason.OVERSIZE, f"payload of {size} bytes exceeds the limit of {limit}"
        )
    # Grown as chunks arrive (never allocated from the declared size up front), and
    # refused at the first chunk beyond the declared size.
    buf = bytearray()
    digest = hashlib.sha256()
    for frame in it:
        if frame.WhichOneof("body") != "chunk":
            raise InvalidMessage("only chunk frames may follow the header")
        chunk = frame.chunk
        if len(chunk) > MAX_CHUNK_BYTES or len(buf) + len(chunk) > size:
            raise Refused(RefusalReason.OVERSIZE, "chunks exceed the declared payload size")
        digest.update(chunk)
        buf += chunk
    if len(buf) != size:
        raise InvalidMessage(f"payload truncated: {len(buf)} of {size} bytes")
    if not hmac.compare_digest(digest.digest(), header.payload_sha256):
        raise InvalidMessage("payload does not match its SHA-256")
    return header, bytes(buf)


def _stage(value: int) -> Stage:
    try:
        return Stage(int(value))
    except ValueError:
        raise InvalidMessage(f"unknown SecAgg stage {value}") from None


def _session(raw: bytes) -> bytes:
    if len(raw) != _SESSION_ID_BYTES:
        raise InvalidMessage("session_id must be 16 bytes")
    return bytes(raw)


# ---------------------------------------------------------------- server -> site


def _settings_to_proto(rs: pb.RoundStart, st: RoundSettings) -> None:
    rs.protocol = st.protocol.value
    if st.secagg is not None:
        c = st.secagg
        rs.modulus_bits = c.modulus_bits
        rs.threshold = c.t
        rs.degree = c.k
        rs.num_clients = c.num_clients
        rs.max_dropout_fraction = c.max_dropout_fraction
        rs.max_corrupt_fraction = c.max_corrupt_fraction
        rs.min_survivor_fraction = c.min_survivor_fraction
        rs.min_survivors_policy = c.min_survivors
        rs.max_attempts_log2 = c.max_attempts_log2
        rs.security_bits = c.security_bits
        rs.correctness_bits = c.correctness_bits
    if st.clip_norm is not None:
        rs.clip_norm = st.clip_norm
    if st.scale is not None:
        rs.scale = st.scale
    rs.noise = st.noise.value
    rs.noise_std = st.noise_std
    if st.bit_noise_std is not None:
        rs.bit_noise_std = st.bit_noise_std
    rs.adaptive_clip_bit = st.adaptive_clip_bit
    rs.weighted = st.weighted
    rs.min_survivors = st.min_survivors
    rs.assumed_colluding = st.assumed_colluding
    rs.wrap_probability = st.wrap_probability
    r = st.record_level
    if r is not None:
        rl = rs.record_level
        rl.algorithm = r.algorithm
        rl.unit = r.unit
        if r.noise_multiplier is not None:
            rl.noise_multiplier = r.noise_multiplier
        if r.target_epsilon is not None:
            rl.target_epsilon = r.target_epsilon
        rl.rounds = r.rounds or 0
        rl.delta = r.delta


def _record_level_from_proto(rs: pb.RoundStart) -> RecordLevelRequest | None:
    if not rs.HasField("record_level"):
        return None
    rl = rs.record_level
    return RecordLevelRequest(
        algorithm=str(rl.algorithm),
        unit=str(rl.unit),
        noise_multiplier=float(rl.noise_multiplier) if rl.HasField("noise_multiplier") else None,
        target_epsilon=float(rl.target_epsilon) if rl.HasField("target_epsilon") else None,
        rounds=int(rl.rounds) or None,
        delta=float(rl.delta),
    )


def _settings_from_proto(rs: pb.RoundStart, n_peers: int) -> RoundSettings:
    try:
        protocol = AggregationProtocol(rs.protocol)
        noise = ClientNoise(rs.noise)
    except ValueError as e:
        raise InvalidMessage(f"unknown protocol or noise kind: {e}") from None
    secagg = None
    if protocol.secure:
        try:
            secagg = SecAggConfig(
                num_clients=int(rs.num_clients),
                mode=protocol.mode,
                modulus_bits=int(rs.modulus_bits),
                threshold=int(rs.threshold),
                degree=int(rs.degree),
                max_dropout_fraction=float(rs.max_dropout_fraction),
                max_corrupt_fraction=float(rs.max_corrupt_fraction),
                min_survivor_fraction=float(rs.min_survivor_fraction),
                min_survivors=int(rs.min_survivors_policy),
                max_attempts_log2=int(rs.max_attempts_log2),
                security_bits=int(rs.security_bits),
                correctness_bits=int(rs.correctness_bits),
            )
        except (ConfigError, ValueError, TypeError) as e:
            raise InvalidMessage(f"unsafe or malformed SecAgg parameters: {e}") from None
        if secagg.num_clients != n_peers:
            raise InvalidMessage("SecAgg parameters are for another number of participants")
    return RoundSettings(
        protocol=protocol,
        clip_norm=float(rs.clip_norm) if rs.HasField("clip_norm") else None,
        noise=noise,
        noise_std=float(rs.noise_std),
        bit_noise_std=float(rs.bit_noise_std) if rs.HasField("bit_noise_std") else None,
        adaptive_clip_bit=bool(rs.adaptive_clip_bit),
        weighted=bool(rs.weighted),
        min_survivors=int(rs.min_survivors),
        assumed_colluding=int(rs.assumed_colluding),
        secagg=secagg,
        scale=float(rs.scale) if rs.HasField("scale") else None,
        wrap_probability=float(rs.wrap_probability),
        record_level=_record_level_from_proto(rs),
    )


def server_message_to_proto(msg: EngineMessage) -> Iterator[pb.Frame]:
    h = pb.Header()
    payload = b""
    if isinstance(msg, Wait):
        h.kind = pb.WAIT
        h.retry_after_ms = msg.retry_after_ms
    elif isinstance(msg, Finished):
        h.kind = pb.FINISHED
        h.round = msg.round
    elif isinstance(msg, StageRequest):
        h.kind = pb.SECAGG
        h.round = msg.round
        h.session_id = msg.session_id
        h.stage = msg.stage.value
        payload = msg.message.to_bytes()
    else:
        h.kind = pb.ROUND_START
        h.round = msg.round
        h.session_id = msg.session_id
        h.tensor.dtype = "float32"
        h.tensor.shape.append(int(msg.model.shape[0]))
        rs = h.round_start
        rs.site_index = msg.client_index
        for p in msg.peers:
            rs.peers.add(index=p.index, name=p.name, certificate=p.identity)
        rs.model_sha256 = msg.model_hash
        _settings_to_proto(rs, msg.settings)
        payload = np.ascontiguousarray(msg.model, dtype="<f4").tobytes()
    return write_stream(h, payload)


def server_message_from_proto(frames: Iterable[pb.Frame], *, max_model_bytes: int) -> EngineMessage:
    header, payload = read_stream(frames, max_payload=lambda _h: max_model_bytes)
    kind = header.kind
    if kind == pb.WAIT:
        return Wait(min(int(header.retry_after_ms), 60_000))
    if kind == pb.FINISHED:
        return Finished(int(header.round))
    if kind == pb.SECAGG:
        stage = _stage(header.stage)
        allowed = TO_SITE.get(stage)
        if allowed is None:
            raise InvalidMessage(f"sites do not accept {stage.name} requests")
        return StageRequest(
            round=int(header.round),
            session_id=_session(header.session_id),
            stage=stage,
            message=parse_message(payload, allowed=allowed),
        )
    if kind != pb.ROUND_START:
        raise InvalidMessage(f"unexpected frame kind {kind}")
    t = header.tensor
    if t.dtype != "float32" or len(t.shape) != 1 or t.shape[0] * 4 != len(payload):
        raise InvalidMessage(
            f"model must be float32[d] with 4d payload bytes, got {t.dtype}{list(t.shape)} "
            f"and {len(payload)} bytes"
        )
    rs = header.round_start
    if len(rs.peers) > _MAX_PEERS or len(rs.model_sha256) != 32:
        raise InvalidMessage("round start has too many peers or a malformed model hash")
    peers = tuple(Peer(int(p.index), str(p.name), bytes(p.certificate)) for p in rs.peers)
    if sorted(p.index for p in peers) != list(range(len(peers))):
        raise InvalidMessage("peer list must name clients 0..n-1 exactly once")
    return RoundStart(
        round=int(header.round),
        session_id=_session(header.session_id),
        client_index=int(rs.site_index),
        peers=peers,
        model=np.frombuffer(payload, dtype="<f4").astype(np.float32),
        model_hash=bytes(rs.model_sha256),
        settings=_settings_from_proto(rs, len(peers)),
    )


# ---------------------------------------------------------------- site -> server


def declared_tensor(message: Message) -> tuple[str, int] | None:
    """The (dtype, length) a reply declares in its header before its payload."""
    if isinstance(message, MaskedInput):
        return f"uint{message.bits}", int(message.vector.shape[0])
    if isinstance(message, PlainInput):
        return "float32", int(message.vector.shape[0])
    return None


def stage_reply_to_proto(reply: StageReply, *, connection_id: bytes) -> Iterator[pb.Frame]:
    h = pb.Header(
        kind=pb.SECAGG,
        round=reply.round,
        session_id=reply.session_id,
        stage=reply.stage.value,
        connection_id=connection_id,
    )
    tensor = declared_tensor(reply.message)
    if tensor is not None:
        h.tensor.dtype = tensor[0]
        h.tensor.shape.append(tensor[1])
    ev = reply.record_release
    if ev is not None:
        rr = h.record_release
        rr.site = ev.site_id
        rr.unit = ev.unit
        rr.noise_multiplier = ev.noise_multiplier
        rr.clip_norm = ev.clip_norm
        rr.sample_rates.extend(ev.sample_rates)
        rr.steps.extend(ev.steps)
    return write_stream(h, reply.message.to_bytes())


def _record_release_from_proto(h: pb.Header) -> RecordLevelRelease | None:
    if not h.HasField("record_release"):
        return None
    rr = h.record_release
    if len(rr.steps) > 64:
        raise InvalidMessage("record-level release lists too many step groups")
    try:
        return RecordLevelRelease(
            round=int(h.round),
            site_id=str(rr.site),
            unit=str(rr.unit),
            noise_multiplier=float(rr.noise_multiplier),
            clip_norm=float(rr.clip_norm),
            sample_rates=tuple(float(q) for q in rr.sample_rates),
            steps=tuple(int(k) for k in rr.steps),
        )
    except (ConfigError, TypeError, ValueError) as e:
        raise InvalidMessage(f"malformed record-level release: {e}") from None


def withdrawal_to_proto(notice: Withdrawal, *, connection_id: bytes) -> Iterator[pb.Frame]:
    h = pb.Header(
        kind=pb.WITHDRAW,
        round=notice.round,
        session_id=notice.session_id,
        stage=notice.stage.value,
        connection_id=connection_id,
        reason=notice.reason,
    )
    return write_stream(h, b"")


def site_message_from_proto(
    frames: Iterable[pb.Frame],
    *,
    max_payload: Callable[[Stage], int],
    expected_tensor: Callable[[Stage], tuple[str, int] | None],
) -> tuple[bytes, StageReply | Withdrawal]:
    """(connection id, reply or withdrawal); a reply's declared shape and dtype are
    checked before parsing, and a withdrawal carries no payload."""

    def limit(h: pb.Header) -> int:
        return 0 if h.kind == pb.WITHDRAW else max_payload(_stage(h.stage))

    header, payload = read_stream(frames, max_payload=limit)
    if header.kind == pb.WITHDRAW:
        stage = _stage(header.stage)
        if stage not in FROM_SITE:
            raise InvalidMessage(f"sites do not answer {stage.name}, so cannot withdraw in it")
        if len(header.reason) > MAX_WITHDRAWAL_REASON:
            raise InvalidMessage(
                f"withdrawal reason of {len(header.reason)} characters (at most "
                f"{MAX_WITHDRAWAL_REASON})"
            )
        return bytes(header.connection_id), Withdrawal(
            round=int(header.round),
            session_id=_session(header.session_id),
            stage=stage,
            reason=str(header.reason),
        )
    if header.kind != pb.SECAGG:
        raise InvalidMessage(
            f"sites may only submit SECAGG or WITHDRAW frames, got kind {header.kind}"
        )
    stage = _stage(header.stage)
    want = expected_tensor(stage)
    if want is not None:
        got = (header.tensor.dtype, list(header.tensor.shape))
        if got != (want[0], [want[1]]):
            raise InvalidMessage(
                f"{stage.name} must carry {want[0]}[{want[1]}], got {got[0]}{got[1]}"
            )
    allowed = FROM_SITE.get(stage)
    if allowed is None:
        raise InvalidMessage(f"sites do not send {stage.name} replies")
    return bytes(header.connection_id), StageReply(
        round=int(header.round),
        session_id=_session(header.session_id),
        stage=stage,
        message=parse_message(payload, allowed=allowed),
        record_release=_record_release_from_proto(header),
    )
