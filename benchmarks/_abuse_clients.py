"""Abusive gRPC clients for the deployment soak (``benchmarks.deploy_abuse``).

Written against the ``secure_fml.v1`` protocol with raw stubs, as an attacker would.
One process holds one certificate (an allowlisted insider's, or a CA-issued one that is
not on the allowlist) and runs every attack class in its own loop, concurrently, until
its time is up; it then writes how often each attack got which status code:

    python -m benchmarks._abuse_clients --pki DIR --name mallory --address 127.0.0.1:PORT \\
        --seconds 90 --out attacks-mallory.json

Attack classes: slowloris submits (a header, then silence), a long-poll flood (bogus
connection ids, 30 s waits), oversize streams (declared and actual), malformed
protobufs, a missing header, a bad checksum, another protocol version, impersonation
(joining under another site's name), replayed and stale stage messages, and a status
flood. The insider never joins under its own name (a joined site that stays silent is
sampled and costs a round deadline, a different attack): what it costs the federation
is the abuse alone.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from secure_fml.deploy import PROTOCOL_VERSION
from secure_fml.proto import secure_fml_v1_pb2 as pb
from secure_fml.proto import secure_fml_v1_pb2_grpc as pbg

__all__ = ["ATTACKS", "Attacker"]

SUBMIT = "/secure_fml.v1.Coordinator/Submit"


def _frames(header: pb.Header, payload: bytes) -> list[pb.Frame]:
    header.protocol_version = header.protocol_version or PROTOCOL_VERSION
    header.payload_bytes = header.payload_bytes or len(payload)
    header.payload_sha256 = hashlib.sha256(payload).digest()
    return (
        [pb.Frame(header=header), pb.Frame(chunk=payload)] if payload else [pb.Frame(header=header)]
    )


class Attacker:
    """Every attack class in its own thread(s), as ``name`` (its certificate in ``pki``)."""

    def __init__(self, *, pki: Path, name: str, address: str, other_site: str = "alpha") -> None:
        creds = grpc.ssl_channel_credentials(
            (pki / "ca.pem").read_bytes(),
            (pki / f"site-{name}.key").read_bytes(),
            (pki / f"site-{name}.pem").read_bytes(),
        )
        opts = [("grpc.max_send_message_length", 64 << 20)]
        self.channel = grpc.secure_channel(address, creds, options=opts)
        self.stub = pbg.CoordinatorStub(self.channel)
        self.raw_submit = self.channel.stream_unary(SUBMIT)
        self.name = name
        self.other_site = other_site
        self.cert = (pki / f"site-{name}.pem").read_bytes()
        self.stop = threading.Event()
        self.codes: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self._lock = threading.Lock()

    def _note(self, attack: str, code: str) -> None:
        with self._lock:
            self.codes[attack][code] += 1

    def _try(self, attack: str, fn: Callable[[], object]) -> None:
        try:
            fn()
            self._note(attack, "OK")
        except grpc.RpcError as e:
            self._note(attack, e.code().name if e.code() else "RPC")

    def _stalled(self, first: pb.Frame) -> Iterator[pb.Frame]:
        yield first
        self.stop.wait(120)

    def _hdr(self, **kw: object) -> pb.Header:
        return pb.Header(
            protocol_version=PROTOCOL_VERSION,
            round=kw.pop("round", 1),  # type: ignore[arg-type]
            session_id=kw.pop("session_id", b"\0" * 16),  # type: ignore[arg-type]
            connection_id=kw.pop("connection_id", secrets.token_bytes(16)),  # type: ignore[arg-type]
            kind=pb.SECAGG,
            **kw,  # type: ignore[arg-type]
        )

    # -------------------------------------------------------------- attack classes

    def slowloris(self) -> None:
        first = pb.Frame(header=self._hdr(stage=0, payload_bytes=1000))
        self._try("slowloris", lambda: self.stub.Submit(self._stalled(first), timeout=120))

    def poll_flood(self) -> None:
        req = pb.PollRequest(
            protocol_version=PROTOCOL_VERSION,
            connection_id=secrets.token_bytes(16),
            wait_ms=30000,
        )
        self._try("poll_flood", lambda: list(self.stub.Poll(req, timeout=35)))

    def oversize(self) -> None:
        declared = [pb.Frame(header=self._hdr(stage=1, payload_bytes=10**10))]
        self._try("oversize_declared", lambda: self.stub.Submit(iter(declared), timeout=10))
        big = _frames(self._hdr(stage=0), b"\0" * (3 << 20))
        self._try("oversize_frame", lambda: self.stub.Submit(iter(big), timeout=10))

    def malformed(self) -> None:
        self._try(
            "malformed_protobuf",
            lambda: self.raw_submit(iter([b"\xff\xff\xff\xff garbage"]), timeout=10),
        )
        self._try("no_header", lambda: self.stub.Submit(iter([pb.Frame(chunk=b"x")]), timeout=10))
        bad_sum = [
            pb.Frame(header=self._hdr(stage=0, payload_bytes=3, payload_sha256=b"\0" * 32)),
            pb.Frame(chunk=b"abc"),
        ]
        self._try("bad_checksum", lambda: self.stub.Submit(iter(bad_sum), timeout=10))
        self._try(
            "wrong_version",
            lambda: self.stub.Join(pb.JoinRequest(protocol_version=99, site=self.name), timeout=10),
        )
        self._try(
            "impersonation",
            lambda: self.stub.Join(
                pb.JoinRequest(protocol_version=PROTOCOL_VERSION, site=self.other_site),
                timeout=10,
            ),
        )

    def replay(self) -> None:
        # A stage message for an old round and another session, on a guessed connection.
        for rnd in (1, 10**6):
            frames = _frames(self._hdr(stage=0, round=rnd, session_id=b"\1" * 16), b"\0" * 64)

            def send(f: list[pb.Frame] = frames) -> object:
                return self.stub.Submit(iter(f), timeout=10)

            self._try("replay_stale", send)

    def status_flood(self) -> None:
        self._try(
            "status_flood",
            lambda: self.stub.Status(
                pb.StatusRequest(protocol_version=PROTOCOL_VERSION), timeout=10
            ),
        )

    # -------------------------------------------------------------------- driver

    def run(
        self,
        seconds: float,
        *,
        slowloris: int = 8,
        polls: int = 8,
        pause_s: float = 0.05,
        stop_file: Path | None = None,
    ) -> None:
        def loop(fn: Callable[[], None], pause: float) -> None:
            while not self.stop.is_set():
                fn()
                self.stop.wait(pause)

        threads = [
            threading.Thread(target=loop, args=(self.slowloris, 0.0)) for _ in range(slowloris)
        ]
        threads += [
            threading.Thread(target=loop, args=(self.poll_flood, 0.0)) for _ in range(polls)
        ]
        threads += [
            threading.Thread(target=loop, args=(fn, pause_s))
            for fn in (self.oversize, self.malformed, self.replay, self.status_flood)
        ]
        for th in threads:
            th.daemon = True
            th.start()
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (stop_file is not None and stop_file.exists()):
            self.stop.wait(0.1)
        self.stop.set()
        self.channel.close()  # cancels the held streams
        for th in threads:
            th.join(timeout=5)


ATTACKS = (
    "slowloris",
    "poll_flood",
    "oversize_declared",
    "oversize_frame",
    "malformed_protobuf",
    "no_header",
    "bad_checksum",
    "wrong_version",
    "impersonation",
    "replay_stale",
    "status_flood",
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--pki", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--address", required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ready-file", help="created once the attacks start")
    ap.add_argument("--stop-file", help="stop early once this file exists")
    a = ap.parse_args()
    att = Attacker(pki=Path(a.pki), name=a.name, address=a.address)
    t0 = time.monotonic()
    if a.ready_file:
        Path(a.ready_file).touch()
    att.run(a.seconds, stop_file=Path(a.stop_file) if a.stop_file else None)
    out = {
        "name": a.name,
        "seconds": round(time.monotonic() - t0, 1),
        "codes": {k: dict(v) for k, v in sorted(att.codes.items())},
    }
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
