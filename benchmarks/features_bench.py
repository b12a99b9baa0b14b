"""Amortized cost per frame of windowing plus features, per modality, against naive baselines.

Run:  .venv/bin/python benchmarks/features_bench.py [--seconds S]
Writes benchmarks/results/features.json and benchmarks/results/features.md. Figures, not tests.

Per frame we time ``Windower.push`` plus ``FeatureSet.compute`` for every window the frame completes
("ours"). Baselines, timed the same way on the same frames:

* ``naive_welch`` (EEG): keep the stream in a growing array (``np.concatenate`` per frame) and, when
  a window is due, slice it and call ``scipy.signal.welch`` (same parameters), then band powers with
  a boolean mask per band and channel; the other EEG features are not even computed.
* ``neurokit2`` (ECG heart rate): the same windowing by concatenation, then ``nk.ecg_peaks`` and
  60 / mean IBI per window.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors import synth  # noqa: E402
from pipeline.features import feature_sets  # noqa: E402
from pipeline.features.eeg import BANDS  # noqa: E402
from pipeline.features.offline import frames_of  # noqa: E402
from pipeline.windows import Windower  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _stats(ns: list[int]) -> dict[str, float]:
    a = np.asarray(ns, dtype=np.float64) / 1000.0
    return {"frames": int(a.size), "mean_us": float(a.mean()), "median_us": float(np.median(a)),
            "p99_us": float(np.percentile(a, 99)), "max_us": float(a.max())}


def bench_ours(stream: str, data: np.ndarray, rate: float, channels: tuple[str, ...], units: str, n_frame: int) -> dict[str, float]:
    sets = feature_sets(stream)
    frames = list(frames_of(stream, data, rate, channels, (units,) * len(channels), frame_s=n_frame / rate))
    wins = [Windower(fs.window) for fs in sets]
    for fs in sets:  # warm the layout caches, as a running worker would have them
        fs.specs(channels, rate)
    times = []
    released = 0
    for f in frames:
        t0 = time.perf_counter_ns()
        for fs, w in zip(sets, wins, strict=True):
            for win in w.push(f):
                fs.compute(win)
                released += 1
        times.append(time.perf_counter_ns() - t0)
    out = _stats(times)
    out["windows"] = released
    return out


def bench_naive_welch(data: np.ndarray, rate: float, n_frame: int) -> dict[str, float]:
    import scipy.signal

    (fs,) = feature_sets("eeg")
    L, H = fs.window.n_length(rate), fs.window.n_hop(rate)
    seg = int(rate)
    buf = np.empty((data.shape[0], 0))
    times = []
    next_end = L
    for i in range(data.shape[1] // n_frame):
        frame = data[:, i * n_frame : (i + 1) * n_frame].astype(np.float32)
        t0 = time.perf_counter_ns()
        buf = np.concatenate([buf, frame.astype(np.float64)], axis=1)
        while buf.shape[1] >= next_end:
            win = buf[:, next_end - L : next_end]
            f, p = scipy.signal.welch(win, rate, window="hamming", nperseg=seg, noverlap=seg // 2)
            df = f[1] - f[0]
            for _ch in range(win.shape[0]):
                for lo, hi in BANDS.values():
                    float(p[_ch, (f >= lo) & (f < hi)].sum() * df)
            next_end += H
        times.append(time.perf_counter_ns() - t0)
    return _stats(times)


def bench_neurokit(data: np.ndarray, rate: float, n_frame: int) -> dict[str, float]:
    import neurokit2 as nk

    (fs, _) = feature_sets("ecg")
    L, H = fs.window.n_length(rate), fs.window.n_hop(rate)
    buf = np.empty(0)
    times = []
    next_end = L
    for i in range(data.shape[1] // n_frame):
        frame = data[0, i * n_frame : (i + 1) * n_frame]
        t0 = time.perf_counter_ns()
        buf = np.concatenate([buf, frame])
        while buf.size >= next_end:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _, info = nk.ecg_peaks(buf[next_end - L : next_end], sampling_rate=int(rate))
            peaks = np.asarray(info["ECG_R_Peaks"])
            if peaks.size > 1:
                float(60.0 / (np.diff(peaks).mean() / rate))
            next_end += H
        times.append(time.perf_counter_ns() - t0)
    return _stats(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="signal duration per modality, s")
    args = ap.parse_args()
    s = args.seconds
    eeg_ch = tuple(f"E{i}" for i in range(60)) + ("F3", "F4", "O1", "O2")
    eeg, _ = synth.eeg_signal(256.0, s, channels=eeg_ch)
    ecg, _ = synth.ecg_signal(250.0, s)
    ppg, _ = synth.ppg_signal(64.0, s)
    speech, _ = synth.speech_signal(16000.0, min(s, 60.0))
    eda, _ = synth.eda_signal(8.0, s)
    acc, _ = synth.acc_signal(32.0, s)
    resp, _ = synth.resp_signal(25.0, s)
    temp = synth.temp_signal(4.0, s)
    cases = {
        # name: (stream, data, rate, channels, units, samples per frame)
        "eeg 64ch 256Hz, 32-sample frames": ("eeg", eeg, 256.0, eeg_ch, "uV", 32),
        "mic 16kHz, 20 ms frames": ("mic", speech[None], 16000.0, ("mic",), "FS", 320),
        "ecg 250Hz (hr+hrv), 0.25 s frames": ("ecg", ecg[None], 250.0, ("II",), "mV", 62),
        "ppg 64Hz (hr+hrv), 0.25 s frames": ("ppg", ppg[None], 64.0, ("PLETH",), "NU", 16),
        "eda 8Hz, 1 s frames": ("eda", eda[None], 8.0, ("eda",), "uS", 8),
        "acc 32Hz x3, 1 s frames": ("acc", acc, 32.0, ("x", "y", "z"), "g", 32),
        "temp 4Hz, 1 s frames": ("temp", temp[None], 4.0, ("t",), "degC", 4),
        "resp 25Hz, 1 s frames": ("resp", resp[None], 25.0, ("resp",), "NU", 25),
    }
    results: dict[str, dict[str, object]] = {}
    for name, (stream, data, rate, ch, unit, n) in cases.items():
        row: dict[str, object] = {"ours": bench_ours(stream, data, rate, ch, unit, n)}
        if stream == "eeg":
            row["naive_welch"] = bench_naive_welch(data, rate, n)
        if stream == "ecg":
            row["neurokit2_hr"] = bench_neurokit(data, rate, n)
        results[name] = row
        print(name, {k: round(v["mean_us"], 1) for k, v in row.items()})  # type: ignore[index]
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    meta = {"command": f".venv/bin/python benchmarks/features_bench.py --seconds {s:g}", "nproc": os.cpu_count(),
            "cpu": cpu, "python": platform.python_version(), "numpy": np.__version__}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "features.json").write_text(json.dumps({"machine": meta, "results": results}, indent=2))
    lines = ["# Feature benchmark: cost per frame (window update + features when a window completes)", "",
             f"Command: `{meta['command']}`  ", f"Machine: {meta['nproc']} CPUs, {cpu}; Python {meta['python']}, numpy {meta['numpy']}", "",
             "| case | implementation | mean (amortized) us | median us | p99 us | max us |", "|---|---|---:|---:|---:|---:|"]
    for name, row in results.items():
        for impl, st in row.items():
            st = dict(st)  # type: ignore[arg-type]
            lines.append(f"| {name} | {impl} | {st['mean_us']:.1f} | {st['median_us']:.1f} | {st['p99_us']:.1f} | {st['max_us']:.1f} |")
    eeg_row = results["eeg 64ch 256Hz, 32-sample frames"]
    speed = eeg_row["naive_welch"]["mean_us"] / eeg_row["ours"]["mean_us"]  # type: ignore[index]
    lines += ["", f"EEG speed-up over the naive Welch baseline (amortized mean): {speed:.1f}x.",
              "Median is 'no window completed' frames; the mean is the amortized cost (target <= 50 us for EEG)."]
    (RESULTS / "features.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-2:]))
    _ = statistics


if __name__ == "__main__":
    main()
