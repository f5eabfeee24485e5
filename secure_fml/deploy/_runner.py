"""The site's event loop: join, long-poll, hand messages to the :class:`Site`, reply.

Transport failures (the coordinator restarting, a network blip) lead to a
re-join with exponential backoff until ``reconnect_timeout_s`` passes. Whatever
the coordinator sends -- a malformed or oversize message, a round start the
site's policy refuses, a replay, a round past the site's own budget -- ends this
site's part in that round only: the reason is logged, the site tells the
coordinator it withdraws (so the round need not wait out its deadline) and keeps
serving.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from privacy import atomic_write_bytes
from privacy.errors import (
    PrivacyBudgetExhausted,
    ProtocolError,
    RefusalReason,
    Refused,
    SecureFMLError,
    TransportError,
)
from secure_fml.config import check_positive
from secure_fml.deploy._site import Site
from secure_fml.deploy._transport import Transport
from secure_fml.messages import EngineMessage, Finished, withdrawal_from

__all__ = ["run_site"]

log = logging.getLogger(__name__)


def _withdraw(
    transport: Transport, conn: bytes, msg: EngineMessage, err: Exception, *, site: str
) -> None:
    """Tell the coordinator this site leaves the round ``msg`` belongs to, and why."""
    notice = withdrawal_from(msg, err)
    if notice is None:
        return
    try:
        transport.withdraw(conn, notice)
    except ProtocolError as e:  # a replayed or stale round: nothing to withdraw from
        log.warning("site %s: withdrawal refused: %s", site, e)


def run_site(
    site: Site,
    transport: Transport,
    *,
    certificate: bytes,
    poll_wait_s: float = 5.0,
    reconnect_timeout_s: float = 120.0,
    max_backoff_s: float = 2.0,
    download_to: Path | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Take part in rounds until training finishes; returns the rounds this site finished.

    After a transport failure the site joins again after 0.1 s, doubling the wait up to
    ``max_backoff_s``, until ``reconnect_timeout_s`` has passed without a connection.
    """
    check_positive("poll_wait_s", poll_wait_s)
    check_positive("reconnect_timeout_s", reconnect_timeout_s)
    check_positive("max_backoff_s", max_backoff_s)
    stop = stop or threading.Event()
    conn: bytes | None = None
    backoff = 0.1
    lost_since: float | None = None
    while not stop.is_set():
        try:
            if conn is None:
                conn = transport.join(site.name, certificate)
                log.info("site %s joined", site.name)
                backoff, lost_since = 0.1, None
            try:
                msg = transport.poll(conn, wait_s=poll_wait_s)
            except ProtocolError as e:
                # The coordinator's message itself was unusable (malformed, oversize,
                # another version inside the stream): refuse it, keep serving.
                log.warning("site %s refused a coordinator message: %s", site.name, e)
                stop.wait(0.2)
                continue
            if isinstance(msg, Finished):
                site.handle(msg)
                if download_to is not None:
                    atomic_write_bytes(download_to, transport.download_checkpoint(conn))
                    log.info("site %s downloaded the final model to %s", site.name, download_to)
                break
            try:
                reply = site.handle(msg)
            except (ProtocolError, PrivacyBudgetExhausted) as e:
                log.warning("site %s leaves this round (%s): %s", site.name, type(e).__name__, e)
                _withdraw(transport, conn, msg, e, site=site.name)
                continue
            if reply is not None:
                try:
                    transport.submit(conn, reply)
                except ProtocolError as e:
                    log.warning("site %s: reply refused: %s", site.name, e)
        except Refused as e:
            # Not on the allowlist, another protocol version, a certificate refused in
            # the handshake: retrying cannot help, the operator must act.
            if e.reason in (
                RefusalReason.UNKNOWN_SITE,
                RefusalReason.VERSION,
                RefusalReason.CERTIFICATE,
            ):
                raise
            conn = None  # unauthenticated (coordinator restarted) or duplicate: join again
            lost_since = lost_since or time.monotonic()
            log.warning("site %s: %s; joining again", site.name, e)
        except TransportError as e:
            conn = None
            lost_since = lost_since or time.monotonic()
            log.warning("site %s: coordinator unreachable (%s)", site.name, e)
        except SecureFMLError:
            raise
        if lost_since is not None:
            if time.monotonic() - lost_since > reconnect_timeout_s:
                raise TransportError(
                    f"coordinator unreachable for {reconnect_timeout_s:g}s; giving up"
                )
            stop.wait(backoff)
            backoff = min(backoff * 2, max_backoff_s)
    return len(site.rounds_done)
