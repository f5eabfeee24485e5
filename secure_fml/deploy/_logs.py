"""JSON logs for the deployed processes: one JSON object per line, every line.

A coordinator or site started with ``--log-format json`` (the default) writes only
JSON lines to stderr, each naming its party (``"site": "alpha"`` or
``"coordinator"``), so a log shipper never meets a line it cannot parse:

- Python records (ours, gRPC's Python loggers, ``warnings``) go through
  :class:`JsonFormatter` on the root logger.
- Everything else written to file descriptor 2 -- gRPC's C core (absl log lines such
  as ``E1202 07:06:59.662103 5052 chttp2_server.cc:123] ...``), a library's stray
  print, a traceback -- is captured by :class:`StderrCapture`: fd 2 becomes a pipe
  whose lines are re-emitted as records of the ``grpc.core`` logger (absl lines,
  with their level and source) or the ``stderr`` logger (anything else), at most a
  burst per source and period so a handshake flood cannot flood the log.

The gRPC C core's own verbosity is read from ``GRPC_VERBOSITY`` once, when ``grpc``
is first imported; ``secure_fml.cli.main`` sets it to ``ERROR`` (gRPC's documented
default) unless the operator set it, before anything imports ``grpc``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import sys
import threading
import time
from typing import IO, Any

__all__ = ["JsonFormatter", "StderrCapture"]

# absl's prefix: severity letter, MMDD, time, thread id, file:line] message.
_ABSL = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+\s+([^\s\]]+:\d+)\] ?(.*)$")
_ABSL_LEVEL = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: easy to grep, ship and parse. Every record names the
    process's party (``site``: the site name, or ``coordinator``) unless the record
    names a site itself (``extra={"site": ...}``); a captured line keeps its
    ``source`` (the C file and line that wrote it)."""

    def __init__(self, party: str | None = None) -> None:
        super().__init__()
        self.party = party

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        site = getattr(record, "site", None) or self.party
        if site is not None:
            out["site"] = site
        source = getattr(record, "source", None)
        if source is not None:
            out["source"] = source
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class StderrCapture:
    """Route file descriptor 2 through a pipe and log each line written to it.

    :attr:`stream` writes to the original stderr: the JSON handler's stream (it
    must not write into the pipe it drains). :meth:`close` (also run at exit)
    restores fd 2 and logs what is still buffered. Lines are throttled per source
    (``burst`` per ``period_s``, then one count of the dropped ones).
    """

    def __init__(self, *, burst: int = 20, period_s: float = 10.0) -> None:
        sys.stderr.flush()
        self._orig = os.dup(2)
        self.stream: IO[str] = open(  # noqa: SIM115 - lives as long as the process's log
            os.dup(self._orig), "w", buffering=1, encoding="utf-8", errors="replace"
        )
        r, w = os.pipe()
        os.dup2(w, 2)
        os.close(w)
        self._r = r
        self._burst = burst
        self._period_s = period_s
        self._windows: dict[str, tuple[float, int, int]] = {}
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, name="stderr-capture", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def _pump(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._r, 65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                self._emit(line)
        if buf:
            self._emit(buf)
        os.close(self._r)

    def _emit(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if not text.strip():
            return
        m = _ABSL.match(text)
        if m:
            logger, level = "grpc.core", _ABSL_LEVEL[m.group(1)]
            source, msg = m.group(2), m.group(3)
        else:
            upper = text.lstrip().upper()
            level = logging.ERROR if upper.startswith(("ERROR", "TRACEBACK")) else logging.WARNING
            logger, source, msg = "stderr", None, text
        if not self._admit(source or logger):
            return
        logging.getLogger(logger).log(level, "%s", msg, extra={"source": source})

    def _admit(self, key: str) -> bool:
        now = time.monotonic()
        start, count, dropped = self._windows.get(key, (now, 0, 0))
        if now - start >= self._period_s:
            if dropped:
                logging.getLogger("stderr").warning(
                    "%d more lines from %s in the last %.0fs were not logged",
                    dropped,
                    key,
                    now - start,
                )
            start, count, dropped = now, 0, 0
        if count < self._burst:
            self._windows[key] = (start, count + 1, dropped)
            return True
        self._windows[key] = (start, count, dropped + 1)
        return False

    def close(self) -> None:
        """Restore fd 2 and drain the pipe (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        # Replacing fd 2 closes the pipe's last write end: the pump reads EOF.
        os.dup2(self._orig, 2)
        os.close(self._orig)
        self._thread.join(timeout=2.0)
        self.stream.flush()
