"""The deployed coordinator: the round engine plus joins, leases and certificates.

Sites :meth:`~Coordinator.join` with their certificate, :meth:`~Coordinator.poll`
for their next instruction and :meth:`~Coordinator.submit` their replies;
:meth:`~Coordinator.tick` closes stages whose deadline passed and starts a round
once enough sites are connected. Every round itself -- sampling, the round plan,
the aggregation stages, charging the ledger before the sum can be learned,
decoding, the server step, metrics and checkpoints -- is
:class:`~secure_fml.engine.RoundEngine`, exactly as in the simulation.
Transports (in-process or gRPC) only decode, validate sizes and delegate here.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography import x509

from aggregation import Stage
from privacy import atomic_write_bytes
from privacy.errors import (
    CheckpointError,
    ConfigError,
    NoProgress,
    ProtocolError,
    RefusalReason,
    Refused,
)
from secure_fml.config import Config, check_positive
from secure_fml.deploy._pki import verify_site_certificate
from secure_fml.engine import CHECKPOINT_FILE, METRICS_FILE, Identity, RoundEngine
from secure_fml.messages import EngineMessage, Finished, StageReply, Wait, Withdrawal
from secure_fml.simulation import build_model

__all__ = ["CHECKPOINT_FILE", "METRICS_FILE", "Coordinator", "Deadlines"]

log = logging.getLogger(__name__)

#: The last round this coordinator started (so a restart never runs it again).
STARTED_FILE = "round_started.json"

TRUSTED_COORDINATOR_WARNING = (
    "secure_aggregation.protocol = none: every site sends its update to the coordinator in "
    "the clear. This mode trusts the coordinator with individual updates (central DP at "
    "best); use secagg or secagg+ unless the coordinator is trusted."
)


@dataclass(frozen=True, kw_only=True)
class Deadlines:
    """Seconds each stage stays open; a site silent past its deadline is a dropout."""

    train_s: float = 300.0  # round start -> first reply (includes local training)
    stage_s: float = 60.0  # every later aggregation stage
    lease_s: float = 15.0  # a site that has not polled for this long is not connected
    #: With min_sites but not all sites connected, wait this long for the rest.
    start_grace_s: float = 10.0
    retry_ms: int = 200  # how long an idle site waits before polling again
    #: Fewer than min_sites connected (and not excluded) for this long: the coordinator
    #: stops with NoProgress instead of waiting forever.
    quorum_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        for name in ("train_s", "stage_s", "lease_s", "start_grace_s", "quorum_timeout_s"):
            check_positive(f"deploy.{name}", getattr(self, name))


class Coordinator:
    """Runs federated rounds over whatever transport feeds it (see module docstring)."""

    def __init__(
        self,
        config: Config,
        *,
        sites: Sequence[str],
        ca_certificate: x509.Certificate,
        model_spec: Mapping[str, Any],
        run_dir: Path | str,
        deadlines: Deadlines | None = None,
        min_sites: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        names = tuple(sorted(set(sites)))
        if len(names) != len(sites) or len(names) < 3:
            raise ConfigError("deploy.sites must list >= 3 distinct site names")
        if not isinstance(min_sites, int) or not 3 <= min_sites <= len(names):
            raise ConfigError("deploy.min_sites must be an integer in [3, number of sites]")
        if config.secure_aggregation.protocol == "none":
            log.warning(TRUSTED_COORDINATOR_WARNING)
        self.config = config
        self.sites = names
        self.ca = ca_certificate
        self.model_spec = dict(model_spec)
        self.run_dir = Path(run_dir)
        self.deadlines = deadlines or Deadlines()
        self.min_sites = min_sites
        self.clock = clock
        torch.manual_seed(config.run.seed)
        self.engine = RoundEngine(
            config,
            population=names,
            module=build_model(self.model_spec),
            model_spec=self.model_spec,
            identities=self._identity_of,
            run_dir=self.run_dir,
            clock=clock,
            train_s=self.deadlines.train_s,
            stage_s=self.deadlines.stage_s,
            checkpoint_every=1,
            checkpoint_extra={"deploy": {"sites": list(names)}},
            run_kind="deployment",
        )
        self._conn_site: dict[bytes, str] = {}
        self._site_conn: dict[str, bytes] = {}
        self._identity: dict[str, Identity] = {}
        self._last_seen: dict[str, float] = {}
        self._quorum_since: float | None = None
        self._short_since: float | None = None
        self.refusals: collections.Counter[str] = collections.Counter()
        #: When each site was first told that training is over, and the sites that then
        #: downloaded the final checkpoint (so the process knows when it may exit).
        self._told_finished: dict[str, float] = {}
        self._downloaded: set[str] = set()
        self._finished_at: float | None = None

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Create or resume the run in ``run_dir`` (checkpoint + privacy ledger).

        A round that was started when the previous process died is never run again
        (its sites may have released their inputs to it, and refuse a second start of
        that round index): it is recorded as lost and training goes on with the next.
        """
        self.engine.open(resume=True)
        marker = self.run_dir / STARTED_FILE
        if marker.exists():
            try:
                raw = json.loads(marker.read_text(encoding="utf-8"))
                started, participants = int(raw["round"]), [str(x) for x in raw["participants"]]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise CheckpointError(f"{marker}: unreadable ({e})") from None
            self.engine.abandon_round(
                started,
                participants,
                reason="the coordinator restarted during this round",
            )

    def close(self) -> None:
        self.engine.close()

    @property
    def finished(self) -> bool:
        return self.engine.finished

    @property
    def stopped(self) -> str | None:
        return self.engine.stopped

    @property
    def round(self) -> int:
        return self.engine.round

    @property
    def state(self) -> torch.Tensor:
        return self.engine.state

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.engine.history

    @property
    def last_aggregate(self) -> np.ndarray | None:
        return self.engine.last_aggregate

    # ------------------------------------------------------------------ sites

    def _identity_of(self, site: str) -> Identity:
        return self._identity[site]

    def join(self, site: str, certificate: bytes) -> bytes:
        """Register a connection for ``site`` (already authenticated by the transport)."""
        now = self.clock()
        if site not in self.sites:
            self._refuse(site, "unknown_site")
            raise Refused(RefusalReason.UNKNOWN_SITE, f"site {site!r} is not on the allowlist")
        identity = verify_site_certificate(certificate, ca_cert=self.ca, expected_name=site)
        old = self._site_conn.get(site)
        if old is not None and now - self._last_seen.get(site, -math.inf) < self.deadlines.lease_s:
            self._refuse(site, "duplicate_connection")
            raise Refused(
                RefusalReason.DUPLICATE_CONNECTION,
                f"site {site!r} is already connected; a second connection is refused",
            )
        if old is not None:
            self._conn_site.pop(old, None)
        conn = secrets.token_bytes(16)
        self._conn_site[conn] = site
        self._site_conn[site] = conn
        self._identity[site] = Identity.of(bytes(certificate), identity.public_key)
        self._last_seen[site] = now
        log.info("site joined", extra={"site": site})
        if site in self.engine.excluded:
            why = self.engine.excluded[site]
            log.warning(
                "site %s is excluded (proven %s in round %s): it takes part in no round",
                site,
                why.get("kind"),
                why.get("round"),
                extra={"site": site},
            )
        return conn

    def _site_of(self, conn: bytes) -> str:
        site = self._conn_site.get(bytes(conn))
        if site is None:
            raise Refused(
                RefusalReason.UNAUTHENTICATED, "unknown or replaced connection; join again"
            )
        self._last_seen[site] = self.clock()
        return site

    def connection_site(self, conn: bytes) -> str:
        return self._site_of(conn)

    def _refuse(self, site: str, why: str) -> None:
        self.refusals[why] += 1
        log.warning("refused %s from %s", why, site)

    def poll(self, conn: bytes) -> EngineMessage:
        """The next instruction for this connection's site."""
        site = self._site_of(conn)
        self.tick()
        msg = self.engine.next_message(site)
        if msg is not None:
            return msg
        if self.finished:
            self._told_finished.setdefault(site, self.clock())
            return Finished(self.round)
        return Wait(self.deadlines.retry_ms)

    def pending(self, conn: bytes) -> bool:
        site = self._conn_site.get(bytes(conn))
        return bool(site is not None and (self.engine.pending(site) or self.finished))

    def downloaded(self, conn: bytes) -> None:
        """Note that this connection's site received the whole final checkpoint."""
        self._downloaded.add(self._site_of(conn))

    def sites_released(self, *, download_grace_s: float) -> bool:
        """Training is over and no site still needs this process.

        Every site on the roster (not excluded) was told that training is over and has
        downloaded the final checkpoint or had ``download_grace_s`` to start doing so,
        or is gone: it has not polled for ``lease_s``. A site this process has not seen
        yet (it restarted) counts as last seen when training ended, so it has a lease's
        time to join again and be told.
        """
        if not self.finished:
            return False
        now = self.clock()
        if self._finished_at is None:
            self._finished_at = now
        for site in set(self.sites) - set(self.engine.excluded):
            told = self._told_finished.get(site)
            if told is None:
                last = self._last_seen.get(site, self._finished_at)
                if now - last < self.deadlines.lease_s:
                    return False
            elif site not in self._downloaded and now - told < download_grace_s:
                return False
        return True

    def submit(self, conn: bytes, reply: StageReply) -> None:
        """Ingest one reply; raises a typed error (and changes nothing else) if refused."""
        site = self._site_of(conn)
        try:
            self.engine.submit(site, reply)
        except ProtocolError as e:
            self._refuse(site, type(e).__name__)
            raise

    def withdraw(self, conn: bytes, notice: Withdrawal) -> None:
        """This connection's site leaves the open round (see ``RoundEngine.withdraw``)."""
        site = self._site_of(conn)
        try:
            self.engine.withdraw(site, notice)
        except ProtocolError as e:
            self._refuse(site, type(e).__name__)
            raise

    def reply_limits(self, stage: Stage) -> tuple[int, tuple[str, int] | None]:
        return self.engine.reply_limits(stage)

    # ------------------------------------------------------------------ rounds

    def connected(self) -> list[str]:
        now = self.clock()
        return [
            s
            for s in self.sites
            if s in self._site_conn and now - self._last_seen[s] < self.deadlines.lease_s
        ]

    def tick(self) -> None:
        """Close an expired stage, or start the next round when enough sites are connected."""
        eng = self.engine
        if eng.round_open:
            eng.tick()
            return
        if self.finished:
            return
        now = self.clock()
        live = [s for s in self.connected() if s not in eng.excluded]
        if len(live) < self.min_sites:
            self._quorum_since = None
            self._no_quorum(now, live)
            return
        self._short_since = None
        if eng.ready_at is not None and now < eng.ready_at:
            return  # backing off after an aborted round
        if self._quorum_since is None:
            self._quorum_since = now
        usable = len(self.sites) - len(eng.excluded.keys() & set(self.sites))
        if len(live) >= usable or now - self._quorum_since >= self.deadlines.start_grace_s:
            self._quorum_since = None
            if eng.start_round(live):
                plan = eng.last_plan
                assert plan is not None
                # Durable before any site can receive the round start (the caller holds
                # the service lock until this returns).
                atomic_write_bytes(
                    self.run_dir / STARTED_FILE,
                    json.dumps(
                        {"round": plan.round, "participants": list(plan.participants)}
                    ).encode(),
                )

    def _no_quorum(self, now: float, live: Sequence[str]) -> None:
        """Waiting for sites: give up with NoProgress after ``quorum_timeout_s``."""
        if self._short_since is None:
            self._short_since = now
            return
        waited = now - self._short_since
        if waited < self.deadlines.quorum_timeout_s:
            return
        excluded = sorted(self.engine.excluded)
        self.engine.give_up(
            NoProgress(
                f"no progress: {len(live)} usable site(s) connected "
                f"({', '.join(live) or 'none'}), {self.min_sites} needed, for {waited:.0f}s "
                f"(deploy.quorum_timeout_s = {self.deadlines.quorum_timeout_s:g})"
                + (f"; excluded for misbehaviour: {', '.join(excluded)}" if excluded else "")
            )
        )

    def status(self) -> dict[str, Any]:
        return {
            **self.engine.status(),
            "connected": self.connected(),
            "refusals": dict(self.refusals),
        }
