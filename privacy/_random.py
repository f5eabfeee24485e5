"""The project's one cryptographically secure random number generator.

Every security-relevant draw -- masks, Shamir polynomials, key pairs, DP noise,
client sampling, session ids -- comes from a :class:`Csprng`. It lives in the
bottom layer so that every package uses the same one (``privacy.Csprng``).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privacy.errors import ConfigError

__all__ = ["INSECURE_SEED_WARNING", "KEY_BYTES", "Csprng"]

KEY_BYTES = 32

INSECURE_SEED_WARNING = (
    "INSECURE TEST MODE: randomness is derived from a user-supplied seed. Client sampling, "
    "secure-aggregation masks and keys, and differential-privacy noise are then reproducible "
    "by anyone who knows or guesses the seed, who can unmask inputs and subtract the noise. "
    "Never use this in production or for any run whose privacy guarantee is reported."
)


class Csprng:
    """A cryptographically secure stream of random bytes and integers.

    The stream is AES-256-CTR keyed with 32 bytes from ``os.urandom``. Drawing
    large numpy arrays from a keystream is an order of magnitude faster than
    calling ``os.urandom`` repeatedly and is as strong as the AES key. A seed is
    accepted only through :meth:`insecure_from_seed`, which the public API
    reaches only in its explicitly named insecure test mode.
    """

    def __init__(self, key: bytes | None = None) -> None:
        if key is None:
            key = os.urandom(KEY_BYTES)
        if len(key) != KEY_BYTES:
            raise ConfigError("Csprng key must be 32 bytes")
        self._enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    @classmethod
    def insecure_from_seed(cls, seed: int | bytes, label: str) -> Csprng:
        """Deterministic stream for tests only: anyone who knows the seed knows every draw.

        Callers reach this only from an explicitly named insecure test mode, which warns
        with :data:`INSECURE_SEED_WARNING`.
        """
        if isinstance(seed, bool) or not isinstance(seed, int | bytes):
            raise TypeError(f"seed must be int or bytes, got {type(seed).__name__}")
        raw = seed if isinstance(seed, bytes) else str(int(seed)).encode()
        digest = hashlib.sha256(
            b"secure-fml/csprng/v1/insecure-seed/" + label.encode() + b"/" + raw
        ).digest()
        return cls(digest)

    def bytes(self, n: int) -> bytes:
        return self._enc.update(bytes(n))

    def uint64(self, n: int) -> np.ndarray:
        return np.frombuffer(self.bytes(8 * n), dtype=np.uint64).copy()

    def below(self, bound: np.ndarray | int, n: int | None = None) -> np.ndarray:
        """Uniform integers in [0, bound) for each bound (< 2^63), by unbiased rejection.

        Uses the arc4random_uniform trick: reject r < (2^64 - m) mod m, which
        leaves a multiple of m values, then reduce mod m. A single (scalar) bound
        takes a fast path: a power of two is a mask (no rejection needed), and the
        rejection threshold is computed once instead of per element.
        """
        if n is not None and np.ndim(bound) == 0:
            return self._below_scalar(int(bound), n)
        m = np.asarray(bound, dtype=np.uint64)
        if n is not None:
            m = np.broadcast_to(m, (n,))
        m = np.ascontiguousarray(m)
        if m.size and (m.min() < 1 or m.max() >= np.uint64(2**63)):
            raise ConfigError("bound must be in [1, 2^63)")
        out = np.empty(m.shape, dtype=np.uint64)
        todo = np.arange(m.size)
        flat_m = m.reshape(-1)
        flat_out = out.reshape(-1)
        while todo.size:
            mm = flat_m[todo]
            r = self.uint64(todo.size)
            threshold = (np.uint64(0) - mm) % mm  # == (2^64 - m) mod m in uint64
            ok = r >= threshold
            flat_out[todo[ok]] = r[ok] % mm[ok]
            todo = todo[~ok]
        return out

    def _below_scalar(self, bound: int, n: int) -> np.ndarray:
        if not 1 <= bound < 2**63:
            raise ConfigError("bound must be in [1, 2^63)")
        if bound & (bound - 1) == 0:  # power of two: the low bits are exactly uniform
            return self.uint64(n) & np.uint64(bound - 1)
        m = np.uint64(bound)
        threshold = np.uint64((2**64 - bound) % bound)
        out = np.empty(n, dtype=np.uint64)
        todo = np.arange(n)
        while todo.size:
            r = self.uint64(todo.size)
            ok = r >= threshold
            out[todo[ok]] = r[ok] % m
            todo = todo[~ok]
        return out

    def uniform01(self, n: int) -> np.ndarray:
        """Uniform floats in [0, 1) with 53 random bits each."""
        return (self.uint64(n) >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)

    def child(self, label: str) -> Csprng:
        """An independent stream keyed from this one (for a labelled sub-purpose)."""
        return Csprng(hashlib.sha256(self.bytes(KEY_BYTES) + label.encode()).digest())
