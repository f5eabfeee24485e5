"""L2 clipping of a client's whole update, fixed and adaptive (Andrew et al. 2021).

The privacy unit is the client: its *entire* flat update (the θ part and the
Meta-SGD α part together) is one vector whose L2 norm is bounded by ``clip_norm``.
That bound is the sensitivity every accountant in this package relies on, so
:func:`clip_update` guarantees it for any finite input, including float32
rounding after the rescale.

Adaptive clipping follows Andrew, Thakkar, McMahan, Ramaswamy, "Differentially
Private Learning with Adaptive Clipping" (NeurIPS 2021): each client computes a
bit ``b = 1[‖Δ‖ <= C]``; the server estimates the unclipped fraction from the
*noised sum* of the bits and moves ``C`` geometrically toward the target
quantile γ: ``C <- C · exp(-η (b̄ - γ))``. Following TFF (and unlike Flower,
which sends the bit in clear metrics) the bit is appended to the update vector
so it is noised and securely aggregated with it. We send ``b - 1/2`` so the
per-client sensitivity of that coordinate is 1/2, and the noise is split
between value and count so the joint release costs exactly the target noise
multiplier z: ``z^-2 = z_value^-2 + (2 σ_count)^-2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from privacy._validation import require_int, require_positive, require_probability
from privacy.errors import ConfigError, DataError

__all__ = [
    "AdaptiveClipNoise",
    "AdaptiveClipStep",
    "ClipResult",
    "adaptive_clip_bit",
    "adaptive_clip_noise_split",
    "adaptive_clip_step",
    "adaptive_effective_noise_multiplier",
    "as_flat_float32",
    "clip_update",
]

FloatVector = npt.NDArray[np.float32]

# Shrink factor applied when float32 rounding leaves the rescaled vector a hair
# above the bound; a few float32 ulps is enough and changes nothing visible.
_SHRINK = 1.0 - 8.0 * float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class ClipResult:
    """A clipped update: ``vector`` (float32, ‖vector‖ <= clip_norm), its pre-clip
    ``norm`` (float64) and whether it was scaled down."""

    vector: FloatVector
    norm: float
    clipped: bool


def as_flat_float32(vec: Any, *, name: str = "vec") -> FloatVector:
    """Return ``vec`` as a 1-D float32 numpy array; reject empty, non-finite input.

    Torch tensors are accepted (detached and moved to CPU); anything else goes
    through ``np.asarray``.
    """
    if hasattr(vec, "detach") and hasattr(vec, "cpu"):
        vec = vec.detach().cpu().numpy()
    arr = np.asarray(vec)
    if arr.dtype.kind not in "fiu":
        raise DataError(f"{name} must be a real-valued vector, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise DataError(f"{name} must be a flat 1-D vector, got shape {arr.shape}")
    if arr.size == 0:
        raise DataError(f"{name} is empty")
    with np.errstate(over="ignore"):
        out = arr.astype(np.float32, copy=True)
    if not np.all(np.isfinite(out)):
        raise DataError(
            f"{name} contains NaN or Inf (or values beyond float32 range); "
            "refusing to clip a non-finite update"
        )
    return out


def _l2(vec: npt.NDArray[Any]) -> float:
    # float64 accumulation: float32 squares overflow above ~1.8e19.
    return float(np.sqrt(np.sum(np.square(vec, dtype=np.float64), dtype=np.float64)))


def clip_update(vec: Any, *, clip_norm: float) -> ClipResult:
    """Scale ``vec`` so its L2 norm is at most ``clip_norm``.

    Raises :class:`DataError` for NaN/Inf/empty/non-1-D input and
    :class:`ConfigError` for a non-positive or non-finite ``clip_norm``.
    """
    c = require_positive("clip_norm", clip_norm)
    arr = as_flat_float32(vec)
    norm = _l2(arr)
    if norm <= c:
        return ClipResult(vector=arr, norm=norm, clipped=False)
    scale = c / norm
    out = (arr.astype(np.float64) * scale).astype(np.float32)
    # Rounding to float32 can land a few ulps above c; shrink until the bound
    # holds exactly as measured in float64. Terminates: each pass shrinks the
    # vector geometrically and float32 underflows to 0 eventually.
    while _l2(out) > c:
        out = (out.astype(np.float64) * _SHRINK).astype(np.float32)
    return ClipResult(vector=out, norm=norm, clipped=True)


# --------------------------------------------------------------------------
# Adaptive clipping (Andrew et al. 2021)
# --------------------------------------------------------------------------


def adaptive_clip_bit(*, norm: float, clip_norm: float) -> float:
    """The value a client appends to its update: ``+0.5`` if ``norm <= clip_norm``
    (not clipped), ``-0.5`` otherwise.

    Centring the bit at zero halves its sensitivity (1/2 instead of 1), which is
    what the noise split in :func:`adaptive_clip_noise_split` assumes.
    """
    n = require_positive("norm", norm, allow_zero=True)
    c = require_positive("clip_norm", clip_norm)
    return 0.5 if n <= c else -0.5


@dataclass(frozen=True)
class AdaptiveClipNoise:
    """Noise split between the update (``value_noise_multiplier``, in units of C)
    and the appended bit (``clipped_count_stddev``, absolute, on the sum of bits)."""

    value_noise_multiplier: float
    clipped_count_stddev: float
    effective_noise_multiplier: float


def adaptive_effective_noise_multiplier(
    *, value_noise_multiplier: float, clipped_count_stddev: float
) -> float:
    """Noise multiplier of the joint release (update, bit) for accounting.

    The joint vector has sensitivity C in the value part (noise ``z_value · C``)
    and 1/2 in the bit part (noise ``σ_b``). Rescaling each part to unit noise
    gives one Gaussian mechanism whose squared sensitivity is
    ``z_value^-2 + (2 σ_b)^-2``, i.e. noise multiplier
    ``z = (z_value^-2 + (2 σ_b)^-2)^-1/2`` (Andrew et al. 2021, Sec. 3).
    """
    zv = require_positive("value_noise_multiplier", value_noise_multiplier)
    sb = require_positive("clipped_count_stddev", clipped_count_stddev)
    return (zv**-2 + (2.0 * sb) ** -2) ** -0.5


def adaptive_clip_noise_split(
    *,
    noise_multiplier: float,
    expected_clients_per_round: float,
    clipped_count_stddev: float | None = None,
) -> AdaptiveClipNoise:
    """Split a target noise multiplier between the update and the clip bit.

    ``clipped_count_stddev`` defaults to ``0.05 · expected_clients_per_round``
    (Andrew et al.'s recommendation). The value part then gets
    ``z_value = (z^-2 - (2 σ_b)^-2)^-1/2`` so the joint release costs exactly
    ``noise_multiplier``. Raises :class:`ConfigError` if σ_b is too small to
    leave any budget for the value (``z >= 2 σ_b``).
    """
    z = require_positive("noise_multiplier", noise_multiplier)
    m = require_positive("expected_clients_per_round", expected_clients_per_round)
    sb = (
        0.05 * m
        if clipped_count_stddev is None
        else require_positive("clipped_count_stddev", clipped_count_stddev)
    )
    if z >= 2.0 * sb:
        raise ConfigError(
            f"clipped_count_stddev={sb} is too small for noise_multiplier={z}: "
            f"need noise_multiplier < 2 * clipped_count_stddev = {2.0 * sb}"
        )
    zv = (z**-2 - (2.0 * sb) ** -2) ** -0.5
    return AdaptiveClipNoise(
        value_noise_multiplier=zv,
        clipped_count_stddev=sb,
        effective_noise_multiplier=adaptive_effective_noise_multiplier(
            value_noise_multiplier=zv, clipped_count_stddev=sb
        ),
    )


@dataclass(frozen=True)
class AdaptiveClipStep:
    """Server-side result of one quantile step: the next round's clip norm and the
    (noisy, already private) estimate of the fraction of clients not clipped."""

    new_clip_norm: float
    unclipped_fraction: float


def adaptive_clip_step(
    *,
    clip_norm: float,
    noisy_bit_sum: float,
    num_clients: int,
    target_quantile: float = 0.5,
    learning_rate: float = 0.2,
) -> AdaptiveClipStep:
    """Geometric update ``C <- C · exp(-η (b̄ - γ))`` from the noised bit sum.

    ``noisy_bit_sum`` is the aggregated last coordinate (sum of ``b_i - 1/2``
    plus noise); ``num_clients`` the number of clients in that sum (the count of
    participants is public in our threat model). This is post-processing of a
    release already accounted for, so it costs no extra privacy.
    """
    c = require_positive("clip_norm", clip_norm)
    s = float(noisy_bit_sum)
    if not math.isfinite(s):
        raise DataError(f"noisy_bit_sum must be finite, got {noisy_bit_sum!r}")
    n = require_int("num_clients", num_clients, minimum=1)
    gamma = require_probability("target_quantile", target_quantile)
    eta = require_positive("learning_rate", learning_rate)
    b_bar = s / n + 0.5
    return AdaptiveClipStep(
        new_clip_norm=c * math.exp(-eta * (b_bar - gamma)), unclipped_fraction=b_bar
    )
