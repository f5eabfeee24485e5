"""The one atomic writer (``privacy.atomic_write_bytes``): used by the ledger's report,
checkpoints, run metadata and metric logs. A failure at any point leaves the old file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import privacy
from privacy import _durable


def test_replaces_content_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    privacy.atomic_write_bytes(target, b"old")
    privacy.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]


@pytest.mark.parametrize("fail_at", ["fsync", "replace"])
def test_a_failure_before_the_rename_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str
) -> None:
    target = tmp_path / "ckpt"
    target.write_bytes(b"old")

    def boom(*_: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(_durable.os, fail_at, boom)
    with pytest.raises(OSError, match="disk gone"):
        privacy.atomic_write_bytes(target, b"new and longer")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_the_directory_is_synced_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_replace, real_fsync_dir = os.replace, _durable.fsync_dir

    def replace(a: str | Path, b: str | Path) -> None:
        calls.append("replace")
        real_replace(a, b)

    def fsync_dir(p: str | Path) -> None:
        calls.append("fsync_dir")
        real_fsync_dir(p)

    monkeypatch.setattr(_durable.os, "replace", replace)
    monkeypatch.setattr(_durable, "fsync_dir", fsync_dir)
    privacy.atomic_write_bytes(tmp_path / "y", b"1")
    assert calls == ["replace", "fsync_dir"]
