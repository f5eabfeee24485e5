"""Argument validation shared by the privacy modules.

Every check raises :class:`~privacy.errors.ConfigError` (a ``ValueError``) or
``TypeError`` with the argument's name in the message; nothing here uses
``assert``, which ``python -O`` strips.
"""

from __future__ import annotations

import math
from typing import Any

from privacy.errors import ConfigError

__all__ = [
    "require_finite",
    "require_int",
    "require_positive",
    "require_probability",
]


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        # numpy scalars are accepted through __float__ below.
        try:
            import numpy as np

            if isinstance(value, np.floating | np.integer):
                return float(value)
        except ImportError:  # pragma: no cover - numpy is a hard dependency
            pass
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def require_finite(name: str, value: Any) -> float:
    """Return ``value`` as a float, raising if it is not a finite real number."""
    out = _as_float(name, value)
    if not math.isfinite(out):
        raise ConfigError(f"{name} must be finite, got {out!r}")
    return out


def require_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a finite float > 0 (or >= 0 with ``allow_zero``)."""
    out = require_finite(name, value)
    if out < 0 or (out == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be {bound}, got {out!r}")
    return out


def require_probability(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float in (0, 1] (or [0, 1] with ``allow_zero``)."""
    out = require_finite(name, value)
    low_ok = out >= 0 if allow_zero else out > 0
    if not (low_ok and out <= 1):
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ConfigError(f"{name} must be in {interval}, got {out!r}")
    return out


def require_int(name: str, value: Any, *, minimum: int = 0) -> int:
    """Return ``value`` as an int >= ``minimum``; bools and floats are rejected."""
    try:
        import numpy as np

        if isinstance(value, np.integer):
            value = int(value)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value
