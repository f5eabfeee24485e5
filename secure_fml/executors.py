"""Client executors of a simulation: where the client pipelines of a round run.

The round engine sees only protocol messages; an executor takes the round's jobs
(client name, engine message) and returns each client's reply, None, or the typed
error that made the client leave the round. Every executor runs the same
:class:`~secure_fml.pipeline.ClientPipeline` (local update, clipping, noise, the
SecAgg / SecAgg+ :class:`~aggregation.ClientSession`), so with the insecure test
seed (``run.insecure_seed``) they give the same state and the same ledger.

- :class:`SequentialExecutor`: every client in the driver process, one after the
  other. No start-up cost: the choice for small rounds and tests.
- :class:`PoolExecutor`: one worker process per core. A worker receives, once when it
  starts, a :class:`ClientRecipe` (config, model, where the data comes from); a
  client is a descriptor (name -> its data partition, identity key, seeds derived
  from the config) sent with the first job of that client to that worker, which
  builds and keeps the client's pipeline and data partition from then on. Each stage
  of a round reaches a worker as one message per chunk of its clients' jobs (the
  simulation hands the executor at most 256 jobs at a time). The round's
  :class:`~secure_fml.messages.RoundStart` messages share one model array, one
  settings object and one roster (one Peer per participant, O(n)). The model (θ, and
  α for Meta-SGD) is broadcast once per round through shared memory: the driver
  writes it into one block per round, each worker copies it out once when the round
  reaches it, and no pipe carries it. The roster and settings go once per worker per
  round, with its first chunk; every message of the round refers to the three by
  pickle persistent ids. Masking runs in the
  workers; the driver sees only the masked vectors and protocol messages, like any
  coordinator.

  A worker that dies turns the clients it held into dropouts: its jobs of the open
  stage come back as :class:`~privacy.errors.TransportError`, a fresh worker takes
  its place, and the clients' later stages of that round are refused there (their
  session died with the worker), so the protocol recovers them as it recovers any
  dropout. A client is pinned to its worker (round-robin on first sight).
- :class:`RayExecutor` (``pip install 'secure-fml[ray]'``): the same workers as Ray
  actors, on this machine or an existing Ray cluster (``simulation.ray_address``). The
  model goes into Ray's object store once per round (``ray.put``); an actor reads it
  from there, without a copy on its own node. A dead actor is replaced as a pool worker
  is; when the cluster cannot place the replacement (a node lost and no free CPU
  elsewhere), that worker retires and its clients move to the live workers.

The coordinator's aggregation sessions fold each input into a running sum as it
arrives (SecAgg keeps the folded masked vectors aside, spilled to disk beyond a small
budget, until exclusions settle), so driver memory for inputs does not grow with n;
SecAgg+'s per-client protocol state (shares, tags) still does, as n * k.
"""

from __future__ import annotations

import contextlib
import io
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import sys
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from torch import nn

import privacy.errors as errors
from privacy.errors import ConfigError, SecureFMLError, TransportError
from secure_fml._functional import Batch, FunctionalModel
from secure_fml.algorithms import make_algorithm
from secure_fml.config import Config
from secure_fml.data import FederatedDataset
from secure_fml.evaluation import to_batch
from secure_fml.messages import EngineMessage, Peer, RoundStart, StageReply
from secure_fml.pipeline import ClientPipeline, UpdateInfo, seeded_generator, seeded_randomness

__all__ = [
    "ClientExecutor",
    "ClientRecipe",
    "JobResult",
    "PoolExecutor",
    "RayExecutor",
    "SequentialExecutor",
    "available_cores",
    "idle_cores",
    "pool_refuses",
]

log = logging.getLogger(__name__)

JobResult = StageReply | SecureFMLError | None


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def idle_cores() -> float:
    """Cores not busy right now: available cores minus the 1-minute load average."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover - no load average on this platform
        return float(available_cores())
    return max(0.0, available_cores() - load)


class ClientExecutor(ABC):
    """Runs client work: each job is (client name, engine message); returns, per job, the
    client's reply, None (nothing to send) or the typed error that made it leave the
    round. Owns the client pipelines."""

    @abstractmethod
    def handle(self, jobs: Sequence[tuple[str, EngineMessage]]) -> list[JobResult]: ...

    def last_update(self, name: str) -> UpdateInfo | None:
        """What client ``name`` knows of its last update (diagnostics), if anything."""
        return None

    def close(self) -> None:
        return None


class SequentialExecutor(ClientExecutor):
    """Every client in this process, one after another."""

    def __init__(self, factory: Callable[[str], ClientPipeline]) -> None:
        self.factory = factory
        self.pipelines: dict[str, ClientPipeline] = {}

    def pipeline(self, name: str) -> ClientPipeline:
        p = self.pipelines.get(name)
        if p is None:
            p = self.pipelines[name] = self.factory(name)
        return p

    def handle(self, jobs: Sequence[tuple[str, EngineMessage]]) -> list[JobResult]:
        out: list[JobResult] = []
        for name, msg in jobs:
            try:
                out.append(self.pipeline(name).handle(msg))
            except SecureFMLError as e:  # the client leaves this round; others go on
                out.append(e)
        return out

    def last_update(self, name: str) -> UpdateInfo | None:
        p = self.pipelines.get(name)
        return p.last_update if p is not None else None


# ------------------------------------------------------------------------------ the pool


@dataclass(frozen=True)
class ClientRecipe:
    """What a worker needs to build any client's pipeline; sent once per worker.

    ``load_data``: the worker loads the dataset itself from ``config.data`` (its files;
    a synthetic preset is generated) and keeps only the partitions of the clients it
    is given. Otherwise (the driver was handed an in-memory dataset) the dataset is
    never shipped whole: each client's partition travels once, with its descriptor,
    to its worker, which caches it.
    """

    config: Config
    module: nn.Module
    load_data: bool

    def check(self) -> None:
        """Refuse what the pool cannot run with the same meaning as the driver."""
        why = pool_refuses(self.config)
        if why is not None:
            raise ConfigError(why)


def pool_refuses(config: Config) -> str | None:
    """Why the pool cannot run this config as the sequential executor would (None: it can)."""
    if config.run.device != "cpu":
        return (
            f"simulation.executor = pool/ray runs its clients on the workers' CPUs; "
            f"run.device = {config.run.device} needs simulation.executor = sequential"
        )
    pc = config.privacy
    if pc.record_level:
        return (
            "simulation.executor = pool does not run record-level DP (privacy.unit = "
            f"{pc.unit}): its receipts are charged to the driver's ledger; use "
            "simulation.executor = sequential"
        )
    return None


@dataclass(frozen=True)
class _Descriptor:
    """A client, as its worker first hears of it."""

    name: str
    identity_key: bytes  # raw Ed25519 private key (the simulation holds every client's)
    data: Batch | None  # None: the worker's own copy of the dataset holds it


class _WorkerClients:
    """The pipelines of the clients one worker holds."""

    def __init__(self, recipe: ClientRecipe) -> None:
        config = recipe.config
        self.config = config
        self.fmodel = FunctionalModel(recipe.module)
        self.algorithm = make_algorithm(config.algorithm, self.fmodel)
        self.partitions: dict[str, Any] = {}
        self.input_kind: Any = None
        if recipe.load_data:
            from secure_fml.simulation import load_dataset, split_dataset

            ds: FederatedDataset = load_dataset(config)
            self.input_kind = ds.input_kind
            self.partitions = {c.client_id: c for c in split_dataset(config, ds).train}
        self.pipelines: dict[str, ClientPipeline] = {}
        #: This round's context, as the driver last sent it (see _ContextPickler).
        self.context: _Context | None = None

    def add(self, d: _Descriptor) -> None:
        if d.data is not None:
            data = d.data
        else:
            part = self.partitions.pop(d.name, None)
            if part is None:
                raise ConfigError(f"client {d.name!r} is not a training client of this dataset")
            data = to_batch(part, self.input_kind)
        insecure = self.config.run.insecure_seed
        self.pipelines[d.name] = ClientPipeline(
            name=d.name,
            algorithm=self.algorithm,
            data=data,
            identity_key=Ed25519PrivateKey.from_private_bytes(d.identity_key),
            training_generator=seeded_generator(self.config.run.seed, d.name),
            randomness=seeded_randomness(insecure, d.name) if insecure is not None else None,
        )

    def batch(
        self, descriptors: Sequence[_Descriptor], jobs: Sequence[tuple[str, EngineMessage]]
    ) -> tuple[list[tuple[Any, UpdateInfo | None]], float]:
        """Add the new clients, answer every job; (results, CPU seconds spent)."""
        cpu0 = time.process_time()
        for d in descriptors:
            self.add(d)
        out = []
        for name, m in jobs:
            if isinstance(m, RoundStart) and m.model.flags.writeable:
                # One array per batch (pickled once): read-only, so every client of this
                # worker shares one model check (pipeline.VERIFIED_MODELS).
                m.model.setflags(write=False)
            out.append(self.handle(name, m))
        return out, time.process_time() - cpu0

    def packed(
        self, head: bytes | None, body: bytes, model: np.ndarray | None = None
    ) -> tuple[list[tuple[Any, UpdateInfo | None]], float]:
        """:meth:`batch` of a message made by :func:`_pack`; ``model``: the round's model
        when it came beside the message (Ray's object store), not through the head."""
        if head is not None:
            roster, ref, settings = pickle.loads(head)
            if model is None:
                model = ref.load() if isinstance(ref, _SharedArray) else ref
            if model is None:
                raise TransportError("a round's context came without its model")
            model.setflags(write=False)
            self.context = (roster, model, settings)
        descriptors, jobs = _ContextUnpickler(io.BytesIO(body), self.context).load()
        return self.batch(descriptors, jobs)

    def handle(self, name: str, msg: EngineMessage) -> tuple[Any, UpdateInfo | None]:
        p = self.pipelines.get(name)
        if p is None:
            # Its pipeline died with an earlier worker: the session is gone.
            return _wire(TransportError(f"client {name!r} lost its worker this round")), None
        try:
            reply = p.handle(msg)
        except SecureFMLError as e:
            return _wire(e), None
        info = p.last_update if isinstance(msg, RoundStart) else None
        return reply, info


@dataclass(frozen=True)
class _WireError:
    """A typed error, as it crosses the process boundary (name and message)."""

    kind: str
    message: str


def _wire(e: SecureFMLError) -> _WireError:
    return _WireError(type(e).__name__, str(e))


def _unwire(w: _WireError) -> SecureFMLError:
    cls = getattr(errors, w.kind, None)
    if isinstance(cls, type) and issubclass(cls, SecureFMLError):
        try:
            return cls(w.message)
        except TypeError:
            pass
    return TransportError(f"{w.kind}: {w.message}")


def _worker_main(conn: multiprocessing.connection.Connection, recipe: ClientRecipe) -> None:
    """A worker process: build the clients it is sent, answer each batch of jobs."""
    torch.set_num_threads(recipe.config.run.threads or 1)
    try:
        clients = _WorkerClients(recipe)
    except BaseException:
        conn.send(("crash", traceback.format_exc()))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "close":
            return
        try:
            result = clients.packed(msg[1], msg[2])
        except BaseException:
            conn.send(("crash", traceback.format_exc()))
            return
        conn.send(("ok", result))


def _uses_main(recipe: ClientRecipe) -> bool:
    """Whether unpickling the recipe needs the driver's ``__main__`` (a model class
    defined in the script)."""
    return any(type(m).__module__ == "__main__" for m in recipe.module.modules())


@contextlib.contextmanager
def _main_not_reimported(recipe: ClientRecipe) -> Iterator[None]:
    """Start a worker without re-running the driver's script in it.

    A worker runs library code only, so (unless the model class lives in the script)
    the child need not import ``__main__``: hiding it while the process starts lets a
    script without an ``if __name__ == "__main__":`` guard use the pool, instead of
    re-executing the script in every worker.
    """
    main = sys.modules.get("__main__")
    if main is None or _uses_main(recipe):
        yield
        return
    saved: dict[str, Any] = {
        k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__
    }
    main.__dict__["__spec__"] = None
    main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


# A stage's jobs go to a worker in chunks (the simulation bounds the replies it holds),
# and every round start of a round carries the same roster (one Peer per participant),
# the same model array and the same settings. Pickled with each chunk, a 10,000-client
# round would send the roster 40 times per worker (quadratic in n) and the model 40
# times. The three are sent once per worker per round instead (the round's context):
# the chunks refer to them by persistent ids, the worker keeps the last context it was
# sent.

#: The round's (roster, model, settings), as one object (its identity marks the round).
_Context = tuple[tuple[Peer, ...], np.ndarray, Any]
_CONTEXT_IDS = ("roster", "model", "settings")


class _ContextPickler(ForkingPickler):
    def __init__(self, file: io.BytesIO, context: _Context | None) -> None:
        super().__init__(file, pickle.HIGHEST_PROTOCOL)
        self._context = context

    def persistent_id(self, obj: Any) -> str | None:
        if self._context is not None:
            for pid, held in zip(_CONTEXT_IDS, self._context, strict=True):
                if obj is held:
                    return pid
        return None


class _ContextUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, context: _Context | None) -> None:
        super().__init__(file)
        self._context = context

    def persistent_load(self, pid: Any) -> Any:
        if self._context is None or pid not in _CONTEXT_IDS:
            raise pickle.UnpicklingError(f"a job refers to a round it was not sent: {pid!r}")
        return self._context[_CONTEXT_IDS.index(pid)]


class _RoundContexts:
    """The context of the round starts among a chunk of jobs, the same object for every
    chunk of one round (so that a worker is sent it once)."""

    def __init__(self) -> None:
        self._last: _Context | None = None

    def of(self, jobs: Sequence[tuple[str, EngineMessage]]) -> _Context | None:
        for _, m in jobs:
            if isinstance(m, RoundStart):
                last = self._last
                if (
                    last is None
                    or last[0] is not m.peers
                    or last[1] is not m.model
                    or last[2] is not m.settings
                ):
                    last = self._last = (m.peers, m.model, m.settings)
                return last
        return None


def _pack(
    descriptors: Sequence[Any],
    jobs: Sequence[tuple[str, EngineMessage]],
    context: _Context | None,
    *,
    model: _SharedArray | np.ndarray | _Beside | None,
) -> tuple[str, bytes | None, bytes]:
    """A worker's message: ("jobs", the round's context when it is new to the worker,
    the jobs). ``model`` None: the worker holds the context already; otherwise what
    stands for the model in the head (a shared block, the array itself when no block
    could be made, or None beside a ``model`` that travels outside the message).

    The head is (roster, model reference, settings); the jobs refer to the context's
    objects by persistent id, so neither carries the model's bytes when it is shared."""
    buf = io.BytesIO()
    _ContextPickler(buf, context).dump((list(descriptors), list(jobs)))
    head = None
    if context is not None and model is not None:
        ref = None if isinstance(model, _Beside) else model
        head = pickle.dumps((context[0], ref, context[2]), pickle.HIGHEST_PROTOCOL)
    return "jobs", head, buf.getvalue()


@dataclass(frozen=True)
class _SharedArray:
    """A read-only array in a named shared-memory block (what the head carries)."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def load(self) -> np.ndarray:
        """A private copy of the array (one copy per worker per round); the block is
        closed at once, so the driver may unlink it whenever it likes after."""
        block = SharedMemory(name=self.name)
        try:
            view: np.ndarray = np.ndarray(self.shape, np.dtype(self.dtype), buffer=block.buf)
            out = view.copy()
            del view
        finally:
            block.close()
        return out


class _Beside:
    """Model marker: the model travels beside the message (Ray), not in its head."""


_BESIDE = _Beside()


class _SharedModels:
    """The driver's side of the pool's broadcast: the current round's model in one
    shared-memory block, written once; the previous round's block is unlinked when the
    next round's is made (every worker that read it has answered since), the last one on
    :meth:`release`."""

    def __init__(self) -> None:
        self._of: np.ndarray | None = None
        self._block: SharedMemory | None = None
        self._ref: _SharedArray | np.ndarray | None = None
        self._warned = False

    def ref(self, model: np.ndarray) -> _SharedArray | np.ndarray:
        if model is self._of and self._ref is not None:
            return self._ref
        self.release()
        self._of = model
        try:
            block = _new_block(model.nbytes)
        except OSError as e:
            if not self._warned:
                log.warning("no shared memory for the model broadcast (%s); it goes by pipe", e)
                self._warned = True
            self._ref = model
            return model
        np.ndarray(model.shape, model.dtype, buffer=block.buf)[...] = model
        self._block = block
        self._ref = _SharedArray(block.name, tuple(model.shape), model.dtype.str)
        return self._ref

    def release(self) -> None:
        block, self._block, self._of, self._ref = self._block, None, None, None
        if block is not None:
            block.close()
            with contextlib.suppress(FileNotFoundError):
                block.unlink()


def _new_block(nbytes: int) -> SharedMemory:
    """A fresh shared-memory block of at least ``nbytes`` (one byte for an empty model)."""
    return SharedMemory(create=True, size=max(1, nbytes))


class _Worker:
    def __init__(self, ctx: Any, recipe: ClientRecipe, index: int) -> None:
        parent, child = ctx.Pipe(duplex=True)
        self.index = index
        self.process = ctx.Process(
            target=_worker_main, args=(child, recipe), name=f"secure-fml-worker-{index}"
        )
        self.process.daemon = True
        with _main_not_reimported(recipe):
            self.process.start()
        child.close()
        self.conn: multiprocessing.connection.Connection = parent
        self.ready = False
        #: The round context this worker holds (see _ContextPickler).
        self.context: _Context | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def stop(self, *, timeout: float = 5.0) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(("close",))
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        self.conn.close()


class _PinnedExecutor(ClientExecutor):
    """Shared by the pool and Ray: clients pinned to workers, descriptors sent once."""

    def __init__(
        self,
        recipe: ClientRecipe,
        *,
        workers: int,
        identity_key: Callable[[str], Ed25519PrivateKey],
        partition: Callable[[str], Batch] | None,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"simulation.workers must be an integer >= 1, got {workers!r}")
        if not recipe.load_data and partition is None:
            raise ConfigError("workers that do not load the dataset need the clients' partitions")
        recipe.check()
        self.recipe = recipe
        self.identity_key = identity_key
        self.partition = partition
        self._n = workers
        #: Workers that serve clients: all of them, less those retired (see _retire).
        self._live: list[int] = list(range(workers))
        self._worker_of: dict[str, int] = {}
        self._known: list[set[str]] = [set() for _ in range(workers)]
        self._next = 0
        self._updates: dict[str, UpdateInfo] = {}
        #: Workers replaced after they died (diagnostics).
        self.replaced = 0
        #: CPU seconds the workers spent on jobs (diagnostics).
        self.worker_cpu_s = 0.0
        self._closed = False
        self._contexts = _RoundContexts()

    @property
    def workers(self) -> int:
        return self._n

    def worker_of(self, name: str) -> int | None:
        """The worker a client is pinned to (None: not assigned yet)."""
        return self._worker_of.get(name)

    @property
    def live_workers(self) -> list[int]:
        """The workers that still serve clients (a retired one is gone for the run)."""
        return list(self._live)

    def _assign(self, name: str) -> int:
        i = self._worker_of.get(name)
        if i is None:
            if not self._live:
                raise TransportError("no simulation worker is left to run clients on")
            i = self._worker_of[name] = self._live[self._next % len(self._live)]
            self._next += 1
        return i

    def _retire(self, i: int, why: str) -> None:
        """Worker ``i`` cannot be replaced (``why``): the clients pinned to it move to the
        live workers on their next job, which build them afresh as a replacement would."""
        self._live.remove(i)
        self._known[i] = set()
        moved = [n for n, w in self._worker_of.items() if w == i]
        for name in moved:
            del self._worker_of[name]
        log.warning(
            "simulation worker %d retired (%s); its %d clients move to the %d live workers",
            i,
            why,
            len(moved),
            len(self._live),
        )

    def _descriptor(self, name: str) -> _Descriptor:
        key = self.identity_key(name).private_bytes_raw()
        data = None if self.recipe.load_data else self.partition(name)  # type: ignore[misc]
        return _Descriptor(name, key, data)

    def _batches(
        self, jobs: Sequence[tuple[str, EngineMessage]]
    ) -> dict[int, tuple[list[int], list[_Descriptor], list[tuple[str, EngineMessage]]]]:
        """Per worker: job positions, descriptors of clients new to it, its jobs."""
        by_worker: dict[int, list[int]] = {}
        for pos, (name, _) in enumerate(jobs):
            by_worker.setdefault(self._assign(name), []).append(pos)
        out = {}
        for i, positions in by_worker.items():
            new = sorted({jobs[p][0] for p in positions} - self._known[i])
            out[i] = (positions, [self._descriptor(n) for n in new], [jobs[p] for p in positions])
        return out

    def _accept(
        self,
        i: int,
        positions: list[int],
        payload: tuple[list[tuple[Any, UpdateInfo | None]], float],
        out: list[JobResult],
        jobs: Sequence[tuple[str, EngineMessage]],
    ) -> None:
        results, cpu_s = payload
        self.worker_cpu_s += cpu_s
        self._known[i].update(jobs[p][0] for p in positions)
        for p, (result, info) in zip(positions, results, strict=True):
            out[p] = _unwire(result) if isinstance(result, _WireError) else result
            if info is not None:
                self._updates[jobs[p][0]] = info

    def _fail(
        self,
        i: int,
        positions: list[int],
        out: list[JobResult],
        jobs: Sequence[tuple[str, EngineMessage]],
        why: str,
    ) -> None:
        """Worker ``i`` died: its jobs fail; its replacement knows none of its clients."""
        log.warning(
            "simulation worker %d died (%s); its %d clients of this stage drop out",
            i,
            why,
            len(positions),
        )
        for p in positions:
            out[p] = TransportError(f"client {jobs[p][0]!r}: its worker died ({why})")
        self._known[i] = set()
        self.replaced += 1

    def last_update(self, name: str) -> UpdateInfo | None:
        return self._updates.get(name)

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        with contextlib.suppress(Exception):
            self.close()


class PoolExecutor(_PinnedExecutor):
    """Client pipelines in ``workers`` local processes (see module docstring).

    ``identity_key(name)`` gives a client's Ed25519 key (the simulation's, so that the
    engine's roster and the client agree); ``partition(name)`` its data when the
    recipe does not load the dataset in the workers. Workers fork from a fork server
    that has imported the library; they do not re-run the driver's script (which then
    needs no ``if __name__ == "__main__":`` guard) unless the model class is defined
    in it.
    """

    def __init__(
        self,
        recipe: ClientRecipe,
        *,
        workers: int,
        identity_key: Callable[[str], Ed25519PrivateKey],
        partition: Callable[[str], Batch] | None = None,
        start_method: str = "forkserver",
    ) -> None:
        super().__init__(recipe, workers=workers, identity_key=identity_key, partition=partition)
        self._ctx = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # The fork server imports the library once; workers fork from it (fast).
            self._ctx.set_forkserver_preload(["secure_fml.executors", "secure_fml.simulation"])
        self._workers: list[_Worker | None] = [None] * workers
        self._shared = _SharedModels()

    def pids(self) -> list[int | None]:
        """Process ids of the live workers (None: not started yet)."""
        return [w.pid if w is not None else None for w in self._workers]

    def start(self) -> None:
        """Start every worker now (otherwise on first use)."""
        for i in range(self.workers):
            self._worker(i)

    def _worker(self, i: int) -> _Worker:
        if self._closed:
            raise ConfigError("the executor is closed")
        w = self._workers[i]
        if w is None:
            w = self._workers[i] = _Worker(self._ctx, self.recipe, i)
        if not w.ready:
            try:
                kind, payload = w.conn.recv()
            except (EOFError, OSError):
                kind, payload = "crash", f"worker exited with code {w.process.exitcode}"
            if kind != "ready":
                self._workers[i] = None
                w.stop()
                raise ConfigError(
                    f"a simulation worker could not start ({payload}); a script whose model "
                    "class it defines needs an if __name__ == '__main__': guard, or use "
                    "simulation.executor = sequential"
                )
            w.ready = True
        return w

    def handle(self, jobs: Sequence[tuple[str, EngineMessage]]) -> list[JobResult]:
        out: list[JobResult] = [None] * len(jobs)
        pending: dict[Any, tuple[_Worker, list[int]]] = {}
        for i, (positions, descriptors, batch) in self._batches(jobs).items():
            w = self._worker(i)
            context = self._contexts.of(batch)
            fresh = context is not None and context is not w.context
            model = self._shared.ref(context[1]) if fresh and context is not None else None
            try:
                w.conn.send(_pack(descriptors, batch, context, model=model))
            except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
                self._lost(w, positions, out, jobs)
                continue
            if fresh:
                w.context = context
            pending[w.conn] = (w, positions)
        while pending:
            for conn in multiprocessing.connection.wait(list(pending)):
                w, positions = pending.pop(conn)
                try:
                    kind, payload = w.conn.recv()
                except (EOFError, OSError, ConnectionResetError):
                    self._lost(w, positions, out, jobs)
                    continue
                if kind != "ok":
                    self._lost(w, positions, out, jobs)
                    raise RuntimeError(f"simulation worker {w.index} failed:\n{payload}")
                self._accept(w.index, positions, payload, out, jobs)
        return out

    def _lost(
        self,
        w: _Worker,
        positions: list[int],
        out: list[JobResult],
        jobs: Sequence[tuple[str, EngineMessage]],
    ) -> None:
        w.process.join(1.0)
        self._fail(w.index, positions, out, jobs, f"pid {w.pid}, exit code {w.process.exitcode}")
        self._workers[w.index] = None
        w.stop(timeout=1.0)

    def close(self) -> None:
        if self._closed:
            return
        for w in self._workers:
            if w is not None:
                w.stop()
        self._workers = [None] * len(self._workers)
        self._shared.release()
        self._closed = True


# ------------------------------------------------------------------------------ Ray


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "simulation.executor = ray needs Ray: pip install 'secure-fml[ray]'"
        ) from None
    return ray


class _RayWorker:
    """A Ray actor: one model copy and the pipelines of the clients pinned to it."""

    def __init__(self, recipe: ClientRecipe) -> None:
        torch.set_num_threads(recipe.config.run.threads or 1)
        self.clients = _WorkerClients(recipe)

    def pid(self) -> int:
        return os.getpid()

    def packed(
        self, head: bytes | None, body: bytes, model: np.ndarray | None
    ) -> tuple[list[tuple[Any, UpdateInfo | None]], float]:
        # ``model``: the round's model, resolved by Ray from the object store (read-only,
        # zero-copy on this node), or None when this actor holds the round already.
        return self.clients.packed(head, body, model)


class RayExecutor(_PinnedExecutor):
    """Client pipelines in Ray actors (``pip install 'secure-fml[ray]'``).

    ``address`` None starts (or reuses) a local Ray instance with ``workers`` CPUs;
    ``auto`` or HOST:PORT joins an existing cluster, whose nodes must have
    ``secure-fml`` installed and, unless the driver was handed an in-memory dataset,
    the dataset at ``data.root``. One actor per worker (default: the cluster's CPUs
    when the executor starts) keeps one model copy and its clients' partitions; a dead
    actor's clients drop out as with the pool, and a fresh actor replaces it before the
    next stage. A replacement the cluster cannot place within
    :attr:`placement_timeout_s` (its node is gone and no other has a free CPU) is given
    up: that worker retires and its clients move to the live actors, so a lost node
    costs its clients' open stage and at most one such wait, never a hung round.
    """

    #: Seconds a replacement actor may take to start before its worker retires.
    placement_timeout_s: float = 60.0

    def __init__(
        self,
        recipe: ClientRecipe,
        *,
        workers: int | None,
        identity_key: Callable[[str], Ed25519PrivateKey],
        partition: Callable[[str], Batch] | None = None,
        address: str | None = None,
    ) -> None:
        ray = _import_ray()
        self._ray = ray
        self._owns_ray = False
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None:
                # "local": a new instance, never a cluster found running on this machine
                ray.init(address="local", num_cpus=workers or available_cores(), **kw)
            else:
                ray.init(address=address, **kw)
            self._owns_ray = True
        n = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        super().__init__(recipe, workers=n, identity_key=identity_key, partition=partition)
        self._actor_cls = ray.remote(num_cpus=1, max_restarts=0)(_RayWorker)
        self._actors: list[Any] = [None] * n
        #: (actor, the round context it holds) per worker (see _ContextPickler): a replacement
        #: actor holds none. Ray runs one caller's calls to an actor in call order.
        self._held: list[tuple[Any, _Context] | None] = [None] * n
        #: (model, its object ref): this round's model, put in the object store once.
        self._model: tuple[np.ndarray, Any] | None = None
        #: Workers whose actor died: replaced (or retired) before the next stage runs.
        self._dead: set[int] = set()

    def _put(self, model: np.ndarray) -> Any:
        """The object ref of this round's model (``ray.put`` once per round; the
        previous round's ref is dropped, so Ray may free it)."""
        if self._model is None or self._model[0] is not model:
            self._model = (model, self._ray.put(model))
        return self._model[1]

    def _actor(self, i: int) -> Any:
        if self._closed:
            raise ConfigError("the executor is closed")
        a = self._actors[i]
        if a is None:
            a = self._actors[i] = self._actor_cls.remote(self.recipe)
        return a

    def actor(self, i: int) -> Any:
        """Actor ``i`` (started on first use)."""
        return self._actor(i)

    def start(self) -> None:
        self._ray.get([self._actor(i).pid.remote() for i in self._live])

    def _replace_dead(self) -> None:
        """A started actor for every worker whose actor died, or that worker retired."""
        ray = self._ray
        for i in sorted(self._dead):
            self._dead.discard(i)
            actor = self._actor(i)
            ready, _ = ray.wait([actor.pid.remote()], timeout=self.placement_timeout_s)
            why = f"no replacement actor started within {self.placement_timeout_s:g} s"
            if ready:
                try:
                    ray.get(ready[0])
                    continue
                except ray.exceptions.RayActorError as e:
                    why = f"its replacement actor died too ({type(e).__name__})"
            with contextlib.suppress(Exception):
                ray.kill(actor)  # and its resource request with it
            self._actors[i] = None
            self._held[i] = None
            self._retire(i, why)

    def handle(self, jobs: Sequence[tuple[str, EngineMessage]]) -> list[JobResult]:
        ray = self._ray
        self._replace_dead()
        out: list[JobResult] = [None] * len(jobs)
        pending: dict[Any, tuple[int, list[int]]] = {}
        actor_of: dict[int, Any] = {}
        for i, (positions, descriptors, batch) in self._batches(jobs).items():
            actor = self._actor(i)
            context = self._contexts.of(batch)
            held = self._held[i]
            fresh = context is not None and (
                held is None or held[0] is not actor or held[1] is not context
            )
            ref = None
            if fresh and context is not None:
                ref = self._put(context[1])
            _, head, body = _pack(
                descriptors, batch, context, model=_BESIDE if ref is not None else None
            )
            pending[actor.packed.remote(head, body, ref)] = (i, positions)
            actor_of[i] = actor
            if fresh and context is not None:
                self._held[i] = (actor, context)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            i, positions = pending.pop(ref)
            try:
                payload = ray.get(ref)
            except ray.exceptions.RayActorError as e:
                self._fail(i, positions, out, jobs, type(e).__name__)
                with contextlib.suppress(Exception):
                    ray.kill(actor_of[i])  # if only unreachable, it must not linger
                self._actors[i] = None
                self._dead.add(i)
                continue
            self._accept(i, positions, payload, out, jobs)
        return out

    def close(self) -> None:
        if self._closed:
            return
        for a in self._actors:
            if a is not None:
                with contextlib.suppress(Exception):
                    self._ray.kill(a)
        self._actors = [None] * len(self._actors)
        self._model = None
        self._closed = True
        if self._owns_ray:
            self._ray.shutdown()
