"""Electrodermal activity: tonic level and skin-conductance responses (SCR).

The window (uS) is low-passed at 1 Hz (2nd-order Butterworth, zero phase). ``scl`` is its median
(the tonic level; SCRs are brief compared with a 10 s window, so the median follows the tonic
component). SCRs are peaks of the low-passed signal whose rise from the preceding trough (the
peak's prominence) is at least :data:`SCR_MIN_AMPLITUDE_US` and that rise within 0.5-5 s, the
usual SCR rise time; ``scr_count`` counts them and ``scr_amplitude`` is their mean rise (NaN when
there is none).
"""

from __future__ import annotations

import numpy as np
import scipy.signal

from pipeline.features.base import to_unit
from pipeline.features.cardiac import _filt, _median
from pipeline.features.spec import FeatureSpec

__all__ = ["EdaExtractor", "SCR_MIN_AMPLITUDE_US"]

#: Smallest SCR, uS (the common 0.01-0.05 uS criterion; 0.02 is above sensor noise of wrist EDA).
SCR_MIN_AMPLITUDE_US = 0.02

EDA_SPECS = (
    # Skin conductance level of awake adults lies in ~0.5-40 uS; 0 and 50 bound dry and very wet skin.
    FeatureSpec("scl", "uS", 0.0, 50.0, medical=True),
    # At most one SCR every ~1 s is physiologically resolvable: 10 per 10 s window.
    FeatureSpec("scr_count", "1", 0.0, 10.0),
    # SCR amplitudes rarely exceed 3 uS (startle responses).
    FeatureSpec("scr_amplitude", "uS", 0.0, 3.0),
)


class EdaExtractor:
    """EDA features of one window (see the module docstring)."""

    #: :meth:`compute` accepts ``only`` (the features the caller reads; the others may be NaN).
    partial = True

    def specs(self, channels: tuple[str, ...], sample_rate: float) -> tuple[FeatureSpec, ...]:
        """Always ``(scl, scr_count, scr_amplitude)``."""
        return EDA_SPECS

    def compute(
        self, data: np.ndarray, sample_rate: float, channels: tuple[str, ...], units: tuple[str, ...],
        only: frozenset[str] | None = None,
    ) -> dict[str, float]:
        """EDA features of the first channel. ``only``: the features the caller reads; without
        ``scr_count`` and ``scr_amplitude`` (the default study reads ``scl``) no SCR is searched
        for and both are NaN (``scl`` is the same either way)."""
        x = to_unit(np.asarray(data[:1], dtype=np.float64), units[:1], "uS")[0]
        if x.size < 4:
            return {"scl": _median(x) if x.size else float("nan"), "scr_count": 0.0, "scr_amplitude": float("nan")}
        y = _filt(x, 0.0, 1.0, sample_rate) if sample_rate > 2.5 else x
        if only is not None and not only & {"scr_count", "scr_amplitude"}:
            return {"scl": _median(y), "scr_count": float("nan"), "scr_amplitude": float("nan")}
        peaks, props = scipy.signal.find_peaks(y, prominence=SCR_MIN_AMPLITUDE_US)
        amps = []
        for p, left in zip(peaks, props["left_bases"], strict=True):
            rise_s = (p - left) / sample_rate
            if 0.5 <= rise_s <= 5.0 or left == 0:
                amps.append(y[p] - y[left:p + 1].min())
        amps_a = np.asarray([a for a in amps if a >= SCR_MIN_AMPLITUDE_US])
        return {
            "scl": _median(y),
            "scr_count": float(amps_a.size),
            "scr_amplitude": float(amps_a.mean()) if amps_a.size else float("nan"),
        }
