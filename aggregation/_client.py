"""Client side of SecAgg / SecAgg+ as a pure state machine (message in, message out)."""

from __future__ import annotations

import itertools
import logging
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from aggregation import _primitives as P
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
    UnmaskedShare,
    UnmaskRequest,
    UnmaskResponse,
    _ids_bytes,
    context_bytes,
)
from aggregation._session import AggregationClient
from privacy.errors import (
    ConfigError,
    ConsistencyCheckFailed,
    DropoutThresholdNotMet,
    InvalidMessage,
    InvalidSignature,
    ProtocolError,
)

__all__ = ["ClientSession", "consistency_payload", "share_aad"]

_log = logging.getLogger(__name__)

PURPOSE_SHARE = b"share-encryption"
PURPOSE_MASK = b"pairwise-mask"


def share_aad(header: bytes, transcript: bytes, sender: int, recipient: int) -> bytes:
    return (
        b"secure-fml/secagg/v1/share" + header + transcript + struct.pack(">II", sender, recipient)
    )


def consistency_payload(
    header: bytes, model_hash: bytes, transcript: bytes, survivors: tuple[int, ...]
) -> bytes:
    return (
        b"secure-fml/secagg/v1/consistency"
        + header
        + model_hash
        + transcript
        + _ids_bytes(survivors)
    )


@dataclass
class _ClientState:
    """Everything a client remembers within one round; the only mutable object."""

    stage: Stage = Stage.ADVERTISE_KEYS
    enc_keys: P.KeyPair | None = None
    mask_keys: P.KeyPair | None = None
    self_seed: bytes = b""
    peers: dict[int, AdvertiseKeys] = field(default_factory=dict)
    transcript: bytes = b""
    neighbours: tuple[int, ...] = ()
    #: owner -> (self-mask share, pairwise-key share) held by this client (U2 view).
    held: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    survivors: tuple[int, ...] | None = None
    #: owner -> kind of share already revealed; never two kinds for one owner.
    revealed: dict[int, int] = field(default_factory=dict)
    input_vector: np.ndarray | None = None


class ClientSession(AggregationClient):
    """One client's participation in one SecAgg round.

    Call :meth:`advertise_keys` once, then feed each server message to
    :meth:`handle` (or the stage-specific methods) and send back what it
    returns. Any out-of-order, replayed or malformed message raises a
    :class:`~privacy.errors.ProtocolError` subclass and the session must be
    discarded; sessions are single-use because their keys are.

    ``model_hash`` is the hash of the global model this client received; it
    enters every key derivation and the signed consistency message, so a
    server that hands different models to different clients cannot finish
    the round.

    ``noise_stddev_int`` adds exact discrete Gaussian noise N_Z(0, sigma^2) in
    the integer domain before masking (distributed DP). Size sigma for the
    *minimum* number of surviving clients; privacy accounting is done by the
    caller (``privacy/``), not here.
    """

    def __init__(
        self,
        config: SecAggConfig,
        *,
        client_id: int,
        identity_key: Ed25519PrivateKey,
        identity_keys: Mapping[int, Ed25519PublicKey],
        session_id: bytes,
        round_index: int,
        model_hash: bytes,
        noise_stddev_int: float = 0.0,
        rng: P.Csprng | None = None,
    ) -> None:
        if client_id not in identity_keys:
            raise ConfigError("client_id has no identity key in identity_keys")
        if len(model_hash) != 32:
            raise ConfigError("model_hash must be 32 bytes (SHA-256)")
        if not noise_stddev_int >= 0.0:
            raise ConfigError("noise_stddev_int must be >= 0")
        self.config = config
        self.client_id = client_id
        self._identity = identity_key
        self._pki = dict(identity_keys)
        self.session_id = session_id
        self.round_index = round_index
        self.model_hash = model_hash
        self.noise_stddev_int = float(noise_stddev_int)
        self._rng = rng if rng is not None else P.Csprng()
        if len(session_id) != 16:
            raise ConfigError("session_id must be 16 bytes")
        self._header = context_bytes(session_id, round_index)
        self.state = _ClientState()
        self.last_noise: np.ndarray | None = None  # kept only for tests of the noise path
        #: Seconds spent in sub-steps of the masked-input stage (for benchmarks).
        self.timings: dict[str, float] = {}

    @property
    def stage(self) -> Stage:
        return self.state.stage

    @property
    def neighbours(self) -> tuple[int, ...]:
        return self.state.neighbours

    def set_input(self, vector: np.ndarray) -> None:
        """The integer input x_u (any signed/unsigned int dtype); reduced mod 2^b."""
        v = np.asarray(vector)
        if v.ndim != 1 or v.size == 0 or not np.issubdtype(v.dtype, np.integer):
            raise ConfigError("input must be a non-empty 1-D integer array")
        if self.state.stage.value > Stage.SHARE_KEYS.value:
            raise ProtocolError("input must be set before the masked-input stage")
        self.state.input_vector = v.astype(np.int64)

    # ----------------------------------------------------------------- helpers

    def _expect(self, msg: Message, stage: Stage) -> None:
        if msg.session_id != self.session_id or msg.round_index != self.round_index:
            raise InvalidMessage("message is for another session or round (replay?)")
        if self.state.stage is not stage:
            raise InvalidMessage(f"{type(msg).__name__} received in stage {self.state.stage.name}")

    def _keys(self) -> tuple[P.KeyPair, P.KeyPair]:
        if self.state.enc_keys is None or self.state.mask_keys is None:
            raise ProtocolError("keys were never advertised")
        return self.state.enc_keys, self.state.mask_keys

    def _holders(self) -> tuple[int, ...]:
        return tuple(sorted((*self.state.neighbours, self.client_id)))

    def start(self) -> AdvertiseKeys:
        """The first message of the uniform stage interface: the key advertisement."""
        return self.advertise_keys()

    def handle(self, message: Message) -> Message:
        """Dispatch a server message to the right stage; returns the reply."""
        if isinstance(message, KeyBroadcast):
            return self.share_keys(message)
        if isinstance(message, ShareRouting):
            return self.masked_input(message)
        if isinstance(message, ConsistencyRequest):
            return self.consistency_check(message)
        if isinstance(message, UnmaskRequest):
            return self.unmask(message)
        raise InvalidMessage(f"clients do not accept {type(message).__name__}")

    # ------------------------------------------------------------------ stages

    def advertise_keys(self) -> AdvertiseKeys:
        """Stage 0: two fresh X25519 key pairs, signed with the long-term identity."""
        st = self.state
        if st.stage is not Stage.ADVERTISE_KEYS:
            raise InvalidMessage("keys already advertised")
        st.enc_keys = P.KeyPair.generate(self._rng)
        st.mask_keys = P.KeyPair.generate(self._rng)
        st.self_seed = self._rng.bytes(P.KEY_BYTES)
        unsigned = AdvertiseKeys(
            session_id=self.session_id,
            round_index=self.round_index,
            client_id=self.client_id,
            enc_public=st.enc_keys.public_bytes,
            mask_public=st.mask_keys.public_bytes,
            signature=bytes(64),
        )
        sig = P.sign(self._identity, unsigned.signed_payload())
        msg = AdvertiseKeys(
            session_id=self.session_id,
            round_index=self.round_index,
            client_id=self.client_id,
            enc_public=unsigned.enc_public,
            mask_public=unsigned.mask_public,
            signature=sig,
        )
        st.peers = {self.client_id: msg}
        st.stage = Stage.SHARE_KEYS
        return msg

    def share_keys(self, broadcast: KeyBroadcast) -> ShareKeys:
        """Stage 1: verify every advertisement, derive the graph, send encrypted shares."""
        self._expect(broadcast, Stage.SHARE_KEYS)
        st = self.state
        enc_keys, mask_keys = self._keys()
        ads = broadcast.advertisements
        ids = [a.client_id for a in ads]
        if any(b <= a for a, b in itertools.pairwise(ids)):
            raise InvalidMessage("advertisements must be sorted by id without duplicates")
        seen_keys: set[bytes] = set()
        for a in ads:
            if a.session_id != self.session_id or a.round_index != self.round_index:
                raise InvalidMessage("advertisement from another session or round")
            pk = self._pki.get(a.client_id)
            if pk is None:
                raise InvalidMessage(f"advertisement from unknown client {a.client_id}")
            P.verify(pk, a.signature, a.signed_payload(), what=f"advertisement of {a.client_id}")
            for key in (a.enc_public, a.mask_public):
                if key in seen_keys:
                    raise InvalidMessage("two advertisements share a public key")
                seen_keys.add(key)
        mine = {a.client_id: a for a in ads}.get(self.client_id)
        if mine is None or not P.constant_time_equal(
            mine.entry(), st.peers[self.client_id].entry()
        ):
            raise InvalidMessage("broadcast does not carry this client's advertisement")
        if len(ads) < self.config.t:
            raise DropoutThresholdNotMet(
                f"{len(ads)} clients advertised keys, need {self.config.t}"
            )
        st.peers = {a.client_id: a for a in ads}
        st.transcript = transcript_hash(broadcast.header(), [a.entry() for a in ads])
        graph = harary_neighbours(ids, self.config.k, st.transcript)
        st.neighbours = graph[self.client_id]
        holders = self._holders()
        if len(holders) < self.config.t:
            raise DropoutThresholdNotMet("fewer share holders than the threshold")
        xs = [h + 1 for h in holders]
        b_shares = P.shamir_split(st.self_seed, xs, self.config.t, self._rng)
        sk_shares = P.shamir_split(mask_keys.private_bytes(), xs, self.config.t, self._rng)
        out = []
        for h, bs, ss in zip(holders, b_shares, sk_shares, strict=True):
            b_enc, s_enc = P.encode_share(bs), P.encode_share(ss)
            if h == self.client_id:
                st.held[h] = (b_enc, s_enc)  # our own share never leaves the device
                continue
            key = P.derive_key(
                enc_keys.private,
                st.peers[h].enc_public,
                purpose=PURPOSE_SHARE,
                session_id=self.session_id,
                round_index=self.round_index,
                model_hash=self.model_hash,
                ids=(self.client_id, h),
            )
            plaintext = struct.pack(">II", self.client_id, h) + b_enc + s_enc
            aad = share_aad(self._header, st.transcript, self.client_id, h)
            nonce, ct = P.aead_encrypt(key, plaintext, aad, self._rng)
            out.append(
                EncryptedShare(sender=self.client_id, recipient=h, nonce=nonce, ciphertext=ct)
            )
        st.stage = Stage.MASKED_INPUT
        return ShareKeys(
            session_id=self.session_id,
            round_index=self.round_index,
            sender=self.client_id,
            shares=tuple(out),
        )

    def masked_input(self, routing: ShareRouting) -> MaskedInput:
        """Stage 2: decrypt the shares we hold, then send y = x + noise + masks mod 2^b."""
        self._expect(routing, Stage.MASKED_INPUT)
        st = self.state
        enc_keys, mask_keys = self._keys()
        if routing.recipient != self.client_id:
            raise InvalidMessage("share routing addressed to another client")
        if st.input_vector is None:
            raise ProtocolError("set_input() must be called before the masked-input stage")
        nbrs = set(st.neighbours)
        held = {self.client_id: st.held[self.client_id]}
        for s in routing.shares:
            if s.recipient != self.client_id or s.sender not in nbrs:
                raise InvalidMessage(f"share from {s.sender} is not from a neighbour to us")
            if s.sender in held:
                raise InvalidMessage(f"duplicate share from {s.sender}")
            key = P.derive_key(
                enc_keys.private,
                st.peers[s.sender].enc_public,
                purpose=PURPOSE_SHARE,
                session_id=self.session_id,
                round_index=self.round_index,
                model_hash=self.model_hash,
                ids=(self.client_id, s.sender),
            )
            pt = P.aead_decrypt(
                key,
                s.nonce,
                s.ciphertext,
                share_aad(self._header, st.transcript, s.sender, s.recipient),
            )
            snd, rcp = struct.unpack(">II", pt[:8])
            if snd != s.sender or rcp != self.client_id:
                raise InvalidSignature("encrypted share names the wrong sender or recipient")
            b_enc, s_enc = pt[8 : 8 + P.SHARE_BYTES], pt[8 + P.SHARE_BYTES :]
            for enc in (b_enc, s_enc):
                if P.decode_share(enc)[0] != self.client_id + 1:
                    raise InvalidMessage("share has the wrong x-coordinate")
            held[s.sender] = (b_enc, s_enc)
        if len(held) < self.config.t:
            raise DropoutThresholdNotMet(
                f"only {len(held)} share holders in our neighbourhood, need {self.config.t}"
            )
        st.held = held
        bits = self.config.modulus_bits
        dtype = P.mask_dtype(bits)
        x = st.input_vector
        t0 = time.perf_counter()
        if self.noise_stddev_int > 0.0:
            noise = P.DiscreteGaussianSampler(self.noise_stddev_int, self._rng).sample(x.shape[0])
            self.last_noise = noise
            x = x + noise
        t1 = time.perf_counter()
        plus = [st.self_seed]
        minus: list[bytes] = []
        for v in sorted(held):
            if v == self.client_id:
                continue
            seed = P.derive_key(
                mask_keys.private,
                st.peers[v].mask_public,
                purpose=PURPOSE_MASK,
                session_id=self.session_id,
                round_index=self.round_index,
                model_hash=self.model_hash,
                ids=(self.client_id, v),
            )
            (plus if self.client_id < v else minus).append(seed)
        t2 = time.perf_counter()
        # numpy integer casts wrap: int64 -> uint32/uint64 is reduction mod 2^w.
        acc = x.astype(dtype)
        P.add_prg_masks(acc, plus, minus, bits)
        if bits not in (32, 64):
            acc &= dtype((1 << bits) - 1)
        t3 = time.perf_counter()
        self.timings.update(noise=t1 - t0, key_agreement=t2 - t1, masking=t3 - t2)
        self.timings["mask_vectors"] = float(len(plus) + len(minus))
        st.input_vector = None  # drop the plaintext as soon as it is masked
        st.stage = Stage.CONSISTENCY_CHECK
        return MaskedInput(
            session_id=self.session_id,
            round_index=self.round_index,
            sender=self.client_id,
            bits=bits,
            vector=acc,
        )

    def consistency_check(self, request: ConsistencyRequest) -> ConsistencyResponse:
        """Stage 3: sign (model hash, key transcript, U3) after sanity checks."""
        self._expect(request, Stage.CONSISTENCY_CHECK)
        st = self.state
        u3 = request.survivors
        if self.client_id not in u3:
            raise InvalidMessage("consistency request omits this (live) client")
        unknown = [u for u in u3 if u not in st.peers]
        if unknown:
            raise InvalidMessage(f"consistency request names unknown clients {unknown[:5]}")
        for v in u3:
            if v in st.neighbours and v not in st.held:
                raise InvalidMessage(f"neighbour {v} sent no shares but is listed as a survivor")
        if len(u3) < self.config.t:
            raise DropoutThresholdNotMet(f"{len(u3)} survivors, need {self.config.t}")
        if sum(1 for v in self._holders() if v in u3) < self.config.t:
            raise DropoutThresholdNotMet("fewer surviving neighbours than the threshold")
        st.survivors = u3
        sig = P.sign(
            self._identity, consistency_payload(self._header, self.model_hash, st.transcript, u3)
        )
        st.stage = Stage.UNMASKING
        return ConsistencyResponse(
            session_id=self.session_id,
            round_index=self.round_index,
            sender=self.client_id,
            signature=sig,
        )

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Stage 4: reveal b-shares of survivors and sk-shares of dropped clients, never both."""
        self._expect(request, Stage.UNMASKING)
        st = self.state
        if st.survivors is None:
            raise ProtocolError("no signed survivor set")
        if not P.constant_time_equal(_ids_bytes(request.survivors), _ids_bytes(st.survivors)):
            raise ConsistencyCheckFailed(
                "unmask request lists a different survivor set than signed"
            )
        alive = set(request.survivors)
        dropped = set(request.dropped)
        if alive & dropped:
            raise InvalidMessage("unmask request declares a live client dead (both share kinds)")
        if self.client_id in dropped:
            raise InvalidMessage("unmask request declares this client dead")
        for v in dropped:
            if v not in st.peers:
                raise InvalidMessage(f"unknown client {v} declared dropped")
            if v in st.neighbours and v not in st.held:
                raise InvalidMessage(f"client {v} never shared with us but is declared dropped")
        signers = [i for i, _ in request.signatures]
        if len(set(signers)) != len(signers):
            raise InvalidMessage("duplicate consistency signatures")
        payload = consistency_payload(self._header, self.model_hash, st.transcript, st.survivors)
        for signer, sig in request.signatures:
            if signer not in alive:
                raise InvalidMessage(f"consistency signature from non-survivor {signer}")
            try:
                P.verify(self._pki[signer], sig, payload, what=f"consistency of {signer}")
            except InvalidSignature as exc:
                # A different model, key transcript or survivor list at the signer
                # all look like this; none of them may be unmasked.
                raise ConsistencyCheckFailed(
                    f"client {signer} signed a different view of the round"
                ) from exc
        if len(signers) < self.config.t:
            raise DropoutThresholdNotMet(
                f"{len(signers)} consistency signatures, need {self.config.t}"
            )
        shares = []
        for owner in sorted(st.held):
            if owner in alive:
                kind = SHARE_KIND_SELF_MASK
            elif owner in dropped:
                kind = SHARE_KIND_PAIRWISE_KEY
            else:
                continue
            prior = st.revealed.get(owner)
            if prior is not None and prior != kind:
                raise InvalidMessage(f"refusing to reveal both share kinds of client {owner}")
            st.revealed[owner] = kind
            shares.append(UnmaskedShare(owner=owner, kind=kind, share=st.held[owner][kind]))
        st.stage = Stage.DONE
        _log.debug("client %d reveals %d shares", self.client_id, len(shares))
        return UnmaskResponse(
            session_id=self.session_id,
            round_index=self.round_index,
            sender=self.client_id,
            shares=tuple(shares),
        )
