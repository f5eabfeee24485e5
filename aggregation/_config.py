"""Protocol configuration: mode, threshold and (for SecAgg+) neighbourhood degree."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import cast

from aggregation._policy import ClientPolicy, SecurityAnalysis, derive_parameters
from privacy.errors import ConfigError

__all__ = ["SecAggConfig", "SecAggMode", "Stage", "find_secagg_plus_parameters"]


class SecAggMode(enum.Enum):
    """Which masking graph to use."""

    #: Bonawitz et al. 2017: every client pairs with every other client.
    SECAGG = "secagg"
    #: Bell et al. 2020: each client shares its secrets with k = O(log n) holders
    #: it draws at random itself, and masks with them and with those that drew it.
    SECAGG_PLUS = "secagg+"


class Stage(enum.Enum):
    """Named protocol stages, in order. Also used to say where a client drops out:
    a client that drops at stage S sends no message for S or any later stage.

    ``REVIEW`` hands every holder the masking tags of its owners; ``DISPUTE`` is
    opened only when a client rejected a share or a tag (the accused dealers must
    open the per-pair key); ``QUORUM_CHALLENGE`` is where a client picks, after the
    server fixed the certificate, which of its signatures to verify. A driver never
    needs to know the order: the server session returns the next
    :class:`~aggregation.Outbox`.
    """

    ADVERTISE_KEYS = 0
    SHARE_KEYS = 1
    MASKED_INPUT = 2
    REVIEW = 3
    DISPUTE = 4
    CONSISTENCY_CHECK = 5
    QUORUM_CHALLENGE = 6
    UNMASKING = 7
    DONE = 8


def find_secagg_plus_parameters(
    num_clients: int,
    *,
    max_dropout_fraction: float,
    max_corrupt_fraction: float,
    security_bits: int = 40,
    correctness_bits: int = 20,
    min_survivor_fraction: float = 0.5,
    min_survivors: int = 3,
    max_attempts_log2: int = 20,
) -> tuple[int, int]:
    """Smallest degree k, and the largest threshold t it affords, for SecAgg+.

    Each client draws its k share holders uniformly from the roster with its own
    CSPRNG. The security condition counts every set the server could try to unmask
    with adversarial dropouts chosen after the graph is known, and a server that
    retries 2^max_attempts_log2 times (see :mod:`aggregation._policy` and
    ``docs/secure_aggregation.md``); correctness asks that with floor(delta n)
    clients missing every client keeps t responsive holders except with
    probability 2^-correctness_bits. Falls back to the complete graph
    (k = n - 1, t > (n + c)/2) when no smaller k qualifies.
    """
    policy = ClientPolicy(
        max_dropout_fraction=max_dropout_fraction,
        max_corrupt_fraction=max_corrupt_fraction,
        security_bits=security_bits,
        correctness_bits=correctness_bits,
        min_survivor_fraction=min_survivor_fraction,
        min_survivors=min_survivors,
        max_attempts_log2=max_attempts_log2,
    )
    return derive_parameters(policy, num_clients, complete=False)


@dataclass(frozen=True, kw_only=True)
class SecAggConfig:
    """Static parameters of one secure-aggregation round, as the coordinator proposes them.

    ``degree`` k is the number of holders each client shares its secrets with (it
    draws them at random from the roster itself; all n - 1 others in SECAGG) and
    ``threshold`` t is how many of them reconstruct. Leave both ``None`` to derive
    them from ``num_clients`` and the policy fields (delta, gamma, security and
    correctness bits, minimum survivors, attempts); explicit values are only checked
    for structure here: whether they are *secure* is decided by every client
    against its own :class:`~aggregation.ClientPolicy` (and by the server session
    against :meth:`policy`).

    ``modulus_bits`` is b: masked inputs and the sum live in Z_{2^b}. The
    fixed-point codec checks that b is large enough for the sum not to wrap.
    """

    num_clients: int
    mode: SecAggMode = SecAggMode.SECAGG
    modulus_bits: int = 32
    threshold: int | None = None
    degree: int | None = None
    max_dropout_fraction: float = 0.1
    max_corrupt_fraction: float = 0.05
    security_bits: int = 40
    correctness_bits: int = 20
    min_survivor_fraction: float = 0.5
    min_survivors: int = 3
    max_attempts_log2: int = 20

    def __post_init__(self) -> None:
        if not isinstance(self.mode, SecAggMode):
            raise TypeError("mode must be a SecAggMode")
        for name in ("num_clients", "modulus_bits"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"{name} must be an int")
        if self.num_clients < 3:
            raise ConfigError("num_clients must be >= 3 (with 2 clients the sum reveals both)")
        if self.num_clients >= 2**31:
            raise ConfigError("num_clients must be < 2^31")
        if not 2 <= self.modulus_bits <= 62:
            raise ConfigError("modulus_bits must be in [2, 62]")
        policy = self.policy()  # validates the policy fields
        n = self.num_clients
        if self.mode is SecAggMode.SECAGG:
            if self.degree not in (None, n - 1):
                raise ConfigError("SECAGG uses the complete graph: degree must be None or n - 1")
            k = n - 1
            t = self.threshold
            if t is None:
                t = derive_parameters(policy, n, complete=True)[1]
        elif self.degree is None and self.threshold is None:
            k, t = derive_parameters(policy, n, complete=False)
        elif self.degree is None or self.threshold is None:
            raise ConfigError("SECAGG_PLUS: give both degree and threshold, or neither")
        else:
            k, t = self.degree, self.threshold
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= n - 1:
            raise ConfigError(f"degree must be an int in [1, n - 1], got {k!r}")
        if not isinstance(t, int) or isinstance(t, bool):
            raise TypeError("threshold must be an int")
        if not 1 <= t <= k:
            raise ConfigError(f"threshold must satisfy 1 <= t <= degree (degree={k}, t={t})")
        object.__setattr__(self, "degree", k)
        object.__setattr__(self, "threshold", t)

    @property
    def t(self) -> int:
        return cast(int, self.threshold)  # resolved in __post_init__

    @property
    def k(self) -> int:
        return cast(int, self.degree)  # resolved in __post_init__

    @property
    def complete(self) -> bool:
        return self.k >= self.num_clients - 1

    def policy(self) -> ClientPolicy:
        """The policy these fields describe (what an honest coordinator holds itself to)."""
        return ClientPolicy(
            max_dropout_fraction=self.max_dropout_fraction,
            max_corrupt_fraction=self.max_corrupt_fraction,
            security_bits=self.security_bits,
            correctness_bits=self.correctness_bits,
            min_survivor_fraction=self.min_survivor_fraction,
            min_survivors=self.min_survivors,
            max_attempts_log2=self.max_attempts_log2,
        )

    def analysis(self, policy: ClientPolicy | None = None) -> SecurityAnalysis:
        """The security analysis of these (n, k, t) under ``policy`` (default: :meth:`policy`)."""
        return (policy or self.policy()).analyse(self.num_clients, self.k, self.t)
