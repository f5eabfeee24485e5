"""What keeps abusive peers from exhausting the coordinator's gRPC workers.

THREAT_MODEL.md adversaries 4 (an insider with a valid certificate) and 5 (a
non-member): neither may block the workers. The servicer

- refuses a peer whose certificate is not on the allowlist before it reads
  anything of its request stream;
- caps the RPCs one identity may have in flight (:class:`PerIdentityLimiter`),
  with at most one long poll each, so 100 polls of one insider hold one worker;
- cancels any request stream that is still being read past its deadline
  (:class:`Watchdog`), so a slowloris holds a worker for a bounded time;
- logs refusals at a bounded rate (:class:`LogThrottle`), so a flood cannot fill
  the disk or drown the log.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

from privacy.errors import ConfigError, RefusalReason, Refused

__all__ = ["LogThrottle", "PerIdentityLimiter", "Watchdog"]


class PerIdentityLimiter:
    """At most ``max_rpcs`` RPCs in flight per identity, of which ``max_polls`` polls."""

    def __init__(self, *, max_rpcs: int = 4, max_polls: int = 1) -> None:
        if not isinstance(max_rpcs, int) or max_rpcs < 1:
            raise ConfigError("max_rpcs must be an integer >= 1")
        if not isinstance(max_polls, int) or not 1 <= max_polls <= max_rpcs:
            raise ConfigError("max_polls must be an integer in [1, max_rpcs]")
        self.max_rpcs = max_rpcs
        self.max_polls = max_polls
        self._lock = threading.Lock()
        self._rpcs: collections.Counter[str] = collections.Counter()
        self._polls: collections.Counter[str] = collections.Counter()

    def acquire(self, identity: str, *, poll: bool = False) -> None:
        """Take a slot or raise :class:`Refused` (``BUSY``); pair with :meth:`release`."""
        with self._lock:
            if self._rpcs[identity] >= self.max_rpcs:
                raise Refused(
                    RefusalReason.BUSY,
                    f"{identity!r} already has {self.max_rpcs} requests in flight",
                )
            if poll and self._polls[identity] >= self.max_polls:
                raise Refused(RefusalReason.BUSY, f"{identity!r} already has a poll outstanding")
            self._rpcs[identity] += 1
            if poll:
                self._polls[identity] += 1

    def release(self, identity: str, *, poll: bool = False) -> None:
        with self._lock:
            self._rpcs[identity] -= 1
            if self._rpcs[identity] <= 0:
                del self._rpcs[identity]
            if poll:
                self._polls[identity] -= 1
                if self._polls[identity] <= 0:
                    del self._polls[identity]

    def in_flight(self, identity: str) -> int:
        with self._lock:
            return self._rpcs[identity]


class Watchdog:
    """One thread that calls each armed ``cancel`` once its deadline passes."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, tick_s: float = 0.05):
        self._clock = clock
        self._tick_s = tick_s
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, Callable[[], object]] = {}
        self._ids = itertools.count()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="stream-watchdog", daemon=True)
        self._thread.start()

    def arm(self, seconds: float, cancel: Callable[[], object]) -> int:
        with self._cond:
            token = next(self._ids)
            self._armed[token] = cancel
            heapq.heappush(self._heap, (self._clock() + seconds, token))
            self._cond.notify()
            return token

    def disarm(self, token: int) -> None:
        with self._cond:
            self._armed.pop(token, None)

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            due: list[Callable[[], object]] = []
            with self._cond:
                if self._stop:
                    return
                now = self._clock()
                while self._heap and self._heap[0][0] <= now:
                    _, token = heapq.heappop(self._heap)
                    fn = self._armed.pop(token, None)
                    if fn is not None:
                        due.append(fn)
                if not due:
                    wait = self._heap[0][0] - now if self._heap else self._tick_s * 20
                    self._cond.wait(min(max(wait, 0.0), self._tick_s * 20))
            for fn in due:
                try:
                    fn()
                except Exception:  # a cancel must never kill the watchdog
                    logging.getLogger(__name__).exception("stream cancel failed")


class LogThrottle:
    """Log at most ``burst`` records per ``period_s`` per key; then one summary per period."""

    def __init__(self, logger: logging.Logger, *, burst: int = 10, period_s: float = 10.0):
        self.logger = logger
        self.burst = burst
        self.period_s = period_s
        self._lock = threading.Lock()
        self._window: dict[str, tuple[float, int, int]] = {}

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            start, count, dropped = self._window.get(key, (now, 0, 0))
            if now - start >= self.period_s:
                if dropped:
                    self.logger.warning(
                        "%d more %s refusals in the last %.0fs were not logged",
                        dropped,
                        key,
                        now - start,
                    )
                start, count, dropped = now, 0, 0
            if count < self.burst:
                self._window[key] = (start, count + 1, dropped)
                emit = True
            else:
                self._window[key] = (start, count, dropped + 1)
                emit = False
        if emit:
            self.logger.warning(msg, *args)
