"""Client executors: the process pool runs the same rounds as the sequential executor.

Real worker processes (forkserver), real SecAgg+ sessions inside them, a real
SIGKILL of a worker in the middle of a round.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import signal
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
    return config_from_dict(raw)


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

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
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

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
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
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
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
