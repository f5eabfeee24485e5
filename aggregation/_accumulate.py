"""Running sums for the aggregation servers: memory flat in the number of clients.

A server folds each input into its sum as it arrives instead of keeping n input
vectors until the round closes:

* :class:`HeldInputs` keeps the masked inputs a SecAgg server may still have to
  take out of its running sum (a client excluded after its input arrived, see
  :mod:`aggregation._server`), in an anonymous temporary file once they exceed a
  small in-memory budget, so the server's memory stays flat in n while it can
  still subtract any of them.
* :class:`SpilledBytes` is the store under it, also used for the signed shares a
  SecAgg+ server keeps per dealer (n·k records, ~130 MB at n = 10,000).
"""

from __future__ import annotations

import tempfile

import numpy as np
import numpy.typing as npt

from privacy.errors import ProtocolError

__all__ = ["HeldInputs", "SpilledBytes"]


class SpilledBytes:
    """Byte strings kept by key, in an anonymous temporary file beyond a small budget.

    Up to ``memory_bytes`` stay in memory, beyond that the store rolls over to an
    anonymous temporary file (created 0600 and unlinked at once by
    :func:`tempfile.SpooledTemporaryFile`), so holding n of them costs O(1) memory; a
    part of one can be read without the rest. What is stored is what the server
    received anyway; :meth:`close` discards it.
    """

    def __init__(self, *, memory_bytes: int) -> None:
        self._file: tempfile.SpooledTemporaryFile[bytes] | None = (
            # Closed by close() (or with the store): it outlives any one method.
            tempfile.SpooledTemporaryFile(max_size=memory_bytes)  # noqa: SIM115
        )
        self._span: dict[int, tuple[int, int]] = {}

    def put(self, key: int, data: bytes) -> None:
        f = self._open()
        if key in self._span:
            raise ProtocolError(f"{key} is already held")
        f.seek(0, 2)
        self._span[key] = (f.tell(), len(data))
        f.write(data)

    def get(self, key: int) -> bytes:
        return self.read(key, 0, None)

    def read(self, key: int, start: int, size: int | None) -> bytes:
        """``size`` bytes (None: the rest) of ``key``'s data from ``start``."""
        f = self._open()
        span = self._span.get(key)
        if span is None:
            raise ProtocolError(f"nothing is held for {key}")
        offset, length = span
        if size is None:
            size = length - start
        if not 0 <= start <= start + size <= length:
            raise ProtocolError(f"read outside the data held for {key}")
        f.seek(offset + start)
        data = f.read(size)
        if len(data) != size:
            raise ProtocolError(f"the data held for {key} is truncated")
        return data

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None
        self._span.clear()

    def _open(self) -> tempfile.SpooledTemporaryFile[bytes]:
        if self._file is None:
            raise ProtocolError("the held data was already discarded")
        return self._file


class HeldInputs:
    """Vectors kept aside so that they can be subtracted later, spilled to disk beyond
    ``memory_bytes`` (a :class:`SpilledBytes`), so holding n vectors costs O(1) memory.
    What is stored is what the server received anyway (masked inputs); :meth:`close`
    discards it once no subtraction can be needed.
    """

    def __init__(self, *, dtype: npt.DTypeLike, dimension: int, memory_bytes: int) -> None:
        self._dtype = np.dtype(dtype)
        self._dimension = dimension
        self._store = SpilledBytes(memory_bytes=memory_bytes)

    def put(self, key: int, vector: np.ndarray) -> None:
        try:
            self._store.put(key, np.ascontiguousarray(vector, dtype=self._dtype).tobytes())
        except ProtocolError as e:
            raise ProtocolError(f"input {e}") from None

    def get(self, key: int) -> np.ndarray:
        data = self._store.get(key)
        if len(data) != self._dtype.itemsize * self._dimension:
            raise ProtocolError(f"held input {key} is truncated")
        return np.frombuffer(data, dtype=self._dtype).copy()

    def close(self) -> None:
        self._store.close()
