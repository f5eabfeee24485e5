"""Secure aggregation (SecAgg, SecAgg+): the server only ever sees the sum.

Public protocol layer: client/server sessions, the client's own policy, config,
wire messages, attribution evidence, the fixed-point codec and an in-process
driver. Cryptographic primitives live in the private ``aggregation._primitives``
module ("hazmat"). This package never imports ``secure_fml`` or ``audits``; it
imports ``privacy`` only for the shared exception hierarchy.

The protocol holds against a malicious coordinator colluding with a fraction of
the clients (see ``docs/secure_aggregation.md``): every client checks the
proposed parameters against its own :class:`ClientPolicy`, draws its share
holders itself, and reveals nothing before it has verified a quorum certificate
over the globally agreed survivor set.

Typical use (simulation)::

    from aggregation import SecAggConfig, SecAggMode, secure_sum

    cfg = SecAggConfig(num_clients=len(updates), mode=SecAggMode.SECAGG_PLUS)
    res = secure_sum(updates, config=cfg, clip_norm=1.0)
    mean = res.sum / len(res.survivors)
"""

from aggregation._client import ClientSession
from aggregation._config import SecAggConfig, SecAggMode, Stage, find_secagg_plus_parameters
from aggregation._driver import (
    InMemoryNetwork,
    RunStats,
    SecureSumResult,
    per_client_noise_stddev,
    run_protocol,
    secure_sum,
    secure_sum_int,
)
from aggregation._encoding import FixedPointCodec, centered_lift
from aggregation._evidence import Evidence, MisbehaviourKind, verify_evidence
from aggregation._messages import (
    PROTOCOL_VERSION,
    AdvertiseKeys,
    Complaint,
    ConsistencyRequest,
    ConsistencyResponse,
    DisputeRequest,
    DisputeResponse,
    MaskedInput,
    Message,
    NeighbourKeys,
    PeerKey,
    PlainInput,
    QuorumCertificate,
    QuorumChallenge,
    Review,
    ReviewResponse,
    ShareKeys,
    ShareRouting,
    UnmaskRequest,
    UnmaskResponse,
    all_finite,
    parse_message,
    reply_size_limit,
)
from aggregation._policy import ClientPolicy, SecurityAnalysis
from aggregation._primitives import DiscreteGaussianSampler as _DiscreteGaussianSampler
from aggregation._roster import Roster
from aggregation._server import ServerSession
from aggregation._session import (
    Aggregate,
    AggregationClient,
    AggregationServer,
    Outbox,
    PlainSumClient,
    PlainSumServer,
)

#: Largest per-client discrete Gaussian sigma (integer units) the exact sampler accepts.
DISCRETE_GAUSSIAN_MAX_SIGMA: float = _DiscreteGaussianSampler.MAX_SIGMA

__all__ = [
    "DISCRETE_GAUSSIAN_MAX_SIGMA",
    "PROTOCOL_VERSION",
    "AdvertiseKeys",
    "Aggregate",
    "AggregationClient",
    "AggregationServer",
    "ClientPolicy",
    "ClientSession",
    "Complaint",
    "ConsistencyRequest",
    "ConsistencyResponse",
    "DisputeRequest",
    "DisputeResponse",
    "Evidence",
    "FixedPointCodec",
    "InMemoryNetwork",
    "MaskedInput",
    "Message",
    "MisbehaviourKind",
    "NeighbourKeys",
    "Outbox",
    "PeerKey",
    "PlainInput",
    "PlainSumClient",
    "PlainSumServer",
    "QuorumCertificate",
    "QuorumChallenge",
    "Review",
    "ReviewResponse",
    "Roster",
    "RunStats",
    "SecAggConfig",
    "SecAggMode",
    "SecureSumResult",
    "SecurityAnalysis",
    "ServerSession",
    "ShareKeys",
    "ShareRouting",
    "Stage",
    "UnmaskRequest",
    "UnmaskResponse",
    "all_finite",
    "centered_lift",
    "find_secagg_plus_parameters",
    "parse_message",
    "per_client_noise_stddev",
    "reply_size_limit",
    "run_protocol",
    "secure_sum",
    "secure_sum_int",
    "verify_evidence",
]
