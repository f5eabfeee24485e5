from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        # Seeded DP noise (insecure test mode) warns by design; these tests opt in.
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
