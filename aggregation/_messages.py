"""Wire messages of the SecAgg protocol, with explicit, strict binary encodings.

Every message starts with the same header::

    version u8 | type u8 | session_id 16 bytes | round_index u64

followed by a fixed layout per type (integers big-endian, counts as u32, client
id lists strictly increasing, masked vectors bit-packed at exactly b bits per
entry). Parsing checks the version, the type, every length and count against the
bytes actually present, and rejects trailing bytes; nothing is ever unpickled.
These encodings are what the gRPC layer carries as opaque ``bytes`` fields.

Signed statements bind the *round context* (:func:`round_context`: protocol
version, session, round, roster digest, model hash and the proposed parameters),
so a signature made for one round, roster, model or parameter set never verifies
for another.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import operator
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, overload

import numpy as np

from aggregation._primitives import (
    ELEMENT_BYTES,
    GCM_TAG_BYTES,
    HASH_BYTES,
    KEY_BYTES,
    SIGNATURE_BYTES,
    SYMMETRIC_KEY_BYTES,
    mask_dtype,
    pack_bits,
    unpack_bits,
)
from privacy.errors import InvalidMessage

__all__ = [
    "PROTOCOL_VERSION",
    "SESSION_ID_BYTES",
    "SHARE_CIPHERTEXT_BYTES",
    "AdvertiseKeys",
    "Complaint",
    "ComplaintReason",
    "ConsistencyRequest",
    "ConsistencyResponse",
    "DisputeRequest",
    "DisputeResponse",
    "EncryptedShare",
    "MaskedInput",
    "Message",
    "NeighbourKeys",
    "Opening",
    "PeerKey",
    "PlainInput",
    "QuorumCertificate",
    "QuorumChallenge",
    "RevealedKey",
    "Review",
    "ReviewResponse",
    "RoutedShare",
    "ShareKeys",
    "ShareRouting",
    "UnmaskRequest",
    "UnmaskResponse",
    "all_finite",
    "parse_message",
    "reply_size_limit",
    "round_context",
]

#: Version 3: the protocol that holds against a malicious coordinator (client-drawn
#: holders, per-pair share keys, review / dispute / quorum stages, bit-packed inputs).
PROTOCOL_VERSION = 3
SESSION_ID_BYTES = 16
_HEADER = struct.Struct(">BB16sQ")
#: One AES-128-GCM ciphertext of one share y (17 bytes) with its 16-byte tag.
SHARE_CIPHERTEXT_BYTES = ELEMENT_BYTES + GCM_TAG_BYTES
_MAX_COUNT = 1 << 24
_MAX_DIM = 1 << 31

#: Share kinds: the self-mask seed b_u and the seed of the pairwise-mask key pair.
SHARE_KIND_SELF_MASK = 0
SHARE_KIND_MASK_KEY = 1
#: Kept for callers of the previous protocol: the pairwise-key share kind.
SHARE_KIND_PAIRWISE_KEY = SHARE_KIND_MASK_KEY

#: Status of a roster member in the agreed status vector (2 bits each).
STATUS_ABSENT = 0  # never advertised keys (not in U1)
STATUS_ADVERTISED = 1  # in U1, never shared keys
STATUS_SHARED = 2  # in U2, not in U3: dropped after sharing, or excluded as an offender
STATUS_ALIVE = 3  # in U3: its masked input is in the sum


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
    """Version, session and round (the plain-sum protocol's context)."""
    return struct.pack(">B16sQ", PROTOCOL_VERSION, session_id, round_index)


def round_context(
    *,
    session_id: bytes,
    round_index: int,
    roster_digest: bytes,
    model_hash: bytes,
    mode: str,
    num_clients: int,
    degree: int,
    threshold: int,
    modulus_bits: int,
) -> bytes:
    """SHA-256 over everything a round's signatures, HKDF infos and AEAD data bind."""
    h = hashlib.sha256(b"secure-fml/secagg/v2/context")
    h.update(context_bytes(session_id, round_index))
    h.update(roster_digest)
    h.update(model_hash)
    h.update(mode.encode() + b"\x00")
    h.update(struct.pack(">IIIB", num_clients, degree, threshold, modulus_bits))
    return h.digest()


def ids_bytes(ids: Sequence[int] | np.ndarray) -> bytes:
    if isinstance(ids, Ids):
        return struct.pack(">I", len(ids)) + ids.raw
    if isinstance(ids, np.ndarray):
        return struct.pack(">I", len(ids)) + ids.astype(">u4").tobytes()
    return struct.pack(">I", len(ids)) + b"".join(struct.pack(">I", i) for i in ids)


_ids_bytes = ids_bytes  # the previous private name


def _read_ids(r: _Reader) -> tuple[int, ...]:
    n = r.count(4)
    ids = tuple(r.u32() for _ in range(n))
    if any(b <= a for a, b in itertools.pairwise(ids)):
        raise InvalidMessage("client id list must be strictly increasing (no duplicates)")
    return ids


def _read_id_records(r: _Reader) -> Ids:
    return Ids(r.take(4 * r.count(4)))


def _check_ids(ids: Sequence[int], what: str) -> None:
    if any(not 0 <= i < 2**31 for i in ids):
        raise InvalidMessage(f"{what}: client id out of range")
    if any(b <= a for a, b in itertools.pairwise(ids)):
        raise InvalidMessage(f"{what}: client ids must be strictly increasing")


TAG_BYTES = 16

_RI = TypeVar("_RI")
_RS = TypeVar("_RS", bound="_Records[Any]")


class _Records(Sequence[_RI]):
    """An immutable sequence of fixed-size wire records, held as one ``bytes`` object.

    Every record starts with a u32 client id, and the ids are strictly increasing. A
    SecAgg+ server at n = 10,000 holds about a million shares, tags and revealed keys:
    as Python objects (a dataclass, its bytes, its ints) each costs ~1 KB in the
    coordinator, as a record its wire size (100, 20 and 21 bytes); they also pickle
    as one ``bytes`` between processes. Items are decoded when they are read.
    Construct from the wire bytes or from items (encoded and checked here).
    """

    __slots__ = ("_raw",)
    SIZE: ClassVar[int]
    WHAT: ClassVar[str]

    def __init__(self, items: bytes | Iterable[_RI] = b"") -> None:
        if isinstance(items, _Records):
            raw = items.raw
        elif isinstance(items, bytes):
            raw = items
        else:
            try:
                raw = b"".join(self._encode(x) for x in items)
            except InvalidMessage:
                raise
            except (struct.error, TypeError, AttributeError, ValueError):
                raise InvalidMessage(f"{self.WHAT}: malformed item") from None
        if len(raw) % self.SIZE:
            raise InvalidMessage(f"{self.WHAT}: not a whole number of records")
        self._raw = raw
        ids = self.ids()
        if ids.size and int(ids.max()) >= 2**31:
            raise InvalidMessage(f"{self.WHAT}: client id out of range")
        if ids.size > 1 and bool(np.any(ids[1:] <= ids[:-1])):
            raise InvalidMessage(f"{self.WHAT}: client ids must be strictly increasing")
        self._check()

    @classmethod
    def of(cls: type[_RS], items: bytes | Iterable[Any]) -> _RS:
        """``items`` as records of this type (itself if it already is)."""
        return items if isinstance(items, cls) else cls(items)

    @staticmethod
    def _encode(item: Any) -> bytes:
        return bytes(item.encode())

    def _decode(self, record: bytes) -> _RI:
        raise NotImplementedError

    def _check(self) -> None:
        """Type-specific checks of the raw records (beyond size and ids)."""

    def _column(self, offset: int, dtype: str) -> np.ndarray:
        n = len(self._raw) // self.SIZE
        return np.ndarray((n,), dtype=dtype, buffer=self._raw, offset=offset, strides=(self.SIZE,))

    @classmethod
    def _kind(cls) -> type[_Records[Any]]:
        """The record type (a view of records, such as a server's lazily gathered
        forwarded shares, compares, hashes and pickles as the records it shows)."""
        for c in cls.__mro__:
            if _Records in c.__bases__:
                return c
        raise TypeError(f"{cls.__name__} is not a record type")

    @property
    def raw(self) -> bytes:
        """The records as on the wire (no count)."""
        return self._raw

    def ids(self) -> np.ndarray:
        """Every record's client id, in order (int64)."""
        if not self._raw:
            return np.zeros(0, dtype=np.int64)
        return self._column(0, ">u4").astype(np.int64)

    def find(self, client_id: int) -> int | None:
        """The index of the record of ``client_id``, or None."""
        ids = self.ids()
        i = int(np.searchsorted(ids, client_id))
        return i if i < ids.size and int(ids[i]) == client_id else None

    def record(self, i: int) -> bytes:
        """Record ``i`` after its id."""
        s = self.SIZE
        return self._raw[i * s + 4 : (i + 1) * s]

    def __len__(self) -> int:
        return len(self._raw) // self.SIZE

    @overload
    def __getitem__(self, i: int) -> _RI: ...
    @overload
    def __getitem__(self: _RS, i: slice) -> _RS: ...
    def __getitem__(self, i: int | slice) -> Any:
        s = self.SIZE
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step == 1:
                return type(self)(self._raw[start * s : max(start, stop) * s])
            return type(self)(
                b"".join(self._raw[j * s : (j + 1) * s] for j in range(start, stop, step))
            )
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"{self.WHAT}: index out of range")
        return self._decode(self._raw[i * s : (i + 1) * s])

    def __iter__(self) -> Iterator[_RI]:
        s = self.SIZE
        raw = self._raw
        for j in range(0, len(raw), s):
            yield self._decode(raw[j : j + s])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _Records):
            return other._kind() is self._kind() and other.raw == self._raw
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self._kind().__name__, self._raw))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (self._kind(), (self._raw,))


class Ids(_Records[int]):
    """Client ids in strictly increasing order, held as one ``bytes`` object (a u32 each).

    The id lists a SecAgg+ server keeps or sends one of per client (each holder draw, the
    holders that shared) hold n·k ids in all: 4 bytes each here, about 36 as Python ints
    in a tuple. It reads, compares and iterates as the ints it holds.
    """

    __slots__ = ()
    SIZE = 4
    WHAT = "client ids"

    @staticmethod
    def _encode(item: Any) -> bytes:
        return struct.pack(">I", operator.index(item))

    def _decode(self, record: bytes) -> int:
        return int.from_bytes(record, "big")


class Tags(_Records[tuple[int, bytes]]):
    """(client id, 16-byte masking tag) pairs."""

    __slots__ = ()
    SIZE = 4 + TAG_BYTES
    WHAT = "tags"

    @staticmethod
    def _encode(item: Any) -> bytes:
        i, tag = item
        if not isinstance(tag, bytes) or len(tag) != TAG_BYTES:
            raise InvalidMessage(f"a masking tag must be {TAG_BYTES} bytes")
        return struct.pack(">I", i) + tag

    def _decode(self, record: bytes) -> tuple[int, bytes]:
        return int.from_bytes(record[:4], "big"), record[4:]

    def tag(self, client_id: int) -> bytes | None:
        """The tag of ``client_id``, or None."""
        i = self.find(client_id)
        return None if i is None else self.record(i)


def _tags_bytes(tags: Sequence[tuple[int, bytes]]) -> bytes:
    raw = Tags.of(tags).raw
    return struct.pack(">I", len(raw) // Tags.SIZE) + raw


def _read_tags(r: _Reader) -> Tags:
    n = r.count(Tags.SIZE)
    return Tags(r.take(n * Tags.SIZE))


def _sized(value: bytes, size: int, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise InvalidMessage(f"{what} must be {size} bytes")


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


# ------------------------------------------------------------------ stage 0


@dataclass(frozen=True, kw_only=True, slots=True)
class PeerKey:
    """The part of a client's advertisement its peers receive: two fresh X25519 public
    keys (share encryption, pairwise masks) signed with its identity key."""

    client_id: int
    enc_public: bytes
    mask_public: bytes
    signature: bytes

    BYTES: ClassVar[int] = 4 + 2 * KEY_BYTES + SIGNATURE_BYTES

    def __post_init__(self) -> None:
        if not 0 <= self.client_id < 2**31:
            raise InvalidMessage("client_id out of range")
        _sized(self.enc_public, KEY_BYTES, "enc_public")
        _sized(self.mask_public, KEY_BYTES, "mask_public")
        _sized(self.signature, SIGNATURE_BYTES, "key signature")

    @staticmethod
    def signed_payload(ctx: bytes, client_id: int, enc_public: bytes, mask_public: bytes) -> bytes:
        return (
            b"secure-fml/secagg/v2/keys"
            + ctx
            + struct.pack(">I", client_id)
            + enc_public
            + mask_public
        )

    def payload(self, ctx: bytes) -> bytes:
        return self.signed_payload(ctx, self.client_id, self.enc_public, self.mask_public)

    def encode(self) -> bytes:
        return (
            struct.pack(">I", self.client_id) + self.enc_public + self.mask_public + self.signature
        )

    @classmethod
    def decode(cls, r: _Reader) -> PeerKey:
        return cls(
            client_id=r.u32(),
            enc_public=r.take(KEY_BYTES),
            mask_public=r.take(KEY_BYTES),
            signature=r.take(SIGNATURE_BYTES),
        )


@dataclass(frozen=True, kw_only=True)
class AdvertiseKeys(Message):
    """Stage 0, client -> server: the peer key, plus what only the server needs.

    ``neighbours`` are the k holders the client drew from the roster with its own
    CSPRNG (empty in SECAGG: everybody); ``seed_commitment`` is SHA-256 of its
    self-mask seed, which lets the server check the seed it reconstructs. Both
    are signed (``commitment_signature``) so that a dealer cannot deny them.
    """

    TYPE: ClassVar[int] = 1
    key: PeerKey
    seed_commitment: bytes
    #: Held as :class:`Ids` (a tuple of ints is converted and checked).
    neighbours: Sequence[int]
    commitment_signature: bytes

    def __post_init__(self) -> None:
        super().__post_init__()
        _sized(self.seed_commitment, HASH_BYTES, "seed_commitment")
        object.__setattr__(self, "neighbours", Ids.of(self.neighbours))
        _sized(self.commitment_signature, SIGNATURE_BYTES, "commitment signature")

    @property
    def client_id(self) -> int:
        return self.key.client_id

    @staticmethod
    def commitment_payload(
        ctx: bytes, client_id: int, seed_commitment: bytes, neighbours: Sequence[int]
    ) -> bytes:
        return (
            b"secure-fml/secagg/v2/commitments"
            + ctx
            + struct.pack(">I", client_id)
            + seed_commitment
            + ids_bytes(neighbours)
        )

    def body(self) -> bytes:
        return (
            self.key.encode()
            + self.seed_commitment
            + ids_bytes(self.neighbours)
            + self.commitment_signature
        )

    @classmethod
    def _parse_body(cls, r: _Reader, sid: bytes, rnd: int) -> AdvertiseKeys:
        return cls(
            session_id=sid,
            round_index=rnd,
            key=PeerKey.decode(r),
            seed_commitment=r.take(HASH_BYTES),
            neighbours=_read_id_records(r),
            commitment_signature=r.take(SIGNATURE_BYTES),
        )

    def sender_id(self) -> int:
        return self.key.client_id


@dataclass(frozen=True, kw_only=True)
class NeighbourKeys(Message):
    """Stage 1, server -> one client: the peer keys of the holders it drew that
    advertised (SECAGG: of every client that advertised), sorted by id."""

    TYPE: ClassVar[int] = 2
    recipient: int
    keys: tuple[PeerKey, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_ids([k.client_id for k in self.keys], "neighbour keys")

    def body(self) -> bytes:
        return struct.pack(">II", self.recipient, len(self.keys)) + b"".join(
            k.encode() for k in self.keys
        )

    @classmethod
    def _parse_body(cls, r: _Reader, sid: bytes, rnd: int) -> NeighbourKeys:
        recipient = r.u32()
        n = r.count(PeerKey.BYTES)
        keys = tuple(PeerKey.decode(r) for _ in range(n))
        return cls(session_id=sid, round_index=rnd, recipient=recipient, keys=keys)


# ------------------------------------------------------------------ stage 1


@dataclass(frozen=True, kw_only=True, slots=True)
class EncryptedShare:
    """A dealer's two shares for one holder, each under its own single-use key.

    ``ephemeral_public`` is a fresh X25519 key for this pair alone: the AES-128-GCM
    keys are HKDF(DH(e, holder's enc key)), so in a dispute the dealer can open
    exactly this pair (reveal e) and anybody can check the ciphertexts.
    """

    recipient: int
    ephemeral_public: bytes
    self_mask: bytes  # share of b_u
    mask_key: bytes  # share of the mask key seed

    BYTES: ClassVar[int] = 4 + KEY_BYTES + 2 * SHARE_CIPHERTEXT_BYTES

    def __post_init__(self) -> None:
        if not 0 <= self.recipient < 2**31:
            raise InvalidMessage("recipient out of range")
        _sized(self.ephemeral_public, KEY_BYTES, "ephemeral key")
        _sized(self.self_mask, SHARE_CIPHERTEXT_BYTES, "self-mask share ciphertext")
        _sized(self.mask_key, SHARE_CIPHERTEXT_BYTES, "mask-key share ciphertext")

    def ciphertext(self, kind: int) -> bytes:
        return self.self_mask if kind == SHARE_KIND_SELF_MASK else self.mask_key

    def encode(self) -> bytes:
        return (
            struct.pack(">I", self.recipient)
            + self.ephemeral_public
            + self.self_mask
            + self.mask_key
        )

    @classmethod
    def decode(cls, r: _Reader) -> EncryptedShare:
        return cls(
            recipient=r.u32(),
            ephemeral_public=r.take(KEY_BYTES),
            self_mask=r.take(SHARE_CIPHERTEXT_BYTES),
            mask_key=r.take(SHARE_CIPHERTEXT_BYTES),
        )


_EPH_END = 4 + KEY_BYTES
_SELF_END = _EPH_END + SHARE_CIPHERTEXT_BYTES


class EncryptedShares(_Records[EncryptedShare]):
    """A dealer's :class:`EncryptedShare` records, by recipient."""

    __slots__ = ()
    SIZE = EncryptedShare.BYTES
    WHAT = "share recipients"

    def _decode(self, record: bytes) -> EncryptedShare:
        return EncryptedShare(
            recipient=int.from_bytes(record[:4], "big"),
            ephemeral_public=record[4:_EPH_END],
            self_mask=record[_EPH_END:_SELF_END],
            mask_key=record[_SELF_END:],
        )


@dataclass(frozen=True, kw_only=True)
class ShareKeys(Message):
    """Stage 1, client -> server: one :class:`EncryptedShare` per holder it sends to,
    signed as a whole so that what it dealt can be attributed to it."""

    TYPE: ClassVar[int] = 3
    sender: int
    #: Held as :class:`EncryptedShares` (a tuple of shares is converted).
    shares: Sequence[EncryptedShare]
    signature: bytes

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "shares", EncryptedShares.of(self.shares))
        _sized(self.signature, SIGNATURE_BYTES, "share signature")

    @property
    def records(self) -> EncryptedShares:
        return self.shares  # type: ignore[return-value]

    def sender_id(self) -> int:
        return self.sender

    @staticmethod
    def signed_payload(ctx: bytes, sender: int, shares: Sequence[EncryptedShare]) -> bytes:
        return (
            b"secure-fml/secagg/v2/shares"
            + ctx
            + struct.pack(">II", sender, len(shares))
            + EncryptedShares.of(shares).raw
        )

    def payload(self, ctx: bytes) -> bytes:
        return self.signed_payload(ctx, self.sender, self.shares)

    def body(self) -> bytes:
        return struct.pack(">II", self.sender, len(self.shares)) + self.records.raw + self.signature

    @classmethod
    def _parse_body(cls, r: _Reader, sid: bytes, rnd: int) -> ShareKeys:
        sender = r.u32()
        n = r.count(EncryptedShare.BYTES)
        shares = EncryptedShares(r.take(n * EncryptedShare.BYTES))
        return cls(
            session_id=sid,
            round_index=rnd,
            sender=sender,
            shares=shares,
            signature=r.take(SIGNATURE_BYTES),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class RoutedShare:
    """A share as the server forwards it: who dealt it, and its ciphertexts."""

    dealer: int
    ephemeral_public: bytes
    self_mask: bytes
    mask_key: bytes

    BYTES: ClassVar[int] = 4 + KEY_BYTES + 2 * SHARE_CIPHERTEXT_BYTES

    def __post_init__(self) -> None:
        if not 0 <= self.dealer < 2**31:
            raise InvalidMessage("dealer out of range")
        _sized(self.ephemeral_public, KEY_BYTES, "ephemeral key")
        _sized(self.self_mask, SHARE_CIPHERTEXT_BYTES, "self-mask share ciphertext")
        _sized(self.mask_key, SHARE_CIPHERTEXT_BYTES, "mask-key share ciphertext")

    def encode(self) -> bytes:
        return (
            struct.pack(">I", self.dealer) + self.ephemeral_public + self.self_mask + self.mask_key
        )

    @classmethod
    def decode(cls, r: _Reader) -> RoutedShare:
        return cls(
            dealer=r.u32(),
            ephemeral_public=r.take(KEY_BYTES),
            self_mask=r.take(SHARE_CIPHERTEXT_BYTES),
            mask_key=r.take(SHARE_CIPHERTEXT_BYTES),
        )


class RoutedShares(_Records[RoutedShare]):
    """The :class:`RoutedShare` records a holder is forwarded, by dealer."""

    __slots__ = ()
    SIZE = RoutedShare.BYTES
    WHAT = "share dealers"

    def _decode(self, record: bytes) -> RoutedShare:
        return RoutedShare(
            dealer=int.from_bytes(record[:4], "big"),
            ephemeral_public=record[4:_EPH_END],
            self_mask=record[_EPH_END:_SELF_END],
            mask_key=record[_SELF_END:],
        )


@dataclass(frozen=True, kw_only=True)
class ShareRouting(Message):
    """Stage 2, server -> one holder: the shares dealt to it (sorted by dealer), the
    signed keys of those dealers it did not draw itself (the others it already has),
    and which of its own holders shared keys (U2): it masks with exactly these."""

    TYPE: ClassVar[int] = 4
    recipient: int
    #: Held as :class:`RoutedShares` (a tuple of shares is converted).
    shares: Sequence[RoutedShare]
    #: Held as :class:`Ids` (a tuple of ints is converted and checked).
    shared: Sequence[int]
    keys: tuple[PeerKey, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "shares", RoutedShares.of(self.shares))
        object.__setattr__(self, "shared", Ids.of(self.shared))
        _check_ids([k.client_id for k in self.keys], "dealer keys")

    def body(self) -> bytes:
        return (
            struct.pack(">II", self.recipient, len(self.shares))
            + RoutedShares.of(self.shares).raw
            + ids_bytes(self.shared)
            + struct.pack(">I", len(self.keys))
            + b"".join(k.encode() for k in self.keys)
        )

    @classmethod
    def _parse_body(cls, r: _Reader, sid: bytes, rnd: int) -> ShareRouting:
        recipient = r.u32()
        n = r.count(RoutedShare.BYTES)
        shares = RoutedShares(r.take(n * RoutedShare.BYTES))
        shared = _read_id_records(r)
        m = r.count(PeerKey.BYTES)
        keys = tuple(PeerKey.decode(r) for _ in range(m))
        return cls(
            session_id=sid,
            round_index=rnd,
            recipient=recipient,
            shares=shares,
            shared=shared,
            keys=keys,
        )


# ------------------------------------------------------------------ stage 2


class ComplaintReason:
    """Why a holder rejected a share (a u8 on the wire)."""

    BAD_CIPHERTEXT = 1  # an AES-GCM tag does not verify, or y >= p
    BAD_KEY = 2  # the ephemeral key is not a valid X25519 key


@dataclass(frozen=True, kw_only=True, slots=True)
class Complaint:
    """A holder's signed statement that the share it received from ``dealer`` is bad.

    It quotes the ciphertexts as received; the dealer's signed :class:`ShareKeys`
    shows what was dealt, and the dealer's opening of the pair key decides who lied.
    """

    dealer: int
    reason: int
    ephemeral_public: bytes
    self_mask: bytes
    mask_key: bytes
    signature: bytes

    BYTES: ClassVar[int] = 5 + KEY_BYTES + 2 * SHARE_CIPHERTEXT_BYTES + SIGNATURE_BYTES

    def __post_init__(self) -> None:
        if not 0 <= self.dealer < 2**31:
            raise InvalidMessage("dealer out of range")
        if self.reason not in (ComplaintReason.BAD_CIPHERTEXT, ComplaintReason.BAD_KEY):
            raise InvalidMessage("unknown complaint reason")
        _sized(self.ephemeral_public, KEY_BYTES, "ephemeral key")
        _sized(self.self_mask, SHARE_CIPHERTEXT_BYTES, "self-mask share ciphertext")
        _sized(self.mask_key, SHARE_CIPHERTEXT_BYTES, "mask-key share ciphertext")
        _sized(self.signature, SIGNATURE_BYTES, "complaint signature")

    @staticmethod
    def signed_payload(
        ctx: bytes, complainer: int, dealer: int, reason: int, quoted: bytes
    ) -> bytes:
        return (
            b"secure-fml/secagg/v2/complaint"
            + ctx
            + struct.pack(">IIB", complainer, dealer, reason)
            + quoted
        )

    def quoted(self) -> bytes:
        return self.ephemeral_public + self.self_mask + self.mask_key

    def payload(self, ctx: bytes, complainer: int) -> bytes:
        return self.signed_payload(ctx, complainer, self.dealer, self.reason, self.quoted())

    def encode(self) -> bytes:
        return struct.pack(">IB", self.dealer, self.reason) + self.quoted() + self.signature

    @classmethod
    def decode(cls, r: _Reader) -> Complaint:
        dealer = r.u32()
        reason = r.u8()
        return cls(
            dealer=dealer,
            reason=reason,
            ephemeral_public=r.take(KEY_BYTES),
            self_mask=r.take(SHARE_CIPHERTEXT_BYTES),
            mask_key=r.take(SHARE_CIPHERTEXT_BYTES),
            signature=r.take(SIGNATURE_BYTES),
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class MaskedInput(Message):
    """Stage 2, client -> server: y_u in Z_{2^b}^d, bit-packed (exactly b bits per
    entry), and the complaints about shares it rejected."""

    TYPE: ClassVar[int] = 5
    sender: int
    bits: int
    vector: np.ndarray
    complaints: tuple[Complaint, ...] = ()
    #: (holder, MAC) for every holder the sender masked with: the holder checks it before
    #: revealing the sender's self-mask share, so no holder ever reveals for an owner
    #: that did not mask with it. The MAC key comes from the pair's share-encryption
    #: secret, which the server does not know.
    #: Held as :class:`Tags` (a tuple of pairs is converted).
    tags: Sequence[tuple[int, bytes]] = ()
    #: The sender's signature over its tags (so a bad tag is attributable to it).
    tag_signature: bytes = bytes(SIGNATURE_BYTES)

    def sender_id(self) -> int:
        return self.sender

    @staticmethod
    def tags_payload(ctx: bytes, sender: int, tags: Sequence[tuple[int, bytes]]) -> bytes:
        return b"secure-fml/secagg/v2/tags" + ctx + struct.pack(">I", sender) + _tags_bytes(tags)

    def __post_init__(self) -> None:
        super().__post_init__()
        _sized(self.tag_signature, SIGNATURE_BYTES, "tag signature")
        if not 2 <= self.bits <= 62:
            raise InvalidMessage("bits out of range")
        dtype = mask_dtype(self.bits)
        if self.vector.dtype != dtype or self.vector.ndim != 1:
            raise InvalidMessage(f"masked vector must be a 1-D {np.dtype(dtype).name} array")
        if self.vector.shape[0] == 0 or self.vector.shape[0] >= _MAX_DIM:
            raise InvalidMessage("vector dimension out of range")
        _check_ids([c.dealer for c in self.complaints], "complaint dealers")
        object.__setattr__(self, "tags", Tags.of(self.tags))

    @property
    def tag_records(self) -> Tags:
        return self.tags  # type: ignore[return-value]

    def body(self) -> bytes:
        d = self.vector.shape[0]
        return (
            struct.pack(">II", self.sender, len(self.complaints))
            + b"".join(c.encode() for c in self.complaints)
            + _tags_bytes(self.tags)
            + self.tag_signature
            + struct.pack(">BI", self.bits, d)
            + pack_bits(self.vector, self.bits)
        )

    @classmethod
    def _parse_body(cls, r: _Reader, sid: bytes, rnd: int) -> MaskedInput:
        sender = r.u32()
        n = r.count(Complaint.BYTES)
        complaints = tuple(Complaint.decode(r) for _ in range(n))
        tags = _read_tags(r)
        tag_sig = r.take(SIGNATURE_BYTES)
        bits = r.u8()
        if not 2 <= bits <= 62:
            raise InvalidMessage("bits out of range")
        d = r.u32()
        if d == 0 or d >= _MAX_DIM:
            raise InvalidMessage("vector dimension out of range")
        nbytes = (d * bits + 7) // 8
        vec = unpack_bits(r.view(nbytes), bits, d).astype(mask_dtype(bits))
        return cls(
            session_id=sid,
            round_index=rnd,
            sender=sender,
            bits=bits,
            vector=vec,
            complaints=complaints,
            tags=tags,
            tag_signature=tag_sig,
        )


# ---------------------------------------------------------------- dispute


@dataclass(frozen=True, kw_only=True)
class Review(Message):
    """Review stage, server -> each live client: the masking tags of the owners whose
    shares it holds (each owner's MAC saying "I masked with you"). A holder reveals
    an owner's self-mask share only if it saw that owner's valid tag here."""

    TYPE: ClassVar[int] = 15
    recipient: int
    #: Held as :class:`Tags` (a tuple of pairs is converted).
    tags: Sequence[tuple[int, bytes]]

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "tags", Tags.of(self.tags))

    def body(self) -> bytes:
        return struct.pack(">I", self.recipient) + _tags_bytes(self.tags)

    @classmethod
    def _parse_body(cls, r: _Reader, sid: bytes, rnd: int) -> Review:
        return cls(session_id=sid, round_index=rnd, recipient=r.u32(), tags=_read_tags(r))


@dataclass(frozen=True, kw_only=True)
class ReviewResponse(Message):
    """Review stage, client -> server: the owners whose tag was missing or did not verify
    (quoted as received), signed so that a false accusation is attributable."""

    TYPE: ClassVar[int] = 16
    sender: int
    #: Held as :class:`Tags` (a tuple of pairs is converted).
    bad_tags: Sequence[tuple[int, bytes]]
    signature: bytes

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "bad_tags", Tags.of(self.bad_tags))
        _sized(self.signature, SIGNATURE_BYTES, "review signature")

    def sender_id(self) -> int:
        return self.sender

    @staticmethod
    def signed_payload(ctx: bytes, sender: int, bad_tags: Sequence[tuple[int, bytes]]) -> bytes:
        return (
            b"secure-fml/secagg/v2/review" + ctx + struct.pack(">I", sender) + _tags_bytes(bad_tags)
        )

    def payload(self, ctx: bytes) -> bytes:
        return self.signed_payload(ctx, self.sender, self.bad_tags)

    def body(self) -> bytes:
        return struct.pack(">I", self.sender) + _tags_bytes(self.bad_tags) + self.signature

    @classmethod
    def _parse_body(cls, r: _Reader, sid: bytes, rnd: int) -> ReviewResponse:
        return cls(
            session_id=sid,
            round_index=rnd,
            sender=r.u32(),
            bad_tags=_read_tags(r),
            signature=r.take(SIGNATURE_BYTES),
        )


@dataclass(frozen=True, kw_only=True)
class DisputeRequest(Message):
    """Dispute stage, server -> an accused dealer: the holders that rejected its shares
    (with their signed complaints) or its masking tags (with the tag they quote). The
    dealer opens a pair only if the complaint quotes exactly what it sent, so a server
    that altered a message in transit learns nothing from the opening."""

    TYPE: ClassVar[int] = 11
    dealer: int
    share_complaints: tuple[tuple[int, Complaint], ...] = ()
    #: Held as :class:`Tags` (a tuple of pairs is converted).
    tag_complaints: Sequence[tuple[int, bytes]] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_ids([i for i, _ in self.share_complaints], "complainers")
        object.__setattr__(self, "tag_complaints", Tags.of(self.tag_complaints))

    def body(self) -> bytes:
        return (
            struct.pack(">II", self.dealer, len(self.share_complaints))
            + b"".join(struct.pack(">I", i) + c.encode() for i, c in self.share_complaints)
            + _tags_bytes(self.tag_complaints)
        )

    @classmethod
    def _parse_body(cls, r: _Reader, sid: bytes, rnd: int) -> DisputeRequest:
        dealer = r.u32()
        n = r.count(4 + Complaint.BYTES)
        complaints = tuple((r.u32(), Complaint.decode(r)) for _ in range(n))
        return cls(
            session_id=sid,
            round_index=rnd,
            dealer=dealer,
            share_complaints=complaints,
            tag_complaints=_read_tags(r),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Opening:
    """The ephemeral private key of one dealer-holder pair."""

    holder: int
    ephemeral_private: bytes

    BYTES: ClassVar[int] = 4 + KEY_BYTES

    def __post_init__(self) -> None:
        _sized(self.ephemeral_private, KEY_BYTES, "ephemeral private key")

    def encode(self) -> bytes:
        return struct.pack(">I", self.holder) + self.ephemeral_private


@dataclass(frozen=True, kw_only=True)
class DisputeResponse(Message):
    """Dispute stage, dealer -> server: the openings of the disputed pairs, signed."""

    TYPE: ClassVar[int] = 12
    sender: int
    openings: tuple[Opening, ...]
    signature: bytes

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_ids([o.holder for o in self.openings], "openings")
        _sized(self.signature, SIGNATURE_BYTES, "opening signature")

    def sender_id(self) -> int:
        return self.sender

    @staticmethod
    def signed_payload(ctx: bytes, sender: int, openings: Sequence[Opening]) -> bytes:
        return (
            b"secure-fml/secagg/v2/openings"
            + ctx
            + struct.pack(">II", sender, len(openings))
            + b"".join(o.encode() for o in openings)
        )

    def payload(self, ctx: bytes) -> bytes:
        return self.signed_payload(ctx, self.sender, self.openings)

    def body(self) -> bytes:
        return (
            struct.pack(">II", self.sender, len(self.openings))
            + b"".join(o.encode() for o in self.openings)
            + self.signature
        )

    @classmethod
    def _parse_body(cls, r: _Reader, sid: bytes, rnd: int) -> DisputeResponse:
        sender = r.u32()
        n = r.count(Opening.BYTES)
        openings = tuple(
            Opening(holder=r.u32(), ephemeral_private=r.take(KEY_BYTES)) for _ in range(n)
        )
        return cls(
            session_id=sid,
            round_index=rnd,
            sender=sender,
            openings=openings,
            signature=r.take(SIGNATURE_BYTES),
        )


# ------------------------------------------------------------ consistency


def pack_status(status: np.ndarray) -> bytes:
    return pack_bits(np.asarray(status, dtype=np.uint64), 2)


def unpack_status(raw: bytes | memoryview, n: int) -> np.ndarray:
    return unpack_bits(raw, 2, n).astype(np.uint8)


@dataclass(frozen=True, kw_only=True, eq=False)
class ConsistencyRequest(Message):
    """Consistency stage, server -> each live client: the status of every roster member
    (2 bits each, roster order: absent / advertised / shared / alive), the Merkle root
    of every client's masking set, and the proof for the recipient's own set."""

    TYPE: ClassVar[int] = 6
    recipient: int
    status: np.ndarray
    graph_root: bytes
    proof: tuple[bytes, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        s = self.status
        if not isinstance(s, np.ndarray) or s.ndim != 1 or s.size == 0 or s.dtype != np.uint8:
            raise InvalidMessage("status must be a non-empty 1-D uint8 array")
        if int(s.max()) > STATUS_ALIVE:
            raise InvalidMessage("status entries must be in 0..3")
        _sized(self.graph_root, HASH_BYTES, "graph root")
        for p in self.proof:
            _sized(p, HASH_BYTES, "Merkle proof entry")

    @property
    def survivors_count(self) -> int:
        return int((self.status == STATUS_ALIVE).sum())

    def body(self) -> bytes:
        n = self.status.shape[0]
        return (
            struct.pack(">II", self.recipient, n)
            + pack_status(self.status)
            + self.graph_root
            + struct.pack(">I", len(self.proof))
            + b"".join(self.proof)
        )

    @classmethod
    def _parse_body(cls, r: _Reader, sid: bytes, rnd: int) -> ConsistencyRequest:
        recipient = r.u32()
        n = r.u32()
        if n == 0 or n >= 2**31:
            raise InvalidMessage("roster size out of range")
        status = unpack_status(r.view((2 * n + 7) // 8), n)
        root = r.take(HASH_BYTES)
        m = r.count(HASH_BYTES)
        proof = tuple(r.take(HASH_BYTES) for _ in range(m))
        return cls(
            session_id=sid,
            round_index=rnd,
            recipient=recipient,
            status=status,
            graph_root=root,
            proof=proof,
        )


def consistency_digest(ctx: bytes, status: np.ndarray, graph_root: bytes) -> bytes:
    """What every live client signs: the round context, the status vector, the graph."""
    return hashlib.sha256(
        b"secure-fml/secagg/v2/consistency" + ctx + pack_status(status) + graph_root
    ).digest()


@dataclass(frozen=True, kw_only=True)
class ConsistencyResponse(Message):
    """Consistency stage, client -> server: Ed25519 signature over the consistency digest."""

    TYPE: ClassVar[int] = 7
    sender: int
    signature: bytes

    def sender_id(self) -> int:
        return self.sender

    def __post_init__(self) -> None:
        super().__post_init__()
        _sized(self.signature, SIGNATURE_BYTES, "consistency signature")

    def body(self) -> bytes:
        return struct.pack(">I", self.sender) + self.signature

    @classmethod
    def _parse_body(cls, r: _Reader, sid: bytes, rnd: int) -> ConsistencyResponse:
        return cls(
            session_id=sid, round_index=rnd, sender=r.u32(), signature=r.take(SIGNATURE_BYTES)
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class QuorumCertificate(Message):
    """Quorum stage, server -> each signer: which roster members signed (n bits)."""

    TYPE: ClassVar[int] = 13
    signers: np.ndarray  # bool, roster order

    def __post_init__(self) -> None:
        super().__post_init__()
        s = self.signers
        if not isinstance(s, np.ndarray) or s.ndim != 1 or s.size == 0 or s.dtype != np.bool_:
            raise InvalidMessage("signers must be a non-empty 1-D bool array")

    def body(self) -> bytes:
        n = self.signers.shape[0]
        return struct.pack(">I", n) + np.packbits(self.signers, bitorder="little").tobytes()

    @classmethod
    def _parse_body(cls, r: _Reader, sid: bytes, rnd: int) -> QuorumCertificate:
        n = r.u32()
        if n == 0 or n >= 2**31:
            raise InvalidMessage("roster size out of range")
        raw = np.frombuffer(r.view((n + 7) // 8), dtype=np.uint8)
        bits = np.unpackbits(raw, bitorder="little")
        if bits[n:].any():
            raise InvalidMessage("nonzero padding bits after the signer bitmap")
        return cls(session_id=sid, round_index=rnd, signers=bits[:n].astype(bool))


@dataclass(frozen=True, kw_only=True)
class QuorumChallenge(Message):
    """Quorum stage, client -> server: the signers whose signatures it will verify,
    drawn with its own CSPRNG after it received the certificate."""

    TYPE: ClassVar[int] = 14
    sender: int
    indices: tuple[int, ...]  # client ids

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_ids(self.indices, "challenged signers")

    def sender_id(self) -> int:
        return self.sender

    def body(self) -> bytes:
        return struct.pack(">I", self.sender) + ids_bytes(self.indices)

    @classmethod
    def _parse_body(cls, r: _Reader, sid: bytes, rnd: int) -> QuorumChallenge:
        return cls(session_id=sid, round_index=rnd, sender=r.u32(), indices=_read_ids(r))


# --------------------------------------------------------------- unmasking


@dataclass(frozen=True, kw_only=True)
class UnmaskRequest(Message):
    """Unmasking stage, server -> each challenger: the challenged signatures, and, for
    the recipient's own partners, which are survivors and which dropped (these must
    match the status vector it signed)."""

    TYPE: ClassVar[int] = 8
    signatures: tuple[tuple[int, bytes], ...]
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_ids([i for i, _ in self.signatures], "signatures")
        for _, s in self.signatures:
            _sized(s, SIGNATURE_BYTES, "signature")
        _check_ids(self.survivors, "survivors")
        _check_ids(self.dropped, "dropped")

    def body(self) -> bytes:
        sigs = struct.pack(">I", len(self.signatures)) + b"".join(
            struct.pack(">I", i) + s for i, s in self.signatures
        )
        return sigs + ids_bytes(self.survivors) + ids_bytes(self.dropped)

    @classmethod
    def _parse_body(cls, r: _Reader, sid: bytes, rnd: int) -> UnmaskRequest:
        n = r.count(4 + SIGNATURE_BYTES)
        sigs = tuple((r.u32(), r.take(SIGNATURE_BYTES)) for _ in range(n))
        survivors = _read_ids(r)
        dropped = _read_ids(r)
        return cls(
            session_id=sid, round_index=rnd, signatures=sigs, survivors=survivors, dropped=dropped
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class RevealedKey:
    """The single-use AES key of one share a holder keeps: the server decrypts the
    dealer's signed ciphertext with it, so a holder cannot substitute a share."""

    owner: int
    kind: int
    key: bytes

    BYTES: ClassVar[int] = 5 + SYMMETRIC_KEY_BYTES

    def __post_init__(self) -> None:
        if self.kind not in (SHARE_KIND_SELF_MASK, SHARE_KIND_MASK_KEY):
            raise InvalidMessage("unknown share kind")
        _sized(self.key, SYMMETRIC_KEY_BYTES, "share key")

    def encode(self) -> bytes:
        return struct.pack(">IB", self.owner, self.kind) + self.key


class RevealedKeys(_Records[RevealedKey]):
    """A holder's :class:`RevealedKey` records, by owner."""

    __slots__ = ()
    SIZE = RevealedKey.BYTES
    WHAT = "revealed owners"

    def _decode(self, record: bytes) -> RevealedKey:
        return RevealedKey(owner=int.from_bytes(record[:4], "big"), kind=record[4], key=record[5:])

    def _check(self) -> None:
        if len(self) and not bool(
            np.isin(self.kinds(), (SHARE_KIND_SELF_MASK, SHARE_KIND_MASK_KEY)).all()
        ):
            raise InvalidMessage("unknown share kind")

    def kinds(self) -> np.ndarray:
        """Every record's share kind, in order."""
        if not self.raw:
            return np.zeros(0, dtype=np.uint8)
        return self._column(4, "u1").copy()


@dataclass(frozen=True, kw_only=True)
class UnmaskResponse(Message):
    """Unmasking stage, client -> server: share keys (self-mask kind for survivors,
    mask-key kind for dropped owners, never both for one owner), signed."""

    TYPE: ClassVar[int] = 9
    sender: int
    #: Held as :class:`RevealedKeys` (a tuple of keys is converted).
    keys: Sequence[RevealedKey]
    signature: bytes

    def sender_id(self) -> int:
        return self.sender

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "keys", RevealedKeys.of(self.keys))
        _sized(self.signature, SIGNATURE_BYTES, "unmask signature")

    @staticmethod
    def signed_payload(ctx: bytes, sender: int, keys: Sequence[RevealedKey]) -> bytes:
        return (
            b"secure-fml/secagg/v2/unmask"
            + ctx
            + struct.pack(">II", sender, len(keys))
            + RevealedKeys.of(keys).raw
        )

    @property
    def key_records(self) -> RevealedKeys:
        return self.keys  # type: ignore[return-value]

    def payload(self, ctx: bytes) -> bytes:
        return self.signed_payload(ctx, self.sender, self.keys)

    def body(self) -> bytes:
        return (
            struct.pack(">II", self.sender, len(self.keys)) + self.key_records.raw + self.signature
        )

    @classmethod
    def _parse_body(cls, r: _Reader, sid: bytes, rnd: int) -> UnmaskResponse:
        sender = r.u32()
        n = r.count(RevealedKey.BYTES)
        keys = RevealedKeys(r.take(n * RevealedKey.BYTES))
        return cls(
            session_id=sid,
            round_index=rnd,
            sender=sender,
            keys=keys,
            signature=r.take(SIGNATURE_BYTES),
        )


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


def reply_size_limit(
    stage: int, *, num_clients: int, degree: int, dimension: int, modulus_bits: int
) -> int:
    """Largest valid client reply of ``stage`` (a ``Stage`` value) in bytes, for a transport
    that refuses oversize streams before parsing: a client has at most ``degree`` holders
    and at most num_clients - 1 dealers (complaints, tags it checks, keys it reveals)."""
    h = _HEADER.size
    n1, k = num_clients - 1, degree
    limits = {
        0: h + PeerKey.BYTES + HASH_BYTES + 4 + 4 * k + SIGNATURE_BYTES,  # AdvertiseKeys
        1: h + 8 + EncryptedShare.BYTES * k + SIGNATURE_BYTES,  # ShareKeys
        2: h  # MaskedInput
        + 8
        + Complaint.BYTES * n1
        + 4
        + (4 + TAG_BYTES) * k
        + SIGNATURE_BYTES
        + 5
        + (dimension * modulus_bits + 7) // 8,
        3: h + 8 + (4 + TAG_BYTES) * n1 + SIGNATURE_BYTES,  # ReviewResponse
        4: h + 8 + Opening.BYTES * k + SIGNATURE_BYTES,  # DisputeResponse
        5: h + 4 + SIGNATURE_BYTES,  # ConsistencyResponse
        6: h + 8 + 4 * n1,  # QuorumChallenge
        7: h + 8 + RevealedKey.BYTES * n1 + SIGNATURE_BYTES,  # UnmaskResponse
    }
    if stage not in limits:
        raise InvalidMessage(f"no client reply in stage {stage}")
    return limits[stage]


_BY_TYPE: dict[int, type[Message]] = {
    c.TYPE: c
    for c in (
        AdvertiseKeys,
        NeighbourKeys,
        ShareKeys,
        ShareRouting,
        MaskedInput,
        Review,
        ReviewResponse,
        DisputeRequest,
        DisputeResponse,
        ConsistencyRequest,
        ConsistencyResponse,
        QuorumCertificate,
        QuorumChallenge,
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
