"""Transport-independent messages between the coordinator and a site.

These frozen dataclasses are what the state machines exchange; ``_convert``
maps them to and from protobuf frames. Secure-aggregation messages travel as
their own strict binary encodings (``aggregation.Message.to_bytes``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aggregation import SecAggConfig, Stage

__all__ = [
    "PROTOCOL_VERSION",
    "Finished",
    "Peer",
    "RoundStart",
    "ServerMessage",
    "StageReply",
    "StageRequest",
    "Wait",
]

#: Version of the deployment wire protocol (``secure_fml_v1.proto``).
PROTOCOL_VERSION = 1


@dataclass(frozen=True)
class Peer:
    index: int
    name: str
    certificate: bytes  # DER


@dataclass(frozen=True)
class Wait:
    retry_after_ms: int = 200


@dataclass(frozen=True, kw_only=True)
class RoundStart:
    round: int
    session_id: bytes
    site_index: int
    peers: tuple[Peer, ...]
    model: np.ndarray  # float32, 1-D packed global state
    model_hash: bytes
    secagg: SecAggConfig
    clip_norm: float
    scale: float
    noise_stddev_int: float
    wrap_probability: float


@dataclass(frozen=True, kw_only=True)
class StageRequest:
    """Server -> site: the SecAgg message that opens ``stage`` for this site."""

    round: int
    session_id: bytes
    stage: Stage
    payload: bytes


@dataclass(frozen=True, kw_only=True)
class StageReply:
    """Site -> server: this site's SecAgg message for ``stage``."""

    round: int
    session_id: bytes
    stage: Stage
    payload: bytes
    #: (dtype, length) of the masked vector in a MASKED_INPUT payload, declared on the wire
    #: so the receiver can check shape and dtype before parsing.
    tensor: tuple[str, int] | None = None


@dataclass(frozen=True)
class Finished:
    round: int


ServerMessage = Wait | RoundStart | StageRequest | Finished
