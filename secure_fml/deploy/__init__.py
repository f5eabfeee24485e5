"""Deployment across sites: a coordinator and site processes over gRPC with mutual TLS.

The rounds are the simulation's: the coordinator is the round engine
(:mod:`secure_fml.engine`) plus joins, leases and certificates, and a site is the
engine's client pipeline (:mod:`secure_fml.pipeline`) with certificate-checked
peers; only the transport differs. Layout:

- ``_coordinator`` / ``_site``: the engine and the pipeline with network identity;
  ``_policy``: a site's own privacy policy (:class:`SitePolicy`), checked against
  every round start, with the site's own ledger;
- ``_transport``: the thread-safe service, the site-side :class:`Transport`
  (in-process and gRPC) and the thin gRPC servicer; ``_convert`` holds every
  protobuf conversion; ``secure_fml/proto`` the versioned ``.proto``;
- ``_limits``: what keeps abusive peers from exhausting the coordinator's workers
  (allowlist before reading, per-identity limits, stream deadlines, throttled logs);
- ``_tls``: tells a certificate refused in the TLS handshake (either side) from a
  coordinator that is down; ``_logs``: JSON log lines only, gRPC's C core included;
- ``_pki``: consortium CA, certificates and site startup kits; ``_config`` / ``_process``: the
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
from secure_fml.deploy._coordinator import Coordinator, Deadlines
from secure_fml.deploy._pki import init_ca, issue_server, issue_site
from secure_fml.deploy._policy import AdmittedRound, SitePolicy
from secure_fml.deploy._process import build_coordinator, build_site, run_client, run_server
from secure_fml.deploy._runner import run_site
from secure_fml.deploy._site import Site
from secure_fml.deploy._transport import (
    CoordinatorService,
    GrpcTransport,
    InProcessTransport,
    Transport,
    serve,
    status_code_for,
)
from secure_fml.messages import (
    PROTOCOL_VERSION,
    Finished,
    Peer,
    RoundStart,
    StageReply,
    StageRequest,
    Wait,
)
from secure_fml.pipeline import model_hash

__all__ = [
    "PROTOCOL_VERSION",
    "AdmittedRound",
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
    "SitePolicy",
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
