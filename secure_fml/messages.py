"""Messages between the round engine and a client pipeline, in any transport.

The engine sends a client a :class:`RoundStart` (the model and everything the
client needs to compute, protect and submit its update), then one
:class:`StageRequest` per later aggregation stage; the client answers each with
a :class:`StageReply`, or leaves the round with a :class:`Withdrawal` (its own
policy refused what it was sent). Requests and replies carry
:class:`aggregation.Message` objects; an in-memory transport passes them as they
are, the gRPC transport serialises them with their strict binary encodings
(``aggregation.Message.to_bytes``) and the converters in
``secure_fml.deploy._convert``. :class:`Wait` and
:class:`Finished` exist for polling transports.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from aggregation import PROTOCOL_VERSION as AGGREGATION_VERSION
from aggregation import Message, SecAggConfig, SecAggMode, Stage
from privacy import RecordLevelRelease
from privacy.errors import InvalidMessage

__all__ = [
    "PROTOCOL_VERSION",
    "AggregationProtocol",
    "ClientNoise",
    "EngineMessage",
    "Finished",
    "Peer",
    "RecordLevelRequest",
    "RoundSettings",
    "RoundStart",
    "StageReply",
    "StageRequest",
    "Wait",
    "Withdrawal",
    "withdrawal_from",
]

#: Version of the whole wire protocol: the engine messages (this module, carried by
#: ``secure_fml_v1.proto``) and the aggregation messages inside them share one number
#: (``aggregation.PROTOCOL_VERSION``), bumped when either changes incompatibly. A new
#: message an older peer refuses harmlessly (:class:`Withdrawal`: an older coordinator
#: refuses it and the site is then silent, as before) does not bump it.
PROTOCOL_VERSION = AGGREGATION_VERSION


class AggregationProtocol(enum.Enum):
    """How the round's updates are summed."""

    #: Each client sends its update in the clear: the coordinator is trusted.
    PLAIN = "plain"
    #: Bonawitz et al. 2017: masked inputs, the coordinator sees only the sum.
    SECAGG = "secagg"
    #: Bell et al. 2020: the same with a sparse masking graph.
    SECAGG_PLUS = "secagg+"

    @property
    def secure(self) -> bool:
        return self is not AggregationProtocol.PLAIN

    @property
    def mode(self) -> SecAggMode:
        if self is AggregationProtocol.PLAIN:
            raise InvalidMessage("the plain protocol has no SecAgg mode")
        return SecAggMode(self.value)


class ClientNoise(enum.Enum):
    """Which noise each client adds to its own update before it leaves the client."""

    NONE = "none"
    #: Continuous Gaussian N(0, std^2) per coordinate (float units).
    GAUSSIAN = "gaussian"
    #: Exact discrete Gaussian N_Z(0, std^2) in the integer domain, inside SecAgg.
    DISCRETE_GAUSSIAN = "discrete_gaussian"


@dataclass(frozen=True)
class Peer:
    """One participant of a round: its aggregation index, name and identity.

    ``identity`` is what the client verifies: a DER certificate from the consortium CA
    in deployment, the raw Ed25519 public key in an in-process simulation.
    """

    index: int
    name: str
    identity: bytes


def _positive(name: str, v: object) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not (math.isfinite(v) and v > 0):
        raise InvalidMessage(f"record_level.{name} must be a finite number > 0, got {v!r}")


@dataclass(frozen=True, kw_only=True)
class RecordLevelRequest:
    """The record-level (patient-level) DP a round asks every site to run locally.

    A site runs DP-SGD in every local step with the parameters of its *own* policy
    and refuses a request below them (``secure_fml.deploy.SitePolicy``); what it ran
    travels back with its update as a :class:`privacy.RecordLevelRelease`.
    ``noise_multiplier`` (sigma) or ``target_epsilon`` over ``rounds`` at ``delta``
    (each site calibrates its own sigma from its size); ``unit``: ``"record"`` or
    the person column; ``algorithm``: the algorithm whose local steps are private.
    """

    algorithm: str
    unit: str = "record"
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    rounds: int | None = None
    delta: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("algorithm", "unit"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                raise InvalidMessage(f"record_level.{name} must be a non-empty string")
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise InvalidMessage(
                "record_level needs exactly one of a noise multiplier and a target epsilon"
            )
        if self.noise_multiplier is not None:
            _positive("noise_multiplier", self.noise_multiplier)
        if self.target_epsilon is not None:
            _positive("target_epsilon", self.target_epsilon)
            r = self.rounds
            if isinstance(r, bool) or not isinstance(r, int) or r < 1:
                raise InvalidMessage("record_level.rounds must be an int >= 1 with a target")
        d = self.delta
        if isinstance(d, bool) or not isinstance(d, int | float) or not 0 < d < 1:
            raise InvalidMessage(f"record_level.delta must be in (0, 1), got {d!r}")


@dataclass(frozen=True, kw_only=True)
class RoundSettings:
    """How the client must process its update this round (the client-visible plan).

    A client checks these against its own policy before it computes anything.
    """

    protocol: AggregationProtocol
    #: L2 bound of the whole update (theta and alpha parts together); None: no clipping.
    clip_norm: float | None = None
    noise: ClientNoise = ClientNoise.NONE
    #: Per-client noise standard deviation: float units for GAUSSIAN, integer units for
    #: DISCRETE_GAUSSIAN.
    noise_std: float = 0.0
    #: Noise std of the appended clip bit (adaptive clipping with continuous noise).
    bit_noise_std: float | None = None
    #: Append the clipped/not-clipped bit of Andrew et al. 2021 to the update.
    adaptive_clip_bit: bool = False
    #: Append the client's sample count (the update is multiplied by it): weighted mean.
    weighted: bool = False
    #: Fewest contributions the server will unmask or release (DP noise is sized for it).
    min_survivors: int = 1
    #: Colluding clients the noise is sized for.
    assumed_colluding: int = 0
    secagg: SecAggConfig | None = None
    #: Fixed-point scale of the SecAgg encoding.
    scale: float | None = None
    wrap_probability: float = 1e-9
    #: Record-level DP every participant runs in its local steps (None: none).
    record_level: RecordLevelRequest | None = None

    def __post_init__(self) -> None:
        for name in ("noise_std", "wrap_probability"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise InvalidMessage(f"{name} must be a finite number >= 0, got {v!r}")
        if self.clip_norm is not None and not (
            math.isfinite(self.clip_norm) and self.clip_norm > 0
        ):
            raise InvalidMessage(f"clip_norm must be a positive number, got {self.clip_norm!r}")
        if self.protocol.secure:
            if self.secagg is None or self.scale is None or self.clip_norm is None:
                raise InvalidMessage("a secure round needs SecAgg parameters, scale and clip")
            if self.secagg.mode is not self.protocol.mode:
                raise InvalidMessage("SecAgg mode does not match the protocol")
            if not (math.isfinite(self.scale) and self.scale > 0):
                raise InvalidMessage(f"scale must be a positive number, got {self.scale!r}")
        elif self.secagg is not None or self.scale is not None:
            raise InvalidMessage("the plain protocol takes no SecAgg parameters")
        if self.noise is ClientNoise.DISCRETE_GAUSSIAN and not self.protocol.secure:
            raise InvalidMessage("discrete Gaussian noise is added inside secure aggregation")
        if self.noise is not ClientNoise.NONE and not self.noise_std > 0:
            raise InvalidMessage("client noise needs noise_std > 0")
        if self.noise is ClientNoise.NONE and self.noise_std != 0:
            raise InvalidMessage("noise_std given without a noise kind")
        if self.adaptive_clip_bit and self.clip_norm is None:
            raise InvalidMessage("the adaptive clip bit needs a clip norm")
        if not isinstance(self.min_survivors, int) or self.min_survivors < 1:
            raise InvalidMessage("min_survivors must be an int >= 1")
        if not isinstance(self.assumed_colluding, int) or self.assumed_colluding < 0:
            raise InvalidMessage("assumed_colluding must be an int >= 0")

    def extra_coordinates(self) -> int:
        """Coordinates appended to the update: the clip bit, then the weight."""
        return int(self.adaptive_clip_bit) + int(self.weighted)


@dataclass(frozen=True, kw_only=True, eq=False)
class RoundStart:
    """Engine -> participant: round ``round`` begins (see module docstring)."""

    round: int
    session_id: bytes
    client_index: int
    peers: tuple[Peer, ...]
    model: np.ndarray  # float32, 1-D packed global state
    model_hash: bytes
    settings: RoundSettings

    def __post_init__(self) -> None:
        if len(self.session_id) != 16:
            raise InvalidMessage("session_id must be 16 bytes")
        if len(self.model_hash) != 32:
            raise InvalidMessage("model_hash must be 32 bytes")

    @property
    def first_stage(self) -> Stage:
        """The stage the participant's first reply answers."""
        return Stage.ADVERTISE_KEYS if self.settings.protocol.secure else Stage.MASKED_INPUT


@dataclass(frozen=True, kw_only=True)
class StageRequest:
    """Engine -> participant: the aggregation message that opens ``stage``."""

    round: int
    session_id: bytes
    stage: Stage
    message: Message


@dataclass(frozen=True, kw_only=True)
class StageReply:
    """Participant -> engine: its aggregation message for ``stage``.

    ``record_release``: with the message that carries the participant's update, under
    record-level DP, the release it charged to its own ledger before sending it.
    """

    round: int
    session_id: bytes
    stage: Stage
    message: Message
    record_release: RecordLevelRelease | None = None


#: The longest reason a :class:`Withdrawal` carries (longer ones are cut).
MAX_WITHDRAWAL_REASON = 1000


@dataclass(frozen=True, kw_only=True)
class Withdrawal:
    """Participant -> engine: it leaves round ``round`` in ``stage`` and says why.

    The engine treats it as silent from then on, as if its deadline had passed, so the
    stage does not wait for it; the reason goes into the round's metrics line. It tells
    the coordinator nothing a silence would not, except the reason, which names the
    site's own policy check (never its data).
    """

    round: int
    session_id: bytes
    stage: Stage
    reason: str

    def __post_init__(self) -> None:
        if not isinstance(self.reason, str):
            raise InvalidMessage("a withdrawal's reason must be text")
        if len(self.reason) > MAX_WITHDRAWAL_REASON:
            object.__setattr__(self, "reason", self.reason[: MAX_WITHDRAWAL_REASON - 3] + "...")


def withdrawal_from(msg: object, err: BaseException) -> Withdrawal | None:
    """The withdrawal a participant sends when refusing ``msg`` made it leave the round
    (None when ``msg`` belongs to no round: nothing to withdraw from)."""
    if isinstance(msg, RoundStart):
        stage = msg.first_stage
    elif isinstance(msg, StageRequest):
        stage = msg.stage
    else:
        return None
    return Withdrawal(
        round=msg.round,
        session_id=msg.session_id,
        stage=stage,
        reason=f"{type(err).__name__}: {err}",
    )


@dataclass(frozen=True)
class Wait:
    retry_after_ms: int = 200


@dataclass(frozen=True)
class Finished:
    round: int


EngineMessage = RoundStart | StageRequest | Finished | Wait
