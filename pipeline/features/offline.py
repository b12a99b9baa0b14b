"""Features of a whole recording, computed offline exactly as the stream worker would.

The samples of one stream are cut into frames, pushed through a :class:`~pipeline.windows.Windower`
and each released window goes through the feature set, so offline results (``biopriv features``,
the validation tests) match what the pipeline privatizes, before noise.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.features import FeatureSet, FeatureValues
from pipeline.frames import MODALITY_OF, Frame
from pipeline.windows import Window, Windower

__all__ = ["WindowFeatures", "frames_of", "iter_features", "iter_windows"]

#: Frame duration used to cut recordings, s (the demo devices send 125 ms frames).
FRAME_S = 0.125


@dataclass(frozen=True)
class WindowFeatures:
    """The features of one window of a recording; times in s from the recording start."""

    stream: str
    feature_set: str
    window_start_s: float
    window_end_s: float
    features: dict[str, float]


def frames_of(
    stream: str,
    samples: np.ndarray,
    rate: float,
    channels: tuple[str, ...],
    units: tuple[str, ...],
    *,
    frame_s: float = FRAME_S,
    device_id: str = "offline",
) -> Iterator[Frame]:
    """Cut ``samples`` (n_channels, n_samples) into consecutive frames of ``frame_s`` seconds.

    A trailing partial frame is dropped (frames of a stream have a constant length). Capture times
    start at 0 ns.
    """
    n = max(1, int(round(frame_s * rate)))
    data = np.ascontiguousarray(samples, dtype=np.float32)
    data.flags.writeable = False
    for seq in range(data.shape[1] // n):
        yield Frame(
            device_id, MODALITY_OF[stream], stream, seq, int(round(seq * n * 1e9 / rate)), 0, float(rate),
            tuple(channels), tuple(units), data[:, seq * n : (seq + 1) * n],
        )


def iter_windows(
    fset: FeatureSet,
    samples: np.ndarray,
    rate: float,
    channels: tuple[str, ...],
    units: tuple[str, ...],
    *,
    frame_s: float = FRAME_S,
) -> Iterator[Window]:
    """The windows the pipeline would release for this feature set, in order (flushed at the end)."""
    windower = Windower(fset.window)
    for frame in frames_of(fset.stream, samples, rate, channels, units, frame_s=frame_s):
        yield from windower.push(frame)
    yield from windower.flush()


def iter_features(
    fset: FeatureSet,
    samples: np.ndarray,
    rate: float,
    channels: tuple[str, ...],
    units: tuple[str, ...],
    *,
    frame_s: float = FRAME_S,
) -> Iterator[WindowFeatures]:
    """Features of every released window of one stream."""
    for w in iter_windows(fset, samples, rate, channels, units, frame_s=frame_s):
        start = w.start_sample / rate
        values = fset.compute(w)
        features = values.to_dict() if isinstance(values, FeatureValues) else dict(values)
        yield WindowFeatures(fset.stream, fset.name, start, start + w.data.shape[1] / rate, features)
