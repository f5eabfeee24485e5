"""The record lists SecAgg messages hold their per-pair items in (shares, tags, revealed
keys): the same items as a tuple would hold, the wire's checks, one ``bytes`` across a
process boundary, and no per-pair Python object left in the server after a round."""

from __future__ import annotations

import gc
import pickle
import struct
import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregation import SecAggMode, ShareKeys, ShareRouting, Stage, UnmaskResponse
from aggregation._messages import (
    SHARE_CIPHERTEXT_BYTES,
    SHARE_KIND_MASK_KEY,
    SHARE_KIND_SELF_MASK,
    TAG_BYTES,
    EncryptedShare,
    EncryptedShares,
    Ids,
    RevealedKey,
    RevealedKeys,
    RoutedShare,
    RoutedShares,
    Tags,
)
from aggregation._primitives import KEY_BYTES, SYMMETRIC_KEY_BYTES
from privacy.errors import InvalidMessage
from tests.aggregation import _harness as H

_ids = st.lists(st.integers(0, 2**31 - 1), max_size=12, unique=True).map(sorted)


def _items(kind: str, ids: list[int], draw: Any) -> list[Any]:
    def b(n: int) -> bytes:
        return draw(st.binary(min_size=n, max_size=n))

    if kind == "shares":
        return [
            EncryptedShare(
                recipient=i,
                ephemeral_public=b(KEY_BYTES),
                self_mask=b(SHARE_CIPHERTEXT_BYTES),
                mask_key=b(SHARE_CIPHERTEXT_BYTES),
            )
            for i in ids
        ]
    if kind == "routed":
        return [
            RoutedShare(
                dealer=i,
                ephemeral_public=b(KEY_BYTES),
                self_mask=b(SHARE_CIPHERTEXT_BYTES),
                mask_key=b(SHARE_CIPHERTEXT_BYTES),
            )
            for i in ids
        ]
    if kind == "tags":
        return [(i, b(TAG_BYTES)) for i in ids]
    if kind == "ids":
        return list(ids)
    kinds = st.sampled_from([SHARE_KIND_SELF_MASK, SHARE_KIND_MASK_KEY])
    return [RevealedKey(owner=i, kind=draw(kinds), key=b(SYMMETRIC_KEY_BYTES)) for i in ids]


_TYPES = {
    "shares": EncryptedShares,
    "routed": RoutedShares,
    "tags": Tags,
    "keys": RevealedKeys,
    "ids": Ids,
}


def _encode(kind: str, item: Any) -> bytes:
    if kind == "tags":
        return struct.pack(">I", item[0]) + item[1]
    if kind == "ids":
        return struct.pack(">I", item)
    return bytes(item.encode())


@settings(max_examples=80, deadline=None)
@given(kind=st.sampled_from(sorted(_TYPES)), ids=_ids, data=st.data())
def test_a_record_list_is_the_items_it_encodes(kind: str, ids: list[int], data: Any) -> None:
    items = _items(kind, ids, data.draw)
    recs = _TYPES[kind](items)
    assert len(recs) == len(items)
    assert list(recs) == items and [recs[i] for i in range(len(items))] == items
    assert recs == tuple(items) and recs == items
    assert recs.raw == b"".join(_encode(kind, x) for x in items)
    assert _TYPES[kind](recs.raw) == recs and hash(_TYPES[kind](recs.raw)) == hash(recs)
    assert pickle.loads(pickle.dumps(recs)) == recs
    assert recs.ids().tolist() == ids
    lo, hi = data.draw(st.integers(0, len(items))), data.draw(st.integers(0, len(items)))
    assert list(recs[lo:hi]) == items[lo:hi] and list(recs[::2]) == items[::2]
    for pos, i in enumerate(ids):
        assert recs.find(i) == pos
        assert recs.record(pos) == _encode(kind, items[pos])[4:]
    absent = data.draw(st.integers(0, 2**31 - 1).filter(lambda i: i not in ids))
    assert recs.find(absent) is None
    if items:
        assert recs[-1] == items[-1]
        with pytest.raises(IndexError):
            recs[len(items)]


@pytest.mark.parametrize("cls", [EncryptedShares, RoutedShares, Tags, RevealedKeys, Ids])
def test_a_record_list_refuses_what_the_wire_forbids(cls: Any) -> None:
    size = cls.SIZE

    def rec(i: int) -> bytes:
        body = bytearray(size - 4)
        if cls is RevealedKeys:
            body[0] = SHARE_KIND_MASK_KEY
        return struct.pack(">I", i) + bytes(body)

    cls(rec(1) + rec(2))  # well-formed
    for bad in (rec(2) + rec(1), rec(1) + rec(1), rec(2**31), (rec(1) + rec(2))[:-1]):
        with pytest.raises(InvalidMessage):
            cls(bad)
    if cls is RevealedKeys:
        wrong_kind = bytearray(rec(1))
        wrong_kind[4] = 2
        with pytest.raises(InvalidMessage, match="kind"):
            cls(bytes(wrong_kind))
    if cls is Ids:
        for ints in ([2, 1], [1, 1], [-1], [2**31], [1.5], ["1"]):
            with pytest.raises(InvalidMessage):
                cls(ints)
    if cls is Tags:
        for pairs in ([(1, bytes(TAG_BYTES - 1))], [(-1, bytes(TAG_BYTES))], [(1, "x" * 16)]):
            with pytest.raises(InvalidMessage):
                cls(pairs)


_PAIR_FIELDS = {
    "ShareKeys": "shares",
    "ShareRouting": "shares",
    "MaskedInput": "tags",
    "Review": "tags",
    "ReviewResponse": "bad_tags",
    "DisputeRequest": "tag_complaints",
    "UnmaskResponse": "keys",
    "AdvertiseKeys": "neighbours",
}


def test_messages_hold_their_pairs_as_records_and_pickle_as_bytes() -> None:
    rd = H.make_round(12, mode=SecAggMode.SECAGG, policy=H.SMALL_POLICY, d=5)
    out = H.drive(rd)
    assert out.aggregate is not None
    seen = set()
    for _, _, m in [*out.to_server, *out.to_client]:
        field = _PAIR_FIELDS.get(type(m).__name__)
        if field is None:
            continue
        value = getattr(m, field)
        assert isinstance(value, (EncryptedShares, RoutedShares, Tags, RevealedKeys, Ids))
        seen.add(type(m).__name__)
        again = pickle.loads(pickle.dumps(m))
        assert again.to_bytes() == m.to_bytes()
        if len(value) > 4:
            # Across a process boundary the pairs travel as one bytes object: the pickle
            # is the wire size plus a fixed overhead, not ~100 bytes of object per pair.
            assert len(pickle.dumps(m)) < len(m.to_bytes()) + 600, type(m).__name__
    assert {"ShareKeys", "ShareRouting", "MaskedInput", "Review", "UnmaskResponse"} <= seen


def _reachable(root: object) -> list[object]:
    """Every object reachable from ``root`` (not descending into classes and modules)."""
    seen: set[int] = set()
    out: list[object] = []
    todo = [root]
    while todo:
        o = todo.pop()
        if id(o) in seen or isinstance(o, type) or type(o).__name__ == "module":
            continue
        seen.add(id(o))
        out.append(o)
        todo.extend(gc.get_referents(o))
    return out


def test_after_a_round_the_server_holds_no_python_object_per_share_tag_or_key() -> None:
    """At n = 10,000 a SecAgg+ server sees ~10^6 shares, tags and revealed keys: held as
    objects they cost the coordinator ~1 KB each. It must hold them as records only."""
    rd = H.make_round(16, mode=SecAggMode.SECAGG, policy=H.SMALL_POLICY, d=5)
    out = H.drive(rd)
    assert out.aggregate is not None and len(rd.server.survivors) == 16
    del out
    held = _reachable(rd.server)
    per_pair = [
        o
        for o in held
        if isinstance(o, (EncryptedShare, RoutedShare, RevealedKey))
        or (isinstance(o, tuple) and len(o) == 2 and isinstance(o[1], bytes) and len(o[1]) == 16)
    ]
    assert per_pair == []
    # What the server holds per client is a bounded number of objects, whatever k is
    # (here k = n - 1 = 15 shares per client, 225 pairs in all).
    assert isinstance(rd.server._shares[0], ShareKeys)
    assert sum(isinstance(o, np.ndarray) for o in held) < 40 * 16
    assert all(
        isinstance(m.keys, RevealedKeys)
        for m in rd.server._reveals.values()
        if isinstance(m, UnmaskResponse)
    )


def test_the_routing_outbox_gathers_forwarded_shares_when_read_and_holds_none() -> None:
    """At the end of sharing a SecAgg+ server forwards n·k shares (~130 MB at n = 10,000):
    its outbox holds views that gather them from the regrouped table when read, not the
    records. Read, serialized or pickled, each view is exactly the records it shows."""
    rd = H.make_round(60, mode=SecAggMode.SECAGG_PLUS, policy=H.SMALL_POLICY, d=4)
    srv = rd.server
    close = srv.close_stage
    seen: dict[str, Any] = {}

    def traced_close() -> Any:
        if srv.stage is not Stage.SHARE_KEYS:
            return close()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            seen["outbox"] = close()
            seen["retained"] = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        return seen["outbox"]

    srv.close_stage = traced_close  # type: ignore[method-assign]
    out = H.drive(rd)
    assert out.aggregate is not None and len(out.aggregate.contributors) == 60
    routing = seen["outbox"].messages
    assert len(routing) == 60 and all(isinstance(m, ShareRouting) for m in routing.values())
    forwarded = sum(len(m.shares.raw) for m in routing.values())
    # Closing the stage keeps the routing table (3 int64 per share), the messages and
    # their id lists, and less than the forwarded records themselves (holding them, it
    # kept 1.5x their size here; as views, about half).
    assert forwarded > 60 * 10 * RoutedShare.BYTES
    assert seen["retained"] < forwarded, (seen["retained"], forwarded)
    for v, m in routing.items():
        # Who shared, as 4-byte ids (n·k of them in all), not a tuple of Python ints.
        assert isinstance(m.shared, Ids) and list(m.shared) == sorted(m.shared)
        assert isinstance(srv._adverts[v].neighbours, Ids) and len(srv._adverts[v].neighbours) > 0
        plain = RoutedShares(m.shares.raw)
        assert [s.dealer for s in plain] == sorted(s.dealer for s in plain) and len(plain) > 0
        assert m.shares == plain and hash(m.shares) == hash(plain) and plain == m.shares
        again = pickle.loads(pickle.dumps(m))
        assert type(again.shares) is RoutedShares and again == m
        wire = ShareRouting.from_bytes(m.to_bytes())
        assert type(wire.shares) is RoutedShares and wire == m
        # What the holder received is what it was dealt, dealer by dealer.
        for s in plain:
            dealt = srv._dealt(s.dealer, v)
            assert (s.ephemeral_public, s.self_mask, s.mask_key) == (
                dealt.ephemeral_public,
                dealt.self_mask,
                dealt.mask_key,
            )


@pytest.mark.parametrize("budget", [0, 1 << 22], ids=["disk", "memory"])
def test_the_server_spills_the_shares_tags_and_keys_it_checked(budget: int) -> None:
    """A SecAgg+ server keeps every dealer's signed shares (n·k records) until the round
    ends, for routing, recovery and evidence: beyond its budget they are on disk, and
    every read (routing, recovery, the evidence bytes) is what the dealer signed."""
    rd = H.with_budgets(
        H.make_round(40, mode=SecAggMode.SECAGG_PLUS, policy=H.SMALL_POLICY, d=4),
        share_memory_bytes=budget,
    )
    out = H.drive(rd, H.InMemoryNetwork({3: Stage.MASKED_INPUT}))  # 3's masks recovered
    agg = out.aggregate
    assert agg is not None and 3 not in agg.contributors and len(agg.contributors) == 39
    assert np.array_equal(H.lifted(rd, agg.total), H.plain_sum(rd, agg.contributors))
    sent = out.replies(Stage.SHARE_KEYS)
    assert sorted(rd.server._shares) == sorted(sent) == list(range(40))
    for u, m in sent.items():
        kept = rd.server._shares[u]
        assert kept.to_bytes() == m.to_bytes() and kept == m
        assert kept.records.ids().tolist() == m.records.ids().tolist()
        assert [kept.records.record(i) for i in range(len(m.records))] == [
            m.records.record(i) for i in range(len(m.records))
        ]
    # So are the masking tags (n·k, reviewed by the holders) and the revealed keys (n·k,
    # decrypting the shares): kept as checked, every record read back as it was sent.
    masked = out.replies(Stage.MASKED_INPUT)
    assert sorted(rd.server._inputs) == sorted(masked) and len(masked) == 39
    for u, mi in masked.items():
        tags = rd.server._inputs[u].tag_records
        assert tags == mi.tag_records and tags.raw == mi.tag_records.raw
        assert list(tags) == list(mi.tag_records) and len(tags) == len(mi.tag_records) > 0
    unmasked = out.replies(Stage.UNMASKING)
    assert sorted(rd.server._reveals) == sorted(unmasked) and len(unmasked) > 0
    for v, um in unmasked.items():
        keys = rd.server._reveals[v].keys
        assert isinstance(keys, RevealedKeys) and keys == um.keys
        assert list(keys) == list(um.keys) and keys.ids().tolist() == um.keys.ids().tolist()
    if budget == 0:
        # None of these records is among the server's objects: everything else it holds
        # as bytes (signatures, public keys, the sum) is less than the shares alone.
        reachable = [o for o in _reachable(rd.server) if isinstance(o, bytes)]
        dealt = sum(len(m.records.raw) for m in sent.values())
        assert sum(map(len, reachable)) < dealt, (sum(map(len, reachable)), dealt)
        kept = {m.tag_records.raw for m in masked.values()}
        kept |= {RevealedKeys.of(m.keys).raw for m in unmasked.values()}
        assert kept.isdisjoint(reachable)
