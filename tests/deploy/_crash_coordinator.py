"""Test fixture: a coordinator process (exactly ``secure-fml server``'s ``run_server``)
that SIGKILLs itself at one crash point of one round, patched in from here so no crash
hook ships in the production code.

    python -m tests.deploy._crash_coordinator --config coordinator.toml [--crash-at ledger:2]

The crash points (``POINTS``) are the durable writes of a round, in the order the
engine makes them (see "Crash points" in ``secure_fml.engine``):

- ``started``: just after ``round_started.json`` (the round's start marker) is written;
- ``ledger``: just after the round's release is appended to the privacy ledger (the
  charge, before any unmask request leaves);
- ``unmask``: after the sum was unmasked, before it is applied to the model;
- ``checkpoint``: just after the round's checkpoint is written;
- ``metrics``: just after the round's metrics line is written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import privacy
import secure_fml.deploy._coordinator as coordinator_module
import secure_fml.engine as engine_module
from secure_fml.deploy import load_coordinator_config
from secure_fml.deploy._process import run_server
from secure_fml.observability import JsonlSink

POINTS = ("started", "ledger", "unmask", "checkpoint", "metrics")

log = logging.getLogger("test-coordinator")


def _die(point: str, round_: int) -> None:
    log.warning("test crash point (%s, %d) reached", point, round_)
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str, round_: int) -> None:
    """Patch the function that makes ``point``'s write so the process dies right after."""
    if point == "started":
        write = coordinator_module.atomic_write_bytes

        def write_marker(path: Any, data: bytes) -> None:
            write(path, data)
            marker = Path(path).name == coordinator_module.STARTED_FILE
            if marker and json.loads(data)["round"] == round_:
                _die(point, round_)

        coordinator_module.atomic_write_bytes = write_marker  # type: ignore[assignment]
    elif point == "ledger":
        record = privacy.PrivacyLedger.record
        releases = (privacy.GaussianRelease, privacy.DistributedDiscreteGaussianRelease)

        def record_then_die(self: privacy.PrivacyLedger, event: Any) -> Any:
            out = record(self, event)
            if event.round == round_ and isinstance(event, releases):
                _die(point, round_)
            return out

        privacy.PrivacyLedger.record = record_then_die  # type: ignore[method-assign]
    elif point == "unmask":
        apply = engine_module.RoundEngine._apply

        def die_before_apply(self: Any, rd: Any, agg: Any) -> None:
            if rd.number == round_:
                _die(point, round_)
            apply(self, rd, agg)

        engine_module.RoundEngine._apply = die_before_apply  # type: ignore[method-assign]
    elif point == "checkpoint":
        save = engine_module.save_checkpoint

        def save_then_die(path: Any, ckpt: Any) -> None:
            save(path, ckpt)
            if ckpt.round == round_:
                _die(point, round_)

        engine_module.save_checkpoint = save_then_die  # type: ignore[assignment]
    elif point == "metrics":
        write_line = JsonlSink.round

        def line_then_die(self: JsonlSink, line: Any) -> None:
            write_line(self, line)
            if line.get("round") == round_:
                _die(point, round_)

        JsonlSink.round = line_then_die  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown crash point {point!r} (known: {', '.join(POINTS)})")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--crash-at", help="POINT:ROUND")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.crash_at:
        point, _, rnd = args.crash_at.partition(":")
        install(point, int(rnd))
    settings, config = load_coordinator_config(args.config)
    run_server(settings, config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
