"""Durable file writes, shared by the ledger, the privacy report and (through the public
``privacy.atomic_write_bytes``) the service's checkpoints, run metadata and metric logs.

A crash, power cut or ``kill -9`` at any point leaves either the old file or the new
one, never a torn mix: the bytes go to a temporary file in the same directory, which is
flushed and fsync'd, then renamed over the target (``os.replace`` is atomic on POSIX
within one file system), and the directory is fsync'd so that the rename itself is on
disk before the caller goes on (without that, a checkpoint could be "written" and the
ledger event it depends on applied, yet the directory entry lost on power failure).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["atomic_write_bytes", "fsync_dir"]


def fsync_dir(path: str | Path) -> None:
    """Make a directory's entries (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file."""
    path = Path(path)
    # The pid keeps two processes writing the same target from sharing one temp file.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent.resolve())
