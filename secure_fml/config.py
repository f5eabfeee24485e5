"""Run configuration: frozen dataclasses loaded from TOML (``tomllib``), validated on construction.

Every error is a :class:`ConfigError` whose message names the offending field
as ``section.field``, so that the CLI can print it on one line.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import math
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from privacy import SamplingMode
from privacy.errors import ConfigError
from secure_fml.algorithms import AlgorithmConfig, AlgorithmName, UpdateKind
from secure_fml.rounds import SamplingConfig, ServerOptimizerConfig, ServerOptimizerKind

__all__ = [
    "MAX_DELTA",
    "MAX_EPSILON",
    "Config",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "PrivacyConfig",
    "RunConfig",
    "SecureAggregationConfig",
    "ServerConfig",
    "SimulationConfig",
    "config_from_dict",
    "config_to_dict",
    "dump_toml",
    "load_config",
    "resolve_device",
    "resolve_for_population",
    "with_overrides",
]

log = logging.getLogger(__name__)

#: Largest accepted (target or maximum) epsilon: above it a DP guarantee promises nothing.
MAX_EPSILON = 100.0
#: delta must be below this (and below 1/N once the population N is known).
MAX_DELTA = 1e-2


def _int_at_least(where: str, value: Any, minimum: int, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where} must be an integer >= {minimum}, got {value!r}")


def _finite(where: str, value: Any, *, low: float, high: float | None = None) -> None:
    """``low < value`` (and ``value <= high``), finite."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value <= low or (high is not None and value > high):
        rng = f"in ({low:g}, {high:g}]" if high is not None else f"a finite number > {low:g}"
        raise ConfigError(f"{where} must be {rng}, got {value!r}")


def check_positive(where: str, value: Any) -> None:
    """Raise :class:`ConfigError` naming ``where`` unless ``value`` is a finite real
    number > 0 (a bool is not a number here): durations, rates, sizes."""
    _finite(where, value, low=0.0)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    preset: str = "fewshot"
    root: str | None = None
    min_samples: int = 10
    client_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    leave_out: str | None = None  # leave-one-client-out: this client is the new site
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.min_samples, int) or self.min_samples < 2:
            raise ConfigError(f"data.min_samples must be an integer >= 2, got {self.min_samples!r}")
        _int_at_least("data.split_seed", self.split_seed, 0)
        fr = self.client_fractions
        if len(fr) != 3 or any(f < 0 for f in fr) or abs(sum(fr) - 1) > 1e-6:
            raise ConfigError(
                "data.client_fractions must be 3 non-negative numbers (train, validation, test) "
                f"summing to 1, got {list(fr)}"
            )
        if fr[0] == 0:
            raise ConfigError("data.client_fractions: the training share must be > 0")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    kind: str = "auto"  # auto | cnn | lstm | mlp | logreg
    #: mlp: the hidden layer widths (default [64]); lstm: one width for both LSTM layers
    #: (default [256], LEAF's); ignored by cnn and logreg.
    hidden: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "cnn", "lstm", "mlp", "logreg"):
            raise ConfigError(
                f"model.kind must be one of auto, cnn, lstm, mlp, logreg; got {self.kind!r}"
            )
        if self.hidden is not None and any(
            isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden
        ):
            raise ConfigError(f"model.hidden must be positive integers, got {list(self.hidden)}")
        if self.kind == "lstm" and self.hidden is not None and len(self.hidden) != 1:
            raise ConfigError(
                f"model.hidden for the lstm is one width (both layers), got {list(self.hidden)}"
            )


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    rounds: int = 100
    sampling: SamplingMode = SamplingMode.FIXED_SIZE  # fixed | poisson | all
    clients_per_round: int | None = 4
    sampling_rate: float | None = None
    optimizer: ServerOptimizerKind | None = None  # None: Adam for meta-gradients, SGD for deltas
    lr: float | None = None  # None: 1e-3 for Adam, 1.0 for SGD (plain model averaging)
    momentum: float = 0.0
    #: uniform: mean over contributors; samples: weighted by each client's sample count
    #: (as FedMeta/FedAvg do). The count travels as one extra coordinate of the update
    #: (inside the aggregated vector, never beside it), and the server divides the summed
    #: weighted updates by the summed counts. Plain aggregation only: under client-level
    #: DP the denominator must be fixed and public (a client's weight would scale its
    #: sensitivity), and under SecAgg the fixed-point range is sized for an update of norm
    #: C, which a count-multiplied update exceeds; both are refused with a ConfigError
    #: (the privacy path keeps its fixed-denominator uniform mean).
    weighting: str = "uniform"
    #: Meta-SGD: the server optimizer's learning rate for log alpha (its own parameter
    #: group); None: server.lr, as for theta.
    alpha_lr: float | None = None
    #: Progress watchdog: after this many round attempts in a row abort (a protocol
    #: abort, too few survivors, a refused sum), the run stops with NoProgress naming
    #: the reason of the last abort instead of retrying forever.
    max_aborted_rounds: int = 5
    #: Seconds to wait before the attempt after an aborted one; doubled after each
    #: further abort in a row (at most 64 times this).
    abort_backoff_s: float = 1.0

    def __post_init__(self) -> None:
        m = self.max_aborted_rounds
        if not isinstance(m, int) or isinstance(m, bool) or m < 1:
            raise ConfigError(f"server.max_aborted_rounds must be an integer >= 1, got {m!r}")
        _finite("server.abort_backoff_s", self.abort_backoff_s, low=0.0, high=3600.0)
        if self.alpha_lr is not None:
            _finite("server.alpha_lr", self.alpha_lr, low=0.0)
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"server.rounds must be an integer >= 1, got {self.rounds!r}")
        if self.weighting not in ("uniform", "samples"):
            raise ConfigError(
                f"server.weighting must be uniform or samples, got {self.weighting!r}"
            )
        self.sampling_config()  # validates sampling fields

    def sampling_config(self) -> SamplingConfig:
        return SamplingConfig(
            mode=self.sampling, clients_per_round=self.clients_per_round, rate=self.sampling_rate
        )

    def optimizer_config(self, update_kind: UpdateKind) -> ServerOptimizerConfig:
        kind = self.optimizer or (
            ServerOptimizerKind.ADAM
            if update_kind is UpdateKind.META_GRADIENT
            else ServerOptimizerKind.SGD
        )
        lr = self.lr if self.lr is not None else (1e-3 if kind is ServerOptimizerKind.ADAM else 1.0)
        return ServerOptimizerConfig(
            kind=kind, lr=lr, momentum=self.momentum, alpha_lr=self.alpha_lr
        )


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    every: int = 10  # evaluate on validation clients every N rounds (0: only at the end)
    adapt_steps: int | None = None
    max_val_clients: int | None = 50  # None: every validation client
    # The local-only baseline (see secure_fml.baselines): full-batch Adam steps on each test
    # client's support set (0: skip it); several learning rates: chosen by CV on the support set.
    local_only_steps: int = 100
    local_only_lrs: tuple[float, ...] = (0.01,)

    def __post_init__(self) -> None:
        if not isinstance(self.every, int) or self.every < 0:
            raise ConfigError(f"eval.every must be an integer >= 0, got {self.every!r}")
        _int_at_least("eval.adapt_steps", self.adapt_steps, 1, optional=True)
        if self.max_val_clients is not None and (
            isinstance(self.max_val_clients, bool)
            or not isinstance(self.max_val_clients, int)
            or self.max_val_clients < 1
        ):
            raise ConfigError(
                "eval.max_val_clients must be an integer >= 1 (omit it to use every validation "
                f"client; eval.every = 0 skips validation), got {self.max_val_clients!r}"
            )
        _int_at_least("eval.local_only_steps", self.local_only_steps, 0)
        if not self.local_only_lrs:
            raise ConfigError("eval.local_only_lrs must list at least one learning rate")
        for lr in self.local_only_lrs:
            _finite("eval.local_only_lrs", lr, low=0.0)


@dataclass(frozen=True, kw_only=True)
class PrivacyConfig:
    """Differential privacy (see ``privacy``); off by default.

    ``unit`` picks the privacy unit: ``client`` (a whole site's update, the fields
    below ``enabled``), ``record`` (each patient inside each site: DP-SGD at the
    site, the ``record_*`` fields, :mod:`secure_fml.record_dp`) or ``both``.
    ``unit_column`` names the person column the dataset grouped records by
    (``load_csv(unit_column=...)``); unset, every record is its own unit.
    """

    enabled: bool = False
    unit: str = "client"  # client | record | both
    unit_column: str | None = None
    record_clip_norm: float = 1.0
    record_noise_multiplier: float | None = None  # or record_target_epsilon
    record_target_epsilon: float | None = None  # per site, over server.rounds, at delta
    record_max_epsilon: float | None = None  # per-site budget: a site stops contributing
    clip_norm: float = 1.0
    noise_multiplier: float | None = None  # None: calibrate from target_epsilon
    #: Calibrate the noise so that this epsilon holds against privacy.budget_adversary
    #: over server.rounds (against the coordinator: over the rounds a client may join,
    #: without amplification).
    target_epsilon: float | None = None
    max_epsilon: float | None = None  # budget; rounds that would exceed it are refused
    #: Whose epsilon the budget gates: the coordinator (default; the worst client over the
    #: rounds it joined, no amplification) or an outside observer of the released models.
    budget_adversary: str = "coordinator"
    #: Colluding sites the budget (and the report) assume; None: what the noise was sized for.
    colluding_sites: int | None = None
    delta: float = 1e-5
    accountant: str = "rdp"
    placement: str = "auto"  # auto | central | distributed (distributed whenever secagg is on)
    adaptive_clipping: bool = False
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    clipped_count_stddev: float | None = None  # adaptive clipping bit noise (None: m/20)

    @property
    def client_level(self) -> bool:
        """Client-level DP is on (unit client or both)."""
        return self.enabled and self.unit != "record"

    @property
    def record_level(self) -> bool:
        """Record-level DP is on (unit record or both)."""
        return self.enabled and self.unit != "client"

    def __post_init__(self) -> None:
        _finite("privacy.clip_norm", self.clip_norm, low=0.0)
        d = self.delta
        if not (isinstance(d, int | float) and math.isfinite(d) and 0 < d < MAX_DELTA):
            raise ConfigError(
                f"privacy.delta must be in (0, {MAX_DELTA:g}) (and below 1/N for N clients; "
                f"1e-5 is usual), got {d!r}"
            )
        if self.placement not in ("auto", "central", "distributed"):
            raise ConfigError(
                f"privacy.placement must be auto, central or distributed; got {self.placement!r}"
            )
        for name in ("target_epsilon", "max_epsilon"):
            v = getattr(self, name)
            if v is not None:
                _finite(f"privacy.{name}", v, low=0.0, high=MAX_EPSILON)
        if self.noise_multiplier is not None:
            nm = self.noise_multiplier
            if not (isinstance(nm, int | float) and math.isfinite(nm) and nm >= 0):
                raise ConfigError(f"privacy.noise_multiplier must be finite and >= 0, got {nm!r}")
            if self.target_epsilon is not None:
                raise ConfigError(
                    "privacy.noise_multiplier and privacy.target_epsilon are both set: give "
                    "one (the noise multiplier is calibrated from the target epsilon)"
                )
        if self.budget_adversary not in ("coordinator", "outside_observer"):
            raise ConfigError(
                "privacy.budget_adversary must be coordinator or outside_observer, got "
                f"{self.budget_adversary!r}"
            )
        _int_at_least("privacy.colluding_sites", self.colluding_sites, 0, optional=True)
        if self.unit not in ("client", "record", "both"):
            raise ConfigError(f"privacy.unit must be client, record or both; got {self.unit!r}")
        if self.client_level and self.noise_multiplier is None and self.target_epsilon is None:
            raise ConfigError("privacy: set privacy.noise_multiplier or privacy.target_epsilon")
        if self.record_level:
            if (self.record_noise_multiplier is None) == (self.record_target_epsilon is None):
                raise ConfigError(
                    "privacy.unit = record: set exactly one of privacy.record_noise_multiplier "
                    "and privacy.record_target_epsilon"
                )
            for name in ("record_clip_norm", "record_noise_multiplier", "record_target_epsilon"):
                v = getattr(self, name)
                if v is not None:
                    _finite(f"privacy.{name}", v, low=0.0)
            if self.record_max_epsilon is not None:
                _finite("privacy.record_max_epsilon", self.record_max_epsilon, low=0.0)
            if self.accountant not in ("rdp", "prv"):
                raise ConfigError(
                    "privacy.accountant must be rdp or prv for record-level DP (upper bounds)"
                )
        if (
            self.max_epsilon is not None
            and self.target_epsilon is not None
            and self.max_epsilon < self.target_epsilon
        ):
            raise ConfigError(
                f"privacy.max_epsilon = {self.max_epsilon:g} is below privacy.target_epsilon = "
                f"{self.target_epsilon:g}: training would stop before its last round; raise "
                "max_epsilon or lower target_epsilon"
            )
        if not 0 < self.target_quantile < 1:
            raise ConfigError(
                f"privacy.target_quantile must be in (0, 1), got {self.target_quantile!r}"
            )
        _finite("privacy.clip_lr", self.clip_lr, low=0.0)


@dataclass(frozen=True, kw_only=True)
class SecureAggregationConfig:
    """Secure aggregation (see ``aggregation``); off by default."""

    protocol: str = "none"  # none | secagg | secagg+
    min_survivor_fraction: float = 0.66
    dropout_fraction: float = 0.0  # simulated dropouts per round (testing recovery)
    bits: int | None = None
    #: delta: the share of a round's participants that may be missing from any stage
    #: (dropouts and withholding insiders alike). None: dropout_fraction + 0.05, within
    #: [0.1, 0.4]. A round of n tolerates floor(delta * n) missing clients.
    max_dropout_fraction: float | None = None
    #: gamma: the share of participants assumed to collude with the coordinator; the
    #: distributed noise is sized so that the honest survivors alone carry it.
    max_corrupt_fraction: float = 0.05

    def __post_init__(self) -> None:
        if self.protocol not in ("none", "secagg", "secagg+"):
            raise ConfigError(
                "secure_aggregation.protocol must be none, secagg or secagg+; "
                f"got {self.protocol!r}"
            )
        if not 0 < self.min_survivor_fraction <= 1:
            raise ConfigError("secure_aggregation.min_survivor_fraction must be in (0, 1]")
        if not 0 <= self.dropout_fraction < 1:
            raise ConfigError("secure_aggregation.dropout_fraction must be in [0, 1)")
        if self.max_dropout_fraction is not None and not 0 <= self.max_dropout_fraction < 0.5:
            raise ConfigError("secure_aggregation.max_dropout_fraction must be in [0, 0.5)")
        if not 0 <= self.max_corrupt_fraction < 0.5:
            raise ConfigError("secure_aggregation.max_corrupt_fraction must be in [0, 0.5)")
        if self.tolerated_dropout() + self.max_corrupt_fraction >= 0.5:
            raise ConfigError(
                "secure_aggregation.max_dropout_fraction + max_corrupt_fraction must be < 0.5"
            )

    def tolerated_dropout(self) -> float:
        """delta: the share of participants that may be missing from a stage."""
        if self.max_dropout_fraction is not None:
            return self.max_dropout_fraction
        return max(0.1, min(0.4, self.dropout_fraction + 0.05))


_DEVICE = re.compile(r"cpu|auto|cuda(:[0-9]+)?")


def resolve_device(spec: str) -> torch.device:
    """The torch device ``run.device`` names; a clear error when it is not available."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"run.device = {spec}, but this torch build sees no CUDA device "
                f"(torch {torch.__version__}); use cpu or auto"
            )
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"run.device = {spec}: only {torch.cuda.device_count()} CUDA device(s)"
            )
        return dev
    return torch.device("cpu")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    name: str = "run"
    out_dir: str = "runs"
    seed: int = 0
    threads: int | None = None
    checkpoint_every: int = 10
    #: INSECURE TEST MODE: derive sampling, session ids, keys, masks and noise from this
    #: seed (reproducible runs for tests); warns loudly. Never for a reported guarantee.
    insecure_seed: int | None = None
    #: Where client computation (local training, adaptation, evaluation) runs: cpu,
    #: cuda, cuda:N, or auto (cuda when available, else cpu). The engine's state, the
    #: server step, secure aggregation and DP noise stay on the CPU; results do not
    #: depend on it beyond floating-point rounding.
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            raise ConfigError(f"run.device must be cpu, cuda, cuda:N or auto, got {self.device!r}")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError(f"run.name must be a plain directory name, got {self.name!r}")
        _int_at_least("run.seed", self.seed, 0)
        _int_at_least("run.threads", self.threads, 1, optional=True)
        _int_at_least("run.checkpoint_every", self.checkpoint_every, 1)
        _int_at_least("run.insecure_seed", self.insecure_seed, 0, optional=True)


#: Client executors of a simulation (``simulation.executor``); see secure_fml.executors.
EXECUTORS = ("auto", "sequential", "pool", "ray")


@dataclass(frozen=True, kw_only=True)
class SimulationConfig:
    """How a simulation runs its clients (not part of any guarantee: every executor runs
    the same client pipelines and gives the same result under ``run.insecure_seed``)."""

    #: sequential: every client in the driver process; pool: worker processes (one per
    #: core); ray: Ray actors (``pip install 'secure-fml[ray]'``), locally or on the
    #: cluster at ``ray_address``; auto: pool for large rounds on a machine with more
    #: than one core, else sequential.
    executor: str = "auto"
    #: Worker processes of the pool, or Ray actors (None: one per available core, or
    #: per CPU of the Ray cluster).
    workers: int | None = None
    #: executor = ray: ``auto`` (the cluster this machine belongs to) or HOST:PORT of an
    #: existing cluster's head; None: start a local Ray instance.
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ConfigError(
                f"simulation.executor must be one of {', '.join(EXECUTORS)}; got {self.executor!r}"
            )
        _int_at_least("simulation.workers", self.workers, 1, optional=True)
        if self.ray_address is not None:
            if self.executor != "ray":
                raise ConfigError("simulation.ray_address needs simulation.executor = ray")
            a = self.ray_address
            host, _, port = a.rpartition(":")
            if a != "auto" and not a.startswith("ray://") and not (host and port.isdigit()):
                raise ConfigError(
                    f"simulation.ray_address must be auto, HOST:PORT or ray://HOST:PORT; got {a!r}"
                )


@dataclass(frozen=True, kw_only=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    secure_aggregation: SecureAggregationConfig = field(default_factory=SecureAggregationConfig)
    run: RunConfig = field(default_factory=RunConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)


_SECTION_TYPES: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "algorithm": AlgorithmConfig,
    "server": ServerConfig,
    "eval": EvalConfig,
    "privacy": PrivacyConfig,
    "secure_aggregation": SecureAggregationConfig,
    "run": RunConfig,
    "simulation": SimulationConfig,
}


def _coerce(where: str, tp: Any, value: Any) -> Any:
    """Convert a TOML value to the annotated field type, or raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(where, a, value)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        valid = ", ".join(str(m.value) for m in tp)
        try:
            return tp(value)  # the value, or an alias the enum accepts (_missing_)
        except ValueError:
            raise ConfigError(f"{where} must be one of {valid}; got {value!r}") from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {value!r}")
    if origin is tuple:
        if isinstance(value, str) and value.strip().startswith("["):
            # From the command line: a TOML array, e.g. [0.8, 0.1, 0.1].
            try:
                value = tomllib.loads(f"v = {value}")["v"]
            except tomllib.TOMLDecodeError:
                raise ConfigError(f"{where} must be a list, e.g. [1, 2]; got {value!r}") from None
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()] if value.strip() else []
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(where, args[0], v) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where} must have {len(args)} entries, got {list(value)}")
        return tuple(_coerce(where, a, v) for a, v in zip(args, value, strict=True))
    if origin is dict:
        if isinstance(value, str):
            # From the command line: an inline TOML table, e.g. {max_clients = 40}.
            try:
                value = tomllib.loads(f"v = {value}")["v"]
            except tomllib.TOMLDecodeError:
                raise ConfigError(
                    f"{where} must be a table, e.g. {{max_clients = 40}}; got {value!r}"
                ) from None
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{where} must be a table, got {value!r}")
    return value


def _build_section(name: str, values: Mapping[str, Any]) -> Any:
    cls = _SECTION_TYPES[name]
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                f"{name}.{key} is not a known field (valid: {', '.join(sorted(known))})"
            )
        kwargs[key] = _coerce(f"{name}.{key}", hints[key], value)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}: {e}") from None


def config_from_dict(raw: Mapping[str, Any]) -> Config:
    sections: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _SECTION_TYPES:
            raise ConfigError(
                f"[{key}] is not a known section (valid: {', '.join(_SECTION_TYPES)})"
            )
        if not isinstance(value, Mapping):
            raise ConfigError(f"[{key}] must be a table")
        sections[key] = _build_section(key, value)
    return Config(**sections)


def load_config(path: str | Path) -> Config:
    """Load a TOML config, or the exact ``config.json`` a run directory holds."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    try:
        raw = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(
            f"{p}: invalid {'JSON' if p.suffix == '.json' else 'TOML'}: {e}"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: the top level must be a table of sections")
    return config_from_dict(raw)


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def config_to_dict(config: Config) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in _SECTION_TYPES:
        section = getattr(config, name)
        out[name] = {f.name: _plain(getattr(section, f.name)) for f in dataclasses.fields(section)}
    return out


def with_overrides(config: Config, overrides: Mapping[str, Any]) -> Config:
    """Apply ``{"server.rounds": 5, ...}`` (CLI flags) on top of a config."""
    raw = config_to_dict(config)
    for dotted, value in overrides.items():
        if "." not in dotted:
            raise ConfigError(f"override {dotted!r} must look like section.field")
        section, key = dotted.split(".", 1)
        if section not in raw:
            raise ConfigError(f"[{section}] is not a known section")
        raw[section][key] = value
    return config_from_dict(raw)


def resolve_for_population(config: Config, population: int) -> tuple[Config, list[str]]:
    """Settings that depend on the number ``population`` of training clients.

    Fixed-size sampling of more clients than exist is clamped to the population
    (every client every round), with a notice: e.g. leave-one-hospital-out
    leaves 3 training hospitals under the default of 4 clients per round. With
    privacy on, the clamped value is what the accountant is then told. A delta
    of 1/N or more is refused (a mechanism may then release one client's data
    outright with probability delta). Returns the resolved config and the
    notices to show (each also logged).
    """
    if isinstance(population, bool) or not isinstance(population, int) or population < 1:
        raise ConfigError(f"the client population must be a positive integer, got {population!r}")
    notices: list[str] = []
    sc = config.server
    if (
        sc.sampling is SamplingMode.FIXED_SIZE
        and sc.clients_per_round is not None
        and sc.clients_per_round > population
    ):
        notices.append(
            f"server.clients_per_round = {sc.clients_per_round} exceeds the {population} "
            f"training clients; using {population} (every client every round)"
        )
        config = dataclasses.replace(
            config, server=dataclasses.replace(sc, clients_per_round=population)
        )
    pc = config.privacy
    if pc.enabled and pc.delta >= 1.0 / population:
        raise ConfigError(
            f"privacy.delta = {pc.delta:g} is not below 1/N = 1/{population} = "
            f"{1.0 / population:.3g} for N = {population} training clients; use a delta well "
            f"below 1/N (e.g. {min(1e-5, 0.1 / population):.0e})"
        )
    for n in notices:
        log.info("%s", n)
    return config, notices


def _drop_none(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _drop_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_drop_none(x) for x in v]
    return v


def dump_toml(config: Config) -> str:
    """The resolved config as TOML (``None`` fields are omitted: they mean 'default').

    Written with ``tomli-w`` (quoting of keys such as ``"max clients"``, escapes of
    any string), so that ``load_config`` reads back exactly ``config``.
    """
    import tomli_w

    return tomli_w.dumps(_drop_none(config_to_dict(config)))


# Algorithm names accepted on the command line, for error messages and help.
ALGORITHMS = tuple(a.value for a in AlgorithmName)
