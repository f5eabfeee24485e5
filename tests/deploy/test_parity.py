"""One engine: the same config as a simulation, as an in-process deployment and over real
gRPC + mTLS with five site processes gives the same ledger and the same model.

Synthetic data, an MLP, FedMeta(Meta-SGD), SecAgg with the distributed discrete Gaussian
(DDGauss) noise, 3 rounds, one client silent from the masked-input stage of round 2, and
the explicit insecure test seed (sampling, session ids, masks, encoding and noise derived
from it). The in-process runs are bit-identical; over gRPC the model may differ only by
float tolerance.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

import privacy
from aggregation import Stage
from secure_fml.config import Config, config_from_dict
from secure_fml.data import load_preset
from secure_fml.deploy import Site
from secure_fml.messages import EngineMessage, RoundStart, StageRequest
from secure_fml.pipeline import seeded_randomness
from secure_fml.simulation import InMemoryTransport, Simulation
from tests.deploy import _harness as H

REPO = Path(__file__).resolve().parents[2]
NAMES = ("client_00", "client_01", "client_02", "client_03", "client_04")
SILENT = ("client_01", Stage.MASKED_INPUT, 2)
SEED, INSECURE = 3, 9

RAW = {
    "data": {"preset": "synthetic", "client_fractions": [1.0, 0.0, 0.0]},
    "model": {"kind": "mlp", "hidden": [8]},
    "algorithm": {"name": "metasgd", "inner_lr": 0.05},
    "server": {"rounds": 3, "sampling": "all", "optimizer": "sgd", "lr": 0.5},
    "secure_aggregation": {
        "protocol": "secagg",
        "min_survivor_fraction": 0.66,
        "max_dropout_fraction": 0.2,
    },
    "privacy": {"enabled": True, "noise_multiplier": 1.0, "clip_norm": 1.0},
    "eval": {"every": 0},
    "run": {"seed": SEED, "insecure_seed": INSECURE},
}


def config() -> Config:
    return config_from_dict(RAW)


class _ScriptedDropout(InMemoryTransport):
    def silent_from(
        self, round_: int, participants: Sequence[str], stages: Sequence[Stage]
    ) -> dict[str, Stage]:
        name, stage, r = SILENT
        return {name: stage} if round_ == r else {}


def _simulate(tmp: Path) -> tuple[torch.Tensor, tuple[privacy.LedgerEntry, ...], list[dict]]:
    ds = load_preset("synthetic")
    ds = ds.with_clients([ds.client(n) for n in NAMES])
    sim = Simulation(config(), dataset=ds, run_dir=tmp, transport=_ScriptedDropout())
    sim.run(progress=False)
    return sim.state, privacy.read_ledger(tmp / privacy.LEDGER_FILENAME), sim.history


class _SilentSite(Site):
    def handle(self, message: EngineMessage):  # type: ignore[no-untyped-def]
        name, stage, r = SILENT
        if self.name == name and isinstance(message, RoundStart | StageRequest):
            at = message.first_stage if isinstance(message, RoundStart) else message.stage
            if message.round == r and at.value >= stage.value:
                return None
        return super().handle(message)


def _events(entries: Sequence[privacy.LedgerEntry]) -> list[object]:
    return [e.event for e in entries]


def _epsilon(entries: Sequence[privacy.LedgerEntry]) -> float:
    acc = privacy.Accountant("rdp")
    for e in entries:
        e.event.apply_to(acc)
    return float(acc.get_epsilon(1e-5))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return H.make_pki(tmp_path_factory.mktemp("pki"), NAMES)


def test_simulation_and_in_process_deployment_are_bit_identical(pki: Path, tmp_path: Path) -> None:
    theta_sim, ledger_sim, hist = _simulate(tmp_path / "sim")
    assert [ln["status"] for ln in hist] == ["complete"] * 3
    assert [ln["contributors"] for ln in hist] == [5, 4, 5]  # the scripted dropout

    cfg = config()
    coord = H.make_coordinator(cfg, pki, tmp_path / "dep", names=NAMES, stage_s=1.5)
    sites = []
    for n in NAMES:
        site = H.make_site(cfg, pki, n, n, seed=SEED, randomness=seeded_randomness(INSECURE, n))
        site.__class__ = _SilentSite
        sites.append(site)
    with H.endpoint("inprocess", coord, pki) as ep:
        H.run_sites(ep, sites, pki)
    coord.close()
    assert coord.round == 3
    ledger_dep = privacy.read_ledger(tmp_path / "dep" / privacy.LEDGER_FILENAME)
    assert _events(ledger_dep) == _events(ledger_sim)
    assert len(ledger_sim) == 3
    assert all(isinstance(e.event, privacy.DistributedDiscreteGaussianRelease) for e in ledger_sim)
    eps = [_epsilon(x) for x in (ledger_sim, ledger_dep)]
    assert eps[0] == eps[1] > 0
    assert torch.equal(coord.state, theta_sim)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_the_same_run_over_grpc_with_five_site_processes(pki: Path, tmp_path: Path) -> None:
    theta_sim, ledger_sim, _ = _simulate(tmp_path / "sim")
    cfg = config()
    coord = H.make_coordinator(cfg, pki, tmp_path / "dep", names=NAMES, stage_s=3.0, train_s=60.0)
    with H.endpoint("grpc", coord, pki) as ep:
        procs = []
        for n in NAMES:
            toml = tmp_path / f"{n}.toml"
            toml.write_text(
                f"""[site]
name = "{n}"
client = "{n}"
server = "127.0.0.1:{ep.port}"
pki_dir = "{pki}"
seed = {SEED}
poll_wait_s = 0.5
reconnect_backoff_max_s = 0.25

[data]
preset = "synthetic"

[model]
kind = "mlp"
hidden = [8]

[algorithm]
name = "metasgd"
inner_lr = 0.05

[run]
seed = {SEED}
insecure_seed = {INSECURE}
"""
            )
            args = ["--config", str(toml)]
            if n == SILENT[0]:
                args += ["--silent-from", f"{SILENT[1].name.lower()}:{SILENT[2]}"]
            log = open(tmp_path / f"{n}.log", "wb")  # noqa: SIM115 - closed below
            env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
            procs.append(
                (
                    subprocess.Popen(
                        [sys.executable, "-m", "tests.deploy._site_process", *args],
                        stdout=log,
                        stderr=log,
                        env=env,
                    ),
                    log,
                )
            )
        try:
            end = time.monotonic() + 200
            while not coord.finished and time.monotonic() < end:
                time.sleep(0.2)
            for p, _ in procs:
                p.wait(timeout=60)
        finally:
            for p, log in procs:
                if p.poll() is None:
                    p.kill()
                log.close()
    coord.close()
    assert coord.round == 3, [(tmp_path / f"{n}.log").read_text()[-2000:] for n in NAMES]
    ledger_dep = privacy.read_ledger(tmp_path / "dep" / privacy.LEDGER_FILENAME)
    assert _events(ledger_dep) == _events(ledger_sim)
    torch.testing.assert_close(coord.state, theta_sim, rtol=1e-5, atol=1e-6)
    assert [ln["contributors"] for ln in coord.history] == [5, 4, 5]
    np.testing.assert_array_equal(
        np.asarray([ln["round"] for ln in coord.history]), np.arange(1, 4)
    )
