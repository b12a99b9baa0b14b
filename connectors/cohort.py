"""A cohort of simulated devices built from real recordings: segments of each recording as devices.

Used by the study utility benchmark and the estimator coverage test: each feature set's window
values are computed from the shared recordings (``../shared/data``) by the pipeline's own feature
code, and a simulated device's value for a report period is the mean of a block of consecutive
windows cut at a random place of a random recording, from one window to as many as the period
holds (a device worn for part of the period; a block without a valid window is missing). The
shared recordings are short (minutes) beside the periods (10 min, 1 h): blocks of the period's
full length would give most sets one to three distinct values, every device alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.channels import public_channel_names
from pipeline.features import DEFAULT_WINDOWS, feature_sets
from pipeline.features.offline import iter_features
from pipeline.study import Study, StudySet

__all__ = ["SOURCES", "block_means", "cohort", "window_values"]

#: Recordings per stream (relative to ../shared/data); EEG limited to its first 124 s.
SOURCES = {
    "ecg": ["ecg/100.hea", "multi/mixedsignals.hea"],
    "ppg": ["multi/mixedsignals.hea", "wearable/biosppy_ppg.txt"],
    "eda": ["wearable/biosppy_eda.txt"],
    "acc": ["wearable/biosppy_acc.txt"],
    "resp": ["wearable/biosppy_resp.txt", "multi/mixedsignals.hea"],
    "mic": ["audio/speech_2spk_16k.wav"],
    "eeg": ["eeg/bci2000_eegmmi_64ch.edf", "eeg/openbci_cosleep_19ch.bdf"],
}


def window_values(study: Study, data_dir: Path, verbose: bool = False) -> dict[str, list[np.ndarray]]:
    """Per feature set: one array (windows x study features, NaN where undefined) per recording."""
    from connectors.recordings import open_recording

    out: dict[str, list[np.ndarray]] = {name: [] for name in study.sets}
    for stream, paths in SOURCES.items():
        for rel in paths:
            path = data_dir / rel
            if not path.exists():
                continue
            rec = open_recording(path)
            data = rec.streams.get(stream)
            if data is None:
                continue
            for fs in feature_sets(stream):
                s = study.sets.get(fs.name)
                if s is None:
                    continue
                raw = [x.name for x in fs.specs(data.channels, data.rate)]
                public = [x.name for x in fs.specs(public_channel_names(data.channels), data.rate)]
                rename = dict(zip(raw, public, strict=True))
                rows = []
                for wf in iter_features(fs, data.samples, data.rate, data.channels, data.units):
                    vals = {rename.get(k, k): v for k, v in wf.features.items()}
                    rows.append([f.value(vals) for f in s.features])
                if rows:
                    out[fs.name].append(np.array(rows, dtype=np.float64))
                    if verbose:
                        print(f"  {fs.name:<5} {rel:<32} {len(rows):>5} windows", flush=True)
    return out


def block_means(s: StudySet, sources: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Per recording: running sums of its valid window values and of their counts (a leading row
    of zeros), and the longest block a report period holds (the period's windows, or as many as the
    recording has): what :func:`cohort` cuts blocks from."""
    per_period = max(1, int(s.period_s / DEFAULT_WINDOWS[s.name].hop_s))
    out = []
    for x in sources:
        ok = np.isfinite(x)
        zero = np.zeros((1, x.shape[1]))
        sums = np.concatenate([zero, np.cumsum(np.where(ok, x, 0.0), axis=0)])
        counts = np.concatenate([zero, np.cumsum(ok, axis=0, dtype=np.float64)])
        out.append((sums, counts, min(per_period, len(x))))
    return out


def cohort(s: StudySet, sources: list[np.ndarray], devices: int, rng: np.random.Generator,
           periods: int | None = None, blocks: list[tuple[np.ndarray, np.ndarray, int]] | None = None) -> np.ndarray:
    """True report values, shape (devices, periods, features), NaN = no valid window in the block.

    Each value is the mean of the valid windows of a block of consecutive windows of a recording
    drawn with probability proportional to its length: the block's length is uniform from one
    window to as many as the period holds (a device worn for part of the period), its start
    uniform. ``periods`` defaults to the set's periods per day; ``blocks`` (:func:`block_means`
    of ``sources``) saves recomputing them on every call.
    """
    periods = s.periods_per_day if periods is None else periods
    blocks = block_means(s, sources) if blocks is None else blocks
    sizes = np.array([len(x) for x in sources], dtype=np.float64)
    src = rng.choice(len(sources), size=(devices, periods), p=sizes / sizes.sum())
    longest = np.array([b[2] for b in blocks])
    length = 1 + np.floor(rng.random((devices, periods)) * longest[src]).astype(np.int64)
    start = np.floor(rng.random((devices, periods)) * (sizes[src] - length + 1)).astype(np.int64)
    out = np.empty((devices, periods, sources[0].shape[1]))
    for j, (sums, counts, _) in enumerate(blocks):
        at = src == j
        a, b = start[at], start[at] + length[at]
        n = counts[b] - counts[a]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[at] = np.where(n > 0, (sums[b] - sums[a]) / n, np.nan)
    return out
