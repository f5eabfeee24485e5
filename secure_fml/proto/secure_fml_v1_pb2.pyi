from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KIND_UNSPECIFIED: _ClassVar[Kind]
    WAIT: _ClassVar[Kind]
    ROUND_START: _ClassVar[Kind]
    SECAGG: _ClassVar[Kind]
    FINISHED: _ClassVar[Kind]
    CHECKPOINT: _ClassVar[Kind]
    WITHDRAW: _ClassVar[Kind]
KIND_UNSPECIFIED: Kind
WAIT: Kind
ROUND_START: Kind
SECAGG: Kind
FINISHED: Kind
CHECKPOINT: Kind
WITHDRAW: Kind

class TensorSpec(_message.Message):
    __slots__ = ("dtype", "shape")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class Peer(_message.Message):
    __slots__ = ("index", "name", "certificate")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    certificate: bytes
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., certificate: _Optional[bytes] = ...) -> None: ...

class RoundStart(_message.Message):
    __slots__ = ("site_index", "peers", "model_sha256", "protocol", "modulus_bits", "threshold", "degree", "num_clients", "clip_norm", "scale", "noise", "noise_std", "bit_noise_std", "adaptive_clip_bit", "weighted", "min_survivors", "assumed_colluding", "wrap_probability", "max_dropout_fraction", "max_corrupt_fraction", "min_survivor_fraction", "min_survivors_policy", "max_attempts_log2", "security_bits", "correctness_bits", "record_level")
    SITE_INDEX_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    MODULUS_BITS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DEGREE_FIELD_NUMBER: _ClassVar[int]
    NUM_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    NOISE_FIELD_NUMBER: _ClassVar[int]
    NOISE_STD_FIELD_NUMBER: _ClassVar[int]
    BIT_NOISE_STD_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_CLIP_BIT_FIELD_NUMBER: _ClassVar[int]
    WEIGHTED_FIELD_NUMBER: _ClassVar[int]
    MIN_SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    ASSUMED_COLLUDING_FIELD_NUMBER: _ClassVar[int]
    WRAP_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    MAX_DROPOUT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    MAX_CORRUPT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    MIN_SURVIVOR_FRACTION_FIELD_NUMBER: _ClassVar[int]
    MIN_SURVIVORS_POLICY_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_LOG2_FIELD_NUMBER: _ClassVar[int]
    SECURITY_BITS_FIELD_NUMBER: _ClassVar[int]
    CORRECTNESS_BITS_FIELD_NUMBER: _ClassVar[int]
    RECORD_LEVEL_FIELD_NUMBER: _ClassVar[int]
    site_index: int
    peers: _containers.RepeatedCompositeFieldContainer[Peer]
    model_sha256: bytes
    protocol: str
    modulus_bits: int
    threshold: int
    degree: int
    num_clients: int
    clip_norm: float
    scale: float
    noise: str
    noise_std: float
    bit_noise_std: float
    adaptive_clip_bit: bool
    weighted: bool
    min_survivors: int
    assumed_colluding: int
    wrap_probability: float
    max_dropout_fraction: float
    max_corrupt_fraction: float
    min_survivor_fraction: float
    min_survivors_policy: int
    max_attempts_log2: int
    security_bits: int
    correctness_bits: int
    record_level: RecordLevelRequest
    def __init__(self, site_index: _Optional[int] = ..., peers: _Optional[_Iterable[_Union[Peer, _Mapping]]] = ..., model_sha256: _Optional[bytes] = ..., protocol: _Optional[str] = ..., modulus_bits: _Optional[int] = ..., threshold: _Optional[int] = ..., degree: _Optional[int] = ..., num_clients: _Optional[int] = ..., clip_norm: _Optional[float] = ..., scale: _Optional[float] = ..., noise: _Optional[str] = ..., noise_std: _Optional[float] = ..., bit_noise_std: _Optional[float] = ..., adaptive_clip_bit: _Optional[bool] = ..., weighted: _Optional[bool] = ..., min_survivors: _Optional[int] = ..., assumed_colluding: _Optional[int] = ..., wrap_probability: _Optional[float] = ..., max_dropout_fraction: _Optional[float] = ..., max_corrupt_fraction: _Optional[float] = ..., min_survivor_fraction: _Optional[float] = ..., min_survivors_policy: _Optional[int] = ..., max_attempts_log2: _Optional[int] = ..., security_bits: _Optional[int] = ..., correctness_bits: _Optional[int] = ..., record_level: _Optional[_Union[RecordLevelRequest, _Mapping]] = ...) -> None: ...

class RecordLevelRequest(_message.Message):
    __slots__ = ("algorithm", "unit", "noise_multiplier", "target_epsilon", "rounds", "delta")
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    TARGET_EPSILON_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    algorithm: str
    unit: str
    noise_multiplier: float
    target_epsilon: float
    rounds: int
    delta: float
    def __init__(self, algorithm: _Optional[str] = ..., unit: _Optional[str] = ..., noise_multiplier: _Optional[float] = ..., target_epsilon: _Optional[float] = ..., rounds: _Optional[int] = ..., delta: _Optional[float] = ...) -> None: ...

class RecordLevelRelease(_message.Message):
    __slots__ = ("site", "unit", "noise_multiplier", "clip_norm", "sample_rates", "steps")
    SITE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATES_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    site: str
    unit: str
    noise_multiplier: float
    clip_norm: float
    sample_rates: _containers.RepeatedScalarFieldContainer[float]
    steps: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, site: _Optional[str] = ..., unit: _Optional[str] = ..., noise_multiplier: _Optional[float] = ..., clip_norm: _Optional[float] = ..., sample_rates: _Optional[_Iterable[float]] = ..., steps: _Optional[_Iterable[int]] = ...) -> None: ...

class Header(_message.Message):
    __slots__ = ("protocol_version", "kind", "round", "session_id", "stage", "payload_bytes", "payload_sha256", "connection_id", "retry_after_ms", "tensor", "round_start", "record_release", "reason")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SHA256_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    ROUND_START_FIELD_NUMBER: _ClassVar[int]
    RECORD_RELEASE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    kind: Kind
    round: int
    session_id: bytes
    stage: int
    payload_bytes: int
    payload_sha256: bytes
    connection_id: bytes
    retry_after_ms: int
    tensor: TensorSpec
    round_start: RoundStart
    record_release: RecordLevelRelease
    reason: str
    def __init__(self, protocol_version: _Optional[int] = ..., kind: _Optional[_Union[Kind, str]] = ..., round: _Optional[int] = ..., session_id: _Optional[bytes] = ..., stage: _Optional[int] = ..., payload_bytes: _Optional[int] = ..., payload_sha256: _Optional[bytes] = ..., connection_id: _Optional[bytes] = ..., retry_after_ms: _Optional[int] = ..., tensor: _Optional[_Union[TensorSpec, _Mapping]] = ..., round_start: _Optional[_Union[RoundStart, _Mapping]] = ..., record_release: _Optional[_Union[RecordLevelRelease, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: Header
    chunk: bytes
    def __init__(self, header: _Optional[_Union[Header, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("protocol_version", "site", "certificate")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    site: str
    certificate: bytes
    def __init__(self, protocol_version: _Optional[int] = ..., site: _Optional[str] = ..., certificate: _Optional[bytes] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("connection_id", "max_chunk_bytes")
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    connection_id: bytes
    max_chunk_bytes: int
    def __init__(self, connection_id: _Optional[bytes] = ..., max_chunk_bytes: _Optional[int] = ...) -> None: ...

class PollRequest(_message.Message):
    __slots__ = ("protocol_version", "connection_id", "wait_ms")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    connection_id: bytes
    wait_ms: int
    def __init__(self, protocol_version: _Optional[int] = ..., connection_id: _Optional[bytes] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    def __init__(self, accepted: _Optional[bool] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("protocol_version",)
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    def __init__(self, protocol_version: _Optional[int] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("protocol_version", "connection_id")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    connection_id: bytes
    def __init__(self, protocol_version: _Optional[int] = ..., connection_id: _Optional[bytes] = ...) -> None: ...
