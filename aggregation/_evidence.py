"""Attribution: what a server records when it proves (or suspects) a client misbehaved.

Every proven item is a small bundle of messages signed by the offender (and, where
the claim involves a second party, by that party), plus the one secret that
settles the question: a dealer's opening of a disputed pair, or a holder's
revealed share key. :func:`verify_evidence` re-checks a bundle against the roster
without trusting whoever recorded it, so a coordinator can exclude a proven
offender from later rounds and show why; ``proven=False`` items (a dealer that did
not answer a complaint) are suspicions to count, not proofs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from aggregation import _primitives as P
from aggregation._messages import (
    SHARE_KIND_MASK_KEY,
    SHARE_KIND_SELF_MASK,
    AdvertiseKeys,
    Complaint,
    DisputeResponse,
    MaskedInput,
    ReviewResponse,
    ShareKeys,
    UnmaskResponse,
    _Reader,
)
from aggregation._roster import Roster
from privacy.errors import InvalidMessage, InvalidSignature

__all__ = ["Evidence", "MisbehaviourKind", "verify_evidence"]


class MisbehaviourKind(enum.Enum):
    """What a client was caught doing."""

    #: A signed advertisement with an invalid X25519 key (small order, non-canonical)
    #: or a holder draw that is not k distinct other roster members.
    BAD_ADVERTISEMENT = "bad_advertisement"
    #: A signed share message that does not deal to its drawn holders, or uses an
    #: invalid ephemeral key.
    BAD_SHARE_MESSAGE = "bad_share_message"
    #: An opened pair whose signed ciphertext does not decrypt to a share.
    BAD_SHARE = "bad_share"
    #: An opened pair whose signed masking tag does not verify.
    BAD_TAG = "bad_tag"
    #: A complaint about a ciphertext or tag that the dealer's opening shows to be valid.
    FALSE_COMPLAINT = "false_complaint"
    #: A complaint quoting a ciphertext the dealer never signed (the holder lied, or the
    #: channel altered the share: an accusation, not a proof).
    MISQUOTED_COMPLAINT = "misquoted_complaint"
    #: A signed opening that does not match the pair's ephemeral public key.
    BAD_OPENING = "bad_opening"
    #: An accused dealer that did not open the disputed pair (not a proof).
    UNANSWERED_COMPLAINT = "unanswered_complaint"
    #: A holder's signed share key that does not decrypt the dealer's signed ciphertext.
    BAD_REVEALED_KEY = "bad_revealed_key"
    #: Shares a dealer signed that do not reconstruct the seed or key it committed to.
    INCONSISTENT_SHARING = "inconsistent_sharing"


@dataclass(frozen=True)
class Evidence:
    """One attributed offence in one round.

    ``parts`` are the raw signed wire messages (and openings) the claim rests on,
    by name; ``context`` is the round context every signature binds.
    """

    kind: MisbehaviourKind
    offender: int
    proven: bool
    detail: str
    context: bytes
    parts: tuple[tuple[str, bytes], ...] = ()

    def part(self, name: str) -> bytes:
        for k, v in self.parts:
            if k == name:
                return v
        raise InvalidMessage(f"evidence has no part {name!r}")


def _share_of(shares: ShareKeys, holder: int) -> tuple[bytes, bytes, bytes]:
    for s in shares.shares:
        if s.recipient == holder:
            return s.ephemeral_public, s.self_mask, s.mask_key
    raise InvalidMessage(f"the share message deals nothing to {holder}")


def _decrypts(
    ctx: bytes, dealer: int, holder: int, secret: bytes, cts: tuple[bytes, bytes]
) -> bool:
    from aggregation._client import share_aad, share_keys_of

    k_b, k_s, _ = share_keys_of(secret, ctx, dealer, holder)
    try:
        for kind, key, ct in (
            (SHARE_KIND_SELF_MASK, k_b, cts[0]),
            (SHARE_KIND_MASK_KEY, k_s, cts[1]),
        ):
            P.decode_element(P.unseal(key, ct, share_aad(ctx, kind, dealer, holder)))
    except InvalidMessage:
        return False
    return True


def verify_evidence(evidence: Evidence, roster: Roster) -> None:
    """Raise unless ``evidence`` proves its claim against ``roster``'s identity keys.

    Raises :class:`~privacy.errors.InvalidMessage` (or :class:`InvalidSignature`) if
    a signature does not verify, a part is missing, or the claim does not follow;
    an unproven item (``proven=False``) always raises.
    """
    if not evidence.proven:
        raise InvalidMessage(f"{evidence.kind.value} is an accusation, not a proof")
    ctx = evidence.context
    kind = evidence.kind
    off = evidence.offender
    if off not in roster:
        raise InvalidMessage("the offender is not on the roster")
    if kind is MisbehaviourKind.BAD_ADVERTISEMENT:
        ad = AdvertiseKeys.from_bytes(evidence.part("advertisement"))
        if ad.client_id != off:
            raise InvalidMessage("the advertisement is not the offender's")
        P.verify(roster[off], ad.key.signature, ad.key.payload(ctx), what="advertisement")
        P.verify(
            roster[off],
            ad.commitment_signature,
            AdvertiseKeys.commitment_payload(ctx, off, ad.seed_commitment, ad.neighbours),
            what="commitments",
        )
        try:
            P.validate_x25519_public(ad.key.enc_public, what="encryption key")
            P.validate_x25519_public(ad.key.mask_public, what="mask key")
        except InvalidMessage:
            return
        draw = ad.neighbours
        k = int.from_bytes(evidence.part("degree"), "big")
        if draw and (len(draw) != k or off in draw or any(d not in roster for d in draw)):
            return
        raise InvalidMessage("the advertisement is valid")
    if kind is MisbehaviourKind.BAD_SHARE_MESSAGE:
        sk = ShareKeys.from_bytes(evidence.part("shares"))
        if sk.sender != off:
            raise InvalidMessage("the share message is not the offender's")
        P.verify(roster[off], sk.signature, sk.payload(ctx), what="share message")
        for s in sk.shares:
            try:
                P.validate_x25519_public(s.ephemeral_public, what="ephemeral key")
            except InvalidMessage:
                return
        expected = tuple(
            int.from_bytes(evidence.part("recipients")[i : i + 4], "big")
            for i in range(0, len(evidence.part("recipients")), 4)
        )
        if tuple(s.recipient for s in sk.shares) != expected:
            return
        raise InvalidMessage("the share message is valid")
    if kind in (
        MisbehaviourKind.BAD_SHARE,
        MisbehaviourKind.BAD_TAG,
        MisbehaviourKind.FALSE_COMPLAINT,
        MisbehaviourKind.MISQUOTED_COMPLAINT,
        MisbehaviourKind.BAD_OPENING,
    ):
        from aggregation._client import masking_tag, share_keys_of

        sk = ShareKeys.from_bytes(evidence.part("shares"))
        dealer = sk.sender
        P.verify(roster[dealer], sk.signature, sk.payload(ctx), what="share message")
        holder = int.from_bytes(evidence.part("holder"), "big")
        epk, ct_b, ct_s = _share_of(sk, holder)
        names = {k for k, _ in evidence.parts}
        is_tag = "review" in names
        quoted_tag = b""
        if is_tag:
            review = ReviewResponse.from_bytes(evidence.part("review"))
            if review.sender != holder:
                raise InvalidMessage("the review is not the complainer's")
            P.verify(roster[holder], review.signature, review.payload(ctx), what="review")
            tagged = MaskedInput.from_bytes(evidence.part("tags"))
            if tagged.sender != dealer:
                raise InvalidMessage("the tags are not the dealer's")
            P.verify(
                roster[dealer],
                tagged.tag_signature,
                MaskedInput.tags_payload(ctx, dealer, tagged.tags),
                what="tags",
            )
            quoted = dict(review.bad_tags).get(dealer)
            sent = dict(tagged.tags).get(holder)
            if quoted is None or sent is None or not P.constant_time_equal(quoted, sent):
                raise InvalidMessage("the review does not quote the dealer's signed tag")
            quoted_tag = sent
        else:
            complaint = Complaint.decode(_Reader(evidence.part("complaint")))
            P.verify(
                roster[holder],
                complaint.signature,
                complaint.payload(ctx, holder),
                what="complaint",
            )
            if kind is MisbehaviourKind.MISQUOTED_COMPLAINT:
                if off != holder:
                    raise InvalidMessage("a misquoted complaint is the complainer's offence")
                if P.constant_time_equal(complaint.quoted(), epk + ct_b + ct_s):
                    raise InvalidMessage("the complaint quotes the dealt ciphertext exactly")
                return
        resp = DisputeResponse.from_bytes(evidence.part("opening"))
        if resp.sender != dealer:
            raise InvalidMessage("the opening is not the dealer's")
        P.verify(roster[dealer], resp.signature, resp.payload(ctx), what="opening")
        opened = [o for o in resp.openings if o.holder == holder]
        if len(opened) != 1:
            raise InvalidMessage("the opening does not cover the disputed pair")
        eph = P.KeyPair.from_private_bytes(opened[0].ephemeral_private)
        if kind is MisbehaviourKind.BAD_OPENING:
            if off != dealer or P.constant_time_equal(eph.public_bytes, epk):
                raise InvalidMessage("the opening matches the ephemeral key")
            return
        if not P.constant_time_equal(eph.public_bytes, epk):
            raise InvalidMessage("the opening does not match the ephemeral key")
        holder_ad = AdvertiseKeys.from_bytes(evidence.part("holder_advertisement"))
        if holder_ad.client_id != holder:
            raise InvalidMessage("the holder advertisement is not the complainer's")
        P.verify(roster[holder], holder_ad.key.signature, holder_ad.key.payload(ctx), what="keys")
        secret = P.dh(eph.private, holder_ad.key.enc_public)
        if is_tag:
            _, _, k_tag = share_keys_of(secret, ctx, dealer, holder)
            good = P.constant_time_equal(masking_tag(k_tag, ctx, dealer, holder), quoted_tag)
        else:
            good = _decrypts(ctx, dealer, holder, secret, (ct_b, ct_s))
        bad_kind = MisbehaviourKind.BAD_TAG if is_tag else MisbehaviourKind.BAD_SHARE
        if kind is bad_kind and off == dealer and not good:
            return
        if kind is MisbehaviourKind.FALSE_COMPLAINT and off == holder and good:
            return
        raise InvalidMessage("the opened pair does not support the claim")
    if kind is MisbehaviourKind.BAD_REVEALED_KEY:
        sk = ShareKeys.from_bytes(evidence.part("shares"))
        reveal = UnmaskResponse.from_bytes(evidence.part("reveal"))
        if reveal.sender != off:
            raise InvalidMessage("the reveal is not the offender's")
        P.verify(roster[sk.sender], sk.signature, sk.payload(ctx), what="share message")
        P.verify(roster[off], reveal.signature, reveal.payload(ctx), what="reveal")
        _, ct_b, ct_s = _share_of(sk, off)
        from aggregation._client import share_aad

        for rk in reveal.keys:
            if rk.owner != sk.sender:
                continue
            ct = ct_b if rk.kind == SHARE_KIND_SELF_MASK else ct_s
            try:
                P.decode_element(P.unseal(rk.key, ct, share_aad(ctx, rk.kind, sk.sender, off)))
            except InvalidMessage:
                return
        raise InvalidMessage("every revealed key decrypts the dealt share")
    if kind is MisbehaviourKind.INCONSISTENT_SHARING:
        from aggregation._client import seed_commitment, share_aad

        sk = ShareKeys.from_bytes(evidence.part("shares"))
        ad = AdvertiseKeys.from_bytes(evidence.part("advertisement"))
        if sk.sender != off or ad.client_id != off:
            raise InvalidMessage("the share message or advertisement is not the offender's")
        P.verify(roster[off], sk.signature, sk.payload(ctx), what="share message")
        P.verify(roster[off], ad.key.signature, ad.key.payload(ctx), what="advertisement")
        P.verify(
            roster[off],
            ad.commitment_signature,
            AdvertiseKeys.commitment_payload(ctx, off, ad.seed_commitment, ad.neighbours),
            what="commitments",
        )
        share_kind = int.from_bytes(evidence.part("kind"), "big")
        t = int.from_bytes(evidence.part("threshold"), "big")
        points = []
        for name, raw in evidence.parts:
            if not name.startswith("reveal:"):
                continue
            rev = UnmaskResponse.from_bytes(raw)
            P.verify(roster[rev.sender], rev.signature, rev.payload(ctx), what="reveal")
            _, ct_b, ct_s = _share_of(sk, rev.sender)
            found = [k for k in rev.keys if k.owner == off and k.kind == share_kind]
            if len(found) != 1:
                raise InvalidMessage("a reveal does not carry the share key")
            ct = ct_b if share_kind == SHARE_KIND_SELF_MASK else ct_s
            y = P.decode_element(
                P.unseal(found[0].key, ct, share_aad(ctx, share_kind, off, rev.sender))
            )
            points.append((rev.sender + 1, y))
        if len(points) < t:
            raise InvalidMessage(f"{len(points)} revealed shares, the claim needs t = {t}")
        try:
            secret = P.shamir_reconstruct(sorted(points)[:t], t)
        except InvalidMessage:
            return  # not even a 16-byte secret: inconsistent
        if share_kind == SHARE_KIND_SELF_MASK:
            ok = P.constant_time_equal(seed_commitment(secret, ctx, off), ad.seed_commitment)
        else:
            ok = P.constant_time_equal(
                P.KeyPair.from_seed(secret, ctx).public_bytes, ad.key.mask_public
            )
        if ok:
            raise InvalidMessage("the revealed shares reconstruct the committed secret")
        return
    raise InvalidSignature(f"no verifier for {kind.value}")
