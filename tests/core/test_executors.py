"""Client executors: the process pool runs the same rounds as the sequential executor.

Real worker processes (forkserver), real SecAgg+ sessions inside them, a real
SIGKILL of a worker in the middle of a round.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aggregation import Stage
from privacy import SamplingMode
from privacy.errors import ConfigError, PolicyViolation
from secure_fml import executors, simulation
from secure_fml.config import Config, config_from_dict
from secure_fml.executors import PoolExecutor, SequentialExecutor
from secure_fml.messages import EngineMessage, RoundStart, StageRequest
from secure_fml.simulation import InMemoryTransport, Simulation

warnings.filterwarnings("ignore", message="INSECURE TEST MODE", category=RuntimeWarning)


def _cfg(executor: str, *, clients: int = 12, workers: int = 2, **over: Any) -> Config:
    return config_from_dict(_raw_cfg(executor, clients=clients, workers=workers, **over))


def _raw_cfg(
    executor: str, *, clients: int = 12, workers: int | None = 2, **over: Any
) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "data": {
            "preset": "synthetic",
            "options": {"num_clients": clients, "max_samples": 60},
            "client_fractions": [1.0, 0.0, 0.0],
        },
        "model": {"kind": "mlp", "hidden": [16]},
        "algorithm": {"name": "fedavg"},
        "server": {"rounds": 3, "sampling": "all", "clients_per_round": None},
        "eval": {"every": 0},
        "privacy": {
            "enabled": True,
            "noise_multiplier": 1.0,
            "clip_norm": 1.0,
            "delta": 1e-3,
        },
        "secure_aggregation": {"protocol": "secagg+", "dropout_fraction": 0.1},
        "run": {"insecure_seed": 5, "threads": 1},
        "simulation": {"executor": executor, "workers": workers},
    }
    for section, values in over.items():
        raw.setdefault(section, {}).update(values)
    return raw


def _ledger(run_dir: Path) -> list[tuple[str, Any]]:
    lines = (run_dir / "privacy_ledger.jsonl").read_text().splitlines()
    return [(e["type"], e["event"]) for e in map(json.loads, lines)]


def _rounds(sim: Simulation) -> list[tuple[Any, ...]]:
    return [
        (h["round"], h["status"], h.get("clients"), h["contributors"], h.get("train_loss"))
        for h in sim.history
    ]


@pytest.mark.slow
def test_pool_and_sequential_give_the_same_state_ledger_and_rounds(tmp_path: Path) -> None:
    runs = {}
    for kind in ("sequential", "pool"):
        sim = Simulation(_cfg(kind), run_dir=tmp_path / kind)
        expected = PoolExecutor if kind == "pool" else SequentialExecutor
        assert isinstance(sim.executor, expected)
        # The pool's workers load the partitions: its driver holds an outline only.
        assert sim.outlined == (kind == "pool")
        res = sim.run(progress=False)
        runs[kind] = (res.state.numpy().copy(), _ledger(tmp_path / kind), _rounds(sim))
    (s_state, s_ledger, s_rounds), (p_state, p_ledger, p_rounds) = runs["sequential"], runs["pool"]
    # Three SecAgg+ rounds, each with a dropout the protocol recovered (12 participants,
    # 11 contributions when the dropout came before its masked input).
    assert [r[1] for r in s_rounds] == ["complete"] * 3
    assert any(r[3] < 12 for r in s_rounds)
    assert [t for t, _ in s_ledger] == ["DistributedDiscreteGaussianRelease"] * 3
    assert np.array_equal(s_state, p_state)
    assert s_ledger == p_ledger
    assert s_rounds == p_rounds


@pytest.mark.slow
def test_ray_gives_the_same_state_ledger_and_rounds_as_sequential(tmp_path: Path) -> None:
    ray = pytest.importorskip(
        "ray", reason="Ray is the optional extra secure-fml[ray] (an ~80 MB wheel); not installed"
    )
    from secure_fml.executors import RayExecutor

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        runs = {}
        for kind in ("sequential", "ray"):
            sim = Simulation(_cfg(kind), run_dir=tmp_path / kind)
            assert isinstance(sim.executor, RayExecutor if kind == "ray" else SequentialExecutor)
            assert sim.outlined == (kind == "ray")
            res = sim.run(progress=False)
            runs[kind] = (res.state.numpy().copy(), _ledger(tmp_path / kind), _rounds(sim))
        (s_state, s_ledger, s_rounds), (r_state, r_ledger, r_rounds) = runs.values()
        assert any(r[3] < 12 for r in s_rounds)
        assert np.array_equal(s_state, r_state)
        assert s_ledger == r_ledger
        assert s_rounds == r_rounds
    finally:
        ray.shutdown()


def test_which_drivers_hold_an_outline() -> None:
    from secure_fml.simulation import driver_outlines

    # auto on a small round picks the sequential executor: the driver holds it all.
    small = Simulation(_cfg("auto", clients=12))
    assert small.executor_kind() == "sequential" and not small.outlined
    assert len(small.dataset.clients) == 12
    small.close()
    pool = Simulation(_cfg("pool", clients=12))
    assert pool.outlined and len(pool.train_ids) == 12 and len(pool._dataset.clients) == 1
    pool.close()
    assert not driver_outlines(_cfg("sequential"))
    # A preset read from files is outlined only when the pool or Ray is asked for.
    femnist = {"data": {"preset": "femnist"}}
    assert not driver_outlines(_cfg("auto", **femnist))
    assert driver_outlines(_cfg("pool", **femnist))
    # Record-level DP runs sequentially: never an outline.
    record = {"privacy": {"unit": "record", "record_noise_multiplier": 1.0}}
    assert not driver_outlines(_cfg("pool", **record))


@pytest.mark.slow
def test_an_outlined_driver_evaluates_and_trains_as_one_holding_the_dataset(
    tmp_path: Path,
) -> None:
    # Validation and test clients (held by the outline), a plain protocol, evaluation
    # every round: the pool run with an outlined driver equals the sequential run
    # holding the whole dataset, round for round and in its final test metrics.
    over = {
        "data": {"client_fractions": [0.5, 0.25, 0.25]},
        "privacy": {"enabled": False},
        "secure_aggregation": {"protocol": "none", "dropout_fraction": 0.0},
        "eval": {"every": 1},
        "server": {"rounds": 2},
    }
    runs = {}
    for kind in ("sequential", "pool"):
        sim = Simulation(_cfg(kind, clients=16, **over), run_dir=tmp_path / kind)
        assert sim.outlined == (kind == "pool")
        res = sim.run(progress=False)
        runs[kind] = (res.state.numpy().copy(), _rounds(sim), sim.history, res.summary)
        if kind == "pool":
            # The driver holds the 8 evaluation clients and one training client.
            assert len(sim._dataset.clients) == 9 and len(sim.train_ids) == 8
            with pytest.raises(ConfigError, match="outline"):
                _ = sim.dataset
            with pytest.raises(ConfigError, match="outline"):
                _ = sim.split
            with pytest.raises(ConfigError, match="workers hold"):
                sim.batch(sim.train_ids[-1])
    (s_state, s_rounds, s_hist, s_sum), (p_state, p_rounds, p_hist, p_sum) = runs.values()
    assert np.array_equal(s_state, p_state)
    assert s_rounds == p_rounds
    key = "val_personalized_accuracy"
    assert [h[key] for h in s_hist] == [h[key] for h in p_hist]
    assert s_sum["test"] == p_sum["test"] and s_sum["clients"] == p_sum["clients"]
    assert s_sum["baselines"] == p_sum["baselines"]


def _pool_worker_pid(ex: Any) -> int:
    assert isinstance(ex, PoolExecutor)
    pid = ex.pids()[0]
    assert pid is not None
    return pid


class _KillWorkerMidRound(InMemoryTransport):
    """Kills (SIGKILL) worker 0 (a pool process or a Ray actor's process) when round 2's
    first stage request is delivered: the worker holds sessions of that round's clients,
    which have answered a stage."""

    def __init__(
        self,
        sim_ref: dict[str, Simulation],
        worker_pid: Callable[[Any], int] = _pool_worker_pid,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.sim_ref = sim_ref
        self.worker_pid = worker_pid
        self.killed: tuple[int, list[str]] | None = None

    def delivers(self, client: str, message: EngineMessage) -> bool:
        if (
            self.killed is None
            and isinstance(message, StageRequest)
            and message.round == 2
            and message.stage is Stage.SHARE_KEYS
        ):
            sim = self.sim_ref["sim"]
            ex: Any = sim.executor
            pid = self.worker_pid(ex)  # checks the executor's kind
            plan = sim.engine.last_plan
            assert plan is not None
            victims = [c for c in plan.participants if ex.worker_of(c) == 0]
            os.kill(pid, signal.SIGKILL)
            self.killed = (pid, victims)
        return super().delivers(client, message)


@pytest.mark.slow
def test_a_killed_worker_turns_its_clients_into_recovered_dropouts(tmp_path: Path) -> None:
    # Four workers, 12 clients: the killed worker holds 3 of them (25%), within the
    # round's tolerated dropout fraction of 0.3.
    cfg = _cfg(
        "pool",
        workers=4,
        secure_aggregation={"dropout_fraction": 0.0, "max_dropout_fraction": 0.3},
    )
    ref: dict[str, Simulation] = {}
    transport = _KillWorkerMidRound(ref)
    sim = Simulation(cfg, run_dir=tmp_path, transport=transport)
    ref["sim"] = sim
    res = sim.run(progress=False)
    assert transport.killed is not None
    pid, victims = transport.killed
    assert len(victims) == 3
    ex = sim.executor
    assert isinstance(ex, PoolExecutor)
    assert ex.replaced == 1 and pid not in ex.pids()
    r1, r2, r3 = sim.history
    assert r1["status"] == r2["status"] == r3["status"] == "complete"
    assert r1["contributors"] == 12 and r3["contributors"] == 12
    # Round 2 completes without the killed worker's clients: they are the dropouts the
    # protocol recovered, and the ledger names exactly the others as contributors.
    assert r2["contributors"] == 9 and r2["dropped"] == 3
    events = [e for t, e in _ledger(tmp_path) if e.get("round") == 2 and "client_ids" in e]
    assert len(events) == 1
    assert set(events[0]["client_ids"]) == set(r2["clients"]) - set(victims)
    assert np.isfinite(res.state.numpy()).all()


@pytest.mark.slow
def test_a_killed_ray_actor_turns_its_clients_into_recovered_dropouts(tmp_path: Path) -> None:
    # The Ray fault path: the same kill as for the pool, of actor 0's process.
    ray = pytest.importorskip(
        "ray", reason="Ray is the optional extra secure-fml[ray] (an ~80 MB wheel); not installed"
    )
    from secure_fml.executors import RayExecutor

    def actor_pid(ex: Any) -> int:
        assert isinstance(ex, RayExecutor)
        return int(ray.get(ex.actor(0).pid.remote()))

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        cfg = _cfg(
            "ray",
            workers=4,
            secure_aggregation={"dropout_fraction": 0.0, "max_dropout_fraction": 0.3},
        )
        ref: dict[str, Simulation] = {}
        transport = _KillWorkerMidRound(ref, actor_pid)
        sim = Simulation(cfg, run_dir=tmp_path, transport=transport)
        ref["sim"] = sim
        res = sim.run(progress=False)
        assert transport.killed is not None
        _pid, victims = transport.killed
        assert len(victims) == 3
        ex = sim.executor
        assert isinstance(ex, RayExecutor) and ex.replaced == 1
        r1, r2, r3 = sim.history
        assert r1["status"] == r2["status"] == r3["status"] == "complete"
        assert r1["contributors"] == 12 and r3["contributors"] == 12  # a fresh actor serves
        assert r2["contributors"] == 9 and r2["dropped"] == 3
        events = [e for t, e in _ledger(tmp_path) if e.get("round") == 2 and "client_ids" in e]
        assert len(events) == 1
        assert set(events[0]["client_ids"]) == set(r2["clients"]) - set(victims)
        assert np.isfinite(res.state.numpy()).all()
    finally:
        ray.shutdown()


def test_executor_config_is_validated(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"simulation\.executor"):
        config_from_dict({"simulation": {"executor": "threads"}})
    with pytest.raises(ConfigError, match=r"simulation\.workers"):
        config_from_dict({"simulation": {"workers": 0}})
    with pytest.raises(ConfigError, match=r"simulation\.ray_address needs"):
        config_from_dict({"simulation": {"ray_address": "auto"}})
    with pytest.raises(ConfigError, match=r"simulation\.ray_address must be"):
        config_from_dict({"simulation": {"executor": "ray", "ray_address": "head-node"}})
    ok = config_from_dict({"simulation": {"executor": "ray", "ray_address": "10.0.0.1:6379"}})
    assert ok.simulation.ray_address == "10.0.0.1:6379"


def test_auto_picks_the_pool_for_large_rounds_on_idle_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from secure_fml import executors
    from secure_fml.simulation import POOL_MIN_CLIENTS

    big = POOL_MIN_CLIENTS
    quiet = SequentialExecutor(lambda name: None)  # type: ignore[arg-type, return-value]
    sim = Simulation(_cfg("auto", clients=big, workers=2), executor=quiet)
    base = sim.config

    def kind(per_round: int | None, workers: int, idle: float) -> str:
        monkeypatch.setattr(executors, "idle_cores", lambda: idle)
        server = dataclasses.replace(
            base.server,
            sampling=SamplingMode.FULL if per_round is None else SamplingMode.FIXED_SIZE,
            clients_per_round=per_round,
        )
        simulation = dataclasses.replace(base.simulation, workers=workers)
        sim.config = dataclasses.replace(base, server=server, simulation=simulation)
        return sim.executor_kind()

    assert kind(None, 2, idle=1.5) == "pool"
    assert kind(big - 1, 2, idle=1.5) == "sequential"  # small rounds: no start-up cost
    assert kind(None, 1, idle=1.5) == "sequential"  # one worker is no pool
    assert kind(None, 2, idle=0.5) == "sequential"  # busy cores: nothing to gain
    small = Simulation(_cfg("auto", clients=8))
    assert isinstance(small.executor, SequentialExecutor)


def test_pool_refuses_what_it_cannot_run_like_the_driver() -> None:
    record = _cfg(
        "pool",
        privacy={"unit": "record", "record_noise_multiplier": 1.0},
        secure_aggregation={"protocol": "none", "dropout_fraction": 0.0},
    )
    with pytest.raises(ConfigError, match="record-level"):
        Simulation(record)
    with pytest.raises(ConfigError, match="custom"):
        Simulation(_cfg("pool"), client_factory=lambda name: None)  # type: ignore[arg-type, return-value]
    # auto never picks the pool for them
    auto = _cfg("auto", clients=80)
    sim = Simulation(auto, client_factory=lambda name: None)  # type: ignore[arg-type, return-value]
    assert isinstance(sim.executor, SequentialExecutor)


TINY_CLI = [
    "simulate",
    "--preset",
    "synthetic",
    "--set",
    "data.options={num_clients = 12, min_samples = 20, max_samples = 40, dim = 6, num_classes = 3}",
    "--set",
    "eval.local_only_steps=0",
    "--set",
    "model.hidden=[8]",
    "--rounds",
    "2",
    "--no-progress",
]


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str], *names: str) -> None:
    from secure_fml.cli import main

    try:
        rc = main(argv)
    except SystemExit as e:
        rc = int(e.code or 0)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), (rc, err)
    for name in names:
        assert name in err[0], (name, err[0])


def test_cli_executor_flags_are_validated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--out", str(tmp_path), "--name", "r"]
    _one_line_error([*TINY_CLI, *out, "--workers", "0"], capsys, "simulation.workers")
    _one_line_error([*TINY_CLI, *out, "--ray-address", "auto"], capsys, "simulation.ray_address")
    _one_line_error([*TINY_CLI, *out, "--executor", "threads"], capsys, "--executor")
    try:
        import ray  # noqa: F401
    except ImportError:
        _one_line_error([*TINY_CLI, *out, "--executor", "ray"], capsys, "secure-fml[ray]")


@pytest.mark.slow
def test_cli_simulate_with_the_pool(tmp_path: Path) -> None:
    from secure_fml.cli import main

    argv = [*TINY_CLI, "--out", str(tmp_path), "--name", "p", "--executor", "pool"]
    assert main([*argv, "--workers", "2"]) == 0
    cfg = json.loads((tmp_path / "p" / "config.json").read_text())
    assert cfg["simulation"] == {"executor": "pool", "workers": 2, "ray_address": None}
    lines = (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()
    rounds = [json.loads(ln) for ln in lines if '"round"' in ln]
    assert [r["status"] for r in rounds if "status" in r] == ["complete", "complete"]
    # The workers reported every client's update (train loss reaches the metrics).
    assert all(r["train_loss"] is not None for r in rounds if "status" in r)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pool", "ray"])
def test_a_rounds_model_is_broadcast_once_and_its_roster_goes_to_each_worker_once(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunks of 4 jobs: each worker gets several chunks of round starts per round, all
    # sharing the round's roster and model. The roster goes to a worker with its first
    # chunk of the round only; the later chunks refer to it. The model goes through no
    # message at all: once per round into shared memory (the pool) or Ray's object
    # store. The round still computes what the sequential executor computes.
    if kind == "ray":
        ray = pytest.importorskip(
            "ray", reason="Ray is the optional extra secure-fml[ray] (an ~80 MB wheel)"
        )
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    monkeypatch.setattr(simulation, "_REPLY_CHUNK", 4)
    sent: list[tuple[int, int]] = []  # (round, roster size) of every roster sent
    copies: list[int] = []  # per message: the model's bytes found in head and body
    refs: list[tuple[int, Any]] = []  # (round, the model reference of every head)
    broadcast: list[bytes] = []  # one entry per broadcast (block name / model bytes)
    pack = executors._pack

    def spy(descriptors: Any, jobs: Any, context: Any, *, model: Any) -> Any:
        msg = pack(descriptors, jobs, context, model=model)
        if msg[1] is not None:
            roster, ref, _ = pickle.loads(msg[1])
            sent.append((jobs[0][1].round, len(roster)))
            refs.append((jobs[0][1].round, ref))
        if context is not None:
            raw = context[1].tobytes()
            copies.append((msg[1] or b"").count(raw) + msg[2].count(raw))
        return msg

    monkeypatch.setattr(executors, "_pack", spy)
    if kind == "pool":
        new_block = executors._new_block

        def block_spy(nbytes: int) -> Any:
            block = new_block(nbytes)
            broadcast.append(block.name.encode())
            return block

        monkeypatch.setattr(executors, "_new_block", block_spy)
    else:
        put = ray.put

        def put_spy(value: Any, **kw: Any) -> Any:
            broadcast.append(np.asarray(value).tobytes())
            return put(value, **kw)

        monkeypatch.setattr(ray, "put", put_spy)
    over: dict[str, Any] = {
        "secure_aggregation": {"protocol": "none"},
        "privacy": {"enabled": False},
    }
    states = {}
    try:
        for k in ("sequential", kind):
            sim = Simulation(_cfg(k, clients=24, **over), run_dir=tmp_path / k)
            states[k] = sim.run(progress=False).state.numpy().copy()
    finally:
        if kind == "ray":
            ray.shutdown()
    assert sorted(sent) == [(r, 24) for r in (1, 1, 2, 2, 3, 3)]
    assert len(copies) > 6 and copies == [0] * len(copies)  # no message carries the model
    # One broadcast per round, whatever the number of workers and chunks.
    assert len(broadcast) == 3
    if kind == "pool":
        # The heads name the round's block; both workers of a round name the same one.
        names = {r: {ref.name for rr, ref in refs if rr == r} for r in (1, 2, 3)}
        assert all(len(v) == 1 for v in names.values())
        assert len(set().union(*names.values())) == 3
        # Every block is unlinked once its round is over (the last one at close).
        for name in set().union(*names.values()):
            with pytest.raises(FileNotFoundError):
                SharedMemory(name=name)
    else:
        assert all(ref is None for _, ref in refs)  # the model came beside the message
    assert np.array_equal(states["sequential"], states[kind])


def test_a_shared_model_reads_back_bit_exact_and_read_only() -> None:
    shared = executors._SharedModels()
    model = np.random.default_rng(0).standard_normal(1001).astype(np.float32)
    try:
        ref = shared.ref(model)
        assert isinstance(ref, executors._SharedArray)
        assert shared.ref(model) is ref  # one block per model (per round)
        clients = executors._WorkerClients.__new__(executors._WorkerClients)
        clients.context = None
        _, head, body = executors._pack([], [], (("peer",), model, "settings"), model=ref)
        assert head is not None and model.tobytes() not in head + body
        clients.packed(head, body)
        roster, got, settings = clients.context  # type: ignore[misc]
        assert (roster, settings) == (("peer",), "settings")
        assert got.dtype == model.dtype and got.tobytes() == model.tobytes()
        assert not got.flags.writeable
        other = model + 1
        assert shared.ref(other).name != ref.name  # type: ignore[union-attr]
        with pytest.raises(FileNotFoundError):
            SharedMemory(name=ref.name)  # the previous round's block is gone
    finally:
        shared.release()


class _Refusing(executors.ClientExecutor):
    """Delegates to the real executor; ``refuser`` refuses every round start (its own
    policy, say), as a deployed site would."""

    def __init__(self, inner: executors.ClientExecutor, refuser: str) -> None:
        self.inner, self.refuser = inner, refuser

    def handle(self, jobs: Any) -> list[Any]:
        out = self.inner.handle(jobs)
        return [
            PolicyViolation("not under my policy")
            if name == self.refuser and isinstance(msg, RoundStart)
            else res
            for (name, msg), res in zip(jobs, out, strict=True)
        ]


def test_a_simulated_client_that_refuses_withdraws_like_a_deployed_site(tmp_path: Path) -> None:
    """The simulation places the same withdrawal a deployed site sends: the stage does not
    wait for the refusing client (the simulated clock never reaches a deadline) and the
    metrics line names it with its reason."""
    cfg = _cfg("sequential", clients=12, secure_aggregation={"dropout_fraction": 0.0})
    sim = Simulation(cfg, run_dir=tmp_path)
    sim.executor = _Refusing(sim.executor, "client_03")
    line = sim.run_round()
    assert line["status"] == "complete", line
    assert line["withdrew"] == {"client_03": "ADVERTISE_KEYS: PolicyViolation: not under my policy"}
    assert line["contributors"] == 11
    assert line["round_s"] == 0.0, line  # no stage waited out its deadline
    sim.close()


class _LocalRayCluster:
    """A real two-node Ray cluster on loopback (``ray start`` twice: a head and a
    worker node, with ``cpus`` CPUs), with its own token (``RAY_AUTH_MODE=token``), torn
    down by killing the process groups it started."""

    def __init__(self, *, cpus: tuple[int, int] = (1, 1)) -> None:
        self.cpus = cpus
        self.token = secrets.token_hex(32)
        # Its own temporary directory (short: Ray puts Unix sockets in it), so that no
        # other Ray user on this machine finds it as "the running cluster".
        self.tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_TMPDIR": self.tmp,
        }
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._ray = str(Path(sys.executable).with_name("ray"))
        self._procs: list[subprocess.Popen[bytes]] = []

    def _start(self, cpus: int, *args: str) -> None:
        cmd = [self._ray, "start", "--block", "--num-cpus", str(cpus), "--disable-usage-stats"]
        self._procs.append(
            subprocess.Popen(
                [*cmd, "--node-ip-address", "127.0.0.1", *args],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )

    def __enter__(self) -> _LocalRayCluster:
        head, worker = self.cpus
        self._start(head, "--head", "--port", str(self.port), "--include-dashboard", "false")
        self._wait_for(f"/{float(head)} CPU", "the Ray head")
        self._start(worker, "--address", self.address)
        # Both nodes registered before a driver joins: a driver sizes its actor pool
        # from the cluster's CPUs when it starts.
        self._wait_for(f"/{float(head + worker)} CPU", "the worker node")
        return self

    def _wait_for(self, text: str, what: str) -> None:
        status = [self._ray, "status", "--address", self.address]
        deadline = time.monotonic() + 60
        while text not in subprocess.run(status, env=self.env, capture_output=True).stdout.decode():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not come up in 60 s")
            time.sleep(0.5)

    def kill_worker_node(self) -> None:
        """SIGKILL every process of the worker node (a machine lost)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._procs[1].pid, signal.SIGKILL)

    def __exit__(self, *exc: object) -> None:
        for p in reversed(self._procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in self._procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        shutil.rmtree(self.tmp, ignore_errors=True)


# A driver joining the cluster in its own interpreter, as a user's would: Ray reads the
# token settings when it is imported, so they must be in the environment from the start.
# With a pause, it writes its clients' workers after round 1 and waits for ``killed``.
_RAY_DRIVER = """
import json, sys, time
from pathlib import Path
import numpy as np
import ray
from secure_fml.config import config_from_dict
from secure_fml.executors import RayExecutor
from secure_fml.simulation import Simulation

raw, run_dir, pause = json.loads(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "pause"
RayExecutor.placement_timeout_s = 5.0
sim = Simulation(config_from_dict(raw), run_dir=run_dir)
ex = sim.executor
assert isinstance(ex, RayExecutor) and ray.is_initialized()
ex.start()
pids = [int(ray.get(ex.actor(i).pid.remote())) for i in range(ex.workers)]
ppids = [int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1]) for p in pids]
# each actor's parent process: its node's raylet
raylets = [b"raylet" in Path(f"/proc/{p}/cmdline").read_bytes() for p in ppids]
if pause:
    sim.open()
    sim.run_round()
    pins = {c: ex.worker_of(c) for c in sim.history[0]["clients"]}
    (run_dir / "pins.json").write_text(json.dumps(pins))
    while not (run_dir / "killed").exists():
        time.sleep(0.1)
    while sim.round < raw["server"]["rounds"]:
        sim.run_round()
    state = sim.state.numpy()
    live = ex.live_workers
    sim.close()
else:
    state = sim.run(progress=False).state.numpy()
    live = ex.live_workers
np.save(run_dir / "state.npy", state)
rounds = [
    (h["round"], h["status"], h.get("clients"), h["contributors"], h.get("train_loss"))
    for h in sim.history
]
left = not ray.is_initialized()
out = {"workers": ex.workers, "parents": ppids, "raylets": raylets, "rounds": rounds}
out.update(left=left, live=live)
(run_dir / "driver.json").write_text(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ray_on_an_existing_two_node_cluster_gives_the_same_state_ledger_and_rounds(
    tmp_path: Path,
) -> None:
    # The --ray-address path: the executor joins a running cluster (HOST:PORT) instead of
    # starting Ray itself, its actors are spread over both nodes, and the rounds are the
    # sequential executor's, bit for bit.
    pytest.importorskip(
        "ray", reason="Ray is the optional extra secure-fml[ray] (an ~80 MB wheel); not installed"
    )
    sim = Simulation(_cfg("sequential"), run_dir=tmp_path / "sequential")
    s_state = sim.run(progress=False).state.numpy().copy()
    s_rounds = [list(r) for r in _rounds(sim)]
    assert any(r[3] < 12 for r in s_rounds)  # a recovered dropout
    raw = _raw_cfg("ray", workers=None)
    with _LocalRayCluster() as cluster:
        raw["simulation"]["ray_address"] = cluster.address
        run_dir = tmp_path / "ray"
        done = subprocess.run(
            [sys.executable, "-c", _RAY_DRIVER, json.dumps(raw), str(run_dir), "run"],
            env=cluster.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        out = json.loads((run_dir / "driver.json").read_text())
        # Two workers (the cluster's CPUs), one on each node: two distinct raylets.
        assert out["workers"] == 2
        assert all(out["raylets"]) and len(set(out["parents"])) == 2
    assert out["left"]  # the executor left the cluster it joined, which keeps running
    assert np.array_equal(np.load(run_dir / "state.npy"), s_state)
    assert _ledger(run_dir) == _ledger(tmp_path / "sequential")
    assert json.loads(json.dumps(s_rounds)) == out["rounds"]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_lost_ray_node_retires_its_worker_and_the_run_goes_on(tmp_path: Path) -> None:
    # A machine of the cluster is lost between rounds and no other node has a free CPU
    # for a replacement actor: its clients drop out of the open stage (recovered by the
    # protocol), the worker retires after the placement timeout, and its clients move to
    # the live actors -- the run completes instead of waiting forever for a placement.
    pytest.importorskip(
        "ray", reason="Ray is the optional extra secure-fml[ray] (an ~80 MB wheel); not installed"
    )
    raw = _raw_cfg(
        "ray",
        workers=None,
        secure_aggregation={"dropout_fraction": 0.0, "max_dropout_fraction": 0.3},
    )
    run_dir = tmp_path / "ray"
    run_dir.mkdir()
    with _LocalRayCluster(cpus=(3, 1)) as cluster:
        raw["simulation"]["ray_address"] = cluster.address
        driver = subprocess.Popen(
            [sys.executable, "-c", _RAY_DRIVER, json.dumps(raw), str(run_dir), "pause"],
            env=cluster.env,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 300
            while not (run_dir / "pins.json").exists():
                assert driver.poll() is None, driver.communicate()[1][-3000:]
                assert time.monotonic() < deadline
                time.sleep(0.1)
            cluster.kill_worker_node()
            (run_dir / "killed").write_text("")
            _, err = driver.communicate(timeout=120)
        finally:
            driver.kill()
        assert driver.returncode == 0, err[-3000:]
    out = json.loads((run_dir / "driver.json").read_text())
    pins = json.loads((run_dir / "pins.json").read_text())
    # Four actors, three on the head, one on the lost node (the raylet seen once).
    assert out["workers"] == 4 and all(out["raylets"])
    (lost,) = [w for w, p in enumerate(out["parents"]) if out["parents"].count(p) == 1]
    victims = {c for c, w in pins.items() if w == lost}
    assert len(victims) == 3
    assert out["live"] == [w for w in range(4) if w != lost]
    r1, r2, r3 = out["rounds"]
    assert [r[1] for r in (r1, r2, r3)] == ["complete"] * 3
    assert (r1[3], r2[3], r3[3]) == (12, 9, 12)  # the moved clients serve again in round 3
    events = [e for t, e in _ledger(run_dir) if e.get("round") == 2 and "client_ids" in e]
    assert len(events) == 1 and set(events[0]["client_ids"]) == set(r2[2]) - victims
    assert np.isfinite(np.load(run_dir / "state.npy")).all()
