"""Physiologically impossible beat intervals never reach heart rate or HRV."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.features.cardiac import IBI_RANGE_S, clean_ibi, heart_rate


def test_intervals_outside_the_physiological_range_are_dropped() -> None:
    beats = np.cumsum([0.0, 0.8, 0.8, 0.15, 0.8, 0.8, 2.6, 0.8, 0.8])  # 0.15 s (400 bpm), 2.6 s (23 bpm)
    ibi, ok = clean_ibi(beats)
    assert not ok[ibi < IBI_RANGE_S[0]].any() and not ok[ibi > IBI_RANGE_S[1]].any()
    assert ok.sum() == 6
    assert heart_rate(beats) == pytest.approx(75.0)
