"""Respiration rate from a respiration signal (belt, impedance or airflow).

The window is demeaned, Hann-tapered and zero-padded to at least 2048 points; ``resp_rate`` is the
frequency of the largest spectral peak within 0.1-1.0 Hz (6-60 breaths/min), refined by a parabola
on the log power, times 60. NaN when the peak holds less than 10 % of the 0.05-2 Hz power (no
periodic breathing in the window) or when the largest in-band value sits at a band edge below a
larger neighbour outside the band (the breathing, if any, is slower than 6 or faster than 60 per min).
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from pipeline.features.spec import FeatureSpec

__all__ = ["RespirationExtractor", "breathing_rate"]

RESP_SPECS = (
    # Adult breathing at rest is 12-20 breaths/min; 4 (slow-paced breathing) to 60 (exercise, infants).
    FeatureSpec("resp_rate", "breaths/min", 4.0, 60.0, medical=True),
)


def breathing_rate(x: np.ndarray, rate: float, band: tuple[float, float] = (0.1, 1.0)) -> float:
    """Dominant breathing rate of ``x`` (breaths/min) by spectral peak; NaN when not periodic."""
    x = np.asarray(x, dtype=np.float64)
    if x.size < 8 or np.ptp(x) == 0:
        return float("nan")
    y = (x - x.mean()) * np.hanning(x.size)
    n_fft = max(2048, 1 << int(np.ceil(np.log2(x.size))))
    p = np.abs(scipy.fft.rfft(y, n_fft)) ** 2
    f = np.arange(p.size) * rate / n_fft
    sel = np.flatnonzero((f >= band[0]) & (f <= band[1]))
    wide = (f >= 0.05) & (f <= 2.0)
    if sel.size < 3:
        return float("nan")
    k = sel[int(np.argmax(p[sel]))]
    if p[k] * 5 < 0.1 * p[wide].sum():  # a peak ~5 bins wide holding < 10 % of the power
        return float("nan")
    if p[k - 1] > p[k] or p[k + 1] > p[k]:  # the peak lies outside the band, at its edge: not in range
        return float("nan")
    if 0 < k < p.size - 1:
        a, b, c = np.log(p[k - 1 : k + 2] + 1e-300)
        den = a - 2 * b + c
        k = k + (0.5 * (a - c) / den if den < 0 else 0.0)
    return float(k * rate / n_fft * 60.0)


class RespirationExtractor:
    """``resp_rate`` of one window."""

    def specs(self, channels: tuple[str, ...], sample_rate: float) -> tuple[FeatureSpec, ...]:
        """Always ``(resp_rate,)``."""
        return RESP_SPECS

    def compute(
        self, data: np.ndarray, sample_rate: float, channels: tuple[str, ...], units: tuple[str, ...]
    ) -> dict[str, float]:
        """Breathing rate of the first channel."""
        return {"resp_rate": breathing_rate(data[0], sample_rate)}
