"""Deployment-specific refinements of the project's exception tree.

::

    TransportError
    └── Refused                 a peer or request the coordinator will not serve
                                (``reason``: wrong version, unknown site, duplicate
                                connection, oversize, unauthenticated)
    InvalidMessage
    ├── StaleMessage            another round or session (a replay, or a late site)
    └── OutOfOrder              a message for a stage that is not open for this site

The gRPC layer maps each to one status code (see ``_transport.STATUS``).
"""

from __future__ import annotations

import enum

from privacy._errors import InvalidMessage, TransportError

__all__ = ["OutOfOrder", "RefusalReason", "Refused", "StaleMessage"]


class RefusalReason(enum.Enum):
    VERSION = "version"
    UNKNOWN_SITE = "unknown_site"
    UNAUTHENTICATED = "unauthenticated"
    DUPLICATE_CONNECTION = "duplicate_connection"
    OVERSIZE = "oversize"


class Refused(TransportError):  # noqa: N818 - a refusal, not a bug
    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class StaleMessage(InvalidMessage):
    pass


class OutOfOrder(InvalidMessage):
    pass
