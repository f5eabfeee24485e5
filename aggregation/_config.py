"""Protocol configuration: mode, threshold and (for SecAgg+) neighbourhood degree."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import cast

from privacy.errors import ConfigError

__all__ = ["SecAggConfig", "SecAggMode", "Stage", "find_secagg_plus_parameters"]


class SecAggMode(enum.Enum):
    """Which masking graph to use."""

    #: Bonawitz et al. 2017: every client pairs with every other client.
    SECAGG = "secagg"
    #: Bell et al. 2020: each client pairs with its k = O(log n) neighbours in a
    #: random Harary graph derived from public randomness.
    SECAGG_PLUS = "secagg+"


class Stage(enum.Enum):
    """Named protocol stages, in order. Also used to say where a client drops out:
    a client that drops at stage S sends no message for S or any later stage."""

    ADVERTISE_KEYS = 0
    SHARE_KEYS = 1
    MASKED_INPUT = 2
    CONSISTENCY_CHECK = 3
    UNMASKING = 4
    DONE = 5


def _hypergeom_sf(population: int, successes: int, draws: int, at_least: int) -> float:
    """P[X >= at_least] for X ~ Hypergeometric(population, successes, draws), exactly."""
    if at_least <= 0:
        return 1.0
    total = math.comb(population, draws)
    hi = min(successes, draws)
    acc = sum(
        math.comb(successes, j) * math.comb(population - successes, draws - j)
        for j in range(at_least, hi + 1)
    )
    return acc / total


def find_secagg_plus_parameters(
    num_clients: int,
    *,
    max_dropout_fraction: float,
    max_corrupt_fraction: float,
    security_bits: int = 40,
    correctness_bits: int = 20,
) -> tuple[int, int]:
    """Smallest even degree k and a threshold t for a random k-regular Harary graph.

    Each client shares its secrets among its k neighbours and itself (k + 1
    holders). With n clients of which floor(delta n) drop and floor(gamma n)
    are corrupt, placed uniformly at random relative to the graph (the graph
    comes from public randomness fixed after the clients' keys), a client's k
    neighbours contain hypergeometrically many dropped / corrupt clients. We
    require, with a union bound over the n clients:

    * security: P[some client has >= 2t - (k + 1) corrupt neighbours] <=
      2^-security_bits, so every neighbourhood keeps t > (holders + corrupt)/2
      (Bonawitz's bound that stops a server which lies about dropouts from
      collecting t shares of both kinds for one client); this implies fewer
      than t corrupt holders;
    * isolation: P[some client has no honest surviving neighbour] <=
      2^-security_bits (a necessary condition for the honest survivors' graph
      to stay connected; Bell et al. bound full disconnection, which we do not
      compute);
    * correctness: P[some client keeps fewer than t surviving neighbours]
      <= 2^-correctness_bits (its own share is not counted: it may be the one
      that dropped).

    Returns (k, t); falls back to the complete graph (k = n - 1) when no
    smaller k qualifies.
    """
    n = num_clients
    dropped = math.floor(max_dropout_fraction * n)
    corrupt = math.floor(max_corrupt_fraction * n)
    sec = 2.0**-security_bits
    corr = 2.0**-correctness_bits
    for k in range(2, n - 1, 2):
        # Correctness pins the largest usable t; security then needs 2t - k - 1 large.
        t_best = None
        for t in range(k, (k + 1) // 2, -1):
            if n * _hypergeom_sf(n - 1, dropped, k, k - t + 1) <= corr:
                t_best = t
                break
        if t_best is None:
            continue
        t = t_best
        if n * _hypergeom_sf(n - 1, corrupt, k, 2 * t - k - 1) > sec:
            continue
        if n * _hypergeom_sf(n - 1, dropped + corrupt, k, k) > sec:
            continue
        return k, t
    return n - 1, _full_threshold(n, max_dropout_fraction, max_corrupt_fraction)


def _full_threshold(n: int, dropout: float, corrupt: float) -> int:
    """Threshold for the complete graph, where all n clients hold shares.

    Needs t > (n + c)/2 with c = floor(gamma n) corrupt (Bonawitz et al.), and
    t <= n - floor(delta n) so the tolerated dropouts leave t share holders.
    """
    c = math.floor(corrupt * n)
    t = (n + c) // 2 + 1
    if t > n - math.floor(dropout * n):
        raise ConfigError(
            f"no threshold tolerates dropout fraction {dropout} and corrupt fraction "
            f"{corrupt} with {n} clients (need (n+c)/2 < t <= n - dropped)"
        )
    return t


@dataclass(frozen=True, kw_only=True)
class SecAggConfig:
    """Static parameters of one secure-aggregation round.

    ``threshold`` and ``degree`` are per neighbourhood: a client Shamir-shares
    its secrets among its ``degree`` neighbours and itself (all n clients in
    SECAGG, where degree = n - 1) and any ``threshold`` of these holders can
    reconstruct. Leave them ``None`` to derive them from ``num_clients`` and the
    tolerated dropout / corruption fractions; explicit values are validated
    (t must exceed (degree + 1) / 2, or a server that tells clients different
    dropout stories could collect both share kinds of one client).

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

    def __post_init__(self) -> None:
        if not isinstance(self.mode, SecAggMode):
            raise TypeError("mode must be a SecAggMode")
        for name in ("num_clients", "modulus_bits", "security_bits", "correctness_bits"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"{name} must be an int")
        if self.num_clients < 3:
            raise ConfigError("num_clients must be >= 3 (with 2 clients the sum reveals both)")
        if self.num_clients >= 2**31:
            raise ConfigError("num_clients must be < 2^31")
        if not 2 <= self.modulus_bits <= 62:
            raise ConfigError("modulus_bits must be in [2, 62]")
        for name in ("max_dropout_fraction", "max_corrupt_fraction"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise ConfigError(f"{name} must be in [0, 1)")
        if self.max_dropout_fraction + self.max_corrupt_fraction >= 0.5:
            raise ConfigError("max_dropout_fraction + max_corrupt_fraction must be < 0.5")
        n = self.num_clients
        if self.mode is SecAggMode.SECAGG:
            if self.degree not in (None, n - 1):
                raise ConfigError("SECAGG uses the complete graph: degree must be None or n - 1")
            k = n - 1
            t = self.threshold
            if t is None:
                t = _full_threshold(n, self.max_dropout_fraction, self.max_corrupt_fraction)
        else:
            if self.degree is None and self.threshold is None:
                k, t = find_secagg_plus_parameters(
                    n,
                    max_dropout_fraction=self.max_dropout_fraction,
                    max_corrupt_fraction=self.max_corrupt_fraction,
                    security_bits=self.security_bits,
                    correctness_bits=self.correctness_bits,
                )
            elif self.degree is None or self.threshold is None:
                raise ConfigError("SECAGG_PLUS: give both degree and threshold, or neither")
            else:
                k, t = self.degree, self.threshold
                if not isinstance(k, int) or not 2 <= k <= n - 1:
                    raise ConfigError("degree must be an int in [2, n - 1]")
                if k < n - 1 and k % 2:
                    raise ConfigError("degree must be even (Harary graph) unless it is n - 1")
        if not isinstance(t, int) or isinstance(t, bool):
            raise TypeError("threshold must be an int")
        if not (k + 1) // 2 < t <= k + 1:
            raise ConfigError(
                f"threshold must satisfy (degree+1)/2 < t <= degree+1 (degree={k}, t={t})"
            )
        object.__setattr__(self, "degree", k)
        object.__setattr__(self, "threshold", t)

    @property
    def t(self) -> int:
        return cast(int, self.threshold)  # resolved in __post_init__

    @property
    def k(self) -> int:
        return cast(int, self.degree)  # resolved in __post_init__
