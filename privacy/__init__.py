"""Differential privacy for federated meta-updates: clipping, noise, accounting, ledger, reports.

This package is the bottom layer: it never imports ``secure_fml``, ``aggregation``
or ``audits``. It works on flat float32 numpy vectors, one per client per round
(the client's whole update, θ and Meta-SGD α parts together).

Per round, in order::

    res = clip_update(update, clip_norm=C)                       # client
    noisy = add_noise(res.vector, std=distributed_noise_std(...), source=src)  # client
    ... secure aggregation of the noisy vectors ...
    event = GaussianRelease.distributed(round=r, ..., clients_surviving=n,
                                        secure_aggregation=True, client_ids=ids)  # server
    ledger.record(event)                                         # durable, budget-checked
    apply(aggregate)                                             # only after record()

A round that releases nothing is recorded too (``ledger.record(SkippedRound(...))``).
Every ε names its adversary: ``ledger.epsilon_by_adversary(delta=...)`` gives the
worst client's ε against the coordinator (no amplification: it knows the sample)
and against an outside observer (amplified only if the sample and its size were
secret from it). Accountants are registered classes (:data:`ACCOUNTANTS`,
:func:`create_accountant`); ``gdp`` is an approximation and never calibrates or
gates a budget.
"""

from privacy._accounting import (
    ACCOUNTANTS,
    RDP_ORDERS,
    Accountant,
    GDPAccountant,
    PLDAccountant,
    PrivacyPlan,
    PrivacyProjection,
    ProjectionRow,
    PRVAccountant,
    RDPAccountant,
    Sampling,
    SamplingMode,
    create_accountant,
    ddgauss_rdp,
    ddgauss_tau,
    plan,
    project,
    register_accountant,
    rounded_l2_norm_bound,
)
from privacy._adversary import (
    Adversary,
    AdversaryEpsilon,
    EpsilonByAdversary,
    EpsilonCache,
    adversary_epsilon,
    client_composition,
    epsilon_by_adversary,
)
from privacy._clipping import (
    AdaptiveClipNoise,
    AdaptiveClipStep,
    ClipResult,
    adaptive_clip_bit,
    adaptive_clip_noise_split,
    adaptive_clip_step,
    adaptive_effective_noise_multiplier,
    clip_update,
)
from privacy._events import (
    ClipStatistics,
    DistributedDiscreteGaussianRelease,
    GaussianRelease,
    PrivacyEvent,
    SkippedRound,
    SkipReason,
)
from privacy._ledger import (
    LEDGER_SCHEMA_VERSION,
    LedgerEntry,
    LedgerHead,
    PrivacyBudget,
    PrivacyLedger,
    read_ledger,
)
from privacy._mechanisms import (
    FixedSizeGaussianMechanism,
    GaussianMechanism,
    Mechanism,
    NeighbouringRelation,
    NonPrivateMechanism,
    PoissonGaussianMechanism,
    RdpCurveMechanism,
    ThresholdPoissonGaussianMechanism,
)
from privacy._noise import (
    GaussianNoiseSource,
    NoisePlacement,
    add_noise,
    central_noise_std,
    distributed_effective_noise_multiplier,
    distributed_noise_std,
)
from privacy._report import (
    LEDGER_FILENAME,
    RUN_METADATA_FILENAME,
    ReportPaths,
    build_report,
    config_hash,
    plain_reading,
    run_metadata,
    write_report,
)
from privacy.errors import (
    CheckpointError,
    ConfigError,
    ConsistencyCheckFailed,
    DataError,
    DropoutThresholdNotMet,
    InsecureModeError,
    InvalidMessage,
    InvalidSignature,
    LedgerCorrupted,
    OutOfOrder,
    PrivacyBudgetExhausted,
    PrivacyError,
    ProtocolAbort,
    ProtocolError,
    RefusalReason,
    Refused,
    SecureFMLError,
    StaleMessage,
    TransportError,
)

__all__ = [
    "ACCOUNTANTS",
    "LEDGER_FILENAME",
    "LEDGER_SCHEMA_VERSION",
    "RDP_ORDERS",
    "RUN_METADATA_FILENAME",
    "Accountant",
    "AdaptiveClipNoise",
    "AdaptiveClipStep",
    "Adversary",
    "AdversaryEpsilon",
    "CheckpointError",
    "ClipResult",
    "ClipStatistics",
    "ConfigError",
    "ConsistencyCheckFailed",
    "DataError",
    "DistributedDiscreteGaussianRelease",
    "DropoutThresholdNotMet",
    "EpsilonByAdversary",
    "EpsilonCache",
    "FixedSizeGaussianMechanism",
    "GDPAccountant",
    "GaussianMechanism",
    "GaussianNoiseSource",
    "GaussianRelease",
    "InsecureModeError",
    "InvalidMessage",
    "InvalidSignature",
    "LedgerCorrupted",
    "LedgerEntry",
    "LedgerHead",
    "Mechanism",
    "NeighbouringRelation",
    "NoisePlacement",
    "NonPrivateMechanism",
    "OutOfOrder",
    "PLDAccountant",
    "PRVAccountant",
    "PoissonGaussianMechanism",
    "PrivacyBudget",
    "PrivacyBudgetExhausted",
    "PrivacyError",
    "PrivacyEvent",
    "PrivacyLedger",
    "PrivacyPlan",
    "PrivacyProjection",
    "ProjectionRow",
    "ProtocolAbort",
    "ProtocolError",
    "RDPAccountant",
    "RdpCurveMechanism",
    "RefusalReason",
    "Refused",
    "ReportPaths",
    "Sampling",
    "SamplingMode",
    "SecureFMLError",
    "SkipReason",
    "SkippedRound",
    "StaleMessage",
    "ThresholdPoissonGaussianMechanism",
    "TransportError",
    "adaptive_clip_bit",
    "adaptive_clip_noise_split",
    "adaptive_clip_step",
    "adaptive_effective_noise_multiplier",
    "add_noise",
    "adversary_epsilon",
    "build_report",
    "central_noise_std",
    "client_composition",
    "clip_update",
    "config_hash",
    "create_accountant",
    "ddgauss_rdp",
    "ddgauss_tau",
    "distributed_effective_noise_multiplier",
    "distributed_noise_std",
    "epsilon_by_adversary",
    "plain_reading",
    "plan",
    "project",
    "read_ledger",
    "register_accountant",
    "rounded_l2_norm_bound",
    "run_metadata",
    "write_report",
]
