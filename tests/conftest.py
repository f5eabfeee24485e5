"""Shared test settings.

Tests use tiny models; one torch thread per process avoids oversubscribing the
two CI cores when pytest and subprocesses run side by side.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

DATA_ROOT = Path(
    os.environ.get("SECURE_FML_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


@pytest.fixture
def data_root() -> Path:
    if not (DATA_ROOT / "femnist").is_dir():
        pytest.skip(f"real data not found at {DATA_ROOT} (set SECURE_FML_DATA)")
    return DATA_ROOT
