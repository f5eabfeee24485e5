"""Running sums for the aggregation servers: memory flat in the number of clients.

A server folds each input into its sum as it arrives instead of keeping n input
vectors until the round closes:

* :class:`ExactFloatSum` sums float32 vectors *exactly* (a fixed-point
  accumulator wide enough for every float32), so the result does not depend on the
  order in which inputs arrived: it is the float64 nearest to the true sum. (A
  float64 running sum would round differently for each arrival order.)
* :class:`HeldInputs` keeps the masked inputs a SecAgg server may still have to
  take out of its running sum (a client excluded after its input arrived, see
  :mod:`aggregation._server`), in an anonymous temporary file once they exceed a
  small in-memory budget, so the server's memory stays flat in n while it can
  still subtract any of them.
"""

from __future__ import annotations

import math
import tempfile

import numpy as np
import numpy.typing as npt

from privacy.errors import InvalidMessage, ProtocolError

__all__ = ["ExactFloatSum", "HeldInputs"]

# A finite float32 with exponent field E and mantissa field M is m * 2^(o - 149)
# with m = M + 2^23 (normal) or M (subnormal, E = 0) and o = max(E, 1) - 1 in
# [0, 253]. The accumulator holds the integer sum of +-m * 2^o in 32-bit limbs of
# int64: limb j has weight 2^(32 j - 149).
_BIAS = 149
_LIMB_BITS = 32
# Bits of the largest term (253 + 24 = 277) plus headroom for 2^40 inputs, rounded
# up to whole limbs, plus the top limb that carries the sign.
_LIMBS = (277 + 40) // _LIMB_BITS + 2
# A term is below 2^(31 + 24) = 2^55 in magnitude, a normalized limb below 2^32 and
# a carry below 2^32: int64 holds 2^63 / 2^55 = 256 unnormalized additions, so
# normalizing every 128 leaves ample room.
_NORMALIZE_EVERY = 128


class ExactFloatSum:
    """The exact sum of float32 vectors of one dimension, independent of their order."""

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension
        self._acc = np.zeros((_LIMBS, dimension), dtype=np.int64)
        self._flat = self._acc.reshape(-1)  # a view
        self._cols = np.arange(dimension, dtype=np.int64)
        self._pending = 0
        self.count = 0

    def add(self, vector: np.ndarray) -> None:
        v = np.ascontiguousarray(vector)
        if v.dtype != np.float32 or v.shape != (self.dimension,):
            raise InvalidMessage(f"input must be float32[{self.dimension}]")
        if not np.isfinite(v).all():
            raise InvalidMessage("input contains NaN or Inf")
        bits = v.view(np.int32).astype(np.int64)
        sign = bits >> 31  # -1 for negative, 0 otherwise
        field = (bits >> 23) & 0xFF
        mant = (bits & 0x7FFFFF) | ((field != 0).astype(np.int64) << 23)
        off = np.maximum(field, 1) - 1
        term = mant << (off & (_LIMB_BITS - 1))
        term ^= sign
        term -= sign  # two's complement negation where the sign bit was set
        idx = (off >> 5) * self.dimension
        idx += self._cols
        # One entry per column: the indices are distinct, so the fancy-index add is
        # exact (no repeated index is lost).
        self._flat[idx] += term
        self.count += 1
        self._pending += 1
        if self._pending >= _NORMALIZE_EVERY:
            self._normalize()

    def _normalize(self) -> None:
        acc = self._acc
        for j in range(_LIMBS - 1):
            carry = acc[j] >> _LIMB_BITS  # floor division: the limb stays in [0, 2^32)
            acc[j] -= carry << _LIMB_BITS
            acc[j + 1] += carry
        self._pending = 0

    def total(self) -> np.ndarray:
        """The float64 nearest the exact sum, per coordinate (round half to even)."""
        self._normalize()
        # Each limb times its weight is exact in float64 (below 2^33 times a power of
        # two inside float64's range); fsum rounds their exact sum once.
        scale = np.ldexp(1.0, np.arange(_LIMBS) * _LIMB_BITS - _BIAS)
        parts = self._acc.astype(np.float64) * scale[:, None]
        return np.fromiter(
            (math.fsum(col) for col in parts.T), dtype=np.float64, count=self.dimension
        )


class HeldInputs:
    """Vectors kept aside so that they can be subtracted later, spilled to disk.

    Up to ``memory_bytes`` stay in memory, beyond that the store rolls over to an
    anonymous temporary file (created 0600 and unlinked at once by
    :func:`tempfile.SpooledTemporaryFile`), so holding n vectors costs O(1) memory.
    What is stored is what the server received anyway (masked inputs); :meth:`close`
    discards it once no subtraction can be needed.
    """

    def __init__(self, *, dtype: npt.DTypeLike, dimension: int, memory_bytes: int) -> None:
        self._dtype = np.dtype(dtype)
        self._dimension = dimension
        self._nbytes = self._dtype.itemsize * dimension
        self._file: tempfile.SpooledTemporaryFile[bytes] | None = (
            # Closed by close() (or with the store): it outlives any one method.
            tempfile.SpooledTemporaryFile(max_size=memory_bytes)  # noqa: SIM115
        )
        self._offset: dict[int, int] = {}

    def put(self, key: int, vector: np.ndarray) -> None:
        f = self._open()
        if key in self._offset:
            raise ProtocolError(f"input {key} is already held")
        data = np.ascontiguousarray(vector, dtype=self._dtype).tobytes()
        f.seek(0, 2)
        self._offset[key] = f.tell()
        f.write(data)

    def get(self, key: int) -> np.ndarray:
        f = self._open()
        f.seek(self._offset[key])
        data = f.read(self._nbytes)
        if len(data) != self._nbytes:
            raise ProtocolError(f"held input {key} is truncated")
        return np.frombuffer(data, dtype=self._dtype).copy()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None
        self._offset.clear()

    def _open(self) -> tempfile.SpooledTemporaryFile[bytes]:
        if self._file is None:
            raise ProtocolError("the held inputs were already discarded")
        return self._file
