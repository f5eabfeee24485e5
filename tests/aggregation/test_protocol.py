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
    AdvertiseKeys,
    ClientSession,
    ConsistencyRequest,
    ConsistencyResponse,
    KeyBroadcast,
    MaskedInput,
    PlainInput,
    PlainSumClient,
    PlainSumServer,
    SecAggConfig,
    SecAggMode,
    ServerSession,
    ShareKeys,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
    run_protocol,
    secure_sum,
    secure_sum_int,
)
from aggregation._messages import SHARE_KIND_PAIRWISE_KEY, SHARE_KIND_SELF_MASK
from privacy.errors import (
    ConfigError,
    ConsistencyCheckFailed,
    DropoutThresholdNotMet,
    InvalidMessage,
    InvalidSignature,
    ProtocolError,
)

MODES = st.sampled_from([SecAggMode.SECAGG, SecAggMode.SECAGG_PLUS])
DROP_STAGES = [
    Stage.ADVERTISE_KEYS,
    Stage.SHARE_KEYS,
    Stage.MASKED_INPUT,
    Stage.CONSISTENCY_CHECK,
    Stage.UNMASKING,
]


# --------------------------------------------------------------------- helpers


class Round:
    """Hand-driven round, so tests can intercept and forge any message."""

    def __init__(self, n: int = 5, d: int = 8, mode: SecAggMode = SecAggMode.SECAGG, **kw: object):
        self.cfg = SecAggConfig(num_clients=n, mode=mode, **kw)  # type: ignore[arg-type]
        self.sid = os.urandom(16)
        self.model = hashlib.sha256(b"model").digest()
        self.ids = {i: Ed25519PrivateKey.generate() for i in range(n)}
        self.pki = {i: k.public_key() for i, k in self.ids.items()}
        self.d = d
        self.x = {i: np.arange(d, dtype=np.int64) * (i + 1) for i in range(n)}
        self.clients = {i: self.client(i) for i in range(n)}
        self.server = ServerSession(
            self.cfg,
            identity_keys=self.pki,
            session_id=self.sid,
            round_index=7,
            model_hash=self.model,
            dimension=d,
        )

    def client(self, i: int, model: bytes | None = None) -> ClientSession:
        c = ClientSession(
            self.cfg,
            client_id=i,
            identity_key=self.ids[i],
            identity_keys=self.pki,
            session_id=self.sid,
            round_index=7,
            model_hash=model or self.model,
        )
        c.set_input(self.x[i])
        return c

    def advertise(self) -> KeyBroadcast:
        for c in self.clients.values():
            self.server.receive_advertisement(c.advertise_keys().to_bytes())
        return self.server.finish_advertising()

    def share(self) -> dict[int, aggregation.ShareRouting]:
        b = self.advertise()
        for c in self.clients.values():
            self.server.receive_shares(c.share_keys(b).to_bytes())
        return self.server.finish_sharing()

    def mask(self, skip: tuple[int, ...] = ()) -> ConsistencyRequest:
        routing = self.share()
        self.masked = {i: c.masked_input(routing[i]) for i, c in self.clients.items()}
        for i, m in self.masked.items():
            if i not in skip:
                self.server.receive_masked_input(m.to_bytes())
        return self.server.finish_masked_input()

    def consist(self, skip: tuple[int, ...] = ()) -> UnmaskRequest:
        req = self.mask(skip)
        for i in req.survivors:
            self.server.receive_consistency(self.clients[i].consistency_check(req).to_bytes())
        return self.server.finish_consistency()


def _plain_sum(xs: list[np.ndarray], survivors: tuple[int, ...]) -> np.ndarray:
    return np.sum([xs[i] for i in survivors], axis=0)


# ------------------------------------------------------------- exactness


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(3, 8),
    d=st.integers(1, 40),
    bits=st.sampled_from([8, 16, 24, 32, 40, 62]),
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


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(3, 8),
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


# ------------------------------------------------------------- dropouts


@settings(max_examples=20, deadline=None)
@given(n=st.integers(3, 9), data=st.data())
def test_dropouts_up_to_n_minus_t_are_recovered_exactly(n: int, data: st.DataObject) -> None:
    cfg = SecAggConfig(num_clients=n, max_dropout_fraction=0.3, max_corrupt_fraction=0.0)
    budget = n - cfg.t
    dropped = data.draw(st.lists(st.integers(0, n - 1), max_size=budget, unique=True))
    drops = {i: data.draw(st.sampled_from(DROP_STAGES)) for i in dropped}
    xs = [np.arange(5, dtype=np.int64) * (i + 1) - 3 for i in range(n)]
    res = secure_sum_int(xs, config=cfg, dropouts=drops)
    in_sum = tuple(i for i in range(n) if drops.get(i, Stage.DONE).value > Stage.MASKED_INPUT.value)
    assert res.survivors == in_sum
    assert np.array_equal(res.integer_sum, _plain_sum(xs, in_sum))


@pytest.mark.parametrize("stage", DROP_STAGES)
def test_dropouts_at_each_stage_secagg_plus(stage: Stage) -> None:
    n = 30
    cfg = SecAggConfig(num_clients=n, mode=SecAggMode.SECAGG_PLUS, max_dropout_fraction=0.1)
    assert cfg.k < n - 1
    drops = dict.fromkeys((3, 11, 20), stage)
    xs = [np.full(4, i, dtype=np.int64) for i in range(n)]
    res = secure_sum_int(xs, config=cfg, dropouts=drops)
    assert np.array_equal(res.integer_sum, _plain_sum(xs, res.survivors))
    if stage.value <= Stage.MASKED_INPUT.value:
        assert set(res.dropped) == {3, 11, 20}


@settings(max_examples=10, deadline=None)
@given(n=st.integers(3, 9), stage=st.sampled_from(DROP_STAGES), data=st.data())
def test_below_threshold_aborts(n: int, stage: Stage, data: st.DataObject) -> None:
    cfg = SecAggConfig(num_clients=n, max_dropout_fraction=0.3, max_corrupt_fraction=0.0)
    dropped = data.draw(
        st.lists(st.integers(0, n - 1), min_size=n - cfg.t + 1, max_size=n, unique=True)
    )
    xs = [np.ones(3, dtype=np.int64) for _ in range(n)]
    with pytest.raises(DropoutThresholdNotMet):
        secure_sum_int(xs, config=cfg, dropouts=dict.fromkeys(dropped, stage))


# ------------------------------------------- double masking invariants


def test_server_never_holds_both_share_kinds() -> None:
    n = 8
    cfg = SecAggConfig(num_clients=n, max_dropout_fraction=0.25, max_corrupt_fraction=0.0)
    xs = [np.ones(3, dtype=np.int64) for _ in range(n)]
    drops = {0: Stage.MASKED_INPUT, 1: Stage.CONSISTENCY_CHECK}
    _, stats_ = run_protocol(xs, config=cfg, dropouts=drops)
    kinds = stats_.server.state.kinds_received
    assert kinds[0] == {SHARE_KIND_PAIRWISE_KEY}
    assert kinds[1] == {SHARE_KIND_SELF_MASK}
    assert all(len(k) == 1 for k in kinds.values())


def test_client_refuses_to_reveal_both_kinds() -> None:
    r = Round(n=5)
    req = r.consist(skip=(4,))
    assert req.dropped == (4,)
    c = r.clients[0]
    forged = dataclasses.replace(req, dropped=(2, 4))  # 2 is alive: would reveal b_2 and sk_2
    with pytest.raises(InvalidMessage, match="live client dead"):
        c.unmask(forged)
    # Honest request is then still answered, with one kind per owner.
    resp = c.unmask(req)
    kinds = {s.owner: s.kind for s in resp.shares}
    assert kinds[4] == SHARE_KIND_PAIRWISE_KEY
    assert all(kinds[i] == SHARE_KIND_SELF_MASK for i in (0, 1, 2, 3))
    with pytest.raises(InvalidMessage):  # a second request in the same round
        c.unmask(req)


def test_client_refuses_being_declared_dead_and_unknown_ids() -> None:
    r = Round(n=5)
    req = r.consist(skip=(4,))
    c = r.clients[0]
    with pytest.raises(InvalidMessage):
        c.unmask(dataclasses.replace(req, dropped=(0, 4)))
    with pytest.raises(ConsistencyCheckFailed):  # U3 without client 0 is not what it signed
        c.unmask(dataclasses.replace(req, survivors=(1, 2, 3), dropped=(0, 4)))
    with pytest.raises(InvalidMessage):
        c.unmask(dataclasses.replace(req, dropped=(4, 99)))


def test_late_masked_input_is_refused_and_stays_masked() -> None:
    r = Round(n=5)
    req = r.consist(skip=(4,))
    late = r.masked[4]
    with pytest.raises(InvalidMessage, match="late"):
        r.server.receive_masked_input(late.to_bytes())
    for i in req.survivors:
        r.server.receive_unmask(r.clients[i].unmask(req).to_bytes())
    total = r.server.finish_unmasking()
    assert np.array_equal(
        aggregation.centered_lift(total, 32), _plain_sum(list(r.x.values()), req.survivors)
    )
    # The server learnt client 4's pairwise key but never a share of its self
    # mask, so y_4 minus all pairwise masks is x_4 + PRG(b_4): still masked.
    assert r.server.state.kinds_received[4] == {SHARE_KIND_PAIRWISE_KEY}
    assert not np.array_equal(late.vector.astype(np.int64), r.x[4])


# ------------------------------------------------ malformed / malicious


def test_truncated_trailing_and_wrong_version_bytes_are_rejected() -> None:
    r = Round(n=4)
    ad = r.clients[0].advertise_keys()
    raw = ad.to_bytes()
    assert AdvertiseKeys.from_bytes(raw) == ad
    wrong_version = bytes([aggregation.PROTOCOL_VERSION + 1]) + raw[1:]
    for bad in (raw[:-1], raw + b"\x00", wrong_version, raw[:1] + b"\x09" + raw[2:], b""):
        with pytest.raises(InvalidMessage):
            AdvertiseKeys.from_bytes(bad)
    # A count that claims more entries than the bytes present.
    kb = KeyBroadcast(session_id=r.sid, round_index=7, advertisements=(ad,)).to_bytes()
    lying = kb[:26] + (1000).to_bytes(4, "big") + kb[30:]
    with pytest.raises(InvalidMessage, match="count"):
        KeyBroadcast.from_bytes(lying)


def test_masked_input_encoding_is_strict() -> None:
    sid = bytes(16)
    vec = np.array([0, 1, 2**20 - 1], dtype=np.uint32)
    m = MaskedInput(session_id=sid, round_index=0, sender=1, bits=20, vector=vec)
    raw = m.to_bytes()
    assert len(raw) == 26 + 9 + 3 * 3  # header, fields, 3 bytes per entry
    assert np.array_equal(MaskedInput.from_bytes(raw).vector, vec)
    too_big = raw[:-1] + b"\xff"  # top byte sets bits above 2^20
    with pytest.raises(InvalidMessage, match="modulus"):
        MaskedInput.from_bytes(too_big)
    with pytest.raises(InvalidMessage):
        MaskedInput.from_bytes(raw[:-1])
    with pytest.raises(InvalidMessage):
        MaskedInput(session_id=sid, round_index=0, sender=1, bits=20, vector=vec.astype(np.int64))


def test_duplicate_ids_are_rejected() -> None:
    r = Round(n=4)
    ads = [c.advertise_keys() for c in r.clients.values()]
    r.server.receive_advertisement(ads[0])
    with pytest.raises(InvalidMessage, match="duplicate"):
        r.server.receive_advertisement(ads[0])
    dup = KeyBroadcast(session_id=r.sid, round_index=7, advertisements=(ads[0], ads[0], *ads[1:]))
    with pytest.raises(InvalidMessage):
        r.clients[0].share_keys(dup)
    req = ConsistencyRequest(session_id=r.sid, round_index=7, survivors=(0, 1)).to_bytes()
    dup_ids = req[:26] + (2).to_bytes(4, "big") + (1).to_bytes(4, "big") * 2
    with pytest.raises(InvalidMessage, match="increasing"):
        ConsistencyRequest.from_bytes(dup_ids)


def test_duplicate_share_and_masked_input_messages_are_rejected() -> None:
    r = Round(n=4)
    b = r.advertise()
    msgs = {i: c.share_keys(b) for i, c in r.clients.items()}
    r.server.receive_shares(msgs[0])
    with pytest.raises(InvalidMessage, match="duplicate"):
        r.server.receive_shares(msgs[0])
    for i in (1, 2, 3):
        r.server.receive_shares(msgs[i])
    routing = r.server.finish_sharing()
    doubled = dataclasses.replace(routing[0], shares=routing[0].shares + routing[0].shares[:1])
    with pytest.raises(InvalidMessage, match="duplicate"):
        r.clients[0].masked_input(doubled)
    y = r.clients[1].masked_input(routing[1])
    r.server.receive_masked_input(y)
    with pytest.raises(InvalidMessage, match="duplicate"):
        r.server.receive_masked_input(y)


def test_wrong_signatures_raise_invalid_signature() -> None:
    r = Round(n=4)
    ads = [c.advertise_keys() for c in r.clients.values()]
    forged = dataclasses.replace(ads[1], signature=bytes(64))
    with pytest.raises(InvalidSignature):
        r.server.receive_advertisement(forged)
    # Client 1's keys re-signed by client 2's identity (key substitution).
    swapped = dataclasses.replace(ads[1], signature=r.ids[2].sign(ads[1].signed_payload()))
    bcast = KeyBroadcast(
        session_id=r.sid, round_index=7, advertisements=(ads[0], swapped, *ads[2:])
    )
    with pytest.raises(InvalidSignature):
        r.clients[0].share_keys(bcast)


def test_tampered_share_ciphertext_fails_authentication() -> None:
    r = Round(n=4)
    routing = r.share()
    s0 = routing[0].shares[0]
    bad_ct = s0.ciphertext[:-1] + bytes([s0.ciphertext[-1] ^ 1])
    bad = dataclasses.replace(
        routing[0], shares=(dataclasses.replace(s0, ciphertext=bad_ct), *routing[0].shares[1:])
    )
    with pytest.raises(InvalidSignature):
        r.clients[0].masked_input(bad)


def test_forged_consistency_signature_aborts() -> None:
    r = Round(n=5)
    req = r.consist()
    sigs = dict(req.signatures)
    sigs[1] = r.ids[1].sign(b"something else")
    forged = dataclasses.replace(req, signatures=tuple(sorted(sigs.items())))
    with pytest.raises(ConsistencyCheckFailed):
        r.clients[0].unmask(forged)
    with pytest.raises(ConsistencyCheckFailed):  # survivor list differs from the signed one
        r.clients[2].unmask(dataclasses.replace(req, survivors=(0, 1, 2, 3)))


def test_replayed_round_or_session_is_rejected() -> None:
    r = Round(n=4)
    b = r.advertise()
    for replay in (
        dataclasses.replace(b, round_index=6),
        dataclasses.replace(b, session_id=os.urandom(16)),
    ):
        with pytest.raises(InvalidMessage, match="replay"):
            r.clients[0].share_keys(replay)
    ad = r.clients[0].state.peers[0]
    with pytest.raises(InvalidMessage):
        r.server.receive_shares(
            ShareKeys(session_id=r.sid, round_index=8, sender=ad.client_id, shares=())
        )
    # Out of order: a consistency response before any masked input.
    with pytest.raises(InvalidMessage):
        r.server.receive_consistency(
            ConsistencyResponse(session_id=r.sid, round_index=7, sender=0, signature=bytes(64))
        )


def test_unmask_response_with_wrong_kind_or_owner_is_rejected() -> None:
    r = Round(n=5)
    req = r.consist(skip=(4,))
    resp = r.clients[0].unmask(req)
    flipped = tuple(
        dataclasses.replace(s, kind=1 - s.kind) if s.owner == 1 else s for s in resp.shares
    )
    with pytest.raises(InvalidMessage, match="kind"):
        r.server.receive_unmask(dataclasses.replace(resp, shares=flipped))
    with pytest.raises(InvalidMessage):
        r.server.receive_unmask(dataclasses.replace(resp, shares=resp.shares + resp.shares[:1]))
    r.server.receive_unmask(resp)
    with pytest.raises(InvalidMessage, match="duplicate"):
        r.server.receive_unmask(resp)
    with pytest.raises(InvalidMessage):
        UnmaskResponse.from_bytes(resp.to_bytes()[:-3])


# ------------------------------------------------------ model consistency


@pytest.mark.parametrize("mode", [SecAggMode.SECAGG, SecAggMode.SECAGG_PLUS])
def test_model_inconsistency_attack_aborts(mode: SecAggMode) -> None:
    n = 12
    cfg = SecAggConfig(num_clients=n, mode=mode)
    xs = [np.ones(4, dtype=np.int64) for _ in range(n)]
    evil = hashlib.sha256(b"suppression model").digest()
    with pytest.raises((InvalidSignature, ConsistencyCheckFailed)):
        run_protocol(xs, config=cfg, model_hashes=dict.fromkeys(range(1, n), evil))
    with pytest.raises((InvalidSignature, ConsistencyCheckFailed)):
        run_protocol(xs, config=cfg, model_hashes={0: evil})


def test_model_inconsistency_caught_by_consistency_round_alone() -> None:
    # Even if share transport were not bound to the model, the signed
    # consistency message is: a server holding a signature over model B
    # cannot use it to convince a client that saw model A.
    r = Round(n=4)
    req = r.mask()
    other = r.client(3, model=hashlib.sha256(b"other").digest())
    other.state = r.clients[3].state  # same keys and shares, different model hash
    sig = other.consistency_check(req)
    with pytest.raises(ConsistencyCheckFailed):
        r.server.receive_consistency(sig)


# ---------------------------------------------------------- statistics


def test_masked_vectors_are_uniform_regardless_of_input() -> None:
    bits, d = 8, 40_000
    samples = {}
    for label, value in (("zeros", 0), ("max", 127)):
        r = Round(n=3, d=d, modulus_bits=bits)
        for i in range(3):
            r.clients[i].set_input(np.full(d, value, dtype=np.int64))
        r.mask()
        y = r.masked[0].vector.astype(np.int64)
        counts = np.bincount(y, minlength=2**bits)
        assert stats.chisquare(counts).pvalue > 1e-4
        samples[label] = counts
    table = np.stack([samples["zeros"], samples["max"]])
    assert stats.chi2_contingency(table).pvalue > 1e-4


def test_distributed_noise_variance_matches_survivors() -> None:
    n, d, sigma = 5, 20_000, 20.0
    cfg = SecAggConfig(num_clients=n, max_dropout_fraction=0.2, max_corrupt_fraction=0.0)
    xs = [np.zeros(d, dtype=np.int64) for _ in range(n)]
    res = secure_sum_int(xs, config=cfg, noise_stddev_int=sigma, dropouts={0: Stage.MASKED_INPUT})
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
        SecAggConfig(num_clients=10, threshold=5)  # t must exceed n/2
    with pytest.raises(ConfigError):
        SecAggConfig(num_clients=10, modulus_bits=63)
    with pytest.raises(ConfigError):
        SecAggConfig(num_clients=10, mode=SecAggMode.SECAGG_PLUS, degree=4)
    with pytest.raises(ConfigError):
        SecAggConfig(num_clients=10, mode=SecAggMode.SECAGG_PLUS, degree=3, threshold=3)
    with pytest.raises(TypeError):
        SecAggConfig(10)  # type: ignore[misc]
    cfg = SecAggConfig(num_clients=10)
    assert (cfg.degree, cfg.threshold) == (9, 6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.threshold = 2  # type: ignore[misc]


@pytest.mark.parametrize("n", [50, 200, 1000])
def test_secagg_plus_degree_is_logarithmic_and_graph_regular(n: int) -> None:
    cfg = SecAggConfig(num_clients=n, mode=SecAggMode.SECAGG_PLUS)
    assert cfg.k % 2 == 0 and cfg.k <= 12 * np.log2(n)
    assert (cfg.k + 1) / 2 < cfg.t <= cfg.k
    graph = aggregation._graph.harary_neighbours(list(range(n)), cfg.k, b"seed")
    assert all(len(v) == cfg.k for v in graph.values())
    assert all(u in graph[v] for u in graph for v in graph[u])
    other = aggregation._graph.harary_neighbours(list(range(n)), cfg.k, b"seed2")
    assert graph != other


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


def test_stage_interface_reveals_the_sum_only_when_unmasking_and_checks_min_inputs() -> None:
    rd = Round(n=5, d=8)
    for c in rd.clients.values():
        rd.server.receive(c.start())
    flags = []
    out = rd.server.close_stage()
    while isinstance(out, aggregation.Outbox):
        flags.append((out.stage.name, out.reveals_sum))
        assert set(out.messages) == rd.server.expected
        for i, msg in out.messages.items():
            rd.server.receive(rd.clients[i].handle(msg))
        out = rd.server.close_stage()
    assert flags == [
        ("SHARE_KEYS", False),
        ("MASKED_INPUT", False),
        ("CONSISTENCY_CHECK", False),
        ("UNMASKING", True),
    ]
    np.testing.assert_array_equal(out.total.astype(np.int64), np.sum(list(rd.x.values()), axis=0))
    # Distributed noise sized for 5 contributions: with one masked input missing the
    # round aborts before anyone is asked to unmask.
    cfg = SecAggConfig(num_clients=5, mode=SecAggMode.SECAGG)
    xs = [np.ones(8, np.int64)] * 5
    with pytest.raises(DropoutThresholdNotMet, match="at least 5"):
        run_protocol(xs, config=cfg, dropouts={2: Stage.MASKED_INPUT}, min_inputs=5)


def test_a_refused_reply_counts_as_the_senders_answer() -> None:
    n, d = 4, 3
    cfg = SecAggConfig(num_clients=n, mode=SecAggMode.SECAGG)
    _, stats = run_protocol([np.ones(d, np.int64)] * n, config=cfg)
    server = stats.server
    assert server.expected == frozenset()
    with pytest.raises(InvalidMessage, match="no UnmaskResponse expected"):
        server.receive(
            UnmaskResponse(
                session_id=server.session_id, round_index=server.round_index, sender=0, shares=()
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
