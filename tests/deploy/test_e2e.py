"""End to end: a real coordinator and five site processes on loopback with mutual TLS.

Runs the README's "Deploy across sites" files (coordinator.toml, alpha.toml): three
rounds of FedMeta(Meta-SGD) with distributed DP inside SecAgg, on the embedded
synthetic data (runs on a fresh clone) and on real FEMNIST writers (when
``../shared/data`` is present). One site is SIGKILLed mid-round at a deterministic
protocol point (a test-only site process injects the crash through its transport;
the round completes through recovery), the coordinator is SIGKILLed during round 3
and restarted (training resumes, every round charged exactly once), and a
certificate that is not on the allowlist is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import privacy
from secure_fml.checkpoint import load_checkpoint
from secure_fml.deploy import issue_site

REPO = Path(__file__).resolve().parents[2]
DATASETS = {
    "femnist": {
        "alpha": "f1501_00",
        "beta": "f1521_17",
        "gamma": "f1567_20",
        "delta": "f1583_41",
        "epsilon": "f1593_46",
        "intruder": "f1599_48",
    },
    "synthetic": {
        n: f"client_{i:02d}"
        for i, n in enumerate(("alpha", "beta", "gamma", "delta", "epsilon", "intruder"))
    },
}
VICTIM = "epsilon"


def _readme_toml(name: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Deploy across sites", 1)[1].split("\n## ", 1)[0]
    m = re.search(rf"`{re.escape(name)}`:\n\n```toml\n(.*?)```", section, re.S)
    assert m, f"README section lacks the {name} block"
    return m.group(1)


def _set(toml: str, table: str, key: str, value: str) -> str:
    head = f"[{table}]\n"
    start = toml.index(head) + len(head)
    nxt = toml.find("\n[", start)
    end = len(toml) if nxt < 0 else nxt
    body, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", toml[start:end])
    assert n == 1, (table, key)
    return toml[:start] + body + toml[end:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "secure_fml.cli", *args]


def _wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _metrics(run_dir: Path) -> list[dict]:
    p = run_dir / "metrics.jsonl"
    if not p.exists():
        return []
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


class Procs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str, module: str | None = None) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO),
        }
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        cmd = [sys.executable, "-m", module, *args] if module else _cli(*args)
        p = subprocess.Popen(cmd, cwd=self.root, stdout=log, stderr=log, env=env)
        log.close()
        self.procs[name] = p
        return p

    def log(self, name: str) -> str:
        p = self.root / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def kill(self, name: str) -> None:
        p = self.procs[name]
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)

    def cleanup(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    ps = Procs(tmp_path)
    try:
        yield ps
    finally:
        ps.cleanup()


@pytest.mark.e2e
@pytest.mark.timeout(240)
@pytest.mark.parametrize("dataset", ["synthetic", pytest.param("femnist", marks=pytest.mark.data)])
def test_deploy_five_sites_mtls_kill_site_kill_server_unknown_cert(
    dataset: str, tmp_path: Path, procs: Procs, request: pytest.FixtureRequest
) -> None:
    clients = DATASETS[dataset]
    SITES = {n: c for n, c in clients.items() if n != "intruder"}
    pki = tmp_path / "pki"
    secret = tmp_path / "ca-passphrase"  # the CA key is encrypted at rest
    secret.write_bytes(b"e2e-ca-passphrase\n")
    pf = ("--passphrase-file", str(secret))
    for args in (
        ("pki", "init", "--dir", str(pki), *pf),
        ("pki", "issue-server", "--dir", str(pki), "--host", "127.0.0.1", *pf),
        ("pki", "issue-site", "alpha", "--dir", str(pki), *pf),
    ):
        subprocess.run(_cli(*args), check=True, capture_output=True, timeout=60)
    for name in (*SITES, "intruder"):  # the same code in-process (saves interpreter starts)
        if name != "alpha":
            issue_site(pki, name, passphrase=b"e2e-ca-passphrase")
    assert oct((pki / "site-alpha.key").stat().st_mode & 0o777) == "0o600"

    port = _free_port()
    addr = f'"127.0.0.1:{port}"'
    coord = _readme_toml("coordinator.toml")
    coord = _set(coord, "deploy", "address", addr)
    coord = _set(coord, "deploy", "sites", json.dumps(list(SITES)))
    coord = _set(coord, "deploy", "min_sites", "4")
    coord = _set(coord, "deploy", "start_grace_s", "6")
    coord = _set(coord, "deploy", "train_timeout_s", "60")
    coord = _set(coord, "deploy", "stage_timeout_s", "5")
    coord = _set(coord, "deploy", "lease_s", "5")
    (tmp_path / "coordinator.toml").write_text(coord)
    site_t = _set(_readme_toml("alpha.toml"), "site", "server", addr)
    if dataset == "femnist":
        data_root = request.getfixturevalue("data_root")
        site_t = _set(site_t, "data", "root", json.dumps(str(data_root)))
    else:  # the embedded default: no files at all
        coord = _set(coord, "deploy", "sample_shape", "[60]")
        coord = _set(coord, "deploy", "num_classes", "10")
        coord = _set(coord, "deploy", "input_kind", '"tabular"')
        (tmp_path / "coordinator.toml").write_text(coord)
        site_t = _set(site_t, "data", "preset", '"synthetic"')
        site_t = _set(site_t, "data", "root", '""')
    for name, client in clients.items():
        t = _set(site_t, "site", "name", f'"{name}"')
        t = _set(t, "site", "client", f'"{client}"')
        t = _set(t, "site", "download", f'"{name}-model.pt"')
        # Loopback: join again quickly after the coordinator restarts.
        t = t.replace("[site]\n", "[site]\nreconnect_backoff_max_s = 0.25\n", 1)
        (tmp_path / f"{name}.toml").write_text(t)
    run_dir = tmp_path / "runs" / "deploy"

    procs.start("server", "server", "--config", "coordinator.toml")
    for name in SITES:
        if name == VICTIM:
            # The victim SIGKILLs itself right after its round-2 key shares were accepted:
            # a deterministic point after sharing and before its masked input.
            procs.start(
                name,
                "--config",
                f"{name}.toml",
                "--crash-after",
                "share_keys:2",
                module="tests.deploy._site_process",
            )
        else:
            procs.start(name, "client", "--config", f"{name}.toml")

    # An allowlist miss: a CA-issued certificate whose name the coordinator does not serve.
    intruder = procs.start("intruder", "client", "--config", "intruder.toml")
    assert intruder.wait(timeout=90) == 2
    assert "PERMISSION_DENIED" in procs.log("intruder")
    assert "not on the allowlist" in procs.log("intruder")

    # Round 1 completes with everyone; in round 2 the victim dies right after sharing keys.
    _wait_for(lambda: len(_metrics(run_dir)) >= 1, 120, "round 1")
    assert _metrics(run_dir)[0]["dropped"] == 0, _metrics(run_dir)
    assert procs.procs[VICTIM].wait(timeout=120) == -signal.SIGKILL
    assert "test crash point (SHARE_KEYS, 2) reached" in procs.log(VICTIM)
    _wait_for(lambda: len(_metrics(run_dir)) >= 2, 60, "round 2")
    r2 = _metrics(run_dir)[1]
    assert r2["status"] == "complete", r2
    assert r2["dropped"] == 1 and r2["contributors"] == 4, r2

    # Kill -9 the coordinator during round 3 (which starts with the four live sites once
    # the start grace passes), then restart it with the same files.
    _wait_for(lambda: "round 3 started" in procs.log("server"), 60, "round 3 to start")
    procs.kill("server")
    before = privacy.read_ledger(run_dir / privacy.LEDGER_FILENAME)
    assert [e.event.round for e in before][:2] == [1, 2]
    procs.start("server2", "server", "--config", "coordinator.toml")
    assert procs.procs["server2"].wait(timeout=120) == 0, procs.log("server2")[-3000:]
    for name in SITES:
        if name != VICTIM:
            assert procs.procs[name].wait(timeout=60) == 0, procs.log(name)[-3000:]

    entries = privacy.read_ledger(run_dir / privacy.LEDGER_FILENAME)
    rounds = [e.event.round for e in entries]
    assert rounds == sorted(set(rounds)) and rounds[-1] == 3, rounds  # never twice
    assert len(entries) >= len(before)  # nothing spent was lost
    ck = load_checkpoint(run_dir / "checkpoint.pt")
    assert ck.round == 3 and ck.extra["ledger_head"]["entries"] == len(entries)
    assert "resumed at round" in procs.log("server2")
    status = subprocess.run(
        _cli("status", "--run-dir", str(run_dir)), capture_output=True, text=True, timeout=60
    )
    assert "round 2: complete, sites seen 5, dropped 1" in status.stdout, status.stdout

    # Any site personalizes the downloaded final model locally with the existing command.
    model = tmp_path / "alpha-model.pt"
    assert load_checkpoint(model).round == 3
    data_args = (
        ["--data", "femnist", "--data-root", str(data_root)]
        if dataset == "femnist"
        else [
            "--data",
            "synthetic",
        ]
    )
    out = subprocess.run(
        _cli(
            "adapt",
            "--checkpoint",
            str(model),
            *data_args,
            "--client",
            SITES["alpha"],
            "--steps",
            "2",
        ),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, out.stderr
    assert "accuracy after adaptation" in out.stdout
