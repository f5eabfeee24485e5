"""Test fixture: a site process (exactly ``secure-fml client``) with a fault injected
through its transport, so no test hook ships in the production API.

    python -m tests.deploy._site_process --config alpha.toml [--crash-after share_keys:2]
        [--silent-from masked_input:2]

``--crash-after STAGE:ROUND`` SIGKILLs the process right after the coordinator accepted
its STAGE reply of ROUND (a real process death at a deterministic protocol point).
``--silent-from STAGE:ROUND`` makes the site stop answering in ROUND from STAGE on
(a dropout the protocol must recover), and go on normally in later rounds.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from aggregation import Stage
from secure_fml.deploy import Transport, build_site, load_site_config, run_site
from secure_fml.deploy._process import site_transport
from secure_fml.messages import (
    EngineMessage,
    RoundStart,
    StageReply,
    StageRequest,
    Wait,
    Withdrawal,
)

log = logging.getLogger("test-site")


def _point(raw: str | None) -> tuple[Stage, int] | None:
    if not raw:
        return None
    stage, _, rnd = raw.partition(":")
    return Stage[stage.strip().upper()], int(rnd)


class FaultyTransport(Transport):
    def __init__(
        self,
        inner: Transport,
        *,
        crash_after: tuple[Stage, int] | None,
        silent_from: tuple[Stage, int] | None,
    ) -> None:
        self.inner = inner
        self.crash_after = crash_after
        self.silent_from = silent_from

    def join(self, site: str, certificate: bytes) -> bytes:
        return self.inner.join(site, certificate)

    def poll(self, conn: bytes, *, wait_s: float) -> EngineMessage:
        msg = self.inner.poll(conn, wait_s=wait_s)
        if self.silent_from is not None and isinstance(msg, RoundStart | StageRequest):
            stage = msg.first_stage if isinstance(msg, RoundStart) else msg.stage
            drop_stage, drop_round = self.silent_from
            if msg.round == drop_round and stage.value >= drop_stage.value:
                log.warning("test fault: silent in round %d from %s", msg.round, stage.name)
                return Wait(50)
        return msg

    def submit(self, conn: bytes, reply: StageReply) -> None:
        self.inner.submit(conn, reply)
        if self.crash_after == (reply.stage, reply.round):
            log.warning("test crash point (%s, %d) reached", reply.stage.name, reply.round)
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def withdraw(self, conn: bytes, notice: Withdrawal) -> None:
        self.inner.withdraw(conn, notice)

    def download_checkpoint(self, conn: bytes) -> bytes:
        return self.inner.download_checkpoint(conn)

    def close(self) -> None:
        self.inner.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--crash-after")
    ap.add_argument("--silent-from")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings, config = load_site_config(args.config)
    site, cert = build_site(settings, config)
    transport = FaultyTransport(
        site_transport(settings),
        crash_after=_point(args.crash_after),
        silent_from=_point(args.silent_from),
    )
    try:
        run_site(
            site,
            transport,
            certificate=cert,
            poll_wait_s=settings.poll_wait_s,
            reconnect_timeout_s=settings.reconnect_timeout_s,
            max_backoff_s=settings.reconnect_backoff_max_s,
            download_to=settings.download,
        )
    finally:
        transport.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
