"""The round engine: one implementation of a federated round, for simulation and deployment.

The engine is the coordinator minus joins, leases and certificates. Per round:

1. **Sample** once from the CSPRNG (:class:`~secure_fml.rounds.ClientSampler`);
   the participants are the sampled clients the transport can reach. A round is
   never redrawn: with too few participants it is *skipped*, and the skip is
   recorded (metrics, and the privacy ledger when DP is on).
2. **Plan** the round, a pure function of the config and the round context
   (:func:`plan_round`): noise placement and size, clip norm, aggregation
   protocol and its parameters, fixed-point scale, survivor minimum,
   denominator.
3. **Drive** the aggregation server session (``aggregation``'s uniform stage
   interface) over whatever transport delivers the messages: each client gets a
   :class:`~secure_fml.messages.RoundStart`, then one
   :class:`~secure_fml.messages.StageRequest` per stage; replies come back
   through :meth:`RoundEngine.submit`; :meth:`RoundEngine.tick` closes a stage
   whose deadline passed (silent clients become dropouts the protocol recovers).
4. **Charge** the privacy ledger (durably, budget-checked) **before** the stage
   whose replies reveal the sum is opened -- for secure aggregation before any
   unmask request leaves, for the plain protocol before the sum is noised or
   used. Nothing that was not charged is ever applied.
5. **Decode** the sum, add central noise where configured, post-process the
   adaptive-clipping bit, divide by the denominator, step the server optimizer,
   write the metrics line and the checkpoint.

Behaviour chosen where the old simulation and coordinator disagreed:

- Too few participants: the round is skipped and recorded; the round index
  advances; the draw is never repeated (a redraw would condition the sample on
  its size, which no accountant describes).
- An aborted round (protocol abort, too few survivors) is recorded and its index
  is spent; a charged round is never charged again and, if it could not be
  applied, is recorded as ``charged-not-applied``.
- The ledger records the contributor ids of every release, in simulation and
  deployment; every run directory has ``config.json`` / ``config.toml``.

Progress and offenders: an aborted attempt is followed by a back-off
(``server.abort_backoff_s``, doubling); after ``server.max_aborted_rounds`` aborts in
a row the run stops with :class:`~privacy.errors.NoProgress` naming the last reason.
A participant the aggregation server *proves* to misbehave (signed evidence that
:func:`aggregation.verify_evidence` re-checks against the round's roster) is excluded
from every later round, durably (``excluded.json`` in the run directory, with the
evidence), and named in the metrics.

Crash points: the durable writes of a round, in order, and what a restart after a
``kill -9`` just after each one finds (``tests/deploy/test_crash_points.py`` kills a
real coordinator at every one):

1. the round's start marker (deployment: ``round_started.json``) -- the round is
   recorded as ``lost`` (a :class:`~privacy.SkippedRound` and a metrics line);
2. the charge (the release appended to the ledger, fsync'ed) -- and anything up to
   the checkpoint, the unmasked sum included: the round stays charged and is recorded
   as ``charged-not-applied`` in the metrics and as a :class:`~privacy.RoundNotApplied`
   in the ledger; training resumes from the previous checkpoint;
3. the checkpoint (atomic, fsync'ed; it carries the round's metrics line) -- the
   round was applied; its metrics line is rewritten from the checkpoint if missing;
4. the metrics line -- nothing to recover.

Recovery is idempotent (a crash during it redoes only what is missing), and no round
is ever charged twice or run twice.

The engine knows nothing of sockets, threads or certificates: a transport (an
in-memory one in :mod:`secure_fml.simulation`, gRPC in ``secure_fml.deploy``)
moves the messages, and tells the engine which clients it can reach.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from torch import nn

import privacy
from aggregation import (
    DISCRETE_GAUSSIAN_MAX_SIGMA,
    Aggregate,
    AggregationServer,
    ClientPolicy,
    FixedPointCodec,
    MaskedInput,
    Outbox,
    PlainInput,
    PlainSumServer,
    SecAggConfig,
    ServerSession,
    Stage,
    centered_lift,
    reply_size_limit,
    verify_evidence,
)
from privacy import (
    INSECURE_SEED_WARNING,
    Adversary,
    Csprng,
    GaussianNoiseSource,
    GaussianRelease,
    LedgerHead,
    NoisePlacement,
    PrivacyBudget,
    PrivacyLedger,
    Sampling,
    SamplingMode,
    SkippedRound,
    SkipReason,
    atomic_write_bytes,
)
from privacy.errors import (
    CheckpointError,
    ConfigError,
    DropoutThresholdNotMet,
    InvalidMessage,
    NoProgress,
    OutOfOrder,
    PrivacyBudgetExhausted,
    PrivacyError,
    ProtocolError,
    StaleMessage,
)
from secure_fml._functional import FunctionalModel
from secure_fml.algorithms import Algorithm, make_algorithm
from secure_fml.checkpoint import (
    Checkpoint,
    load_checkpoint,
    resume_round,
    save_checkpoint,
    training_checkpoint,
)
from secure_fml.config import Config, check_positive, config_to_dict, dump_toml
from secure_fml.messages import (
    AggregationProtocol,
    ClientNoise,
    EngineMessage,
    Peer,
    RecordLevelRequest,
    RoundSettings,
    RoundStart,
    StageReply,
    StageRequest,
    Withdrawal,
)
from secure_fml.observability import JsonlSink, MetricsSink, MultiSink, timestamped
from secure_fml.pipeline import VERIFIED_MODELS, codec_for, secure_clip_range
from secure_fml.record_dp import record_level_rounds
from secure_fml.rounds import ClientSampler, SampledRound, ServerOptimizer, participation_bound

__all__ = [
    "CHECKPOINT_FILE",
    "EXCLUDED_FILE",
    "METRICS_FILE",
    "Identity",
    "PrivacySetup",
    "RoundEngine",
    "RoundPlan",
    "plan_round",
    "privacy_setup",
]

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"
#: Participants excluded from later rounds for proven misbehaviour, with the evidence.
EXCLUDED_FILE = "excluded.json"
#: The back-off after an abort doubles at most this many times.
_MAX_BACKOFF_DOUBLINGS = 6

#: Fewest participants secure aggregation runs with (two would reveal each other).
MIN_SECURE_PARTICIPANTS = 3


@dataclass(frozen=True, slots=True)
class Identity:
    """How a participant appears in a roster: its identity bytes and verified key.

    The key is kept as its 32 raw bytes (a key object costs about 370 bytes of native
    memory, and a roster of 10,000 clients would hold one each); ``public_key`` builds
    the object when a secure round needs it (about a microsecond).
    """

    identity: bytes
    key: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes) or len(self.key) != 32:
            raise ConfigError("an identity's Ed25519 public key is 32 raw bytes")

    @classmethod
    def of(cls, identity: bytes, public_key: Ed25519PublicKey) -> Identity:
        """The identity of ``public_key`` (a key object, e.g. a certificate's)."""
        return cls(identity, public_key.public_bytes_raw())

    @property
    def public_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.key)


# ------------------------------------------------------------------------------ privacy


@dataclass(frozen=True, kw_only=True)
class PrivacySetup:
    """Client-level DP of a run, resolved once from the config (None fields: DP off)."""

    placement: NoisePlacement
    #: Target multiplier of the whole (update, clip bit) release.
    noise_multiplier: float
    #: Multiplier of the update part (smaller than the target with adaptive clipping).
    value_noise_multiplier: float
    #: Total std of the noise on the clip-bit sum (adaptive clipping), else None.
    bit_std: float | None
    min_survivor_fraction: float
    assumed_colluding: int
    delta: float
    accountant: str
    adaptive: bool
    target_quantile: float
    clip_lr: float


def _resolve_noise_multiplier(config: Config, *, population: int) -> float:
    """The noise multiplier: given, or calibrated so that the target epsilon holds against
    the adversary the budget names (against the coordinator: no amplification, over the
    rounds a client may join, :func:`participation_bound`)."""
    pc = config.privacy
    if pc.noise_multiplier is not None:
        return pc.noise_multiplier
    if pc.target_epsilon is None:
        raise ConfigError("privacy: set privacy.noise_multiplier or privacy.target_epsilon")
    sampling = config.server.sampling_config().accounting(population)
    rounds = config.server.rounds
    participations = (
        participation_bound(sampling, rounds=rounds)
        if pc.budget_adversary == "coordinator"
        else None
    )
    p = privacy.plan(
        target_epsilon=pc.target_epsilon,
        delta=pc.delta,
        rounds=rounds,
        sampling=sampling,
        accountant=pc.accountant,
        participations=participations,
    )
    return float(p.noise_multiplier)


def privacy_setup(config: Config, *, population: int) -> PrivacySetup | None:
    """The run's DP mechanism, validated; None when privacy is off."""
    pc = config.privacy
    sa = config.secure_aggregation
    if not pc.client_level:
        return None  # no client-level noise (record-level DP lives in the client pipelines)
    name = pc.placement
    if name == "auto":
        name = "distributed" if sa.protocol != "none" else "central"
    placement = NoisePlacement(name)
    secure = sa.protocol != "none"
    if (
        placement is NoisePlacement.DISTRIBUTED
        and secure
        and config.server.sampling is SamplingMode.FIXED_SIZE
    ):
        raise ConfigError(
            "privacy.placement=distributed with secure aggregation is accounted with the "
            "distributed discrete Gaussian analysis, which needs server.sampling = poisson or all"
        )
    if pc.adaptive_clipping and placement is NoisePlacement.DISTRIBUTED and secure:
        raise ConfigError(
            "privacy.adaptive_clipping with distributed noise inside secure aggregation "
            "is not supported (the clip bit would need its own discrete noise); use "
            "privacy.placement = central or fixed clipping"
        )
    z = _resolve_noise_multiplier(config, population=population)
    if not (math.isfinite(z) and z > 0):
        raise ConfigError(f"privacy.noise_multiplier must be > 0, got {z}")
    zv, bit_std = z, None
    if pc.adaptive_clipping:
        split = privacy.adaptive_clip_noise_split(
            noise_multiplier=z,
            expected_clients_per_round=config.server.sampling_config().expected_clients(population),
            clipped_count_stddev=pc.clipped_count_stddev,
        )
        zv, bit_std = split.value_noise_multiplier, split.clipped_count_stddev
    return PrivacySetup(
        placement=placement,
        noise_multiplier=z,
        value_noise_multiplier=zv,
        bit_std=bit_std,
        min_survivor_fraction=(
            sa.min_survivor_fraction if placement is NoisePlacement.DISTRIBUTED else 1.0
        ),
        assumed_colluding=0,
        delta=pc.delta,
        accountant=pc.accountant,
        adaptive=pc.adaptive_clipping,
        target_quantile=pc.target_quantile,
        clip_lr=pc.clip_lr,
    )


# ------------------------------------------------------------------------------ plan


@dataclass(frozen=True, kw_only=True)
class RoundPlan:
    """Everything decided about one round before it starts (a pure value)."""

    round: int
    sampled: SampledRound
    participants: tuple[str, ...]
    #: Length of the packed global state (theta[, log alpha]).
    dimension: int
    settings: RoundSettings
    #: The update part's central noise std (central DP only).
    central_noise_std: float | None
    #: Central noise std of the clip-bit sum (central DP with adaptive clipping).
    central_bit_std: float | None
    codec: FixedPointCodec | None
    #: Fixed public denominator (DP: the expected number of clients), else None.
    denominator: float | None

    @property
    def aggregated_dimension(self) -> int:
        return self.dimension + self.settings.extra_coordinates()


def _protocol(config: Config) -> AggregationProtocol:
    return AggregationProtocol(
        {"none": "plain", "secagg": "secagg", "secagg+": "secagg+"}[
            config.secure_aggregation.protocol
        ]
    )


def record_level_request(config: Config, *, population: int) -> RecordLevelRequest | None:
    """The record-level DP a round asks its participants for (None: the config has none)."""
    pc = config.privacy
    if not pc.record_level:
        return None
    target = pc.record_target_epsilon
    return RecordLevelRequest(
        algorithm=config.algorithm.name.value,
        unit=pc.unit_column or "record",
        noise_multiplier=pc.record_noise_multiplier,
        target_epsilon=target,
        rounds=record_level_rounds(config, population=population) if target is not None else None,
        delta=pc.delta,
    )


def _modulus_bits(config: Config) -> int:
    return config.secure_aggregation.bits or (48 if config.privacy.enabled else 32)


def plan_round(
    config: Config,
    dp: PrivacySetup | None,
    *,
    sampled: SampledRound,
    participants: Sequence[str],
    dimension: int,
    clip_norm: float,
) -> RoundPlan:
    """The round plan (pure): noise, clip, protocol parameters, scale, denominator.

    ``clip_norm`` is the current clip norm (it moves between rounds under adaptive
    clipping). Shared by simulation and deployment, so they can never disagree.
    """
    protocol = _protocol(config)
    n = len(participants)
    weighted = config.server.weighting == "samples"
    adaptive = dp is not None and dp.adaptive
    extras = int(adaptive) + int(weighted)
    d_agg = dimension + extras
    clip: float | None = clip_norm if (dp is not None or protocol.secure) else None
    noise = ClientNoise.NONE
    noise_std = 0.0
    bit_noise_std: float | None = None
    central_std: float | None = None
    central_bit: float | None = None
    m_min = 1
    colluding = 0
    denominator: float | None = None
    scale: float | None = None
    secagg: SecAggConfig | None = None
    bits = _modulus_bits(config)
    policy: ClientPolicy | None = None
    if protocol.secure:
        sa = config.secure_aggregation
        distributed = dp is not None and dp.placement is NoisePlacement.DISTRIBUTED
        secagg = SecAggConfig(
            num_clients=n,
            mode=protocol.mode,
            modulus_bits=bits,
            max_dropout_fraction=sa.tolerated_dropout(),
            max_corrupt_fraction=sa.max_corrupt_fraction,
            # The survivor minimum the DP noise is sized for (two: a sum of one is an
            # input); every client checks the round against it (its policy).
            # (a fraction of 1 -- every participant -- is the policy's largest, 1 - 1e-6).
            min_survivor_fraction=min(sa.min_survivor_fraction, 1 - 1e-6) if distributed else 0.5,
            min_survivors=2,
        )
        policy = secagg.policy()
    if dp is not None:
        # A fixed, public denominator (the expected number of clients) keeps the
        # sensitivity of the mean at C / E[m] whatever the realized count was.
        denominator = max(1.0, sampled.rate * sampled.population)
        colluding = dp.assumed_colluding
        if dp.placement is NoisePlacement.DISTRIBUTED:
            m_min = max(1, math.ceil(dp.min_survivor_fraction * n))
            if policy is not None:
                # Inside secure aggregation the coordinator may collude with up to
                # floor(gamma n) participants: the honest survivors alone must carry
                # the target noise (Kairouz et al.'s m - c).
                m_min = policy.dp_survivors(n)
                colluding = policy.corrupt(n)
            per_client = privacy.distributed_noise_std(
                noise_multiplier=dp.value_noise_multiplier,
                clip_norm=clip_norm,
                min_survivors=m_min,
                assumed_colluding_clients=colluding,
            )
            if protocol.secure:
                # Fixed-point scale: as fine as the modulus and the exact sampler allow.
                # A larger scale shrinks the rounding term sqrt(d) relative to C*scale in
                # the sensitivity bound the accountant charges; it is capped so that the
                # sum of n clipped updates plus 12 noise standard deviations fits in the
                # modulus, and so that the per-client integer sigma stays within the
                # exact sampler's range.
                span = n * clip_norm + 12.0 * math.sqrt(n) * per_client
                scale = float(
                    min(
                        2 ** (bits - 2) / span,
                        0.99 * DISCRETE_GAUSSIAN_MAX_SIGMA / per_client,
                    )
                )
                noise, noise_std = ClientNoise.DISCRETE_GAUSSIAN, per_client * scale
            else:
                noise, noise_std = ClientNoise.GAUSSIAN, per_client
                if dp.bit_std is not None:
                    bit_noise_std = dp.bit_std / math.sqrt(m_min - colluding)
        else:
            central_std = privacy.central_noise_std(
                noise_multiplier=dp.value_noise_multiplier, clip_norm=clip_norm
            )
            central_bit = dp.bit_std
    settings_clip = clip
    if protocol.secure and scale is None:
        assert clip is not None
        extra = 0.25 if adaptive else 0.0
        scale = FixedPointCodec.create(
            clip_norm=math.sqrt(clip**2 + extra),
            num_clients=n,
            modulus_bits=bits,
            dimension=d_agg,
        ).scale
    settings = RoundSettings(
        protocol=protocol,
        clip_norm=settings_clip,
        noise=noise,
        noise_std=noise_std,
        bit_noise_std=bit_noise_std,
        adaptive_clip_bit=adaptive,
        weighted=weighted,
        min_survivors=m_min,
        assumed_colluding=colluding,
        secagg=secagg,
        scale=scale,
        record_level=record_level_request(config, population=sampled.sampling.population),
    )
    codec = codec_for(settings, dimension=d_agg) if protocol.secure else None
    return RoundPlan(
        round=sampled.round,
        sampled=sampled,
        participants=tuple(participants),
        dimension=dimension,
        settings=settings,
        central_noise_std=central_std,
        central_bit_std=central_bit,
        codec=codec,
        denominator=denominator,
    )


# ------------------------------------------------------------------------------ engine


def _load_excluded(path: Path) -> dict[str, dict[str, Any]]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))["excluded"]
        if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
            raise TypeError("not a table of excluded participants")
    except (OSError, ValueError, KeyError, TypeError) as e:
        # Never treated as empty: that would readmit a proven offender.
        raise CheckpointError(f"{path}: unreadable exclusion record ({e})") from None
    return {str(k): v for k, v in raw.items()}


@dataclass
class _Round:
    plan: RoundPlan
    session_id: bytes
    index_of: dict[str, int]
    server: AggregationServer
    started: float
    deadline: float
    stage: Stage
    charged: bool = False
    refused: dict[str, str] = field(default_factory=dict)
    #: Participants that withdrew (name -> "STAGE: their reason").
    withdrew: dict[str, str] = field(default_factory=dict)
    replies: dict[Stage, int] = field(default_factory=dict)
    #: Participants this round proved to misbehave (name -> offence), now excluded.
    excluded: dict[str, str] = field(default_factory=dict)

    @property
    def number(self) -> int:
        return self.plan.round

    def name_of(self, index: int) -> str:
        # The roster is sorted and indexed 0..n-1 (plan.participants): O(1), not a scan
        # per contributor (which made charging a 10,000-client round quadratic).
        name = self.plan.participants[index]
        if self.index_of.get(name) != index:
            raise KeyError(index)
        return name


class RoundEngine:
    """Runs federated rounds over whatever transport feeds it (see module docstring).

    ``population`` are the client names the sampler draws from; ``identities(name)``
    gives a participant's roster identity (the transport knows it: a certificate in
    deployment, a generated key in simulation). ``clock`` is any monotonic clock
    (a manual one in simulation). ``on_round_end(line)`` may add fields to a round's
    metrics line before it is written (the simulation adds validation accuracy).
    """

    def __init__(
        self,
        config: Config,
        *,
        population: Sequence[str],
        module: nn.Module,
        model_spec: Mapping[str, Any],
        identities: Callable[[str], Identity],
        run_dir: Path | None,
        clock: Callable[[], float] = time.monotonic,
        train_s: float = 300.0,
        stage_s: float = 60.0,
        checkpoint_every: int | None = None,
        on_round_end: Callable[[dict[str, Any]], None] | None = None,
        checkpoint_extra: Mapping[str, Any] | None = None,
        sinks: Sequence[MetricsSink] = (),
        run_kind: str = "simulation",
    ) -> None:
        check_positive("deploy.train_s", train_s)
        check_positive("deploy.stage_s", stage_s)
        if config.server.weighting == "samples" and (
            config.privacy.enabled or config.secure_aggregation.protocol != "none"
        ):
            raise ConfigError(
                "server.weighting = samples is for non-private plain aggregation: under DP the "
                "denominator must be fixed and public, and secure aggregation's range needs a "
                "bounded update; use server.weighting = uniform"
            )
        self.config = config
        self.population = tuple(population)
        self.model_spec = dict(model_spec)
        self.identities = identities
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.clock = clock
        self.train_s = float(train_s)
        self.stage_s = float(stage_s)
        self.checkpoint_every = checkpoint_every or config.run.checkpoint_every
        self.on_round_end = on_round_end
        self.checkpoint_extra = dict(checkpoint_extra or {})
        self.run_kind = run_kind
        #: Deployed sites keep their own ledgers and send the record-level release they
        #: charged with their update; the coordinator's ledger records a copy. (Simulated
        #: clients charge the run's ledger directly, secure_fml.record_dp.RecordLevelLedger.)
        self.record_receipts = run_kind == "deployment"
        #: Extra metrics sinks (TensorBoard, MLflow, JSON log lines); metrics.jsonl is
        #: always written (when there is a run directory) and is the record of the run.
        self._extra_sinks = list(sinks)
        self.metrics: MultiSink = MultiSink([], optional=self._extra_sinks)
        self.fmodel = FunctionalModel(module)
        self.algorithm: Algorithm = make_algorithm(config.algorithm, self.fmodel)
        self.state = self.algorithm.initial_state(self.fmodel.initial_parameters())
        self.optimizer = ServerOptimizer(
            self.state,
            config.server.optimizer_config(self.algorithm.update_kind),
            alpha_offset=self.fmodel.dim if self.algorithm.learns_alpha else None,
        )
        self.insecure_seed = config.run.insecure_seed
        if self.insecure_seed is not None:
            warnings.warn(INSECURE_SEED_WARNING, RuntimeWarning, stacklevel=2)
            log.warning(INSECURE_SEED_WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # warned once, just above
            self.sampler = ClientSampler(
                self.population,
                config.server.sampling_config(),
                insecure_seed=self.insecure_seed,
            )
        self.dp = privacy_setup(config, population=len(self.population))
        self.clip_norm = float(config.privacy.clip_norm)
        self.protocol = _protocol(config)
        self.ledger: PrivacyLedger | None = None
        self.round = 0
        self._round: _Round | None = None
        self._outbox: dict[str, list[EngineMessage]] = {}
        self.stopped: str | None = None
        self.stop_error: Exception | None = None
        self.history: list[dict[str, Any]] = []
        self.last_aggregate: np.ndarray | None = None
        #: The plan of the last round that started.
        self.last_plan: RoundPlan | None = None
        #: The round of the newest checkpoint on disk (None: no run directory).
        self.checkpoint_round: int | None = None
        #: Progress watchdog: round attempts aborted in a row, and when the next may start.
        self.aborts_in_a_row = 0
        self.ready_at: float | None = None
        #: Participants excluded for proven misbehaviour (name -> round, offence, evidence);
        #: persisted in ``run_dir`` (:data:`EXCLUDED_FILE`), never sampled into a round again.
        self.excluded: dict[str, dict[str, Any]] = {}
        self._checkpoint_line: dict[str, Any] | None = None
        self._opened = False

    # ------------------------------------------------------------------ lifecycle

    def _randomness(self, label: str) -> Csprng:
        if self.insecure_seed is not None:
            return Csprng.insecure_from_seed(self.insecure_seed, f"engine/{label}")
        return Csprng()

    def central_noise_source(self, round_: int) -> GaussianNoiseSource:
        """Where the coordinator's central noise for ``round_`` comes from (the CSPRNG)."""
        return GaussianNoiseSource(rng=self._randomness(f"central-noise/{round_}"))

    def open(self, *, resume: bool = True) -> None:
        """Create the run (config files, empty metrics) or resume it from ``run_dir``."""
        ckpt: Checkpoint | None = None
        run_dir = self.run_dir
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            path = run_dir / CHECKPOINT_FILE
            if resume and path.exists():
                ckpt = load_checkpoint(path)
            else:
                (run_dir / "config.json").write_text(
                    json.dumps(config_to_dict(self.config), indent=2) + "\n", encoding="utf-8"
                )
                (run_dir / "config.toml").write_text(dump_toml(self.config), encoding="utf-8")
                self._write_run_metadata(finished=False)
        if self.config.privacy.enabled:
            # Client-level releases and sites' record-level receipts share the run's ledger.
            ledger_dir = run_dir
            if ledger_dir is None:
                ledger_dir = Path(tempfile.mkdtemp(prefix="secure-fml-ledger-"))
            head = None
            if ckpt is not None and ckpt.extra.get("ledger_head"):
                head = LedgerHead(**ckpt.extra["ledger_head"])
            pc = self.config.privacy
            budget = (
                PrivacyBudget(
                    max_epsilon=pc.max_epsilon,
                    delta=pc.delta,
                    accountant=pc.accountant,
                    adversary=Adversary(pc.budget_adversary),
                    colluding_sites=pc.colluding_sites,
                )
                if pc.max_epsilon is not None
                else None
            )
            self.ledger = PrivacyLedger.open(
                ledger_dir / privacy.LEDGER_FILENAME, budget=budget, expected_head=head
            )
        if run_dir is not None and (run_dir / EXCLUDED_FILE).exists():
            self.excluded = _load_excluded(run_dir / EXCLUDED_FILE)
        if ckpt is not None:
            self._restore(ckpt)
        elif run_dir is not None:
            save_checkpoint(run_dir / CHECKPOINT_FILE, self.checkpoint())
            self.checkpoint_round = 0
        required: list[MetricsSink] = []
        if run_dir is not None:
            # Rounds after the one resumed from will run again: their lines go (a fresh
            # run starts an empty file), so metrics never duplicate.
            # A deployment's metrics line is fsync'ed like its ledger and checkpoint.
            required.append(
                JsonlSink(
                    run_dir / METRICS_FILE,
                    resume_after_round=self.round,
                    fsync=self.run_kind == "deployment",
                )
            )
        self.metrics = MultiSink(required, optional=self._extra_sinks)
        if ckpt is not None and run_dir is not None:
            self._recover_records(ckpt, run_dir / METRICS_FILE)
            # Only now (every round since the checkpoint has its record) is the resumed
            # round made the checkpoint's: a crash before this redoes the recovery.
            save_checkpoint(run_dir / CHECKPOINT_FILE, self.checkpoint())
            self.checkpoint_round = self.round
        self._opened = True

    def _recover_records(self, ckpt: Checkpoint, metrics_path: Path) -> None:
        """Give every round since the last complete record its record after a crash
        (``kill -9`` at any point of a round; see "Crash points" in the module docstring).

        - The checkpoint's own round was applied, but the process may have died before
          its metrics line: the line stored in the checkpoint is written (``recovered``).
        - A round charged after the checkpoint (its update lost with the process) stays
          spent and is recorded as ``charged-not-applied`` in the metrics and, as a
          :class:`~privacy.RoundNotApplied`, in the ledger; a round the ledger records as
          skipped or lost gets its ``lost`` line if it had none.

        Idempotent: a crash during the recovery itself repeats only what is missing.
        """
        seen: dict[int, set[str]] = {}
        if metrics_path.exists():
            for raw in metrics_path.read_text(encoding="utf-8").splitlines():
                if raw.strip():
                    obj = json.loads(raw)
                    if isinstance(obj, dict) and isinstance(obj.get("round"), int):
                        seen.setdefault(obj["round"], set()).add(str(obj.get("status")))
        stored = ckpt.extra.get("metrics_line")
        if (
            isinstance(stored, dict)
            and stored.get("round") == ckpt.round
            and ckpt.round not in seen
        ):
            self.metrics.round({**stored, "recovered": True})
            log.warning("round %d: metrics line restored from the checkpoint", ckpt.round)
        lost = list(range(ckpt.round + 1, self.round + 1))
        if not lost:
            return
        released: set[int] = set()
        annotated: set[int] = set()
        if self.ledger is not None:
            for e in self.ledger.entries:
                if isinstance(e.event, privacy.RoundNotApplied):
                    annotated.add(e.round)
                elif not isinstance(
                    e.event, privacy.ClipStatistics | privacy.RecordLevelRelease | SkippedRound
                ):
                    released.add(e.round)
        reason = (
            f"the coordinator stopped after this round was charged and before its checkpoint; "
            f"resumed from the checkpoint of round {ckpt.round}"
        )
        for r in lost:
            charged = r in released
            if charged and r not in annotated:
                assert self.ledger is not None
                self.ledger.record(privacy.RoundNotApplied(round=r, cause=reason))
            status = "charged-not-applied" if charged else "lost"
            if status not in seen.get(r, set()):
                self.metrics.round(
                    {
                        "round": r,
                        "status": status,
                        "reason": reason if charged else "lost in a coordinator restart",
                        "lost_rounds": lost,
                        "checkpoint_round": ckpt.round,
                        "contributors": 0,
                    }
                )

    def _write_run_metadata(self, *, finished: bool) -> None:
        """``run.json``: run identity for the privacy report (config hash, versions, times)."""
        if self.run_dir is None:
            return
        path = self.run_dir / privacy.RUN_METADATA_FILENAME
        started = None
        if path.exists():
            try:
                started = json.loads(path.read_text(encoding="utf-8")).get("started_at")
            except (json.JSONDecodeError, OSError, AttributeError):
                started = None
        now = datetime.now(UTC).isoformat(timespec="seconds")
        meta = privacy.run_metadata(
            config_to_dict(self.config),
            started_at=started or now,
            finished_at=now if finished else None,
            kind=self.run_kind,
            noise_seeded=self.insecure_seed is not None,
        )
        atomic_write_bytes(path, (json.dumps(meta, indent=2) + "\n").encode())

    def close(self) -> None:
        """Close the metrics sinks and release the privacy ledger (its file lock)."""
        if self._opened and self.finished:
            self._write_run_metadata(finished=True)
        self.metrics.close()
        if self.ledger is not None:
            self.ledger.close()

    @property
    def finished(self) -> bool:
        return self.stopped is not None or self.round >= self.config.server.rounds

    @property
    def round_open(self) -> bool:
        return self._round is not None

    @property
    def deadline(self) -> float | None:
        return self._round.deadline if self._round is not None else None

    def epsilon(self) -> float | None:
        """Client-level epsilon spent so far against the adversary the config names
        (default: the coordinator; None: no client-level DP)."""
        if self.ledger is None or self.dp is None:
            return None
        pc = self.config.privacy
        return float(
            self.ledger.adversary_epsilon(
                adversary=Adversary(pc.budget_adversary),
                delta=self.dp.delta,
                accountant=self._upper_bound_accountant(),
                colluding_sites=pc.colluding_sites,
            ).epsilon
        )

    def _upper_bound_accountant(self) -> str:
        assert self.dp is not None
        return "rdp" if self.dp.accountant == "gdp" else self.dp.accountant

    def epsilon_by_adversary(self) -> dict[str, Any] | None:
        """Epsilon against each adversary of THREAT_MODEL.md, from the ledger."""
        if self.ledger is None or self.dp is None:
            return None
        res = self.ledger.epsilon_by_adversary(
            delta=self.dp.delta,
            accountant=self._upper_bound_accountant(),
            colluding_sites=self.config.privacy.colluding_sites,
        )
        out: dict[str, Any] = res.as_dict()
        return out

    def checkpoint(self) -> Checkpoint:
        return training_checkpoint(
            round=self.round,
            state=self.state,
            optimizer=self.optimizer,
            model_spec=self.model_spec,
            config=config_to_dict(self.config),
            algorithm=self.config.algorithm.name.value,
            ledger_head=self.ledger.head if self.ledger is not None else None,
            extra={
                "clip_norm": self.clip_norm,
                **self.checkpoint_extra,
                # The record of the checkpoint's round, rewritten after a crash between
                # the checkpoint and its metrics line (the sites' own errors left out).
                "metrics_line": self._checkpoint_line,
            },
        )

    def _restore(self, ckpt: Checkpoint) -> None:
        if ckpt.state.numel() != self.state.numel():
            raise CheckpointError(
                f"checkpoint state has {ckpt.state.numel()} values, the model needs "
                f"{self.state.numel()}"
            )
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.state = self.optimizer.state
        self.clip_norm = float(ckpt.extra.get("clip_norm", self.clip_norm))
        last = self.ledger.last_round if self.ledger is not None else None
        self.round = resume_round(ckpt.round, last)
        self.sampler.resume_after(self.round)
        self.checkpoint_round = ckpt.round
        log.info("resumed at round %d", self.round)

    # ------------------------------------------------------------------ rounds

    def start_round(self, available: Collection[str]) -> bool:
        """Draw round ``round + 1`` and open it for the reachable sampled clients.

        Returns False when the round was skipped (too few participants): the skip is
        recorded and the round index is spent -- the draw is never repeated.
        """
        if not self._opened:
            raise ConfigError("call RoundEngine.open() first")
        if self._round is not None:
            raise OutOfOrder(f"round {self._round.number} is still open")
        if self.finished:
            return False
        now = self.clock()
        if self.ready_at is not None and now < self.ready_at:
            raise OutOfOrder(
                f"backing off after {self.aborts_in_a_row} aborted round(s): the next round "
                f"may start in {self.ready_at - now:.1f}s"
            )
        r = self.round + 1
        sampled = self.sampler.sample(r)
        # A participant proven to misbehave is never in a round again (as if unreachable).
        live = set(available) - set(self.excluded)
        participants = tuple(sorted(c for c in sampled.client_ids if c in live))
        plan_min = self._min_participants()
        if len(participants) < plan_min:
            self._skip(sampled, participants, f"{len(participants)} participants, need {plan_min}")
            return False
        try:
            plan = plan_round(
                self.config,
                self.dp,
                sampled=sampled,
                participants=participants,
                dimension=int(self.state.numel()),
                clip_norm=self.clip_norm,
            )
        except (ConfigError, InvalidMessage) as e:
            self._skip(sampled, participants, f"no safe round plan: {e}")
            return False
        sid = self._randomness(f"session/{r}").bytes(16)
        model = np.ascontiguousarray(self.state.detach().cpu().numpy(), dtype=np.float32).copy()
        model.setflags(write=False)
        # The same check every client runs (finite, hashed); in memory it is done once
        # per process for this read-only array.
        mh, _ = VERIFIED_MODELS.check(model)
        index_of = {name: i for i, name in enumerate(participants)}
        ids = {name: self.identities(name) for name in participants}
        peers = tuple(Peer(i, name, ids[name].identity) for name, i in index_of.items())
        server: AggregationServer
        s = plan.settings
        if s.protocol.secure:
            assert s.secagg is not None
            server = ServerSession(
                s.secagg,
                identity_keys={index_of[n]: ids[n].public_key for n in participants},
                session_id=sid,
                round_index=r,
                model_hash=mh,
                dimension=plan.aggregated_dimension,
                min_inputs=s.min_survivors if s.noise is ClientNoise.DISCRETE_GAUSSIAN else None,
            )
        else:
            server = PlainSumServer(
                participants=range(len(participants)),
                session_id=sid,
                round_index=r,
                dimension=plan.aggregated_dimension,
                min_inputs=s.min_survivors,
            )
        rd = _Round(
            plan=plan,
            session_id=sid,
            index_of=index_of,
            server=server,
            started=now,
            deadline=now + self.train_s,
            stage=server.stage,
        )
        self._outbox = {}
        for name, i in index_of.items():
            self._outbox.setdefault(name, []).append(
                RoundStart(
                    round=r,
                    session_id=sid,
                    client_index=i,
                    peers=peers,
                    model=model,
                    model_hash=mh,
                    settings=s,
                )
            )
        self._round = rd
        self.last_plan = plan
        log.info(
            "round %d started with %d of %d sampled clients",
            r,
            len(participants),
            len(sampled.client_ids),
        )
        return True

    def abandon_round(self, round_: int, participants: Sequence[str], *, reason: str) -> None:
        """Spend round ``round_``, which was started before a crash and never finished.

        Its participants may have released their inputs to the lost process, and an
        honest site never contributes to one round index twice, so the round is not
        run again: it is recorded as lost (a :class:`~privacy.SkippedRound` in the
        ledger, nothing was unmasked; a ``lost`` metrics line) and training continues
        with the next index. A round that was charged is already past (no-op).
        """
        if self._round is not None:
            raise OutOfOrder(f"round {self._round.number} is open")
        if round_ <= self.round:
            return
        if round_ != self.round + 1:
            raise CheckpointError(
                f"round {round_} was started but the run resumes at round {self.round}"
            )
        sampled = SampledRound(round_, tuple(participants), self.sampler.accounting)
        self._record_skip(
            sampled,
            participants,
            reason=SkipReason.TOO_FEW_SURVIVORS,
            required=max(1, len(participants)),
            surviving=0,
        )
        self.round = round_
        self.sampler.resume_after(round_)
        log.warning("round %d lost: %s", round_, reason)
        line = {
            **sampled.as_dict(),
            "participants": len(participants),
            "status": "lost",
            "reason": reason,
            "contributors": 0,
        }
        self._emit(line, checkpoint=True)

    def _min_participants(self) -> int:
        """Fewest participants a round runs with (fewer: the round is skipped)."""
        return MIN_SECURE_PARTICIPANTS if self.protocol.secure else 1

    def _record_skip(
        self,
        sampled: SampledRound,
        participants: Sequence[str],
        *,
        reason: SkipReason,
        required: int,
        surviving: int | None = None,
    ) -> None:
        """A round that released nothing is still a round of the ledger (a SkippedRound):
        never charged, never redrawn, and visible to whoever sees the round happen."""
        if self.ledger is None or self.dp is None:
            return
        sampling = sampled.sampling
        self.ledger.record(
            SkippedRound(
                round=sampled.round,
                reason=reason,
                clients_sampled=len(participants),
                required=required,
                sampling_mode=sampling.mode,
                sample_rate=sampling.sample_rate,
                population=sampling.population,
                noise_multiplier=self.dp.noise_multiplier,
                placement=self.dp.placement,
                clients_surviving=surviving,
                client_ids=tuple(participants),
            )
        )

    def pending(self, client: str) -> bool:
        return bool(self._outbox.get(client))

    def next_message(self, client: str) -> EngineMessage | None:
        """The next message for ``client`` (None: nothing for it now)."""
        box = self._outbox.get(client)
        return box.pop(0) if box else None

    def drain(self) -> dict[str, list[EngineMessage]]:
        """Every queued message, by recipient (in-memory transports)."""
        # The queues themselves change hands (a copy per recipient would cost a list per
        # client of a 10,000-client round); new messages start new queues.
        out = {c: box for c, box in self._outbox.items() if box}
        self._outbox = {}
        return out

    def expected_reply(self, client: str) -> tuple[Stage, int] | None:
        """(stage, round) the engine accepts from ``client`` right now, or None."""
        rd = self._round
        if rd is None or client not in rd.index_of:
            return None
        if not rd.server.awaits(rd.index_of[client]):
            return None
        return rd.stage, rd.number

    def reply_limits(self, stage: Stage) -> tuple[int, tuple[str, int] | None]:
        """(max serialized bytes, declared tensor) of a reply for ``stage`` right now,
        so a transport can refuse an oversize or mis-shaped stream before parsing."""
        rd = self._round
        small = 4 << 20  # keys, shares, signatures: kilobytes per peer
        if rd is None:
            return small, None
        d = rd.plan.aggregated_dimension
        s = rd.plan.settings
        if not s.protocol.secure:
            return (64 + 4 * d, ("float32", d)) if stage is Stage.MASKED_INPUT else (small, None)
        assert s.secagg is not None
        bits = s.secagg.modulus_bits
        limit = reply_size_limit(
            stage.value,
            num_clients=s.secagg.num_clients,
            degree=s.secagg.k,
            dimension=d,
            modulus_bits=bits,
        )
        return limit, ((f"uint{bits}", d) if stage is Stage.MASKED_INPUT else None)

    def _open_stage_of(
        self, client: str, *, round_: int, session_id: bytes, stage: Stage, what: str
    ) -> tuple[_Round, int]:
        """The open round and ``client``'s index, if it may answer ``stage`` now."""
        rd = self._round
        if rd is None or round_ != rd.number or not hmac.compare_digest(session_id, rd.session_id):
            raise StaleMessage(
                f"{what} for round {round_} of another session; the current round is "
                f"{rd.number if rd else 'none'} (replay or late client)"
            )
        idx = rd.index_of.get(client)
        if idx is None:
            raise OutOfOrder(f"client {client!r} is not a participant of round {rd.number}")
        if stage.value < rd.stage.value:
            raise StaleMessage(
                f"{stage.name} {what} after that stage closed (replay or late client)"
            )
        if stage is not rd.stage:
            raise OutOfOrder(f"{stage.name} {what} while stage {rd.stage.name} is open")
        if not rd.server.awaits(idx):
            raise StaleMessage(f"duplicate or unexpected {stage.name} {what} from {client!r}")
        return rd, idx

    def withdraw(self, client: str, notice: Withdrawal) -> None:
        """``client`` leaves the open round in its open stage (its policy refused it):
        silent from now on, so the stage closes as soon as everyone else answered.
        Raises a typed error (and changes nothing) if it may not answer that stage."""
        rd, idx = self._open_stage_of(
            client,
            round_=notice.round,
            session_id=notice.session_id,
            stage=notice.stage,
            what="withdrawal",
        )
        rd.server.withdraw(idx)
        rd.withdrew[client] = f"{notice.stage.name}: {notice.reason}"
        log.warning(
            "round %d: %s withdrew in %s: %s",
            rd.number,
            client,
            notice.stage.name,
            notice.reason,
            extra={"site": client},
        )
        self._maybe_advance()

    def submit(self, client: str, reply: StageReply) -> None:
        """Ingest one client reply; raises a typed error (and changes nothing else) if
        refused. A refused reply counts as that client's answer for the stage."""
        rd, idx = self._open_stage_of(
            client,
            round_=reply.round,
            session_id=reply.session_id,
            stage=reply.stage,
            what="reply",
        )
        try:
            sender = reply.message.sender_id()
            if sender != idx:
                raise InvalidMessage(f"message claims to be from client {sender}")
            if self.record_receipts and isinstance(reply.message, MaskedInput | PlainInput):
                self._record_release(rd, client, reply)
            rd.server.receive(reply.message)
        except ProtocolError as e:
            # A client that sends an invalid message for its open stage is out of this
            # round (a dropout the protocol recovers); others are unaffected.
            rd.refused[client] = f"{type(e).__name__}: {e}"
            self._maybe_advance()
            raise
        rd.replies[rd.stage] = rd.replies.get(rd.stage, 0) + 1
        self._maybe_advance()

    def _record_release(self, rd: _Round, client: str, reply: StageReply) -> None:
        """Copy a site's record-level release into this ledger before its update is used.

        The site charged it to its own ledger first (its own budget, against this
        coordinator); a release below what the round asked for is refused.
        """
        want = rd.plan.settings.record_level
        ev = reply.record_release
        if want is None:
            if ev is not None:
                raise InvalidMessage("a record-level release in a round that asked for none")
            return
        if ev is None:
            raise InvalidMessage(
                f"round {rd.number} asks for record-level DP; the update carries no release"
            )
        if ev.site_id != client or ev.round != rd.number:
            raise InvalidMessage(
                f"record-level release names {ev.site_id!r} in round {ev.round}, not "
                f"{client!r} in round {rd.number}"
            )
        if want.unit != "record" and ev.unit != want.unit:
            raise InvalidMessage(f"record-level release per {ev.unit!r}, asked per {want.unit!r}")
        if want.noise_multiplier is not None and not ev.noise_multiplier >= want.noise_multiplier:
            raise InvalidMessage(
                f"record-level noise multiplier {ev.noise_multiplier:g} is below the "
                f"{want.noise_multiplier:g} the round asked for"
            )
        assert self.ledger is not None
        # Recorded even if the update itself is then refused: it left the site, which
        # charged it too, so the copy matches the site's own ledger.
        self.ledger.record(ev)

    def tick(self) -> None:
        """Close the open stage if its deadline passed."""
        rd = self._round
        if rd is not None and self.clock() >= rd.deadline:
            log.info("round %d: %s deadline passed", rd.number, rd.stage.name)
            self._advance(rd)

    def _maybe_advance(self) -> None:
        rd = self._round
        if rd is not None and rd.server.awaiting() == 0:
            self._advance(rd)

    def _advance(self, rd: _Round) -> None:
        """Close the open stage (all replies in, or its deadline passed)."""
        try:
            out = rd.server.close_stage()
            if isinstance(out, Aggregate):
                self._exclude_offenders(rd)
                if not rd.charged:
                    self._charge(rd, out.contributors)
                self._apply(rd, out)
                return
            if out.reveals_sum and not rd.charged:
                self._charge(rd, self._contributors(rd))
            self._send(rd, out)
        except (ProtocolError, PrivacyError) as e:
            self._exclude_offenders(rd)
            self._abort(rd, e)

    def _exclude_offenders(self, rd: _Round) -> None:
        """Exclude from later rounds every participant the aggregation server proved to
        misbehave in this round (re-checked with :func:`aggregation.verify_evidence`
        against the round's roster, so only a signed proof excludes, never a suspicion),
        durably before the round's metrics line."""
        srv = rd.server
        if not isinstance(srv, ServerSession):
            return
        for ev in srv.evidence:
            if not ev.proven:
                continue
            try:
                name = rd.name_of(ev.offender)
            except KeyError:
                continue
            if name in self.excluded:
                continue
            try:
                verify_evidence(ev, srv.roster)
            except ProtocolError as e:
                log.warning("round %d: evidence against %s does not verify: %s", rd.number, name, e)
                continue
            self.excluded[name] = {
                "round": rd.number,
                "kind": ev.kind.value,
                "detail": ev.detail,
                "roster": list(rd.plan.participants),
                "evidence": {
                    "offender": ev.offender,
                    "context": ev.context.hex(),
                    "parts": [[k, v.hex()] for k, v in ev.parts],
                },
            }
            rd.excluded[name] = ev.kind.value
            log.warning(
                "round %d: %s excluded from later rounds, proven %s (%s)",
                rd.number,
                name,
                ev.kind.value,
                ev.detail,
            )
        if rd.excluded and self.run_dir is not None:
            data = json.dumps({"excluded": self.excluded}, indent=2, sort_keys=True) + "\n"
            atomic_write_bytes(self.run_dir / EXCLUDED_FILE, data.encode())

    def give_up(self, error: NoProgress) -> None:
        """Stop the run: no round can make progress (the watchdog, or no sites left)."""
        log.error("%s", error)
        self.stopped = str(error)
        self.stop_error = error

    @staticmethod
    def _contributors(rd: _Round) -> tuple[int, ...]:
        srv = rd.server
        if isinstance(srv, ServerSession):
            return srv.survivors
        raise ProtocolError("this protocol has no survivor set before its sum")

    def _send(self, rd: _Round, out: Outbox) -> None:
        for i, msg in out.messages.items():
            self._outbox.setdefault(rd.name_of(i), []).append(
                StageRequest(
                    round=rd.number, session_id=rd.session_id, stage=out.stage, message=msg
                )
            )
        rd.stage = out.stage
        rd.deadline = self.clock() + self.stage_s

    # ------------------------------------------------------------------ release

    def _event(self, rd: _Round, contributors: tuple[int, ...]) -> Any:
        dp = self.dp
        assert dp is not None
        plan = rd.plan
        s = plan.settings
        names = tuple(rd.name_of(i) for i in contributors)
        sampling: Sampling = plan.sampled.sampling
        n_sampled = max(1, len(plan.sampled.client_ids))
        if s.noise is ClientNoise.DISCRETE_GAUSSIAN:
            assert s.scale is not None
            return privacy.DistributedDiscreteGaussianRelease(
                round=rd.number,
                local_stddev=s.noise_std,
                scale=s.scale,
                clip_norm=self.clip_norm,
                beta=0.0,  # unconditional stochastic rounding: Δ2 <= C*scale + sqrt(d)
                dimension=plan.dimension,
                sampling_mode=sampling.mode,
                sample_rate=sampling.sample_rate,
                population=sampling.population,
                clients_sampled=n_sampled,
                clients_surviving=len(contributors),
                min_survivors=s.min_survivors,
                assumed_colluding_clients=s.assumed_colluding,
                client_ids=names,
                secure_aggregation=True,
                min_clients=self._min_participants(),
            )
        if s.noise is ClientNoise.GAUSSIAN:
            return GaussianRelease.distributed(
                round=rd.number,
                per_client_noise_std=s.noise_std,
                clip_norm=self.clip_norm,
                min_survivors=s.min_survivors,
                sampling=sampling,
                clients_sampled=n_sampled,
                clients_surviving=len(contributors),
                target_noise_multiplier=dp.noise_multiplier,
                assumed_colluding_clients=s.assumed_colluding,
                per_client_count_stddev=s.bit_noise_std,
                client_ids=names,
                secure_aggregation=s.protocol.secure,
                min_clients=self._min_participants(),
            )
        return GaussianRelease.central(
            round=rd.number,
            noise_multiplier=dp.value_noise_multiplier,
            clip_norm=self.clip_norm,
            sampling=sampling,
            clients_sampled=n_sampled,
            clients_surviving=len(contributors),
            clipped_count_stddev=plan.central_bit_std,
            client_ids=names,
            secure_aggregation=s.protocol.secure,
            min_clients=self._min_participants(),
        )

    def _charge(self, rd: _Round, contributors: tuple[int, ...]) -> None:
        """Record the release durably (budget-checked) before the sum can be known."""
        if self.dp is not None:
            if len(contributors) < rd.plan.settings.min_survivors:
                raise DropoutThresholdNotMet(
                    f"round {rd.number}: {len(contributors)} contributions, the noise was "
                    f"sized for at least {rd.plan.settings.min_survivors}"
                )
            assert self.ledger is not None
            self.ledger.record(self._event(rd, contributors))
        rd.charged = True

    @staticmethod
    def _check_aggregate_norm(plan: RoundPlan, total: np.ndarray, count: int) -> None:
        """Refuse a decoded sum no ``count`` clipped inputs could produce.

        Each input has norm <= C (the clip bit included); the noise the clients added
        is Gaussian with a known total std per coordinate, so its norm exceeds
        std * (sqrt(D) + 10) with probability below e^-50; stochastic rounding moves
        the sum by less than count / scale per coordinate. An insider's unclipped input
        or forged unmasking shares (a random point of the modular group) land far
        outside this bound and never reach theta. Weighted rounds are not bounded here.
        """
        s = plan.settings
        if s.clip_norm is None or s.weighted or count <= 0:
            return
        dim = int(total.shape[0])
        bound = count * secure_clip_range(s)
        if s.noise is ClientNoise.GAUSSIAN:
            per = math.hypot(s.noise_std, s.bit_noise_std or 0.0)
            bound += math.sqrt(count) * per * (math.sqrt(dim) + 10.0)
        elif s.noise is ClientNoise.DISCRETE_GAUSSIAN:
            assert s.scale is not None
            bound += math.sqrt(count) * s.noise_std / s.scale * (math.sqrt(dim) + 10.0)
        if plan.codec is not None:
            bound += math.sqrt(plan.codec.padded_dimension) * count / plan.codec.scale
        norm = float(np.linalg.norm(total))
        if not math.isfinite(norm) or norm > bound * (1 + 1e-6):
            raise InvalidMessage(
                f"round {plan.round}: the decoded sum has norm {norm:.4g}, more than "
                f"{count} clipped inputs plus their noise can have ({bound:.4g}); "
                "an input was not clipped or the unmasking was forged: not applied"
            )

    def _apply(self, rd: _Round, agg: Aggregate) -> None:
        plan = rd.plan
        s = plan.settings
        if agg.modulus_bits is not None:
            assert plan.codec is not None
            total = plan.codec.decode_integers(centered_lift(agg.total, agg.modulus_bits))
        else:
            total = np.asarray(agg.total, dtype=np.float64)
        d = plan.dimension
        count = len(agg.contributors)
        self._check_aggregate_norm(plan, total, count)
        if plan.central_noise_std is not None:
            noise_rng = self.central_noise_source(rd.number)
            total = total.copy()
            total[:d] += noise_rng.normal(d, std=plan.central_noise_std)
            if plan.central_bit_std is not None:
                total[d] += noise_rng.normal(1, std=plan.central_bit_std)[0]
        line_extra: dict[str, Any] = {}
        clip_used = self.clip_norm
        k = d
        if s.adaptive_clip_bit:
            assert self.dp is not None and self.ledger is not None
            bit_sum = float(total[k])
            k += 1
            if count > 0:
                # Post-processing of the release just charged: costs no privacy.
                step = privacy.adaptive_clip_step(
                    clip_norm=self.clip_norm,
                    noisy_bit_sum=bit_sum,
                    num_clients=count,
                    target_quantile=self.dp.target_quantile,
                    learning_rate=self.dp.clip_lr,
                )
                self.ledger.record(
                    privacy.ClipStatistics(
                        round=rd.number,
                        unclipped_fraction=step.unclipped_fraction,
                        next_clip_norm=step.new_clip_norm,
                    )
                )
                line_extra["dp_unclipped_fraction_noisy"] = step.unclipped_fraction
                self.clip_norm = step.new_clip_norm
        if plan.denominator is not None:
            denom = plan.denominator
        elif s.weighted:
            denom = float(total[k])
            k += 1
        else:
            denom = float(count)
        update = total[:d]
        if count > 0 and denom > 0:
            self.last_aggregate = update  # a fresh float64 array: the released sum
            mean = (update / denom).astype(np.float32)
            self.state = self.optimizer.step(torch.from_numpy(mean))
        self.round = rd.number
        self.aborts_in_a_row, self.ready_at = 0, None
        if self.dp is not None:
            line_extra.update(
                {
                    "dp_noise_multiplier": self.dp.noise_multiplier,
                    "dp_clip_norm": clip_used,
                    "dp_epsilon": self.epsilon(),
                }
            )
        self._finish(rd, status="complete", contributors=count, extra=line_extra)

    def _abort(self, rd: _Round, err: Exception) -> None:
        log.warning("round %d aborted in %s: %s", rd.number, rd.stage.name, err)
        if isinstance(err, PrivacyBudgetExhausted):
            # No later round can be charged either: stop instead of retrying forever.
            self.stopped = f"privacy budget exhausted at round {rd.number}: {err}"
            self.stop_error = err
            self._finish(rd, status=f"aborted: {type(err).__name__}", contributors=0, spent=False)
            return
        status = "charged-not-applied" if rd.charged else f"aborted: {type(err).__name__}"
        if rd.charged and self.ledger is not None and self.dp is not None:
            # The charge stands (the sum may have been revealed); the ledger also says
            # the round never changed the model.
            self.ledger.record(
                privacy.RoundNotApplied(round=rd.number, cause=f"{type(err).__name__}: {err}")
            )
        if not rd.charged:
            # Nothing was released; the round is recorded as skipped (no survivor set
            # was released: zero of the contributions it needed).
            self._record_skip(
                rd.plan.sampled,
                rd.plan.participants,
                reason=SkipReason.TOO_FEW_SURVIVORS,
                required=max(1, rd.plan.settings.min_survivors),
                surviving=0,
            )
        self.round = rd.number  # the round index is spent either way: never redrawn
        self._watchdog(rd, err)
        self._finish(rd, status=status, contributors=0, extra={"reason": str(err)})

    def _watchdog(self, rd: _Round, err: Exception) -> None:
        """Back off after an aborted attempt; after ``server.max_aborted_rounds`` in a
        row, stop with :class:`NoProgress` (naming the last reason) instead of retrying
        forever."""
        self.aborts_in_a_row += 1
        sc = self.config.server
        if self.aborts_in_a_row >= sc.max_aborted_rounds:
            self.give_up(
                NoProgress(
                    f"no progress: {self.aborts_in_a_row} round attempts in a row aborted "
                    f"(server.max_aborted_rounds = {sc.max_aborted_rounds}); the last, round "
                    f"{rd.number}, in {rd.stage.name}: {type(err).__name__}: {err}"
                )
            )
            return
        wait = sc.abort_backoff_s * 2 ** min(self.aborts_in_a_row - 1, _MAX_BACKOFF_DOUBLINGS)
        self.ready_at = self.clock() + wait
        log.warning(
            "round %d aborted (%d in a row): the next attempt in %.1fs",
            rd.number,
            self.aborts_in_a_row,
            wait,
        )

    def _skip(self, sampled: SampledRound, participants: tuple[str, ...], why: str) -> None:
        log.warning("round %d skipped: %s", sampled.round, why)
        required = max(self._min_participants(), len(participants) + 1)
        self._record_skip(
            sampled, participants, reason=SkipReason.TOO_FEW_SAMPLED, required=required
        )
        self.round = sampled.round
        line = {
            **sampled.as_dict(),
            "participants": len(participants),
            "status": "skipped",
            "reason": why,
            "contributors": 0,
        }
        self._emit(line, checkpoint=True)

    def _finish(
        self,
        rd: _Round,
        *,
        status: str,
        contributors: int,
        spent: bool = True,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self._round = None
        self._outbox = {}
        plan = rd.plan
        line: dict[str, Any] = {
            **plan.sampled.as_dict(),
            "participants": len(plan.participants),
            "status": status,
            "protocol": plan.settings.protocol.value,
            "contributors": contributors,
            "dropped": len(plan.participants) - contributors if status == "complete" else None,
            "refused": dict(rd.refused),
            "round_s": self.clock() - rd.started,
            **(extra or {}),
        }
        if rd.withdrew:
            line["withdrew"] = dict(rd.withdrew)
        if rd.excluded:
            line["newly_excluded"] = dict(rd.excluded)
        if self.excluded:
            line["excluded"] = sorted(self.excluded)
        if self.ledger is not None:
            line["epsilon"] = self.epsilon()
            line["ledger_entries"] = self.ledger.head.entries
            if self.record_receipts and plan.settings.record_level is not None:
                # The sites' own releases, copied here (a simulation adds the same field).
                eps = self.ledger.record_epsilons(delta=self.config.privacy.delta)
                line["record_dp_epsilon_worst_site"] = max(eps.values()) if eps else 0.0
        self._emit(line, checkpoint=spent)

    def _emit(self, line: dict[str, Any], *, checkpoint: bool) -> None:
        line = timestamped(line)
        if self.on_round_end is not None:
            self.on_round_end(line)
        if (
            checkpoint
            and self.run_dir is not None
            and (self.round % self.checkpoint_every == 0 or self.finished)
        ):
            line["checkpoint_round"] = self.round
            self._checkpoint_line = {
                k: v for k, v in line.items() if k not in ("refused", "withdrew")
            }
            save_checkpoint(self.run_dir / CHECKPOINT_FILE, self.checkpoint())
            self.checkpoint_round = self.round
        line["checkpoint_round"] = self.checkpoint_round
        self.metrics.round(line)
        self.history.append(line)
        log.info(
            "round %d %s: contributors %s, epsilon %s",
            line["round"],
            line["status"],
            line.get("contributors"),
            f"{line['epsilon']:.3f}" if line.get("epsilon") is not None else "-",
        )

    def status(self) -> dict[str, Any]:
        rd = self._round
        return {
            "round": self.round,
            "rounds": self.config.server.rounds,
            "finished": self.finished,
            "stopped": self.stopped,
            "excluded": sorted(self.excluded),
            "open_round": None
            if rd is None
            else {
                "round": rd.number,
                "stage": rd.stage.name,
                "waiting_for": rd.server.awaiting(),
            },
            "last": self.history[-1] if self.history else None,
        }

    def summary(self) -> dict[str, Any]:
        """What a run's summary says about its mechanism."""
        out: dict[str, Any] = {
            "protocol": self.protocol.value,
            "trusts_coordinator": not self.protocol.secure,
        }
        if self.dp is not None:
            out.update(
                {
                    "placement": self.dp.placement.value,
                    "noise_multiplier": self.dp.noise_multiplier,
                    "clip_norm": self.clip_norm,
                    "delta": self.dp.delta,
                    "accountant": self.dp.accountant,
                    "budget_adversary": self.config.privacy.budget_adversary,
                    "epsilon": self.epsilon(),
                    "epsilon_by_adversary": self.epsilon_by_adversary(),
                }
            )
        return out
