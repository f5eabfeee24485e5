"""Wire messages of the SecAgg protocol, with explicit, strict binary encodings.

Every message starts with the same header::

    version u8 | type u8 | session_id 16 bytes | round_index u64

followed by a fixed layout per type (integers big-endian, counts as u32,
masked vectors as little-endian words of ceil(b/8) bytes). Parsing checks the
version, the type, every length and count against the bytes actually present,
and rejects trailing bytes; nothing is ever unpickled. These encodings are what
the gRPC layer carries as opaque ``bytes`` fields.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import numpy as np

from aggregation._primitives import KEY_BYTES, SHARE_BYTES, SIGNATURE_BYTES, mask_dtype
from privacy.errors import InvalidMessage

__all__ = [
    "AEAD_CIPHERTEXT_BYTES",
    "PROTOCOL_VERSION",
    "SESSION_ID_BYTES",
    "AdvertiseKeys",
    "ConsistencyRequest",
    "ConsistencyResponse",
    "EncryptedShare",
    "KeyBroadcast",
    "MaskedInput",
    "Message",
    "PlainInput",
    "ShareKeys",
    "ShareRouting",
    "UnmaskRequest",
    "UnmaskResponse",
    "UnmaskedShare",
    "all_finite",
    "parse_message",
]

#: The one version of the wire protocol: these messages and the deployment's engine
#: messages that carry them (``secure_fml.messages``). Version 2: the round engine.
PROTOCOL_VERSION = 2
SESSION_ID_BYTES = 16
_HEADER = struct.Struct(">BB16sQ")
#: Plaintext of an encrypted share: sender u32 | recipient u32 | b-share | sk-share.
SHARE_PLAINTEXT_BYTES = 8 + 2 * SHARE_BYTES
AEAD_CIPHERTEXT_BYTES = SHARE_PLAINTEXT_BYTES + 16
_NONCE_BYTES = 12
_MAX_COUNT = 1 << 24
_MAX_DIM = 1 << 31

SHARE_KIND_SELF_MASK = 0
SHARE_KIND_PAIRWISE_KEY = 1


class _Reader:
    """Cursor over untrusted bytes; every read checks the remaining length."""

    def __init__(self, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidMessage("message must be bytes")
        self._mv = memoryview(data)
        self._pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._mv):
            raise InvalidMessage("message truncated")
        out = self._mv[self._pos : self._pos + n].tobytes()
        self._pos += n
        return out

    def view(self, n: int) -> memoryview:
        if n < 0 or self._pos + n > len(self._mv):
            raise InvalidMessage("message truncated")
        out = self._mv[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self) -> int:
        return int(self.take(1)[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def count(self, item_bytes: int) -> int:
        """A u32 count, checked against the bytes left before anything is allocated."""
        n = self.u32()
        if n > _MAX_COUNT or n * item_bytes > len(self._mv) - self._pos:
            raise InvalidMessage("count exceeds message length")
        return n

    def end(self) -> None:
        if self._pos != len(self._mv):
            raise InvalidMessage("trailing bytes after message")


def context_bytes(session_id: bytes, round_index: int) -> bytes:
    """Version, session and round: the context every signature and AEAD binds."""
    return struct.pack(">B16sQ", PROTOCOL_VERSION, session_id, round_index)


def _ids_bytes(ids: Sequence[int]) -> bytes:
    return struct.pack(">I", len(ids)) + b"".join(struct.pack(">I", i) for i in ids)


def _read_ids(r: _Reader) -> tuple[int, ...]:
    n = r.count(4)
    ids = tuple(r.u32() for _ in range(n))
    if any(b <= a for a, b in itertools.pairwise(ids)):
        raise InvalidMessage("client id list must be strictly increasing (no duplicates)")
    return ids


M = TypeVar("M", bound="Message")


def all_finite(v: np.ndarray) -> bool:
    """Whether every entry of a float vector is finite, fast.

    Any NaN or infinity makes the (BLAS) self dot product non-finite, so a finite dot
    proves the vector finite at a quarter of the cost of an element-wise check; only a
    non-finite dot (which may also be an overflow of huge finite values) falls back to
    the exact element-wise test.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        if v.size and math.isfinite(float(np.dot(v, v))):
            return True
    return bool(np.isfinite(v).all())


@dataclass(frozen=True, kw_only=True)
class Message:
    """Common header fields. ``version`` is checked on parse and on construction."""

    TYPE: ClassVar[int] = 0
    session_id: bytes
    round_index: int
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        if self.version != PROTOCOL_VERSION:
            raise InvalidMessage(f"unsupported protocol version {self.version}")
        if not isinstance(self.session_id, bytes) or len(self.session_id) != SESSION_ID_BYTES:
            raise InvalidMessage(f"session_id must be {SESSION_ID_BYTES} bytes")
        if not 0 <= self.round_index < 2**64:
            raise InvalidMessage("round_index out of range")

    def header(self) -> bytes:
        return _HEADER.pack(self.version, self.TYPE, self.session_id, self.round_index)

    def body(self) -> bytes:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        return self.header() + self.body()

    @classmethod
    def from_bytes(cls: type[M], data: bytes) -> M:
        r = _Reader(data)
        version, mtype, sid, rnd = _HEADER.unpack(r.take(_HEADER.size))
        if version != PROTOCOL_VERSION:
            raise InvalidMessage(f"unsupported protocol version {version}")
        if mtype != cls.TYPE:
            raise InvalidMessage(f"expected message type {cls.TYPE}, got {mtype}")
        msg = cls._parse_body(r, sid, rnd)
        r.end()
        return msg

    @classmethod
    def _parse_body(cls: type[M], r: _Reader, sid: bytes, rnd: int) -> M:
        raise NotImplementedError

    def sender_id(self) -> int:
        """The client a client-to-server message claims to come from."""
        raise InvalidMessage(f"{type(self).__name__} is not a client-to-server message")


@dataclass(frozen=True, kw_only=True)
class AdvertiseKeys(Message):
    """Round 0, client -> server: two fresh X25519 public keys, signed by the identity key."""

    TYPE: ClassVar[int] = 1
    client_id: int
    enc_public: bytes
    mask_public: bytes
    signature: bytes

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.client_id < 2**31:
            raise InvalidMessage("client_id out of range")
        if len(self.enc_public) != KEY_BYTES or len(self.mask_public) != KEY_BYTES:
            raise InvalidMessage("public keys must be 32 bytes")
        if len(self.signature) != SIGNATURE_BYTES:
            raise InvalidMessage("signature must be 64 bytes")

    def signed_payload(self) -> bytes:
        return (
            b"secure-fml/secagg/v1/advertise"
            + self.header()
            + struct.pack(">I", self.client_id)
            + self.enc_public
            + self.mask_public
        )

    def entry(self) -> bytes:
        return (
            struct.pack(">I", self.client_id) + self.enc_public + self.mask_public + self.signature
        )

    ENTRY_BYTES: ClassVar[int] = 4 + 2 * KEY_BYTES + SIGNATURE_BYTES

    def body(self) -> bytes:
        return self.entry()

    @classmethod
    def _parse_entry(cls, r: _Reader, sid: bytes, rnd: int) -> AdvertiseKeys:
        return cls(
            session_id=sid,
            round_index=rnd,
            client_id=r.u32(),
            enc_public=r.take(KEY_BYTES),
            mask_public=r.take(KEY_BYTES),
            signature=r.take(SIGNATURE_BYTES),
        )

    @classmethod
    def _parse_body(cls, r: _Reader, sid: bytes, rnd: int) -> AdvertiseKeys:
        return cls._parse_entry(r, sid, rnd)

    def sender_id(self) -> int:
        return self.client_id


@dataclass(frozen=True, kw_only=True)
class KeyBroadcast(Message):
    """Round 0, server -> every client: all received advertisements, sorted by id."""

    TYPE: ClassVar[int] = 2
    advertisements: tuple[AdvertiseKeys, ...]

    def body(self) -> bytes:
        return struct.pack(">I", len(self.advertisements)) + b"".join(
            a.entry() for a in self.advertisements
        )

    @classmethod
    def _parse_body(cls, r: _Reader, sid: bytes, rnd: int) -> KeyBroadcast:
        n = r.count(AdvertiseKeys.ENTRY_BYTES)
        ads = tuple(AdvertiseKeys._parse_entry(r, sid, rnd) for _ in range(n))
        return cls(session_id=sid, round_index=rnd, advertisements=ads)


@dataclass(frozen=True, kw_only=True)
class EncryptedShare:
    """One AES-GCM ciphertext from ``sender`` to ``recipient`` (routed by the server)."""

    sender: int
    recipient: int
    nonce: bytes
    ciphertext: bytes

    BYTES: ClassVar[int] = 8 + _NONCE_BYTES + AEAD_CIPHERTEXT_BYTES

    def __post_init__(self) -> None:
        if len(self.nonce) != _NONCE_BYTES or len(self.ciphertext) != AEAD_CIPHERTEXT_BYTES:
            raise InvalidMessage("encrypted share has the wrong length")

    def encode(self) -> bytes:
        return struct.pack(">II", self.sender, self.recipient) + self.nonce + self.ciphertext

    @classmethod
    def decode(cls, r: _Reader) -> EncryptedShare:
        s, t = struct.unpack(">II", r.take(8))
        return cls(
            sender=s,
            recipient=t,
            nonce=r.take(_NONCE_BYTES),
            ciphertext=r.take(AEAD_CIPHERTEXT_BYTES),
        )


@dataclass(frozen=True, kw_only=True)
class ShareKeys(Message):
    """Round 1, client -> server: encrypted Shamir shares for each neighbour."""

    TYPE: ClassVar[int] = 3
    sender: int

    def sender_id(self) -> int:
        return self.sender

    shares: tuple[EncryptedShare, ...]

    def body(self) -> bytes:
        return struct.pack(">II", self.sender, len(self.shares)) + b"".join(
            s.encode() for s in self.shares
        )

    @classmethod
    def _parse_body(cls, r: _Reader, sid: bytes, rnd: int) -> ShareKeys:
        sender = r.u32()
        n = r.count(EncryptedShare.BYTES)
        shares = tuple(EncryptedShare.decode(r) for _ in range(n))
        return cls(session_id=sid, round_index=rnd, sender=sender, shares=shares)


@dataclass(frozen=True, kw_only=True)
class ShareRouting(Message):
    """Round 1, server -> one client: the encrypted shares addressed to it."""

    TYPE: ClassVar[int] = 4
    recipient: int
    shares: tuple[EncryptedShare, ...]

    def body(self) -> bytes:
        return struct.pack(">II", self.recipient, len(self.shares)) + b"".join(
            s.encode() for s in self.shares
        )

    @classmethod
    def _parse_body(cls, r: _Reader, sid: bytes, rnd: int) -> ShareRouting:
        recipient = r.u32()
        n = r.count(EncryptedShare.BYTES)
        shares = tuple(EncryptedShare.decode(r) for _ in range(n))
        return cls(session_id=sid, round_index=rnd, recipient=recipient, shares=shares)


def word_bytes(bits: int) -> int:
    return (bits + 7) // 8


@dataclass(frozen=True, kw_only=True, eq=False)
class MaskedInput(Message):
    """Round 2, client -> server: y_u in Z_{2^b}^d, ceil(b/8) bytes per entry."""

    TYPE: ClassVar[int] = 5
    sender: int

    def sender_id(self) -> int:
        return self.sender

    bits: int
    vector: np.ndarray

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 2 <= self.bits <= 62:
            raise InvalidMessage("bits out of range")
        dtype = mask_dtype(self.bits)
        if self.vector.dtype != dtype or self.vector.ndim != 1:
            raise InvalidMessage(f"masked vector must be a 1-D {np.dtype(dtype).name} array")

    def body(self) -> bytes:
        w = word_bytes(self.bits)
        d = self.vector.shape[0]
        v = self.vector.astype(self.vector.dtype.newbyteorder("<"), copy=False)
        raw = v.view(np.uint8).reshape(d, v.itemsize)
        payload = raw.tobytes() if w == v.itemsize else raw[:, :w].tobytes()
        return struct.pack(">IBI", self.sender, self.bits, d) + payload

    @classmethod
    def _parse_body(cls, r: _Reader, sid: bytes, rnd: int) -> MaskedInput:
        sender = r.u32()
        bits = r.u8()
        if not 2 <= bits <= 62:
            raise InvalidMessage("bits out of range")
        d = r.u32()
        w = word_bytes(bits)
        if d == 0 or d >= _MAX_DIM:
            raise InvalidMessage("vector dimension out of range")
        raw = np.frombuffer(r.view(d * w), dtype=np.uint8).reshape(d, w)
        dtype = np.dtype(mask_dtype(bits)).newbyteorder("<")
        if w == dtype.itemsize:
            vec = raw.copy().view(dtype).reshape(d)
        else:
            full = np.zeros((d, dtype.itemsize), dtype=np.uint8)
            full[:, :w] = raw
            vec = full.view(dtype).reshape(d)
        vec = vec.astype(mask_dtype(bits), copy=False)
        if bits % 8 and (raw[:, w - 1] >> (bits % 8)).any():
            raise InvalidMessage("masked vector entry exceeds the modulus")
        return cls(session_id=sid, round_index=rnd, sender=sender, bits=bits, vector=vec)


@dataclass(frozen=True, kw_only=True)
class ConsistencyRequest(Message):
    """Round 3, server -> survivors: the sorted ids whose masked input arrived (U3)."""

    TYPE: ClassVar[int] = 6
    survivors: tuple[int, ...]

    def body(self) -> bytes:
        return _ids_bytes(self.survivors)

    @classmethod
    def _parse_body(cls, r: _Reader, sid: bytes, rnd: int) -> ConsistencyRequest:
        return cls(session_id=sid, round_index=rnd, survivors=_read_ids(r))


@dataclass(frozen=True, kw_only=True)
class ConsistencyResponse(Message):
    """Round 3, client -> server: Ed25519 signature over (context, model hash, U3)."""

    TYPE: ClassVar[int] = 7
    sender: int

    def sender_id(self) -> int:
        return self.sender

    signature: bytes

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.signature) != SIGNATURE_BYTES:
            raise InvalidMessage("signature must be 64 bytes")

    def body(self) -> bytes:
        return struct.pack(">I", self.sender) + self.signature

    @classmethod
    def _parse_body(cls, r: _Reader, sid: bytes, rnd: int) -> ConsistencyResponse:
        return cls(
            session_id=sid, round_index=rnd, sender=r.u32(), signature=r.take(SIGNATURE_BYTES)
        )


@dataclass(frozen=True, kw_only=True)
class UnmaskRequest(Message):
    """Round 4, server -> signers: U3, the dropped set U2 \\ U3, and t+ consistency signatures."""

    TYPE: ClassVar[int] = 8
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[tuple[int, bytes], ...]

    def body(self) -> bytes:
        sigs = struct.pack(">I", len(self.signatures)) + b"".join(
            struct.pack(">I", i) + s for i, s in self.signatures
        )
        return _ids_bytes(self.survivors) + _ids_bytes(self.dropped) + sigs

    @classmethod
    def _parse_body(cls, r: _Reader, sid: bytes, rnd: int) -> UnmaskRequest:
        survivors = _read_ids(r)
        dropped = _read_ids(r)
        n = r.count(4 + SIGNATURE_BYTES)
        sigs = tuple((r.u32(), r.take(SIGNATURE_BYTES)) for _ in range(n))
        return cls(
            session_id=sid, round_index=rnd, survivors=survivors, dropped=dropped, signatures=sigs
        )


@dataclass(frozen=True, kw_only=True)
class UnmaskedShare:
    """A revealed share of ``owner``'s self-mask seed (kind 0) or pairwise key (kind 1)."""

    owner: int
    kind: int
    share: bytes

    BYTES: ClassVar[int] = 5 + SHARE_BYTES

    def __post_init__(self) -> None:
        if self.kind not in (SHARE_KIND_SELF_MASK, SHARE_KIND_PAIRWISE_KEY):
            raise InvalidMessage("unknown share kind")
        if len(self.share) != SHARE_BYTES:
            raise InvalidMessage("share has the wrong length")


@dataclass(frozen=True, kw_only=True)
class UnmaskResponse(Message):
    """Round 4, client -> server: revealed shares, at most one kind per owner."""

    TYPE: ClassVar[int] = 9
    sender: int

    def sender_id(self) -> int:
        return self.sender

    shares: tuple[UnmaskedShare, ...]

    def body(self) -> bytes:
        return struct.pack(">II", self.sender, len(self.shares)) + b"".join(
            struct.pack(">IB", s.owner, s.kind) + s.share for s in self.shares
        )

    @classmethod
    def _parse_body(cls, r: _Reader, sid: bytes, rnd: int) -> UnmaskResponse:
        sender = r.u32()
        n = r.count(UnmaskedShare.BYTES)
        shares = []
        for _ in range(n):
            owner = r.u32()
            kind = r.u8()
            shares.append(UnmaskedShare(owner=owner, kind=kind, share=r.take(SHARE_BYTES)))
        return cls(session_id=sid, round_index=rnd, sender=sender, shares=tuple(shares))


@dataclass(frozen=True, kw_only=True, eq=False)
class PlainInput(Message):
    """Plain-sum protocol, client -> server: the (clipped, possibly noised) float32 update
    in the clear. Only for modes that trust the coordinator with individual updates."""

    TYPE: ClassVar[int] = 10
    sender: int
    vector: np.ndarray

    def sender_id(self) -> int:
        return self.sender

    def __post_init__(self) -> None:
        super().__post_init__()
        v = self.vector
        if not isinstance(v, np.ndarray) or v.dtype != np.float32 or v.ndim != 1 or v.size == 0:
            raise InvalidMessage("plain input must be a non-empty 1-D float32 array")
        if not all_finite(v):
            raise InvalidMessage("plain input contains NaN or Inf")

    def body(self) -> bytes:
        v = self.vector.astype("<f4", copy=False)
        return struct.pack(">II", self.sender, v.shape[0]) + v.tobytes()

    @classmethod
    def _parse_body(cls, r: _Reader, sid: bytes, rnd: int) -> PlainInput:
        sender = r.u32()
        d = r.u32()
        if d == 0 or d >= _MAX_DIM:
            raise InvalidMessage("vector dimension out of range")
        vec = np.frombuffer(r.view(4 * d), dtype="<f4").astype(np.float32)
        return cls(session_id=sid, round_index=rnd, sender=sender, vector=vec)


_BY_TYPE: dict[int, type[Message]] = {
    c.TYPE: c
    for c in (
        AdvertiseKeys,
        KeyBroadcast,
        ShareKeys,
        ShareRouting,
        MaskedInput,
        ConsistencyRequest,
        ConsistencyResponse,
        UnmaskRequest,
        UnmaskResponse,
        PlainInput,
    )
}


def parse_message(data: bytes, *, allowed: tuple[type[Message], ...] | None = None) -> Message:
    """Parse any protocol message by its type byte; ``allowed`` restricts the accepted types."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < _HEADER.size:
        raise InvalidMessage("message truncated")
    cls = _BY_TYPE.get(int(bytes(data[1:2])[0]))
    if cls is None:
        raise InvalidMessage(f"unknown message type {int(bytes(data[1:2])[0])}")
    if allowed is not None and cls not in allowed:
        raise InvalidMessage(f"{cls.__name__} is not accepted here")
    return cls.from_bytes(bytes(data))
