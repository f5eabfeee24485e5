"""Server side of SecAgg / SecAgg+ as a pure state machine.

The server routes messages, tracks the survivor sets U1 ⊇ U2 ⊇ U3 ⊇ U4 ⊇ U5 of
Bonawitz et al., and in the last stage reconstructs the self-mask seeds of the
survivors and the pairwise keys of clients that dropped after sharing, which
is all it needs to strip the masks from the sum. It never learns an
individual input: for every client it obtains at most one kind of secret.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aggregation import _primitives as P
from aggregation._client import PURPOSE_MASK, consistency_payload
from aggregation._config import SecAggConfig, Stage
from aggregation._graph import harary_neighbours, transcript_hash
from aggregation._messages import (
    SHARE_KIND_PAIRWISE_KEY,
    SHARE_KIND_SELF_MASK,
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencyResponse,
    EncryptedShare,
    KeyBroadcast,
    MaskedInput,
    Message,
    ShareKeys,
    ShareRouting,
    UnmaskRequest,
    UnmaskResponse,
    context_bytes,
)
from aggregation._session import Aggregate, AggregationServer, Outbox
from privacy.errors import (
    ConfigError,
    ConsistencyCheckFailed,
    DropoutThresholdNotMet,
    InvalidMessage,
    InvalidSignature,
    ProtocolError,
)

__all__ = ["ServerSession"]

_log = logging.getLogger(__name__)


@dataclass
class _ServerState:
    stage: Stage = Stage.ADVERTISE_KEYS
    adverts: dict[int, AdvertiseKeys] = field(default_factory=dict)  # U1
    transcript: bytes = b""
    graph: dict[int, tuple[int, ...]] = field(default_factory=dict)
    shares: dict[int, ShareKeys] = field(default_factory=dict)  # U2
    inputs: dict[int, np.ndarray] = field(default_factory=dict)  # U3
    survivors: tuple[int, ...] = ()
    signatures: dict[int, bytes] = field(default_factory=dict)  # U4
    dropped: tuple[int, ...] = ()
    responses: dict[int, UnmaskResponse] = field(default_factory=dict)  # U5
    #: owner -> kinds of share ever received, to prove we never hold both kinds.
    kinds_received: dict[int, set[int]] = field(default_factory=dict)
    unmask_seconds: float = 0.0


class ServerSession(AggregationServer):
    """The server of one round.

    Drive it through the uniform stage interface (:meth:`receive`,
    :meth:`close_stage`, :attr:`expected`; see :mod:`aggregation._session`), or
    stage by stage: ``receive_*`` ingests a client message (bytes or parsed),
    ``finish_*`` closes a stage (the caller decides when: all replies in, or a
    timeout) and returns what to send next.

    ``min_inputs`` is the smallest number of masked inputs the caller accepts
    (e.g. the survivors distributed noise was sized for): with fewer, the round
    aborts before anyone is asked to unmask.
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
    ) -> None:
        if min_inputs is not None and (not isinstance(min_inputs, int) or min_inputs < 1):
            raise ConfigError("min_inputs must be None or an int >= 1")
        if len(model_hash) != 32:
            raise ConfigError("model_hash must be 32 bytes (SHA-256)")
        if not isinstance(dimension, int) or dimension < 1:
            raise ConfigError("dimension must be a positive int")
        self.config = config
        self._pki = dict(identity_keys)
        self.session_id = session_id
        self.round_index = round_index
        self.model_hash = model_hash
        self.dimension = dimension
        self.state = _ServerState()
        self.min_inputs = min_inputs
        if len(session_id) != 16:
            raise ConfigError("session_id must be 16 bytes")
        self._header = context_bytes(session_id, round_index)
        #: Who may reply in the open stage (all identities at stage 0).
        self._awaiting: set[int] = set(self._pki)

    @property
    def stage(self) -> Stage:
        return self.state.stage

    @property
    def survivors(self) -> tuple[int, ...]:
        return self.state.survivors

    @property
    def unmask_seconds(self) -> float:
        return self.state.unmask_seconds

    def neighbours(self, client_id: int) -> tuple[int, ...]:
        return self.state.graph[client_id]

    # ------------------------------------------------- uniform stage interface

    @property
    def expected(self) -> frozenset[int]:
        return frozenset(self._awaiting)

    def receive(self, message: Message) -> None:
        """Ingest one reply of the open stage (see :class:`AggregationServer`)."""
        sender = message.sender_id()
        if sender not in self._awaiting:
            raise InvalidMessage(
                f"no {type(message).__name__} expected from client {sender} in stage "
                f"{self.state.stage.name} (duplicate, late or not a participant)"
            )
        handler = {
            AdvertiseKeys: self.receive_advertisement,
            ShareKeys: self.receive_shares,
            MaskedInput: self.receive_masked_input,
            ConsistencyResponse: self.receive_consistency,
            UnmaskResponse: self.receive_unmask,
        }.get(type(message))
        if handler is None:
            raise InvalidMessage(f"servers do not accept {type(message).__name__}")
        try:
            handler(message)  # type: ignore[arg-type]
        finally:
            # One reply per client and stage: a refused reply counts as the sender's
            # answer (it is then treated as silent), so it cannot be retried with
            # variations until something passes.
            self._awaiting.discard(sender)

    def close_stage(self) -> Outbox | Aggregate:
        """Close the open stage and return the next stage's messages, or the sum."""
        st = self.state
        out: Outbox | Aggregate
        if st.stage is Stage.ADVERTISE_KEYS:
            bc = self.finish_advertising()
            out = Outbox(Stage.SHARE_KEYS, dict.fromkeys(sorted(st.adverts), bc))
        elif st.stage is Stage.SHARE_KEYS:
            out = Outbox(Stage.MASKED_INPUT, self.finish_sharing())
        elif st.stage is Stage.MASKED_INPUT:
            creq = self.finish_masked_input()
            out = Outbox(Stage.CONSISTENCY_CHECK, dict.fromkeys(creq.survivors, creq))
        elif st.stage is Stage.CONSISTENCY_CHECK:
            ureq = self.finish_consistency()
            signers = [i for i, _ in ureq.signatures]
            out = Outbox(Stage.UNMASKING, dict.fromkeys(signers, ureq), reveals_sum=True)
        elif st.stage is Stage.UNMASKING:
            total = self.finish_unmasking()
            self.never_held_both_kinds()
            self._awaiting = set()
            return Aggregate(total, st.survivors, self.config.modulus_bits)
        else:
            raise ProtocolError(f"no stage to close in {st.stage.name}")
        self._awaiting = set(out.messages)
        return out

    def _check(self, msg: Message, stage: Stage) -> None:
        if msg.session_id != self.session_id or msg.round_index != self.round_index:
            raise InvalidMessage("message is for another session or round (replay?)")
        if self.state.stage is not stage:
            raise InvalidMessage(f"{type(msg).__name__} received in stage {self.state.stage.name}")

    def _need(self, count: int, what: str) -> None:
        if count < self.config.t:
            raise DropoutThresholdNotMet(f"{count} clients {what}, need t = {self.config.t}")

    # --------------------------------------------------------------- stage 0

    def receive_advertisement(self, msg: AdvertiseKeys | bytes) -> None:
        m = AdvertiseKeys.from_bytes(msg) if isinstance(msg, bytes) else msg
        self._check(m, Stage.ADVERTISE_KEYS)
        pk = self._pki.get(m.client_id)
        if pk is None:
            raise InvalidMessage(f"unknown client {m.client_id}")
        if m.client_id in self.state.adverts:
            raise InvalidMessage(f"duplicate advertisement from {m.client_id}")
        P.verify(pk, m.signature, m.signed_payload(), what=f"advertisement of {m.client_id}")
        self.state.adverts[m.client_id] = m

    def finish_advertising(self) -> KeyBroadcast:
        st = self.state
        self._check_stage(Stage.ADVERTISE_KEYS)
        self._need(len(st.adverts), "advertised keys")
        ads = tuple(st.adverts[i] for i in sorted(st.adverts))
        msg = KeyBroadcast(
            session_id=self.session_id, round_index=self.round_index, advertisements=ads
        )
        st.transcript = transcript_hash(msg.header(), [a.entry() for a in ads])
        st.graph = harary_neighbours([a.client_id for a in ads], self.config.k, st.transcript)
        st.stage = Stage.SHARE_KEYS
        return msg

    def _check_stage(self, stage: Stage) -> None:
        if self.state.stage is not stage:
            raise ProtocolError(f"cannot finish {stage.name} in stage {self.state.stage.name}")

    # --------------------------------------------------------------- stage 1

    def receive_shares(self, msg: ShareKeys | bytes) -> None:
        m = ShareKeys.from_bytes(msg) if isinstance(msg, bytes) else msg
        self._check(m, Stage.SHARE_KEYS)
        st = self.state
        if m.sender not in st.adverts:
            raise InvalidMessage(f"shares from {m.sender}, which did not advertise keys")
        if m.sender in st.shares:
            raise InvalidMessage(f"duplicate shares from {m.sender}")
        recipients = [s.recipient for s in m.shares]
        if any(s.sender != m.sender for s in m.shares) or sorted(recipients) != list(
            st.graph[m.sender]
        ):
            raise InvalidMessage(f"shares from {m.sender} are not one per neighbour")
        st.shares[m.sender] = m

    def finish_sharing(self) -> dict[int, ShareRouting]:
        st = self.state
        self._check_stage(Stage.SHARE_KEYS)
        self._need(len(st.shares), "shared keys")
        inbox: dict[int, list[EncryptedShare]] = {u: [] for u in st.shares}
        for m in st.shares.values():
            for s in m.shares:
                if s.recipient in inbox:
                    inbox[s.recipient].append(s)
        st.stage = Stage.MASKED_INPUT
        return {
            u: ShareRouting(
                session_id=self.session_id,
                round_index=self.round_index,
                recipient=u,
                shares=tuple(box),
            )
            for u, box in inbox.items()
        }

    # --------------------------------------------------------------- stage 2

    def receive_masked_input(self, msg: MaskedInput | bytes) -> None:
        m = MaskedInput.from_bytes(msg) if isinstance(msg, bytes) else msg
        st = self.state
        if (
            st.stage.value > Stage.MASKED_INPUT.value
            and m.session_id == self.session_id
            and m.round_index == self.round_index
        ):
            # The client was already declared dropped, so its pairwise key will be
            # reconstructed while its self-mask seed b_u never is (clients refuse
            # to reveal both). A late y_u therefore stays masked by PRG(b_u);
            # we refuse it outright so it cannot enter the sum either.
            raise InvalidMessage(f"late masked input from {m.sender}, already declared dropped")
        self._check(m, Stage.MASKED_INPUT)
        if m.sender not in st.shares:
            raise InvalidMessage(f"masked input from {m.sender}, which did not share keys")
        if m.sender in st.inputs:
            raise InvalidMessage(f"duplicate masked input from {m.sender}")
        if m.bits != self.config.modulus_bits or m.vector.shape[0] != self.dimension:
            raise InvalidMessage("masked input has the wrong modulus or dimension")
        st.inputs[m.sender] = m.vector

    def finish_masked_input(self) -> ConsistencyRequest:
        st = self.state
        self._check_stage(Stage.MASKED_INPUT)
        self._need(len(st.inputs), "sent masked inputs")
        if self.min_inputs is not None and len(st.inputs) < self.min_inputs:
            # Distributed noise was sized for at least min_inputs contributions: fewer
            # would under-noise the sum, so nobody may be asked to unmask it.
            raise DropoutThresholdNotMet(
                f"{len(st.inputs)} masked inputs, the round needs at least {self.min_inputs}"
            )
        st.survivors = tuple(sorted(st.inputs))
        st.dropped = tuple(sorted(set(st.shares) - set(st.inputs)))
        st.stage = Stage.CONSISTENCY_CHECK
        return ConsistencyRequest(
            session_id=self.session_id, round_index=self.round_index, survivors=st.survivors
        )

    # --------------------------------------------------------------- stage 3

    def receive_consistency(self, msg: ConsistencyResponse | bytes) -> None:
        m = ConsistencyResponse.from_bytes(msg) if isinstance(msg, bytes) else msg
        self._check(m, Stage.CONSISTENCY_CHECK)
        st = self.state
        if m.sender not in st.inputs:
            raise InvalidMessage(f"consistency signature from non-survivor {m.sender}")
        if m.sender in st.signatures:
            raise InvalidMessage(f"duplicate consistency signature from {m.sender}")
        payload = consistency_payload(self._header, self.model_hash, st.transcript, st.survivors)
        try:
            P.verify(self._pki[m.sender], m.signature, payload, what=f"consistency of {m.sender}")
        except InvalidSignature as exc:
            raise ConsistencyCheckFailed(
                f"client {m.sender} signed a different view (model, keys or survivors)"
            ) from exc
        st.signatures[m.sender] = m.signature

    def finish_consistency(self) -> UnmaskRequest:
        st = self.state
        self._check_stage(Stage.CONSISTENCY_CHECK)
        self._need(len(st.signatures), "signed the survivor set")
        st.stage = Stage.UNMASKING
        return UnmaskRequest(
            session_id=self.session_id,
            round_index=self.round_index,
            survivors=st.survivors,
            dropped=st.dropped,
            signatures=tuple(sorted(st.signatures.items())),
        )

    # --------------------------------------------------------------- stage 4

    def receive_unmask(self, msg: UnmaskResponse | bytes) -> None:
        m = UnmaskResponse.from_bytes(msg) if isinstance(msg, bytes) else msg
        self._check(m, Stage.UNMASKING)
        st = self.state
        if m.sender not in st.signatures:
            raise InvalidMessage(f"unmask response from {m.sender}, which did not sign")
        if m.sender in st.responses:
            raise InvalidMessage(f"duplicate unmask response from {m.sender}")
        alive, dropped = set(st.survivors), set(st.dropped)
        holders_of = set(st.graph[m.sender]) | {m.sender}
        owners = [s.owner for s in m.shares]
        if len(set(owners)) != len(owners):
            raise InvalidMessage("unmask response repeats an owner")
        for s in m.shares:
            if s.owner not in holders_of or s.owner not in st.shares:
                raise InvalidMessage(f"{m.sender} cannot hold a share of {s.owner}")
            want = SHARE_KIND_SELF_MASK if s.owner in alive else SHARE_KIND_PAIRWISE_KEY
            if s.owner not in alive and s.owner not in dropped:
                raise InvalidMessage(f"share of {s.owner}, which is neither alive nor dropped")
            if s.kind != want:
                raise InvalidMessage(f"wrong share kind for {s.owner}")
            x, _ = P.decode_share(s.share)
            if x != m.sender + 1:
                raise InvalidMessage("share x-coordinate does not match its holder")
        for s in m.shares:
            st.kinds_received.setdefault(s.owner, set()).add(s.kind)
        st.responses[m.sender] = m

    def finish_unmasking(self) -> np.ndarray:
        """Reconstruct, strip all masks and return sum_{u in U3} x_u mod 2^b (uint dtype)."""
        st = self.state
        self._check_stage(Stage.UNMASKING)
        self._need(len(st.responses), "answered the unmask request")
        start = time.perf_counter()
        collected: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for m in st.responses.values():
            for s in m.shares:
                collected.setdefault((s.owner, s.kind), []).append(P.decode_share(s.share))
        t = self.config.t
        coeff_cache: dict[tuple[int, ...], list[int]] = {}

        def recover(owner: int, kind: int) -> bytes:
            got = sorted(collected.get((owner, kind), []))[:t]
            if len(got) < t:
                raise DropoutThresholdNotMet(
                    f"only {len(got)} shares of client {owner}'s secret, need t = {t}"
                )
            xs = tuple(x for x, _ in got)
            coeffs = coeff_cache.get(xs)
            if coeffs is None:
                coeffs = coeff_cache[xs] = P.lagrange_coefficients_at_zero(xs)
            return P.shamir_reconstruct(got, t, coeffs)

        bits = self.config.modulus_bits
        dtype = P.mask_dtype(bits)
        acc = np.zeros(self.dimension, dtype=dtype)
        for u in st.survivors:
            np.add(acc, st.inputs[u], out=acc)
        self_seeds = [recover(u, SHARE_KIND_SELF_MASK) for u in st.survivors]
        plus: list[bytes] = []
        minus: list[bytes] = []
        alive = set(st.survivors)
        for v in st.dropped:
            sk_raw = recover(v, SHARE_KIND_PAIRWISE_KEY)
            keys = P.KeyPair.from_private_bytes(sk_raw)
            if not hmac.compare_digest(keys.public_bytes, st.adverts[v].mask_public):
                raise InvalidMessage(f"reconstructed key of {v} does not match its advertisement")
            for u in st.graph[v]:
                if u not in alive:
                    continue
                seed = P.derive_key(
                    keys.private,
                    st.adverts[u].mask_public,
                    purpose=PURPOSE_MASK,
                    session_id=self.session_id,
                    round_index=self.round_index,
                    model_hash=self.model_hash,
                    ids=(u, v),
                )
                # u added +PRG(s_uv) if u < v and -PRG(s_uv) otherwise; undo it.
                (minus if u < v else plus).append(seed)
        P.add_prg_masks(acc, plus, minus + self_seeds, bits)
        if bits not in (32, 64):
            acc &= dtype((1 << bits) - 1)
        st.stage = Stage.DONE
        st.unmask_seconds = time.perf_counter() - start
        _log.debug(
            "unmasked %d survivors, %d dropped in %.3fs",
            len(alive),
            len(st.dropped),
            st.unmask_seconds,
        )
        return acc

    def never_held_both_kinds(self) -> None:
        """Raise :class:`ProtocolError` if any client's two secrets both reached the server."""
        both = [u for u, kinds in self.state.kinds_received.items() if len(kinds) > 1]
        if both:
            raise ProtocolError(f"server holds both share kinds of clients {both}")
