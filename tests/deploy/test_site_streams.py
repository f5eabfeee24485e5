"""A hostile coordinator's streams never exhaust a site: sizes are checked frame by
frame as the stream arrives, and the call is cancelled at the first frame beyond
the declared or allowed size (no buffering of a whole declared-huge stream)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from privacy.errors import InvalidMessage, RefusalReason, Refused
from secure_fml.deploy import PROTOCOL_VERSION, GrpcTransport
from secure_fml.deploy._convert import MAX_CHUNK_BYTES, read_stream
from secure_fml.deploy._transport import CHANNEL_OPTIONS, SERVICE_NAME
from secure_fml.proto import secure_fml_v1_pb2 as pb

CHUNK = b"\0" * MAX_CHUNK_BYTES


def _endless(declared: int, sent: list[int]) -> Iterator[pb.Frame]:
    yield pb.Frame(
        header=pb.Header(
            protocol_version=PROTOCOL_VERSION,
            kind=pb.ROUND_START,
            payload_bytes=declared,
            payload_sha256=hashlib.sha256(b"").digest(),
        )
    )
    while True:
        sent[0] += 1
        yield pb.Frame(chunk=CHUNK)


@pytest.mark.parametrize("declared", [0, 3 * MAX_CHUNK_BYTES])
def test_read_stream_stops_at_the_first_chunk_beyond_the_declared_size(declared: int) -> None:
    sent = [0]
    with pytest.raises(Refused) as ei:
        read_stream(_endless(declared, sent), max_payload=lambda _h: 1 << 30)
    assert ei.value.reason is RefusalReason.OVERSIZE
    assert sent[0] == declared // MAX_CHUNK_BYTES + 1  # consumed lazily, then refused


def test_read_stream_refuses_a_declared_size_above_the_limit_before_any_chunk() -> None:
    sent = [0]
    with pytest.raises(Refused):
        read_stream(_endless(10**12, sent), max_payload=lambda _h: 1 << 20)
    assert sent[0] == 0


def test_site_cancels_an_endless_poll_stream_over_grpc() -> None:
    """A coordinator that declares 0 bytes and then streams forever: the site's poll
    is refused (a typed error of that message) after one chunk, and the server sees
    its stream cancelled."""
    sent = [0]
    done = threading.Event()

    def poll(_request: pb.PollRequest, context: grpc.ServicerContext) -> Iterator[pb.Frame]:
        try:
            yield from _endless(0, sent)
        finally:
            done.set()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=CHANNEL_OPTIONS)
    handlers = {
        "Poll": grpc.unary_stream_rpc_method_handler(
            poll,
            request_deserializer=pb.PollRequest.FromString,
            response_serializer=pb.Frame.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    t = GrpcTransport(f"127.0.0.1:{port}", credentials=None, rpc_timeout_s=10)
    try:
        with pytest.raises(InvalidMessage, match="oversize"):
            t.poll(b"\0" * 16, wait_s=0.1)
        assert done.wait(10)  # the server-side stream ended: cancelled by the site
        assert sent[0] < 64  # a few frames in flight at most, never the endless stream
    finally:
        t.close()
        server.stop(grace=0.5)
