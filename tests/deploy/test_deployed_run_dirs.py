"""A real deployment (coordinator + 3 site processes, mTLS, DDGauss in SecAgg) from the
README's files, then what its operators read:

- every line each process wrote (stdout and stderr, JSON log mode) parses as one JSON
  object naming its party -- gRPC's C-core lines included (the coordinator runs with
  ``GRPC_VERBOSITY=INFO`` so that the C core does write some);
- a site holding a certificate from another CA exits with "certificate rejected by the
  coordinator", as a JSON record too;
- ``secure-fml report`` renders the coordinator's run directory and a site's state
  directory; ``secure-fml audit`` on the coordinator's directory runs the audits that
  need no data and names the ones it cannot run there; on a site's directory it refuses
  in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from secure_fml.deploy import init_ca, issue_server, issue_site
from tests.deploy._harness import CA_PASSPHRASE
from tests.deploy.test_e2e import Procs, _cli, _free_port, _readme_toml, _set

SITES = {"alpha": "client_00", "beta": "client_01", "gamma": "client_02"}


@pytest.fixture
def procs(tmp_path: Path):  # type: ignore[no-untyped-def]
    ps = Procs(tmp_path)
    try:
        yield ps
    finally:
        ps.cleanup()


def _json_lines(path: Path) -> list[dict]:
    out = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError:
            raise AssertionError(f"{path.name} line {n} is not JSON: {raw!r}") from None
        assert isinstance(rec, dict), (path.name, n, raw)
        out.append(rec)
    return out


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    return subprocess.run(
        _cli(*args), cwd=cwd, capture_output=True, text=True, timeout=180, env=env
    )


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_deployed_logs_are_json_and_run_dirs_report_and_audit(
    tmp_path: Path, procs: Procs, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = tmp_path / "pki"
    init_ca(pki, passphrase=CA_PASSPHRASE)
    issue_server(pki, passphrase=CA_PASSPHRASE)
    for name in SITES:
        issue_site(pki, name, passphrase=CA_PASSPHRASE)
    other = tmp_path / "other-ca"
    init_ca(other, passphrase=CA_PASSPHRASE)
    issue_site(other, "alpha", passphrase=CA_PASSPHRASE)
    foreign = tmp_path / "foreign"  # the consortium's ca.pem, another CA's alpha certificate
    (foreign / "pki").mkdir(parents=True)
    shutil.copy(pki / "ca.pem", foreign / "pki" / "ca.pem")
    for suffix in ("pem", "key", "secagg.key"):
        shutil.copy(other / f"site-alpha.{suffix}", foreign / "pki" / f"site-alpha.{suffix}")

    addr = f'"127.0.0.1:{_free_port()}"'
    coord = _readme_toml("coordinator.toml")
    for key, value in (
        ("address", addr),
        ("sample_shape", "[60]"),
        ("num_classes", "10"),
        ("input_kind", '"tabular"'),
        ("start_grace_s", "30"),
    ):
        coord = _set(coord, "deploy", key, value)
    coord = _set(coord, "server", "rounds", "2")
    (tmp_path / "coordinator.toml").write_text(coord)
    site_t = _set(_readme_toml("alpha.toml"), "site", "server", addr)
    site_t = _set(site_t, "data", "preset", '"synthetic"')
    site_t = _set(site_t, "data", "root", '""')
    for name, client in SITES.items():
        t = _set(site_t, "site", "name", f'"{name}"')
        t = _set(t, "site", "client", f'"{client}"')
        t = _set(t, "site", "download", f'"{name}-model.pt"')
        (tmp_path / f"{name}.toml").write_text(t)
    (foreign / "alpha.toml").write_text(_set(site_t, "site", "client", '"client_03"'))

    # The operator's own GRPC_VERBOSITY wins: INFO makes the C core log (handshakes).
    monkeypatch.setenv("GRPC_VERBOSITY", "INFO")
    server = procs.start("server", "server", "--config", "coordinator.toml")
    monkeypatch.delenv("GRPC_VERBOSITY")
    for name in SITES:
        procs.start(name, "client", "--config", f"{name}.toml")
    intruder = procs.start("foreign", "client", "--config", str(foreign / "alpha.toml"))
    assert intruder.wait(timeout=120) == 2, procs.log("foreign")[-2000:]
    for name in SITES:
        assert procs.procs[name].wait(timeout=180) == 0, procs.log(name)[-3000:]
    assert server.wait(timeout=60) == 0, procs.log("server")[-3000:]

    # Every line of every process is JSON and names its party.
    for name in SITES:
        recs = _json_lines(tmp_path / f"{name}.log")
        assert {r.get("site") for r in recs if "level" in r} == {name}, name
        assert recs[-1] == {"site": name, "rounds": 2, "model": f"{name}-model.pt"}
    recs = _json_lines(tmp_path / "server.log")
    logs = [r for r in recs if "level" in r]
    assert all(r.get("site") in {"coordinator", *SITES} for r in logs)
    assert any(r["site"] == "coordinator" for r in logs)
    core = [r for r in logs if r["logger"] == "grpc.core"]
    assert core and all(r.get("source") for r in core), "no C-core line was captured"
    assert recs[-1]["finished"] is True
    recs = _json_lines(tmp_path / "foreign.log")
    assert all(r.get("site") == "alpha" for r in recs[1:]), recs  # named once its config is read
    errors = [r for r in recs if r.get("level") == "ERROR"]
    assert errors and "certificate rejected by the coordinator" in errors[-1]["msg"], recs[-3:]

    # The coordinator's run directory and a site's state directory, as simulation ones.
    run_dir = tmp_path / "runs" / "deploy"
    rep = _run(
        "report", str(run_dir), "--out", str(tmp_path / "rep"), "--no-progress", cwd=tmp_path
    )
    assert rep.returncode == 0, rep.stderr
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["run"]["kind"] == "deployment" and report["ledger"]["releases"] == 2
    assert set(report["per_client_epsilon"]) == set(SITES)
    # Not the coordinator config's default [data]: the sites' data never reaches it.
    assert report["algorithm"]["dataset"] == "each site's own data (deployment)"
    assert "client_fractions" not in report["clients"]
    rep = _run(
        "report", "state-alpha", "--out", str(tmp_path / "site-rep"), "--no-progress", cwd=tmp_path
    )
    assert rep.returncode == 0, rep.stderr
    assert (tmp_path / "site-rep" / "report.md").exists()

    audit = _run("audit", str(run_dir), "--out", str(tmp_path / "audit"), "--quiet", cwd=tmp_path)
    assert audit.returncode == 3, audit.stdout + audit.stderr
    verdicts = {
        r["audit"]: (r["verdict"], r["summary"])
        for r in json.loads((tmp_path / "audit" / "audit.json").read_text())["results"]
    }
    assert verdicts["malicious_server"][0] == "pass", verdicts
    for name in ("canary_epsilon", "one_run", "membership_inference", "gradient_inversion"):
        verdict, summary = verdicts[name]
        assert verdict == "inconclusive" and summary.startswith("not run: it retrains"), name
    audit = _run("audit", "state-alpha", "--quiet", cwd=tmp_path)
    assert audit.returncode == 2
    assert audit.stderr.count("\n") == 1 and "site's state directory" in audit.stderr
