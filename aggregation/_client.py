"""Client side of SecAgg / SecAgg+ as a pure state machine (message in, message out).

What an honest client does, stage by stage, and why (the numbers are in
``docs/secure_aggregation.md``):

0. It checks the proposed parameters against its own :class:`ClientPolicy` for the
   roster it is shown (refusing weaker ones with ``PolicyViolation``), draws its k
   share holders from the roster with its own CSPRNG (SecAgg: everybody), Shamir-
   shares its self-mask seed b and the seed of its pairwise-mask key pair among
   them, and advertises two fresh X25519 keys signed with its identity, together
   with a signed commitment to b and its draw.
1. It receives the signed keys of its drawn holders only, and deals each one its
   two shares, each under a single-use AES-GCM key derived from a fresh per-pair
   ephemeral key (so a dispute over one pair can be opened without touching the
   others); the whole message is signed.
2. It receives the shares dealt to it (with the dealers' signed keys) and the list
   of its holders that shared. A share that does not decrypt becomes a signed
   complaint, never an abort. It masks with exactly its holders that shared and
   the dealers whose shares it accepted, and tags each holder it masked with (a
   MAC the server cannot forge): a holder reveals an owner's self-mask share only
   with that tag, so no client's self mask is ever revealed by a holder it did not
   mask with.
3. (Dispute, only if accused) it opens the disputed pairs, but only for complaints
   that quote exactly what it dealt.
4. It receives the status of every roster member and a Merkle proof for its own
   masking set, checks the counts against its policy, its own view of every
   partner and its set, and signs the digest.
5. It receives the bitmap of signers and challenges random entries of it.
6. It verifies the challenged signatures (two different views cannot both pass),
   then reveals, per owner it holds a share of, the key of the self-mask share if
   the owner survived and of the mask-key share if it dropped, never both.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from aggregation import _primitives as P
from aggregation._config import SecAggConfig, Stage
from aggregation._messages import (
    SHARE_KIND_MASK_KEY,
    SHARE_KIND_SELF_MASK,
    STATUS_ABSENT,
    STATUS_ALIVE,
    STATUS_SHARED,
    TAG_BYTES,
    AdvertiseKeys,
    Complaint,
    ComplaintReason,
    ConsistencyRequest,
    ConsistencyResponse,
    DisputeRequest,
    DisputeResponse,
    EncryptedShare,
    MaskedInput,
    Message,
    NeighbourKeys,
    Opening,
    PeerKey,
    QuorumCertificate,
    QuorumChallenge,
    RevealedKey,
    Review,
    ReviewResponse,
    ShareKeys,
    ShareRouting,
    UnmaskRequest,
    UnmaskResponse,
    consistency_digest,
    ids_bytes,
    round_context,
)
from aggregation._policy import ClientPolicy, SecurityAnalysis
from aggregation._roster import Roster
from aggregation._session import AggregationClient
from privacy.errors import (
    ConfigError,
    ConsistencyCheckFailed,
    DropoutThresholdNotMet,
    InvalidMessage,
    InvalidSignature,
    PolicyViolation,
    ProtocolError,
)

__all__ = ["ClientSession", "graph_leaf", "masking_tag", "pad_seed", "share_aad", "share_keys_of"]

_log = logging.getLogger(__name__)


# ----------------------------------------------------------- shared derivations


def share_aad(ctx: bytes, kind: int, dealer: int, holder: int) -> bytes:
    return b"secure-fml/secagg/v2/share" + ctx + struct.pack(">BII", kind, dealer, holder)


def share_keys_of(
    secret: bytes, ctx: bytes, dealer: int, holder: int
) -> tuple[bytes, bytes, bytes]:
    """(self-mask key, mask-key key, tag key) of one dealer -> holder pair, from the DH
    secret of the dealer's per-pair ephemeral key and the holder's encryption key."""
    info = ctx + struct.pack(">II", dealer, holder)
    okm = P.hkdf(secret, b"share-keys", info, 2 * P.SYMMETRIC_KEY_BYTES + 32)
    return okm[:16], okm[16:32], okm[32:]


def masking_tag(tag_key: bytes, ctx: bytes, dealer: int, holder: int) -> bytes:
    return hmac.new(
        tag_key,
        b"secure-fml/secagg/v2/masked-with" + ctx + struct.pack(">II", dealer, holder),
        hashlib.sha256,
    ).digest()[:TAG_BYTES]


def pad_seed(secret: bytes, ctx: bytes, a: int, b: int) -> bytes:
    """The pairwise mask seed of clients a and b (symmetric in a, b)."""
    lo, hi = sorted((a, b))
    return P.hkdf(secret, b"pad", ctx + struct.pack(">II", lo, hi), P.KEY_BYTES)


def self_mask_key(seed: bytes, ctx: bytes, client_id: int) -> bytes:
    return P.hkdf(seed, b"self-mask", ctx + struct.pack(">I", client_id), P.KEY_BYTES)


def seed_commitment(seed: bytes, ctx: bytes, client_id: int) -> bytes:
    return hashlib.sha256(
        b"secure-fml/secagg/v2/seed-commitment" + ctx + struct.pack(">I", client_id) + seed
    ).digest()


def graph_leaf(ctx: bytes, client_id: int, partners: Sequence[int] | np.ndarray) -> bytes:
    return P.merkle_leaf(b"graph" + ctx + struct.pack(">I", client_id) + ids_bytes(partners))


@dataclass
class _Held:
    """A share this client accepted: from whom, the y values and the single-use keys."""

    dealer: PeerKey
    y: tuple[int, int]
    keys: tuple[bytes, bytes]
    tag_key: bytes


@dataclass
class _ClientState:
    """Everything a client remembers within one round; the only mutable object."""

    stage: Stage = Stage.ADVERTISE_KEYS
    enc_keys: P.KeyPair | None = None
    mask_keys: P.KeyPair | None = None
    self_seed: bytes = b""
    #: The holders it drew (SecAgg: every other roster member).
    draws: tuple[int, ...] = ()
    #: Its two shares per drawn holder: (b-share y, mask-key-share y).
    dealt: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: Holders whose signed keys arrived (it dealt to exactly these).
    holder_keys: dict[int, PeerKey] = field(default_factory=dict)
    sent: dict[int, EncryptedShare] = field(default_factory=dict)
    ephemeral: dict[int, bytes] = field(default_factory=dict)
    tag_keys: dict[int, bytes] = field(default_factory=dict)
    #: Dealers whose shares it accepted.
    held: dict[int, _Held] = field(default_factory=dict)
    rejected: set[int] = field(default_factory=set)
    #: Holders told to have shared (it masks with and tags exactly these).
    shared_holders: tuple[int, ...] = ()
    partners: tuple[int, ...] = ()
    status: np.ndarray | None = None
    digest: bytes = b""
    challenge: tuple[int, ...] = ()
    disputed: bool = False
    #: Tags this client sent (holder -> tag), and owners whose valid tag it saw.
    my_tags: dict[int, bytes] = field(default_factory=dict)
    tagged: set[int] = field(default_factory=set)
    #: owner -> kind of share key already revealed; never two kinds for one owner.
    revealed: dict[int, int] = field(default_factory=dict)
    input_vector: np.ndarray | None = None


class ClientSession(AggregationClient):
    """One client's participation in one SecAgg round.

    Call :meth:`start` once, then feed each server message to :meth:`handle` and
    send back what it returns. Any out-of-order, replayed or malformed message
    raises a :class:`~privacy.errors.ProtocolError` subclass and the session must
    be discarded; sessions are single-use because their keys are.

    ``identity_keys`` is the roster: every client of the round with its Ed25519
    identity key (a :class:`~aggregation.Roster`, or a mapping from which one is
    built; a roster that repeats an identity is refused). ``policy`` is the
    client's own :class:`~aggregation.ClientPolicy` (default: ``ClientPolicy()``);
    the proposed ``config`` is checked against it for the roster size on
    construction and refused with :class:`~privacy.errors.PolicyViolation` if it
    is weaker. ``model_hash`` is the hash of the global model this client
    received; it is bound into every signature, key derivation and AEAD, so a
    server that hands different models to different clients cannot finish the
    round with them.

    ``noise_stddev_int`` adds exact discrete Gaussian noise N_Z(0, sigma^2) in
    the integer domain before masking (distributed DP). Size sigma for the
    policy's minimum number of honest inputs (``analysis.honest_in_sum``).
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
        policy: ClientPolicy | None = None,
    ) -> None:
        if not isinstance(config, SecAggConfig):
            raise TypeError("config must be a SecAggConfig")
        if policy is not None and not isinstance(policy, ClientPolicy):
            raise TypeError("policy must be a ClientPolicy")
        if not isinstance(model_hash, bytes) or len(model_hash) != 32:
            raise ConfigError("model_hash must be 32 bytes (SHA-256)")
        if not isinstance(session_id, bytes) or len(session_id) != 16:
            raise ConfigError("session_id must be 16 bytes")
        if not isinstance(noise_stddev_int, (int, float)) or not noise_stddev_int >= 0.0:
            raise ConfigError("noise_stddev_int must be >= 0")
        roster = identity_keys if isinstance(identity_keys, Roster) else Roster(identity_keys)
        if client_id not in roster:
            raise ConfigError("client_id has no identity key in the roster")
        own = P.validate_ed25519_public(identity_key.public_key(), what="own identity key")
        if not P.constant_time_equal(own, roster.raw(client_id)):
            raise ConfigError("identity_key does not match this client's roster entry")
        n = roster.n
        if config.num_clients != n:
            raise PolicyViolation(
                f"parameters are for {config.num_clients} clients but the roster lists {n}"
            )
        self.policy = policy if policy is not None else ClientPolicy()
        #: The analysis this client accepted the round on (raises if too weak).
        self.analysis: SecurityAnalysis = self.policy.check(
            n, config.k, config.t, config.modulus_bits
        )
        self.config = config
        self.client_id = client_id
        self.roster = roster
        self._identity = identity_key
        self.session_id = session_id
        self.round_index = round_index
        self.model_hash = model_hash
        self.noise_stddev_int = float(noise_stddev_int)
        self._rng = rng if rng is not None else P.Csprng()
        self.ctx = round_context(
            session_id=session_id,
            round_index=round_index,
            roster_digest=roster.digest,
            model_hash=model_hash,
            mode=config.mode.value,
            num_clients=n,
            degree=config.k,
            threshold=config.t,
            modulus_bits=config.modulus_bits,
        )
        self.state = _ClientState()
        self.last_noise: np.ndarray | None = None  # kept only for tests of the noise path
        #: Seconds spent in sub-steps of the masked-input stage (for benchmarks).
        self.timings: dict[str, float] = {}
        #: Complaints this client raised (dealer -> reason), for the caller's log.
        self.complaints: dict[int, int] = {}

    # ----------------------------------------------------------------- basics

    @property
    def stage(self) -> Stage:
        return self.state.stage

    @property
    def neighbours(self) -> tuple[int, ...]:
        """Everyone this client masked with (its masking set), once it has masked."""
        return self.state.partners

    @property
    def draws(self) -> tuple[int, ...]:
        """The holders this client drew from the roster with its own CSPRNG."""
        return self.state.draws

    def set_input(self, vector: np.ndarray) -> None:
        """The integer input x_u (any signed/unsigned int dtype); reduced mod 2^b."""
        v = np.asarray(vector)
        if v.ndim != 1 or v.size == 0 or not np.issubdtype(v.dtype, np.integer):
            raise ConfigError("input must be a non-empty 1-D integer array")
        if self.state.stage.value > Stage.SHARE_KEYS.value:
            raise ProtocolError("input must be set before the masked-input stage")
        bits = self.policy.input_bits
        if bits is not None and v.size and int(np.abs(v.astype(np.int64)).max()) >= 2 ** (bits - 1):
            raise PolicyViolation(f"input exceeds this client's declared range of {bits} bits")
        self.state.input_vector = v.astype(np.int64)

    def _expect(self, msg: Message, *stages: Stage) -> None:
        if msg.session_id != self.session_id or msg.round_index != self.round_index:
            raise InvalidMessage("message is for another session or round (replay?)")
        if self.state.stage not in stages:
            raise InvalidMessage(f"{type(msg).__name__} received in stage {self.state.stage.name}")

    def _keys(self) -> tuple[P.KeyPair, P.KeyPair]:
        if self.state.enc_keys is None or self.state.mask_keys is None:
            raise ProtocolError("keys were never advertised")
        return self.state.enc_keys, self.state.mask_keys

    def _check_peer(self, key: PeerKey) -> None:
        """A forwarded peer key must carry its owner's identity signature over this round's
        context and two valid X25519 keys. The honest server checked both at stage 0, so
        a failure here means the server forged or altered it: the round is refused."""
        pk = self.roster.get(key.client_id)
        if pk is None:
            raise InvalidMessage(f"keys of {key.client_id}, who is not on the roster")
        P.verify(pk, key.signature, key.payload(self.ctx), what=f"keys of {key.client_id}")
        P.validate_x25519_public(key.enc_public, what=f"encryption key of {key.client_id}")
        P.validate_x25519_public(key.mask_public, what=f"mask key of {key.client_id}")

    def _draw(self) -> tuple[int, ...]:
        ids = self.roster.ids
        n = len(ids)
        if self.config.complete:
            return tuple(i for i in ids if i != self.client_id)
        me = self.roster.position(self.client_id)
        chosen: set[int] = set()
        while len(chosen) < self.config.k:
            j = int(self._rng.below(n - 1, 1)[0])
            chosen.add(ids[j if j < me else j + 1])
        return tuple(sorted(chosen))

    def start(self) -> AdvertiseKeys:
        """The first message of the uniform stage interface: the key advertisement."""
        return self.advertise_keys()

    def handle(self, message: Message) -> Message:
        """Dispatch a server message to the right stage; returns the reply."""
        if isinstance(message, NeighbourKeys):
            return self.share_keys(message)
        if isinstance(message, ShareRouting):
            return self.masked_input(message)
        if isinstance(message, Review):
            return self.review(message)
        if isinstance(message, DisputeRequest):
            return self.open_disputes(message)
        if isinstance(message, ConsistencyRequest):
            return self.consistency_check(message)
        if isinstance(message, QuorumCertificate):
            return self.challenge(message)
        if isinstance(message, UnmaskRequest):
            return self.unmask(message)
        raise InvalidMessage(f"clients do not accept {type(message).__name__}")

    # ------------------------------------------------------------------ stages

    def advertise_keys(self) -> AdvertiseKeys:
        """Stage 0: draw holders, share both seeds, advertise signed keys and commitments."""
        st = self.state
        if st.stage is not Stage.ADVERTISE_KEYS:
            raise InvalidMessage("keys already advertised")
        st.enc_keys = P.KeyPair.generate(self._rng)
        mask_seed = self._rng.bytes(P.SECRET_BYTES)
        st.mask_keys = P.KeyPair.from_seed(mask_seed, self.ctx)
        st.self_seed = self._rng.bytes(P.SECRET_BYTES)
        st.draws = self._draw()
        xs = [h + 1 for h in st.draws]
        b_shares = P.shamir_split(st.self_seed, xs, self.config.t, self._rng)
        s_shares = P.shamir_split(mask_seed, xs, self.config.t, self._rng)
        st.dealt = {h: (b[1], s[1]) for h, b, s in zip(st.draws, b_shares, s_shares, strict=True)}
        key = PeerKey(
            client_id=self.client_id,
            enc_public=st.enc_keys.public_bytes,
            mask_public=st.mask_keys.public_bytes,
            signature=P.sign(
                self._identity,
                PeerKey.signed_payload(
                    self.ctx, self.client_id, st.enc_keys.public_bytes, st.mask_keys.public_bytes
                ),
            ),
        )
        commitment = seed_commitment(st.self_seed, self.ctx, self.client_id)
        announced = () if self.config.complete else st.draws
        sig = P.sign(
            self._identity,
            AdvertiseKeys.commitment_payload(self.ctx, self.client_id, commitment, announced),
        )
        st.stage = Stage.SHARE_KEYS
        return AdvertiseKeys(
            session_id=self.session_id,
            round_index=self.round_index,
            key=key,
            seed_commitment=commitment,
            neighbours=announced,
            commitment_signature=sig,
        )

    def share_keys(self, msg: NeighbourKeys) -> ShareKeys:
        """Stage 1: verify the drawn holders' keys and deal each its two shares."""
        self._expect(msg, Stage.SHARE_KEYS)
        st = self.state
        if msg.recipient != self.client_id:
            raise InvalidMessage("neighbour keys addressed to another client")
        draws = set(st.draws)
        for key in msg.keys:
            if key.client_id not in draws:
                raise InvalidMessage(
                    f"keys of {key.client_id}, which this client did not draw as a holder"
                )
            self._check_peer(key)
        if len(msg.keys) < self.config.t:
            raise DropoutThresholdNotMet(
                f"only {len(msg.keys)} of this client's holders advertised keys, "
                f"need t = {self.config.t}"
            )
        shares = []
        for key in msg.keys:
            h = key.client_id
            eph = P.KeyPair.generate(self._rng)
            k_b, k_s, k_tag = share_keys_of(
                P.dh(eph.private, key.enc_public), self.ctx, self.client_id, h
            )
            y_b, y_s = st.dealt[h]
            enc = EncryptedShare(
                recipient=h,
                ephemeral_public=eph.public_bytes,
                self_mask=P.seal(
                    k_b,
                    P.encode_element(y_b),
                    share_aad(self.ctx, SHARE_KIND_SELF_MASK, self.client_id, h),
                ),
                mask_key=P.seal(
                    k_s,
                    P.encode_element(y_s),
                    share_aad(self.ctx, SHARE_KIND_MASK_KEY, self.client_id, h),
                ),
            )
            st.holder_keys[h] = key
            st.sent[h] = enc
            st.ephemeral[h] = eph.private_bytes()
            st.tag_keys[h] = k_tag
            shares.append(enc)
        out = tuple(shares)
        sig = P.sign(self._identity, ShareKeys.signed_payload(self.ctx, self.client_id, out))
        st.stage = Stage.MASKED_INPUT
        return ShareKeys(
            session_id=self.session_id,
            round_index=self.round_index,
            sender=self.client_id,
            shares=out,
            signature=sig,
        )

    def masked_input(self, routing: ShareRouting) -> MaskedInput:
        """Stage 2: accept (or complain about) the shares dealt to us, then send
        y = x + noise + PRG(b) + sum of signed pairwise masks mod 2^b, with tags."""
        self._expect(routing, Stage.MASKED_INPUT)
        st = self.state
        enc_keys, mask_keys = self._keys()
        if routing.recipient != self.client_id:
            raise InvalidMessage("share routing addressed to another client")
        if st.input_vector is None:
            raise ProtocolError("set_input() must be called before the masked-input stage")
        shared = set(routing.shared)
        if not shared <= set(st.holder_keys):
            raise InvalidMessage("the server lists as sharing a holder this client never dealt to")
        complaints: list[Complaint] = []
        extra = {k.client_id: k for k in routing.keys}
        for w, key in extra.items():
            if w in st.holder_keys or w == self.client_id:
                raise InvalidMessage(f"keys of {w} sent twice")
            self._check_peer(key)
        for rs in routing.shares:
            w = rs.dealer
            if w == self.client_id:
                raise InvalidMessage("a share dealt to itself")
            dealer_key = st.holder_keys.get(w) or extra.get(w)
            if dealer_key is None:
                raise InvalidMessage(f"a share from {w} without its dealer's keys")
            reason = None
            y: tuple[int, int] | None = None
            keys: tuple[bytes, bytes] | None = None
            k_tag = b""
            try:
                P.validate_x25519_public(rs.ephemeral_public, what=f"ephemeral key of {w}")
            except InvalidMessage:
                reason = ComplaintReason.BAD_KEY
            if reason is None:
                k_b, k_s, k_tag = share_keys_of(
                    P.dh(enc_keys.private, rs.ephemeral_public), self.ctx, w, self.client_id
                )
                try:
                    y_b = P.decode_element(
                        P.unseal(k_b, rs.self_mask, share_aad(self.ctx, 0, w, self.client_id))
                    )
                    y_s = P.decode_element(
                        P.unseal(k_s, rs.mask_key, share_aad(self.ctx, 1, w, self.client_id))
                    )
                    y, keys = (y_b, y_s), (k_b, k_s)
                except InvalidMessage:  # InvalidSignature (tag) or y >= p
                    reason = ComplaintReason.BAD_CIPHERTEXT
            if reason is not None or y is None or keys is None:
                code = reason or ComplaintReason.BAD_CIPHERTEXT
                c = Complaint(
                    dealer=w,
                    reason=code,
                    ephemeral_public=rs.ephemeral_public,
                    self_mask=rs.self_mask,
                    mask_key=rs.mask_key,
                    signature=bytes(64),
                )
                sig = P.sign(self._identity, c.payload(self.ctx, self.client_id))
                complaints.append(
                    Complaint(
                        dealer=w,
                        reason=code,
                        ephemeral_public=rs.ephemeral_public,
                        self_mask=rs.self_mask,
                        mask_key=rs.mask_key,
                        signature=sig,
                    )
                )
                st.rejected.add(w)
                self.complaints[w] = code
                _log.warning("client %d rejects the share dealt by %d", self.client_id, w)
                continue
            st.held[w] = _Held(dealer=dealer_key, y=y, keys=keys, tag_key=k_tag)
        st.shared_holders = tuple(sorted(shared))
        partners = sorted(shared | set(st.held))
        st.partners = tuple(partners)
        bits = self.config.modulus_bits
        dtype = P.mask_dtype(bits)
        x = st.input_vector
        t0 = time.perf_counter()
        if self.noise_stddev_int > 0.0:
            noise = P.DiscreteGaussianSampler(self.noise_stddev_int, self._rng).sample(x.shape[0])
            self.last_noise = noise
            x = x + noise
            lim = self.policy.input_bits
            if lim is not None and int(np.abs(x).max()) >= 2 ** (lim - 1):
                raise PolicyViolation("input plus noise exceeds this client's declared range")
        t1 = time.perf_counter()
        plus = [self_mask_key(st.self_seed, self.ctx, self.client_id)]
        minus: list[bytes] = []
        for p in partners:
            peer = st.holder_keys[p] if p in st.holder_keys else st.held[p].dealer
            seed = pad_seed(P.dh(mask_keys.private, peer.mask_public), self.ctx, self.client_id, p)
            (plus if self.client_id < p else minus).append(seed)
        st.my_tags = {
            h: masking_tag(st.tag_keys[h], self.ctx, self.client_id, h) for h in st.shared_holders
        }
        tags = tuple(sorted(st.my_tags.items()))
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
        st.stage = Stage.REVIEW
        return MaskedInput(
            session_id=self.session_id,
            round_index=self.round_index,
            sender=self.client_id,
            bits=bits,
            vector=acc,
            complaints=tuple(complaints),
            tags=tags,
            tag_signature=P.sign(
                self._identity, MaskedInput.tags_payload(self.ctx, self.client_id, tags)
            ),
        )

    def review(self, request: Review) -> ReviewResponse:
        """Review stage: check each owner's tag; an owner that did not tag us never gets
        its self-mask share revealed by us, and is reported (signed) so it is excluded."""
        self._expect(request, Stage.REVIEW)
        st = self.state
        if request.recipient != self.client_id:
            raise InvalidMessage("review addressed to another client")
        tags = dict(request.tags)
        if not set(tags) <= set(st.held):
            raise InvalidMessage("review carries tags of owners whose shares this client lacks")
        bad = []
        for w, tag in sorted(tags.items()):
            want = masking_tag(st.held[w].tag_key, self.ctx, w, self.client_id)
            if P.constant_time_equal(tag, want):
                st.tagged.add(w)
            else:
                bad.append((w, tag))
                _log.warning("client %d: owner %d's masking tag does not verify", self.client_id, w)
        out = tuple(bad)
        sig = P.sign(self._identity, ReviewResponse.signed_payload(self.ctx, self.client_id, out))
        st.stage = Stage.DISPUTE
        return ReviewResponse(
            session_id=self.session_id,
            round_index=self.round_index,
            sender=self.client_id,
            bad_tags=out,
            signature=sig,
        )

    def open_disputes(self, request: DisputeRequest) -> DisputeResponse:
        """Dispute stage: open the pairs whose complaints quote exactly what we sent."""
        self._expect(request, Stage.DISPUTE)
        st = self.state
        if request.dealer != self.client_id:
            raise InvalidMessage("dispute request addressed to another dealer")
        if st.disputed:
            raise InvalidMessage("a second dispute request in the same round")
        st.disputed = True
        holders: set[int] = set()
        for holder, complaint in request.share_complaints:
            sent = st.sent.get(holder)
            if sent is None or complaint.dealer != self.client_id:
                raise InvalidMessage(f"complaint by {holder} about a share this client never dealt")
            P.verify(
                self.roster[holder],
                complaint.signature,
                complaint.payload(self.ctx, holder),
                what="complaint",
            )
            quoted = sent.ephemeral_public + sent.self_mask + sent.mask_key
            if not P.constant_time_equal(complaint.quoted(), quoted):
                # Opening would hand the server this holder's shares of both our secrets
                # for a ciphertext we never sent: the server (or the transport) altered it.
                raise ConsistencyCheckFailed(
                    f"complaint by {holder} quotes a ciphertext this client never dealt"
                )
            holders.add(holder)
        for holder, tag in request.tag_complaints:
            mine = st.my_tags.get(holder)
            if mine is None or not P.constant_time_equal(mine, tag):
                raise ConsistencyCheckFailed(
                    f"tag complaint by {holder} quotes a tag this client never sent"
                )
            holders.add(holder)
        out = tuple(Opening(holder=h, ephemeral_private=st.ephemeral[h]) for h in sorted(holders))
        sig = P.sign(self._identity, DisputeResponse.signed_payload(self.ctx, self.client_id, out))
        return DisputeResponse(
            session_id=self.session_id,
            round_index=self.round_index,
            sender=self.client_id,
            openings=out,
            signature=sig,
        )

    def consistency_check(self, request: ConsistencyRequest) -> ConsistencyResponse:
        """Consistency stage: check the agreed status vector and sign its digest."""
        self._expect(request, Stage.DISPUTE)
        st = self.state
        if request.recipient != self.client_id:
            raise InvalidMessage("consistency request addressed to another client")
        status = request.status
        n = self.roster.n
        if status.shape[0] != n:
            raise InvalidMessage(f"status vector of {status.shape[0]} entries for {n} clients")
        pos = self.roster.position
        if status[pos(self.client_id)] != STATUS_ALIVE:
            raise InvalidMessage("the status vector does not list this (live) client as alive")
        need = self.analysis.required_survivors
        for name, count in (
            ("advertised keys", int((status >= 1).sum())),
            ("shared keys", int((status >= STATUS_SHARED).sum())),
            ("sent masked inputs", int((status == STATUS_ALIVE).sum())),
        ):
            if count < need:
                raise DropoutThresholdNotMet(
                    f"{count} of {n} clients {name}; this client's policy requires {need}"
                )
        for h in st.draws:
            s = int(status[pos(h)])
            if h in st.shared_holders and s < STATUS_SHARED:
                raise ConsistencyCheckFailed(f"holder {h} was said to have shared, now {s}")
            if h in st.holder_keys and h not in st.shared_holders and s >= STATUS_SHARED:
                raise ConsistencyCheckFailed(f"holder {h} was said not to have shared")
            if h not in st.holder_keys and s != STATUS_ABSENT:
                raise ConsistencyCheckFailed(f"the server withheld the keys of holder {h}")
        for w in st.held:
            if status[pos(w)] < STATUS_SHARED:
                raise ConsistencyCheckFailed(
                    f"dealer {w} dealt to this client but is listed absent"
                )
        for w in st.held:
            if status[pos(w)] == STATUS_ALIVE and w not in st.tagged:
                raise ConsistencyCheckFailed(
                    f"owner {w} is listed alive but never showed a valid masking tag"
                )
        for w in st.rejected:
            if status[pos(w)] == STATUS_ALIVE:
                raise ConsistencyCheckFailed(
                    f"dealer {w} dealt this client a bad share but is still listed alive"
                )
        P.merkle_verify(
            graph_leaf(self.ctx, self.client_id, st.partners),
            pos(self.client_id),
            n,
            request.proof,
            request.graph_root,
        )
        st.status = status.copy()
        st.digest = consistency_digest(self.ctx, status, request.graph_root)
        sig = P.sign(self._identity, st.digest)
        st.stage = Stage.QUORUM_CHALLENGE
        return ConsistencyResponse(
            session_id=self.session_id,
            round_index=self.round_index,
            sender=self.client_id,
            signature=sig,
        )

    def challenge(self, cert: QuorumCertificate) -> QuorumChallenge:
        """Quorum stage: the certificate is fixed; pick which of its signatures to verify."""
        self._expect(cert, Stage.QUORUM_CHALLENGE)
        st = self.state
        if st.status is None:
            raise ProtocolError("no signed status vector")
        signers = cert.signers
        n = self.roster.n
        if signers.shape[0] != n:
            raise InvalidMessage(f"signer bitmap of {signers.shape[0]} entries for {n} clients")
        me = self.roster.position(self.client_id)
        if not signers[me]:
            raise ConsistencyCheckFailed("the certificate omits this client's own signature")
        if (signers & (st.status != STATUS_ALIVE)).any():
            raise ConsistencyCheckFailed("the certificate lists a signer that is not alive")
        count = int(signers.sum())
        if count < self.analysis.required_survivors:
            raise DropoutThresholdNotMet(
                f"{count} consistency signatures; this client's policy requires "
                f"{self.analysis.required_survivors}"
            )
        positions = np.flatnonzero(signers)
        positions = positions[positions != me]
        s = self.analysis.samples
        if s >= positions.size:
            picked = positions.tolist()
        else:
            # Fresh coins, drawn only now that the certificate is fixed.
            chosen_pos: set[int] = set()
            while len(chosen_pos) < s:
                chosen_pos.add(int(positions[int(self._rng.below(positions.size, 1)[0])]))
            picked = sorted(chosen_pos)
        ids = self.roster.ids
        chosen = sorted(ids[p] for p in picked)
        st.challenge = tuple(chosen)
        st.stage = Stage.UNMASKING
        return QuorumChallenge(
            session_id=self.session_id,
            round_index=self.round_index,
            sender=self.client_id,
            indices=st.challenge,
        )

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Unmasking stage: verify the challenged signatures, then reveal one share key
        per owner (self-mask kind if it survived, mask-key kind if it dropped)."""
        self._expect(request, Stage.UNMASKING)
        st = self.state
        if st.status is None:
            raise ProtocolError("no signed status vector")
        got = [i for i, _ in request.signatures]
        if tuple(got) != st.challenge:
            raise ConsistencyCheckFailed("the certificate does not answer this client's challenge")
        for signer, sig in request.signatures:
            try:
                P.verify(self.roster[signer], sig, st.digest, what=f"consistency of {signer}")
            except InvalidSignature as exc:
                # A different model, roster, parameter set or status vector at the signer
                # all look like this; none of them may be unmasked.
                raise ConsistencyCheckFailed(
                    f"client {signer} did not sign this client's view of the round"
                ) from exc
        pos = self.roster.position
        alive = tuple(w for w in sorted(st.held) if st.status[pos(w)] == STATUS_ALIVE)
        dropped = tuple(w for w in sorted(st.held) if st.status[pos(w)] != STATUS_ALIVE)
        if request.survivors != alive or request.dropped != dropped:
            raise ConsistencyCheckFailed(
                "unmask request lists survivors or dropouts that differ from the signed view"
            )
        untagged = [w for w in alive if w not in st.tagged]
        if untagged:
            # Never reveal the self mask of an owner that did not show it masked with us:
            # that is exactly how a server would isolate it (its revealing holders must
            # be among those it masked with).
            raise ConsistencyCheckFailed(
                f"owners {untagged[:5]} are listed alive but never showed a valid masking tag"
            )
        keys = []
        for w in sorted(st.held):
            kind = SHARE_KIND_SELF_MASK if w in alive else SHARE_KIND_MASK_KEY
            prior = st.revealed.get(w)
            if prior is not None and prior != kind:
                raise InvalidMessage(f"refusing to reveal both share kinds of client {w}")
            st.revealed[w] = kind
            keys.append(RevealedKey(owner=w, kind=kind, key=st.held[w].keys[kind]))
        out = tuple(keys)
        sig = P.sign(self._identity, UnmaskResponse.signed_payload(self.ctx, self.client_id, out))
        st.stage = Stage.DONE
        _log.debug("client %d reveals %d share keys", self.client_id, len(out))
        return UnmaskResponse(
            session_id=self.session_id,
            round_index=self.round_index,
            sender=self.client_id,
            keys=out,
            signature=sig,
        )
