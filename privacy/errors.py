"""The project's one exception hierarchy.

It lives in the bottom layer (``privacy``) so that every package can raise and
catch the same types without breaking the one-way dependency rule
(privacy <- aggregation <- secure_fml <- audits). ``secure_fml.errors``
re-exports the whole tree for users.

::

    SecureFMLError
    ├── ConfigError (ValueError)          bad configuration, flag or argument value
    ├── InsecureModeError                 a seed or unsafe option outside insecure test mode
    ├── DataError (ValueError)            malformed or unusable data files / arrays
    ├── CheckpointError                   unreadable, mismatched or tampered checkpoint
    ├── PrivacyError
    │   ├── PrivacyBudgetExhausted        a release would exceed max_epsilon at delta
    │   └── LedgerCorrupted               broken hash chain, truncated line, bad record
    ├── ProtocolError                     secure-aggregation protocol failures
    │   ├── InvalidMessage                malformed / malicious / replayed / out-of-order
    │   │   ├── InvalidSignature          a signature or AEAD tag does not verify
    │   │   ├── StaleMessage              another round or session (a replay, or a late peer)
    │   │   └── OutOfOrder                a message for a stage that is not open for its sender
    │   └── ProtocolAbort                 the round cannot complete safely
    │       ├── DropoutThresholdNotMet    fewer than t survivors
    │       ├── ConsistencyCheckFailed    clients disagree (e.g. different models)
    │       └── PolicyViolation           the round is weaker than the client's own policy
    │                                     (k, t, modulus, survivor counts, Sybil roster)
    ├── TransportError                    network / RPC failures, refused peers
    │   └── Refused                       a peer or request the coordinator will not serve
    │                                     (``reason``: a :class:`RefusalReason`)
    └── NoProgress                        the coordinator stopped: rounds keep aborting,
                                          or too few sites are left to run one

This is the one public errors module: every package imports it as
``privacy.errors`` (``secure_fml.errors`` re-exports it for users); no package
reaches into another's private modules for an exception type.
"""

from __future__ import annotations

import enum

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
    "NoProgress",
    "OutOfOrder",
    "PolicyViolation",
    "PrivacyBudgetExhausted",
    "PrivacyError",
    "ProtocolAbort",
    "ProtocolError",
    "RefusalReason",
    "Refused",
    "SecureFMLError",
    "StaleMessage",
    "TransportError",
]


class SecureFMLError(Exception):
    """Root of every error raised on purpose by secure-fml."""


class ConfigError(SecureFMLError, ValueError):
    """A configuration value, CLI flag or argument is invalid. The message names the field."""


class InsecureModeError(SecureFMLError):
    """An unsafe option (user seed for noise or masks, ...) was used outside insecure test mode."""


class DataError(SecureFMLError, ValueError):
    """Input data is malformed: missing columns, empty clients, labels out of range, NaN."""


class CheckpointError(SecureFMLError):
    """A checkpoint cannot be read, does not match the model, or fails its integrity check."""


class PrivacyError(SecureFMLError):
    """Base class of differential-privacy errors."""


class PrivacyBudgetExhausted(PrivacyError):  # noqa: N818 - names fixed by the project API
    """The next release would push the spent epsilon above ``max_epsilon`` at ``delta``."""


class LedgerCorrupted(PrivacyError):  # noqa: N818 - names fixed by the project API
    """The privacy ledger is truncated, reordered or tampered with; never treated as empty."""


class ProtocolError(SecureFMLError):
    """Base class of secure-aggregation protocol errors."""


class InvalidMessage(ProtocolError):  # noqa: N818 - names fixed by the project API
    """A protocol message is malformed, duplicated, replayed, out of order or inconsistent."""


class InvalidSignature(InvalidMessage):
    """A signature, MAC or AEAD tag failed to verify."""


class ProtocolAbort(ProtocolError):  # noqa: N818 - names fixed by the project API
    """The round cannot complete without violating the protocol's guarantees."""


class DropoutThresholdNotMet(ProtocolAbort):
    """Fewer clients than the reconstruction threshold t survived a stage."""


class ConsistencyCheckFailed(ProtocolAbort):
    """Clients saw different views (survivor sets, global models); the round aborts."""


class PolicyViolation(ProtocolAbort):
    """The coordinator asked for a round that the client's own policy forbids: parameters
    weaker than the ones it derives for the roster size (k, t, modulus bits), fewer
    survivors or signatures than it requires, or a roster that repeats an identity."""


class TransportError(SecureFMLError):
    """A network or RPC failure, or a peer refused at the transport layer."""


class NoProgress(SecureFMLError):  # noqa: N818 - names fixed by the project API
    """The coordinator gave up: too many round attempts in a row aborted (the message
    names the reason of the last ones), or too few sites stayed connected to start one."""


class StaleMessage(InvalidMessage):
    """A message for another round or session: a replay, or a late peer."""


class OutOfOrder(InvalidMessage):
    """A message for a stage that is not open for its sender."""


class RefusalReason(enum.Enum):
    """Why a transport refused a peer or a request (one status code each)."""

    VERSION = "version"
    UNKNOWN_SITE = "unknown_site"
    UNAUTHENTICATED = "unauthenticated"
    DUPLICATE_CONNECTION = "duplicate_connection"
    OVERSIZE = "oversize"
    #: Too many requests of one identity in flight (a long-poll or stream flood).
    BUSY = "busy"
    #: The TLS handshake failed on a certificate: the coordinator rejected the site's,
    #: or the site rejected the coordinator's (told apart from a coordinator that is down).
    CERTIFICATE = "certificate"


class Refused(TransportError):  # noqa: N818 - a refusal, not a bug
    """A peer or request the coordinator will not serve; ``reason`` says why."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
