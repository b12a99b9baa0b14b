"""Skin temperature: mean and slope over the window.

``temp_mean`` is the mean (degC) and ``temp_slope`` the least-squares slope (degC/min) of the first
channel.
"""

from __future__ import annotations

import numpy as np

from pipeline.features.base import mean1d, to_unit
from pipeline.features.spec import FeatureSpec

__all__ = ["TemperatureExtractor"]

TEMP_SPECS = (
    # Wrist/finger skin temperature spans ~20-40 degC (cold room to fever); core up to 42.
    FeatureSpec("temp_mean", "degC", 20.0, 42.0, medical=True),
    # Skin temperature changes by at most ~1-2 degC/min (vasoconstriction, putting on a device).
    FeatureSpec("temp_slope", "degC/min", -2.0, 2.0),
)


class TemperatureExtractor:
    """Temperature features of one window."""

    def specs(self, channels: tuple[str, ...], sample_rate: float) -> tuple[FeatureSpec, ...]:
        """Always ``(temp_mean, temp_slope)``."""
        return TEMP_SPECS

    def compute(
        self, data: np.ndarray, sample_rate: float, channels: tuple[str, ...], units: tuple[str, ...]
    ) -> dict[str, float]:
        """Mean and slope of the first channel."""
        x = to_unit(np.asarray(data[:1], dtype=np.float64), units[:1], "degC")[0]
        if x.size < 2:
            return {"temp_mean": float(x.mean()) if x.size else float("nan"), "temp_slope": float("nan")}
        t = np.arange(x.size) / sample_rate / 60.0
        tc = t - mean1d(t)
        mean = mean1d(x)
        slope = float(np.dot(tc, x - mean) / np.dot(tc, tc))
        return {"temp_mean": mean, "temp_slope": slope}
