"""``kill -9`` of a real coordinator process at every durable write of a round (the
crash points of ``secure_fml.engine``, patched in by ``tests/deploy/_crash_coordinator``),
then a restart with the same files: every round charged in the ledger is either
applied (a ``complete`` metrics line and the checkpoint past it) or recorded as
charged-not-applied in both the metrics and the ledger; a round that was started but
never charged is recorded as lost in both; no round is charged twice or has two
records, and training goes on to the last round.

Sites run in this process (the real :class:`~secure_fml.deploy.Site` and its loop)
over loopback gRPC with mutual TLS, so each crash costs one interpreter start."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest

import privacy
from secure_fml.checkpoint import load_checkpoint
from secure_fml.config import dump_toml
from secure_fml.deploy import GrpcTransport, run_site
from secure_fml.deploy._pki import site_paths
from tests.deploy import _harness as H
from tests.deploy._crash_coordinator import POINTS

REPO = Path(__file__).resolve().parents[2]
SITES = ("alpha", "beta", "gamma")
ROUNDS = 3
CRASH_ROUND = 2
#: The record round CRASH_ROUND ends with after the restart, per crash point.
EXPECTED = {
    "started": "lost",
    "ledger": "charged-not-applied",
    "unmask": "charged-not-applied",
    "checkpoint": "complete",
    "metrics": "complete",
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return H.make_pki(tmp_path_factory.mktemp("pki"), SITES)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_config(root: Path, pki: Path, port: int) -> Path:
    deploy = {
        "address": f"127.0.0.1:{port}",
        "pki_dir": str(pki),
        "sites": list(SITES),
        "min_sites": 3,
        "start_grace_s": 1,
        "run_dir": str(root / "run"),
        "sample_shape": [60],
        "num_classes": 10,
        "input_kind": "tabular",
        "train_timeout_s": 30,
        "stage_timeout_s": 10,
        "lease_s": 5,
        "quorum_timeout_s": 90,
    }
    path = root / "coordinator.toml"
    text = "[deploy]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in deploy.items())
    path.write_text(text + "\n" + dump_toml(H.small_config(dp=True, rounds=ROUNDS)))
    return path


def _start(root: Path, name: str, config: Path, crash: str | None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "tests.deploy._crash_coordinator", "--config", str(config)]
    if crash:
        cmd += ["--crash-at", crash]
    with open(root / f"{name}.log", "ab") as log:
        return subprocess.Popen(cmd, cwd=root, stdout=log, stderr=log, env=env)


def _transport(pki: Path, name: str, port: int) -> GrpcTransport:
    cert, key, _ = site_paths(pki, name)
    creds = grpc.ssl_channel_credentials(
        (pki / "ca.pem").read_bytes(), key.read_bytes(), cert.read_bytes()
    )
    return GrpcTransport(f"127.0.0.1:{port}", credentials=creds, rpc_timeout_s=20)


def _sites(root: Path, pki: Path, port: int) -> tuple[list[threading.Thread], list[Any]]:
    cfg = H.small_config(dp=True, rounds=ROUNDS)
    results: list[Any] = [None] * len(SITES)

    def go(i: int, name: str) -> None:
        site = H.make_site(cfg, pki, name, f"client_0{i}", state_dir=root / name)
        t = _transport(pki, name, port)
        try:
            results[i] = run_site(
                site,
                t,
                certificate=H.cert_der(pki, name),
                poll_wait_s=0.5,
                reconnect_timeout_s=60,
                max_backoff_s=0.25,
            )
        except Exception as e:  # surfaced by the test
            results[i] = e
        finally:
            t.close()
            site.close()

    threads = [threading.Thread(target=go, args=(i, n), daemon=True) for i, n in enumerate(SITES)]
    for th in threads:
        th.start()
    return threads, results


def _lines(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]


@pytest.mark.e2e
@pytest.mark.timeout(240)
@pytest.mark.parametrize("point", POINTS)
def test_kill_9_at_every_crash_point_leaves_no_charged_round_unrecorded(
    pki: Path, tmp_path: Path, point: str
) -> None:
    port = _free_port()
    config = _write_config(tmp_path, pki, port)
    run = tmp_path / "run"
    first = _start(tmp_path, "server1", config, f"{point}:{CRASH_ROUND}")
    procs = [first]
    try:
        threads, results = _sites(tmp_path, pki, port)
        assert first.wait(timeout=150) == -signal.SIGKILL, (tmp_path / "server1.log").read_text()
        log1 = (tmp_path / "server1.log").read_text()
        assert f"test crash point ({point}, {CRASH_ROUND}) reached" in log1
        second = _start(tmp_path, "server2", config, None)
        procs.append(second)
        assert second.wait(timeout=150) == 0, (tmp_path / "server2.log").read_text()[-3000:]
        for th in threads:
            th.join(timeout=30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
    assert all(isinstance(r, int) for r in results), results

    lines = _lines(run)
    entries = privacy.read_ledger(run / privacy.LEDGER_FILENAME)
    records: dict[int, list[str]] = {}
    for ln in lines:
        records.setdefault(ln["round"], []).append(ln["status"])
    # Every round has exactly one record, and training reached the last round.
    assert records == {r: records[r][:1] for r in range(1, ROUNDS + 1)}, records
    assert records[CRASH_ROUND] == [EXPECTED[point]], records
    charged = [
        e.round
        for e in entries
        if isinstance(e.event, privacy.GaussianRelease | privacy.DistributedDiscreteGaussianRelease)
    ]
    not_applied = {e.round for e in entries if isinstance(e.event, privacy.RoundNotApplied)}
    skipped = {e.round for e in entries if isinstance(e.event, privacy.SkippedRound)}
    assert len(charged) == len(set(charged)), charged  # never charged twice
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt.round == ROUNDS
    for r in charged:
        # Applied (a complete line; the checkpoint is past it) or recorded as not
        # applied in both the metrics and the ledger: never a charged round unrecorded.
        if records[r] == ["complete"]:
            assert r not in not_applied
        else:
            assert records[r] == ["charged-not-applied"] and r in not_applied, (r, records)
    for r in skipped:
        assert records[r][0] in ("lost", "skipped") or records[r][0].startswith("aborted")
    assert set(charged) | skipped == set(range(1, ROUNDS + 1))
    assert not set(charged) & skipped
    if EXPECTED[point] == "complete" and point == "checkpoint":
        (line,) = [ln for ln in lines if ln["round"] == CRASH_ROUND]
        assert line.get("recovered") is True
