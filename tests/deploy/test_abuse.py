"""Fault and abuse: a misbehaving allowlisted site and outsiders drive the gRPC server
with malformed protobufs, wrong shapes and dtypes, NaN/Inf, oversize messages, replays,
out-of-order stage messages, a wrong version, a duplicate connection and unknown
certificates. Each gets its own status code, the server stays up, and the round result
equals a clean run of the honest sites alone."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from aggregation import ClientSession, ConsistencyResponse, Stage
from secure_fml.deploy import PROTOCOL_VERSION, Finished, RoundStart, Site, StaleMessage, Wait
from secure_fml.deploy._convert import server_message_from_proto
from secure_fml.deploy._pki import identity_public_key, load_identity_key, site_paths
from secure_fml.pipeline import seeded_randomness
from secure_fml.proto import secure_fml_v1_pb2 as pb
from secure_fml.proto import secure_fml_v1_pb2_grpc as pbg
from tests.deploy import _harness as H

HONEST = H.SITES
SUBMIT = "/secure_fml.v1.Coordinator/Submit"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    H.make_pki(root, (*HONEST, "mallory", "outsider"))
    # A well-formed site certificate from a different CA.
    other = tmp_path_factory.mktemp("other-ca")
    H.make_pki(other, ("alpha",))
    (root / "foreign").mkdir()
    for suffix in ("pem", "key"):
        (root / "foreign" / f"site-alpha.{suffix}").write_bytes(
            (other / f"site-alpha.{suffix}").read_bytes()
        )
    return root


def _channel(pki: Path, port: int, name: str, *, cert_dir: Path | None = None) -> grpc.Channel:
    d = cert_dir or pki
    cert, key, _ = site_paths(d, name)
    creds = grpc.ssl_channel_credentials(
        (pki / "ca.pem").read_bytes(), key.read_bytes(), cert.read_bytes()
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", creds)


def _code(fn) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as ei:
        fn()
    return ei.value.code()


def _frames(header: pb.Header, payload: bytes) -> list[pb.Frame]:
    header.protocol_version = header.protocol_version or PROTOCOL_VERSION
    header.payload_bytes = header.payload_bytes or len(payload)
    header.payload_sha256 = hashlib.sha256(payload).digest()
    return (
        [pb.Frame(header=header), pb.Frame(chunk=payload)] if payload else [pb.Frame(header=header)]
    )


def _run_round(pki: Path, tmp: Path, names: tuple[str, ...], abuse=None):  # type: ignore[no-untyped-def]
    cfg = H.small_config(dp=False, rounds=1)
    coord = H.make_coordinator(cfg, pki, tmp, names=names, train_s=30.0, stage_s=3.0)
    # Insecure test mode (seeded training and masks): the abused round can then be
    # compared with the clean one coordinate by coordinate.
    sites = [
        H.make_site(cfg, pki, n, f"client_0{i}", seed=7, randomness=seeded_randomness(1, n))
        for i, n in enumerate(HONEST)
    ]
    with H.endpoint("grpc", coord, pki) as ep:
        if abuse is None:
            done = H.run_sites(ep, sites, pki)
        else:
            out: list = []
            th = threading.Thread(target=lambda: out.extend(H.run_sites(ep, sites, pki)))
            th.start()
            abuse(ep.port, coord)
            th.join(timeout=90)
            done = out
    coord.close()
    return coord, done


@pytest.mark.slow  # ~4.5 s: many abusive clients against a live coordinator
def test_abuse_is_refused_with_typed_status_and_round_equals_clean_run(
    pki: Path, tmp_path: Path
) -> None:
    clean, done = _run_round(pki, tmp_path / "clean", HONEST)
    assert done == [1] * len(HONEST) and clean.round == 1
    codes: dict[str, grpc.StatusCode] = {}

    def abuse(port: int, coord) -> None:  # type: ignore[no-untyped-def]
        ch = _channel(pki, port, "mallory")
        stub = pbg.CoordinatorStub(ch)
        raw_submit = ch.stream_unary(SUBMIT)  # bytes in, bytes out: any garbage
        mallory_cert = H.cert_der(pki, "mallory")

        codes["version"] = _code(
            lambda: stub.Join(pb.JoinRequest(protocol_version=99, site="mallory"), timeout=5)
        )
        codes["impersonation"] = _code(
            lambda: stub.Join(
                pb.JoinRequest(protocol_version=PROTOCOL_VERSION, site="alpha"), timeout=5
            )
        )
        conn = stub.Join(
            pb.JoinRequest(
                protocol_version=PROTOCOL_VERSION, site="mallory", certificate=mallory_cert
            ),
            timeout=5,
        ).connection_id
        codes["duplicate_connection"] = _code(
            lambda: stub.Join(
                pb.JoinRequest(protocol_version=PROTOCOL_VERSION, site="mallory"), timeout=5
            )
        )
        # Wait for our RoundStart (the round needs all five connected sites).
        msg = None
        for _ in range(200):
            frames = list(
                stub.Poll(
                    pb.PollRequest(
                        protocol_version=PROTOCOL_VERSION, connection_id=conn, wait_ms=500
                    )
                )
            )
            msg = server_message_from_proto(frames, max_model_bytes=1 << 30)
            if isinstance(msg, RoundStart):
                break
            assert isinstance(msg, Wait)
        assert isinstance(msg, RoundStart)
        hdr = dict(round=msg.round, session_id=msg.session_id, connection_id=conn, kind=pb.SECAGG)

        codes["malformed_protobuf"] = _code(
            lambda: raw_submit(iter([b"\xff\xff\xff\xff garbage"]), timeout=5)
        )
        codes["no_header"] = _code(lambda: stub.Submit(iter([pb.Frame(chunk=b"x")]), timeout=5))
        d = int(coord.state.numel())
        bad = np.full(d, np.nan, dtype=np.float32).tobytes()
        codes["nan_float_masked_input"] = _code(
            lambda: stub.Submit(
                iter(
                    _frames(
                        pb.Header(stage=2, tensor=pb.TensorSpec(dtype="float32", shape=[d]), **hdr),
                        bad,
                    )
                ),
                timeout=5,
            )
        )
        codes["wrong_shape"] = _code(
            lambda: stub.Submit(
                iter(
                    _frames(
                        pb.Header(
                            stage=2, tensor=pb.TensorSpec(dtype="uint32", shape=[d + 1]), **hdr
                        ),
                        b"\0" * 8,
                    )
                ),
                timeout=5,
            )
        )
        codes["oversize_declared"] = _code(
            lambda: stub.Submit(
                iter(
                    [
                        pb.Frame(
                            header=pb.Header(
                                protocol_version=PROTOCOL_VERSION,
                                stage=1,
                                payload_bytes=10**10,
                                **hdr,
                            )
                        )
                    ]
                ),
                timeout=5,
            )
        )
        big = grpc.secure_channel(
            f"127.0.0.1:{port}",
            grpc.ssl_channel_credentials(
                (pki / "ca.pem").read_bytes(),
                site_paths(pki, "mallory")[1].read_bytes(),
                site_paths(pki, "mallory")[0].read_bytes(),
            ),
            options=[("grpc.max_send_message_length", 64 << 20)],
        )
        codes["oversize_frame"] = _code(
            lambda: pbg.CoordinatorStub(big).Submit(
                iter(_frames(pb.Header(stage=0, **hdr), b"\0" * (3 << 20))), timeout=10
            )
        )
        big.close()
        codes["bad_checksum"] = _code(
            lambda: stub.Submit(
                iter(
                    [
                        pb.Frame(
                            header=pb.Header(
                                protocol_version=PROTOCOL_VERSION,
                                stage=0,
                                payload_bytes=3,
                                payload_sha256=b"\0" * 32,
                                **hdr,
                            )
                        ),
                        pb.Frame(chunk=b"abc"),
                    ]
                ),
                timeout=5,
            )
        )
        # A real advertisement from mallory's own SecAgg session.
        keys = {p.index: identity_public_key_of(p.identity) for p in msg.peers}
        assert msg.settings.secagg is not None
        cs = ClientSession(
            msg.settings.secagg,
            client_id=msg.client_index,
            identity_key=load_identity_key(site_paths(pki, "mallory")[2]),
            identity_keys=keys,
            session_id=msg.session_id,
            round_index=msg.round,
            model_hash=msg.model_hash,
        )
        ad = cs.advertise_keys().to_bytes()
        stale = dict(hdr, round=msg.round + 7)
        codes["stale_round"] = _code(
            lambda: stub.Submit(iter(_frames(pb.Header(stage=0, **stale), ad)), timeout=5)
        )
        other_session = dict(hdr, session_id=b"\1" * 16)
        codes["other_session"] = _code(
            lambda: stub.Submit(iter(_frames(pb.Header(stage=0, **other_session), ad)), timeout=5)
        )
        # A well-formed consistency signature while the key stage is still open.
        early = ConsistencyResponse(
            session_id=msg.session_id,
            round_index=msg.round,
            sender=msg.client_index,
            signature=b"\0" * 64,
        ).to_bytes()
        codes["out_of_order"] = _code(
            lambda: stub.Submit(
                iter(_frames(pb.Header(stage=Stage.CONSISTENCY_CHECK.value, **hdr), early)),
                timeout=5,
            )
        )
        codes["unknown_stage"] = _code(
            lambda: stub.Submit(iter(_frames(pb.Header(stage=99, **hdr), b"\0")), timeout=5)
        )
        stub.Submit(iter(_frames(pb.Header(stage=0, **hdr), ad)), timeout=5)  # accepted
        codes["replay"] = _code(
            lambda: stub.Submit(iter(_frames(pb.Header(stage=0, **hdr), ad)), timeout=5)
        )
        # Outsiders: a CA-issued certificate that is not allowlisted, one from another CA.
        out_ch = _channel(pki, port, "outsider")
        codes["not_allowlisted"] = _code(
            lambda: pbg.CoordinatorStub(out_ch).Join(
                pb.JoinRequest(protocol_version=PROTOCOL_VERSION, site="outsider"), timeout=5
            )
        )
        codes["status_not_allowlisted"] = _code(
            lambda: pbg.CoordinatorStub(out_ch).Status(
                pb.StatusRequest(protocol_version=PROTOCOL_VERSION), timeout=5
            )
        )
        out_ch.close()
        foreign = _channel(pki, port, "alpha", cert_dir=pki / "foreign")
        codes["foreign_ca"] = _code(
            lambda: pbg.CoordinatorStub(foreign).Join(
                pb.JoinRequest(protocol_version=PROTOCOL_VERSION, site="alpha"), timeout=5
            )
        )
        foreign.close()
        # The server is still up and serving the round; mallory now goes silent.
        assert stub.Status(pb.StatusRequest(protocol_version=PROTOCOL_VERSION), timeout=5).json
        ch.close()

    abused, done = _run_round(pki, tmp_path / "abused", (*HONEST, "mallory"), abuse)
    S = grpc.StatusCode
    assert codes == {
        "version": S.UNIMPLEMENTED,
        "impersonation": S.UNAUTHENTICATED,
        "duplicate_connection": S.ALREADY_EXISTS,
        "malformed_protobuf": S.INVALID_ARGUMENT,
        "no_header": S.INVALID_ARGUMENT,
        "nan_float_masked_input": S.INVALID_ARGUMENT,
        "wrong_shape": S.INVALID_ARGUMENT,
        "oversize_declared": S.RESOURCE_EXHAUSTED,
        "oversize_frame": S.RESOURCE_EXHAUSTED,
        "bad_checksum": S.INVALID_ARGUMENT,
        "stale_round": S.ABORTED,
        "other_session": S.ABORTED,
        "out_of_order": S.FAILED_PRECONDITION,
        "unknown_stage": S.INVALID_ARGUMENT,
        "replay": S.ABORTED,
        "not_allowlisted": S.PERMISSION_DENIED,
        "status_not_allowlisted": S.PERMISSION_DENIED,
        "foreign_ca": S.UNAVAILABLE,  # the TLS handshake itself fails
    }, codes
    assert done == [1] * len(HONEST), done
    line = abused.history[-1]
    assert line["status"] == "complete" and line["contributors"] == len(HONEST), line
    assert line["dropped"] == 1  # mallory, recovered like any dropout
    assert clean.last_aggregate is not None and abused.last_aggregate is not None
    np.testing.assert_allclose(abused.last_aggregate, clean.last_aggregate, atol=1e-6)
    np.testing.assert_allclose(abused.state.numpy(), clean.state.numpy(), atol=1e-6)
    # stale round, other session, replay: each refused as a StaleMessage
    assert abused.refusals["StaleMessage"] == 3, abused.refusals
    assert abused.refusals["OutOfOrder"] == 1, abused.refusals


def identity_public_key_of(der: bytes):  # type: ignore[no-untyped-def]
    from cryptography import x509

    return identity_public_key(x509.load_der_x509_certificate(der))


def _round_start(pki: Path, site: Site, model: np.ndarray) -> RoundStart:
    """A well-formed round start for ``site`` (alpha) with a real three-site roster."""
    from aggregation import SecAggConfig
    from secure_fml.messages import AggregationProtocol, ClientNoise, Peer, RoundSettings

    names = ("alpha", "beta", "gamma")
    return RoundStart(
        round=1,
        session_id=b"\0" * 16,
        client_index=0,
        peers=tuple(Peer(i, n, H.cert_der(pki, n)) for i, n in enumerate(names)),
        model=model,
        model_hash=hashlib.sha256(model.astype("<f4").tobytes()).digest(),
        settings=RoundSettings(
            protocol=AggregationProtocol.SECAGG,
            clip_norm=1.0,
            noise=ClientNoise.DISCRETE_GAUSSIAN,
            # Enough for the site's policy: sqrt(2) * 50 / (1 + sqrt(d)) > 0.5.
            noise_std=50.0,
            min_survivors=2,
            secagg=SecAggConfig(num_clients=3),
            scale=1.0,
        ),
    )


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ("nan", "NaN or Inf"),
        ("inf", "NaN or Inf"),
        ("shape", r"needs float32\["),
        ("dtype", "1-D float32"),
        ("hash", "SHA-256"),
        ("no_noise", "without DP noise"),
        ("sybil_name", "repeats a participant name"),
        ("sybil_identity", "repeats an identity"),
        ("not_me", "does not list this client"),
        ("foreign_cert", "certificate"),
    ],
)
def test_site_refuses_bad_models_and_rosters_from_the_coordinator(
    pki: Path, bad: str, match: str
) -> None:
    import dataclasses

    from privacy.errors import InvalidMessage
    from secure_fml.messages import ClientNoise, Peer

    cfg = H.small_config(dp=True)
    site = H.make_site(cfg, pki, "alpha", "client_00")
    good = _round_start(pki, site, np.zeros(site.dim, np.float32))
    assert site.handle(good) is not None  # the well-formed start is accepted
    site = H.make_site(cfg, pki, "alpha", "client_00")
    model = np.zeros(site.dim, np.float32)
    msg = good
    if bad in ("nan", "inf"):
        model[3] = np.nan if bad == "nan" else np.inf
        msg = _round_start(pki, site, model)
    elif bad == "shape":
        msg = _round_start(pki, site, np.zeros(site.dim + 1, np.float32))
    elif bad == "dtype":
        msg = dataclasses.replace(msg, model=np.zeros(site.dim, np.float64))
    elif bad == "hash":
        msg = dataclasses.replace(msg, model_hash=b"\1" * 32)
    elif bad == "no_noise":
        msg = dataclasses.replace(
            msg,
            settings=dataclasses.replace(msg.settings, noise=ClientNoise.NONE, noise_std=0.0),
        )
    elif bad == "sybil_name":
        p = msg.peers
        msg = dataclasses.replace(msg, peers=(p[0], p[1], Peer(2, "beta", p[2].identity)))
    elif bad == "sybil_identity":
        p = msg.peers
        msg = dataclasses.replace(msg, peers=(p[0], p[1], Peer(2, "gamma", p[1].identity)))
    elif bad == "not_me":
        p = msg.peers
        msg = dataclasses.replace(
            msg, peers=(Peer(0, "beta", p[1].identity), Peer(1, "alpha", p[0].identity), p[2])
        )
    else:  # a roster entry whose certificate names someone else
        p = msg.peers
        msg = dataclasses.replace(
            msg, peers=(p[0], p[1], Peer(2, "gamma", H.cert_der(pki, "delta")))
        )
    with pytest.raises(InvalidMessage, match=match):
        site.handle(msg)
    assert site.handle(Finished(1)) is None and site.finished


def test_site_ignores_stage_requests_of_unknown_sessions(pki: Path) -> None:
    from aggregation import NeighbourKeys
    from secure_fml.deploy import StageRequest

    site = H.make_site(H.small_config(dp=True), pki, "alpha", "client_00")
    kb = NeighbourKeys(session_id=b"\0" * 16, round_index=1, recipient=0, keys=())
    with pytest.raises(StaleMessage):
        site.handle(
            StageRequest(round=1, session_id=b"\0" * 16, stage=Stage.SHARE_KEYS, message=kb)
        )
