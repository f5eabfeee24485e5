"""Coordinator + sites over both transports: the same tests in-process and over mTLS gRPC."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import privacy
from secure_fml.checkpoint import load_checkpoint
from tests.deploy import _harness as H

TRANSPORTS = ["inprocess", "grpc"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return H.make_pki(tmp_path_factory.mktemp("pki"), (*H.SITES, "mallory"))


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_dp_secagg_rounds_complete_and_charge_once(kind: str, pki: Path, tmp_path: Path) -> None:
    cfg = H.small_config(dp=True, rounds=2)
    coord = H.make_coordinator(cfg, pki, tmp_path)
    theta0 = coord.state.clone()
    sites = [H.make_site(cfg, pki, n, f"client_0{i}") for i, n in enumerate(H.SITES)]
    with H.endpoint(kind, coord, pki) as ep:
        done = H.run_sites(ep, sites, pki)
    assert done == [2, 2, 2, 2], done
    assert coord.round == 2 and coord.finished
    assert not np.allclose(coord.state.numpy(), theta0.numpy())
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [ln["round"] for ln in lines] == [1, 2]
    assert all(ln["status"] == "complete" and ln["dropped"] == 0 for ln in lines)
    entries = privacy.read_ledger(tmp_path / privacy.LEDGER_FILENAME)
    assert [e.event.round for e in entries] == [1, 2]
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck.round == 2 and ck.extra["ledger_head"]["entries"] == 2
    coord.close()
