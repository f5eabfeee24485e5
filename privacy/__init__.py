"""Differential privacy for federated meta-updates: clipping, noise, accounting, ledger, reports.

This package is the bottom layer: it never imports ``secure_fml``, ``aggregation``
or ``audits``.
"""

from privacy._errors import (
    CheckpointError,
    ConfigError,
    ConsistencyCheckFailed,
    DataError,
    DropoutThresholdNotMet,
    InsecureModeError,
    InvalidMessage,
    InvalidSignature,
    LedgerCorrupted,
    PrivacyBudgetExhausted,
    PrivacyError,
    ProtocolAbort,
    ProtocolError,
    SecureFMLError,
    TransportError,
)

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ConsistencyCheckFailed",
    "DataError",
    "DropoutThresholdNotMet",
    "InsecureModeError",
    "InvalidMessage",
    "InvalidSignature",
    "LedgerCorrupted",
    "PrivacyBudgetExhausted",
    "PrivacyError",
    "ProtocolAbort",
    "ProtocolError",
    "SecureFMLError",
    "TransportError",
]
