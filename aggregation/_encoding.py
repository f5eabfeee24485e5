"""Fixed-point encoding of clipped float vectors into Z_{2^b}, and exact decoding of sums."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from aggregation._primitives import Csprng, fwht
from privacy.errors import ConfigError

__all__ = ["FixedPointCodec", "centered_lift"]


def centered_lift(values: np.ndarray, bits: int) -> np.ndarray:
    """Map Z_{2^b} to the integers in [-2^(b-1), 2^(b-1)) (two's-complement style), as int64."""
    v = np.asarray(values).astype(np.uint64) & np.uint64((1 << bits) - 1)
    signed = v.astype(np.int64)
    return np.where(signed >= (1 << (bits - 1)), signed - (1 << bits), signed)


@dataclass(frozen=True, kw_only=True)
class FixedPointCodec:
    """Clip norm c, scale s and modulus 2^b chosen so the sum of n inputs cannot wrap.

    Encoding: clip to L2 norm c (idempotent for vectors the DP layer already
    clipped), optionally rotate with a randomized Hadamard transform (public
    signs, shared by all clients, so the server can undo it on the sum), scale
    by s and round each coordinate stochastically: floor(s x) + Bernoulli(frac),
    which is unbiased. Every coordinate then satisfies |q_i| <= c s + 1 (the
    L-infinity norm is at most the L2 norm, also after rotation).

    Without noise the sum of n encodings is bounded by n (c s + 1) and we
    require it to be < 2^(b-1), so the centered lift of the sum mod 2^b is the
    exact integer sum: wrap-around is impossible, not just unlikely.

    With per-client discrete Gaussian noise of standard deviation sigma, the
    noise in the sum is sub-Gaussian with variance proxy n sigma^2 (each
    discrete Gaussian is sub-Gaussian with proxy sigma^2, Canonne-Kamath-Steinke
    2020), so P[some coordinate exceeds tau] <= 2 d exp(-tau^2 / (2 n sigma^2)).
    We reserve tau = sigma sqrt(2 n ln(2 d / p)) of headroom, making the
    probability that any coordinate of the round wraps at most
    ``wrap_probability`` = p.
    """

    clip_norm: float
    num_clients: int
    modulus_bits: int
    dimension: int
    scale: float
    noise_stddev_int: float = 0.0
    wrap_probability: float = 0.0
    rotation_seed: bytes | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ConfigError("clip_norm must be a positive finite number")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ConfigError("scale must be a positive finite number")
        if self.dimension < 1:
            raise ConfigError("dimension must be >= 1")
        if self.noise_stddev_int < 0:
            raise ConfigError("noise_stddev_int must be >= 0")
        needed = self.num_clients * (self.clip_norm * self.scale + 1) + self._noise_headroom()
        if needed >= 2 ** (self.modulus_bits - 1):
            raise ConfigError(
                f"sum of {self.num_clients} inputs can reach {needed:.4g} >= "
                f"2^{self.modulus_bits - 1}: lower the scale or raise modulus_bits"
            )

    def _noise_headroom(self) -> float:
        if self.noise_stddev_int == 0:
            return 0.0
        if not 0 < self.wrap_probability < 1:
            raise ConfigError("wrap_probability must be in (0, 1) when noise is added")
        return self.noise_stddev_int * math.sqrt(
            2 * self.num_clients * math.log(2 * self.padded_dimension / self.wrap_probability)
        )

    @classmethod
    def create(
        cls,
        *,
        clip_norm: float,
        num_clients: int,
        modulus_bits: int,
        dimension: int,
        scale: float | None = None,
        noise_stddev_int: float = 0.0,
        wrap_probability: float = 1e-9,
        rotation_seed: bytes | None = None,
    ) -> FixedPointCodec:
        """Derive the largest safe scale for ``modulus_bits`` when ``scale`` is None."""
        probe = cls(
            clip_norm=clip_norm,
            num_clients=num_clients,
            modulus_bits=62,
            dimension=dimension,
            scale=1.0,
            noise_stddev_int=noise_stddev_int,
            wrap_probability=wrap_probability if noise_stddev_int else 0.0,
            rotation_seed=rotation_seed,
        )
        if scale is None:
            room = 2 ** (modulus_bits - 1) - 1 - probe._noise_headroom()
            scale = (room / num_clients - 1) / clip_norm * (1 - 1e-9)
            if scale <= 0:
                raise ConfigError(
                    f"modulus_bits={modulus_bits} leaves no room for {num_clients} clients"
                    " (and the noise headroom); raise modulus_bits"
                )
        return cls(
            clip_norm=clip_norm,
            num_clients=num_clients,
            modulus_bits=modulus_bits,
            dimension=dimension,
            scale=scale,
            noise_stddev_int=noise_stddev_int,
            wrap_probability=wrap_probability if noise_stddev_int else 0.0,
            rotation_seed=rotation_seed,
        )

    @property
    def padded_dimension(self) -> int:
        """Length on the wire: the next power of two when rotating, else ``dimension``."""
        if self.rotation_seed is None:
            return self.dimension
        return 1 << max(0, (self.dimension - 1).bit_length())

    @property
    def quantization_bound(self) -> float:
        """Max |decoded - true| per coordinate of a noiseless sum of n inputs (no rotation).

        Each client's stochastic rounding errs by less than one unit, 1/s. With
        rotation the same bound holds per rotated coordinate, so the L2 error of
        the un-rotated sum is below sqrt(padded_dimension) n / s.
        """
        return self.num_clients / self.scale

    def _signs(self) -> np.ndarray:
        if self.rotation_seed is None:
            raise ConfigError("no rotation configured")
        raw = Csprng(hashlib.sha256(b"secure-fml/secagg/v1/rotation" + self.rotation_seed).digest())
        bits = np.unpackbits(np.frombuffer(raw.bytes((self.padded_dimension + 7) // 8), np.uint8))
        return 1.0 - 2.0 * bits[: self.padded_dimension].astype(np.float64)

    def clip(self, x: np.ndarray) -> np.ndarray:
        v = np.asarray(x, dtype=np.float64).reshape(-1)
        if v.shape[0] != self.dimension:
            raise ConfigError(f"vector has dimension {v.shape[0]}, expected {self.dimension}")
        if not np.all(np.isfinite(v)):
            raise ConfigError("vector contains NaN or infinity")
        norm = float(np.linalg.norm(v))
        if norm > self.clip_norm:
            v = v * (self.clip_norm / norm)
        return v

    def encode(self, x: np.ndarray, rng: Csprng | None = None) -> np.ndarray:
        """Clip, (rotate), scale, round stochastically; int64 of length padded_dimension.

        The rounding randomness comes from ``rng``, by default a fresh CSPRNG keyed from
        ``os.urandom`` (a seeded stream is only for the explicit insecure test mode).
        """
        if rng is None:
            rng = Csprng()
        v = self.clip(x)
        if self.rotation_seed is not None:
            padded = np.zeros(self.padded_dimension)
            padded[: self.dimension] = v
            v = fwht(padded * self._signs())
        y = v * self.scale
        lo = np.floor(y)
        q = lo + (rng.uniform01(y.shape[0]) < (y - lo))
        bound = math.ceil(self.clip_norm * self.scale)
        return np.clip(q, -bound, bound).astype(np.int64)

    def decode_sum(self, summed: np.ndarray) -> np.ndarray:
        """Exact integer sum (centered lift of the mod-2^b sum), rescaled and un-rotated."""
        ints = centered_lift(summed, self.modulus_bits)
        return self.decode_integers(ints)

    def decode_integers(self, ints: np.ndarray) -> np.ndarray:
        v = ints.astype(np.float64) / self.scale
        if self.rotation_seed is not None:
            v = fwht(v) * self._signs()
            v = v[: self.dimension]
        return v
