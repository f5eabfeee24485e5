"""Abusive peers cannot block the coordinator's workers (real mTLS gRPC on loopback).

A certificate that is not on the allowlist is refused before any of its request
stream is read; an insider's stream that stalls is cancelled at the stream
deadline; an insider gets one long poll and a few requests in flight, the rest is
refused at once. Under a bounded slowloris plus poll flood from both, on a server
with few workers, an honest round still completes within its deadlines.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from privacy.errors import Refused
from secure_fml.deploy import (
    PROTOCOL_VERSION,
    Coordinator,
    CoordinatorService,
    Deadlines,
    GrpcTransport,
    Transport,
    serve,
)
from secure_fml.deploy._limits import LogThrottle, PerIdentityLimiter
from secure_fml.proto import secure_fml_v1_pb2 as pb
from secure_fml.proto import secure_fml_v1_pb2_grpc as pbg
from secure_fml.simulation import model_spec_for
from tests.deploy import _harness as H
from tests.deploy.test_abuse import _channel

S = grpc.StatusCode


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return H.make_pki(tmp_path_factory.mktemp("pki"), (*H.SITES, "mallory", "outsider"))


def _server(
    pki: Path, coord: Coordinator, **kw: object
) -> tuple[grpc.Server, int, CoordinatorService]:
    service = CoordinatorService(coord)
    creds = grpc.ssl_server_credentials(
        [((pki / "server.key").read_bytes(), (pki / "server.pem").read_bytes())],
        root_certificates=(pki / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    server, port = serve(service, address="127.0.0.1:0", server_credentials=creds, **kw)  # type: ignore[arg-type]
    return server, port, service


def _stalled(first: pb.Frame | None, release: threading.Event) -> Iterator[pb.Frame]:
    """A request stream that sends ``first`` (if any), then nothing until ``release``."""
    if first is not None:
        yield first
    release.wait(60)


def _coordinator(pki: Path, tmp: Path, names: tuple[str, ...], **dl: float) -> Coordinator:
    cfg = H.small_config(dp=True, rounds=1)
    c = Coordinator(
        cfg,
        sites=names,
        ca_certificate=H.ca_of(pki),
        model_spec=model_spec_for(cfg, H.dataset()),
        run_dir=tmp,
        deadlines=Deadlines(**{"train_s": 20.0, "stage_s": 10.0, **dl}),
        min_sites=len(H.SITES),
    )
    c.open()
    return c


@pytest.mark.e2e
def test_streams_are_checked_before_reading_bounded_in_time_and_per_identity(
    pki: Path, tmp_path: Path
) -> None:
    coord = _coordinator(pki, tmp_path, (*H.SITES, "mallory"))
    server, port, service = _server(pki, coord, stream_s=1.0, max_rpcs_per_site=3)
    release = threading.Event()
    try:
        outsider = pbg.CoordinatorStub(_channel(pki, port, "outsider"))
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as ei:
            outsider.Submit(_stalled(None, release), timeout=30)
        assert ei.value.code() is S.PERMISSION_DENIED
        assert time.monotonic() - t0 < 3.0  # refused before the (never sent) stream

        mallory = pbg.CoordinatorStub(_channel(pki, port, "mallory"))
        header = pb.Frame(
            header=pb.Header(protocol_version=PROTOCOL_VERSION, kind=pb.SECAGG, payload_bytes=1000)
        )
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as ei:
            mallory.Submit(_stalled(header, release), timeout=30)
        assert ei.value.code() in (S.CANCELLED, S.DEADLINE_EXCEEDED)
        assert time.monotonic() - t0 < 5.0  # cancelled at the 1 s stream deadline

        # Six stalled streams at once: three slots, the other three refused at once.
        codes: list[S] = []
        lock = threading.Lock()

        def stall() -> None:
            try:
                mallory.Submit(_stalled(header, release), timeout=30)
            except grpc.RpcError as e:
                with lock:
                    codes.append(e.code())

        threads = [threading.Thread(target=stall) for _ in range(6)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=15)
        assert codes.count(S.RESOURCE_EXHAUSTED) >= 3, codes
        assert len(codes) == 6
    finally:
        release.set()
        server.stop(grace=0.5)
        service.stop()
        coord.close()


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_honest_round_completes_under_slowloris_and_poll_flood(pki: Path, tmp_path: Path) -> None:
    coord = _coordinator(pki, tmp_path, (*H.SITES, "mallory"), train_s=8.0, stage_s=4.0)
    # Few workers: 5 honest long polls + mallory's 4 slots + transient refusals.
    server, port, service = _server(pki, coord, max_workers=12, stream_s=2.0)
    stop = threading.Event()
    refused: list[S] = []
    lock = threading.Lock()

    def note(e: grpc.RpcError) -> None:
        with lock:
            refused.append(e.code())

    def outsider_slowloris() -> None:
        stub = pbg.CoordinatorStub(_channel(pki, port, "outsider"))
        while not stop.is_set():
            try:
                stub.Submit(_stalled(None, stop), timeout=30)
            except grpc.RpcError as e:
                note(e)

    mallory_ch = _channel(pki, port, "mallory")
    mallory = pbg.CoordinatorStub(mallory_ch)
    conn = mallory.Join(
        pb.JoinRequest(protocol_version=PROTOCOL_VERSION, site="mallory"), timeout=10
    ).connection_id

    def mallory_poll_flood() -> None:
        req = pb.PollRequest(protocol_version=PROTOCOL_VERSION, connection_id=conn, wait_ms=30000)
        while not stop.is_set():
            try:
                for _ in mallory.Poll(req, timeout=35):
                    pass
            except grpc.RpcError as e:
                note(e)

    def mallory_slowloris() -> None:
        header = pb.Frame(
            header=pb.Header(protocol_version=PROTOCOL_VERSION, kind=pb.SECAGG, payload_bytes=999)
        )
        while not stop.is_set():
            try:
                mallory.Submit(_stalled(header, stop), timeout=30)
            except grpc.RpcError as e:
                note(e)

    attackers = [threading.Thread(target=outsider_slowloris, daemon=True) for _ in range(40)]
    attackers += [threading.Thread(target=mallory_poll_flood, daemon=True) for _ in range(50)]
    attackers += [threading.Thread(target=mallory_slowloris, daemon=True) for _ in range(10)]
    for th in attackers:
        th.start()
    try:
        time.sleep(1.0)  # the attack is under way before the honest sites connect
        sites = [H.make_site(coord.config, pki, n, f"client_0{i}") for i, n in enumerate(H.SITES)]
        ep = H.Endpoint(service, lambda name: _grpc_transport(pki, port, name), port)
        t0 = time.monotonic()
        done = H.run_sites(ep, sites, pki, timeout_s=90)
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        server.stop(grace=0.5)
        service.stop()
        mallory_ch.close()
    coord.close()
    assert done == [1] * len(H.SITES), done
    line = coord.history[-1]
    assert line["status"] == "complete" and line["contributors"] == len(H.SITES), line
    # Within its deadlines: mallory's silence costs one train deadline, nothing more.
    assert elapsed < 8.0 + 4.0 * 8 + 10, elapsed
    with lock:
        codes = set(refused)
    assert S.PERMISSION_DENIED in codes and S.RESOURCE_EXHAUSTED in codes, codes


def _grpc_transport(pki: Path, port: int, name: str) -> Transport:
    cert, key = pki / f"site-{name}.pem", pki / f"site-{name}.key"
    cc = grpc.ssl_channel_credentials(
        (pki / "ca.pem").read_bytes(), key.read_bytes(), cert.read_bytes()
    )
    return GrpcTransport(f"127.0.0.1:{port}", credentials=cc, rpc_timeout_s=20)


def test_limiter_and_log_throttle_units() -> None:
    lim = PerIdentityLimiter(max_rpcs=2, max_polls=1)
    lim.acquire("a", poll=True)
    with pytest.raises(Refused):
        lim.acquire("a", poll=True)
    lim.acquire("a")
    with pytest.raises(Refused):
        lim.acquire("a")
    lim.acquire("b")  # per identity
    lim.release("a", poll=True)
    lim.acquire("a", poll=True)
    assert lim.in_flight("a") == 2

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    lg = logging.getLogger("throttle-test")
    lg.addHandler(Keep())
    lg.propagate = False
    th = LogThrottle(lg, burst=3, period_s=60)
    for i in range(1000):
        th.warning("submit/X", "refused %d", i)
    assert len(records) == 3
