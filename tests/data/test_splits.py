"""Client splits (train/val/test) and per-client support/query splits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_fml.data import ClientData, FederatedDataset, InputKind, make_synthetic
from secure_fml.errors import ConfigError, DataError


def _toy(num_clients: int, n: int = 4) -> FederatedDataset:
    clients = tuple(
        ClientData(f"c{i}", np.arange(n, dtype=np.float32)[:, None], np.arange(n) % 2)
        for i in range(num_clients)
    )
    return FederatedDataset("toy", clients, 2, InputKind.TABULAR)


def _ids(group: tuple[ClientData, ...]) -> list[str]:
    return [c.client_id for c in group]


@settings(max_examples=40, deadline=None)
@given(num_clients=st.integers(3, 300), seed=st.integers(0, 2**31 - 1))
def test_split_clients_is_a_disjoint_deterministic_partition(num_clients: int, seed: int) -> None:
    ds = _toy(num_clients)
    s = ds.split_clients(seed=seed)
    train, val, test = _ids(s.train), _ids(s.val), _ids(s.test)
    assert len(set(train + val + test)) == len(train + val + test) == num_clients
    assert len(test) >= 1 and len(train) >= 1
    assert abs(len(val) - 0.1 * num_clients) <= 1 and abs(len(test) - 0.1 * num_clients) <= 1
    again = ds.split_clients(seed=seed)
    assert _ids(again.train) == train and _ids(again.test) == test


def test_split_clients_seed_changes_the_split_and_bad_fractions_fail() -> None:
    ds = _toy(50)
    assert _ids(ds.split_clients(seed=0).test) != _ids(ds.split_clients(seed=1).test)
    with pytest.raises(ConfigError, match="client_fractions"):
        ds.split_clients(fractions=(0.5, 0.5, 0.5))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 400),
    p=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**31 - 1),
)
def test_support_query_disjoint_and_complete(n: int, p: float, seed: int) -> None:
    c = ClientData("c", np.arange(n, dtype=np.float32)[:, None], np.zeros(n, dtype=np.int64))
    support, query = c.split_support_query(support_fraction=p, rng=np.random.default_rng(seed))
    s, q = set(support.x[:, 0].tolist()), set(query.x[:, 0].tolist())
    assert not s & q and len(s | q) == n
    assert len(support) >= 1 and len(query) >= 1
    assert abs(len(support) - p * n) <= 1 or len(support) in (1, n - 1)


def test_support_query_rejects_bad_inputs() -> None:
    c = ClientData("tiny", np.zeros((1, 2), dtype=np.float32), np.zeros(1, dtype=np.int64))
    with pytest.raises(DataError, match="'tiny'"):
        c.split_support_query(support_fraction=0.5, rng=np.random.default_rng(0))
    with pytest.raises(ConfigError, match="support_fraction"):
        _toy(1).clients[0].split_support_query(support_fraction=1.0, rng=np.random.default_rng(0))


def test_min_samples_filter_and_leave_one_out() -> None:
    ds = make_synthetic(num_clients=12, seed=0)
    kept = ds.filter_min_samples(100)
    assert all(len(c) >= 100 for c in kept.clients)
    split = ds.leave_one_out("client_03")
    assert _ids(split.test) == ["client_03"] and "client_03" not in _ids(split.train)
    with pytest.raises(DataError, match="no client 'nope'"):
        ds.leave_one_out("nope")
