"""CSPRNG Gaussian source, insecure mode, distributed/central sizing under dropouts."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from privacy import (
    ConfigError,
    DropoutThresholdNotMet,
    GaussianNoiseSource,
    InsecureModeError,
    add_noise,
    central_noise_std,
    distributed_effective_noise_multiplier,
    distributed_noise_std,
)


def test_default_source_is_csprng_and_silent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        src = GaussianNoiseSource()
    assert src.is_secure
    a, b = GaussianNoiseSource().standard_normal(8), GaussianNoiseSource().standard_normal(8)
    assert not np.array_equal(a, b)


def test_seed_refused_outside_insecure_mode() -> None:
    with pytest.raises(InsecureModeError):
        GaussianNoiseSource(seed=1)


def test_seeded_mode_warns_and_is_reproducible() -> None:
    with pytest.warns(RuntimeWarning, match="INSECURE TEST MODE.*production"):
        a = GaussianNoiseSource(seed=7, insecure_test_mode=True)
    with pytest.warns(RuntimeWarning):
        b = GaussianNoiseSource(seed=7, insecure_test_mode=True)
    assert not a.is_secure
    np.testing.assert_array_equal(a.standard_normal(100), b.standard_normal(100))


def test_uniforms_in_open_closed_unit_interval() -> None:
    u = GaussianNoiseSource().uniform53(100_000)
    assert u.min() > 0.0 and u.max() <= 1.0
    # Kolmogorov-Smirnov against U(0,1); p-value threshold 1e-4 -> false-alarm rate 1e-4.
    assert stats.kstest(u, "uniform").pvalue > 1e-4


@pytest.mark.parametrize("std", [0.01, 1.0, 37.5])
def test_noise_std_matches_formula(std: float) -> None:
    n = 400_000
    x = GaussianNoiseSource().normal(n, std=std)
    # Sample std of n Gaussians has relative s.e. 1/sqrt(2n) = 0.11%; allow 6 s.e.
    tol = 6 / math.sqrt(2 * n)
    assert abs(x.std() / std - 1.0) < tol
    assert abs(x.mean()) < 6 * std / math.sqrt(n)
    # Normality (the sum-of-four construction must still be exactly Gaussian).
    assert stats.kstest(x[:50_000] / std, "norm").pvalue > 1e-4


def test_distributed_sum_over_min_survivors_has_target_std() -> None:
    sigma, c, m_min = 1.3, 0.7, 16
    per = distributed_noise_std(noise_multiplier=sigma, clip_norm=c, min_survivors=m_min)
    assert per == pytest.approx(sigma * c / 4.0)
    src = GaussianNoiseSource()
    d = 20_000
    total = sum(
        add_noise(np.zeros(d, np.float32), std=per, source=src).astype(np.float64)
        for _ in range(m_min)
    )
    # Relative s.e. of the sample std over d coordinates is 1/sqrt(2d) = 0.5%.
    assert abs(total.std() / (sigma * c) - 1) < 6 / math.sqrt(2 * d)


def test_central_std() -> None:
    assert central_noise_std(noise_multiplier=1.1, clip_norm=2.0) == pytest.approx(2.2)


def test_effective_sigma_from_actual_survivors() -> None:
    per = distributed_noise_std(noise_multiplier=1.0, clip_norm=1.0, min_survivors=10)
    # More survivors than planned: more noise present, charged accordingly.
    z = distributed_effective_noise_multiplier(
        per_client_std=per, clip_norm=1.0, num_survivors=40, min_survivors=10
    )
    assert z == pytest.approx(2.0)
    assert distributed_effective_noise_multiplier(
        per_client_std=per, clip_norm=1.0, num_survivors=10, min_survivors=10
    ) == pytest.approx(1.0)


def test_fewer_survivors_than_min_is_an_error_never_silent() -> None:
    per = distributed_noise_std(noise_multiplier=1.0, clip_norm=1.0, min_survivors=10)
    with pytest.raises(DropoutThresholdNotMet, match="under-noise"):
        distributed_effective_noise_multiplier(
            per_client_std=per, clip_norm=1.0, num_survivors=9, min_survivors=10
        )


def test_colluders_are_not_counted() -> None:
    per = distributed_noise_std(
        noise_multiplier=1.0, clip_norm=1.0, min_survivors=10, assumed_colluding_clients=2
    )
    assert per == pytest.approx(1 / math.sqrt(8))
    assert distributed_effective_noise_multiplier(
        per_client_std=per,
        clip_norm=1.0,
        num_survivors=10,
        min_survivors=10,
        assumed_colluding_clients=2,
    ) == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        distributed_noise_std(
            noise_multiplier=1.0, clip_norm=1.0, min_survivors=3, assumed_colluding_clients=3
        )


def test_add_noise_bit_coordinate_gets_own_std() -> None:
    src = GaussianNoiseSource()
    outs = np.stack(
        [
            add_noise(np.zeros(2, np.float32), std=0.0, source=src, last_coordinate_std=2.0)
            for _ in range(3000)
        ]
    )
    assert np.all(outs[:, 0] == 0.0)
    assert abs(outs[:, 1].std() / 2.0 - 1) < 0.1
