"""Clipping bound, typed errors and adaptive-clipping math."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from privacy import (
    ConfigError,
    DataError,
    adaptive_clip_bit,
    adaptive_clip_noise_split,
    adaptive_clip_step,
    adaptive_effective_noise_multiplier,
    clip_update,
)

_F32_MAX = float(np.finfo(np.float32).max)
finite_f32 = st.floats(
    min_value=-_F32_MAX, max_value=_F32_MAX, allow_nan=False, allow_infinity=False, width=32
)
clip_norms = st.floats(min_value=1e-30, max_value=1e30, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(vec=arrays(np.float32, st.integers(1, 64), elements=finite_f32), c=clip_norms)
def test_clip_bound_holds_for_any_finite_input(vec: np.ndarray, c: float) -> None:
    res = clip_update(vec, clip_norm=c)
    out_norm = float(np.sqrt(np.sum(np.square(res.vector, dtype=np.float64))))
    assert res.vector.dtype == np.float32
    assert res.vector.shape == vec.shape
    assert out_norm <= c
    assert res.clipped == (res.norm > c)
    if not res.clipped:
        np.testing.assert_array_equal(res.vector, vec)
    else:
        # Direction preserved (up to float32 rounding) unless it underflowed.
        assert out_norm <= c


@settings(max_examples=100, deadline=None)
@given(scale=st.floats(min_value=-40, max_value=38), d=st.integers(1, 2000))
def test_clip_extreme_magnitudes(scale: float, d: int) -> None:
    vec = np.full(d, 10.0**scale, dtype=np.float32)
    res = clip_update(vec, clip_norm=1.0)
    assert float(np.linalg.norm(res.vector.astype(np.float64))) <= 1.0
    assert math.isfinite(res.norm)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_a_typed_error(bad: float) -> None:
    vec = np.ones(10, dtype=np.float32)
    vec[3] = bad
    with pytest.raises(DataError, match="NaN or Inf"):
        clip_update(vec, clip_norm=1.0)


def test_float64_beyond_float32_range_rejected() -> None:
    with pytest.raises(DataError):
        clip_update(np.array([1e300, 1.0]), clip_norm=1.0)


@pytest.mark.parametrize(
    "vec", [np.zeros((2, 2), np.float32), np.array([], np.float32), np.array(["a"])]
)
def test_bad_shapes_rejected(vec: np.ndarray) -> None:
    with pytest.raises(DataError):
        clip_update(vec, clip_norm=1.0)


@pytest.mark.parametrize("c", [0.0, -1.0, math.nan, math.inf])
def test_bad_clip_norm(c: float) -> None:
    with pytest.raises(ConfigError, match="clip_norm"):
        clip_update(np.ones(3, np.float32), clip_norm=c)


def test_clip_norm_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        clip_update(np.ones(3, np.float32), 1.0)  # type: ignore[misc]


def test_torch_tensor_accepted() -> None:
    torch = pytest.importorskip("torch")
    res = clip_update(torch.ones(4) * 3, clip_norm=1.0)
    assert res.clipped and res.norm == pytest.approx(6.0)
    assert float(np.linalg.norm(res.vector)) == pytest.approx(1.0, rel=1e-6)


def test_adaptive_bit_and_step() -> None:
    assert adaptive_clip_bit(norm=0.5, clip_norm=1.0) == 0.5
    assert adaptive_clip_bit(norm=2.0, clip_norm=1.0) == -0.5
    # 100 clients, 80 unclipped, no noise: fraction 0.8 > target 0.5 -> C shrinks.
    bit_sum = 80 * 0.5 + 20 * -0.5
    step = adaptive_clip_step(
        clip_norm=1.0,
        noisy_bit_sum=bit_sum,
        num_clients=100,
        target_quantile=0.5,
        learning_rate=0.2,
    )
    assert step.unclipped_fraction == pytest.approx(0.8)
    assert step.new_clip_norm == pytest.approx(math.exp(-0.2 * 0.3))


def test_adaptive_clip_converges_to_quantile() -> None:
    rng = np.random.default_rng(0)
    norms = rng.lognormal(mean=0.0, sigma=0.5, size=1000)
    c = 10.0
    for _ in range(200):
        s = sum(adaptive_clip_bit(norm=n, clip_norm=c) for n in norms)
        c = adaptive_clip_step(
            clip_norm=c,
            noisy_bit_sum=s,
            num_clients=len(norms),
            target_quantile=0.5,
            learning_rate=0.2,
        ).new_clip_norm
    assert c == pytest.approx(float(np.median(norms)), rel=0.05)


def test_adaptive_noise_split_recovers_target() -> None:
    split = adaptive_clip_noise_split(noise_multiplier=1.0, expected_clients_per_round=100)
    assert split.clipped_count_stddev == pytest.approx(5.0)
    assert split.value_noise_multiplier > 1.0
    assert split.effective_noise_multiplier == pytest.approx(1.0)
    assert adaptive_effective_noise_multiplier(
        value_noise_multiplier=split.value_noise_multiplier, clipped_count_stddev=5.0
    ) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="too small"):
        adaptive_clip_noise_split(noise_multiplier=1.0, expected_clients_per_round=5)
