"""Differential privacy for federated meta-updates: clipping, noise, accounting, ledger, reports.

This package is the bottom layer: it never imports ``secure_fml``, ``aggregation``
or ``audits``. It works on flat float32 numpy vectors, one per client per round
(the client's whole update, θ and Meta-SGD α parts together).

Per round, in order::

    res = clip_update(update, clip_norm=C)                       # client
    noisy = add_noise(res.vector, std=distributed_noise_std(...), source=src)  # client
    ... secure aggregation of the noisy vectors ...
    event = GaussianRelease.distributed(round=r, ..., clients_surviving=n)    # server
    ledger.record(event)                                         # durable, budget-checked
    apply(aggregate)                                             # only after record()
"""

from privacy._accounting import (
    ACCOUNTANTS,
    RDP_ORDERS,
    Accountant,
    PrivacyPlan,
    PrivacyProjection,
    ProjectionRow,
    Sampling,
    SamplingMode,
    ddgauss_rdp,
    ddgauss_tau,
    plan,
    project,
    render_plan,
    render_projection,
    rounded_l2_norm_bound,
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
    RecordLevelRelease,
)
from privacy._ledger import (
    LEDGER_SCHEMA_VERSION,
    LedgerEntry,
    LedgerHead,
    PrivacyBudget,
    PrivacyLedger,
    check_record_level_budget,
    read_ledger,
)
from privacy._noise import (
    GaussianNoiseSource,
    NoisePlacement,
    add_noise,
    central_noise_std,
    distributed_effective_noise_multiplier,
    distributed_noise_std,
)
from privacy._random import INSECURE_SEED_WARNING, Csprng
from privacy._record_level import (
    RecordLevelPlan,
    RecordLevelSitePlan,
    calibrate_record_level,
    plan_record_level,
    record_level_epsilon,
    record_level_schedule,
    render_record_level_plan,
)
from privacy._report import LEDGER_FILENAME, ReportPaths, build_report, write_report
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
    PolicyViolation,
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
    "INSECURE_SEED_WARNING",
    "LEDGER_FILENAME",
    "LEDGER_SCHEMA_VERSION",
    "RDP_ORDERS",
    "Accountant",
    "AdaptiveClipNoise",
    "AdaptiveClipStep",
    "CheckpointError",
    "ClipResult",
    "ClipStatistics",
    "ConfigError",
    "ConsistencyCheckFailed",
    "Csprng",
    "DataError",
    "DistributedDiscreteGaussianRelease",
    "DropoutThresholdNotMet",
    "GaussianNoiseSource",
    "GaussianRelease",
    "InsecureModeError",
    "InvalidMessage",
    "InvalidSignature",
    "LedgerCorrupted",
    "LedgerEntry",
    "LedgerHead",
    "NoisePlacement",
    "OutOfOrder",
    "PolicyViolation",
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
    "RecordLevelPlan",
    "RecordLevelRelease",
    "RecordLevelSitePlan",
    "RefusalReason",
    "Refused",
    "ReportPaths",
    "Sampling",
    "SamplingMode",
    "SecureFMLError",
    "StaleMessage",
    "TransportError",
    "adaptive_clip_bit",
    "adaptive_clip_noise_split",
    "adaptive_clip_step",
    "adaptive_effective_noise_multiplier",
    "add_noise",
    "build_report",
    "calibrate_record_level",
    "central_noise_std",
    "check_record_level_budget",
    "clip_update",
    "ddgauss_rdp",
    "ddgauss_tau",
    "distributed_effective_noise_multiplier",
    "distributed_noise_std",
    "plan",
    "plan_record_level",
    "project",
    "read_ledger",
    "record_level_epsilon",
    "record_level_schedule",
    "render_plan",
    "render_projection",
    "render_record_level_plan",
    "rounded_l2_norm_bound",
    "write_report",
]
