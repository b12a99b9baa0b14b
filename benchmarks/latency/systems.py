"""The two comparison systems of the latency benchmark, each a plain aiokafka consume -> produce loop.

``passthrough``: the floor. Every frame read from the raw topics is produced unchanged to the
output topic: what any Python Kafka service pays (fetch, deliver, produce, acks=all).

``handwritten``: what a team would write by hand for the same output. msgpack decode, one growing
numpy buffer per (device, stream) extended with ``np.concatenate``, and when a window is complete
(same lengths and hops as the pipeline's feature sets) the features are recomputed from scratch:
``scipy.signal.welch`` band powers for EEG, Welch spectrum statistics for audio and motion,
NeuroKit2 for heart rate (``ppg_clean`` + ``ppg_findpeaks``), HRV (``hrv_time``) and EDA
(``eda_phasic`` + ``eda_findpeaks``); every value gets numpy Laplace noise (``scale =
range / epsilon``, epsilon 0.1); the JSON record carries device, stream, feature set, ``last_seq``.
No budget accounting, no validation, no pseudonyms: it does less than the pipeline.

Run by ``run.py`` as a subprocess:
``python systems.py passthrough|handwritten --bootstrap B --group G --inputs T1,T2,T3 --output T``.
Prints one JSON line of counters to stdout every ``--stats-interval`` seconds and at exit
(:class:`Stats`; :func:`arguments` and :class:`Stats` are shared with ``quix_peer.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import msgpack
import numpy as np

EPSILON = 0.1
#: (window length s, hop s) per feature set, as the pipeline's defaults.
WINDOWS: dict[str, list[tuple[str, float, float]]] = {
    "eeg": [("eeg", 2.0, 0.5)],
    "mic": [("mic", 1.0, 0.5)],
    "ppg": [("hr", 10.0, 1.0), ("hrv", 60.0, 10.0)],
    "ecg": [("hr", 10.0, 1.0), ("hrv", 60.0, 10.0)],
    "eda": [("eda", 10.0, 1.0)],
    "acc": [("acc", 5.0, 1.0)],
    "temp": [("temp", 10.0, 5.0)],
    "resp": [("resp", 30.0, 5.0)],
}
BANDS = {"delta": (1, 4), "theta": (4, 8), "alpha": (8, 13), "beta": (13, 30), "gamma": (30, 45)}
_rng = np.random.default_rng()


def _noisy(values: dict[str, float], sensitivity: float) -> dict[str, float]:
    noise = _rng.laplace(0.0, sensitivity / EPSILON, size=len(values))
    return {k: float(v + n) for (k, v), n in zip(values.items(), noise, strict=True)}


def features(fs_name: str, x: np.ndarray, rate: float) -> dict[str, float]:
    """The hand-written features of one window ``x`` (channels x samples), before noise."""
    import scipy.signal

    if fs_name == "eeg":
        f, p = scipy.signal.welch(x, fs=rate, nperseg=int(rate))
        out = {}
        for i in range(x.shape[0]):
            for b, (lo, hi) in BANDS.items():
                out[f"{i}_{b}"] = float(np.log10(p[i, (f >= lo) & (f < hi)].sum() + 1e-12))
        return _noisy(out, 2.0)
    if fs_name == "mic":
        a = x[0]
        f, p = scipy.signal.welch(a, fs=rate, nperseg=512)
        rms = float(np.sqrt(np.mean(a * a)))
        return _noisy({"rms_db": 20 * np.log10(rms + 1e-9), "zcr": float(np.mean(np.abs(np.diff(np.sign(a))) > 0)),
                       "centroid_hz": float((f * p).sum() / (p.sum() + 1e-12))}, 10.0)
    import neurokit2 as nk

    if fs_name == "hr":
        clean = nk.ppg_clean(x[0], sampling_rate=int(rate))
        peaks = nk.ppg_findpeaks(clean, sampling_rate=int(rate))["PPG_Peaks"]
        hr = 60.0 * rate / float(np.mean(np.diff(peaks))) if len(peaks) > 1 else 0.0
        return _noisy({"hr_bpm": hr}, 200.0)
    if fs_name == "hrv":
        clean = nk.ppg_clean(x[0], sampling_rate=int(rate))
        peaks = nk.ppg_findpeaks(clean, sampling_rate=int(rate))["PPG_Peaks"]
        h = nk.hrv_time(peaks, sampling_rate=int(rate))
        return _noisy({"rmssd_ms": float(h["HRV_RMSSD"].iloc[0]), "sdnn_ms": float(h["HRV_SDNN"].iloc[0])}, 300.0)
    if fs_name == "eda":
        ph = nk.eda_phasic(x[0], sampling_rate=int(rate), method="highpass")
        pk = nk.eda_findpeaks(ph["EDA_Phasic"].to_numpy(), sampling_rate=int(rate))
        return _noisy({"scl_us": float(ph["EDA_Tonic"].mean()), "scr_count": float(len(pk["SCR_Peaks"]))}, 20.0)
    if fs_name == "acc":
        mag = np.sqrt((x * x).sum(axis=0))
        f, p = scipy.signal.welch(mag - mag.mean(), fs=rate, nperseg=min(mag.size, 128))
        return _noisy({"mean_g": float(mag.mean()), "std_g": float(mag.std()), "dom_hz": float(f[np.argmax(p)])}, 4.0)
    if fs_name in ("temp", "resp"):
        t = np.arange(x.shape[1]) / rate
        slope = float(np.polyfit(t, x[0], 1)[0])
        return _noisy({"mean": float(x[0].mean()), "slope_per_min": 60.0 * slope}, 10.0)
    raise ValueError(f"no hand-written features for {fs_name!r}")


class Buffers:
    """Per (device, stream): a growing array, the samples seen, and the next window end per set."""

    def __init__(self) -> None:
        self.state: dict[tuple[str, str], dict[str, Any]] = {}

    def push(self, obj: dict[str, Any]) -> list[tuple[str, np.ndarray, float]]:
        """Append a frame's samples; return the windows it completes as (set, samples, rate)."""
        key = (obj["device"], obj["stream"])
        rate = float(obj["rate"])
        n_ch = len(obj["channels"])
        x = np.frombuffer(obj["samples"], dtype="<f4").reshape(n_ch, -1).astype(np.float64)
        st = self.state.get(key)
        if st is None:
            sets = WINDOWS[obj["stream"]]
            st = self.state[key] = {"buf": np.empty((n_ch, 0)), "seen": 0,
                                    "next": {name: int(round(L * rate)) for name, L, _ in sets}}
        st["buf"] = np.concatenate([st["buf"], x], axis=1)
        st["seen"] += x.shape[1]
        out = []
        longest = 0
        for name, L, hop in WINDOWS[obj["stream"]]:
            n_len, n_hop = int(round(L * rate)), int(round(hop * rate))
            longest = max(longest, n_len)
            while st["seen"] >= st["next"][name]:
                end = st["buf"].shape[1] - (st["seen"] - st["next"][name])
                out.append((name, st["buf"][:, end - n_len : end], rate))
                st["next"][name] += n_hop
        if st["buf"].shape[1] > 2 * longest:
            st["buf"] = st["buf"][:, -longest:]
        return out


@dataclass
class Stats:
    """Counters of a comparison system since start, printed as one JSON line (read by ``run.py``)."""

    system: str
    frames: int = 0
    outputs: int = 0
    #: Processing time (decode, windows, features, noise), ns: the system's share of wall time.
    busy_ns: int = 0
    errors: int = 0

    def report(self) -> None:
        # one write per line, so a line never interleaves with another thread's output
        sys.stdout.write(json.dumps({**asdict(self), "t_ns": time.time_ns()}) + "\n")
        sys.stdout.flush()

    def report_every(self, interval_s: float) -> threading.Event:
        """Report from a daemon thread every ``interval_s`` until the returned event is set
        (for systems whose loop is not ours to tick)."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval_s):
                self.report()

        threading.Thread(target=loop, daemon=True, name="stats").start()
        return stop


def arguments(description: str, systems: list[str]) -> argparse.ArgumentParser:
    """The command line ``run.py`` starts every comparison system with."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("system", choices=systems)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--inputs", required=True, help="comma-separated raw topics")
    ap.add_argument("--output", required=True)
    ap.add_argument("--stats-interval", type=float, default=2.0)
    return ap


async def main(args: argparse.Namespace) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    warnings.simplefilter("ignore")
    consumer = AIOKafkaConsumer(
        *args.inputs.split(","), bootstrap_servers=args.bootstrap, group_id=args.group,
        auto_offset_reset="earliest", enable_auto_commit=True, auto_commit_interval_ms=1000,
        fetch_min_bytes=1, fetch_max_wait_ms=100, max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all", linger_ms=0,
                                max_request_size=2 * 1024 * 1024)
    await producer.start()
    await consumer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stats = Stats(args.system)
    buffers = Buffers()
    last_print = time.monotonic()

    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=500)
            for records in batches.values():
                for msg in records:
                    if stop.is_set():
                        break
                    t0 = time.perf_counter_ns()
                    stats.frames += 1
                    if args.system == "passthrough":
                        outs = [(msg.key, msg.value)]
                    else:
                        outs = []
                        try:
                            obj = msgpack.unpackb(msg.value, raw=False)
                            for name, win, rate in buffers.push(obj):
                                values = features(name, win, rate)
                                rec = {"device": obj["device"], "stream": obj["stream"], "feature_set": name,
                                       "last_seq": obj["seq"], "features": values,
                                       "t_frame_send_ns": obj["t_send_ns"], "t_release_ns": time.time_ns()}
                                outs.append((msg.key, json.dumps(rec).encode()))
                        except Exception:  # noqa: BLE001 - count and go on, like a worker would
                            stats.errors += 1
                    stats.busy_ns += time.perf_counter_ns() - t0
                    for key, value in outs:
                        await producer.send(args.output, value, key=key)
                        stats.outputs += 1
                    if stats.frames % 64 == 0:
                        await asyncio.sleep(0)  # let the signal handler run during a long batch
            if time.monotonic() - last_print >= args.stats_interval:
                last_print = time.monotonic()
                stats.report()
    finally:
        stats.report()
        await consumer.stop()
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(main(arguments(__doc__.split("\n\n")[0], ["passthrough", "handwritten"]).parse_args()))
    sys.exit(0)
