"""Synthetic(alpha, beta): determinism, shapes, heterogeneity knobs, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from secure_fml.data import InputKind, make_synthetic
from secure_fml.errors import ConfigError


def test_synthetic_shapes_and_dtypes() -> None:
    ds = make_synthetic(alpha=0.5, beta=0.5, num_clients=30, dim=20, num_classes=5, seed=3)
    assert ds.input_kind is InputKind.TABULAR and ds.num_classes == 5
    assert len(ds.clients) == 30 and ds.sample_shape == (20,)
    for c in ds.clients:
        assert c.x.dtype == np.float32 and c.y.dtype == np.int64
        assert len(c) >= 50 and c.y.min() >= 0 and c.y.max() < 5


def test_synthetic_is_deterministic_given_seed() -> None:
    a = make_synthetic(num_clients=10, seed=7)
    b = make_synthetic(num_clients=10, seed=7)
    c = make_synthetic(num_clients=10, seed=8)
    for ca, cb in zip(a.clients, b.clients, strict=True):
        assert ca.client_id == cb.client_id
        np.testing.assert_array_equal(ca.x, cb.x)
        np.testing.assert_array_equal(ca.y, cb.y)
    assert not all(
        len(x) == len(y) and np.array_equal(x.y, y.y)
        for x, y in zip(a.clients, c.clients, strict=True)
    )


def test_synthetic_max_samples_caps_and_default_is_fast() -> None:
    capped = make_synthetic(num_clients=50, min_samples=20, max_samples=100)
    assert max(len(c) for c in capped.clients) <= 100
    t0 = time.perf_counter()
    ds = make_synthetic()
    assert time.perf_counter() - t0 < 1.0
    assert len(ds.clients) == 100 and ds.sample_shape == (60,) and ds.num_classes == 10


def test_synthetic_zero_heterogeneity_shares_input_mean() -> None:
    # With beta = 0 every client's input mean v_k is drawn around 0; with large beta
    # the client means spread out (that is what beta controls).
    def spread(beta: float) -> float:
        ds = make_synthetic(alpha=0.0, beta=beta, num_clients=40, seed=1, max_samples=200)
        return float(np.std([c.x.mean() for c in ds.clients]))

    assert spread(0.0) < spread(5.0)


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"alpha": -1.0}, "alpha"),
        ({"num_clients": 0}, "num_clients"),
        ({"num_classes": 1}, "num_classes"),
        ({"dim": 0}, "dim"),
        ({"max_samples": 10}, "max_samples"),
    ],
)
def test_synthetic_rejects_bad_config(kw: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        make_synthetic(**kw)  # type: ignore[arg-type]
