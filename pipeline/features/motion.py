"""Accelerometer: ENMO, activity counts and step cadence.

With ``r`` the vector magnitude of the three axes in g:

* ``enmo``: Euclidean norm minus one, negative values set to 0, averaged; mg. The standard GGIR
  measure of movement intensity (0 at rest whatever the orientation).
* ``activity``: mean absolute deviation of ``r`` band-passed 0.5-3 Hz (locomotion band), mg; a
  count-like intensity measure that does not depend on a vendor's count scaling.
* ``cadence``: dominant frequency of the band-passed ``r`` within 1.2-3.0 Hz (72-180 steps/min),
  times 60, when that peak holds at least 20 % of the 0.5-5 Hz power and ``activity`` is above
  :data:`WALK_MIN_ACTIVITY_MG`; 0 otherwise (not walking); steps/min.

With fewer than three channels, the first channel is taken as the magnitude.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft

from pipeline.features.base import mean1d, to_unit
from pipeline.features.cardiac import _filt
from pipeline.features.spec import FeatureSpec

__all__ = ["MotionExtractor", "WALK_MIN_ACTIVITY_MG"]

WALK_MIN_ACTIVITY_MG = 20.0

ACC_SPECS = (
    # Running produces ENMO ~ 500-1000 mg; 2000 mg covers jumps and sprints (wrist sensors saturate at 8 g).
    FeatureSpec("enmo", "mg", 0.0, 2000.0),
    FeatureSpec("activity", "mg", 0.0, 2000.0),
    # Walking 90-130, running up to ~200 steps/min.
    FeatureSpec("cadence", "steps/min", 0.0, 220.0),
)


@lru_cache(maxsize=16)
def _hanning(n: int) -> np.ndarray:
    w = np.hanning(n)
    w.flags.writeable = False
    return w


class MotionExtractor:
    """Accelerometer features of one window."""

    #: :meth:`compute` accepts ``only`` (the features the caller reads; the others may be NaN).
    partial = True

    def specs(self, channels: tuple[str, ...], sample_rate: float) -> tuple[FeatureSpec, ...]:
        """Always ``(enmo, activity, cadence)``."""
        return ACC_SPECS

    def compute(
        self, data: np.ndarray, sample_rate: float, channels: tuple[str, ...], units: tuple[str, ...],
        only: frozenset[str] | None = None,
    ) -> dict[str, float]:
        """ENMO, activity and cadence. ``only``: the features the caller reads; without ``cadence``
        (the default study reads ``activity``) no spectrum is computed and ``cadence`` is NaN (the
        others are the same either way)."""
        a = to_unit(np.asarray(data, dtype=np.float64), tuple(units), "g")
        r = np.sqrt((a[:3] ** 2).sum(axis=0)) if a.shape[0] >= 3 else np.abs(a[0])
        enmo = mean1d(np.maximum(r - 1.0, 0.0)) * 1000.0
        if r.size < 16 or sample_rate < 8:
            return {"enmo": enmo, "activity": float("nan"), "cadence": float("nan")}
        rb = _filt(r, 0.5, 3.0, sample_rate)
        activity = mean1d(np.abs(rb - mean1d(rb))) * 1000.0
        if only is not None and "cadence" not in only:
            return {"enmo": enmo, "activity": activity, "cadence": float("nan")}
        cadence = 0.0
        if activity >= WALK_MIN_ACTIVITY_MG:
            y = (r - mean1d(r)) * _hanning(r.size)
            n_fft = max(1024, 1 << int(np.ceil(np.log2(r.size))))
            p = np.abs(scipy.fft.rfft(y, n_fft)) ** 2
            f = np.arange(p.size) * sample_rate / n_fft
            sel = np.flatnonzero((f >= 1.2) & (f <= 3.0))
            wide = (f >= 0.5) & (f <= 5.0)
            if sel.size:
                k = sel[int(np.argmax(p[sel]))]
                lo, hi = max(0, k - 2), k + 3
                if p[lo:hi].sum() >= 0.2 * p[wide].sum():
                    cadence = float(f[k] * 60.0)
        return {"enmo": enmo, "activity": activity, "cadence": cadence}
