"""The contract every per-modality feature extractor fulfils, and small shared helpers.

An extractor knows, for given channels and sample rate, which features it computes
(:meth:`Extractor.specs`) and computes them from one window's data (:meth:`Extractor.compute`).
Everything that depends only on ``(channels, sample_rate, n_samples)`` (band masks, filters, mel
banks...) is computed once and cached by the extractor.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Protocol

import numpy as np

from pipeline.features.spec import FeatureSpec
from pipeline.named import NamedValues

__all__ = ["Extractor", "FeatureValues", "UNIT_SCALE", "mean1d", "to_unit"]

#: What extractors with many features return (see :class:`pipeline.named.NamedValues`).
FeatureValues = NamedValues


class Extractor(Protocol):
    """Computes one feature set from windows of one stream."""

    def specs(self, channels: tuple[str, ...], sample_rate: float) -> tuple[FeatureSpec, ...]:
        """Features computed for windows with these channels at ``sample_rate`` Hz."""
        ...

    def compute(
        self, data: np.ndarray, sample_rate: float, channels: tuple[str, ...], units: tuple[str, ...]
    ) -> Mapping[str, float]:
        """Feature values of one window ``data`` (n_channels, n_samples); keys equal ``specs`` names."""
        ...


#: Multipliers from a channel's declared unit to the unit the features are defined in.
UNIT_SCALE: dict[str, dict[str, float]] = {
    "uV": {"uV": 1.0, "µV": 1.0, "mV": 1e3, "V": 1e6, "nV": 1e-3},
    "mV": {"mV": 1.0, "uV": 1e-3, "µV": 1e-3, "V": 1e3},
    "uS": {"uS": 1.0, "µS": 1.0, "S": 1e6, "mS": 1e3, "nS": 1e-3},
    "g": {"g": 1.0, "mg": 1e-3, "m/s^2": 1.0 / 9.80665, "m/s2": 1.0 / 9.80665},
    "degC": {"degC": 1.0, "°C": 1.0, "C": 1.0},
}


def to_unit(data: np.ndarray, units: tuple[str, ...], target: str) -> np.ndarray:
    """Scale each row of ``data`` from its declared unit to ``target``.

    Unknown units (e.g. ``"a.u."`` or ``"FS"``) are taken as already in ``target``: devices that send
    them are documented to use the target unit.
    """
    scales = _scales(tuple(units), target)
    if scales is None:
        return data
    return data * scales[:, np.newaxis]


@lru_cache(maxsize=256)
def _scales(units: tuple[str, ...], target: str) -> np.ndarray | None:
    """Per-row multipliers to ``target`` (None when all are 1); cached per units tuple."""
    table = UNIT_SCALE.get(target, {})
    scales = np.array([table.get(u, 1.0) for u in units])
    if np.all(scales == 1.0):
        return None
    scales.flags.writeable = False
    return scales


def mean1d(a: np.ndarray) -> float:
    """``a.mean()`` of a non-empty 1-D float64 array, bitwise: the pairwise sum (``np.add.reduce``,
    what ``mean`` sums with) divided by the count, without ``mean``'s generic Python path (a few
    microseconds, more than summing a window of a few hundred samples)."""
    return float(np.add.reduce(a) / a.size)


def nan_features(specs: tuple[FeatureSpec, ...]) -> dict[str, float]:
    """Every feature of ``specs`` set to NaN (undefined)."""
    return {s.name: float("nan") for s in specs}
