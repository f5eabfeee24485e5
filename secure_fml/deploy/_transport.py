"""Transports: a thread-safe service around the coordinator, and two ways to reach it.

- :class:`CoordinatorService` serialises access to the pure
  :class:`~secure_fml.deploy._coordinator.Coordinator`, runs a ticker thread for
  stage deadlines and implements long polling.
- :class:`Transport` is the site's view; :class:`InProcessTransport` calls the
  service directly but still round-trips every message through the protobuf
  converters, and :class:`GrpcTransport` speaks ``secure_fml.v1`` over a
  (mutual-TLS) channel.
- :class:`CoordinatorServicer` is the gRPC server side: decode, validate sizes
  and shapes, delegate, and map typed errors to status codes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from aggregation import Stage
from privacy.errors import (
    CheckpointError,
    ConfigError,
    InvalidMessage,
    OutOfOrder,
    ProtocolError,
    RefusalReason,
    Refused,
    SecureFMLError,
    StaleMessage,
    TransportError,
)
from secure_fml.deploy._convert import (
    MAX_FRAME_BYTES,
    check_version,
    read_stream,
    server_message_from_proto,
    server_message_to_proto,
    site_message_from_proto,
    stage_reply_to_proto,
    withdrawal_to_proto,
    write_stream,
)
from secure_fml.deploy._coordinator import CHECKPOINT_FILE, Coordinator
from secure_fml.deploy._limits import LogThrottle, PerIdentityLimiter, Watchdog
from secure_fml.messages import PROTOCOL_VERSION, EngineMessage, StageReply, Wait, Withdrawal
from secure_fml.proto import secure_fml_v1_pb2 as pb
from secure_fml.proto import secure_fml_v1_pb2_grpc as pbg

__all__ = [
    "CHANNEL_OPTIONS",
    "CoordinatorService",
    "CoordinatorServicer",
    "GrpcTransport",
    "InProcessTransport",
    "Transport",
    "serve",
    "status_code_for",
]

log = logging.getLogger(__name__)

#: Explicit limits on both ends: every frame is at most one chunk plus headroom.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_FRAME_BYTES),
    ("grpc.max_receive_message_length", MAX_FRAME_BYTES),
    ("grpc.max_metadata_size", 16 << 10),
]
#: A site's channel: gRPC's own reconnect backoff (1 s growing to 120 s by default) would
#: keep failing calls fast long after a restarted coordinator is back, overriding the
#: site's reconnect loop; cap it so the site's own backoff decides.
SITE_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    *CHANNEL_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]
DEFAULT_MAX_MODEL_BYTES = 1 << 30


def status_code_for(err: BaseException) -> grpc.StatusCode:
    """One status code per error type, so a refused peer can tell what went wrong."""
    if isinstance(err, Refused):
        return {
            RefusalReason.VERSION: grpc.StatusCode.UNIMPLEMENTED,
            RefusalReason.UNKNOWN_SITE: grpc.StatusCode.PERMISSION_DENIED,
            RefusalReason.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
            RefusalReason.DUPLICATE_CONNECTION: grpc.StatusCode.ALREADY_EXISTS,
            RefusalReason.OVERSIZE: grpc.StatusCode.RESOURCE_EXHAUSTED,
            RefusalReason.BUSY: grpc.StatusCode.RESOURCE_EXHAUSTED,
        }[err.reason]
    if isinstance(err, StaleMessage):
        return grpc.StatusCode.ABORTED
    if isinstance(err, OutOfOrder):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(err, (InvalidMessage, ConfigError)):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(err, ProtocolError):
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INTERNAL


class CoordinatorService:
    """Thread-safe front of a :class:`Coordinator` shared by all transports."""

    def __init__(self, coordinator: Coordinator, *, tick_s: float = 0.05) -> None:
        self.coordinator = coordinator
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._tick_s = tick_s
        self._ticker = threading.Thread(
            target=self._run_ticker, name="coordinator-tick", daemon=True
        )
        self._ticker.start()

    def _run_ticker(self) -> None:
        while not self._stop.wait(self._tick_s):
            with self._cond:
                try:
                    self.coordinator.tick()
                except SecureFMLError:
                    log.exception("coordinator tick failed")
                self._cond.notify_all()

    def stop(self) -> None:
        self._stop.set()
        self._ticker.join(timeout=5)

    def join(self, site: str, certificate: bytes) -> bytes:
        with self._cond:
            return self.coordinator.join(site, certificate)

    def poll(
        self, conn: bytes, *, wait_s: float, alive: Callable[[], bool] | None = None
    ) -> EngineMessage:
        """The next message for ``conn``, waiting up to ``wait_s`` (30 s at most) while
        ``alive()`` (the caller is still connected)."""
        deadline = time.monotonic() + max(0.0, min(wait_s, 30.0))
        with self._cond:
            while True:
                msg = self.coordinator.poll(conn)
                left = deadline - time.monotonic()
                if not isinstance(msg, Wait) or left <= 0 or self._stop.is_set():
                    return msg
                if alive is not None and not alive():
                    return msg
                self._cond.wait(min(left, self._tick_s))

    def submit(self, conn: bytes, reply: StageReply) -> None:
        with self._cond:
            try:
                self.coordinator.submit(conn, reply)
            finally:
                self._cond.notify_all()

    def withdraw(self, conn: bytes, notice: Withdrawal) -> None:
        with self._cond:
            try:
                self.coordinator.withdraw(conn, notice)
            finally:
                self._cond.notify_all()

    def site_of(self, conn: bytes) -> str:
        with self._cond:
            return self.coordinator.connection_site(conn)

    def limits(self, stage: Stage) -> tuple[int, tuple[str, int] | None]:
        """(max payload bytes, expected tensor) for a reply of ``stage`` right now."""
        with self._cond:
            return self.coordinator.reply_limits(stage)

    def status(self) -> dict[str, Any]:
        with self._cond:
            return self.coordinator.status()

    def checkpoint_bytes(self) -> bytes:
        with self._cond:
            path = self.coordinator.run_dir / CHECKPOINT_FILE
            if not path.exists():
                raise CheckpointError("no checkpoint yet")
            return path.read_bytes()

    def downloaded(self, conn: bytes) -> None:
        """``conn``'s site received the whole checkpoint."""
        with self._cond:
            self.coordinator.downloaded(conn)

    def sites_released(self, *, download_grace_s: float) -> bool:
        with self._cond:
            return self.coordinator.sites_released(download_grace_s=download_grace_s)


class Transport(ABC):
    """A site's connection to the coordinator."""

    @abstractmethod
    def join(self, site: str, certificate: bytes) -> bytes: ...

    @abstractmethod
    def poll(self, conn: bytes, *, wait_s: float) -> EngineMessage: ...

    @abstractmethod
    def submit(self, conn: bytes, reply: StageReply) -> None: ...

    @abstractmethod
    def withdraw(self, conn: bytes, notice: Withdrawal) -> None:
        """Tell the coordinator this site leaves the round, and why."""

    @abstractmethod
    def download_checkpoint(self, conn: bytes) -> bytes: ...

    def close(self) -> None:
        return None


class InProcessTransport(Transport):
    """Calls the service directly, through the same protobuf converters as gRPC."""

    def __init__(
        self, service: CoordinatorService, *, max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES
    ):
        self.service = service
        self.max_model_bytes = max_model_bytes

    def join(self, site: str, certificate: bytes) -> bytes:
        return self.service.join(site, certificate)

    def poll(self, conn: bytes, *, wait_s: float) -> EngineMessage:
        msg = self.service.poll(conn, wait_s=wait_s)
        frames = list(server_message_to_proto(msg))
        return _site_reads(
            lambda: server_message_from_proto(frames, max_model_bytes=self.max_model_bytes)
        )

    def submit(self, conn: bytes, reply: StageReply) -> None:
        self._send(list(stage_reply_to_proto(reply, connection_id=conn)))

    def withdraw(self, conn: bytes, notice: Withdrawal) -> None:
        self._send(list(withdrawal_to_proto(notice, connection_id=conn)))

    def _send(self, frames: list[pb.Frame]) -> None:
        svc = self.service
        conn, parsed = site_message_from_proto(
            frames,
            max_payload=lambda s: svc.limits(s)[0],
            expected_tensor=lambda s: svc.limits(s)[1],
        )
        if isinstance(parsed, Withdrawal):
            svc.withdraw(conn, parsed)
        else:
            svc.submit(conn, parsed)

    def download_checkpoint(self, conn: bytes) -> bytes:
        self.service.site_of(conn)
        data = self.service.checkpoint_bytes()
        self.service.downloaded(conn)
        return data


def _site_reads(
    read: Callable[[], EngineMessage], cancel: Callable[[], object] | None = None
) -> EngineMessage:
    """Run a site-side conversion; a stream the site refuses (oversize, another version
    inside it, malformed) is a :class:`ProtocolError` of that message -- the site drops
    it and keeps serving -- and the call is cancelled at the first refused frame."""
    try:
        return read()
    except Refused as e:
        if cancel is not None:
            cancel()
        raise InvalidMessage(f"coordinator message refused ({e.reason.value}): {e}") from None
    except InvalidMessage:
        if cancel is not None:
            cancel()
        raise


# ---------------------------------------------------------------------- gRPC server


def _peer_identity(
    context: grpc.ServicerContext, *, insecure: bool
) -> tuple[str | None, bytes | None]:
    """(common name, DER certificate) of the TLS client, or (None, None) without TLS."""
    auth = context.auth_context()
    cns = auth.get("x509_common_name") or []
    pems = auth.get("x509_pem_cert") or []
    if not cns or not pems:
        if insecure:
            return None, None
        raise Refused(RefusalReason.UNAUTHENTICATED, "a client certificate is required")
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    cert = x509.load_pem_x509_certificate(pems[0])
    return cns[0].decode(), cert.public_bytes(Encoding.DER)


class CoordinatorServicer(pbg.CoordinatorServicer):
    """Decode, validate sizes and shapes, delegate to the service, map errors.

    Every RPC first checks the peer's certificate against the allowlist (before it
    reads any of a request stream), then takes a slot of the identity's in-flight
    limit (:class:`~secure_fml.deploy._limits.PerIdentityLimiter`: one poll each);
    a stream still being read or written after ``stream_s`` is cancelled.
    """

    def __init__(
        self,
        service: CoordinatorService,
        *,
        insecure: bool = False,
        limiter: PerIdentityLimiter | None = None,
        stream_s: float = 30.0,
    ) -> None:
        self.service = service
        self.insecure = insecure
        self.limiter = limiter or PerIdentityLimiter()
        self.stream_s = stream_s
        self.watchdog = Watchdog()
        self._log = LogThrottle(log)

    def _fail(self, context: grpc.ServicerContext, err: BaseException, what: str) -> None:
        code = status_code_for(err)
        self._log.warning(
            f"{what}/{code.name}",
            "%s refused (%s): %s [peer %s]",
            what,
            code.name,
            err,
            context.peer(),
        )
        context.abort(code, f"{type(err).__name__}: {err}")

    def _who(self, context: grpc.ServicerContext) -> str:
        """The caller's identity, refused unless allowlisted (nothing read yet)."""
        cn, _ = _peer_identity(context, insecure=self.insecure)
        if cn is None:
            return str(context.peer())  # insecure mode: the address is all there is
        if cn not in self.service.coordinator.sites:
            raise Refused(RefusalReason.UNKNOWN_SITE, f"site {cn!r} is not on the allowlist")
        return cn

    @contextlib.contextmanager
    def _slot(self, context: grpc.ServicerContext, *, poll: bool = False) -> Iterator[str]:
        who = self._who(context)
        self.limiter.acquire(who, poll=poll)
        try:
            yield who
        finally:
            self.limiter.release(who, poll=poll)

    @contextlib.contextmanager
    def _deadline(self, context: grpc.ServicerContext) -> Iterator[None]:
        token = self.watchdog.arm(self.stream_s, context.cancel)
        try:
            yield
        finally:
            self.watchdog.disarm(token)

    def stop(self) -> None:
        self.watchdog.stop()

    def _check_conn(self, context: grpc.ServicerContext, conn: bytes) -> str:
        site = self.service.site_of(conn)
        cn, _ = _peer_identity(context, insecure=self.insecure)
        if cn is not None and cn != site:
            # A connection id is only valid together with the certificate that obtained it.
            raise Refused(RefusalReason.UNAUTHENTICATED, "connection id belongs to another site")
        return site

    def Join(  # noqa: N802 - gRPC method name
        self, request: pb.JoinRequest, context: grpc.ServicerContext
    ) -> pb.JoinReply:
        try:
            with self._slot(context):
                return self._join(request, context)
        except SecureFMLError as e:
            self._fail(context, e, "join")
            raise AssertionError("unreachable") from e

    def _join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        _require(request)
        check_version(request.protocol_version)
        cn, der = _peer_identity(context, insecure=self.insecure)
        if cn is not None:
            if request.site != cn:
                raise Refused(
                    RefusalReason.UNAUTHENTICATED,
                    f"site name {request.site!r} does not match its certificate ({cn!r})",
                )
            assert der is not None
            cert = der
        else:
            cert = bytes(request.certificate)  # insecure mode: unauthenticated claim
        conn = self.service.join(request.site, cert)
        return pb.JoinReply(connection_id=conn, max_chunk_bytes=MAX_FRAME_BYTES)

    def Poll(  # noqa: N802 - gRPC method name
        self, request: pb.PollRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Frame]:
        try:
            slot = self._slot(context, poll=True)
            slot.__enter__()
        except SecureFMLError as e:
            self._fail(context, e, "poll")
            return
        try:
            try:
                _require(request)
                check_version(request.protocol_version)
                self._check_conn(context, request.connection_id)
                msg = self.service.poll(
                    request.connection_id,
                    wait_s=request.wait_ms / 1000.0,
                    alive=context.is_active,
                )
            except SecureFMLError as e:
                self._fail(context, e, "poll")
                return
            # The reply stream to a reader that stops reading is cancelled at the deadline
            # (the slot is held until then).
            with self._deadline(context):
                yield from server_message_to_proto(msg)
        finally:
            slot.__exit__(None, None, None)

    def Submit(  # noqa: N802 - gRPC method name
        self, request_iterator: Iterable[pb.Frame], context: grpc.ServicerContext
    ) -> pb.SubmitReply:
        svc = self.service
        try:
            with self._slot(context):
                try:
                    with self._deadline(context):
                        conn, reply = site_message_from_proto(
                            _checked(request_iterator),
                            max_payload=lambda s: svc.limits(s)[0],
                            expected_tensor=lambda s: svc.limits(s)[1],
                        )
                except grpc.RpcError:
                    # Cancelled by the watchdog (or by the peer) while still sending.
                    context.abort(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"request stream not complete within {self.stream_s:g}s",
                    )
                self._check_conn(context, conn)
                if isinstance(reply, Withdrawal):
                    svc.withdraw(conn, reply)
                else:
                    svc.submit(conn, reply)
                return pb.SubmitReply(accepted=True)
        except SecureFMLError as e:
            self._fail(context, e, "submit")
            raise AssertionError("unreachable") from e

    def Status(  # noqa: N802 - gRPC method name
        self, request: pb.StatusRequest, context: grpc.ServicerContext
    ) -> pb.StatusReply:
        try:
            with self._slot(context):
                _require(request)
                check_version(request.protocol_version)
                return pb.StatusReply(json=json.dumps(self.service.status()))
        except SecureFMLError as e:
            self._fail(context, e, "status")
            raise AssertionError("unreachable") from e

    def Download(  # noqa: N802 - gRPC method name
        self, request: pb.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Frame]:
        try:
            slot = self._slot(context)
            slot.__enter__()
        except SecureFMLError as e:
            self._fail(context, e, "download")
            return
        try:
            try:
                _require(request)
                check_version(request.protocol_version)
                self._check_conn(context, request.connection_id)
                data = self.service.checkpoint_bytes()
            except SecureFMLError as e:
                self._fail(context, e, "download")
                return
            with self._deadline(context):
                yield from write_stream(pb.Header(kind=pb.CHECKPOINT), data)
            with contextlib.suppress(SecureFMLError):  # the site was replaced meanwhile
                self.service.downloaded(request.connection_id)
        finally:
            slot.__exit__(None, None, None)


SERVICE_NAME = "secure_fml.v1.Coordinator"


class _Malformed:
    """Stands in for a request that did not parse, so the servicer can answer with a
    typed INVALID_ARGUMENT instead of gRPC's generic deserialization failure."""

    def __init__(self, error: str) -> None:
        self.error = error


def _lenient(cls: Any) -> Callable[[bytes], Any]:
    def parse(raw: bytes) -> Any:
        try:
            return cls.FromString(raw)
        except DecodeError as e:
            return _Malformed(f"malformed {cls.__name__} protobuf: {e}")

    return parse


def _require(request: Any) -> None:
    if isinstance(request, _Malformed):
        raise InvalidMessage(request.error)


def _checked(frames: Iterable[Any]) -> Iterator[pb.Frame]:
    for f in frames:
        _require(f)
        yield f


def serve(
    service: CoordinatorService,
    *,
    address: str,
    server_credentials: grpc.ServerCredentials | None,
    max_workers: int = 32,
    max_rpcs_per_site: int = 4,
    stream_s: float = 30.0,
) -> tuple[grpc.Server, int]:
    """Start a gRPC server (mutual TLS unless ``server_credentials`` is None).

    ``max_rpcs_per_site``: requests one identity may have in flight (one poll);
    ``stream_s``: a request or reply stream still open after this long is cancelled.
    With n allowlisted sites, n * max_rpcs_per_site should stay below ``max_workers``.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers), options=CHANNEL_OPTIONS
    )
    servicer = CoordinatorServicer(
        service,
        insecure=server_credentials is None,
        limiter=PerIdentityLimiter(max_rpcs=max_rpcs_per_site),
        stream_s=stream_s,
    )
    handlers = {
        "Join": grpc.unary_unary_rpc_method_handler(
            servicer.Join,
            request_deserializer=_lenient(pb.JoinRequest),
            response_serializer=pb.JoinReply.SerializeToString,
        ),
        "Poll": grpc.unary_stream_rpc_method_handler(
            servicer.Poll,
            request_deserializer=_lenient(pb.PollRequest),
            response_serializer=pb.Frame.SerializeToString,
        ),
        "Submit": grpc.stream_unary_rpc_method_handler(
            servicer.Submit,
            request_deserializer=_lenient(pb.Frame),
            response_serializer=pb.SubmitReply.SerializeToString,
        ),
        "Status": grpc.unary_unary_rpc_method_handler(
            servicer.Status,
            request_deserializer=_lenient(pb.StatusRequest),
            response_serializer=pb.StatusReply.SerializeToString,
        ),
        "Download": grpc.unary_stream_rpc_method_handler(
            servicer.Download,
            request_deserializer=_lenient(pb.DownloadRequest),
            response_serializer=pb.Frame.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    if server_credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, server_credentials)
    if port == 0:
        raise TransportError(f"could not bind {address}")
    server.start()
    return server, port


# ---------------------------------------------------------------------- gRPC client


def _transport_error(err: grpc.RpcError) -> SecureFMLError:
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    if code is grpc.StatusCode.ABORTED:
        return StaleMessage(str(details))
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        return OutOfOrder(str(details))
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidMessage(str(details))
    reason = {
        grpc.StatusCode.UNIMPLEMENTED: RefusalReason.VERSION,
        grpc.StatusCode.PERMISSION_DENIED: RefusalReason.UNKNOWN_SITE,
        grpc.StatusCode.UNAUTHENTICATED: RefusalReason.UNAUTHENTICATED,
        grpc.StatusCode.ALREADY_EXISTS: RefusalReason.DUPLICATE_CONNECTION,
        grpc.StatusCode.RESOURCE_EXHAUSTED: RefusalReason.OVERSIZE,
    }.get(code)
    if reason is not None:
        return Refused(reason, f"{code.name}: {details}")  # type: ignore[union-attr]
    return TransportError(f"{code.name if code else 'RPC'}: {details}")


class GrpcTransport(Transport):
    """``secure_fml.v1`` over a gRPC channel (mutual TLS unless ``credentials`` is None)."""

    def __init__(
        self,
        address: str,
        *,
        credentials: grpc.ChannelCredentials | None,
        max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
        rpc_timeout_s: float = 60.0,
        handshake_probe: Callable[[], SecureFMLError | None] | None = None,
    ) -> None:
        # Asked after an UNAVAILABLE call: a certificate refused in the TLS handshake
        # (either way) is its own error, not "coordinator unavailable".
        self._probe = handshake_probe
        if credentials is None:
            self.channel = grpc.insecure_channel(address, options=SITE_CHANNEL_OPTIONS)
        else:
            self.channel = grpc.secure_channel(address, credentials, options=SITE_CHANNEL_OPTIONS)
        self.stub = pbg.CoordinatorStub(self.channel)
        self.max_model_bytes = max_model_bytes
        self.timeout = rpc_timeout_s
        #: Payload bytes sent and received (without gRPC/TLS framing), for benchmarks.
        self.bytes_sent = 0
        self.bytes_received = 0

    def _error(self, err: grpc.RpcError) -> SecureFMLError:
        if self._probe is not None and err.code() is grpc.StatusCode.UNAVAILABLE:
            rejected = self._probe()
            if rejected is not None:
                return rejected
        return _transport_error(err)

    def join(self, site: str, certificate: bytes) -> bytes:
        try:
            rep = self.stub.Join(
                pb.JoinRequest(
                    protocol_version=PROTOCOL_VERSION, site=site, certificate=certificate
                ),
                timeout=self.timeout,
            )
        except grpc.RpcError as e:
            raise self._error(e) from None
        return bytes(rep.connection_id)

    def poll(self, conn: bytes, *, wait_s: float) -> EngineMessage:
        req = pb.PollRequest(
            protocol_version=PROTOCOL_VERSION, connection_id=conn, wait_ms=int(wait_s * 1000)
        )
        call = self.stub.Poll(req, timeout=wait_s + self.timeout)

        def counted() -> Iterator[pb.Frame]:
            # Lazily, frame by frame: the size checks run as the stream arrives, and a
            # stream beyond its declared or allowed size is cancelled at that frame
            # instead of being buffered whole.
            for frame in call:
                self.bytes_received += frame.ByteSize()
                yield frame

        try:
            return _site_reads(
                lambda: server_message_from_proto(counted(), max_model_bytes=self.max_model_bytes),
                call.cancel,
            )
        except grpc.RpcError as e:
            raise self._error(e) from None

    def submit(self, conn: bytes, reply: StageReply) -> None:
        self._send(list(stage_reply_to_proto(reply, connection_id=conn)))

    def withdraw(self, conn: bytes, notice: Withdrawal) -> None:
        self._send(list(withdrawal_to_proto(notice, connection_id=conn)))

    def _send(self, frames: list[pb.Frame]) -> None:
        self.bytes_sent += sum(f.ByteSize() for f in frames)
        try:
            self.stub.Submit(iter(frames), timeout=self.timeout)
        except grpc.RpcError as e:
            raise self._error(e) from None

    def download_checkpoint(self, conn: bytes) -> bytes:
        req = pb.DownloadRequest(protocol_version=PROTOCOL_VERSION, connection_id=conn)
        try:
            frames = self.stub.Download(req, timeout=self.timeout)
            _, data = read_stream(frames, max_payload=lambda _h: self.max_model_bytes * 4)
        except grpc.RpcError as e:
            raise self._error(e) from None
        return data

    def status(self) -> dict[str, Any]:
        try:
            rep = self.stub.Status(
                pb.StatusRequest(protocol_version=PROTOCOL_VERSION), timeout=self.timeout
            )
        except grpc.RpcError as e:
            raise self._error(e) from None
        out: dict[str, Any] = json.loads(rep.json)
        return out

    def close(self) -> None:
        self.channel.close()
