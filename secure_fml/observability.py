"""Observability: where per-round metrics go, and progress that is safe in log files.

**Metrics sinks.** The round engine hands every finished round's metrics line
(a JSON-serializable mapping with at least ``"round"``) to one
:class:`MetricsSink`, and closes it when the run ends:

    sink = build_sink(["jsonl", "log"], run_dir=run_dir, resume_after_round=ckpt_round)
    for each round:  sink.round(line)
    at the end:      sink.event("summary", summary); sink.close()

Implementations: :class:`JsonlSink` (``metrics.jsonl`` with wall-clock
timestamps; on resume it first drops the lines after the checkpoint's round, so
metrics never duplicate), :class:`LoggingSink` (one JSON log line per round
through :mod:`logging`), :class:`TensorBoardSink` and :class:`MLflowSink`
(optional extras ``secure-fml[tensorboard]`` / ``secure-fml[mlflow]``), and
:class:`MultiSink` to fan out. A failing optional sink (TensorBoard, MLflow) is
logged and switched off rather than stopping training; the JSONL record is the
source of truth and its errors propagate.

**Progress.** :class:`Progress` is a tqdm bar when the stream is a terminal
and plain, timestamp-free, newline-terminated lines otherwise (at most one per
``min_interval_s`` and at the end), so no carriage-return frames ever land in a
redirected log. :func:`stage` announces a long step without a known length
(loading data, writing a report). The library writes progress to stderr as
tqdm does; it never prints results.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

from privacy import atomic_write_bytes
from privacy.errors import ConfigError

__all__ = [
    "SINK_KINDS",
    "JsonlSink",
    "LoggingSink",
    "MLflowSink",
    "MetricsSink",
    "MultiSink",
    "Progress",
    "TensorBoardSink",
    "build_sink",
    "progress",
    "stage",
    "timestamped",
]

log = logging.getLogger(__name__)

#: Names accepted by :func:`build_sink` (and ``secure-fml simulate --log-to``).
SINK_KINDS = ("jsonl", "log", "tensorboard", "mlflow")

T = TypeVar("T")


def timestamped(line: Mapping[str, Any], *, now: float | None = None) -> dict[str, Any]:
    """``line`` with ``ts`` (Unix seconds) and ``time`` (ISO 8601, UTC) added if absent."""
    t = time.time() if now is None else now
    out = dict(line)
    out.setdefault("ts", round(t, 3))
    out.setdefault("time", datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds"))
    return out


def _scalars(line: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric top-level fields of a metrics line (bools and ``round`` excluded)."""
    out: dict[str, float] = {}
    for k, v in line.items():
        if k in ("round", "ts") or isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if math.isfinite(v):
            out[k] = float(v)
    return out


class MetricsSink(ABC):
    """Receives one metrics line per finished round, in round order.

    ``round(line)``: ``line`` is JSON-serializable and has an integer
    ``"round"`` (1-based). ``event(kind, fields)``: anything else worth recording
    (``"summary"`` at the end of a run, ``"resume"``); the default ignores it.
    ``close()``: flush and release; idempotent. Sinks are context managers.
    """

    @abstractmethod
    def round(self, line: Mapping[str, Any]) -> None: ...

    def event(self, kind: str, fields: Mapping[str, Any]) -> None:
        return None

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> MetricsSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class JsonlSink(MetricsSink):
    """Appends each round as one JSON line (with ``ts``/``time``) to ``path``, flushed.

    ``resume_after_round=r`` first removes every line whose round is greater than
    ``r`` (rounds that ran after the checkpoint being resumed and will run
    again), rewriting the file atomically; ``r = 0`` empties it. ``None`` (a
    fresh run or plain append) keeps the file as it is. ``fsync=True`` makes
    every line durable before :meth:`round` returns.
    """

    def __init__(
        self, path: str | Path, *, resume_after_round: int | None = None, fsync: bool = False
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_after_round is not None:
            self._truncate_after(resume_after_round)
        self._fsync = fsync
        self._f: IO[str] | None = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def _truncate_after(self, last: int) -> None:
        if not self.path.exists():
            return
        kept: list[str] = []
        text = self.path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for n, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                r = json.loads(raw).get("round")
            except (json.JSONDecodeError, AttributeError):
                if n == len(lines) and not text.endswith("\n"):
                    # A last line without its newline was torn by a crash mid-write
                    # (nothing after it was written): dropped, and its round is
                    # recovered from the checkpoint or the ledger like a missing one.
                    log.warning("%s: dropped a torn last line (a crash mid-write)", self.path)
                    continue
                raise ConfigError(f"{self.path}: line {n} is not a JSON object") from None
            if isinstance(r, int) and r > last:
                continue
            kept.append(raw)
        atomic_write_bytes(self.path, "".join(k + "\n" for k in kept).encode("utf-8"))

    def round(self, line: Mapping[str, Any]) -> None:
        if self._f is None:
            raise ValueError(f"{self.path}: sink is closed")
        self._f.write(json.dumps(timestamped(line)) + "\n")
        self._f.flush()
        if self._fsync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class LoggingSink(MetricsSink):
    """One JSON log record per round: ``{"event": "round", "round": ..., ...}``.

    With the CLI's ``--log-format json`` handler each record is one JSON line
    with the logger's own timestamp; the per-client list is summarized as a count.
    """

    def __init__(self, logger: logging.Logger | None = None, *, level: int = logging.INFO) -> None:
        self.logger = logger or logging.getLogger("secure_fml.rounds")
        self.level = level

    def round(self, line: Mapping[str, Any]) -> None:
        if not self.logger.isEnabledFor(self.level):
            return
        out: dict[str, Any] = {"event": "round"}
        for k, v in line.items():
            if k == "clients" and isinstance(v, list):
                out["sampled"] = len(v)
            else:
                out[k] = v
        self.logger.log(self.level, "%s", json.dumps(out, default=str))

    def event(self, kind: str, fields: Mapping[str, Any]) -> None:
        if self.logger.isEnabledFor(self.level):
            self.logger.log(
                self.level, "%s", json.dumps({"event": kind, **dict(fields)}, default=str)
            )

    def close(self) -> None:
        return None


def _missing_extra(kind: str, package: str) -> ConfigError:
    return ConfigError(
        f"--log-to {kind} needs the {package!r} package: pip install 'secure-fml[{kind}]'"
    )


class TensorBoardSink(MetricsSink):
    """Scalars (every finite numeric field) per round to a TensorBoard event directory."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package
            raise _missing_extra("tensorboard", "tensorboard") from None
        self.log_dir = Path(log_dir)
        self._w: Any = SummaryWriter(log_dir=str(self.log_dir))

    def round(self, line: Mapping[str, Any]) -> None:
        step = int(line["round"])
        for k, v in _scalars(line).items():
            self._w.add_scalar(k, v, global_step=step)

    def close(self) -> None:
        if self._w is not None:
            self._w.flush()
            self._w.close()
            self._w = None


class MLflowSink(MetricsSink):
    """Numeric fields per round as MLflow metrics (``step = round``) in one MLflow run.

    ``tracking_uri`` defaults to MLflow's own resolution (``MLFLOW_TRACKING_URI``
    or ``./mlruns``); ``params`` (e.g. the flattened config) are logged once.
    """

    def __init__(
        self,
        *,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        run_name: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        try:
            import mlflow
        except ImportError:
            raise _missing_extra("mlflow", "mlflow") from None
        self._mlflow: Any = mlflow
        if tracking_uri is not None:
            mlflow.set_tracking_uri(tracking_uri)
        if experiment is not None:
            mlflow.set_experiment(experiment)
        self._run: Any = mlflow.start_run(run_name=run_name)
        if params:
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    @property
    def run_id(self) -> str:
        return str(self._run.info.run_id)

    def round(self, line: Mapping[str, Any]) -> None:
        scalars = _scalars(line)
        if scalars:
            self._mlflow.log_metrics(scalars, step=int(line["round"]))

    def event(self, kind: str, fields: Mapping[str, Any]) -> None:
        if kind == "summary":
            self._mlflow.log_dict(dict(fields), "summary.json")

    def close(self) -> None:
        if self._run is not None:
            self._mlflow.end_run()
            self._run = None


class MultiSink(MetricsSink):
    """Fans out to several sinks. ``required`` sinks raise; optional ones are switched off
    (with a warning naming the error) when they fail."""

    def __init__(
        self, sinks: Sequence[MetricsSink], *, optional: Sequence[MetricsSink] = ()
    ) -> None:
        self.sinks = list(sinks)
        self._optional = {id(s) for s in optional}
        self.sinks += [s for s in optional if s not in self.sinks]

    def _each(self, method: str, *args: Any) -> None:
        for s in list(self.sinks):
            try:
                getattr(s, method)(*args)
            except Exception as e:
                if id(s) not in self._optional:
                    raise
                log.warning("metrics sink %s failed (%s); switching it off", type(s).__name__, e)
                self.sinks.remove(s)

    def round(self, line: Mapping[str, Any]) -> None:
        self._each("round", line)

    def event(self, kind: str, fields: Mapping[str, Any]) -> None:
        self._each("event", kind, fields)

    def close(self) -> None:
        self._each("close")


def build_sink(
    kinds: Iterable[str],
    *,
    run_dir: str | Path | None,
    resume_after_round: int | None = None,
    run_name: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> MultiSink:
    """The sinks named in ``kinds`` (see :data:`SINK_KINDS`), under ``run_dir``.

    ``jsonl`` writes ``run_dir/metrics.jsonl`` (``resume_after_round`` as in
    :class:`JsonlSink`), ``tensorboard`` writes ``run_dir/tensorboard/``,
    ``mlflow`` logs to MLflow's tracking URI, ``log`` logs one JSON line per round.
    An unknown kind, or an optional kind whose package is missing, raises
    :class:`ConfigError` before any round runs.
    """
    names = list(dict.fromkeys(kinds))
    unknown = [k for k in names if k not in SINK_KINDS]
    if unknown:
        raise ConfigError(
            f"unknown metrics sink(s) {', '.join(unknown)}; valid: {', '.join(SINK_KINDS)}"
        )
    required: list[MetricsSink] = []
    optional: list[MetricsSink] = []
    for k in names:
        if k in ("jsonl", "tensorboard") and run_dir is None:
            raise ConfigError(f"metrics sink {k!r} needs a run directory")
        if k == "jsonl":
            assert run_dir is not None
            required.append(
                JsonlSink(Path(run_dir) / "metrics.jsonl", resume_after_round=resume_after_round)
            )
        elif k == "log":
            required.append(LoggingSink())
        elif k == "tensorboard":
            assert run_dir is not None
            optional.append(TensorBoardSink(Path(run_dir) / "tensorboard"))
        else:
            optional.append(MLflowSink(run_name=run_name, params=params))
    return MultiSink(required, optional=optional)


# ---------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------


def _is_tty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _fmt_s(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


class Progress:
    """A progress bar on a terminal; plain lines elsewhere (logs, CI, pipes).

    ``update(n)`` advances, ``set_postfix(mapping)`` sets the trailing fields
    (e.g. loss, epsilon), ``close()`` ends it (a final line in plain mode).
    ``enabled=False`` makes every call a no-op. ``tty`` overrides detection.
    """

    def __init__(
        self,
        *,
        total: int | None,
        desc: str,
        unit: str = "it",
        initial: int = 0,
        enabled: bool = True,
        stream: IO[str] | None = None,
        tty: bool | None = None,
        min_interval_s: float = 10.0,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = initial
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _is_tty(self.stream) if tty is None else tty
        self.min_interval_s = min_interval_s
        self._postfix: dict[str, Any] = {}
        self._t0 = time.monotonic()
        self._last = -math.inf
        self._closed = False
        self._bar: Any = None
        if enabled and self.tty:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, initial=initial, desc=desc, unit=unit, file=self.stream, leave=True
            )

    def _line(self, final: bool = False) -> str:
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        post = "".join(f", {k}={v}" for k, v in self._postfix.items())
        tag = " done" if final else ""
        elapsed = _fmt_s(time.monotonic() - self._t0)
        return f"{self.desc}:{tag} {done} {self.unit}{pct} in {elapsed}{post}\n"

    def _emit(self, final: bool = False) -> None:
        self.stream.write(self._line(final))
        self.stream.flush()
        self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        if not self.enabled or self._closed:
            return
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        if time.monotonic() - self._last >= self.min_interval_s:
            self._emit()

    def set_postfix(self, fields: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self._postfix = dict(fields)
        if self._bar is not None:
            self._bar.set_postfix(self._postfix)

    def close(self) -> None:
        if not self.enabled or self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        else:
            self._emit(final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(
    items: Iterable[T],
    *,
    desc: str,
    total: int | None = None,
    unit: str = "it",
    enabled: bool = True,
    stream: IO[str] | None = None,
    tty: bool | None = None,
    min_interval_s: float = 10.0,
) -> Iterator[T]:
    """Iterate ``items`` with a :class:`Progress` (``total`` from ``len`` when possible)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(
        total=total,
        desc=desc,
        unit=unit,
        enabled=enabled,
        stream=stream,
        tty=tty,
        min_interval_s=min_interval_s,
    ) as bar:
        for item in items:
            yield item
            bar.update(1)


@contextmanager
def stage(
    desc: str,
    *,
    enabled: bool = True,
    stream: IO[str] | None = None,
    after_s: float = 1.0,
) -> Iterator[None]:
    """Announce a step of unknown length (loading data, writing a report).

    A step still running after ``after_s`` seconds gets ``desc ...`` and, when it
    ends, ``desc: done in 3.2s``; a quicker one prints nothing, and a failing one
    leaves the error to speak for itself.
    """
    out = stream if stream is not None else sys.stderr
    if not enabled:
        yield
        return
    t0 = time.monotonic()
    announced = threading.Event()
    lock = threading.Lock()

    def announce() -> None:
        with lock:
            if not finished:
                out.write(f"{desc} ...\n")
                out.flush()
                announced.set()

    finished = False
    timer = threading.Timer(after_s, announce)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            finished = True
        timer.cancel()
    if announced.is_set():
        out.write(f"{desc}: done in {_fmt_s(time.monotonic() - t0)}\n")
        out.flush()
