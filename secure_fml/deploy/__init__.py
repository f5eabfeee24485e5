"""Deployment across sites: a coordinator and site processes over gRPC with mutual TLS.

The round logic is the simulation's (sampler, algorithms, DP wrapper, SecAgg
state machines); only the transport differs. Layout:

- ``_coordinator`` / ``_site``: pure state machines (message in, messages out);
- ``_transport``: the thread-safe service, the site-side :class:`Transport`
  (in-process and gRPC) and the thin gRPC servicer; ``_convert`` holds every
  protobuf conversion; ``secure_fml/proto`` the versioned ``.proto``;
- ``_pki``: consortium CA and certificates; ``_config`` / ``_process``: the
  ``coordinator.toml`` / ``site.toml`` processes; ``cli``: ``secure-fml pki |
  server | client | status``.
"""

from privacy.errors import OutOfOrder, RefusalReason, Refused, StaleMessage
from secure_fml.deploy._config import (
    CoordinatorSettings,
    SiteSettings,
    load_coordinator_config,
    load_site_config,
)
from secure_fml.deploy._coordinator import Coordinator, Deadlines, model_hash
from secure_fml.deploy._messages import (
    PROTOCOL_VERSION,
    Finished,
    Peer,
    RoundStart,
    StageReply,
    StageRequest,
    Wait,
)
from secure_fml.deploy._pki import init_ca, issue_server, issue_site
from secure_fml.deploy._process import build_coordinator, build_site, run_client, run_server
from secure_fml.deploy._runner import CRASH_POINT_ENV, run_site
from secure_fml.deploy._site import Site
from secure_fml.deploy._transport import (
    CoordinatorService,
    GrpcTransport,
    InProcessTransport,
    Transport,
    serve,
    status_code_for,
)

__all__ = [
    "CRASH_POINT_ENV",
    "PROTOCOL_VERSION",
    "Coordinator",
    "CoordinatorService",
    "CoordinatorSettings",
    "Deadlines",
    "Finished",
    "GrpcTransport",
    "InProcessTransport",
    "OutOfOrder",
    "Peer",
    "RefusalReason",
    "Refused",
    "RoundStart",
    "Site",
    "SiteSettings",
    "StageReply",
    "StageRequest",
    "StaleMessage",
    "Transport",
    "Wait",
    "build_coordinator",
    "build_site",
    "init_ca",
    "issue_server",
    "issue_site",
    "load_coordinator_config",
    "load_site_config",
    "model_hash",
    "run_client",
    "run_server",
    "run_site",
    "serve",
    "status_code_for",
]
