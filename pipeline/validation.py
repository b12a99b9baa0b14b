"""Shared validators, so every error about a bad setting reads alike.

Messages name the offending value and the allowed range, e.g.
``sample_rate must be in (0, 100000] Hz, got 0.0``.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

from pipeline.errors import ConfigError


def check_option(name: str, value: Any, allowed: Collection[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``, else raise :class:`ConfigError`."""
    if value not in allowed:
        options = ", ".join(repr(a) for a in sorted(allowed, key=str))
        raise ConfigError(f"{name} must be one of {options}, got {value!r}")
    return value


def check_range(
    name: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    unit: str = "",
) -> float:
    """Return ``value`` as float if it is finite and within the given bounds.

    Raises :class:`ConfigError` naming the value and the allowed interval otherwise.
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    ok = math.isfinite(v)
    if ok and low is not None:
        ok = v >= low if low_inclusive else v > low
    if ok and high is not None:
        ok = v <= high if high_inclusive else v < high
    if not ok:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        interval = f"{'[' if low_inclusive and low is not None else '('}{lo}, {hi}{']' if high_inclusive and high is not None else ')'}"
        suffix = f" {unit}" if unit else ""
        raise ConfigError(f"{name} must be in {interval}{suffix}, got {value!r}")
    return v
