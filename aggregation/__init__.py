"""Secure aggregation (SecAgg, SecAgg+): the server only ever sees the sum.

Public protocol layer: client/server sessions, config, wire messages, the
fixed-point codec and an in-process driver. Cryptographic primitives live in
the private ``aggregation._primitives`` module ("hazmat"). This package never
imports ``secure_fml`` or ``audits``; it imports ``privacy`` only for the
shared exception hierarchy.

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
from aggregation._messages import (
    PROTOCOL_VERSION,
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencyResponse,
    KeyBroadcast,
    MaskedInput,
    Message,
    PlainInput,
    ShareKeys,
    ShareRouting,
    UnmaskRequest,
    UnmaskResponse,
    all_finite,
    parse_message,
)
from aggregation._primitives import DiscreteGaussianSampler as _DiscreteGaussianSampler
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
    "ClientSession",
    "ConsistencyRequest",
    "ConsistencyResponse",
    "FixedPointCodec",
    "InMemoryNetwork",
    "KeyBroadcast",
    "MaskedInput",
    "Message",
    "Outbox",
    "PlainInput",
    "PlainSumClient",
    "PlainSumServer",
    "RunStats",
    "SecAggConfig",
    "SecAggMode",
    "SecureSumResult",
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
    "run_protocol",
    "secure_sum",
    "secure_sum_int",
]
