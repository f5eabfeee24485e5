"""Exceptions raised by secure-fml (the tree is drawn in ``privacy._errors``)."""

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
