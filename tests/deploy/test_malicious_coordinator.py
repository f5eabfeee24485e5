"""A malicious coordinator against honest site processes, over real mTLS gRPC on loopback.

The coordinator is the real round engine behind a service that alters what it sends
(THREAT_MODEL.md adversary 3): noise 1e-9, a Sybil roster, the fixed-point scale
x1e6, a replayed round start, threshold 1. Three real ``secure-fml client``
processes, each with its own ``[policy]``, refuse every altered round with a typed,
logged reason and keep serving; the honest rounds in between complete, and each
site's own ledger holds exactly those.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

import privacy
from secure_fml.deploy import CoordinatorService, Peer, RoundStart, serve
from secure_fml.messages import EngineMessage
from tests.deploy import _harness as H
from tests.deploy.test_e2e import Procs
from tests.deploy.test_site_policy import _secagg, _with

NAMES = ("alpha", "beta", "gamma")
HONEST_ROUNDS = (4, 7)
#: round -> (attack, the error type the site logs)
ATTACKS = {
    1: ("noise_1e-9", "PolicyViolation"),
    2: ("sybil", "InvalidMessage"),
    3: ("scale_x1e6", "PolicyViolation"),
    5: ("replay_round_4", "StaleMessage"),
    6: ("threshold_1", "PolicyViolation"),
}


class MaliciousService(CoordinatorService):
    """The honest service, with every round start altered on its way out."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.seen: dict[tuple[int, str], RoundStart] = {}

    def poll(
        self, conn: bytes, *, wait_s: float, alive: Callable[[], bool] | None = None
    ) -> EngineMessage:
        msg = super().poll(conn, wait_s=wait_s, alive=alive)
        if not isinstance(msg, RoundStart):
            return msg
        me = msg.peers[msg.client_index].name
        self.seen[(msg.round, me)] = msg
        attack = ATTACKS.get(msg.round, ("honest", ""))[0]
        s = msg.settings
        assert s.scale is not None
        if attack == "noise_1e-9":
            return _with(msg, noise_std=1e-9)
        if attack == "sybil":
            p = msg.peers
            return dataclasses.replace(
                msg,
                peers=tuple(x if x.name == me else Peer(x.index, "mallory", x.identity) for x in p),
            )
        if attack == "scale_x1e6":
            return _with(msg, scale=s.scale * 1e6)
        if attack == "replay_round_4":
            return self.seen[(4, me)]
        if attack == "threshold_1":
            return _secagg(msg, threshold=1)
        return msg


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    ps = Procs(tmp_path)
    try:
        yield ps
    finally:
        ps.cleanup()


def _site_toml(name: str, client: str, port: int) -> str:
    return f"""[site]
name = "{name}"
client = "{client}"
server = "127.0.0.1:{port}"
pki_dir = "pki"
poll_wait_s = 0.5
reconnect_backoff_max_s = 0.25
reconnect_timeout_s = 60

[policy]
min_noise_multiplier = 0.5
max_clip_norm = 2.0
min_peers = 3

[data]
preset = "synthetic"
root = ""

[model]
kind = "mlp"
hidden = [8]

[algorithm]
name = "metasgd"
inner_lr = 0.05
"""


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_malicious_coordinator_is_refused_and_honest_sites_survive(
    tmp_path: Path, procs: Procs
) -> None:
    pki = H.make_pki(tmp_path / "pki", NAMES)
    cfg = H.small_config(dp=True, rounds=7)
    coord = H.make_coordinator(cfg, pki, tmp_path / "run", names=NAMES, train_s=8.0, stage_s=5.0)
    service = MaliciousService(coord)
    creds = grpc.ssl_server_credentials(
        [((pki / "server.key").read_bytes(), (pki / "server.pem").read_bytes())],
        root_certificates=(pki / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    server, port = serve(service, address="127.0.0.1:0", server_credentials=creds)
    try:
        for i, name in enumerate(NAMES):
            (tmp_path / f"{name}.toml").write_text(_site_toml(name, f"client_0{i}", port))
            procs.start(name, "client", "--config", f"{name}.toml")
        for name in NAMES:
            rc = procs.procs[name].wait(timeout=200)
            assert rc == 0, procs.log(name)[-3000:]  # every honest site survived to the end
    finally:
        server.stop(grace=0.5)
        service.stop()
        coord.close()

    status = {ln["round"]: ln["status"] for ln in coord.history}
    assert [r for r, st in status.items() if st == "complete"] == list(HONEST_ROUNDS), status
    # Every site told the coordinator why it left each altered round of the present
    # session, so those rounds ended without waiting out their deadline; the replayed
    # start names a past round, so its withdrawal is refused and round 5 waits.
    for ln in coord.history:
        attack, error = ATTACKS.get(ln["round"], ("honest", ""))
        if attack in ("honest", "replay_round_4"):
            assert "withdrew" not in ln, ln
            continue
        why = ln["withdrew"]
        assert sorted(why) == sorted(NAMES), ln
        assert all(w.startswith(f"ADVERTISE_KEYS: {error}: ") for w in why.values()), why
        assert ln["round_s"] < 8.0, ln  # the train deadline
    for name in NAMES:
        log = procs.log(name)
        for attack, error in ATTACKS.values():
            assert f"leaves this round ({error})" in log, (name, attack, log[-2000:])
        records = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
        assert records and all(r.get("site") == name for r in records)  # names its site
        entries = privacy.read_ledger(tmp_path / f"state-{name}" / privacy.LEDGER_FILENAME)
        assert [e.round for e in entries] == list(HONEST_ROUNDS), name
        rounds = json.loads((tmp_path / f"state-{name}" / "site_rounds.json").read_text())
        assert rounds["contributions"] == len(HONEST_ROUNDS)
    # The coordinator's own ledger charged only the honest rounds' releases.
    coord_entries = privacy.read_ledger(tmp_path / "run" / privacy.LEDGER_FILENAME)
    released = [e.round for e in coord_entries if not isinstance(e.event, privacy.SkippedRound)]
    assert released == list(HONEST_ROUNDS)
