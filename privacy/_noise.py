"""Gaussian noise from a CSPRNG, and where it is added (distributed or central).

Noise source
------------
Noise is drawn from the project's CSPRNG (:class:`privacy.Csprng`, an AES-256-CTR
keystream keyed with 32 bytes from ``os.urandom``). Each Gaussian is produced by
Box–Muller on 53-bit uniforms, and -- the floating-point mitigation -- every
returned sample is the *sum of four* independent standard Gaussians divided by two.

Why the sum: a floating-point Gaussian sampler does not produce every double;
the set of values Box–Muller can emit for a given uniform pair is sparse and
structured, so an observer who sees ``x + noise`` in full precision can, for
some outputs, tell which ``x`` it came from (Mironov 2012 for Laplace; Holohan
& Braghin 2021, "Secure Random Sampling in Differential Privacy", for the
Gaussian). Opacus' ``secure_mode`` mitigates this by summing several Gaussians
(``sum of 4 N(0, σ²) / 2``), which smears the lattice of reachable values so
the low-order bits carry no usable information; we do the same. We also add the
noise in float64 and only round the *noisy* result to float32, so the rounding
happens after the signal has been masked. This is a mitigation, not an exact
sampler; the distributed discrete Gaussian path (integer noise, sampled by the
aggregation layer) avoids floating point altogether.

A user seed is refused unless ``insecure_test_mode=True``, and then a loud
``warnings.warn`` names the production risk.

Placement
---------
``NoisePlacement.CENTRAL``: the (trusted) server adds N(0, (σC)²) to the sum.
``NoisePlacement.DISTRIBUTED``: each client adds N(0, (σC)²/(m_min - k)) where
``m_min`` is the smallest number of survivors the round accepts and ``k`` the
number of clients assumed to collude with the server (they know, and can
subtract, their own noise). The sum over any accepted survivor set then carries
at least σC of noise unknown to the adversary. The accountant is charged with
the noise *actually present*, :func:`distributed_effective_noise_multiplier`,
and a survivor count below ``m_min`` is an error, never a silent under-noising.
"""

from __future__ import annotations

import enum
import math
import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from privacy._clipping import as_flat_float32
from privacy._random import INSECURE_SEED_WARNING, Csprng
from privacy._validation import require_int, require_positive
from privacy.errors import ConfigError, DropoutThresholdNotMet, InsecureModeError

__all__ = [
    "GaussianNoiseSource",
    "NoisePlacement",
    "add_noise",
    "central_noise_std",
    "distributed_effective_noise_multiplier",
    "distributed_noise_std",
]


class NoisePlacement(enum.Enum):
    """Who adds the Gaussian noise of a release."""

    DISTRIBUTED = "distributed"
    CENTRAL = "central"


_TWO_PI = 2.0 * math.pi
# Number of Gaussians summed per returned sample (Opacus secure_mode uses 4).
_N_SUMMED = 4
# Samples per block of standard_normal (the float64 temporaries stay in cache).
_BLOCK = 1 << 15
_MASK53 = (1 << 53) - 1


class GaussianNoiseSource:
    """Standard-normal samples from the project's CSPRNG (:class:`privacy.Csprng`).

    ``GaussianNoiseSource()`` is the production path (key from ``os.urandom``);
    ``GaussianNoiseSource(rng=...)`` draws from a given CSPRNG stream.
    ``GaussianNoiseSource(seed=..., insecure_test_mode=True)`` is reproducible
    and warns; a seed without ``insecure_test_mode`` raises
    :class:`InsecureModeError`.
    """

    def __init__(
        self,
        *,
        seed: int | bytes | None = None,
        insecure_test_mode: bool = False,
        rng: Csprng | None = None,
    ):
        if not isinstance(insecure_test_mode, bool):
            raise TypeError("insecure_test_mode must be a bool")
        if seed is not None and not insecure_test_mode:
            raise InsecureModeError(
                "a seed for DP noise is only accepted with insecure_test_mode=True "
                "(seeded noise can be regenerated and subtracted by an attacker)"
            )
        if seed is not None and rng is not None:
            raise ConfigError("give a seed (insecure test mode) or an rng, not both")
        if rng is not None and not isinstance(rng, Csprng):
            raise TypeError("rng must be a privacy.Csprng")
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int | bytes):
                raise TypeError(f"seed must be int or bytes, got {type(seed).__name__}")
            warnings.warn(INSECURE_SEED_WARNING, RuntimeWarning, stacklevel=2)
            rng = Csprng.insecure_from_seed(seed, "gaussian-noise")
        self._secure = seed is None
        self.insecure_test_mode = insecure_test_mode
        self._rng = rng if rng is not None else Csprng()

    @property
    def is_secure(self) -> bool:
        """True unless the stream was derived from a user seed (insecure test mode)."""
        return self._secure

    def _keystream(self, n_bytes: int) -> bytes:
        return self._rng.bytes(n_bytes)

    def uniform53(self, n: int) -> npt.NDArray[np.float64]:
        """``n`` uniforms in (0, 1], each from 53 fresh keystream bits."""
        n = require_int("n", n, minimum=0)
        words = np.frombuffer(self._keystream(8 * n), dtype="<u8")
        return ((words >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53

    def _box_muller(self, n: int) -> npt.NDArray[np.float64]:
        """``n`` independent N(0, 1) draws (Box–Muller on 53-bit uniforms)."""
        n = require_int("n", n, minimum=0)
        return self._box_muller_block((n + 1) // 2)[:n].numpy()

    def _box_muller_block(self, pairs: int) -> torch.Tensor:
        # Two uniforms per pair, 8 keystream bytes each, turned into 53-bit uniforms in
        # (0, 1] exactly as uniform53 does (the arithmetic shift plus mask equals the
        # logical shift of the unsigned word). The math runs in torch, in float64:
        # numpy's float64 log/cos/sin are several times slower on this path.
        if pairs == 0:
            return torch.empty(0, dtype=torch.float64)
        words = torch.frombuffer(bytearray(self._keystream(16 * pairs)), dtype=torch.int64)
        u = ((words >> 11) & _MASK53).double().add_(1.0).mul_(2.0**-53)
        r = u[:pairs].log_().mul_(-2.0).sqrt_()  # (0, 1]: log never sees 0
        theta = u[pairs:].mul_(_TWO_PI)
        return torch.cat([r * torch.cos(theta), r * torch.sin(theta)])

    def standard_normal(self, n: int) -> npt.NDArray[np.float64]:
        """``n`` N(0, 1) samples, each the sum of four Box–Muller draws over 2."""
        n = require_int("n", n, minimum=0)
        out = torch.empty(n, dtype=torch.float64)
        # Blocks small enough to stay in cache; each output sums four fresh draws.
        for start in range(0, n, _BLOCK):
            m = min(_BLOCK, n - start)
            draws = self._box_muller_block((_N_SUMMED * m + 1) // 2)
            out[start : start + m] = draws[: _N_SUMMED * m].view(_N_SUMMED, m).sum(0)
        return out.div_(math.sqrt(_N_SUMMED)).numpy()

    def normal(self, n: int, *, std: float) -> npt.NDArray[np.float64]:
        """``n`` samples of N(0, std²) in float64."""
        s = require_positive("std", std, allow_zero=True)
        return self.standard_normal(n) * s


def add_noise(
    vec: Any,
    *,
    std: float,
    source: GaussianNoiseSource,
    last_coordinate_std: float | None = None,
) -> npt.NDArray[np.float32]:
    """Return ``vec + N(0, std²)`` as float32, noise added in float64.

    ``last_coordinate_std`` gives the appended adaptive-clipping bit its own
    standard deviation (see :func:`privacy.adaptive_clip_noise_split`).
    """
    if not isinstance(source, GaussianNoiseSource):
        raise TypeError("source must be a GaussianNoiseSource")
    arr = as_flat_float32(vec).astype(np.float64)
    s = require_positive("std", std, allow_zero=True)
    noise = source.normal(arr.size, std=1.0)
    scales = np.full(arr.size, s, dtype=np.float64)
    if last_coordinate_std is not None:
        scales[-1] = require_positive("last_coordinate_std", last_coordinate_std, allow_zero=True)
    return (arr + noise * scales).astype(np.float32)


def central_noise_std(*, noise_multiplier: float, clip_norm: float) -> float:
    """Standard deviation σC the server adds to the sum of clipped updates."""
    z = require_positive("noise_multiplier", noise_multiplier, allow_zero=True)
    c = require_positive("clip_norm", clip_norm)
    return z * c


def distributed_noise_std(
    *,
    noise_multiplier: float,
    clip_norm: float,
    min_survivors: int,
    assumed_colluding_clients: int = 0,
) -> float:
    """Per-client standard deviation ``σC / sqrt(m_min - k)``.

    Any accepted survivor set has at least ``m_min`` members, of which at most
    ``k`` collude with the server, so the noise the adversary cannot remove has
    variance at least ``(m_min - k) · (σC)² / (m_min - k) = (σC)²``.
    """
    z = require_positive("noise_multiplier", noise_multiplier, allow_zero=True)
    c = require_positive("clip_norm", clip_norm)
    m = require_int("min_survivors", min_survivors, minimum=1)
    k = require_int("assumed_colluding_clients", assumed_colluding_clients, minimum=0)
    if k >= m:
        raise ConfigError(
            f"assumed_colluding_clients={k} must be < min_survivors={m}: "
            "otherwise no honest noise is guaranteed to remain in the sum"
        )
    return z * c / math.sqrt(m - k)


def distributed_effective_noise_multiplier(
    *,
    per_client_std: float,
    clip_norm: float,
    num_survivors: int,
    min_survivors: int,
    assumed_colluding_clients: int = 0,
) -> float:
    """Noise multiplier actually present in a distributed-noise sum.

    ``sqrt(n - k) · per_client_std / C`` for ``n`` survivors, ``k`` of them
    assumed colluding. This is the value the accountant is charged with (it is
    larger than the target when more than ``m_min`` clients survive). Fewer
    survivors than ``min_survivors`` raises :class:`DropoutThresholdNotMet`:
    the sum would be under-noised, so the round must abort, not be released.
    """
    s = require_positive("per_client_std", per_client_std)
    c = require_positive("clip_norm", clip_norm)
    n = require_int("num_survivors", num_survivors, minimum=0)
    m = require_int("min_survivors", min_survivors, minimum=1)
    k = require_int("assumed_colluding_clients", assumed_colluding_clients, minimum=0)
    if k >= m:
        raise ConfigError(f"assumed_colluding_clients={k} must be < min_survivors={m}")
    if n < m:
        raise DropoutThresholdNotMet(
            f"only {n} clients survived but distributed noise was sized for at least "
            f"{m}; releasing this sum would under-noise it (effective noise multiplier "
            f"{math.sqrt(max(n - k, 0)) * s / c:.4g} instead of >= "
            f"{math.sqrt(m - k) * s / c:.4g}); abort the round"
        )
    return math.sqrt(n - k) * s / c
