"""Protocol properties of SecAgg / SecAgg+: exactness, dropouts, hygiene, consistency."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import aggregation
from aggregation import (
    ClientPolicy,
    ConsistencyResponse,
    InMemoryNetwork,
    MaskedInput,
    Message,
    NeighbourKeys,
    PlainInput,
    PlainSumClient,
    PlainSumServer,
    SecAggConfig,
    SecAggMode,
    ShareKeys,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
    parse_message,
    run_protocol,
    secure_sum,
    secure_sum_int,
)
from aggregation._messages import SHARE_KIND_MASK_KEY, SHARE_KIND_SELF_MASK
from privacy.errors import (
    ConfigError,
    ConsistencyCheckFailed,
    DropoutThresholdNotMet,
    InvalidMessage,
    InvalidSignature,
    ProtocolError,
)
from tests.aggregation import _harness as H

MODES = st.sampled_from([SecAggMode.SECAGG, SecAggMode.SECAGG_PLUS])
DROP_STAGES = [
    Stage.ADVERTISE_KEYS,
    Stage.SHARE_KEYS,
    Stage.MASKED_INPUT,
    Stage.REVIEW,
    Stage.CONSISTENCY_CHECK,
    Stage.QUORUM_CHALLENGE,
    Stage.UNMASKING,
]
#: Tolerates 30% missing clients, so small rounds can lose several.
LOOSE = ClientPolicy(max_dropout_fraction=0.3, max_corrupt_fraction=0.0, min_survivors=2)
#: No missing client tolerated (for rounds of 4).
TIGHT = ClientPolicy(max_dropout_fraction=0.1, max_corrupt_fraction=0.0, min_survivors=2)


def _cfg(
    n: int, mode: SecAggMode = SecAggMode.SECAGG, policy: ClientPolicy = LOOSE, **kw: object
) -> SecAggConfig:
    return SecAggConfig(
        num_clients=n,
        mode=mode,
        max_dropout_fraction=policy.max_dropout_fraction,
        max_corrupt_fraction=policy.max_corrupt_fraction,
        min_survivors=policy.min_survivors,
        min_survivor_fraction=policy.min_survivor_fraction,
        **kw,  # type: ignore[arg-type]
    )


def _plain_sum(xs: list[np.ndarray], survivors: tuple[int, ...]) -> np.ndarray:
    return np.sum([xs[i] for i in survivors], axis=0)


# ------------------------------------------------------------- exactness


@settings(max_examples=10, deadline=None)
@given(
    n=st.integers(3, 7),
    d=st.integers(1, 40),
    bits=st.sampled_from([8, 13, 24, 32, 40, 62]),
    mode=MODES,
    data=st.data(),
)
def test_integer_sum_is_exact(
    n: int, d: int, bits: int, mode: SecAggMode, data: st.DataObject
) -> None:
    cfg = SecAggConfig(num_clients=n, mode=mode, modulus_bits=bits)
    # Inputs anywhere in the range whose n-fold sum cannot wrap (edges included).
    lim = (2 ** (bits - 1) - 1) // n
    arr = st.lists(st.integers(-lim, lim), min_size=d, max_size=d)
    xs = [np.array(data.draw(arr), dtype=np.int64) for _ in range(n)]
    res = secure_sum_int(xs, config=cfg)
    assert res.survivors == tuple(range(n))
    assert np.array_equal(res.integer_sum, np.sum(xs, axis=0))


@settings(max_examples=8, deadline=None)
@given(
    n=st.integers(3, 6),
    d=st.integers(1, 64),
    clip=st.floats(0.01, 100.0),
    bits=st.sampled_from([24, 32, 48]),
    rotate=st.booleans(),
    mode=MODES,
    seed=st.integers(0, 2**32 - 1),
)
def test_float_sum_within_quantization_bound(
    n: int, d: int, clip: float, bits: int, rotate: bool, mode: SecAggMode, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    vs = [(rng.normal(size=d) * clip).astype(np.float32) for _ in range(n)]
    cfg = SecAggConfig(num_clients=n, mode=mode, modulus_bits=bits)
    res = secure_sum(vs, config=cfg, clip_norm=clip, rotate=rotate)
    assert res.codec is not None
    clipped = [res.codec.clip(v) for v in vs]
    err = res.sum - np.sum(clipped, axis=0)
    if rotate:
        pad = res.codec.padded_dimension
        assert np.linalg.norm(err) <= np.sqrt(pad) * res.codec.quantization_bound * (1 + 1e-9)
    else:
        assert np.max(np.abs(err)) <= res.codec.quantization_bound * (1 + 1e-9)


def test_stochastic_rounding_is_unbiased() -> None:
    cfg = SecAggConfig(num_clients=3)
    codec = aggregation.FixedPointCodec.create(
        clip_norm=1.0, num_clients=3, modulus_bits=cfg.modulus_bits, dimension=50_000, scale=4.0
    )
    x = np.full(50_000, 0.1 / np.sqrt(50_000))
    q = codec.encode(x, aggregation._primitives.Csprng())
    assert abs(q.mean() / 4.0 - x[0]) < 5 * 0.5 / 4.0 / np.sqrt(q.size)


def test_codec_refuses_a_modulus_that_could_wrap() -> None:
    with pytest.raises(ConfigError):
        aggregation.FixedPointCodec.create(
            clip_norm=1.0, num_clients=100, modulus_bits=16, dimension=10, scale=1000.0
        )
    codec = aggregation.FixedPointCodec.create(
        clip_norm=1.0, num_clients=100, modulus_bits=32, dimension=10, noise_stddev_int=50.0
    )
    assert codec.wrap_probability == 1e-9
    headroom = 100 * (codec.scale + 1) + 50 * np.sqrt(2 * 100 * np.log(2 * 10 / 1e-9))
    assert headroom < 2**31


@settings(max_examples=8, deadline=None)
@given(n=st.integers(6, 10), data=st.data())
def test_dropouts_up_to_delta_n_at_any_stage_are_recovered_exactly(
    n: int, data: st.DataObject
) -> None:
    mode = data.draw(MODES)
    cfg = _cfg(n, mode)
    budget = LOOSE.missing(n)
    dropped = data.draw(st.lists(st.integers(0, n - 1), max_size=budget, unique=True))
    drops = {i: data.draw(st.sampled_from(DROP_STAGES)) for i in dropped}
    xs = [np.arange(5, dtype=np.int64) * (i + 1) - 3 for i in range(n)]
    res = secure_sum_int(xs, config=cfg, dropouts=drops, policy=LOOSE)
    in_sum = tuple(i for i in range(n) if drops.get(i, Stage.DONE).value > Stage.MASKED_INPUT.value)
    assert res.survivors == in_sum
    assert np.array_equal(res.integer_sum, _plain_sum(xs, in_sum))


@pytest.mark.parametrize(
    "stages",
    [DROP_STAGES[0:3], DROP_STAGES[3:5], DROP_STAGES[5:7]],
    ids=lambda ss: "+".join(s.name.lower() for s in ss),
)
def test_dropouts_at_each_stage_secagg_plus(stages: list[Stage]) -> None:
    n = 20
    pol = ClientPolicy(max_dropout_fraction=0.25, max_corrupt_fraction=0.0, min_survivors=3)
    cfg = _cfg(n, SecAggMode.SECAGG_PLUS, policy=pol)
    assert cfg.k < n - 1
    drops = {3 + 5 * j: stage for j, stage in enumerate(stages)}
    xs = [np.full(4, i, dtype=np.int64) for i in range(n)]
    res = secure_sum_int(xs, config=cfg, dropouts=drops, policy=pol)
    assert np.array_equal(res.integer_sum, _plain_sum(xs, res.survivors))
    assert set(res.dropped) == {i for i, s in drops.items() if s.value <= Stage.MASKED_INPUT.value}


@settings(max_examples=6, deadline=None)
@given(n=st.integers(5, 9), stage=st.sampled_from(DROP_STAGES[:5]), data=st.data())
def test_more_missing_than_the_policy_allows_aborts(
    n: int, stage: Stage, data: st.DataObject
) -> None:
    cfg = _cfg(n)
    need = LOOSE.required_survivors(n)
    dropped = data.draw(
        st.lists(st.integers(0, n - 1), min_size=n - need + 1, max_size=n, unique=True)
    )
    xs = [np.ones(3, dtype=np.int64) for _ in range(n)]
    with pytest.raises(DropoutThresholdNotMet):
        secure_sum_int(xs, config=cfg, dropouts=dict.fromkeys(dropped, stage), policy=LOOSE)


# ------------------------------------------- double masking invariants


def test_server_never_holds_both_share_kinds() -> None:
    n = 10
    cfg = _cfg(n)
    xs = [np.ones(3, dtype=np.int64) for _ in range(n)]
    drops = {0: Stage.MASKED_INPUT, 1: Stage.CONSISTENCY_CHECK}
    _, stats_ = run_protocol(xs, config=cfg, dropouts=drops, policy=LOOSE)
    kinds = stats_.server.kinds_released
    assert kinds[0] == {SHARE_KIND_MASK_KEY}
    assert kinds[1] == {SHARE_KIND_SELF_MASK}
    assert all(len(k) == 1 for k in kinds.values())


class _RewriteUnmask(InMemoryNetwork):
    """A server that tells some holders a live owner dropped (to collect both kinds)."""

    def __init__(self, target: int, same_request: bool) -> None:
        super().__init__()
        self.target, self.same_request = target, same_request

    def to_client(self, stage: Stage, recipient: int, msg: Message) -> Message | None:
        out = super().to_client(stage, recipient, msg)
        if not isinstance(out, UnmaskRequest) or self.target not in out.survivors:
            return out
        dropped = tuple(sorted({*out.dropped, self.target}))
        if self.same_request:
            return dataclasses.replace(out, dropped=dropped)
        return dataclasses.replace(
            out, survivors=tuple(s for s in out.survivors if s != self.target), dropped=dropped
        )


@pytest.mark.parametrize("same_request", [False, True])
def test_a_holder_never_reveals_a_share_kind_its_signed_view_forbids(same_request: bool) -> None:
    rd = H.make_round(6, policy=LOOSE)
    out = H.drive(rd, _RewriteUnmask(0, same_request))
    refused = {i for i, e in out.client_errors.items() if isinstance(e, ConsistencyCheckFailed)}
    assert refused == set(range(1, 6))  # every holder of client 0 refused to reveal
    assert out.aggregate is None and isinstance(out.abort, DropoutThresholdNotMet)
    assert H.both_kinds(rd, H.adversary_shares(rd, out)) == []


def test_late_masked_input_is_refused_and_stays_masked() -> None:
    rd = H.make_round(8, policy=LOOSE)

    class Late(InMemoryNetwork):
        held: Message | None = None

        def to_server(self, stage: Stage, sender: int, msg: Message) -> Message | None:
            if stage is Stage.MASKED_INPUT and sender == 4:
                self.held = msg
                return None
            return super().to_server(stage, sender, msg)

    net = Late()
    out = H.drive(rd, net)
    assert out.aggregate is not None and 4 not in out.aggregate.contributors
    assert np.array_equal(
        H.lifted(rd, out.aggregate.total), H.plain_sum(rd, out.aggregate.contributors)
    )
    assert net.held is not None
    with pytest.raises(InvalidMessage, match="no MaskedInput expected"):
        rd.server.receive(net.held)
    # The server rebuilt client 4's mask key, never its self-mask seed: y_4 minus all
    # pairwise masks is still x_4 + PRG(b_4).
    assert rd.server.kinds_released[4] == {SHARE_KIND_MASK_KEY}


# ------------------------------------------------ malformed / malicious


def _round_messages() -> list[Message]:
    rd = H.make_round(5, policy=LOOSE)
    out = H.drive(rd)
    assert out.aggregate is not None
    return [m for _, _, m in out.to_server] + [m for _, _, m in out.to_client]


_MESSAGES = _round_messages()


@settings(max_examples=60, deadline=None)
@given(idx=st.integers(0, len(_MESSAGES) - 1), data=st.data())
def test_every_message_roundtrips_and_truncation_or_trailing_bytes_are_refused(
    idx: int, data: st.DataObject
) -> None:
    msg = _MESSAGES[idx]
    raw = msg.to_bytes()
    again = type(msg).from_bytes(raw)
    assert again.to_bytes() == raw
    assert parse_message(raw).to_bytes() == raw
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(InvalidMessage):
        type(msg).from_bytes(raw[:cut])
    with pytest.raises(InvalidMessage):
        type(msg).from_bytes(raw + b"\x00")
    for version in (aggregation.PROTOCOL_VERSION - 1, aggregation.PROTOCOL_VERSION + 1):
        with pytest.raises(InvalidMessage):
            type(msg).from_bytes(bytes([version]) + raw[1:])


@pytest.mark.parametrize("mode", [SecAggMode.SECAGG, SecAggMode.SECAGG_PLUS])
def test_every_reply_fits_the_advertised_size_limit(mode: SecAggMode) -> None:
    rd = H.make_round(12, mode=mode, d=37, policy=LOOSE, modulus_bits=27)
    out = H.drive(rd)
    assert out.aggregate is not None and out.replies(Stage.UNMASKING)
    for stage, _, msg in out.to_server:
        limit = aggregation.reply_size_limit(
            stage.value, num_clients=12, degree=rd.cfg.k, dimension=37, modulus_bits=27
        )
        assert len(msg.to_bytes()) <= limit, stage


def test_masked_input_encoding_is_bit_packed_and_strict() -> None:
    sid = bytes(16)
    vec = np.array([0, 1, 2**20 - 1], dtype=np.uint32)
    m = MaskedInput(session_id=sid, round_index=0, sender=1, bits=20, vector=vec)
    raw = m.to_bytes()
    # header, sender + counts, tag signature, bits + d, then 60 bits = 8 bytes.
    assert len(raw) == 26 + 8 + 4 + 64 + 5 + 8
    assert np.array_equal(MaskedInput.from_bytes(raw).vector, vec)
    with pytest.raises(InvalidMessage, match="padding"):
        MaskedInput.from_bytes(raw[:-1] + bytes([raw[-1] | 0x80]))
    with pytest.raises(InvalidMessage):
        MaskedInput(session_id=sid, round_index=0, sender=1, bits=20, vector=vec.astype(np.int64))


def test_duplicate_ids_are_rejected() -> None:
    rd = H.make_round(4, policy=TIGHT)
    ad = rd.clients[0].start()
    rd.server.receive(ad)
    with pytest.raises(InvalidMessage, match="no AdvertiseKeys expected"):
        rd.server.receive(ad)
    with pytest.raises(InvalidMessage, match="increasing"):
        NeighbourKeys(session_id=rd.sid, round_index=7, recipient=1, keys=(ad.key, ad.key))
    one = NeighbourKeys(session_id=rd.sid, round_index=7, recipient=1, keys=(ad.key,)).to_bytes()
    doubled = one[:30] + (2).to_bytes(4, "big") + one[34:] + one[34:]
    with pytest.raises(InvalidMessage, match="increasing"):
        NeighbourKeys.from_bytes(doubled)


def test_forged_or_substituted_keys_are_refused() -> None:
    rd = H.make_round(4, policy=TIGHT)
    ads = {i: c.start() for i, c in rd.clients.items()}
    forged = dataclasses.replace(ads[1], key=dataclasses.replace(ads[1].key, signature=bytes(64)))
    with pytest.raises(InvalidSignature):
        rd.server.receive(forged)
    # Client 1's keys re-signed by client 2's identity (key substitution) reach client 0.
    swapped = dataclasses.replace(
        ads[1].key, signature=rd.ids[2].sign(ads[1].key.payload(rd.clients[0].ctx))
    )
    keys = tuple(a.key if i != 1 else swapped for i, a in sorted(ads.items()) if i != 0)
    with pytest.raises(InvalidSignature):
        rd.clients[0].handle(
            NeighbourKeys(session_id=rd.sid, round_index=7, recipient=0, keys=keys)
        )


def test_replayed_round_or_session_is_rejected() -> None:
    rd = H.make_round(4, policy=TIGHT)
    for c in rd.clients.values():
        rd.server.receive(c.start())
    out = rd.server.close_stage()
    assert isinstance(out, aggregation.Outbox)
    msg = out.messages[0]
    for replay in (
        dataclasses.replace(msg, round_index=6),
        dataclasses.replace(msg, session_id=os.urandom(16)),
    ):
        with pytest.raises(InvalidMessage, match="replay"):
            rd.clients[0].handle(replay)
    stale = ShareKeys(session_id=rd.sid, round_index=8, sender=0, shares=(), signature=bytes(64))
    with pytest.raises(InvalidMessage, match="replay"):
        rd.server.receive(stale)
    # Out of order: a consistency response during the share stage.
    with pytest.raises(InvalidMessage, match="not a reply"):
        rd.server.receive(
            ConsistencyResponse(session_id=rd.sid, round_index=7, sender=1, signature=bytes(64))
        )


def test_unmask_response_with_wrong_kind_or_owner_is_refused() -> None:
    rd = H.make_round(5, policy=LOOSE)

    class Flip(InMemoryNetwork):
        def to_server(self, stage: Stage, sender: int, msg: Message) -> Message | None:
            if isinstance(msg, UnmaskResponse) and sender == 0:
                keys = tuple(dataclasses.replace(k, kind=1 - k.kind) for k in msg.keys)
                sig = rd.ids[0].sign(UnmaskResponse.signed_payload(rd.clients[0].ctx, 0, keys))
                msg = dataclasses.replace(msg, keys=keys, signature=sig)
            return super().to_server(stage, sender, msg)

    out = H.drive(rd, Flip())
    assert [(i, s) for i, s, _ in out.refusals] == [(0, Stage.UNMASKING)]
    assert "wrong share kind" in str(out.refusals[0][2])
    assert out.aggregate is not None  # the other holders suffice
    assert np.array_equal(H.lifted(rd, out.aggregate.total), H.plain_sum(rd, tuple(range(5))))


# ------------------------------------------------------ model consistency


@pytest.mark.parametrize("mode", [SecAggMode.SECAGG, SecAggMode.SECAGG_PLUS])
def test_model_inconsistency_keeps_the_target_out_of_every_sum(mode: SecAggMode) -> None:
    n = 12
    cfg = SecAggConfig(num_clients=n, mode=mode)
    xs = [np.ones(4, dtype=np.int64) * (i + 1) for i in range(n)]
    evil = hashlib.sha256(b"suppression model").digest()
    # The target got model B: everything it signs binds B, so it never joins the round.
    total, st_ = run_protocol(xs, config=cfg, model_hashes={0: evil})
    assert 0 not in st_.survivors
    assert [(i, s) for i, s, _ in st_.refusals] == [(0, Stage.ADVERTISE_KEYS)]
    assert isinstance(st_.refusals[0][2], InvalidSignature)
    assert np.array_equal(aggregation.centered_lift(total, 32), _plain_sum(xs, st_.survivors))
    # A server that committed to another model than the clients got verifies nothing.
    with pytest.raises(DropoutThresholdNotMet):
        run_protocol(xs, config=cfg, model_hashes=dict.fromkeys(range(n), evil))


# ---------------------------------------------------------- statistics


def test_masked_vectors_are_uniform_regardless_of_input() -> None:
    bits, d = 8, 40_000
    samples = {}
    for label, value in (("zeros", 0), ("max", 127)):
        rd = H.make_round(3, d=d, policy=LOOSE, modulus_bits=bits)
        for i in range(3):
            rd.clients[i].set_input(np.full(d, value, dtype=np.int64))
        out = H.drive(rd)
        y = out.replies(Stage.MASKED_INPUT)[0].vector.astype(np.int64)  # type: ignore[attr-defined]
        counts = np.bincount(y, minlength=2**bits)
        assert stats.chisquare(counts).pvalue > 1e-4
        samples[label] = counts
    table = np.stack([samples["zeros"], samples["max"]])
    assert stats.chi2_contingency(table).pvalue > 1e-4


def test_distributed_noise_variance_matches_survivors() -> None:
    n, d, sigma = 5, 20_000, 20.0
    pol = ClientPolicy(max_dropout_fraction=0.2, max_corrupt_fraction=0.0, min_survivors=2)
    cfg = _cfg(n, policy=pol)
    xs = [np.zeros(d, dtype=np.int64) for _ in range(n)]
    res = secure_sum_int(
        xs, config=cfg, noise_stddev_int=sigma, dropouts={0: Stage.MASKED_INPUT}, policy=pol
    )
    assert len(res.survivors) == 4
    var = res.integer_sum.var()
    assert abs(var / (4 * sigma**2) - 1) < 0.05
    per_client = aggregation.per_client_noise_stddev(2 * sigma, min_survivors=4)
    assert per_client == pytest.approx(sigma)


# ------------------------------------------------------- config / surface


def test_config_validation() -> None:
    with pytest.raises(TypeError):
        SecAggConfig(num_clients=5, mode="secagg")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        SecAggConfig(num_clients=2)
    with pytest.raises(ConfigError):
        SecAggConfig(num_clients=10, modulus_bits=63)
    with pytest.raises(ConfigError):
        SecAggConfig(num_clients=10, mode=SecAggMode.SECAGG_PLUS, degree=4)
    with pytest.raises(ConfigError):
        SecAggConfig(num_clients=10, mode=SecAggMode.SECAGG_PLUS, degree=3, threshold=4)
    with pytest.raises(ConfigError):
        SecAggConfig(num_clients=10, max_dropout_fraction=0.3, max_corrupt_fraction=0.2)
    with pytest.raises(TypeError):
        SecAggConfig(10)  # type: ignore[misc]
    cfg = SecAggConfig(num_clients=10)
    assert (cfg.degree, cfg.threshold) == (9, 6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.threshold = 2  # type: ignore[misc]
    # The server holds itself to its config's policy: weak explicit values are refused.
    weak = SecAggConfig(num_clients=100, mode=SecAggMode.SECAGG_PLUS, degree=2, threshold=2)
    rd = H.make_round(5, policy=LOOSE)
    with pytest.raises(ConfigError, match="own policy"):
        aggregation.ServerSession(
            weak,
            identity_keys={
                i: k.public_key()
                for i, k in enumerate([Ed25519PrivateKey.generate() for _ in range(100)])
            },
            session_id=rd.sid,
            round_index=0,
            model_hash=rd.model,
            dimension=3,
        )


@pytest.mark.parametrize("n", [50, 200, 1000])
def test_secagg_plus_degree_is_logarithmic_and_draws_are_k_distinct_others(n: int) -> None:
    cfg = SecAggConfig(num_clients=n, mode=SecAggMode.SECAGG_PLUS)
    assert cfg.k <= 12 * np.log2(n) and 1 <= cfg.t <= cfg.k
    rd_cfg = cfg
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    ids = {i: Ed25519PrivateKey.generate() for i in range(n)}
    roster = aggregation.Roster({i: k.public_key() for i, k in ids.items()})
    c = aggregation.ClientSession(
        rd_cfg,
        client_id=3,
        identity_key=ids[3],
        identity_keys=roster,
        session_id=bytes(16),
        round_index=0,
        model_hash=bytes(32),
        policy=cfg.policy(),
    )
    draws = [c._draw() for _ in range(20)]
    assert all(len(set(d)) == cfg.k and 3 not in d and set(d) <= set(range(n)) for d in draws)
    assert len({tuple(d) for d in draws}) == 20  # fresh CSPRNG draws


def test_insecure_seed_warns_and_is_deterministic() -> None:
    cfg = SecAggConfig(num_clients=3)
    xs = [np.ones(4, dtype=np.int64)] * 3
    with pytest.warns(UserWarning, match="never use in production|Never in production|production"):
        a = secure_sum_int(xs, config=cfg, insecure_deterministic_seed=1, noise_stddev_int=3.0)
    with pytest.warns(UserWarning):
        b = secure_sum_int(xs, config=cfg, insecure_deterministic_seed=1, noise_stddev_int=3.0)
    assert np.array_equal(a.integer_sum, b.integer_sum)


def test_result_reports_bytes_and_errors_are_protocol_errors() -> None:
    cfg = SecAggConfig(num_clients=4)
    res = secure_sum([np.ones(100, np.float32)] * 4, config=cfg, clip_norm=20.0)
    assert all(res.bytes_sent[i] > 100 * 4 for i in range(4))
    assert np.allclose(res.sum, 4.0, atol=res.codec.quantization_bound if res.codec else 0)
    assert issubclass(DropoutThresholdNotMet, ProtocolError)
    assert issubclass(aggregation.ClientPolicy, object) and res.excluded == ()


# ---------------------------------------------------------------- uniform stage interface


def _plain(n: int, d: int, min_inputs: int = 1) -> tuple[PlainSumServer, list[PlainSumClient]]:
    sid = bytes(range(16))
    server = PlainSumServer(
        participants=range(n), session_id=sid, round_index=3, dimension=d, min_inputs=min_inputs
    )
    clients = [PlainSumClient(client_id=i, session_id=sid, round_index=3) for i in range(n)]
    return server, clients


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_plain_sum_is_the_exact_float64_sum(n: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=d).astype(np.float32) for _ in range(n)]
    server, clients = _plain(n, d)
    for c, x in zip(clients, xs, strict=True):
        c.set_input(x)
        server.receive(PlainInput.from_bytes(c.start().to_bytes()))
    assert server.expected == frozenset()
    out = server.close_stage()
    assert out.contributors == tuple(range(n))
    np.testing.assert_array_equal(out.total, np.sum(np.asarray(xs, np.float64), axis=0))


def test_plain_sum_refuses_duplicates_strangers_bad_shapes_and_too_few_inputs() -> None:
    server, clients = _plain(3, 4, min_inputs=2)
    clients[0].set_input(np.ones(4, np.float32))
    first = clients[0].start()
    server.receive(first)
    with pytest.raises(InvalidMessage, match="duplicate"):
        server.receive(first)
    sid, r = server.session_id, server.round_index
    with pytest.raises(InvalidMessage, match="not a participant"):
        server.receive(PlainInput(session_id=sid, round_index=r, sender=7, vector=np.ones(4, "f4")))
    with pytest.raises(InvalidMessage, match="dimension"):
        server.receive(PlainInput(session_id=sid, round_index=r, sender=1, vector=np.ones(5, "f4")))
    with pytest.raises(InvalidMessage, match="another session"):
        server.receive(
            PlainInput(session_id=bytes(16), round_index=r, sender=2, vector=np.ones(4, "f4"))
        )
    with pytest.raises(InvalidMessage, match="NaN"):
        PlainInput(session_id=sid, round_index=r, sender=2, vector=np.full(4, np.nan, "f4"))
    with pytest.raises(DropoutThresholdNotMet, match="at least 2"):
        server.close_stage()


def test_a_withdrawn_client_is_not_awaited_and_nothing_of_it_is_summed() -> None:
    """Plain sum and SecAgg: a client that withdraws is silent from then on; the stage
    closes without it, a second withdrawal or a later input from it is refused."""
    server, clients = _plain(3, 4)
    for i in (0, 1):
        clients[i].set_input(np.full(4, i + 1, np.float32))
        server.receive(clients[i].start())
    with pytest.raises(InvalidMessage, match="not awaited"):
        server.withdraw(0)  # it already answered
    server.withdraw(2)
    assert server.awaiting() == 0 and not server.awaits(2) and server.expected == frozenset()
    with pytest.raises(InvalidMessage, match="not awaited"):
        server.withdraw(2)
    clients[2].set_input(np.full(4, 100, np.float32))
    with pytest.raises(InvalidMessage, match="withdrew"):
        server.receive(clients[2].start())
    out = server.close_stage()
    assert out.contributors == (0, 1)
    np.testing.assert_array_equal(out.total, np.full(4, 3.0))

    rd = H.make_round(5, d=8, policy=LOOSE)
    rd.server.withdraw(4)
    assert not rd.server.awaits(4) and rd.server.awaiting() == 4
    with pytest.raises(InvalidMessage, match="not awaited"):
        rd.server.withdraw(4)
    with pytest.raises(InvalidMessage, match="not awaited"):
        rd.server.withdraw(9)  # not a participant


def test_stage_interface_reveals_the_sum_only_when_unmasking_and_checks_min_inputs() -> None:
    rd = H.make_round(5, d=8, policy=LOOSE)
    out = H.drive(rd)
    assert out.stages == [
        (Stage.SHARE_KEYS, False),
        (Stage.MASKED_INPUT, False),
        (Stage.REVIEW, False),
        (Stage.CONSISTENCY_CHECK, False),
        (Stage.QUORUM_CHALLENGE, False),
        (Stage.UNMASKING, True),
    ]
    assert out.aggregate is not None
    np.testing.assert_array_equal(
        H.lifted(rd, out.aggregate.total), H.plain_sum(rd, tuple(range(5)))
    )
    # Distributed noise sized for 5 contributions: with one masked input missing the
    # round aborts before anyone is asked to unmask.
    cfg = _cfg(5)
    xs = [np.ones(8, np.int64)] * 5
    with pytest.raises(DropoutThresholdNotMet, match="at least 5"):
        run_protocol(xs, config=cfg, dropouts={2: Stage.MASKED_INPUT}, min_inputs=5, policy=LOOSE)


def test_a_refused_reply_counts_as_the_senders_answer() -> None:
    n, d = 5, 3
    cfg = _cfg(n)
    _, st_ = run_protocol([np.ones(d, np.int64)] * n, config=cfg, policy=LOOSE)
    server = st_.server
    assert server.expected == frozenset()
    with pytest.raises(InvalidMessage, match="no UnmaskResponse expected"):
        server.receive(
            UnmaskResponse(
                session_id=server.session_id,
                round_index=server.round_index,
                sender=0,
                keys=(),
                signature=bytes(64),
            )
        )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.floats(width=32, allow_nan=True, allow_infinity=True)
        | st.floats(-float(np.float32(3e38)), float(np.float32(3e38)), width=32),
        min_size=1,
        max_size=40,
    )
)
def test_all_finite_is_exactly_the_element_wise_check(values: list[float]) -> None:
    v = np.asarray(values, dtype=np.float32)
    assert aggregation.all_finite(v) == bool(np.isfinite(v).all())
