"""Feature sets: which features each stream yields, over which windows, with which public bounds.

A :class:`FeatureSet` pairs a window specification with an extractor. A stream may have several
feature sets with different windows: PPG and ECG yield ``hr`` (10 s windows) and ``hrv`` (60 s
windows, since short windows make HRV meaningless). :func:`feature_sets` returns the defaults of
:data:`DEFAULT_WINDOWS`, with per-set overrides.

Example
-------
>>> from pipeline.features import feature_sets
>>> [fs.name for fs in feature_sets("ecg")]
['hr', 'hrv']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import ConfigError
from pipeline.features.audio import AudioExtractor
from pipeline.features.base import Extractor, FeatureValues
from pipeline.features.cardiac import HeartRateExtractor, HrvExtractor
from pipeline.features.eda import EdaExtractor
from pipeline.features.eeg import EegExtractor
from pipeline.features.motion import MotionExtractor
from pipeline.features.respiration import RespirationExtractor
from pipeline.features.spec import FeatureSpec
from pipeline.features.temperature import TemperatureExtractor
from pipeline.frames import MODALITY_OF
from pipeline.windows import Window, WindowSpec

__all__ = ["DEFAULT_WINDOWS", "FEATURE_SETS", "FeatureSet", "FeatureSpec", "FeatureValues", "feature_sets"]

#: Default window of each feature set (length s, hop s).
DEFAULT_WINDOWS: dict[str, WindowSpec] = {
    "eeg": WindowSpec(2.0, 0.5),
    "mic": WindowSpec(1.0, 0.5),
    "hr": WindowSpec(10.0, 1.0),
    "hrv": WindowSpec(60.0, 10.0),
    "eda": WindowSpec(10.0, 1.0),
    "acc": WindowSpec(5.0, 1.0),
    "temp": WindowSpec(10.0, 5.0),
    "resp": WindowSpec(30.0, 5.0),
}

#: Feature-set names of each stream, in release order.
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "eeg": ("eeg",),
    "mic": ("mic",),
    "ppg": ("hr", "hrv"),
    "ecg": ("hr", "hrv"),
    "eda": ("eda",),
    "acc": ("acc",),
    "temp": ("temp",),
    "resp": ("resp",),
}


@dataclass(frozen=True)
class FeatureSet:
    """One feature set of one stream: its window and how to compute its features.

    Attributes
    ----------
    name : str
        ``"eeg"``, ``"mic"``, ``"hr"``, ``"hrv"``, ``"eda"``, ``"acc"``, ``"temp"`` or ``"resp"``.
    stream : str
        Stream the windows come from.
    window : WindowSpec
        Window length and hop of this set.
    extractor : Extractor
        The computation (shared by every device; it only caches layout-dependent constants).
    """

    name: str
    stream: str
    window: WindowSpec
    extractor: Extractor = field(repr=False, compare=False)

    def specs(self, channels: tuple[str, ...], sample_rate: float) -> tuple[FeatureSpec, ...]:
        """Declarations (name, unit, public bounds) of the features for this channel layout."""
        return self.extractor.specs(tuple(channels), float(sample_rate))

    def compute(self, window: Window, only: frozenset[str] | None = None) -> Mapping[str, float]:
        """Feature values of ``window``; keys equal the names of :meth:`specs`, NaN when undefined.

        A dict, or for EEG a :class:`~pipeline.features.base.FeatureValues` view over one array (in
        :meth:`specs` order). Windows of a :class:`~pipeline.windows.Windower` without interpolated
        samples pass the segment's cache to extractors that compute incrementally. ``only``: the
        (base) feature names the caller reads, e.g. a study's; extractors that can (``partial``)
        may then skip the others, which are NaN. What is read is the same either way.
        """
        ext = self.extractor
        kw: dict[str, Any] = {"only": only} if only is not None and getattr(ext, "partial", False) else {}
        if window.cache is not None and window.missing_fraction == 0.0 and getattr(ext, "incremental", False):
            return ext.compute(  # type: ignore[call-arg]
                window.data, window.sample_rate, window.channels, window.units,
                cache=window.cache, start=window.start_sample, **kw,
            )
        return ext.compute(window.data, window.sample_rate, window.channels, window.units, **kw)


def _extractor(name: str, stream: str) -> Extractor:
    if name == "eeg":
        return EegExtractor()
    if name == "mic":
        return AudioExtractor()
    if name == "hr":
        return HeartRateExtractor(stream)
    if name == "hrv":
        return HrvExtractor(stream)
    if name == "eda":
        return EdaExtractor()
    if name == "acc":
        return MotionExtractor()
    if name == "temp":
        return TemperatureExtractor()
    if name == "resp":
        return RespirationExtractor()
    raise ConfigError(f"unknown feature set {name!r}")  # pragma: no cover - FEATURE_SETS is closed


_CACHE: dict[tuple[str, str], Extractor] = {}


def feature_sets(stream: str, windows: Mapping[str, WindowSpec] | None = None) -> tuple[FeatureSet, ...]:
    """The feature sets of ``stream``, with default windows unless overridden by name.

    Parameters
    ----------
    stream : str
        A stream name (``eeg``, ``mic``, ``ppg``, ``ecg``, ``eda``, ``acc``, ``temp``, ``resp``).
    windows : mapping of str to WindowSpec, optional
        Window overrides keyed by feature-set name (e.g. ``{"hrv": WindowSpec(120, 10)}``); names
        that do not belong to this stream are ignored, unknown names are an error.

    Raises
    ------
    ConfigError
        If ``stream`` or a key of ``windows`` is unknown.
    """
    if stream not in FEATURE_SETS:
        allowed = ", ".join(repr(s) for s in sorted(FEATURE_SETS))
        raise ConfigError(f"stream must be one of {allowed}, got {stream!r}")
    overrides = dict(windows or {})
    unknown = sorted(set(overrides) - set(DEFAULT_WINDOWS))
    if unknown:
        raise ConfigError(f"unknown feature set(s) {unknown}; known: {sorted(DEFAULT_WINDOWS)}")
    for key, spec in overrides.items():
        if not isinstance(spec, WindowSpec):
            raise ConfigError(f"window override {key!r} must be a WindowSpec, got {type(spec).__name__}")
    out = []
    for name in FEATURE_SETS[stream]:
        ext = _CACHE.get((name, stream))
        if ext is None:
            ext = _CACHE[(name, stream)] = _extractor(name, stream)
        out.append(FeatureSet(name, stream, overrides.get(name, DEFAULT_WINDOWS[name]), ext))
    assert all(s in MODALITY_OF for s in FEATURE_SETS)
    return tuple(out)
