"""Bounded abuse soak of a live deployment (loopback only; stops by itself).

    python -m benchmarks.deploy_abuse                 # 2 phases of 1.5 minutes, ~5 min total
    python -m benchmarks.deploy_abuse --minutes 3

A coordinator and three honest site processes (``secure-fml server`` / ``client``,
mutual TLS, DDGauss noise inside SecAgg, synthetic data) run rounds for ``--minutes``
twice:

- **clean**: the three honest sites alone;
- **abused**: the same, plus two attacker processes running every attack class of
  :mod:`benchmarks._abuse_clients` in a loop: ``mallory`` (an insider: its certificate
  is on the allowlist, and it never trains) and ``outsider`` (issued by the consortium
  CA, not on the allowlist).

The allowlist is the same in both phases (alpha, beta, gamma, mallory): rounds start
with the three honest sites once the start grace passes.

Measured per phase: the honest sites' rounds per minute (their own ledgers' releases
inside the window; the coordinator's complete rounds likewise), processes that exited
before the end (crashes), and whether each honest site's own ledger agrees with the
coordinator's ledger on the rounds it released in. Targets (issue 13): abused rate
>= 90% of the clean rate, zero crashed processes, identical ledgers. Writes
``benchmarks/results/deploy_abuse.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
HONEST = ("alpha", "beta", "gamma")
INSIDER = "mallory"
OUTSIDER = "outsider"
#: The allowlist: the insider is a member (its certificate is on it) that never trains.
ALLOWLIST = (*HONEST, INSIDER)

COORDINATOR_TOML = """\
[deploy]
address = "127.0.0.1:{port}"
pki_dir = "../pki"
sites = {sites}
min_sites = 3
start_grace_s = 0.5                  # the insider never joins: rounds start after this
run_dir = "run"
sample_shape = [60]
num_classes = 10
input_kind = "tabular"
train_timeout_s = 10
stage_timeout_s = 5
lease_s = 5

[model]
kind = "mlp"
hidden = [16]

[algorithm]
name = "metasgd"
inner_lr = 0.05

[server]
rounds = 100000
sampling = "all"

[privacy]
enabled = true
noise_multiplier = 1.0
clip_norm = 1.0

[secure_aggregation]
protocol = "secagg"
max_dropout_fraction = 0.2            # the README's
"""

SITE_TOML = """\
[site]
name = "{name}"
client = "{client}"
server = "127.0.0.1:{port}"
pki_dir = "../pki"

[data]
preset = "synthetic"

[model]
kind = "mlp"
hidden = [16]

[algorithm]
name = "metasgd"
inner_lr = 0.05
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _start(cwd: Path, name: str, args: list[str], *, nice: int = 0) -> subprocess.Popen[bytes]:
    log = open(cwd / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
    cmd = [sys.executable, *args]
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    p = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=log, env=_env())
    log.close()
    return p


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process (Linux ``/proc``), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    p = run_dir / "metrics.jsonl"
    if not p.exists():
        return []
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def _phase(
    work: Path, phase: str, *, minutes: float, pki: Path, attacker_nice: int
) -> dict[str, Any]:
    import privacy

    d = work / phase
    d.mkdir()
    port = _free_port()
    (d / "coordinator.toml").write_text(
        COORDINATOR_TOML.format(port=port, sites=json.dumps(list(ALLOWLIST)))
    )
    for i, name in enumerate(HONEST):
        (d / f"{name}.toml").write_text(
            SITE_TOML.format(name=name, client=f"client_{i:02d}", port=port)
        )
    cli = ["-m", "secure_fml.cli"]
    procs = {
        "coordinator": _start(d, "coordinator", [*cli, "server", "--config", "coordinator.toml"])
    }
    for name in HONEST:
        procs[name] = _start(d, name, [*cli, "client", "--config", f"{name}.toml"])
    run_dir = d / "run"
    deadline = time.monotonic() + 180
    # Warm-up: the window opens once round 2 is complete (imports, first joins, round 1).
    while len(_metrics(run_dir)) < 2:
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs.values()):
            raise SystemExit(f"{phase}: the deployment did not start (logs in {d})")
        time.sleep(0.2)
    window = minutes * 60
    attackers: dict[str, subprocess.Popen[bytes]] = {}
    if phase == "abused":
        for name in (INSIDER, OUTSIDER):
            attackers[f"attacker-{name}"] = _start(
                d,
                f"attacker-{name}",
                [
                    "-m",
                    "benchmarks._abuse_clients",
                    "--pki",
                    str(pki),
                    "--name",
                    name,
                    "--address",
                    f"127.0.0.1:{port}",
                    "--seconds",
                    str(window + 60),
                    "--out",
                    f"attacks-{name}.json",
                    "--ready-file",
                    f"ready-{name}",
                    "--stop-file",
                    "stop-attacks",
                ],
                nice=attacker_nice,
            )
        # The window opens once both attackers are up (their imports take seconds here).
        while not all((d / f"ready-{n}").exists() for n in (INSIDER, OUTSIDER)):
            if time.monotonic() > deadline:
                raise SystemExit(f"{phase}: the attackers did not start (logs in {d})")
            time.sleep(0.2)
    t0 = time.time()
    load0 = os.getloadavg()[0]
    cpu0 = {n: _cpu_s(p.pid) for n, p in {**procs, **attackers}.items()}
    crashed: dict[str, int] = {}
    while time.time() - t0 < window:
        for name, p in procs.items():
            if p.poll() is not None and name not in crashed:
                crashed[name] = int(p.returncode)
        time.sleep(0.5)
    t1 = time.time()
    cpu1 = {n: _cpu_s(p.pid) for n, p in {**procs, **attackers}.items()}
    load1 = os.getloadavg()[0]
    (d / "stop-attacks").touch()
    for p in attackers.values():
        p.wait(timeout=60)
    for name, p in procs.items():
        if p.poll() is not None and name not in crashed:
            crashed[name] = int(p.returncode)
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    exits: dict[str, int | None] = {}
    hung: list[str] = []  # did not exit within 20 s of SIGINT (then SIGKILLed)
    for name, p in {**procs, **attackers}.items():
        try:
            exits[name] = p.wait(timeout=20 if name in procs else 60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)
            hung.append(name)
            exits[name] = None

    lines = _metrics(run_dir)
    in_window = [ln for ln in lines if t0 <= ln["ts"] <= t1]
    coord = privacy.read_ledger(run_dir / privacy.LEDGER_FILENAME)
    last_charged = max((e.round for e in coord), default=0)
    per_site: dict[str, Any] = {}
    for name in HONEST:
        own = privacy.read_ledger(d / f"state-{name}" / privacy.LEDGER_FILENAME)
        own_rounds = {e.round for e in own}
        coord_rounds = {
            e.round for e in coord if name in (getattr(e.event, "client_ids", None) or ())
        }
        settled = {r for r in own_rounds if r <= last_charged}
        per_site[name] = {
            "releases": len(own_rounds),
            "releases_in_window": sum(1 for e in own if t0 <= _ts(e.timestamp) <= t1),
            "rounds_per_minute": round(
                sum(1 for e in own if t0 <= _ts(e.timestamp) <= t1) / (window / 60), 2
            ),
            "ledger_agrees": settled == coord_rounds,
            "only_in_site_ledger": sorted(settled - coord_rounds),
            "only_in_coordinator_ledger": sorted(coord_rounds - settled),
            "in_flight_at_stop": sorted(own_rounds - settled),
        }
    status_counts: dict[str, int] = {}
    for ln in in_window:
        status_counts[ln["status"]] = status_counts.get(ln["status"], 0) + 1
    attacks = {}
    for name in (INSIDER, OUTSIDER):
        path = d / f"attacks-{name}.json"
        if path.exists():
            attacks[name] = json.loads(path.read_text())
    # A crash: a process that exited during the window, or did not stop cleanly on SIGINT
    # (0: finished, 130: interrupted), or an attacker that failed.
    bad_exit = {
        n: c
        for n, c in exits.items()
        if n not in crashed and n not in hung and c not in (0, 130, -signal.SIGINT)
    }
    return {
        "phase": phase,
        "window_s": round(t1 - t0, 1),
        "rounds": status_counts,
        "max_round_s": max((ln.get("round_s", 0.0) for ln in in_window), default=None),
        "complete_rounds_per_minute": round(status_counts.get("complete", 0) / ((t1 - t0) / 60), 2),
        "honest_rounds_per_minute": round(
            sum(per_site[n]["rounds_per_minute"] for n in HONEST) / len(HONEST), 2
        ),
        "sites": per_site,
        "crashed_during_window": crashed,
        "bad_exits": bad_exit,
        "hung_on_sigint": hung,
        "exit_codes": exits,
        "last_charged_round": last_charged,
        # CPU seconds each process used inside the window (all share this machine's cores).
        "cpu_s_in_window": {
            n: round(cpu1[n] - c, 1)  # type: ignore[operator]
            for n, c in cpu0.items()
            if c is not None and cpu1.get(n) is not None
        },
        "load_average_1min": [round(load0, 2), round(load1, 2)],
        "attacks": attacks,
        "dir": str(d),
    }


def _nice_text(nice: int) -> str:
    if nice:
        return (
            f"The attackers ran at niceness {nice}: they get the CPU the deployment leaves "
            "idle, as attackers on machines of their own would spend their own CPU; what "
            "the coordinator spends refusing them stays on it (same process as the rounds)."
        )
    return (
        "The attackers ran at the deployment's own priority, so their own CPU use slows "
        "the honest sites too (a real attacker would spend its own machine's)."
    )


def _sum_cpu(phase: dict[str, Any], names: Any) -> float:
    return round(sum(phase["cpu_s_in_window"].get(n, 0.0) for n in names), 1)


def _md(res: dict[str, Any]) -> str:
    clean, abused = res["clean"], res["abused"]
    out = [
        "# Deployment abuse soak",
        "",
        f"Command: `{res['command']}` ({res['when']}).",
        "",
        f"Machine: {res['machine']}. Everything ran on this one machine over loopback: the "
        "coordinator, three site processes and, in the abused phase, two attacker processes "
        "share its cores. "
        + _nice_text(res.get("attacker_nice", 0))
        + " The figures are from one run each.",
        "",
        "Setup: coordinator + alpha, beta, gamma (honest sites), allowlist alpha, beta, "
        "gamma, mallory; mutual TLS, DDGauss noise inside SecAgg (noise multiplier 1, clip 1, "
        "the README's delta = 0.2), FedMeta(Meta-SGD) on a 16-unit MLP, synthetic data; "
        "deadlines train 10 s / stage 5 s / lease 5 s, start grace 0.5 s (mallory never "
        "joins, so each round starts with the three honest sites after it). The window "
        "opens when round 2 is complete.",
        "",
        "Abused phase: the insider holds mallory's certificate (on the allowlist); the "
        "outsider holds a CA-issued certificate that is not on the allowlist. Each attacker "
        "process runs, concurrently and in a loop: "
        "8 slowloris submits, 8 long polls (30 s waits, bogus connections), oversize "
        "(declared and 3 MiB) streams, malformed protobufs, a missing header, a bad "
        "checksum, another protocol version, impersonation, stale/replayed stage messages "
        "and a status flood.",
        "",
        "| | clean | abused | ratio |",
        "| --- | --- | --- | --- |",
        f"| honest sites' rounds/min (own ledgers) | {clean['honest_rounds_per_minute']} | "
        f"{abused['honest_rounds_per_minute']} | {res['ratio']:.3f} |",
        f"| coordinator's complete rounds/min | {clean['complete_rounds_per_minute']} | "
        f"{abused['complete_rounds_per_minute']} | |",
        f"| rounds by status in the window | {clean['rounds']} | {abused['rounds']} | |",
        f"| crashed processes | {len(clean['crashed_during_window']) + len(clean['bad_exits'])} | "
        f"{len(abused['crashed_during_window']) + len(abused['bad_exits'])} | |",
        f"| honest ledgers agree with the coordinator's | {res['ledgers_agree']['clean']} | "
        f"{res['ledgers_agree']['abused']} | |",
        f"| CPU s in the window: coordinator | {clean['cpu_s_in_window'].get('coordinator')} | "
        f"{abused['cpu_s_in_window'].get('coordinator')} | |",
        f"| CPU s in the window: honest sites | {_sum_cpu(clean, HONEST)} | "
        f"{_sum_cpu(abused, HONEST)} | |",
        f"| CPU s in the window: attackers | - | "
        f"{_sum_cpu(abused, [f'attacker-{n}' for n in (INSIDER, OUTSIDER)])} | |",
        f"| 1-min load average at window start / end | {clean['load_average_1min']} | "
        f"{abused['load_average_1min']} | |",
        "",
        "Targets: ratio >= 0.90 "
        + ("(met)" if res["targets"]["rate"] else "(**not met**)")
        + ", zero crashed processes "
        + ("(met)" if res["targets"]["no_crash"] else "(**not met**)")
        + ", identical ledgers "
        + ("(met)." if res["targets"]["ledgers"] else "(**not met**)."),
        "",
        "Status codes the attackers received (abused phase):",
        "",
    ]
    for name, a in abused["attacks"].items():
        out.append(f"- {name}: " + "; ".join(f"{k} {v}" for k, v in a["codes"].items()))
    refused = max(
        1,
        sum(
            n
            for a in abused["attacks"].values()
            for codes in a["codes"].values()
            for k, n in codes.items()
            if k != "OK"
        ),
    )
    win = abused["window_s"]
    extra = abused["cpu_s_in_window"].get("coordinator", 0.0) - clean["cpu_s_in_window"].get(
        "coordinator", 0.0
    )
    attackers = _sum_cpu(abused, [f"attacker-{n}" for n in (INSIDER, OUTSIDER)])
    cores = os.cpu_count() or 1
    out += [
        "",
        "## Reading",
        "",
        f"The attackers' requests were refused {refused} times in {win:.0f} s "
        f"({refused / win:.0f} per second); the coordinator spent {extra:.1f} CPU s more than "
        f"in the clean window doing so, and the two attacker processes used {attackers} CPU s "
        f"of the {cores * win:.0f} this {cores}-core machine had in the window (other "
        "sessions' work loaded it too: see the load averages). "
        + (
            "Every round in the abused window completed "
            f"(the longest took {abused.get('max_round_s') or 0:.2f} s, against a 5 s stage "
            "deadline)"
            if set(abused["rounds"]) <= {"complete"}
            else f"Rounds in the abused window: {abused['rounds']}"
        )
        + (
            " and no process crashed"
            if res["targets"]["no_crash"]
            else " and some processes crashed (see the JSON)"
        )
        + ": the outsider was refused before its streams were read (PERMISSION_DENIED), "
        "the insider's flood mostly at its per-identity cap (RESOURCE_EXHAUSTED) before any "
        "parsing, so neither held a worker the honest sites needed. As far as this run "
        "shows, what slowed the honest rounds is CPU: the attackers' own on this shared box, "
        f"and the coordinator's cost per refused request (about {1000 * extra / refused:.2f} "
        "ms of CPU: TLS, HTTP/2 and the check, in the same process as the rounds). A "
        "figure with the attackers on machines of their own would separate the two; this "
        "run cannot.",
        "",
        "Per site (abused phase): "
        + "; ".join(
            f"{n} {s['releases_in_window']} releases in the window, "
            f"ledger agrees {s['ledger_agrees']}"
            for n, s in abused["sites"].items()
        )
        + ".",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="bounded abuse soak of a live deployment")
    ap.add_argument("--minutes", type=float, default=1.5, help="measurement window per phase")
    ap.add_argument("--work", help="work directory (default: a new temporary one)")
    ap.add_argument("--no-write", action="store_true", help="do not write benchmarks/results")
    ap.add_argument("--render", action="store_true", help="rewrite the .md from the .json")
    ap.add_argument(
        "--attacker-nice",
        type=int,
        default=19,
        choices=range(20),
        metavar="0..19",
        help="scheduling niceness of the attacker processes (default 19: on this one "
        "machine they then run on CPU the deployment leaves idle, as attackers on machines "
        "of their own would; the coordinator's cost of refusing them stays on it). "
        "0: the attackers compete for the cores on equal terms",
    )
    args = ap.parse_args(argv)
    if args.render:
        (RESULTS / "deploy_abuse.md").write_text(
            _md(json.loads((RESULTS / "deploy_abuse.json").read_text()))
        )
        return 0
    from secure_fml.deploy import init_ca, issue_server, issue_site

    work = Path(args.work or tempfile.mkdtemp(prefix="deploy_abuse-"))
    work.mkdir(parents=True, exist_ok=True)
    pki = work / "pki"
    secret = os.urandom(16).hex().encode()  # a throw-away CA for this soak
    init_ca(pki, passphrase=secret)
    issue_server(pki, passphrase=secret)
    for name in (*ALLOWLIST, OUTSIDER):
        issue_site(pki, name, passphrase=secret)
    res: dict[str, Any] = {
        "command": "python -m benchmarks.deploy_abuse"
        + (f" --minutes {args.minutes:g}" if args.minutes != 1.5 else "")
        + (f" --attacker-nice {args.attacker_nice}" if args.attacker_nice != 19 else ""),
        "attacker_nice": args.attacker_nice,
        "when": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{platform.system()} {platform.release()}",
        "load_average_before": list(os.getloadavg()),
    }
    for phase in ("clean", "abused"):
        print(f"{phase}: {args.minutes:g} min ...", flush=True)
        res[phase] = _phase(
            work, phase, minutes=args.minutes, pki=pki, attacker_nice=args.attacker_nice
        )
        r = res[phase]
        print(
            f"{phase}: honest {r['honest_rounds_per_minute']} rounds/min, coordinator "
            f"{r['complete_rounds_per_minute']} complete/min, rounds {r['rounds']}, "
            f"crashed {r['crashed_during_window'] or 'none'}, bad exits {r['bad_exits'] or 'none'}",
            flush=True,
        )
    clean_rate = res["clean"]["honest_rounds_per_minute"]
    res["ratio"] = res["abused"]["honest_rounds_per_minute"] / clean_rate if clean_rate else 0.0
    res["ledgers_agree"] = {
        p: all(res[p]["sites"][n]["ledger_agrees"] for n in HONEST) for p in ("clean", "abused")
    }
    res["targets"] = {
        "rate": res["ratio"] >= 0.9,
        "no_crash": not any(
            res[p]["crashed_during_window"] or res[p]["bad_exits"] for p in ("clean", "abused")
        ),
        "ledgers": all(res["ledgers_agree"].values()),
    }
    print(f"ratio abused/clean {res['ratio']:.3f}; targets {res['targets']}", flush=True)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "deploy_abuse.json").write_text(json.dumps(res, indent=2) + "\n")
        (RESULTS / "deploy_abuse.md").write_text(_md(res))
        print(f"wrote {RESULTS / 'deploy_abuse.md'} and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
