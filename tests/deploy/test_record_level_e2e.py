"""Record-level DP in a live deployment: a coordinator and three real ``secure-fml client``
processes over mutual-TLS gRPC on loopback, unit = both (client-level DP inside SecAgg,
and DP-SGD inside every site).

The coordinator is the real round engine behind a service that, in two rounds, alters
the round start it sends (THREAT_MODEL.md adversary 3): it asks for a record-level
noise multiplier of 0.1 (the sites' policies require 1.0), then for second-order MAML.
Every site refuses both with a typed, logged reason and keeps serving. Afterwards:

- each site's own ledger holds a ``RecordLevelRelease`` for exactly the honest rounds,
  at its own sigma and the step schedule its config and size imply;
- its record-level epsilon equals an independent ``dp_accounting`` computation for the
  steps it ran (within 1%);
- the coordinator's ledger holds the same releases, and ``secure-fml report`` on the
  coordinator's directory shows record-level epsilon per site beside client-level.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

import privacy
from secure_fml.data import load_preset
from secure_fml.deploy import CoordinatorService, RoundStart, serve
from secure_fml.messages import EngineMessage
from tests.deploy import _harness as H
from tests.deploy.test_e2e import REPO, Procs
from tests.deploy.test_record_level import (
    dp_accounting_epsilon,
    expected_schedule,
    record_config,
    record_events,
)

NAMES = ("alpha", "beta", "gamma")
CLIENTS = {n: f"client_0{i}" for i, n in enumerate(NAMES)}
ROUNDS = 4
HONEST_ROUNDS = [1, 4]
#: round -> (what the coordinator asks for, the site's logged reason)
ATTACKS = {
    2: ({"noise_multiplier": 0.1}, "record-level noise multiplier of 0.1"),
    3: ({"algorithm": "maml"}, "use 'fomaml'"),
}


class LowerRecordNoiseService(CoordinatorService):
    """The honest service, with the record-level request of some round starts lowered."""

    def poll(
        self, conn: bytes, *, wait_s: float, alive: Callable[[], bool] | None = None
    ) -> EngineMessage:
        msg = super().poll(conn, wait_s=wait_s, alive=alive)
        if not isinstance(msg, RoundStart) or msg.round not in ATTACKS:
            return msg
        rl = msg.settings.record_level
        assert rl is not None
        lowered = dataclasses.replace(rl, **ATTACKS[msg.round][0])
        return dataclasses.replace(
            msg, settings=dataclasses.replace(msg.settings, record_level=lowered)
        )


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    ps = Procs(tmp_path)
    try:
        yield ps
    finally:
        ps.cleanup()


def _site_toml(name: str, port: int) -> str:
    return f"""[site]
name = "{name}"
client = "{CLIENTS[name]}"
server = "127.0.0.1:{port}"
pki_dir = "pki"
poll_wait_s = 0.5
reconnect_backoff_max_s = 0.25
reconnect_timeout_s = 60

[policy]
min_noise_multiplier = 0.5
min_peers = 3
record_clip_norm = 1.0
record_noise_multiplier = 1.0

[data]
preset = "synthetic"
root = ""

[model]
kind = "mlp"
hidden = [8]

[algorithm]
name = "fomaml"
inner_lr = 0.05
inner_steps = 2
batch_size = 8
query_batch_size = 8

[privacy]
enabled = true
unit = "both"
noise_multiplier = 1.0
record_noise_multiplier = 1.0
"""


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_deployed_sites_run_record_level_dp_and_refuse_a_coordinator_that_lowers_it(
    tmp_path: Path, procs: Procs
) -> None:
    pki = H.make_pki(tmp_path / "pki", NAMES)
    run = tmp_path / "run"
    coord = H.make_coordinator(
        record_config(unit="both", rounds=ROUNDS),
        pki,
        run,
        names=NAMES,
        train_s=8.0,
        stage_s=5.0,
    )
    service = LowerRecordNoiseService(coord)
    creds = grpc.ssl_server_credentials(
        [((pki / "server.key").read_bytes(), (pki / "server.pem").read_bytes())],
        root_certificates=(pki / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    server, port = serve(service, address="127.0.0.1:0", server_credentials=creds)
    try:
        for name in NAMES:
            (tmp_path / f"{name}.toml").write_text(_site_toml(name, port))
            procs.start(name, "client", "--config", f"{name}.toml")
        for name in NAMES:
            rc = procs.procs[name].wait(timeout=240)
            assert rc == 0, procs.log(name)[-3000:]  # every site survived to the end
    finally:
        server.stop(grace=0.5)
        service.stop()
        coord.close()

    status = {ln["round"]: ln["status"] for ln in coord.history}
    assert [r for r, st in status.items() if st == "complete"] == HONEST_ROUNDS, status
    for ln in coord.history:  # each site said why it left, so no round waited its deadline
        if ln["round"] in ATTACKS:
            reasons = ln["withdrew"]
            assert sorted(reasons) == sorted(NAMES), ln
            assert all(ATTACKS[ln["round"]][1] in w for w in reasons.values()), reasons
            assert ln["round_s"] < 8.0, ln
        else:
            assert "withdrew" not in ln, ln
    ds = load_preset("synthetic")
    coord_copies = record_events(privacy.read_ledger(run / privacy.LEDGER_FILENAME))
    for name in NAMES:
        log = procs.log(name)
        for _, reason in ATTACKS.values():
            assert reason in log, (name, reason, log[-2000:])
        assert log.count("leaves this round (PolicyViolation)") >= len(ATTACKS), log[-2000:]
        # The site's own ledger: one record-level release per honest round, at its own
        # sigma and the schedule its config and size imply.
        entries = privacy.read_ledger(tmp_path / f"state-{name}" / privacy.LEDGER_FILENAME)
        mine = record_events(entries)
        assert [e.round for e in mine] == HONEST_ROUNDS, name
        n = len(ds.client(CLIENTS[name]).y)
        (q_s, k_s), (q_q, k_q) = expected_schedule(n)
        for e in mine:
            assert e.site_id == name and e.noise_multiplier == 1.0 and e.clip_norm == 1.0
            assert e.steps == (k_s, k_q) and e.sample_rates == pytest.approx((q_s, q_q))
        # Its epsilon (the site's own accountant) against dp_accounting, independently.
        with privacy.PrivacyLedger.open(
            tmp_path / f"state-{name}" / privacy.LEDGER_FILENAME
        ) as led:
            eps = led.record_epsilons(delta=1e-5)[name]
        assert eps == pytest.approx(dp_accounting_epsilon(mine, 1e-5), rel=0.01)
        # The coordinator's copy is the same releases.
        assert [e for e in coord_copies if e.site_id == name] == mine

    # `secure-fml report` on the coordinator's directory: record-level epsilon per site
    # beside the client-level epsilon.
    out = subprocess.run(
        [sys.executable, "-m", "secure_fml.cli", "report", str(run), "--out", str(tmp_path / "r")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    json_path, md_path = (Path(x) for x in out.stdout.split()[:2])  # json, md, html
    report = json.loads(json_path.read_text())
    rows = {r["site"]: r["epsilon"]["rdp"] for r in report["record_level"]["sites"]}
    assert sorted(rows) == sorted(NAMES)
    assert report["headline"]["coordinator"]["epsilon"] > 0
    md = md_path.read_text()
    assert "Record-level privacy per site" in md
