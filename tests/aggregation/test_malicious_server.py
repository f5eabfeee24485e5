"""A malicious coordinator (and its colluding insiders) against honest ClientSessions.

Each test scripts one attack of issue 10 with a dishonest server or network, drives
real client sessions, and asserts what an honest client does: it refuses with a
typed error, or the server learns nothing beyond a sum of at least the required
number of honest inputs, or the offender is identified with evidence that
:func:`aggregation.verify_evidence` accepts.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from aggregation import (
    ClientPolicy,
    ClientSession,
    InMemoryNetwork,
    MaskedInput,
    Message,
    MisbehaviourKind,
    NeighbourKeys,
    Outbox,
    QuorumCertificate,
    Review,
    Roster,
    SecAggConfig,
    SecAggMode,
    ServerSession,
    ShareKeys,
    ShareRouting,
    Stage,
    UnmaskRequest,
    centered_lift,
    verify_evidence,
)
from aggregation import _primitives as P
from aggregation._client import pad_seed, self_mask_key, share_aad
from aggregation._messages import (
    SHARE_KIND_MASK_KEY,
    SHARE_KIND_SELF_MASK,
    STATUS_SHARED,
    Complaint,
    ComplaintReason,
    consistency_digest,
)
from privacy.errors import (
    ConsistencyCheckFailed,
    DropoutThresholdNotMet,
    InvalidMessage,
    InvalidSignature,
    PolicyViolation,
    ProtocolAbort,
)
from tests.aggregation import _harness as H

PLUS = SecAggMode.SECAGG_PLUS
#: A deliberately weak policy (t = 2 at n = 20) that a client accepts: the quorum
#: certificate is then the only thing between a split view and both secrets of a client.
WEAK = ClientPolicy(
    max_dropout_fraction=0.3,
    max_corrupt_fraction=0.05,
    security_bits=1,
    max_attempts_log2=0,
    min_survivor_fraction=0.1,
    min_survivors=3,
)


def _recover_input(rd: H.Round, out: H.Outcome, victim: int) -> np.ndarray | None:
    """What the adversary can compute about ``victim``'s input from everything it saw:
    decrypt every share whose key a holder revealed (or that a corrupt holder holds),
    rebuild the secrets it has t shares of, and strip the masks off y_victim."""
    ctx = rd.clients[victim].ctx
    t = rd.cfg.t
    shares = {m.sender: m for m in out.replies(Stage.SHARE_KEYS).values()}  # type: ignore[attr-defined]
    adverts = out.replies(Stage.ADVERTISE_KEYS)
    points: dict[tuple[int, int], dict[int, int]] = {}
    for s, i, m in out.to_server:
        if s is not Stage.UNMASKING:
            continue
        for rk in m.keys:  # type: ignore[attr-defined]
            dealt = {e.recipient: e for e in shares[rk.owner].shares}.get(i)
            if dealt is None:
                continue
            ct = dealt.self_mask if rk.kind == SHARE_KIND_SELF_MASK else dealt.mask_key
            try:
                y = P.decode_element(P.unseal(rk.key, ct, share_aad(ctx, rk.kind, rk.owner, i)))
            except InvalidMessage:
                continue
            points.setdefault((rk.owner, rk.kind), {})[i + 1] = y
    for c in rd.corrupt:  # colluders know the shares dealt to them
        for owner in range(rd.n):
            y2 = rd.clients[owner].state.dealt.get(c)
            if y2 is not None and owner in shares:
                for kind in (SHARE_KIND_SELF_MASK, SHARE_KIND_MASK_KEY):
                    points.setdefault((owner, kind), {})[c + 1] = y2[kind]

    def secret(owner: int, kind: int) -> bytes | None:
        pts = sorted(points.get((owner, kind), {}).items())
        if len(pts) < t:
            return None
        return P.shamir_reconstruct(pts[:t], t)

    masked = out.replies(Stage.MASKED_INPUT).get(victim)
    b = secret(victim, SHARE_KIND_SELF_MASK)
    if masked is None or b is None:
        return None
    bits = rd.cfg.modulus_bits
    acc = masked.vector.copy()  # type: ignore[attr-defined]
    minus = [self_mask_key(b, ctx, victim)]
    plus: list[bytes] = []
    my_mask = adverts[victim].key.mask_public  # type: ignore[attr-defined]
    for p in rd.clients[victim].state.partners:
        if p in rd.corrupt:
            keys = rd.clients[p].state.mask_keys
        else:
            seed = secret(p, SHARE_KIND_MASK_KEY)
            if seed is None:
                return None
            keys = P.KeyPair.from_seed(seed, ctx)
        assert keys is not None
        s = pad_seed(P.dh(keys.private, my_mask), ctx, victim, p)
        (minus if victim < p else plus).append(s)
    P.add_prg_masks(acc, plus, minus, bits)
    return centered_lift(acc, bits)


# ----------------------------------------------- 1. split views, quorum certificate


class SplitViewServer(ServerSession):
    """Shows the victim's holders two stories: to ``view_a`` the victim survived (they
    reveal its self-mask shares), to ``view_b`` it dropped (they reveal its mask-key
    shares), and forges for each group a certificate claiming every survivor signed."""

    victim = 0
    view_b: frozenset[int] = frozenset()

    def _need(self, count: int, what: str) -> None:  # a dishonest server counts nothing
        return None

    def close_stage(self) -> Outbox:  # type: ignore[override]
        out = super().close_stage()
        if not isinstance(out, Outbox):
            return out
        msgs = dict(out.messages)
        if out.stage is Stage.CONSISTENCY_CHECK:
            holders = [h for h in self.draws(self.victim) if h in msgs]
            self.view_b = frozenset(holders[len(holders) // 2 :])
            fake = self._status.copy()
            fake[self.roster.position(self.victim)] = STATUS_SHARED
            for u in self.view_b:
                msgs[u] = dataclasses.replace(msgs[u], status=fake)
            self.fake_digest = consistency_digest(self.ctx, fake, msgs[self.victim].graph_root)
            self.b_sigs: dict[int, bytes] = {}
        elif out.stage is Stage.QUORUM_CHALLENGE:
            msgs = {}
            for view_b in (False, True):
                claimed = [u for u in self._alive if not (view_b and u == self.victim)]
                bitmap = np.zeros(self.roster.n, dtype=bool)
                for u in claimed:
                    bitmap[self.roster.position(u)] = True
                cert = QuorumCertificate(
                    session_id=self.session_id, round_index=self.round_index, signers=bitmap
                )
                for u in self._alive:
                    if (u in self.view_b) == view_b:
                        msgs[u] = cert
        out = Outbox(out.stage, msgs, out.reveals_sum)
        self._awaiting = set(msgs)
        return out

    def _receive_consistency(self, m: Message) -> None:
        if m.sender in self.view_b:  # type: ignore[attr-defined]
            P.verify(self.roster[m.sender], m.signature, self.fake_digest, what="b")  # type: ignore[attr-defined]
            self.b_sigs[m.sender] = m.signature  # type: ignore[attr-defined]
            return
        super()._receive_consistency(m)  # type: ignore[arg-type]

    def _receive_challenge(self, m: Message) -> None:
        self._challenges[m.sender] = m.indices  # type: ignore[attr-defined]

    def _close_challenge(self) -> Outbox:
        msgs: dict[int, Message] = {}
        for u, idx in self._challenges.items():
            view_b = u in self.view_b
            sigs = tuple(
                (i, (self.b_sigs if view_b else self._signatures).get(i, bytes(64))) for i in idx
            )
            held = self._held_by(u)
            alive = set(self._alive) - ({self.victim} if view_b else set())
            msgs[u] = UnmaskRequest(
                session_id=self.session_id,
                round_index=self.round_index,
                signatures=sigs,
                survivors=tuple(w for w in held if w in alive),
                dropped=tuple(w for w in held if w not in alive),
            )
        return Outbox(Stage.UNMASKING, msgs, reveals_sum=True)

    def _receive_unmask(self, m: Message) -> None:
        self._reveals[m.sender] = m  # type: ignore[attr-defined]


def test_split_views_cannot_both_be_certified_so_no_client_loses_both_secrets() -> None:
    rd = H.make_round(20, mode=PLUS, policy=WEAK, server_cls=SplitViewServer, deterministic=True)
    assert rd.cfg.t == 2  # without the certificate, two holders per view would suffice
    out = H.drive(rd)
    server = rd.server
    assert isinstance(server, SplitViewServer) and len(server.view_b) >= 2
    # Every client refused to reveal anything: no certificate of either view verifies.
    assert set(out.client_errors) == set(range(20))
    assert all(out.error_stage[i] is Stage.UNMASKING for i in range(20))
    assert all(isinstance(e, ConsistencyCheckFailed) for e in out.client_errors.values())
    assert not out.replies(Stage.UNMASKING)
    assert _recover_input(rd, out, 0) is None
    assert H.both_kinds(rd, H.adversary_shares(rd, out)) == []


# -------------------------------------------------------------- 2. small U1 / U3


class CountlessServer(ServerSession):
    """Forwards whatever it likes and never checks a count itself."""

    def _need(self, count: int, what: str) -> None:
        return None


class DropAdverts(InMemoryNetwork):
    def __init__(self, keep: set[int]) -> None:
        super().__init__()
        self.keep = keep

    def to_server(self, stage: Stage, sender: int, msg: Message) -> Message | None:
        if stage is Stage.ADVERTISE_KEYS and sender not in self.keep:
            return None
        return super().to_server(stage, sender, msg)


def test_a_round_over_few_advertisers_is_refused_before_anything_is_revealed() -> None:
    rd = H.make_round(20, server_cls=CountlessServer)  # SecAgg: t = 11
    keep = set(range(rd.cfg.t + 1))  # just enough keys for every holder count
    out = H.drive(rd, DropAdverts(keep))
    assert set(out.client_errors) == keep
    assert all(out.error_stage[i] is Stage.CONSISTENCY_CHECK for i in keep)
    assert all(isinstance(e, DropoutThresholdNotMet) for e in out.client_errors.values())
    assert "policy requires 18" in str(out.client_errors[0])
    assert not out.replies(Stage.UNMASKING) and out.aggregate is None


def test_a_client_enforces_its_own_dp_minimum_of_survivors() -> None:
    # The coordinator tolerates 10% missing; this site's DP accounting assumed 95% survive.
    strict = ClientPolicy(min_survivor_fraction=0.95)
    rd = H.make_round(20, policy=ClientPolicy())
    rd.clients[5] = ClientSession(
        rd.cfg,
        client_id=5,
        identity_key=rd.ids[5],
        identity_keys=rd.roster,
        session_id=rd.sid,
        round_index=7,
        model_hash=rd.model,
        policy=strict,
    )
    rd.clients[5].set_input(rd.x[5])
    out = H.drive(rd, InMemoryNetwork({3: Stage.MASKED_INPUT, 9: Stage.MASKED_INPUT}))
    assert out.error_stage[5] is Stage.CONSISTENCY_CHECK
    assert "requires 19" in str(out.client_errors[5])
    assert set(out.client_errors) == {5}


# ------------------------------------------------------------- 3. ungrindable graph


def test_the_server_cannot_choose_or_grind_which_holders_a_client_uses() -> None:
    rd = H.make_round(24, mode=PLUS)
    ad = rd.clients[0].start()
    draw = ad.neighbours
    assert len(draw) == rd.cfg.k and draw == rd.clients[0].draws
    # The draw is signed at stage 0, before the server has sent anything.
    P.verify(
        rd.roster[0],
        ad.commitment_signature,
        ad.commitment_payload(rd.clients[0].ctx, 0, ad.seed_commitment, draw),
        what="draw",
    )
    others = {i: c.start() for i, c in rd.clients.items() if i != 0}
    # Whatever subset the server forwards, the client deals to (and masks with) its
    # own draw restricted to it; a key it did not draw is refused.
    stranger = next(i for i in others if i not in draw)
    with pytest.raises(InvalidMessage, match="did not draw"):
        rd.clients[0].handle(
            NeighbourKeys(
                session_id=rd.sid, round_index=7, recipient=0, keys=(others[stranger].key,)
            )
        )
    sub = tuple(others[h].key for h in draw[: rd.cfg.t])
    msg = rd.clients[0].handle(
        NeighbourKeys(session_id=rd.sid, round_index=7, recipient=0, keys=sub)
    )
    assert isinstance(msg, ShareKeys) and {s.recipient for s in msg.shares} <= set(draw)


def test_holder_draws_are_uniform_over_the_roster() -> None:
    rd = H.make_round(30, mode=PLUS)
    c = rd.clients[4]
    counts = np.zeros(30, dtype=np.int64)
    for _ in range(3000):
        for h in c._draw():
            counts[h] += 1
    assert counts[4] == 0
    assert stats.chisquare(np.delete(counts, 4)).pvalue > 1e-4


# ------------------------------------------------------------ 4. lowered k, t, b


@pytest.mark.parametrize(
    ("n", "mode", "kw", "match"),
    [
        (100, PLUS, {"degree": 2, "threshold": 2}, "k = 2, t = 2"),
        (100, SecAggMode.SECAGG, {"threshold": 51}, "requires t >= 53"),
        (60, PLUS, {"degree": 59, "threshold": 20}, "requires t >= 32"),
    ],
)
def test_a_client_refuses_parameters_weaker_than_its_policy(
    n: int, mode: SecAggMode, kw: dict[str, int], match: str
) -> None:
    cfg = SecAggConfig(num_clients=n, mode=mode, **kw)
    ids = {i: Ed25519PrivateKey.generate() for i in range(n)}
    roster = Roster({i: k.public_key() for i, k in ids.items()})
    with pytest.raises(PolicyViolation, match=match):
        ClientSession(
            cfg,
            client_id=0,
            identity_key=ids[0],
            identity_keys=roster,
            session_id=bytes(16),
            round_index=0,
            model_hash=bytes(32),
        )


def test_a_client_refuses_a_modulus_or_roster_size_its_policy_forbids() -> None:
    n = 12
    ids = {i: Ed25519PrivateKey.generate() for i in range(n)}
    roster = Roster({i: k.public_key() for i, k in ids.items()})
    kw = {"client_id": 0, "identity_key": ids[0], "identity_keys": roster}
    ctx = {"session_id": bytes(16), "round_index": 0, "model_hash": bytes(32)}
    with pytest.raises(PolicyViolation, match="modulus of 16 bits"):
        ClientSession(
            SecAggConfig(num_clients=n, modulus_bits=16),
            policy=ClientPolicy(input_bits=16),
            **kw,  # type: ignore[arg-type]
            **ctx,  # type: ignore[arg-type]
        )
    with pytest.raises(PolicyViolation, match="for 13 clients"):
        ClientSession(SecAggConfig(num_clients=13), **kw, **ctx)  # type: ignore[arg-type]
    c = ClientSession(
        SecAggConfig(num_clients=n, modulus_bits=32),
        policy=ClientPolicy(input_bits=16),
        **kw,  # type: ignore[arg-type]
        **ctx,  # type: ignore[arg-type]
    )
    with pytest.raises(PolicyViolation, match="16 bits"):
        c.set_input(np.array([2**15]))


@settings(max_examples=20, deadline=None)
@given(n=st.integers(3, 200), data=st.data())
def test_client_acceptance_is_exactly_the_policy_analysis(n: int, data: st.DataObject) -> None:
    policy = ClientPolicy()
    k = data.draw(st.integers(1, n - 1))
    t = data.draw(st.integers(1, k))
    a = policy.analyse(n, k, t)
    complete_ok = k < n - 1 or t >= (n + policy.corrupt(n)) // 2 + 1
    secure = complete_ok and a.log2_security <= -policy.target_bits
    try:
        policy.check(n, k, t, 32)
    except PolicyViolation:
        assert not secure
    else:
        assert secure
    # The parameters a coordinator derives with the same policy always pass.
    for complete in (False, True):
        try:
            k2, t2 = policy.derive(n, complete=complete)
        except ValueError:  # no threshold exists for this n (ConfigError)
            continue
        policy.check(n, k2, t2, 32)


# ----------------------------------------------------- 5. forged or altered shares


def _resign(rd: H.Round, i: int, msg: Message) -> Message:
    """A corrupt client re-signs an altered message with its own identity key."""
    ctx = rd.clients[i].ctx
    key = rd.ids[i]
    if isinstance(msg, ShareKeys):
        return dataclasses.replace(msg, signature=key.sign(msg.payload(ctx)))
    from aggregation import UnmaskResponse

    if isinstance(msg, UnmaskResponse):
        return dataclasses.replace(msg, signature=key.sign(msg.payload(ctx)))
    raise AssertionError(type(msg))


def test_a_forged_share_key_is_detected_excluded_and_attributed() -> None:
    rd = H.make_round(12, mode=PLUS)
    liar = 5

    def forge(i: int, stage: Stage, msg: Message) -> Message:
        if i == liar and stage is Stage.UNMASKING:
            keys = tuple(dataclasses.replace(k, key=bytes(16)) for k in msg.keys)  # type: ignore[attr-defined]
            return _resign(rd, i, dataclasses.replace(msg, keys=keys))
        return msg

    out = H.drive(rd, client_hook=forge)
    agg = out.aggregate
    assert agg is not None and agg.contributors == tuple(range(12))
    assert np.array_equal(H.lifted(rd, agg.total), H.plain_sum(rd, agg.contributors))
    bad = [e for e in agg.evidence if e.kind is MisbehaviourKind.BAD_REVEALED_KEY]
    assert bad and {e.offender for e in bad} == {liar}
    for e in bad:
        verify_evidence(e, rd.roster)
    tampered = dataclasses.replace(bad[0], offender=4)
    with pytest.raises((InvalidMessage, InvalidSignature)):
        verify_evidence(tampered, rd.roster)


def test_an_inconsistent_sharing_is_caught_with_proof() -> None:
    rd = H.make_round(8, policy=ClientPolicy(min_survivors=3))
    cheat = 2
    st_ = rd.clients[cheat].state
    orig = rd.clients[cheat].advertise_keys

    def bad_advert() -> Message:
        ad = orig()
        # The dealer shares a different self-mask seed than the one it committed to.
        other = P.shamir_split(bytes(16), [h + 1 for h in st_.draws], rd.cfg.t, P.Csprng())
        st_.dealt = {h: (y, st_.dealt[h][1]) for h, (_, y) in zip(st_.draws, other, strict=True)}
        return ad

    rd.clients[cheat].advertise_keys = bad_advert  # type: ignore[method-assign]
    out = H.drive(rd)
    assert isinstance(out.abort, ProtocolAbort) and "retry the round without it" in str(out.abort)
    ev = [e for e in out.abort.evidence if e.kind is MisbehaviourKind.INCONSISTENT_SHARING]  # type: ignore[attr-defined]
    assert [e.offender for e in ev] == [cheat]
    verify_evidence(ev[0], rd.roster)


# -------------------------------------------------------------- 6. bad ciphertexts


def test_one_insiders_bad_ciphertext_drops_only_that_insider() -> None:
    rd = H.make_round(16, mode=PLUS)
    cheat = 3

    def corrupt_one(i: int, stage: Stage, msg: Message) -> Message:
        if i == cheat and stage is Stage.SHARE_KEYS:
            s0 = msg.shares[0]  # type: ignore[attr-defined]
            bad = dataclasses.replace(s0, self_mask=bytes([s0.self_mask[0] ^ 1]) + s0.self_mask[1:])
            rd.clients[i].state.sent[s0.recipient] = bad  # it stands by what it sent
            return _resign(rd, i, dataclasses.replace(msg, shares=(bad, *msg.shares[1:])))  # type: ignore[attr-defined]
        return msg

    out = H.drive(rd, client_hook=corrupt_one)
    agg = out.aggregate
    assert agg is not None and out.client_errors == {}
    assert agg.excluded == (cheat,) and agg.contributors == tuple(
        i for i in range(16) if i != cheat
    )
    assert np.array_equal(H.lifted(rd, agg.total), H.plain_sum(rd, agg.contributors))
    (ev,) = agg.evidence
    assert ev.kind is MisbehaviourKind.BAD_SHARE and ev.offender == cheat and ev.proven
    verify_evidence(ev, rd.roster)


def test_a_false_complaint_excludes_the_complainer() -> None:
    rd = H.make_round(16, mode=PLUS)
    liar = 6

    def complain(i: int, stage: Stage, msg: Message) -> Message:
        if i == liar and stage is Stage.MASKED_INPUT:
            dealer = min(rd.clients[liar].state.held)
            shares = next(m for s, j, m in out_box if s is Stage.SHARE_KEYS and j == dealer)
            e = next(s for s in shares.shares if s.recipient == liar)  # type: ignore[attr-defined]
            c = Complaint(
                dealer=dealer,
                reason=ComplaintReason.BAD_CIPHERTEXT,
                ephemeral_public=e.ephemeral_public,
                self_mask=e.self_mask,
                mask_key=e.mask_key,
                signature=bytes(64),
            )
            c = dataclasses.replace(
                c, signature=rd.ids[liar].sign(c.payload(rd.clients[liar].ctx, liar))
            )
            return dataclasses.replace(msg, complaints=(c,))
        out_box.append((stage, i, msg))
        return msg

    out_box: list[tuple[Stage, int, Message]] = []
    out = H.drive(rd, client_hook=complain)
    agg = out.aggregate
    assert agg is not None and agg.excluded == (liar,)
    (ev,) = agg.evidence
    assert ev.kind is MisbehaviourKind.FALSE_COMPLAINT and ev.offender == liar
    verify_evidence(ev, rd.roster)
    assert np.array_equal(H.lifted(rd, agg.total), H.plain_sum(rd, agg.contributors))


class TamperInTransit(InMemoryNetwork):
    """A coordinator that alters one share on its way to a holder."""

    def __init__(self, holder: int) -> None:
        super().__init__()
        self.holder = holder

    def to_client(self, stage: Stage, recipient: int, msg: Message) -> Message | None:
        out = super().to_client(stage, recipient, msg)
        if isinstance(out, ShareRouting) and recipient == self.holder and out.shares:
            s0 = out.shares[0]
            bad = dataclasses.replace(s0, mask_key=bytes(len(s0.mask_key)))
            return dataclasses.replace(out, shares=(bad, *out.shares[1:]))
        return out


class OpenAnyway(ServerSession):
    """Forwards every complaint to the dealer, hoping it opens a pair the server altered
    (an opening hands the server the holder's shares of both of the dealer's secrets)."""

    def _close_masked_input(self) -> Outbox:
        for v, rejected in self._rejected.items():
            for w in rejected:
                self._share_disputes.setdefault(w, []).append(v)
        live = sorted(self._inputs)
        msgs = {
            v: Review(
                session_id=self.session_id,
                round_index=self.round_index,
                recipient=v,
                tags=tuple(
                    (w, tag)
                    for w in self._held_by(v).tolist()
                    if (tag := self._tag(w, v)) is not None
                ),
            )
            for v in live
        }
        return Outbox(Stage.REVIEW, msgs)


def test_a_tampered_share_never_makes_an_honest_dealer_open_its_pair() -> None:
    rd = H.make_round(16, mode=PLUS, server_cls=OpenAnyway)
    holder = 1
    out = H.drive(rd, TamperInTransit(holder))
    dealer = next(iter(rd.clients[holder].complaints))
    assert isinstance(out.client_errors.get(dealer), ConsistencyCheckFailed)
    assert out.error_stage[dealer] is Stage.DISPUTE
    assert not out.replies(Stage.DISPUTE)  # no opening ever reached the server
    agg = out.aggregate
    assert agg is not None and dealer in agg.excluded and holder in agg.contributors
    (ev,) = agg.evidence
    assert ev.kind is MisbehaviourKind.UNANSWERED_COMPLAINT and not ev.proven
    assert np.array_equal(H.lifted(rd, agg.total), H.plain_sum(rd, agg.contributors))


def test_an_honest_server_attributes_a_misquoted_complaint_without_asking_the_dealer() -> None:
    rd = H.make_round(16, mode=PLUS)
    holder = 1
    out = H.drive(rd, TamperInTransit(holder))
    agg = out.aggregate
    assert agg is not None and agg.excluded == (holder,) and out.client_errors == {}
    (ev,) = agg.evidence
    # It names the holder, but a third party cannot tell a lying holder from a channel
    # that altered the share: it is an accusation, not a proof.
    assert ev.kind is MisbehaviourKind.MISQUOTED_COMPLAINT and not ev.proven
    with pytest.raises(InvalidMessage, match="accusation"):
        verify_evidence(ev, rd.roster)
    assert not out.replies(Stage.DISPUTE)
    assert np.array_equal(H.lifted(rd, agg.total), H.plain_sum(rd, agg.contributors))


# ------------------------------------------------------------ 7. small-order keys


_P = 2**255 - 19
_BAD_KEYS = [
    0,
    1,
    _P - 1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
    _P,  # non-canonical 0
    _P + 1,  # non-canonical 1
]


@pytest.mark.parametrize("u", _BAD_KEYS[:5] + _BAD_KEYS[6:])
@pytest.mark.parametrize("which", ["enc_public", "mask_public"])
def test_an_invalid_x25519_key_is_refused_at_stage_0_with_evidence(u: int, which: str) -> None:
    rd = H.make_round(10, policy=ClientPolicy(min_survivors=3))
    cheat = 4
    raw = u.to_bytes(32, "little")

    def bad_key(i: int, stage: Stage, msg: Message) -> Message:
        if i == cheat and stage is Stage.ADVERTISE_KEYS:
            ctx = rd.clients[i].ctx
            key = dataclasses.replace(msg.key, **{which: raw})  # type: ignore[attr-defined]
            key = dataclasses.replace(key, signature=rd.ids[i].sign(key.payload(ctx)))
            return dataclasses.replace(msg, key=key)
        return msg

    out = H.drive(rd, client_hook=bad_key)
    assert [(i, s) for i, s, _ in out.refusals] == [(cheat, Stage.ADVERTISE_KEYS)]
    agg = out.aggregate
    assert agg is not None and out.client_errors == {}
    assert agg.contributors == tuple(i for i in range(10) if i != cheat)
    (ev,) = agg.evidence
    assert ev.kind is MisbehaviourKind.BAD_ADVERTISEMENT and ev.offender == cheat
    verify_evidence(ev, rd.roster)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (bytes(32), "small order"),
        # 2^255 + 9 decodes to the valid point u = 9 once the top bit is masked, so key
        # agreement would succeed: only the canonical-encoding check refuses it.
        ((2**255 + 9).to_bytes(32, "little"), "non-canonical"),
    ],
)
def test_a_client_refuses_a_forwarded_invalid_key(raw: bytes, match: str) -> None:
    rd = H.make_round(6, policy=ClientPolicy(min_survivors=3))
    ads = {i: c.start() for i, c in rd.clients.items()}
    ctx = rd.clients[0].ctx
    bad = dataclasses.replace(ads[1].key, enc_public=raw)
    bad = dataclasses.replace(bad, signature=rd.ids[1].sign(bad.payload(ctx)))
    keys = tuple(bad if i == 1 else ads[i].key for i in sorted(ads) if i != 0)
    with pytest.raises(InvalidMessage, match=match):
        rd.clients[0].handle(
            NeighbourKeys(session_id=rd.sid, round_index=7, recipient=0, keys=keys)
        )


# ---------------------------------------------------------------- 8. Sybil roster


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 12), data=st.data())
def test_a_roster_with_a_repeated_identity_is_refused(n: int, data: st.DataObject) -> None:
    keys = [Ed25519PrivateKey.generate() for _ in range(n)]
    roster = {i: k.public_key() for i, k in enumerate(keys)}
    a = data.draw(st.integers(0, n - 1))
    b = data.draw(st.integers(0, n - 1).filter(lambda b: b != a))
    sybil = dict(roster)
    sybil[b] = keys[a].public_key()  # a second place for identity a
    cfg = SecAggConfig(num_clients=n)
    for me in (a, b, next(i for i in range(n) if i not in (a, b)) if n > 2 else a):
        with pytest.raises(PolicyViolation, match="Sybil"):
            ClientSession(
                cfg,
                client_id=me,
                identity_key=keys[me] if me != b else keys[a],
                identity_keys=sybil,
                session_id=bytes(16),
                round_index=0,
                model_hash=bytes(32),
            )


# ------------------------------------------- 9. withholding to shrink a masking set


class Isolate(InMemoryNetwork):
    """Tell the victim that none of its holders shared, and hide the shares dealt to it:
    it then masks with nobody, and its holders are asked to reveal its self mask."""

    def __init__(self, victim: int) -> None:
        super().__init__()
        self.victim = victim

    def to_client(self, stage: Stage, recipient: int, msg: Message) -> Message | None:
        out = super().to_client(stage, recipient, msg)
        if isinstance(out, ShareRouting) and recipient == self.victim:
            return dataclasses.replace(out, shares=(), shared=())
        return out


class LaxServer(ServerSession):
    """Accepts the victim's untagged masked input, keeps it alive, hands its holders
    forged tags for it, and ignores their reports."""

    victim = 0

    def _receive_masked_input(self, m: MaskedInput) -> None:
        self._inputs[m.sender] = m
        if m.sender == self.victim:
            forged = tuple((h, os.urandom(16)) for h in self._shared_by(m.sender).tolist())
            self._inputs[m.sender] = dataclasses.replace(m, tags=forged)

    def _need(self, count: int, what: str) -> None:
        return None

    def _close_review(self) -> Outbox:
        return self._open_consistency()


def test_withholding_partners_never_exposes_a_clients_self_mask() -> None:
    rd = H.make_round(16, mode=PLUS, server_cls=LaxServer)
    victim = 0
    out = H.drive(rd, Isolate(victim))
    masked = out.replies(Stage.MASKED_INPUT)[victim]
    assert masked.tags == ()  # type: ignore[attr-defined]
    assert rd.clients[victim].neighbours == ()  # it masked with nobody
    known = H.adversary_shares(rd, out)
    # None of the victim's honest holders revealed its self-mask share (its tags were
    # forged), so y_victim = x + PRG(b) stays masked.
    assert len(known.get((victim, SHARE_KIND_SELF_MASK), set())) < rd.cfg.t
    assert _recover_input(rd, out, victim) is None
    holders = set(rd.clients[victim].draws) - rd.corrupt
    reviews = out.replies(Stage.REVIEW)
    assert all(victim in dict(reviews[h].bad_tags) for h in holders)  # type: ignore[attr-defined]
    assert all(out.error_stage[h] is Stage.CONSISTENCY_CHECK for h in holders)
    assert all("masking tag" in str(out.client_errors[h]) for h in holders)


def test_a_holder_never_reveals_the_self_mask_of_an_owner_it_saw_no_tag_from() -> None:
    # Defence in depth behind the consistency check: even a signed view that lists an
    # untagged owner alive does not make the holder reveal that owner's share.
    rd = H.make_round(8, policy=ClientPolicy(min_survivors=3))
    holder = 3
    seen: dict[str, Message] = {}

    class Forget(InMemoryNetwork):
        def to_client(self, stage: Stage, recipient: int, msg: Message) -> Message | None:
            out = super().to_client(stage, recipient, msg)
            if stage is Stage.UNMASKING and recipient == holder:
                rd.clients[holder].state.tagged.discard(0)
                seen["req"] = msg
            return out

    out = H.drive(rd, Forget())
    assert "req" in seen
    assert isinstance(out.client_errors[holder], ConsistencyCheckFailed)
    assert "never showed a valid masking tag" in str(out.client_errors[holder])


def _share_counts(known: Mapping[tuple[int, int], set[int]], owner: int) -> tuple[int, int]:
    return (
        len(known.get((owner, SHARE_KIND_SELF_MASK), ())),
        len(known.get((owner, SHARE_KIND_MASK_KEY), ())),
    )


def test_a_share_message_dealt_to_other_holders_is_refused_with_verifiable_evidence() -> None:
    """A client that deals to holders other than its drawn ones (here: one share left
    out, re-signed) is refused at stage 1 with evidence anyone can check; the round
    completes without it."""
    rd = H.make_round(16, mode=PLUS)
    cheat = 6

    def drop_one(i: int, stage: Stage, msg: Message) -> Message:
        if i == cheat and stage is Stage.SHARE_KEYS:
            return _resign(rd, i, dataclasses.replace(msg, shares=msg.shares[1:]))  # type: ignore[attr-defined]
        return msg

    out = H.drive(rd, client_hook=drop_one)
    assert [(i, s) for i, s, _ in out.refusals] == [(cheat, Stage.SHARE_KEYS)]
    agg = out.aggregate
    assert agg is not None and cheat not in agg.contributors and len(agg.contributors) == 15
    assert np.array_equal(H.lifted(rd, agg.total), H.plain_sum(rd, agg.contributors))
    (ev,) = [e for e in agg.evidence if e.kind is MisbehaviourKind.BAD_SHARE_MESSAGE]
    assert ev.offender == cheat and ev.proven
    verify_evidence(ev, rd.roster)  # the signed message and the drawn holders it quotes
    with pytest.raises((InvalidMessage, InvalidSignature)):
        verify_evidence(dataclasses.replace(ev, offender=cheat + 1), rd.roster)
