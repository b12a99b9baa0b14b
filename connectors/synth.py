"""Synthetic recordings with known ground truth, for unit tests and the demo.

Signal generators return ``(samples, truth)`` and are pure (seeded numpy ``Generator``):

* :func:`eeg_signal`: 1/f ("pink") background plus alpha (10 Hz) bursts, uV;
* :func:`ecg_signal` / :func:`ppg_signal`: beats at a known heart rate (Gaussian P-QRS-T waves /
  a systolic wave with a dicrotic notch), mV / normalized units;
* :func:`resp_signal`: breathing at a known rate; :func:`eda_signal`, :func:`acc_signal`,
  :func:`temp_signal`: tonic level with responses, walking bouts, slow drift;
* :func:`speech_signal`: speech-like audio (harmonic voiced syllables with formant-like
  resonances, separated by pauses), full scale.

:func:`write_recordings` writes them as files the recording readers understand: EEG as EDF (a
small built-in EDF writer, no extra dependency), audio as 16-bit WAV, ECG/PPG/respiration as a WFDB
record, EDA/accelerometer/temperature/PPG as CSV with a ``time_s`` column, and ``truth.json``.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "acc_signal",
    "ecg_signal",
    "eda_signal",
    "eeg_signal",
    "ppg_signal",
    "resp_signal",
    "speech_signal",
    "temp_signal",
    "write_edf",
    "write_recordings",
]

EEG_CHANNELS = ("Fp1", "Fp2", "F3", "F4", "C3", "C4", "P3", "P4", "O1", "O2", "Fz", "Cz")


def _beat_times(seconds: float, hr_bpm: float, hrv_ms: float, rng: np.random.Generator) -> np.ndarray:
    ibi = 60.0 / hr_bpm
    n = int(seconds / ibi) + 2
    jitter = rng.normal(0.0, hrv_ms / 1000.0, n) if hrv_ms > 0 else np.zeros(n)
    return np.cumsum(np.full(n, ibi) + jitter) - ibi / 2


def ecg_signal(
    rate: float, seconds: float, *, hr_bpm: float = 70.0, hrv_ms: float = 30.0, noise_mv: float = 0.02, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """ECG (mV) with Gaussian P, QRS and T waves; returns (samples, beat times s of the R peaks)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    beats = _beat_times(seconds, hr_bpm, hrv_ms, rng)
    x = np.zeros_like(t)
    for b in beats:
        for off, amp, width in ((-0.16, 0.12, 0.025), (-0.025, -0.1, 0.008), (0.0, 1.2, 0.01), (0.025, -0.25, 0.008),
                                (0.25, 0.3, 0.05)):
            sel = np.abs(t - b - off) < 5 * width
            x[sel] += amp * np.exp(-0.5 * ((t[sel] - b - off) / width) ** 2)
    x += noise_mv * rng.normal(size=t.size) + 0.1 * np.sin(2 * np.pi * 0.2 * t)  # noise + baseline wander
    return x, beats[(beats >= 0) & (beats < seconds)]


def ppg_signal(
    rate: float, seconds: float, *, hr_bpm: float = 70.0, hrv_ms: float = 30.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """PPG (normalized units) with a systolic wave and a dicrotic wave; returns (samples, beat times s)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    beats = _beat_times(seconds, hr_bpm, hrv_ms, rng)
    x = np.zeros_like(t)
    for b in beats:
        for off, amp, width in ((0.0, 1.0, 0.07), (0.28, 0.35, 0.08)):  # dicrotic wave ~280 ms later
            sel = np.abs(t - b - off) < 5 * width
            x[sel] += amp * np.exp(-0.5 * ((t[sel] - b - off) / width) ** 2)
    x += 0.02 * rng.normal(size=t.size) + 0.2 * np.sin(2 * np.pi * 0.25 * t)
    return x, beats[(beats >= 0) & (beats < seconds)]


def resp_signal(rate: float, seconds: float, *, rate_bpm: float = 15.0, seed: int = 0) -> tuple[np.ndarray, float]:
    """Respiration belt signal (a.u.) at ``rate_bpm`` breaths/min; returns (samples, rate)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * rate_bpm / 60.0 * t + 0.2 * np.sin(2 * np.pi * 0.02 * t)
    return np.sin(phase) + 0.3 * np.sin(2 * phase + 0.5) + 0.05 * rng.normal(size=t.size), rate_bpm


def eeg_signal(
    rate: float, seconds: float, *, channels: tuple[str, ...] = EEG_CHANNELS, alpha_uv: float = 15.0, seed: int = 0
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """EEG (uV): 1/f background (~10 uV rms) plus 10 Hz alpha bursts, strongest occipitally.

    Returns (samples (n_channels, n), alpha bursts as (start s, end s)).
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    spec = rng.normal(size=(len(channels), n // 2 + 1)) + 1j * rng.normal(size=(len(channels), n // 2 + 1))
    f = np.fft.rfftfreq(n, 1 / rate)
    spec *= 1.0 / np.sqrt(np.maximum(f, 0.5))
    bg = np.fft.irfft(spec, n)
    bg *= 10.0 / bg.std(axis=1, keepdims=True)
    t = np.arange(n) / rate
    bursts: list[tuple[float, float]] = []
    env = np.zeros(n)
    s = rng.uniform(0.5, 3.0)
    while s < seconds - 1:
        d = rng.uniform(1.0, 4.0)
        bursts.append((s, min(s + d, seconds)))
        sel = (t >= s) & (t < s + d)
        env[sel] = np.sin(np.pi * (t[sel] - s) / d) ** 2
        s += d + rng.uniform(1.0, 4.0)
    gain = np.array([1.0 if ch.upper().startswith(("O", "P")) else 0.4 for ch in channels])
    alpha = alpha_uv * env * np.sin(2 * np.pi * 10.0 * t)
    return bg + gain[:, None] * alpha[None], bursts


def speech_signal(
    rate: float, seconds: float, *, f0_hz: float = 130.0, seed: int = 0
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Speech-like audio (full scale): voiced syllables (harmonics of ``f0_hz`` shaped by formant
    resonances, 150-400 ms) in utterances separated by pauses, over faint noise.

    Returns (samples, utterances as (start s, end s)). Contains no words.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    x = 10 ** (-65 / 20) * rng.normal(size=n)  # -65 dBFS room noise
    turns: list[tuple[float, float]] = []
    s = 0.5
    while s < seconds - 0.5:
        d = min(rng.uniform(1.5, 4.0), seconds - s)
        turns.append((s, s + d))
        u = s
        while u < s + d:
            syl = rng.uniform(0.15, 0.4)
            sel = (t >= u) & (t < min(u + syl, s + d))
            tt = t[sel] - u
            f0 = f0_hz * (1 + 0.05 * np.sin(2 * np.pi * 3 * tt))
            ph = 2 * np.pi * np.cumsum(f0) / rate
            formants = rng.choice([500.0, 700.0, 1100.0, 1800.0, 2500.0], size=2, replace=False)
            v = np.zeros(tt.size)
            for h in range(1, int(4000 / f0_hz)):
                fh = h * f0_hz
                w = sum(1.0 / (1 + ((fh - fm) / 150.0) ** 2) for fm in formants) / h**0.5
                v += w * np.sin(h * ph)
            env = np.sin(np.pi * tt / syl) ** 0.5
            x[sel] += 0.08 * env * v / max(1e-9, np.abs(v).max()) * 3
            u += syl + rng.uniform(0.02, 0.08)
        s += d + rng.uniform(0.8, 2.0)
    return np.clip(x, -1.0, 1.0), turns


def eda_signal(rate: float, seconds: float, *, scl_us: float = 4.0, seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """Skin conductance (uS): tonic level with drift plus SCRs (0.1-0.8 uS); returns (samples, SCR onsets s)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = scl_us + 0.2 * np.sin(2 * np.pi * t / max(seconds, 1.0))
    onsets = list(np.sort(rng.uniform(2, max(3.0, seconds - 5), size=max(1, int(seconds / 15)))))
    for o in onsets:
        a = rng.uniform(0.1, 0.8)
        dt = t - o
        x += np.where(dt > 0, a * (1 - np.exp(-dt / 0.75)) * np.exp(-np.clip(dt - 1.5, 0, None) / 4.0), 0.0)
    return x + 0.003 * rng.normal(size=t.size), [float(o) for o in onsets]


def acc_signal(rate: float, seconds: float, *, cadence_spm: float = 110.0, seed: int = 0) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Wrist accelerometer (g, 3 axes): rest with walking bouts at ``cadence_spm``; returns (samples, bouts)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    xyz = np.zeros((3, t.size))
    xyz[2] = 1.0
    bouts = [(seconds * 0.25, seconds * 0.6)]
    for a, b in bouts:
        sel = (t >= a) & (t < b)
        ph = 2 * np.pi * cadence_spm / 60.0 * t[sel]
        xyz[2, sel] += 0.35 * np.sin(ph)
        xyz[0, sel] += 0.2 * np.sin(ph / 2)
    return xyz + 0.01 * rng.normal(size=xyz.shape), bouts


def temp_signal(rate: float, seconds: float, *, start_c: float = 32.5, slope_c_per_min: float = 0.1, seed: int = 0) -> np.ndarray:
    """Skin temperature (degC) rising linearly plus sensor noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return start_c + slope_c_per_min * t / 60.0 + 0.01 * rng.normal(size=t.size)


def write_edf(path: Path, data_uv: np.ndarray, rate: float, channels: tuple[str, ...], *, start: datetime | None = None) -> None:
    """Write EEG (uV) as a plain EDF file: 1 s records, int16 samples, physical range +-3276.7 uV."""
    n_ch, n = data_uv.shape
    spr = int(round(rate))
    if abs(spr - rate) > 1e-9:
        raise ValueError(f"EDF writer needs an integer sample rate, got {rate}")
    n_rec = n // spr
    start = start or datetime(2024, 1, 1, 0, 0, 0)
    pmin, pmax, dmin, dmax = -3276.8, 3276.7, -32768, 32767

    def f(s: object, w: int) -> bytes:
        return str(s)[:w].ljust(w).encode("ascii")

    hdr = f("0", 8) + f("X X X X", 80) + f("Startdate X X X biopriv-synth", 80)
    hdr += f(start.strftime("%d.%m.%y"), 8) + f(start.strftime("%H.%M.%S"), 8)
    hdr += f(256 * (n_ch + 1), 8) + f("", 44) + f(n_rec, 8) + f(1, 8) + f(n_ch, 4)
    for field_values in (
        [f(ch, 16) for ch in channels], [f("AgAgCl electrode", 80)] * n_ch, [f("uV", 8)] * n_ch,
        [f(f"{pmin:.1f}", 8)] * n_ch, [f(f"{pmax:.1f}", 8)] * n_ch, [f(dmin, 8)] * n_ch, [f(dmax, 8)] * n_ch,
        [f("HP:0.1Hz LP:100Hz", 80)] * n_ch, [f(spr, 8)] * n_ch, [f("", 32)] * n_ch,
    ):
        hdr += b"".join(field_values)
    digital = np.clip(np.round((data_uv[:, : n_rec * spr] - pmin) / (pmax - pmin) * (dmax - dmin) + dmin), dmin, dmax)
    recs = digital.astype("<i2").reshape(n_ch, n_rec, spr).transpose(1, 0, 2)
    path.write_bytes(hdr + recs.tobytes())


def write_recordings(outdir: Path, *, seconds: float = 120.0, seed: int = 0) -> dict[str, Any]:
    """Write the synthetic recordings into ``outdir`` and return (and save) their ground truth.

    Files: ``eeg.edf`` (12 channels, 256 Hz), ``speech.wav`` (16 kHz), ``cardio.hea/.dat`` (WFDB:
    ECG 250 Hz, PPG and respiration resampled to 250 Hz), ``wearable.csv`` (PPG 64 Hz, EDA, acc x/y/z,
    temperature, with ``time_s``), ``truth.json``.
    """
    import scipy.io.wavfile
    import wfdb

    outdir.mkdir(parents=True, exist_ok=True)
    hr, br = 72.0, 15.0
    eeg, bursts = eeg_signal(256.0, seconds, seed=seed)
    write_edf(outdir / "eeg.edf", eeg, 256.0, EEG_CHANNELS)
    audio, turns = speech_signal(16000.0, min(seconds, 60.0), seed=seed + 1)
    scipy.io.wavfile.write(outdir / "speech.wav", 16000, (audio * 32767).astype(np.int16))
    ecg, beats = ecg_signal(250.0, seconds, hr_bpm=hr, seed=seed + 2)
    ppg250, _ = ppg_signal(250.0, seconds, hr_bpm=hr, seed=seed + 2)
    resp, _ = resp_signal(250.0, seconds, rate_bpm=br, seed=seed + 3)
    wfdb.wrsamp(
        "cardio", fs=250, units=["mV", "NU", "NU"], sig_name=["II", "PLETH", "RESP"],
        p_signal=np.column_stack([ecg, ppg250, resp]), fmt=["16", "16", "16"], write_dir=str(outdir),
    )
    rate_w = 64.0
    ppg, _ = ppg_signal(rate_w, seconds, hr_bpm=hr, seed=seed + 2)
    eda, scrs = eda_signal(rate_w, seconds, seed=seed + 4)
    acc, walks = acc_signal(rate_w, seconds, seed=seed + 5)
    temp = temp_signal(rate_w, seconds, seed=seed + 6)
    t = np.arange(ppg.size) / rate_w
    cols = np.column_stack([t, ppg, eda, acc[0], acc[1], acc[2], temp])
    np.savetxt(outdir / "wearable.csv", cols, delimiter=",", fmt="%.6f",
               header="time_s,ppg,eda,acc_x,acc_y,acc_z,temp", comments="")
    truth = {
        "seed": seed,
        "seconds": seconds,
        "heart_rate_bpm": hr,
        "breathing_rate_bpm": br,
        "n_beats": int(beats.size),
        "alpha_bursts_s": bursts,
        "speech_turns_s": turns,
        "scr_onsets_s": scrs,
        "walking_bouts_s": walks,
        "cadence_spm": 110.0,
        "temp_slope_c_per_min": 0.1,
        "files": ["eeg.edf", "speech.wav", "cardio.hea", "cardio.dat", "wearable.csv"],
    }
    (outdir / "truth.json").write_text(json.dumps(truth, indent=2))
    return truth
