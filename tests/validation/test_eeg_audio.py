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
            ours = 10.0 ** np.array([feats[f"{band}_log.{ch}"] for ch in channels])
            worst = max(worst, float(np.max(np.abs(ours - ref) / ref)))
    assert worst <= 0.01, f"worst relative difference {worst:.3%}"
    assert "frontal_alpha_asymmetry" in feats  # F3./F4. resolve to the 10-20 names


def _speech_agreement(x: np.ndarray, rate: float, covered: np.ndarray) -> tuple[float, int]:
    """Fraction of 1 s windows where ``speech_ratio >= 0.5`` equals RTTM turns covering >= half."""
    (mic,) = feature_sets("mic")
    agree = []
    for w in iter_windows(mic, x[None], rate, ("mic",), ("FS",)):
        ours = mic.compute(w)["speech_ratio"] >= 0.5
        ref = covered[w.start_sample : w.start_sample + w.data.shape[1]].mean() >= 0.5
        agree.append(ours == ref)
    return float(np.mean(agree)), len(agree)


@pytest.fixture(scope="module")
def speech(shared_data: Path) -> tuple[np.ndarray, float, np.ndarray]:
    """(samples in full scale, rate Hz, per-sample RTTM speech mask)."""
    import scipy.io.wavfile

    rate, pcm = scipy.io.wavfile.read(need(shared_data / "audio" / "speech_2spk_16k.wav"))
    x = pcm.astype(np.float64) / 32768.0
    covered = np.zeros(x.size, dtype=bool)
    for line in need(shared_data / "audio" / "speech_2spk_16k.rttm").read_text().splitlines():
        f = line.split()
        if f and f[0] == "SPEAKER":
            a, d = float(f[3]), float(f[4])
            covered[int(a * rate) : int((a + d) * rate)] = True
    return x, float(rate), covered


def test_speech_activity_matches_rttm(speech: tuple[np.ndarray, float, np.ndarray]) -> None:
    """Per 1 s window (WebRTC VAD): speech when at least half of its 20 ms frames are speech, versus
    RTTM turns covering at least half of the window. Measured 100 % (59 windows)."""
    x, rate, covered = speech
    agreement, n = _speech_agreement(x, rate, covered)
    assert n >= 55
    assert agreement >= 0.90, f"speech decision agrees in only {agreement:.1%} of {n} windows"


def test_speech_activity_holds_on_quieter_speech(speech: tuple[np.ndarray, float, np.ndarray]) -> None:
    """The same speech 10 dB quieter (about -43 dBFS, the far-field meeting level of issue 15).
    Measured 91.5 %; 20 dB quieter gives 81 % (not asserted)."""
    x, rate, covered = speech
    agreement, n = _speech_agreement(x * 10 ** (-10 / 20), rate, covered)
    assert agreement >= 0.85, f"speech decision agrees in only {agreement:.1%} of {n} windows at -10 dB"
