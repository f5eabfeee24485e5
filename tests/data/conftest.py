"""Fixtures for the data tests: the shared real-data folder (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from secure_fml.data import DATA_ROOT_ENV


def _shared_data_root() -> Path:
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = _shared_data_root()
    if not root.is_dir():
        pytest.skip(f"real data folder not found at {root} (set {DATA_ROOT_ENV})")
    return root
