"""A coordinator killed mid-round never runs that round index again (its sites may have
released their inputs to it, and refuse a second start of it): after the restart the
round is recorded as lost -- a SkippedRound in the ledger, a ``lost`` metrics line --
and training goes on with the next index, without waiting for the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import privacy
from secure_fml.deploy import InProcessTransport, RoundStart
from tests.deploy import _harness as H


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return H.make_pki(tmp_path_factory.mktemp("pki"), H.SITES)


@pytest.mark.slow
def test_round_started_before_a_crash_is_recorded_lost_and_never_rerun(
    pki: Path, tmp_path: Path
) -> None:
    cfg = H.small_config(dp=True, rounds=2)
    sites = [
        H.make_site(cfg, pki, n, f"client_0{i}", state_dir=tmp_path / n)
        for i, n in enumerate(H.SITES)
    ]
    first = H.make_coordinator(cfg, pki, tmp_path / "run")
    svc = H.CoordinatorService(first)
    t = InProcessTransport(svc)
    conns = {s.name: t.join(s.name, H.cert_der(pki, s.name)) for s in sites}
    for s in sites:  # every site joins round 1 and advertises its keys
        msg = t.poll(conns[s.name], wait_s=2.0)
        assert isinstance(msg, RoundStart) and msg.round == 1
        reply = s.handle(msg)
        assert reply is not None
        t.submit(conns[s.name], reply)
    svc.stop()
    first.close()  # the process dies here (nothing is finished or flushed beyond this)

    again = H.make_coordinator(cfg, pki, tmp_path / "run", train_s=30.0)
    assert again.round == 1  # round 1's index is spent
    with H.endpoint("inprocess", again, pki) as ep:
        done = H.run_sites(ep, sites, pki, timeout_s=25)  # no train deadline waited out
    again.close()
    assert done == [1] * len(H.SITES), done
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(ln["round"], ln["status"]) for ln in lines] == [(1, "lost"), (2, "complete")]
    events = [e.event for e in privacy.read_ledger(tmp_path / "run" / privacy.LEDGER_FILENAME)]
    assert isinstance(events[0], privacy.SkippedRound) and events[0].round == 1
    assert [e.round for e in events] == [1, 2]
    for s in sites:
        s.close()
        assert [
            e.round for e in privacy.read_ledger(tmp_path / s.name / "privacy_ledger.jsonl")
        ] == [2]
