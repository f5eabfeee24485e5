"""Running sums for the aggregation servers: memory flat in the number of clients.

A server folds each input into its sum as it arrives instead of keeping n input
vectors until the round closes:

* :class:`HeldInputs` keeps the masked inputs a SecAgg server may still have to
  take out of its running sum (a client excluded after its input arrived, see
  :mod:`aggregation._server`), in an anonymous temporary file once they exceed a
  small in-memory budget, so the server's memory stays flat in n while it can
  still subtract any of them.
"""

from __future__ import annotations

import tempfile

import numpy as np
import numpy.typing as npt

from privacy.errors import ProtocolError

__all__ = ["HeldInputs"]


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
