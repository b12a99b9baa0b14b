"""Amortized cost per frame of windowing plus features, per modality, against naive baselines.

Run:  .venv/bin/python benchmarks/features_bench.py [--seconds S] [--repeat R] [--only SUBSTRING]
Writes benchmarks/results/features.json and benchmarks/results/features.md (not with ``--only``).
Figures, not tests.

Per frame we time ``Windower.push`` plus ``FeatureSet.compute`` for every window the frame completes
("ours"), as a worker runs it: one windower per feature set, layout caches warm, the windower's
incremental cache in use. Baselines, timed the same way on the same frames:

* ``naive_welch`` (EEG): keep the last window's worth of the stream in an array (``np.concatenate``
  per frame, trimmed to one window) and, when a window is due, call ``scipy.signal.welch`` on it
  (same parameters), then band powers with a boolean mask per band and channel; the other EEG
  features are not even computed, so this is a lower bound of a naive implementation.
* ``neurokit2`` (ECG heart rate): the same windowing, then ``nk.ecg_peaks`` and 60 / mean IBI per
  window.

numpy runs single-threaded (``OMP_NUM_THREADS=1``, ``OPENBLAS_NUM_THREADS=1``, set below before
numpy is imported unless already set), as a worker process would. Each case runs ``--repeat``
times and the run with the lowest mean is kept (other processes on the machine only add time);
the load average before and after is recorded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_model  # noqa: E402
from connectors import synth  # noqa: E402
from pipeline.features import feature_sets  # noqa: E402
from pipeline.features.eeg import BANDS  # noqa: E402
from pipeline.features.offline import frames_of  # noqa: E402
from pipeline.windows import Windower  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _stats(ns: list[int], cpu_ns: int) -> dict[str, float]:
    """Wall-clock statistics per frame, plus the thread's CPU time per frame over the whole run."""
    a = np.asarray(ns, dtype=np.float64) / 1000.0
    return {"frames": int(a.size), "mean_us": float(a.mean()), "median_us": float(np.median(a)),
            "p99_us": float(np.percentile(a, 99)), "max_us": float(a.max()), "cpu_mean_us": cpu_ns / 1000.0 / a.size}


def _fresh(samples: np.ndarray) -> np.ndarray:
    out = np.array(samples, dtype="<f4", order="C")
    out.flags.writeable = False
    return out


def bench_ours(stream: str, data: np.ndarray, rate: float, channels: tuple[str, ...], units: str, n_frame: int) -> dict[str, float]:
    sets = feature_sets(stream)
    # Each frame's samples as the worker gets them: a fresh C-contiguous float32 array per frame
    # (decoded from the message), not a strided view into the whole recording.
    frames = [dataclasses.replace(f, samples=_fresh(f.samples))
              for f in frames_of(stream, data, rate, channels, (units,) * len(channels), frame_s=n_frame / rate)]
    wins = [Windower(fs.window) for fs in sets]
    for fs in sets:  # warm the layout caches, as a running worker would have them
        fs.specs(channels, rate)
    times = []
    compute_ns = []  # FeatureSet.compute alone, per released window
    released = 0
    c0 = time.thread_time_ns()
    for f in frames:
        t0 = time.perf_counter_ns()
        for fs, w in zip(sets, wins, strict=True):
            for win in w.push(f):
                t1 = time.perf_counter_ns()
                fs.compute(win)
                compute_ns.append(time.perf_counter_ns() - t1)
                released += 1
        times.append(time.perf_counter_ns() - t0)
    out = _stats(times, time.thread_time_ns() - c0)
    out["windows"] = released
    out["window_compute_median_us"] = float(np.median(compute_ns)) / 1000.0 if compute_ns else float("nan")
    return out


def bench_naive_welch(data: np.ndarray, rate: float, n_frame: int) -> dict[str, float]:
    import scipy.signal

    (fs,) = feature_sets("eeg")
    L, H = fs.window.n_length(rate), fs.window.n_hop(rate)
    seg = int(rate)
    buf = np.empty((data.shape[0], 0))
    buf_start = 0  # stream position of buf[:, 0]
    times = []
    next_end = L
    c0 = time.thread_time_ns()
    for i in range(data.shape[1] // n_frame):
        frame = data[:, i * n_frame : (i + 1) * n_frame].astype(np.float32)
        t0 = time.perf_counter_ns()
        buf = np.concatenate([buf, frame.astype(np.float64)], axis=1)
        while buf_start + buf.shape[1] >= next_end:
            win = buf[:, next_end - L - buf_start : next_end - buf_start]
            f, p = scipy.signal.welch(win, rate, window="hamming", nperseg=seg, noverlap=seg // 2)
            df = f[1] - f[0]
            for _ch in range(win.shape[0]):
                for lo, hi in BANDS.values():
                    float(p[_ch, (f >= lo) & (f < hi)].sum() * df)
            next_end += H
        keep = next_end - L  # first sample a future window needs
        if keep > buf_start:
            buf = buf[:, keep - buf_start :]
            buf_start = keep
        times.append(time.perf_counter_ns() - t0)
    return _stats(times, time.thread_time_ns() - c0)


def bench_neurokit(data: np.ndarray, rate: float, n_frame: int) -> dict[str, float]:
    import neurokit2 as nk

    (fs, _) = feature_sets("ecg")
    L, H = fs.window.n_length(rate), fs.window.n_hop(rate)
    buf = np.empty(0)
    buf_start = 0
    times = []
    next_end = L
    c0 = time.thread_time_ns()
    for i in range(data.shape[1] // n_frame):
        frame = data[0, i * n_frame : (i + 1) * n_frame]
        t0 = time.perf_counter_ns()
        buf = np.concatenate([buf, frame])
        while buf_start + buf.size >= next_end:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _, info = nk.ecg_peaks(buf[next_end - L - buf_start : next_end - buf_start], sampling_rate=int(rate))
            peaks = np.asarray(info["ECG_R_Peaks"])
            if peaks.size > 1:
                float(60.0 / (np.diff(peaks).mean() / rate))
            next_end += H
        keep = next_end - L
        if keep > buf_start:
            buf = buf[keep - buf_start :]
            buf_start = keep
        times.append(time.perf_counter_ns() - t0)
    return _stats(times, time.thread_time_ns() - c0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="signal duration per modality, s")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case; the lowest mean is kept")
    ap.add_argument("--only", default=None, help="run only cases whose name contains this; writes nothing")
    args = ap.parse_args()
    s = args.seconds
    load_before = os.getloadavg()
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
    if args.only:
        cases = {k: v for k, v in cases.items() if args.only in k}

    def best(fn: Callable[..., dict[str, float]], *fn_args: object) -> dict[str, float]:
        runs = [fn(*fn_args) for _ in range(max(1, args.repeat))]
        return min(runs, key=lambda r: r["mean_us"])

    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, (stream, data, rate, ch, unit, n) in cases.items():
        row: dict[str, dict[str, float]] = {"ours": best(bench_ours, stream, data, rate, ch, unit, n)}
        if stream == "eeg":
            row["naive_welch"] = best(bench_naive_welch, data, rate, n)
        if stream == "ecg":
            row["neurokit2_hr"] = best(bench_neurokit, data, rate, n)
        results[name] = row
        print(name, {k: (round(v["mean_us"], 1), round(v["cpu_mean_us"], 1)) for k, v in row.items()}, "(mean, CPU mean) us")
    load_after = os.getloadavg()
    if args.only:
        print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; --only: nothing written")
        return
    cpu = cpu_model()
    threads = {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    meta = {"command": f".venv/bin/python benchmarks/features_bench.py --seconds {s:g} --repeat {args.repeat}",
            "nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "numpy": np.__version__,
            "threads": threads, "repeat": args.repeat,
            "load_average_1min": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "features.json").write_text(json.dumps({"machine": meta, "results": results}, indent=2))
    lines = ["# Feature benchmark: cost per frame (window update + features when a window completes)", "",
             f"Command: `{meta['command']}`  ", f"Machine: {meta['nproc']} CPUs, {cpu}; Python {meta['python']}, numpy {meta['numpy']}; "
             f"single-threaded numpy (OMP_NUM_THREADS={threads['OMP_NUM_THREADS']}, OPENBLAS_NUM_THREADS={threads['OPENBLAS_NUM_THREADS']})  ",
             f"Best of {args.repeat} runs per case (lowest mean); 1-min load average {load_before[0]:.2f} before, {load_after[0]:.2f} after.", "",
             "| case | implementation | mean (amortized) us | CPU mean us | median us | p99 us | max us |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, row in results.items():
        for impl, st in row.items():
            lines.append(f"| {name} | {impl} | {st['mean_us']:.1f} | {st['cpu_mean_us']:.1f} | {st['median_us']:.1f} | "
                         f"{st['p99_us']:.1f} | {st['max_us']:.1f} |")
    eeg_row = results["eeg 64ch 256Hz, 32-sample frames"]
    speed = eeg_row["naive_welch"]["mean_us"] / eeg_row["ours"]["mean_us"]
    eeg_ours = eeg_row["ours"]
    lines += ["", f"EEG speed-up over the naive Welch baseline (amortized mean): {speed:.1f}x. "
              f"EEG: {eeg_ours['windows']:.0f} windows over {eeg_ours['frames']:.0f} frames (one per 4 frames: "
              f"0.5 s hop = 128 samples); median feature computation per window {eeg_ours['window_compute_median_us']:.0f} us.",
              "Median is 'no window completed' frames; the mean is the amortized cost (target <= 50 us for EEG, "
              "and >= 5x faster than the naive baseline). Mean and percentiles are wall-clock per frame; 'CPU mean' "
              "is the benchmark thread's CPU time over the run divided by the frames (excludes time the thread was "
              "preempted by other processes, so it is the steadier figure on a shared machine).",
              "EEG `ours` returns a `FeatureValues` view (no per-window dict of 1,026 floats); the naive baseline "
              "computes band powers only."]
    (RESULTS / "features.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-2:]))
    _ = statistics


if __name__ == "__main__":
    main()
