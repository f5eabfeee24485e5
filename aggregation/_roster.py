"""The roster of a round: the clients that may take part, with their identity keys."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aggregation._primitives import validate_ed25519_public
from privacy.errors import InvalidMessage, PolicyViolation

__all__ = ["Roster"]

_MAX_ID = 2**31 - 1


class Roster(Mapping[int, Ed25519PublicKey]):
    """An immutable, validated ``client id -> Ed25519 identity key`` mapping.

    Every id is an int in [0, 2^31 - 1) and every identity key is distinct and not
    of small order: a roster that lists one identity under two ids (a Sybil roster,
    which would let one party hold several of the n places the parameters count)
    is refused with :class:`~privacy.errors.PolicyViolation`. ``digest`` binds the
    whole roster (ids and keys) into every signature of the round, so clients shown
    different rosters cannot complete a round together.

    Build one per round and pass it as ``identity_keys`` to every session of that
    round: a plain mapping is accepted too, but then each session validates and
    hashes the whole roster itself (O(n) per client). The client pipeline does this
    once per process and roster (``secure_fml.pipeline.VERIFIED_ROSTERS``).
    """

    def __init__(self, identity_keys: Mapping[int, Ed25519PublicKey]) -> None:
        if isinstance(identity_keys, Roster):
            self._keys: dict[int, Ed25519PublicKey] = dict(identity_keys._keys)
            self._raw: dict[int, bytes] = dict(identity_keys._raw)
            self.ids: tuple[int, ...] = identity_keys.ids
            self.digest: bytes = identity_keys.digest
            self._pos: dict[int, int] = dict(identity_keys._pos)
            return
        keys: dict[int, Ed25519PublicKey] = {}
        raw: dict[int, bytes] = {}
        owner: dict[bytes, int] = {}
        for cid, key in identity_keys.items():
            if not isinstance(cid, int) or isinstance(cid, bool) or not 0 <= cid < _MAX_ID:
                raise InvalidMessage(f"roster id {cid!r} is not an int in [0, 2^31 - 1)")
            if not isinstance(key, Ed25519PublicKey):
                raise InvalidMessage(f"roster entry {cid} is not an Ed25519 public key")
            b = validate_ed25519_public(key, what=f"identity key of {cid}")
            if b in owner:
                raise PolicyViolation(
                    f"the roster lists one identity under ids {owner[b]} and {cid}: a Sybil "
                    "roster would let one party hold several places; refused"
                )
            owner[b] = cid
            keys[cid] = key
            raw[cid] = b
        self.ids = tuple(sorted(keys))
        self._keys = {i: keys[i] for i in self.ids}
        self._raw = {i: raw[i] for i in self.ids}
        self._pos = {i: p for p, i in enumerate(self.ids)}
        h = hashlib.sha256(b"secure-fml/secagg/v2/roster")
        h.update(struct.pack(">I", len(self.ids)))
        for i in self.ids:
            h.update(struct.pack(">I", i) + raw[i])
        self.digest = h.digest()

    def __getitem__(self, key: int) -> Ed25519PublicKey:
        return self._keys[key]

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def position(self, client_id: int) -> int:
        """Index of ``client_id`` in the sorted roster (the order of status vectors)."""
        return self._pos[client_id]

    def raw(self, client_id: int) -> bytes:
        return self._raw[client_id]

    @property
    def n(self) -> int:
        return len(self.ids)
