"""Tell "certificate rejected" apart from "coordinator unavailable".

gRPC reports every failed connection as ``UNAVAILABLE``: a coordinator that is
down, one that refused this site's certificate in the TLS handshake (under TLS 1.3
the client's side of the handshake has already finished, so gRPC sees only
"Socket closed"), and a coordinator whose certificate this site does not trust. A
site operator needs to know which: a restart fixes the first, only a new
certificate (or the right ``ca.pem``) fixes the others.

:class:`HandshakeProbe` is asked after an ``UNAVAILABLE`` call. It repeats the TLS
handshake with the same files using Python's :mod:`ssl` (which reports the peer's
alert), and returns :class:`Refused` (:attr:`RefusalReason.CERTIFICATE`) when
either side rejected a certificate, or None when the handshake succeeds or the
coordinator cannot be reached at all (the original error then stands).
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from privacy.errors import RefusalReason, Refused

__all__ = ["HandshakeProbe"]

#: Markers of a TLS alert the peer sent (BoringSSL/OpenSSL reason strings).
_ALERT = ("ALERT", "CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA")


def _host_port(address: str) -> tuple[str, int]:
    target = address.split("///", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not a host:port address: {address!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, kw_only=True)
class HandshakeProbe:
    """One TLS handshake to ``address`` as this site (``cert``/``key``, trusting ``ca``)."""

    address: str
    ca: Path
    cert: Path
    key: Path
    timeout_s: float = 5.0

    def __call__(self) -> Refused | None:
        try:
            host, port = _host_port(self.address)
        except ValueError:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(self.ca))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        ctx.set_alpn_protocols(["h2"])
        try:
            sock = socket.create_connection((host, port), timeout=self.timeout_s)
        except OSError:
            return None  # down or unreachable: not a certificate question
        try:
            tls = ctx.wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as e:
            sock.close()
            return Refused(
                RefusalReason.CERTIFICATE,
                f"this site rejected the coordinator's certificate at {self.address} "
                f"({e.verify_message}): it is not issued for that address by the CA in "
                f"{self.ca}",
            )
        except ssl.SSLError as e:  # TLS 1.2: the coordinator's alert ends the handshake
            sock.close()
            return self._rejected(str(e.reason or e)) if _is_alert(e) else None
        except OSError:
            sock.close()
            return None
        with tls:
            # TLS 1.3: the coordinator checks our certificate after our side of the
            # handshake is done. Accepted, it speaks first (its HTTP/2 settings);
            # rejected, it sends an alert or just closes the connection.
            try:
                first = tls.recv(1)
            except ssl.SSLEOFError:
                first = b""
            except ssl.SSLError as e:
                return self._rejected(str(e.reason or e)) if _is_alert(e) else None
            except (ConnectionResetError, BrokenPipeError):
                return self._rejected("connection closed after the handshake")
            except OSError:  # a timeout: a slow coordinator, not a verdict
                return None
        return None if first else self._rejected("connection closed after the handshake")

    def _rejected(self, detail: str) -> Refused:
        return Refused(
            RefusalReason.CERTIFICATE,
            f"certificate rejected by the coordinator at {self.address} ({detail}): "
            f"{self.cert} is not accepted by the coordinator; ask the consortium for a "
            "certificate (startup kit) from its CA",
        )


def _is_alert(e: ssl.SSLError) -> bool:
    return any(m in str(e.reason or e).upper() for m in _ALERT)
