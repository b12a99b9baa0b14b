"""Workloads of the latency benchmark: TOML files in ``benchmarks/workloads/`` -> pre-encoded frames.

A workload names device kinds (``eeg``, ``audio``, ``wearable``) with counts, rates and frame
durations, plus the run phases (warm-up, measured standard load, capacity ramp). Signals come
from the shared real recordings (``../shared/data``) when present, else from
:mod:`connectors.synth`; which one was used is recorded per stream.

The schedule is open-loop and fixed in advance: device ``d`` joins at its phase start ``s_d``
(relative ns) and frame ``k`` of each of its streams is due at
``s_d + (k + 1) * frame_samples / rate`` (when its last sample exists), independent of any send.
Every frame is encoded once, before the clock starts, with a placeholder send time whose 8 bytes
the sender patches (:func:`stamp`), so sending costs a copy, not an encode.
"""

from __future__ import annotations

import math
import struct
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from connectors import synth
from connectors.recordings import StreamData, open_recording
from pipeline.frames import Frame, encode_frame

ROOT = Path(__file__).resolve().parents[2]
WORKLOADS = ROOT / "benchmarks" / "workloads"
SHARED = ROOT.parent / "shared" / "data"

#: A uint64 that msgpack encodes as 0xcf + 8 bytes; patched with the real send time.
PLACEHOLDER_NS = 0x7B1D_5E4D_0000_0001
_PLACEHOLDER = b"\xcf" + PLACEHOLDER_NS.to_bytes(8, "big")
MODALITIES = ("eeg", "audio", "bio")


@dataclass(frozen=True)
class Phase:
    """One phase of a run: fleet multiplier, start and end (s from the schedule start)."""

    name: str
    multiplier: float
    start_s: float
    end_s: float
    measure_from_s: float  # frames due before this are warm-up / settling, not measured


@dataclass
class Workload:
    name: str
    description: str
    devices: list[dict[str, Any]]
    phases: list[Phase]
    path: Path
    ramp: list[Phase] = field(default_factory=list)

    def with_phases(self, phases: list[Phase]) -> Workload:
        return Workload(self.name, self.description, self.devices, phases, self.path, [])

    def fleet(self, multiplier: float) -> dict[str, int]:
        return {d["kind"]: int(round(d["count"] * multiplier)) for d in self.devices}

    def frames_per_s(self, multiplier: float = 1.0) -> float:
        total = 0.0
        for d in self.devices:
            n = int(round(d["count"] * multiplier))
            if d["kind"] == "wearable":
                total += n * len(d["rates"]) / d["frame_s"]
            else:
                total += n / d["frame_s"]
        return total


def load_workload(name_or_path: str, short: bool) -> Workload:
    """Read ``benchmarks/workloads/<name>.toml`` (or a path) and lay out the phases."""
    p = Path(name_or_path)
    if not p.suffix:
        p = WORKLOADS / f"{name_or_path}.toml"
    data = tomllib.loads(p.read_text())
    run = data["short" if short else "run"]
    warm, dur = float(run["warmup_s"]), float(run["duration_s"])
    phases = [Phase("standard x1", 1.0, 0.0, warm + dur, warm)]
    ramp: list[Phase] = []
    if run.get("ramp_in_same_session", False):
        # Capacity steps continue the standard session (warm devices; the added ones join cold).
        t = warm + dur
        for m in run.get("ramp", []):
            settle = float(run["step_settle_s"])
            phases.append(Phase(f"x{m:g}", float(m), t, t + settle + float(run["step_s"]), t + settle))
            t += settle + float(run["step_s"])
        return Workload(data["name"], data.get("description", ""), data["devices"], phases, p, ramp)
    t = 0.0
    for i, m in enumerate(run.get("ramp", [])):
        # The first step of the fresh capacity session starts cold: it gets the warm-up as well.
        settle = warm if i == 0 else float(run["step_settle_s"])
        ramp.append(Phase(f"x{m:g}", float(m), t, t + settle + float(run["step_s"]), t + settle))
        t += settle + float(run["step_s"])
    return Workload(data["name"], data.get("description", ""), data["devices"], phases, p, ramp)


# -- signals ----------------------------------------------------------------------------------


def _resample(x: np.ndarray, rate_in: float, rate_out: float) -> np.ndarray:
    import scipy.signal

    n = int(round(x.shape[-1] * rate_out / rate_in))
    return scipy.signal.resample(x, n, axis=-1)


def _stream(name: str, x: np.ndarray, rate: float, channels: tuple[str, ...], unit: str) -> StreamData:
    arr = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
    arr.setflags(write=False)
    return StreamData(name, arr, rate, channels, (unit,) * len(channels))


#: Wearable streams from the shared recordings: file, note for the origin, scale, unit (None: the file's).
#: Shorter recordings are looped by the schedule (EDA 150 s at 1 kHz, acceleration 20 s at 100 Hz).
_WEARABLE_FILES: dict[str, tuple[Path, str, float, str | None]] = {
    "ppg": (SHARED / "multi" / "mixedsignals.hea", ", Pleth", 1.0, None),
    "eda": (SHARED / "wearable" / "biosppy_eda.txt", ", looped", 1.0, None),
    "acc": (SHARED / "wearable" / "biosppy_acc.txt", ", m/s^2 -> g, looped", 1 / 9.80665, "g"),
}


def signal_sources(devices: list[dict[str, Any]], seconds: float = 120.0) -> tuple[dict[str, StreamData], dict[str, str]]:
    """One :class:`StreamData` per stream name, and where each came from (file or ``synthetic``)."""
    out: dict[str, StreamData] = {}
    origin: dict[str, str] = {}
    for d in devices:
        if d["kind"] == "eeg":
            n_ch, rate = int(d["channels"]), float(d["rate"])
            f = SHARED / "eeg" / "bci2000_eegmmi_64ch.edf"
            if f.exists():
                s = open_recording(f).streams["eeg"]
                x = _resample(s.samples.astype(np.float64), s.rate, rate)
                idx = np.arange(n_ch) % x.shape[0]
                chans = tuple(s.channels[i] if n_ch <= x.shape[0] else f"{s.channels[i]}-{j}" for j, i in enumerate(idx))
                out["eeg"] = _stream("eeg", x[idx], rate, chans, "uV")
                origin["eeg"] = f"{f.relative_to(SHARED.parents[1])} ({s.rate:g} Hz resampled to {rate:g} Hz)"
            else:
                chans = tuple(f"E{i + 1}" for i in range(n_ch))
                x, _ = synth.eeg_signal(rate, seconds, channels=chans)
                out["eeg"] = _stream("eeg", x, rate, chans, "uV")
                origin["eeg"] = "synthetic (connectors.synth.eeg_signal)"
        elif d["kind"] == "audio":
            rate = float(d["rate"])
            f = SHARED / "audio" / "speech_2spk_16k.wav"
            if f.exists():
                s = open_recording(f).streams["mic"]
                x = s.samples if s.rate == rate else _resample(s.samples, s.rate, rate)
                out["mic"] = _stream("mic", x, rate, s.channels, s.units[0])
                origin["mic"] = str(f.relative_to(SHARED.parents[1]))
            else:
                x, _ = synth.speech_signal(rate, min(seconds, 60.0))
                out["mic"] = _stream("mic", x, rate, ("mic",), "FS")
                origin["mic"] = "synthetic (connectors.synth.speech_signal)"
        elif d["kind"] == "wearable":
            rates = {k: float(v) for k, v in d["rates"].items()}
            synthetic = {
                "ppg": lambda r: (synth.ppg_signal(r, seconds, hr_bpm=72.0)[0], ("ppg",), "au"),
                "eda": lambda r: (synth.eda_signal(r, seconds)[0], ("eda",), "uS"),
                "acc": lambda r: (synth.acc_signal(r, seconds)[0], ("x", "y", "z"), "g"),
            }
            for name, (f, note, scale, unit) in _WEARABLE_FILES.items():
                if name not in rates:
                    continue
                s = open_recording(f).streams.get(name) if f.exists() else None
                if s is not None:
                    x = _resample(s.samples.astype(np.float64), s.rate, rates[name]) * scale
                    out[name] = _stream(name, x, rates[name], s.channels, unit or s.units[0])
                    origin[name] = f"{f.relative_to(SHARED.parents[1])} ({s.rate:g} Hz resampled to {rates[name]:g} Hz{note})"
                else:
                    x, chans, u = synthetic[name](rates[name])
                    out[name] = _stream(name, x, rates[name], chans, u)
                    origin[name] = f"synthetic (connectors.synth.{name}_signal)"
            if "temp" in rates:
                x = synth.temp_signal(rates["temp"], seconds)
                out["temp"] = _stream("temp", x, rates["temp"], ("skin",), "degC")
                origin["temp"] = "synthetic (no shared temperature recording)"
        else:
            raise ValueError(f"device kind must be eeg, audio or wearable, got {d['kind']!r}")
    return out, origin


# -- the schedule ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamPlan:
    """One stream of one device: when it joins and how its frames are timed."""

    device: str
    stream: str
    modality: int  # index into MODALITIES
    start_ns: int  # relative to the schedule start
    frame_samples: int
    rate: float

    def due_ns(self, seq: int) -> int:
        """Relative due time of frame ``seq``: when its last sample exists."""
        return self.start_ns + int(round((seq + 1) * self.frame_samples * 1e9 / self.rate))


@dataclass
class Schedule:
    """Every frame of a run, in due order, pre-encoded. Arrays are parallel."""

    due_ns: np.ndarray  # int64, relative
    plan_idx: np.ndarray  # int32, index into plans
    seq: np.ndarray  # int64
    values: list[bytes]
    stamp_at: np.ndarray  # int32 offset of the 8 send-time bytes in each value
    plans: list[StreamPlan]
    keys: list[bytes]  # per plan
    origin: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.values)


def stamp(value: bytes, at: int, send_ns: int) -> bytes:
    """``value`` with the 8 bytes at ``at`` replaced by ``send_ns`` (big-endian uint64)."""
    return value[:at] + struct.pack(">Q", send_ns) + value[at + 8 :]


def build_schedule(wl: Workload, end_s: float | None = None, stagger_s: float = 7.3, spread: bool = True) -> Schedule:
    """Devices per phase (a device joins in the first phase whose fleet includes it), all frames
    due before ``end_s`` (default: end of the last phase), encoded once. ``spread``: device ``i``
    starts a fraction ``frac(i * golden ratio)`` of a frame period after its phase start; without
    it every device of a kind ticks at the same instant (a synchronized burst)."""
    sources, origin = signal_sources(wl.devices)
    end_ns = int((end_s if end_s is not None else wl.phases[-1].end_s) * 1e9)
    plans: list[StreamPlan] = []
    offsets: list[int] = []
    for d in wl.devices:
        kind = d["kind"]
        joined = 0
        for ph in wl.phases:
            n = int(round(d["count"] * ph.multiplier))
            for i in range(joined, n):
                dev = f"lat-{kind}-{i + 1:04d}"
                # Independent devices do not tick in step: spread each device's frame clock over one
                # frame period (deterministic, golden-ratio sequence), all its streams alike.
                phase_ns = int(((i * 0.6180339887498949) % 1.0) * float(d["frame_s"]) * 1e9) if spread else 0
                streams = {"eeg": ["eeg"], "audio": ["mic"]}.get(kind) or list(d["rates"])
                for st in streams:
                    s = sources[st]
                    fs = max(1, int(round(float(d["frame_s"]) * s.rate)))
                    modality = MODALITIES.index(s.modality)
                    plans.append(StreamPlan(dev, st, modality, int(ph.start_s * 1e9) + phase_ns, fs, s.rate))
                    offsets.append(int(round(i * stagger_s * s.rate)) % s.n_samples)
            joined = max(joined, n)
    dues: list[np.ndarray] = []
    pidx: list[np.ndarray] = []
    seqs: list[np.ndarray] = []
    for j, p in enumerate(plans):
        n = max(0, math.floor((end_ns - p.start_ns) * p.rate / 1e9 / p.frame_samples))
        k = np.arange(n, dtype=np.int64)
        dues.append(p.start_ns + np.round((k + 1) * p.frame_samples * 1e9 / p.rate).astype(np.int64))
        pidx.append(np.full(n, j, dtype=np.int32))
        seqs.append(k)
    due = np.concatenate(dues)
    order = np.argsort(due, kind="stable")
    due, plan_idx, seq = due[order], np.concatenate(pidx)[order], np.concatenate(seqs)[order]
    values: list[bytes] = []
    at = np.empty(len(due), dtype=np.int32)
    base_ns = 1_700_000_000_000_000_000
    for i in range(len(due)):
        p = plans[plan_idx[i]]
        s = sources[p.stream]
        k = int(seq[i])
        start = (offsets[plan_idx[i]] + k * p.frame_samples) % s.n_samples
        if start + p.frame_samples <= s.n_samples:
            x = s.samples[:, start : start + p.frame_samples]
        else:
            x = s.samples[:, (start + np.arange(p.frame_samples)) % s.n_samples]
        frame = Frame(
            p.device, MODALITIES[p.modality], p.stream, k,
            base_ns + p.start_ns + int(round(k * p.frame_samples * 1e9 / p.rate)), PLACEHOLDER_NS,
            p.rate, s.channels, s.units, x,
        )
        v = encode_frame(frame)
        pos = v.find(_PLACEHOLDER)
        if pos < 0:
            raise RuntimeError("send-time placeholder not found in the encoded frame")
        values.append(v)
        at[i] = pos + 1
    return Schedule(due, plan_idx, seq, values, at, plans, [p.device.encode() for p in plans], origin)


def timed_schedule(workload: str, seconds: float) -> Schedule:
    """The first ``seconds`` (plus one) of ``workload``'s schedule, built and announced (the core
    and shell benchmarks feed it to the processor)."""
    import time

    t = time.monotonic()
    sched = build_schedule(load_workload(workload, short=False), end_s=seconds + 1.0)
    print(f"schedule: {len(sched):,} frames built in {time.monotonic() - t:.1f} s", flush=True)
    return sched
