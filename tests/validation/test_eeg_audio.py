"""EEG band powers against MNE and speech activity against RTTM turns, on real recordings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.features import feature_sets
from pipeline.features.eeg import BANDS
from pipeline.features.offline import iter_windows

pytestmark = pytest.mark.shared_data


def need(path: Path) -> Path:
    """``path`` if it exists, else skip naming the missing file."""
    if not path.exists():
        pytest.skip(f"shared recording {path} is missing")
    return path


def test_band_powers_match_mne_psd_array_welch(shared_data: Path) -> None:
    import mne
    from mne.time_frequency import psd_array_welch

    raw = mne.io.read_raw_edf(need(shared_data / "eeg" / "bci2000_eegmmi_64ch.edf"), preload=True, verbose="error")
    rate = float(raw.info["sfreq"])
    x = raw.get_data(units="uV")
    channels = tuple(raw.ch_names)
    (eeg,) = feature_sets("eeg")
    seg = int(round(eeg.extractor.segment_s * rate))  # type: ignore[attr-defined]
    windows = list(iter_windows(eeg, x, rate, channels, ("uV",) * len(channels)))
    assert len(windows) > 200
    worst = 0.0
    for w in windows[::5]:
        feats = eeg.compute(w)
        psd, freqs = psd_array_welch(
            w.data, rate, n_fft=seg, n_per_seg=seg, n_overlap=seg // 2, window="hamming", verbose="error"
        )
        df = freqs[1] - freqs[0]
        for band, (lo, hi) in BANDS.items():
            ref = psd[:, (freqs >= lo) & (freqs < hi)].sum(axis=1) * df
            ours = np.array([feats[f"{band}_abs.{ch}"] for ch in channels])
            worst = max(worst, float(np.max(np.abs(ours - ref) / ref)))
    assert worst <= 0.01, f"worst relative difference {worst:.3%}"
    assert "frontal_alpha_asymmetry" in feats  # F3./F4. resolve to the 10-20 names


def test_speech_activity_matches_rttm(shared_data: Path) -> None:
    """Per 1 s window: speech when at least half of its 25 ms sub-frames are speech, versus RTTM
    turns covering at least half of the window."""
    import scipy.io.wavfile

    rate, pcm = scipy.io.wavfile.read(need(shared_data / "audio" / "speech_2spk_16k.wav"))
    x = pcm.astype(np.float64) / 32768.0
    covered = np.zeros(x.size, dtype=bool)
    for line in need(shared_data / "audio" / "speech_2spk_16k.rttm").read_text().splitlines():
        f = line.split()
        if f and f[0] == "SPEAKER":
            a, d = float(f[3]), float(f[4])
            covered[int(a * rate) : int((a + d) * rate)] = True
    (mic,) = feature_sets("mic")
    agree = []
    for w in iter_windows(mic, x[None], float(rate), ("mic",), ("FS",)):
        ours = mic.compute(w)["speech_ratio"] >= 0.5
        ref = covered[w.start_sample : w.start_sample + w.data.shape[1]].mean() >= 0.5
        agree.append(ours == ref)
    assert len(agree) >= 55
    assert np.mean(agree) >= 0.90, f"speech decision agrees in only {np.mean(agree):.1%} of windows"
