"""Server side of SecAgg / SecAgg+ as a pure state machine.

The server routes messages, tracks the survivor sets U1 (advertised) ⊇ U2 (shared)
⊇ U3 (masked input) of Bonawitz et al., resolves disputes, publishes the status
vector every live client signs, certifies it with a quorum of signatures, and in
the last stage decrypts the share keys the holders reveal: self-mask shares of
the survivors, mask-key shares of the clients that dropped after sharing. That is
all it needs to strip the masks from the sum; for no client does it obtain both.

An honest server validates everything it relays, so an honest client never sees a
message the server could have refused: an invalid key, a bad share message or a
missing tag is refused at the stage it arrives (and attributed, see
:mod:`aggregation._evidence`), and a disputed share or tag excludes exactly one of
the two parties, whoever the opening of the pair shows to have lied.
"""

from __future__ import annotations

import dataclasses
import logging
import struct
import time
from collections.abc import Container, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aggregation import _primitives as P
from aggregation._accumulate import HeldInputs, SpilledBytes
from aggregation._client import (
    graph_leaf,
    masking_tag,
    pad_seed,
    seed_commitment,
    self_mask_key,
    share_aad,
    share_keys_of,
)
from aggregation._config import SecAggConfig, Stage
from aggregation._evidence import Evidence, MisbehaviourKind
from aggregation._messages import (
    SHARE_KIND_MASK_KEY,
    SHARE_KIND_SELF_MASK,
    STATUS_ABSENT,
    STATUS_ADVERTISED,
    STATUS_ALIVE,
    STATUS_SHARED,
    AdvertiseKeys,
    Complaint,
    ConsistencyRequest,
    ConsistencyResponse,
    DisputeRequest,
    DisputeResponse,
    EncryptedShare,
    EncryptedShares,
    Ids,
    MaskedInput,
    Message,
    NeighbourKeys,
    QuorumCertificate,
    QuorumChallenge,
    RevealedKeys,
    Review,
    ReviewResponse,
    RoutedShares,
    ShareKeys,
    ShareRouting,
    Tags,
    UnmaskRequest,
    UnmaskResponse,
    _Records,
    consistency_digest,
    round_context,
)
from aggregation._roster import Roster
from aggregation._session import Aggregate, AggregationServer, Outbox
from privacy.errors import (
    ConfigError,
    ConsistencyCheckFailed,
    DropoutThresholdNotMet,
    InvalidMessage,
    PolicyViolation,
    ProtocolAbort,
    ProtocolError,
)

__all__ = ["ServerSession"]

_log = logging.getLogger(__name__)


def _u32(v: int) -> bytes:
    return struct.pack(">I", v)


_NO_IDS = np.zeros(0, dtype=np.int64)
_NO_IDS32 = np.zeros(0, dtype=np.int32)


class _Regrouped:
    """The records of many senders' messages, regrouped by the client each one is for.

    ``records[s]`` are sender ``s``'s records (shares by holder, tags by holder, revealed
    keys by owner). The table lists every record's sender and position, sorted by target
    then sender, as two int32 arrays, and each target's slice of them (CSR: the sorted
    distinct targets and where each one's records start). At n = 10,000 the server
    regroups ~10^6 records at 8 bytes each, holding no Python object per record (as
    objects they cost ~1 KB each; as three int64 columns, 24 bytes).
    """

    def __init__(
        self, records: Mapping[int, _Records[Any]], *, targets: np.ndarray | None = None
    ) -> None:
        senders = sorted(records)
        cols = [records[s].ids().astype(np.int32) for s in senders]
        sizes = [len(c) for c in cols]
        target = np.concatenate(cols) if cols else _NO_IDS32
        sender = np.repeat(np.asarray(senders, dtype=np.int32), sizes)
        pos = np.concatenate([np.arange(k, dtype=np.int32) for k in sizes]) if cols else _NO_IDS32
        if targets is not None:
            keep = np.isin(target, targets)
            target, sender, pos = target[keep], sender[keep], pos[keep]
        order = np.lexsort((sender, target))
        target = target[order]
        self.sender, self.pos = sender[order], pos[order]
        del order
        #: The distinct targets (ascending) and where each one's records start in
        #: sender/pos (one entry more: the end).
        self._targets, starts = np.unique(target, return_index=True)
        self._starts = np.append(starts, target.size).astype(np.int64)
        self.records = records

    def _span(self, target: int) -> slice:
        i = int(np.searchsorted(self._targets, target))
        if i == self._targets.size or int(self._targets[i]) != target:
            return slice(0, 0)
        return slice(int(self._starts[i]), int(self._starts[i + 1]))

    def senders(self, target: int) -> np.ndarray:
        """Who sent a record for ``target`` (ascending, int64)."""
        return self.sender[self._span(target)].astype(np.int64)

    def items(self, target: int) -> Iterator[tuple[int, bytes]]:
        """(sender, record after its id) of every record for ``target``, by sender."""
        sl = self._span(target)
        recs = self.records
        for s, p in zip(self.sender[sl].tolist(), self.pos[sl].tolist(), strict=True):
            yield s, recs[s].record(p)

    def gather(self, target: int, skip: Container[int] = ()) -> bytes:
        """The records for ``target``, each under its sender's id instead of the target's:
        the raw records of the message the server forwards to ``target``."""
        return b"".join(_u32(s) + rec for s, rec in self.items(target) if s not in skip)

    def __len__(self) -> int:
        """How many records the table regroups."""
        return int(self.sender.size)


class _Forwarded(RoutedShares):
    """The shares forwarded to one holder, as a view of the regrouped table: gathered
    each time they are read (sent, pickled to a worker, iterated), never held. The
    table is immutable, so every read gives the same records. A SecAgg+ server's routing
    outbox then holds n small views instead of n·k forwarded records (8.4 MB at n =
    1,000, k = 86; see benchmarks/results/driver_memory.md). It compares, hashes and
    pickles as the :class:`RoutedShares` it shows."""

    __slots__ = ("_table", "_target")

    def __init__(self, table: _Regrouped, target: int) -> None:
        self._table = table
        self._target = target

    @property
    def _raw(self) -> bytes:  # type: ignore[override]  # gathered on read, never stored
        return self._table.gather(self._target)

    def __len__(self) -> int:  # from the table, without gathering (the wire header asks)
        return int(self._table.senders(self._target).size)


class _SpilledView:
    """Records a server keeps after checking them, as it keeps them: the bytes in the
    round's spill store (memory flat in n beyond a small budget), their ids in memory
    as int32. A read fetches what it needs: one record (routing, a tag, a revealed key),
    or all of them (the evidence of a dispute). Mixed into a record type, it compares,
    hashes and pickles as the records it shows."""

    __slots__ = ()
    SIZE: ClassVar[int]
    _ids: np.ndarray
    _key: int
    _store: SpilledBytes

    def __init__(self, store: SpilledBytes, key: int, records: _Records[Any]) -> None:
        store.put(key, records.raw)
        ids = records.ids().astype(np.int32)
        ids.setflags(write=False)
        # the concrete classes declare these slots (a mixin's own must stay empty)
        self._store, self._key, self._ids = store, key, ids  # type: ignore[misc]

    @property
    def _raw(self) -> bytes:  # read from the store, not held
        return self._store.get(self._key)

    def ids(self) -> np.ndarray:
        return self._ids.astype(np.int64)

    def find(self, client_id: int) -> int | None:
        ids = self._ids
        i = int(np.searchsorted(ids, client_id))
        return i if i < ids.size and int(ids[i]) == client_id else None

    def __len__(self) -> int:
        return int(self._ids.size)

    def record(self, i: int) -> bytes:
        s = self.SIZE
        return self._store.read(self._key, i * s + 4, s - 4)


class _SpilledShares(_SpilledView, EncryptedShares):  # type: ignore[override]
    """A dealer's checked shares (routed to their holders, opened in disputes)."""

    __slots__ = ("_ids", "_key", "_store")


class _SpilledTags(_SpilledView, Tags):  # type: ignore[override]
    """An owner's checked masking tags (sent to the holders for review)."""

    __slots__ = ("_ids", "_key", "_store")


class _SpilledKeys(_SpilledView, RevealedKeys):  # type: ignore[override]
    """A holder's checked revealed share keys (decrypting the shares it held)."""

    __slots__ = ("_ids", "_key", "_store")


class ServerSession(AggregationServer):
    """The server of one round, driven through the uniform stage interface
    (:meth:`receive`, :meth:`close_stage`, :attr:`expected`; see
    :mod:`aggregation._session`).

    ``min_inputs`` is the smallest number of masked inputs the caller accepts
    (e.g. the survivors distributed noise was sized for): with fewer, the round
    aborts before anyone is asked to unmask. The server also holds itself to the
    policy its ``config`` describes (:meth:`SecAggConfig.policy`): parameters
    weaker than that policy are refused with :class:`~privacy.errors.ConfigError`.

    :attr:`evidence` lists every offence the session attributed (proven ones can be
    re-checked with :func:`~aggregation.verify_evidence`); :attr:`excluded` the
    clients it removed from the round for them.
    """

    def __init__(
        self,
        config: SecAggConfig,
        *,
        identity_keys: Mapping[int, Ed25519PublicKey],
        session_id: bytes,
        round_index: int,
        model_hash: bytes,
        dimension: int,
        min_inputs: int | None = None,
        input_memory_bytes: int = 4 << 20,
        share_memory_bytes: int = 4 << 20,
    ) -> None:
        for name, budget in (
            ("input_memory_bytes", input_memory_bytes),
            ("share_memory_bytes", share_memory_bytes),
        ):
            if not isinstance(budget, int) or isinstance(budget, bool) or budget < 0:
                raise ConfigError(f"{name} must be an int >= 0")
        if min_inputs is not None and (
            not isinstance(min_inputs, int) or isinstance(min_inputs, bool) or min_inputs < 1
        ):
            raise ConfigError("min_inputs must be None or an int >= 1")
        if not isinstance(model_hash, bytes) or len(model_hash) != 32:
            raise ConfigError("model_hash must be 32 bytes (SHA-256)")
        if not isinstance(dimension, int) or isinstance(dimension, bool) or dimension < 1:
            raise ConfigError("dimension must be a positive int")
        if not isinstance(session_id, bytes) or len(session_id) != 16:
            raise ConfigError("session_id must be 16 bytes")
        try:
            roster = identity_keys if isinstance(identity_keys, Roster) else Roster(identity_keys)
        except PolicyViolation as exc:
            raise ConfigError(str(exc)) from None
        if config.num_clients != roster.n:
            raise ConfigError(f"config is for {config.num_clients} clients, roster has {roster.n}")
        policy = config.policy()
        try:
            self.analysis = policy.check(roster.n, config.k, config.t, config.modulus_bits)
        except PolicyViolation as exc:
            raise ConfigError(f"the parameters fail the config's own policy: {exc}") from None
        self.config = config
        self.roster = roster
        self.session_id = session_id
        self.round_index = round_index
        self.model_hash = model_hash
        self.dimension = dimension
        self.min_inputs = min_inputs
        self.required = self.analysis.required_survivors
        self.ctx = round_context(
            session_id=session_id,
            round_index=round_index,
            roster_digest=roster.digest,
            model_hash=model_hash,
            mode=config.mode.value,
            num_clients=roster.n,
            degree=config.k,
            threshold=config.t,
            modulus_bits=config.modulus_bits,
        )
        self._stage = Stage.ADVERTISE_KEYS
        self._awaiting: set[int] = set(roster.ids)
        self._adverts: dict[int, AdvertiseKeys] = {}
        self._draws: dict[int, Sequence[int]] = {}
        #: Each dealer's signed shares, their records spilled to disk beyond
        #: ``share_memory_bytes`` (see _SpilledView); so are the tags and the revealed
        #: keys, each in a store of its own with the same budget.
        self._shares: dict[int, ShareKeys] = {}
        self._share_store = SpilledBytes(memory_bytes=share_memory_bytes)
        self._tag_store = SpilledBytes(memory_bytes=share_memory_bytes)
        self._key_store = SpilledBytes(memory_bytes=share_memory_bytes)
        #: U2, and the shares of U2 regrouped by holder (set when sharing closes).
        self._u2: np.ndarray = _NO_IDS
        self._routed: _Regrouped | None = None
        #: Each masked input without its vector (its tags, spilled, and complaints: what
        #: the review, the disputes and their evidence use); the vectors are in _sum.
        self._inputs: dict[int, MaskedInput] = {}
        dtype = P.mask_dtype(config.modulus_bits)
        #: The running sum of every masked input received, mod the word size (which
        #: 2^bits divides: the final mask reduces it mod 2^bits).
        self._sum = np.zeros(dimension, dtype=dtype)
        #: The vectors in _sum that an exclusion may still take out (see _open_consistency).
        self._held: HeldInputs | None = HeldInputs(
            dtype=dtype, dimension=dimension, memory_bytes=input_memory_bytes
        )
        self._rejected: dict[int, dict[int, Complaint]] = {}
        self._reviews: dict[int, ReviewResponse] = {}
        self._share_disputes: dict[int, list[int]] = {}
        self._tag_disputes: dict[int, list[int]] = {}
        self._openings: dict[int, DisputeResponse] = {}
        self._excluded: dict[int, MisbehaviourKind] = {}
        self._status = np.zeros(roster.n, dtype=np.uint8)
        self._alive: tuple[int, ...] = ()
        #: Everyone each member of U2 masked with (int32, ascending).
        self._partners: dict[int, np.ndarray] = {}
        self._digest = b""
        self._signatures: dict[int, bytes] = {}
        self._challenges: dict[int, tuple[int, ...]] = {}
        #: Each holder's checked reveal, its keys spilled.
        self._reveals: dict[int, UnmaskResponse] = {}
        #: The revealed keys regrouped by owner (set when unmasking closes).
        self._revealed: _Regrouped | None = None
        self.evidence: list[Evidence] = []
        self.unmask_seconds = 0.0

    # ----------------------------------------------------------- properties

    @property
    def stage(self) -> Stage:
        return self._stage

    @property
    def expected(self) -> frozenset[int]:
        return frozenset(self._awaiting)

    def awaits(self, client: int) -> bool:
        return client in self._awaiting

    def awaiting(self) -> int:
        return len(self._awaiting)

    @property
    def survivors(self) -> tuple[int, ...]:
        return self._alive

    @property
    def excluded(self) -> tuple[int, ...]:
        return tuple(sorted(self._excluded))

    @property
    def status(self) -> np.ndarray:
        """The agreed status vector (roster order), once published."""
        return self._status.copy()

    def draws(self, client_id: int) -> tuple[int, ...]:
        """The holders ``client_id`` drew, as it announced them."""
        return tuple(self._draws[client_id])

    def partners(self, client_id: int) -> tuple[int, ...]:
        """Everyone ``client_id`` masked with (its masking set in the agreed graph)."""
        return tuple(self._partners[client_id].tolist())

    neighbours = partners

    def _record(
        self,
        kind: MisbehaviourKind,
        offender: int,
        detail: str,
        parts: tuple[tuple[str, bytes], ...],
        *,
        proven: bool = True,
        exclude: bool = True,
    ) -> None:
        self.evidence.append(
            Evidence(
                kind=kind,
                offender=offender,
                proven=proven,
                detail=detail,
                context=self.ctx,
                parts=parts,
            )
        )
        if exclude:
            self._excluded[offender] = kind
        _log.warning("client %d: %s (%s)", offender, kind.value, detail)

    def _abort(self, exc: type[ProtocolAbort], message: str) -> ProtocolAbort:
        if self._held is not None:  # the round ends here: nothing is subtracted any more
            self._held.close()
            self._held = None
        err = exc(message)
        err.evidence = tuple(self.evidence)  # type: ignore[attr-defined]
        return err

    # -------------------------------------------------- uniform stage interface

    def receive(self, message: Message) -> None:
        """Ingest one reply of the open stage (see :class:`AggregationServer`)."""
        sender = message.sender_id()
        if sender not in self._awaiting:
            raise InvalidMessage(
                f"no {type(message).__name__} expected from client {sender} in stage "
                f"{self._stage.name} (duplicate, late or not a participant)"
            )
        handler = {
            Stage.ADVERTISE_KEYS: (AdvertiseKeys, self._receive_advertisement),
            Stage.SHARE_KEYS: (ShareKeys, self._receive_shares),
            Stage.MASKED_INPUT: (MaskedInput, self._receive_masked_input),
            Stage.REVIEW: (ReviewResponse, self._receive_review),
            Stage.DISPUTE: (DisputeResponse, self._receive_opening),
            Stage.CONSISTENCY_CHECK: (ConsistencyResponse, self._receive_consistency),
            Stage.QUORUM_CHALLENGE: (QuorumChallenge, self._receive_challenge),
            Stage.UNMASKING: (UnmaskResponse, self._receive_unmask),
        }.get(self._stage)
        try:
            if handler is None or not isinstance(message, handler[0]):
                raise InvalidMessage(
                    f"{type(message).__name__} is not a reply of stage {self._stage.name}"
                )
            if message.session_id != self.session_id or message.round_index != self.round_index:
                raise InvalidMessage("message is for another session or round (replay?)")
            handler[1](message)  # type: ignore[operator]
        finally:
            # One reply per client and stage: a refused reply counts as the sender's
            # answer (it is then treated as silent), so it cannot be retried with
            # variations until something passes.
            self._awaiting.discard(sender)

    def withdraw(self, client: int) -> None:
        """``client`` leaves the round in the open stage: silent from now on."""
        if client not in self._awaiting:
            raise InvalidMessage(
                f"client {client} may not withdraw in stage {self._stage.name}: it is not "
                "awaited (duplicate, late or not a participant)"
            )
        self._awaiting.discard(client)

    def close_stage(self) -> Outbox | Aggregate:
        """Close the open stage and return the next stage's messages, or the sum."""
        st = self._stage
        if st is Stage.ADVERTISE_KEYS:
            out: Outbox | Aggregate = self._close_advertising()
        elif st is Stage.SHARE_KEYS:
            out = self._close_sharing()
        elif st is Stage.MASKED_INPUT:
            out = self._close_masked_input()
        elif st is Stage.REVIEW:
            out = self._close_review()
        elif st is Stage.DISPUTE:
            out = self._close_dispute()
        elif st is Stage.CONSISTENCY_CHECK:
            out = self._close_consistency()
        elif st is Stage.QUORUM_CHALLENGE:
            out = self._close_challenge()
        elif st is Stage.UNMASKING:
            out = self._close_unmasking()
            self._awaiting = set()
            return out
        else:
            raise ProtocolError(f"no stage to close in {st.name}")
        if isinstance(out, Outbox):
            self._stage = out.stage
            self._awaiting = set(out.messages)
        return out

    def _need(self, count: int, what: str) -> None:
        if count < self.required:
            raise self._abort(
                DropoutThresholdNotMet,
                f"{count} of {self.roster.n} clients {what}; the round needs {self.required}",
            )

    def _hdr(self) -> dict[str, object]:
        return {"session_id": self.session_id, "round_index": self.round_index}

    # --------------------------------------------------------------- stage 0

    def _receive_advertisement(self, m: AdvertiseKeys) -> None:
        u = m.client_id
        pk = self.roster.get(u)
        if pk is None:
            raise InvalidMessage(f"unknown client {u}")
        P.verify(pk, m.key.signature, m.key.payload(self.ctx), what=f"keys of {u}")
        P.verify(
            pk,
            m.commitment_signature,
            AdvertiseKeys.commitment_payload(self.ctx, u, m.seed_commitment, m.neighbours),
            what=f"commitments of {u}",
        )
        parts = (("advertisement", m.to_bytes()), ("degree", _u32(self.config.k)))
        try:
            P.validate_x25519_public(m.key.enc_public, what=f"encryption key of {u}")
            P.validate_x25519_public(m.key.mask_public, what=f"mask key of {u}")
        except InvalidMessage as exc:
            self._record(MisbehaviourKind.BAD_ADVERTISEMENT, u, str(exc), parts)
            raise
        if self.config.complete:
            if m.neighbours:
                msg = f"client {u} announced a holder draw in a complete-graph round"
                self._record(MisbehaviourKind.BAD_ADVERTISEMENT, u, msg, parts)
                raise InvalidMessage(msg)
            draws: Sequence[int] = tuple(i for i in self.roster.ids if i != u)
        else:
            nb = m.neighbours
            if len(nb) != self.config.k or u in nb or any(i not in self.roster for i in nb):
                msg = f"client {u} announced a draw that is not {self.config.k} other members"
                self._record(MisbehaviourKind.BAD_ADVERTISEMENT, u, msg, parts)
                raise InvalidMessage(msg)
            draws = nb
        self._adverts[u] = m
        self._draws[u] = draws

    def _close_advertising(self) -> Outbox:
        u1 = sorted(self._adverts)
        self._need(len(u1), "advertised keys")
        keys = {u: self._adverts[u].key for u in u1}
        msgs = {
            u: NeighbourKeys(
                **self._hdr(),  # type: ignore[arg-type]
                recipient=u,
                keys=tuple(keys[h] for h in self._draws[u] if h in keys),
            )
            for u in u1
        }
        return Outbox(Stage.SHARE_KEYS, msgs)

    # --------------------------------------------------------------- stage 1

    def _receive_shares(self, m: ShareKeys) -> None:
        u = m.sender
        if u not in self._adverts:
            raise InvalidMessage(f"shares from {u}, which did not advertise keys")
        P.verify(self.roster[u], m.signature, m.payload(self.ctx), what=f"shares of {u}")
        want = tuple(h for h in self._draws[u] if h in self._adverts)
        got = tuple(m.records.ids().tolist())

        def parts() -> tuple[tuple[str, bytes], ...]:
            # The evidence, encoded only when there is misbehaviour to record.
            return (("shares", m.to_bytes()), ("recipients", b"".join(_u32(h) for h in want)))

        if got != want:
            msg = f"client {u} dealt to {len(got)} holders, not its {len(want)} drawn ones"
            self._record(MisbehaviourKind.BAD_SHARE_MESSAGE, u, msg, parts())
            raise InvalidMessage(msg)
        for s in m.shares:
            try:
                P.validate_x25519_public(s.ephemeral_public, what=f"ephemeral key of {u}")
            except InvalidMessage as exc:
                self._record(MisbehaviourKind.BAD_SHARE_MESSAGE, u, str(exc), parts())
                raise
        self._shares[u] = dataclasses.replace(
            m, shares=_SpilledShares(self._share_store, u, m.records)
        )

    def _dealt(self, w: int, v: int) -> EncryptedShare:
        """The share dealer ``w`` dealt holder ``v``, as ``w`` signed it."""
        recs = self._shares[w].records
        i = recs.find(v)
        if i is None:
            raise ProtocolError(f"client {w} dealt no share to {v}")
        return recs[i]

    def _close_sharing(self) -> Outbox:
        u2 = sorted(self._shares)
        self._need(len(u2), "shared keys")
        self._u2 = np.asarray(u2, dtype=np.int64)
        routed = self._routed = _Regrouped(
            {w: self._shares[w].records for w in u2}, targets=self._u2
        )
        msgs = {}
        for v in u2:
            known = set(self._draws[v])  # keys it received at stage 1 (if they advertised)
            msgs[v] = ShareRouting(
                **self._hdr(),  # type: ignore[arg-type]
                recipient=v,
                shares=_Forwarded(routed, v),
                shared=Ids(self._shared_by(v).astype(">u4").tobytes()),
                keys=tuple(
                    self._adverts[w].key for w in routed.senders(v).tolist() if w not in known
                ),
            )
        return Outbox(Stage.MASKED_INPUT, msgs)

    # --------------------------------------------------------------- stage 2

    def _dealers_of(self, v: int) -> np.ndarray:
        """The members of U2 that dealt ``v`` a share (``v`` in U2; ascending)."""
        return _NO_IDS if self._routed is None else self._routed.senders(v)

    def _shared_by(self, u: int) -> np.ndarray:
        """The holders of ``u``'s shares that are in U2 (ascending)."""
        ids = self._shares[u].records.ids()
        return ids[np.isin(ids, self._u2)]

    def _tag(self, w: int, v: int) -> bytes | None:
        """The masking tag owner ``w`` gave holder ``v`` with its input, or None."""
        m = self._inputs.get(w)
        return None if m is None else m.tag_records.tag(v)

    def _receive_masked_input(self, m: MaskedInput) -> None:
        u = m.sender
        if m.bits != self.config.modulus_bits or m.vector.shape[0] != self.dimension:
            raise InvalidMessage("masked input has the wrong modulus or dimension")
        dealers = set(self._dealers_of(u).tolist()) if m.complaints else set()
        for c in m.complaints:
            if c.dealer not in dealers:
                raise InvalidMessage(f"complaint by {u} about {c.dealer}, which dealt it nothing")
            P.verify(self.roster[u], c.signature, c.payload(self.ctx, u), what=f"complaint of {u}")
        if u not in self._shares or not np.array_equal(m.tag_records.ids(), self._shared_by(u)):
            raise InvalidMessage(f"client {u} must tag exactly the holders that shared")
        P.verify(
            self.roster[u],
            m.tag_signature,
            MaskedInput.tags_payload(self.ctx, u, m.tags),
            what=f"tags of {u}",
        )
        held = self._held
        if held is None:
            raise ProtocolError("masked input after the masked inputs were settled")
        # Folded now, so the server holds O(d) words of inputs whatever n is. Any client
        # of U3 can still be excluded after this (a complaint at review or a dispute it
        # loses or does not answer, see _open_consistency), and an excluded client's y_u
        # must then leave the sum: its self mask is never rebuilt. So its vector is also
        # held aside (spilled to disk beyond a small budget) until exclusions settle.
        held.put(u, m.vector)
        np.add(self._sum, m.vector, out=self._sum)
        self._inputs[u] = dataclasses.replace(
            m,
            vector=np.zeros(1, dtype=m.vector.dtype),
            tags=_SpilledTags(self._tag_store, u, m.tag_records),
        )
        if m.complaints:
            self._rejected[u] = {c.dealer: c for c in m.complaints}

    def _held_by(self, v: int) -> np.ndarray:
        """Owners whose shares holder ``v`` accepted (server view; ascending)."""
        dealers = self._dealers_of(v)
        rej = self._rejected.get(v)
        if not rej:
            return dealers
        return dealers[~np.isin(dealers, list(rej))]

    def _close_masked_input(self) -> Outbox:
        u3 = sorted(self._inputs)
        if self.min_inputs is not None and len(u3) < self.min_inputs:
            # Distributed noise was sized for at least min_inputs contributions: fewer
            # would under-noise the sum, so nobody may be asked to unmask it.
            raise self._abort(
                DropoutThresholdNotMet,
                f"{len(u3)} masked inputs, the round needs at least {self.min_inputs}",
            )
        self._need(len(u3), "sent masked inputs")
        for v in u3:
            for w, c in self._rejected.get(v, {}).items():
                dealt = self._dealt(w, v)
                quoted = dealt.ephemeral_public + dealt.self_mask + dealt.mask_key
                if not P.constant_time_equal(c.quoted(), quoted):
                    # What this server forwarded is what the dealer signed, so the holder
                    # misquotes; a third party cannot exclude an altered channel, hence
                    # an accusation, not a proof.
                    self._record(
                        MisbehaviourKind.MISQUOTED_COMPLAINT,
                        v,
                        f"client {v} quotes a share that {w} never dealt",
                        (
                            ("shares", self._shares[w].to_bytes()),
                            ("holder", _u32(v)),
                            ("complaint", c.encode()),
                        ),
                        proven=False,
                    )
                elif w in self._inputs:
                    self._share_disputes.setdefault(w, []).append(v)
        live = [v for v in u3 if v not in self._excluded]
        # Each holder gets the tags of the owners whose shares it accepted. An owner
        # tagged exactly its holders in U2, each of which it dealt to, so it is among
        # their dealers: only the holder's rejections are left out.
        tags = _Regrouped({w: m.tag_records for w, m in self._inputs.items()})
        msgs = {}
        for v in live:
            raw = tags.gather(v, skip=self._rejected.get(v, {}))
            msgs[v] = Review(**self._hdr(), recipient=v, tags=Tags(raw))  # type: ignore[arg-type]
        return Outbox(Stage.REVIEW, msgs)

    # ----------------------------------------------------------- review, dispute

    def _receive_review(self, m: ReviewResponse) -> None:
        v = m.sender
        P.verify(self.roster[v], m.signature, m.payload(self.ctx), what=f"review of {v}")
        held = set(self._held_by(v).tolist()) if m.bad_tags else set()
        for w, tag in m.bad_tags:
            given = self._tag(w, v)
            if w not in held or given is None:
                raise InvalidMessage(f"client {v} reports a tag {w} never gave it")
            if not P.constant_time_equal(tag, given):
                raise InvalidMessage(f"client {v} misquotes the tag of {w}")
        self._reviews[v] = m

    def _tag_given(self, w: int, v: int) -> bytes:
        """The tag of a disputed pair (one the holder quoted, so it exists)."""
        tag = self._tag(w, v)
        if tag is None:
            raise ProtocolError(f"client {w} gave {v} no tag")
        return tag

    def _close_review(self) -> Outbox:
        for v, m in self._reviews.items():
            for w, _ in m.bad_tags:
                self._tag_disputes.setdefault(w, []).append(v)
        accused = sorted(
            (set(self._share_disputes) | set(self._tag_disputes)) - set(self._excluded)
        )
        if not accused:
            return self._open_consistency()
        msgs = {}
        for w in accused:
            share_c = tuple(
                (v, self._rejected[v][w])
                for v in sorted(self._share_disputes.get(w, ()))
                if v not in self._excluded
            )
            tag_c = tuple(
                (v, self._tag_given(w, v))
                for v in sorted(self._tag_disputes.get(w, ()))
                if v not in self._excluded
            )
            msgs[w] = DisputeRequest(
                **self._hdr(),  # type: ignore[arg-type]
                dealer=w,
                share_complaints=share_c,
                tag_complaints=tag_c,
            )
        return Outbox(Stage.DISPUTE, msgs)

    def _receive_opening(self, m: DisputeResponse) -> None:
        w = m.sender
        P.verify(self.roster[w], m.signature, m.payload(self.ctx), what=f"openings of {w}")
        self._openings[w] = m

    def _close_dispute(self) -> Outbox:
        for w in sorted(set(self._share_disputes) | set(self._tag_disputes)):
            if w in self._excluded:
                continue
            resp = self._openings.get(w)
            opened = {o.holder: o.ephemeral_private for o in resp.openings} if resp else {}
            for v, is_tag in sorted(
                [(v, False) for v in self._share_disputes.get(w, ())]
                + [(v, True) for v in self._tag_disputes.get(w, ())]
            ):
                if v in self._excluded or w in self._excluded:
                    continue
                self._settle(w, v, is_tag, opened.get(v), resp)
        return self._open_consistency()

    def _settle(
        self, w: int, v: int, is_tag: bool, e: bytes | None, resp: DisputeResponse | None
    ) -> None:
        """Decide one dispute between dealer ``w`` and holder ``v`` from ``w``'s opening."""
        shares = ("shares", self._shares[w].to_bytes())
        if is_tag:
            complaint = ("review", self._reviews[v].to_bytes())
            accused = ("tags", self._inputs[w].to_bytes())
        else:
            complaint = ("complaint", self._rejected[v][w].encode())
            accused = shares
        base: tuple[tuple[str, bytes], ...] = (shares, ("holder", _u32(v)), complaint, accused)
        if e is None or resp is None:
            self._record(
                MisbehaviourKind.UNANSWERED_COMPLAINT,
                w,
                f"client {w} did not open the pair disputed by {v}",
                base,
                proven=False,
            )
            return
        base = (*base, ("opening", resp.to_bytes()))
        dealt = self._dealt(w, v)
        try:
            eph = P.KeyPair.from_private_bytes(e)
        except (InvalidMessage, ValueError):
            eph = None
        if eph is None or not P.constant_time_equal(eph.public_bytes, dealt.ephemeral_public):
            self._record(
                MisbehaviourKind.BAD_OPENING,
                w,
                f"client {w} opened its pair with {v} wrongly",
                base,
            )
            return
        holder_ad = ("holder_advertisement", self._adverts[v].to_bytes())
        secret = P.dh(eph.private, self._adverts[v].key.enc_public)
        k_b, k_s, k_tag = share_keys_of(secret, self.ctx, w, v)
        if is_tag:
            good = P.constant_time_equal(masking_tag(k_tag, self.ctx, w, v), self._tag_given(w, v))
            bad_kind, lie_kind = MisbehaviourKind.BAD_TAG, MisbehaviourKind.FALSE_COMPLAINT
        else:
            try:
                P.decode_element(P.unseal(k_b, dealt.self_mask, share_aad(self.ctx, 0, w, v)))
                P.decode_element(P.unseal(k_s, dealt.mask_key, share_aad(self.ctx, 1, w, v)))
                good = True
            except InvalidMessage:
                good = False
            bad_kind, lie_kind = MisbehaviourKind.BAD_SHARE, MisbehaviourKind.FALSE_COMPLAINT
        if good:
            self._record(lie_kind, v, f"client {v} accused {w} falsely", (*base, holder_ad))
        else:
            self._record(
                bad_kind, w, f"client {w} dealt {v} a bad share or tag", (*base, holder_ad)
            )

    # ------------------------------------------------------------ consistency

    def _settle_sum(self) -> None:
        """Take the inputs of clients excluded after their input arrived out of the sum.

        Exclusions happen only up to here: at the close of the masked-input stage
        (misquoted complaints) and in the review and dispute stages. From the
        consistency stage on nothing excludes a client (a bad revealed key is recorded
        without exclusion, an inconsistent sharing aborts the round), so the held
        vectors are discarded: the status vector the clients sign fixes the sum.
        """
        held = self._held
        if held is None:
            return
        for u in sorted(self._inputs):
            if u in self._excluded:
                np.subtract(self._sum, held.get(u), out=self._sum)
        held.close()
        self._held = None

    def _open_consistency(self) -> Outbox:
        alive = tuple(v for v in sorted(self._inputs) if v not in self._excluded)
        if self.min_inputs is not None and len(alive) < self.min_inputs:
            raise self._abort(
                DropoutThresholdNotMet,
                f"{len(alive)} usable masked inputs, the round needs at least {self.min_inputs}",
            )
        self._need(len(alive), "are left with usable masked inputs")
        self._settle_sum()
        self._alive = alive
        status = np.full(self.roster.n, STATUS_ABSENT, dtype=np.uint8)
        pos = self.roster.position
        for u in self._adverts:
            status[pos(u)] = STATUS_ADVERTISED
        for u in self._u2.tolist():
            status[pos(u)] = STATUS_SHARED
        for u in alive:
            status[pos(u)] = STATUS_ALIVE
        self._status = status
        partners: dict[int, np.ndarray] = {}
        for u in self._u2.tolist():
            partners[u] = np.union1d(self._shared_by(u), self._held_by(u)).astype(np.int32)
        self._partners = partners
        self._check_symmetric(alive)
        leaves = [graph_leaf(self.ctx, u, partners.get(u, _NO_IDS)) for u in self.roster.ids]
        tree = P.merkle_tree(leaves)
        root = tree[-1][0]
        self._digest = consistency_digest(self.ctx, status, root)
        msgs = {
            u: ConsistencyRequest(
                **self._hdr(),  # type: ignore[arg-type]
                recipient=u,
                status=status,
                graph_root=root,
                proof=P.merkle_proof(tree, pos(u)),
            )
            for u in alive
        }
        return Outbox(Stage.CONSISTENCY_CHECK, msgs)

    def _check_symmetric(self, alive: tuple[int, ...]) -> None:
        """An honest server never produces a one-sided masking pair between survivors."""
        if not alive:
            return
        alive_ids = np.asarray(alive, dtype=np.int64)
        ps = [np.full(len(self._partners[p]), p, dtype=np.int64) for p in alive]
        qs = [self._partners[p] for p in alive]
        p_col, q_col = np.concatenate(ps), np.concatenate(qs)
        live = np.isin(q_col, alive_ids)
        p_col, q_col = p_col[live], q_col[live]
        width = np.int64(1 << 31)  # ids are below 2^31
        pairs = p_col * width + q_col
        missing = ~np.isin(q_col * width + p_col, pairs)
        if missing.any():
            i = int(np.flatnonzero(missing)[0])
            p, q = int(p_col[i]), int(q_col[i])
            raise ProtocolError(f"masking pair ({p}, {q}) is one-sided between survivors")

    def _receive_consistency(self, m: ConsistencyResponse) -> None:
        u = m.sender
        try:
            P.verify(self.roster[u], m.signature, self._digest, what=f"consistency of {u}")
        except InvalidMessage as exc:
            raise ConsistencyCheckFailed(
                f"client {u} signed a different view (model, roster, parameters or status)"
            ) from exc
        self._signatures[u] = m.signature

    def _close_consistency(self) -> Outbox:
        signers = sorted(self._signatures)
        self._need(len(signers), "signed the status vector")
        bitmap = np.zeros(self.roster.n, dtype=bool)
        for u in signers:
            bitmap[self.roster.position(u)] = True
        cert = QuorumCertificate(**self._hdr(), signers=bitmap)  # type: ignore[arg-type]
        return Outbox(Stage.QUORUM_CHALLENGE, dict.fromkeys(signers, cert))

    def _receive_challenge(self, m: QuorumChallenge) -> None:
        u = m.sender
        if any(i == u or i not in self._signatures for i in m.indices):
            raise InvalidMessage(
                f"client {u} challenges a signature that is not in the certificate"
            )
        self._challenges[u] = m.indices

    def _close_challenge(self) -> Outbox:
        alive = np.asarray(self._alive, dtype=np.int64)
        msgs = {}
        for u, idx in sorted(self._challenges.items()):
            held = self._held_by(u)
            lives = np.isin(held, alive)
            msgs[u] = UnmaskRequest(
                **self._hdr(),  # type: ignore[arg-type]
                signatures=tuple((i, self._signatures[i]) for i in idx),
                survivors=tuple(held[lives].tolist()),
                dropped=tuple(held[~lives].tolist()),
            )
        # The replies to these requests let the server compute the sum.
        return Outbox(Stage.UNMASKING, msgs, reveals_sum=True)

    # -------------------------------------------------------------- unmasking

    def _receive_unmask(self, m: UnmaskResponse) -> None:
        v = m.sender
        P.verify(self.roster[v], m.signature, m.payload(self.ctx), what=f"reveal of {v}")
        keys = m.key_records
        owners = keys.ids()
        lacking = ~np.isin(owners, self._held_by(v))
        if lacking.any():
            owner = int(owners[np.flatnonzero(lacking)[0]])
            raise InvalidMessage(f"client {v} reveals a key for {owner}, whose share it lacks")
        want = np.where(
            np.isin(owners, np.asarray(self._alive, dtype=np.int64)),
            SHARE_KIND_SELF_MASK,
            SHARE_KIND_MASK_KEY,
        )
        wrong = keys.kinds() != want
        if wrong.any():
            owner = int(owners[np.flatnonzero(wrong)[0]])
            raise InvalidMessage(f"client {v} reveals the wrong share kind for {owner}")
        self._reveals[v] = dataclasses.replace(m, keys=_SpilledKeys(self._key_store, v, keys))

    def _shares_of(self, owner: int, kind: int) -> list[tuple[int, int]]:
        """Decrypt every revealed share of ``owner``'s secret; attribute bad keys."""
        if self._revealed is None:
            self._revealed = _Regrouped({v: m.key_records for v, m in self._reveals.items()})
        points = []
        dealt_to = self._shares[owner].records
        for v, record in self._revealed.items(owner):
            if record[0] != kind:
                continue
            key = record[1:]
            i = dealt_to.find(v)
            if i is None:  # _receive_unmask admits keys of held shares only
                raise ProtocolError(f"client {v} revealed a key for a share {owner} never dealt")
            ct = dealt_to[i].ciphertext(kind)
            try:
                y = P.decode_element(P.unseal(key, ct, share_aad(self.ctx, kind, owner, v)))
            except InvalidMessage:
                self._record(
                    MisbehaviourKind.BAD_REVEALED_KEY,
                    v,
                    f"client {v} revealed a key that does not open its share of {owner}",
                    (
                        ("shares", self._shares[owner].to_bytes()),
                        ("reveal", self._reveals[v].to_bytes()),
                    ),
                    exclude=False,  # its own input is already in the sum
                )
                continue
            points.append((v + 1, y))
        return sorted(points)

    def _recover(self, owner: int, kind: int) -> bytes:
        t = self.config.t
        points = self._shares_of(owner, kind)
        if len(points) < t:
            raise self._abort(
                DropoutThresholdNotMet,
                f"only {len(points)} valid shares of client {owner}'s secret, need t = {t}",
            )
        advert = self._adverts[owner]
        try:
            secret: bytes | None = P.shamir_reconstruct(points[:t], t)
        except InvalidMessage:
            secret = None
        if kind == SHARE_KIND_SELF_MASK:
            ok = secret is not None and P.constant_time_equal(
                seed_commitment(secret, self.ctx, owner), advert.seed_commitment
            )
        else:
            ok = secret is not None and P.constant_time_equal(
                P.KeyPair.from_seed(secret, self.ctx).public_bytes, advert.key.mask_public
            )
        if not ok or secret is None:
            reveal_parts = tuple(
                (f"reveal:{v}", self._reveals[v].to_bytes()) for v in [x - 1 for x, _ in points[:t]]
            )
            self._record(
                MisbehaviourKind.INCONSISTENT_SHARING,
                owner,
                f"the shares client {owner} dealt do not reconstruct what it committed to",
                (
                    ("shares", self._shares[owner].to_bytes()),
                    ("advertisement", advert.to_bytes()),
                    ("kind", bytes([kind])),
                    ("threshold", _u32(t)),
                    *reveal_parts,
                ),
            )
            raise self._abort(
                ProtocolAbort,
                f"client {owner} dealt an inconsistent sharing; retry the round without it",
            )
        return secret

    def _close_unmasking(self) -> Aggregate:
        start = time.perf_counter()
        bits = self.config.modulus_bits
        dtype = P.mask_dtype(bits)
        if self._held is not None:
            raise ProtocolError("unmasking before the excluded inputs left the sum")
        acc = self._sum.copy()
        alive = self._alive
        alive_ids = np.asarray(alive, dtype=np.int64)
        minus = [self_mask_key(self._recover(u, SHARE_KIND_SELF_MASK), self.ctx, u) for u in alive]
        plus: list[bytes] = []
        needed = np.setdiff1d(
            np.concatenate([self._partners[p] for p in alive]) if alive else _NO_IDS, alive_ids
        ).tolist()
        gone = {
            w: P.KeyPair.from_seed(self._recover(w, SHARE_KIND_MASK_KEY), self.ctx) for w in needed
        }
        gone_ids = np.asarray(needed, dtype=np.int64)
        for p in alive:
            peer = self._adverts[p].key.mask_public
            mates = self._partners[p]
            for w in mates[np.isin(mates, gone_ids)].tolist():
                keys = gone[w]
                seed = pad_seed(P.dh(keys.private, peer), self.ctx, p, w)
                # p added +PRG(s_pw) if p < w and -PRG(s_pw) otherwise; undo it.
                (minus if p < w else plus).append(seed)
        P.add_prg_masks(acc, plus, minus, bits)
        if bits not in (32, 64):
            acc &= dtype((1 << bits) - 1)
        self.never_held_both_kinds()
        self._stage = Stage.DONE
        self.unmask_seconds = time.perf_counter() - start
        _log.debug(
            "unmasked %d survivors, %d dropped in %.3fs",
            len(alive),
            len(gone),
            self.unmask_seconds,
        )
        return Aggregate(
            acc,
            alive,
            bits,
            excluded=self.excluded,
            evidence=tuple(self.evidence),
        )

    def never_held_both_kinds(self) -> None:
        """Raise :class:`ProtocolError` if any client's two secrets both reached the server."""
        both = [u for u, kinds in self.kinds_released.items() if len(kinds) > 1]
        if both:
            raise ProtocolError(f"server holds both share kinds of clients {both}")

    @property
    def kinds_released(self) -> dict[int, set[int]]:
        """For each owner, the share kinds some holder revealed to this server."""
        owners = [m.key_records.ids() for m in self._reveals.values()]
        kinds = [m.key_records.kinds().astype(np.int64) for m in self._reveals.values()]
        if not owners:
            return {}
        pairs = np.unique(np.concatenate(owners) * 2 + np.concatenate(kinds))
        out: dict[int, set[int]] = {}
        for pair in pairs.tolist():
            out.setdefault(pair // 2, set()).add(pair % 2)
        return out
