"""A cohort of simulated devices built from real recordings: segments of each recording as devices.

Used by the study utility benchmark and the estimator coverage test: each feature set's window
values are computed from the shared recordings (``../shared/data``) by the pipeline's own feature
code, and a simulated device's value for a report period is the mean of a block of consecutive
windows cut at a random place of a random recording (a block without a valid window is missing).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.channels import public_channel_names
from pipeline.features import DEFAULT_WINDOWS, feature_sets
from pipeline.features.offline import iter_features
from pipeline.study import Study, StudySet

__all__ = ["SOURCES", "cohort", "window_values"]

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


def cohort(s: StudySet, sources: list[np.ndarray], devices: int, rng: np.random.Generator) -> np.ndarray:
    """True report values, shape (devices, periods, features), NaN = no valid window in the block."""
    per_period = max(1, int(s.period_s / DEFAULT_WINDOWS[s.name].hop_s))
    sizes = np.array([len(x) for x in sources])
    weights = sizes / sizes.sum()
    out = np.empty((devices, s.periods_per_day, len(s.features)))
    for d in range(devices):
        src = rng.choice(len(sources), size=s.periods_per_day, p=weights)
        for p, j in enumerate(src):
            x = sources[j]
            k = min(per_period, len(x))
            a = int(rng.integers(0, len(x) - k + 1))
            block = x[a : a + k]
            ok = np.isfinite(block)
            with np.errstate(invalid="ignore"):
                out[d, p] = np.where(ok.any(axis=0), np.nansum(block, axis=0) / np.maximum(ok.sum(axis=0), 1), np.nan)
    return out
