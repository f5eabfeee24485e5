"""The privacy ledger: an append-only, hash-chained, fsync'd JSON-lines file.

Two-phase use, every round::

    ledger.record(event)   # 1. budget check, append, flush, fsync -> returns
    apply(aggregate)       # 2. only now apply / release the aggregate

``record`` returns only after the line is on disk, so a crash after it and
before the apply leaves the round *charged but not applied*: on restart
``ledger.last_round`` says round r was already charged, and the server resumes
at ``ledger.next_round`` (the charge is kept: the noised aggregate may have left
the process). A crash *during* ``record`` can only leave a torn last line,
which the next ``open`` reports as :class:`LedgerCorrupted`; because the
caller never got control back, nothing was released for it, and an operator
can remove the torn tail explicitly with :meth:`PrivacyLedger.discard_torn_tail`.

Every round is recorded: a release (:class:`GaussianRelease`,
:class:`DistributedDiscreteGaussianRelease`) or a :class:`SkippedRound`, in
strictly increasing round order; :class:`ClipStatistics` may follow a release, and
:class:`RoundNotApplied` (once per round, possibly later) marks a charged round whose
aggregate never changed the model.

Each line is canonical JSON (sorted keys, no spaces, no NaN) with ``schema``,
``seq``, ``round``, ``timestamp``, ``type``, ``event``, ``prev_hash`` and
``hash = SHA-256(prev_hash + "\\n" + canonical line without hash)``. Opening
re-verifies every line, re-validates every event and rebuilds the accountant;
any mismatch (edited value, deleted/reordered/duplicated line, non-JSON or
truncated line, rounds out of order) raises :class:`LedgerCorrupted`. It is
never treated as an empty ledger.

Schema versions: lines written now carry ``schema = 2``; schema-1 lines (written
before the per-adversary fields existed) stay readable and their events get
the defaults that mean what schema 1 meant (see :mod:`privacy._events`).

What the chain does *not* do: anyone who can write the file can also
recompute the chain. Keep :attr:`PrivacyLedger.head` in the server checkpoint
and pass it back as ``expected_head`` to detect a ledger that was truncated
at a line boundary or rolled back.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import hmac
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privacy._accounting import Accountant, create_accountant, require_upper_bound
from privacy._adversary import (
    Adversary,
    AdversaryEpsilon,
    EpsilonByAdversary,
    EpsilonCache,
    adversary_epsilon,
    budget_epsilon,
    epsilon_by_adversary,
)
from privacy._durable import fsync_dir
from privacy._events import (
    EVENT_SCHEMA_VERSION,
    ROUND_ANNOTATIONS,
    ClipStatistics,
    PrivacyEvent,
    RecordLevelRelease,
    RoundNotApplied,
    SkippedRound,
    event_from_dict,
    event_to_dict,
)
from privacy._validation import require_int, require_positive, require_probability
from privacy.errors import (
    ConfigError,
    LedgerCorrupted,
    PrivacyBudgetExhausted,
    PrivacyError,
)

__all__ = [
    "LEDGER_SCHEMA_VERSION",
    "LedgerEntry",
    "LedgerHead",
    "PrivacyBudget",
    "PrivacyLedger",
    "check_record_level_budget",
    "read_ledger",
]

LEDGER_SCHEMA_VERSION = EVENT_SCHEMA_VERSION
_READABLE_SCHEMAS = frozenset({1, LEDGER_SCHEMA_VERSION})
GENESIS_HASH = "0" * 64
_KEYS = frozenset({"schema", "seq", "round", "timestamp", "type", "event", "prev_hash", "hash"})


def _canonical(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _entry_hash(prev_hash: str, body: dict[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + b"\n" + _canonical(body)).hexdigest()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} in ledger")


@dataclass(frozen=True)
class LedgerHead:
    """Number of entries and hash of the last one; store it in checkpoints."""

    entries: int
    hash: str


@dataclass(frozen=True)
class LedgerEntry:
    """One verified ledger line."""

    seq: int
    round: int
    timestamp: str
    event: PrivacyEvent
    prev_hash: str
    hash: str


@dataclass(frozen=True, kw_only=True)
class PrivacyBudget:
    """Refuse any release that would push the ε against ``adversary`` above
    ``max_epsilon`` at ``delta`` under the named ``accountant``.

    The default adversary is the coordinator: the worst client's ε over the
    rounds it contributed to, without amplification (central noise gives no
    guarantee against the coordinator, so such a budget refuses any central
    release). Only upper-bound accountants may gate a budget; ``gdp`` (an
    approximation) is refused with a :class:`ConfigError`. ``colluding_sites``:
    gate against this many colluding sites instead of what the noise was sized for.
    """

    max_epsilon: float
    delta: float
    accountant: str = "rdp"
    adversary: Adversary = Adversary.COORDINATOR
    colluding_sites: int | None = None

    def __post_init__(self) -> None:
        require_positive("max_epsilon", self.max_epsilon)
        d = require_probability("delta", self.delta)
        if d >= 1.0:
            raise ConfigError(f"delta must be < 1, got {d}")
        create_accountant(self.accountant)  # unknown names: ConfigError
        require_upper_bound(self.accountant, purpose="budget enforcement")
        if not isinstance(self.adversary, Adversary):
            raise TypeError("adversary must be an Adversary")
        if self.colluding_sites is not None:
            require_int("colluding_sites", self.colluding_sites, minimum=0)


def check_record_level_budget(
    spent: Accountant, event: RecordLevelRelease, budget: PrivacyBudget
) -> None:
    """Raise :class:`PrivacyBudgetExhausted` if ``event`` would push the site's
    record-level ε (``spent``: its accountant so far) above ``budget``.

    A site calls this (or :meth:`PrivacyLedger.check`, which calls it) before
    its update leaves it: a site at its budget stops contributing.
    """
    if not isinstance(event, RecordLevelRelease):
        raise TypeError("event must be a RecordLevelRelease")
    if not isinstance(budget, PrivacyBudget):
        raise TypeError("budget must be a PrivacyBudget")
    if spent.name != budget.accountant:
        raise ConfigError(
            f"accountant {spent.name!r} does not match the budget's {budget.accountant!r}"
        )
    acc = spent.copy()
    current = acc.get_epsilon(budget.delta)
    event.apply_to(acc)
    after = acc.get_epsilon(budget.delta)
    if not math.isfinite(after) or after > budget.max_epsilon:
        raise PrivacyBudgetExhausted(
            f"site {event.site_id!r} round {event.round} refused: record-level "
            f"epsilon={current:.4f} spent, this release ({event.total_steps} steps) would bring "
            f"it to epsilon={after:.4f} > max_epsilon={budget.max_epsilon:g} "
            f"(delta={budget.delta:g}, accountant={budget.accountant}, unit={event.unit})"
        )


def _parse(data: bytes, path: Path) -> list[LedgerEntry]:
    """Verify a whole ledger file; raise LedgerCorrupted with the line number."""
    if data and not data.endswith(b"\n"):
        raise LedgerCorrupted(
            f"{path}: last line is truncated (no trailing newline); a write was torn. "
            "Refusing to guess; see PrivacyLedger.discard_torn_tail"
        )
    entries: list[LedgerEntry] = []
    prev = GENESIS_HASH
    last_release_round: int | None = None
    stats_rounds: set[int] = set()
    not_applied: set[int] = set()
    released_rounds: set[int] = set()
    skipped_rounds: set[int] = set()
    for i, raw in enumerate(data.split(b"\n")[:-1] if data else []):
        where = f"{path}: line {i + 1}"
        try:
            obj = json.loads(raw.decode("ascii"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            raise LedgerCorrupted(f"{where}: not valid JSON ({exc})") from exc
        if not isinstance(obj, dict) or set(obj) != _KEYS:
            raise LedgerCorrupted(f"{where}: wrong set of keys")
        if obj["schema"] not in _READABLE_SCHEMAS or isinstance(obj["schema"], bool):
            raise LedgerCorrupted(f"{where}: unsupported schema version {obj['schema']!r}")
        if obj["seq"] != i:
            raise LedgerCorrupted(f"{where}: sequence number {obj['seq']!r}, expected {i}")
        if not isinstance(obj["prev_hash"], str) or not hmac.compare_digest(obj["prev_hash"], prev):
            raise LedgerCorrupted(f"{where}: hash chain broken (line deleted or reordered?)")
        body = {k: v for k, v in obj.items() if k != "hash"}
        try:
            expected = _entry_hash(prev, body)
            canonical_line = _canonical(obj)
        except (TypeError, ValueError) as exc:
            raise LedgerCorrupted(f"{where}: cannot canonicalise ({exc})") from exc
        if not isinstance(obj["hash"], str) or not hmac.compare_digest(obj["hash"], expected):
            raise LedgerCorrupted(f"{where}: entry hash mismatch (line edited?)")
        if canonical_line != raw:
            raise LedgerCorrupted(f"{where}: not in canonical form (line edited?)")
        if not isinstance(obj["event"], dict) or not isinstance(obj["type"], str):
            raise LedgerCorrupted(f"{where}: malformed event")
        try:
            event = event_from_dict(obj["type"], obj["event"], schema=obj["schema"])
        except (PrivacyError, ValueError, TypeError) as exc:
            raise LedgerCorrupted(f"{where}: invalid {obj['type']} event ({exc})") from exc
        if obj["round"] != event.round or not isinstance(obj["timestamp"], str):
            raise LedgerCorrupted(f"{where}: round/timestamp fields inconsistent")
        if isinstance(event, RecordLevelRelease):
            # A site's record-level releases are charged line by line; a resumed
            # coordinator may legitimately ask for a round again (see the event).
            pass
        elif isinstance(event, ClipStatistics):
            if (
                event.round != last_release_round
                or event.round in stats_rounds
                or event.round in skipped_rounds
            ):
                raise LedgerCorrupted(
                    f"{where}: clip statistics for round {event.round} out of place"
                )
            stats_rounds.add(event.round)
        elif isinstance(event, RoundNotApplied):
            if event.round not in released_rounds or event.round in not_applied:
                raise LedgerCorrupted(f"{where}: round {event.round} not-applied out of place")
            not_applied.add(event.round)
        else:
            if last_release_round is not None and event.round <= last_release_round:
                raise LedgerCorrupted(
                    f"{where}: release for round {event.round} after round "
                    f"{last_release_round} (duplicate or reordered round)"
                )
            last_release_round = event.round
            if isinstance(event, SkippedRound):
                skipped_rounds.add(event.round)
            else:
                released_rounds.add(event.round)
        entries.append(
            LedgerEntry(i, event.round, obj["timestamp"], event, obj["prev_hash"], obj["hash"])
        )
        prev = obj["hash"]
    return entries


def read_ledger(path: str | os.PathLike[str]) -> tuple[LedgerEntry, ...]:
    """Read and fully verify a ledger without opening it for writing."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError as exc:
        raise LedgerCorrupted(f"{p}: ledger file is missing") from exc
    return tuple(_parse(data, p))


class PrivacyLedger:
    """Append-only privacy ledger with an optional :class:`PrivacyBudget`.

    Open with :meth:`open`. Holds an exclusive ``flock`` on the file while open
    so two servers cannot append to one ledger.
    """

    def __init__(
        self,
        *,
        _path: Path,
        _fd: int,
        _entries: list[LedgerEntry],
        _budget: PrivacyBudget | None,
        _size: int,
        _record_budget: PrivacyBudget | None = None,
    ) -> None:
        self._path = _path
        self._fd = _fd
        self._entries = _entries
        self._budget = _budget
        self._record_budget = _record_budget
        self._size = _size
        self._poisoned: str | None = None
        self._accountants: dict[str, Accountant] = {}
        self._record_accountants: dict[tuple[str, str], Accountant] = {}
        self._eps_cache = EpsilonCache()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        budget: PrivacyBudget | None = None,
        create: bool = True,
        expected_head: LedgerHead | None = None,
        record_budget: PrivacyBudget | None = None,
    ) -> PrivacyLedger:
        """Open (creating if allowed) and fully verify the ledger at ``path``.

        ``budget`` bounds the client-level ε; ``record_budget`` bounds every
        site's record-level ε separately (:class:`RecordLevelRelease` events).
        """
        if budget is not None and not isinstance(budget, PrivacyBudget):
            raise TypeError("budget must be a PrivacyBudget")
        if record_budget is not None and not isinstance(record_budget, PrivacyBudget):
            raise TypeError("record_budget must be a PrivacyBudget")
        p = Path(path)
        created = False
        try:
            fd = os.open(p, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            if not create:
                raise LedgerCorrupted(f"{p}: ledger file is missing") from None
            if expected_head is not None and expected_head.entries > 0:
                raise LedgerCorrupted(
                    f"{p}: ledger is missing but the checkpoint expects "
                    f"{expected_head.entries} entries; refusing to start from zero"
                ) from None
            fd = os.open(p, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
            created = True
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise PrivacyError(f"{p}: ledger is open in another process") from exc
            if created:
                os.fsync(fd)
                fsync_dir(p.parent.resolve())
            with open(p, "rb") as fh:
                data = fh.read()
            entries = _parse(data, p)
            ledger = cls(
                _path=p,
                _fd=fd,
                _entries=entries,
                _budget=budget,
                _size=len(data),
                _record_budget=record_budget,
            )
            if expected_head is not None:
                ledger._check_head(expected_head)
            # Rebuild (and thereby validate) the accountants now.
            ledger.accountant("rdp")
            if budget is not None:
                ledger._budget_epsilon(ledger.events)
            for site in ledger.record_sites:
                ledger.record_accountant(site, "rdp")
        except BaseException:
            os.close(fd)
            raise
        return ledger

    def _check_head(self, expected: LedgerHead) -> None:
        n = expected.entries
        if n > len(self._entries):
            raise LedgerCorrupted(
                f"{self._path}: ledger has {len(self._entries)} entries but the "
                f"checkpoint expects at least {n} (truncated or rolled back)"
            )
        if n > 0 and not hmac.compare_digest(self._entries[n - 1].hash, expected.hash):
            raise LedgerCorrupted(f"{self._path}: entry {n - 1} does not match the checkpoint")

    # -- read side ---------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        return tuple(self._entries)

    @property
    def events(self) -> tuple[PrivacyEvent, ...]:
        return tuple(e.event for e in self._entries)

    @property
    def head(self) -> LedgerHead:
        last = self._entries[-1].hash if self._entries else GENESIS_HASH
        return LedgerHead(len(self._entries), last)

    @property
    def last_round(self) -> int | None:
        """Round of the last recorded round event: a charged client-level release or a
        :class:`SkippedRound` (None if no round was recorded).

        Record-level releases (:class:`RecordLevelRelease`) are a site's own and
        do not mark a round as charged.
        """
        for e in reversed(self._entries):
            if not isinstance(e.event, (*ROUND_ANNOTATIONS, RecordLevelRelease)):
                return e.round
        return None

    @property
    def next_round(self) -> int:
        """The smallest round number :meth:`record` accepts for a release or a skip."""
        last = self.last_round
        return 0 if last is None else last + 1

    def accountant(self, name: str = "rdp") -> Accountant:
        """A copy of the client-level accountant of ``name`` rebuilt from the ledger.

        Record-level releases are not in it (another unit): see
        :meth:`record_accountant`.
        """
        if name not in self._accountants:
            acc = create_accountant(name)
            try:
                for e in self._entries:
                    if not isinstance(e.event, RecordLevelRelease):
                        e.event.apply_to(acc)
            except (PrivacyError, ConfigError) as exc:
                if name != "rdp":
                    # The ledger is fine; this accountant cannot handle it.
                    raise PrivacyError(f"accountant {name!r}: {exc}") from exc
                # record() refuses anything the RDP accountant cannot compose,
                # so a ledger it cannot account was not written by us.
                raise LedgerCorrupted(f"{self._path}: cannot account ledger: {exc}") from exc
            self._accountants[name] = acc
        return self._accountants[name].copy()

    def epsilon(self, *, delta: float, accountant: str = "rdp") -> float:
        """Client-level ε spent so far at ``delta``."""
        return self.accountant(accountant).get_epsilon(delta)

    @property
    def record_sites(self) -> tuple[str, ...]:
        """Sites with record-level releases in this ledger, in order of first release."""
        seen: dict[str, None] = {}
        for e in self._entries:
            if isinstance(e.event, RecordLevelRelease):
                seen.setdefault(e.event.site_id, None)
        return tuple(seen)

    def record_accountant(self, site_id: str, name: str = "rdp") -> Accountant:
        """A copy of ``site_id``'s record-level accountant (its releases only)."""
        key = (site_id, name)
        if key not in self._record_accountants:
            acc = create_accountant(name)
            try:
                for e in self._entries:
                    ev = e.event
                    if isinstance(ev, RecordLevelRelease) and ev.site_id == site_id:
                        ev.apply_to(acc)
            except (PrivacyError, ConfigError) as exc:
                if name != "rdp":
                    raise PrivacyError(f"accountant {name!r}: {exc}") from exc
                raise LedgerCorrupted(f"{self._path}: cannot account ledger: {exc}") from exc
            self._record_accountants[key] = acc
        return self._record_accountants[key].copy()

    def record_epsilons(self, *, delta: float, accountant: str = "rdp") -> dict[str, float]:
        """Record-level ε of every site at ``delta``; the headline is the maximum."""
        return {
            s: self.record_accountant(s, accountant).get_epsilon(delta) for s in self.record_sites
        }
        """The ledger-wide, sampling-amplified ε at ``delta`` (each release charged
        with its recorded sampling; skips free).

        Kept for compatibility: it holds only against an outside observer from
        whom the sample and its size are secret, and ignores the visible skips.
        What a report or budget states is :meth:`epsilon_by_adversary`.
        """
        return self.accountant(accountant).get_epsilon(delta)

    def epsilon_by_adversary(
        self, *, delta: float, accountant: str = "rdp", colluding_sites: int | None = None
    ) -> EpsilonByAdversary:
        """ε against the coordinator and against an outside observer (see
        :func:`privacy.epsilon_by_adversary`)."""
        return epsilon_by_adversary(
            self.events,
            delta=delta,
            accountant=accountant,
            colluding_sites=colluding_sites,
            cache=self._eps_cache,
        )

    def adversary_epsilon(
        self,
        *,
        adversary: Adversary,
        delta: float,
        accountant: str = "rdp",
        colluding_sites: int | None = None,
    ) -> AdversaryEpsilon:
        """ε against one adversary (see :func:`privacy.adversary_epsilon`)."""
        return adversary_epsilon(
            self.events,
            adversary=adversary,
            delta=delta,
            accountant=accountant,
            colluding_sites=colluding_sites,
            cache=self._eps_cache,
        )

    def _budget_epsilon(self, events: tuple[PrivacyEvent, ...]) -> AdversaryEpsilon:
        b = self._budget
        if b is None:  # pragma: no cover - callers check
            raise PrivacyError("no budget")
        try:
            return budget_epsilon(
                events,
                adversary=b.adversary,
                delta=b.delta,
                accountant=b.accountant,
                colluding_sites=b.colluding_sites,
                cache=self._eps_cache,
            )
        except PrivacyError as exc:
            raise PrivacyError(f"budget accountant {b.accountant!r}: {exc}") from exc

    # -- write side --------------------------------------------------------

    def check(self, event: PrivacyEvent) -> None:
        """Raise if ``event`` cannot be recorded next (round order, budget)."""
        if self._poisoned is not None:
            raise PrivacyError(f"ledger unusable after a failed write: {self._poisoned}")
        if isinstance(event, RecordLevelRelease):
            # Validated against the site's own (record-level) accountant.
            event.apply_to(self.record_accountant(event.site_id, "rdp"))
            if self._record_budget is not None:
                rb = self._record_budget
                check_record_level_budget(
                    self.record_accountant(event.site_id, rb.accountant), event, rb
                )
            return
        if isinstance(event, ClipStatistics):
            if event.round != self.last_round or any(
                isinstance(e.event, ClipStatistics | SkippedRound) and e.round == event.round
                for e in self._entries
            ):
                raise PrivacyError(
                    f"clip statistics must follow the release of round {event.round}, once"
                )
            return
        if isinstance(event, RoundNotApplied):
            charged = any(
                e.round == event.round
                and not isinstance(e.event, (*ROUND_ANNOTATIONS, SkippedRound, RecordLevelRelease))
                for e in self._entries
            )
            again = any(
                isinstance(e.event, RoundNotApplied) and e.round == event.round
                for e in self._entries
            )
            if not charged or again:
                raise PrivacyError(
                    f"a not-applied record needs a charged round {event.round}, once"
                )
            return
        if event.round < self.next_round:
            raise PrivacyError(
                f"round {event.round} is not after the last recorded round "
                f"{self.last_round}: it was already charged or skipped; continue at "
                f"{self.next_round}"
            )
        if isinstance(event, SkippedRound):
            # A skip releases no aggregate, so there is nothing to refuse: it is
            # recorded whatever the budget (its cost, where it has one, counts
            # against the next release).
            return
        if event.same_sample_as is not None and not any(
            e.round == event.same_sample_as and not isinstance(e.event, ROUND_ANNOTATIONS)
            for e in self._entries
        ):
            raise PrivacyError(
                f"round {event.round} replays the sample of round {event.same_sample_as}, "
                "which is not in the ledger"
            )
        # Refuse anything the reference (RDP) accountant cannot compose, e.g.
        # mixing fixed-size (replace-one) and Poisson (add/remove) releases.
        event.apply_to(self.accountant("rdp"))
        if self._budget is not None:
            b = self._budget
            current = self._budget_epsilon(self.events)
            after = self._budget_epsilon((*self.events, event))
            if not math.isfinite(after.epsilon) or after.epsilon > b.max_epsilon:
                who = f" (worst client {after.worst_client})" if after.worst_client else ""
                raise PrivacyBudgetExhausted(
                    f"round {event.round} refused: spent epsilon={current.epsilon:.4f}, this "
                    f"release would bring it to epsilon={after.epsilon:.4f}{who} > "
                    f"max_epsilon={b.max_epsilon:g} against the {b.adversary.value} "
                    f"(delta={b.delta:g}, accountant={b.accountant})"
                )

    def record(self, event: PrivacyEvent, *, timestamp: str | None = None) -> LedgerEntry:
        """Check, append, flush and fsync ``event``; return once it is durable.

        Apply or release the aggregate only after this returns. Raises
        :class:`PrivacyBudgetExhausted` (nothing written) when over budget. A
        :class:`SkippedRound` is recorded the same way (and never refused).
        """
        self.check(event)
        ts = timestamp if timestamp is not None else _dt.datetime.now(_dt.UTC).isoformat()
        if not isinstance(ts, str):
            raise TypeError("timestamp must be an ISO-8601 str")
        prev = self.head.hash
        body = {
            "schema": LEDGER_SCHEMA_VERSION,
            "seq": len(self._entries),
            "round": event.round,
            "timestamp": ts,
            "type": event.kind,
            "event": event_to_dict(event),
            "prev_hash": prev,
        }
        h = _entry_hash(prev, body)
        line = _canonical({**body, "hash": h}) + b"\n"
        if os.fstat(self._fd).st_size != self._size:
            self._poisoned = "file changed behind the ledger's back"
            raise LedgerCorrupted(f"{self._path}: file was modified by someone else")
        try:
            written = 0
            while written < len(line):
                written += os.write(self._fd, line[written:])
            os.fsync(self._fd)
        except OSError as exc:
            self._poisoned = repr(exc)
            raise
        self._size += len(line)
        entry = LedgerEntry(len(self._entries), event.round, ts, event, prev, h)
        self._entries.append(entry)
        if isinstance(event, RecordLevelRelease):
            for (site, _name), acc in self._record_accountants.items():
                if site == event.site_id:
                    event.apply_to(acc)
        else:
            for acc in self._accountants.values():
                event.apply_to(acc)
        return entry

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> PrivacyLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[LedgerEntry]:
        return iter(tuple(self._entries))

    @staticmethod
    def discard_torn_tail(path: str | os.PathLike[str]) -> bytes:
        """Explicit operator action: cut a torn (newline-less) last line.

        Only a line without its newline is removed (a complete line is never
        touched); the removed bytes are returned and also saved beside the
        ledger as ``<name>.torn``. Safe because :meth:`record` had not returned
        for that line, so its aggregate was never applied or released.
        """
        p = Path(path)
        data = p.read_bytes()
        if not data or data.endswith(b"\n"):
            raise PrivacyError(f"{p}: no torn tail to discard")
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        torn = p.with_name(p.name + ".torn")
        torn.write_bytes(tail)
        with open(p, "r+b") as fh:
            fh.truncate(cut)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(p.parent.resolve())
        return tail
