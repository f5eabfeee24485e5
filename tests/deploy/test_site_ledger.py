"""Each site keeps its own ledger and budget, on real rounds with the real coordinator.

Five sites run DP + SecAgg rounds in-process (the same Site and Coordinator code as
over gRPC). Every site's own ledger holds one fsync'ed, hash-chained release per
round it contributed to, with the epsilon it computed itself against the
coordinator -- never below what the coordinator's ledger says for that site, since
the site assumes the fewest survivors its own policy allows. One site's budget
admits one round only: it contributes once, then refuses, stays up and the
federation goes on without it. ``secure-fml report`` renders a site's directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import privacy
from privacy import Adversary
from secure_fml.deploy import SitePolicy
from tests.deploy import _harness as H
from tests.deploy.test_site_policy import honest_start


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return H.make_pki(tmp_path_factory.mktemp("pki"), H.SITES)


def _budget_for_one_round(pki: Path, tmp: Path) -> float:
    """An epsilon between this site's epsilon after one round and after two."""
    cfg = H.small_config(dp=True)
    probe = H.make_site(cfg, pki, "alpha", "client_00", state_dir=tmp / "probe")
    e1 = probe.policy.admit(honest_start(pki, probe, round_=1), update_dimension=probe.dim)
    e2 = probe.policy.admit(honest_start(pki, probe, round_=2), update_dimension=probe.dim)
    probe.close()
    assert e1.event is not None and e2.event is not None
    eps = [
        privacy.adversary_epsilon(evs, adversary=Adversary.COORDINATOR, delta=1e-5).epsilon
        for evs in ([e1.event], [e1.event, e2.event])
    ]
    assert 0 < eps[0] < eps[1]
    return (eps[0] + eps[1]) / 2


@pytest.mark.slow
def test_sites_keep_their_own_ledgers_and_budgets(pki: Path, tmp_path: Path) -> None:
    budget = _budget_for_one_round(pki, tmp_path)
    cfg = H.small_config(dp=True, rounds=3)
    # A refusing site is a dropout at the first deadline: keep it short.
    coord = H.make_coordinator(cfg, pki, tmp_path / "run", train_s=4.0, stage_s=3.0)
    sites = []
    for i, n in enumerate(H.SITES):
        policy = SitePolicy(max_epsilon=budget) if n == "epsilon" else SitePolicy()
        sites.append(
            H.make_site(cfg, pki, n, f"client_0{i}", policy=policy, state_dir=tmp_path / n)
        )
    with H.endpoint("inprocess", coord, pki) as ep:
        done = H.run_sites(ep, sites, pki, timeout_s=120)
    coord.close()
    # The budgeted site stayed up to the end (its loop returned normally).
    assert done == [3, 3, 3, 3, 1], done
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [ln["status"] for ln in lines] == ["complete"] * 3
    assert [ln["contributors"] for ln in lines] == [5, 4, 4]

    coord_eps = privacy.read_ledger(tmp_path / "run" / privacy.LEDGER_FILENAME)
    per_client = privacy.adversary_epsilon(
        coord_eps, adversary=Adversary.COORDINATOR, delta=1e-5
    ).per_client
    assert per_client is not None
    for site in sites:
        site.close()
        entries = privacy.read_ledger(tmp_path / site.name / privacy.LEDGER_FILENAME)
        n_rounds = 1 if site.name == "epsilon" else 3
        assert [e.round for e in entries] == list(range(1, n_rounds + 1))
        own = privacy.adversary_epsilon(entries, adversary=Adversary.COORDINATOR, delta=1e-5)
        # Never less than the coordinator claims: the site assumes its policy's minimum.
        assert own.epsilon >= per_client[site.name] * (1 - 1e-9) > 0
        if site.name == "epsilon":
            assert own.epsilon <= budget
    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "secure_fml.cli",
            "report",
            str(tmp_path / "alpha"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "alpha" / "report.md").exists()


@pytest.mark.slow
def test_a_new_site_has_loaded_its_accountant_before_it_joins(tmp_path: Path) -> None:
    """The first epsilon imports the accountant's library (seconds on a loaded host): a
    site pays that while it is built, never out of its first round's training deadline
    (a CI run once lost round 1 of a live deployment to it). A fresh interpreter, since
    this one has imported everything already."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from tests.deploy import _harness as H\n"
        f"tmp = Path({str(tmp_path)!r})\n"
        "pki = H.make_pki(tmp / 'pki', ('alpha',))\n"
        "site = H.make_site(H.small_config(dp=True), pki, 'alpha', 'client_00',"
        " state_dir=tmp / 'alpha')\n"
        "print(sorted(m for m in sys.modules if m.startswith('opacus.accountants')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "opacus.accountants.analysis.rdp" in out.stdout, out.stdout
