"""Replay recordings as simulated devices: framing, fan-out, pacing, sending, summary.

The pieces, from pure to I/O:

* :func:`plan_replay` fans recordings out to ``N`` devices (ids ``<prefix>-0001``...; device
  ``i`` starts ``i * stagger_s`` seconds into its recording, wrapping, so every device still
  sends every sample exactly once per pass) and cuts each stream into frames of a fixed number
  of samples (:class:`DeviceStream`). The last frame of a pass is shorter when the stream length
  is not a multiple of the frame length; with ``loop`` the stream repeats and frames run across
  the wrap, all of the same length.
* :func:`schedule` merges all frames of all devices by due time (a heap, lazily, so a 30-minute
  record fanned out to 100 devices is never held as frames in memory). Frame ``k`` of a stream
  captures its first sample at ``t0 + k * F / rate`` (the simulated device clock runs in
  recording time) and is due, once complete, at ``t0 + (k * F + n_k) / rate / speed``. Due times
  are computed from ``t0``, never from the previous send, so a late send does not shift later
  frames: errors do not accumulate. ``speed == 0`` sends as fast as possible, in the same order.
* :func:`send_loop` waits for each due time with an injectable ``clock`` and ``sleep``, stamps
  the send time, encodes and hands the frame to a :class:`Sender`, and collects a
  :class:`ReplaySummary` including the pacing error (send time minus due time).
* :class:`KafkaSender` (kafka-python through :func:`connectors.kafka.make_producer`: acks=all,
  one request in flight so retries cannot reorder) and :class:`MemorySender` (tests).
"""

from __future__ import annotations

import heapq
import math
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from connectors.kafka import RAW_TOPICS
from connectors.recordings import Recording, StreamData
from connectors.security import ClientSecurity
from pipeline.errors import BrokerError, ConfigError
from pipeline.frames import MAX_SAMPLES_PER_FRAME, Frame, encode_frame, make_frame
from pipeline.validation import check_option, check_range

__all__ = [
    "DEFAULT_FRAME_S",
    "DeviceStream",
    "EpochClock",
    "KafkaSender",
    "MemorySender",
    "ReplayConfig",
    "ReplaySummary",
    "ScheduledFrame",
    "Sender",
    "clip_recording",
    "plan_replay",
    "schedule",
    "send_loop",
]

#: Default frame duration per stream, s: EEG 0.125 s (32 samples at 256 Hz), audio 20 ms,
#: slow biosignals 1 s.
DEFAULT_FRAME_S: dict[str, float] = {
    "eeg": 0.125,
    "mic": 0.02,
    "ecg": 1.0,
    "ppg": 1.0,
    "eda": 1.0,
    "acc": 1.0,
    "temp": 1.0,
    "resp": 1.0,
}


@dataclass(frozen=True)
class ReplayConfig:
    """How recordings become simulated devices.

    Attributes
    ----------
    devices : int
        Number of simulated devices; device ``i`` replays recording ``i % len(recordings)``.
    speed : float
        1 real time, 2 twice as fast, 0 as fast as possible.
    loop : bool
        Repeat the recordings until stopped.
    stagger_s : float
        Device ``i`` starts ``i * stagger_s`` seconds into its recording (wrapping), s.
    device_prefix : str
        Device ids are ``<device_prefix>-0001``, ``-0002``...
    frame_s : mapping of str to float
        Frame duration per stream, s; streams not listed use :data:`DEFAULT_FRAME_S`.
    topics : mapping of str to str
        Topic per modality (default :data:`connectors.kafka.RAW_TOPICS`).
    encoding : str
        ``binary`` (msgpack) or ``json``.
    """

    devices: int = 1
    speed: float = 1.0
    loop: bool = False
    stagger_s: float = 10.0
    device_prefix: str = "sim"
    frame_s: Mapping[str, float] = field(default_factory=dict)
    topics: Mapping[str, str] = field(default_factory=lambda: dict(RAW_TOPICS))
    encoding: str = "binary"

    def __post_init__(self) -> None:
        if isinstance(self.devices, bool) or not isinstance(self.devices, int) or not 1 <= self.devices <= 9999:
            raise ConfigError(f"devices must be an integer in [1, 9999], got {self.devices!r}")
        check_range("speed", self.speed, 0.0, 1000.0)
        check_range("stagger", self.stagger_s, 0.0, unit="s")
        check_option("encoding", self.encoding, ("binary", "json"))
        for stream, seconds in self.frame_s.items():
            check_option("frame duration stream", stream, DEFAULT_FRAME_S)
            check_range(f"frame duration of {stream}", seconds, 0.0, 60.0, low_inclusive=False, unit="s")
        missing = {"eeg", "audio", "bio"} - set(self.topics)
        if missing:
            raise ConfigError(f"topics must name a topic for every modality, missing {sorted(missing)}")


@dataclass(frozen=True)
class DeviceStream:
    """One stream of one simulated device, cut into frames.

    Sample ``j`` of the device stream (``j = 0, 1, ...``) is sample ``(offset + j) % N`` of the
    recording's stream, ``N`` its length; frame ``k`` holds samples ``k * frame_samples`` up to
    ``(k + 1) * frame_samples`` (fewer for the last frame of a pass without ``loop``).
    """

    device_id: str
    data: StreamData
    topic: str
    offset: int
    frame_samples: int
    loop: bool = False

    @property
    def n_frames(self) -> int | None:
        """Frames in one pass, ``None`` when looping forever."""
        return None if self.loop else math.ceil(self.data.n_samples / self.frame_samples)

    def frame_length(self, k: int) -> int:
        """Samples in frame ``k``."""
        if self.loop:
            return self.frame_samples
        return min(self.frame_samples, self.data.n_samples - k * self.frame_samples)

    def samples(self, k: int) -> np.ndarray:
        """The samples of frame ``k``, float32 ``(n_channels, frame_length(k))``."""
        n_total = self.data.n_samples
        start = (self.offset + k * self.frame_samples) % n_total
        n = self.frame_length(k)
        if start + n <= n_total:
            return self.data.samples[:, start : start + n]
        idx = (start + np.arange(n)) % n_total
        return self.data.samples[:, idx]

    def frame_end_ns(self, k: int) -> int:
        """Recording time at the end of frame ``k``, ns from the start of the replay."""
        return _ns(k * self.frame_samples + self.frame_length(k), self.data.rate)

    def frame(self, k: int, t0_ns: int) -> Frame:
        """Frame ``k`` with capture time ``t0_ns + k * frame_samples / rate`` (send time 0)."""
        return make_frame(
            self.device_id,
            self.data.name,
            k,
            t0_ns + _ns(k * self.frame_samples, self.data.rate),
            self.data.rate,
            self.data.channels,
            self.data.units,
            self.samples(k),
        )


def _ns(n_samples: int, rate: float) -> int:
    return int(round(n_samples * 1e9 / rate))


def clip_recording(rec: Recording, start_s: float = 0.0, duration_s: float | None = None) -> Recording:
    """The part of ``rec`` from ``start_s`` lasting ``duration_s`` (to the end when ``None``), s.

    Raises
    ------
    ConfigError
        ``start_s`` is at or beyond the end of a stream, or ``duration_s`` is not positive.
    """
    check_range("start", start_s, 0.0, unit="s")
    if duration_s is not None:
        check_range("duration", duration_s, 0.0, low_inclusive=False, unit="s")
    if start_s == 0 and duration_s is None:
        return rec
    streams = {}
    for name, s in rec.streams.items():
        i0 = int(round(start_s * s.rate))
        if i0 >= s.n_samples:
            raise ConfigError(f"start {start_s:g} s is beyond the end of {rec.path} ({name}: {s.duration_s:.3f} s)")
        i1 = s.n_samples if duration_s is None else min(s.n_samples, i0 + max(1, int(round(duration_s * s.rate))))
        samples = s.samples[:, i0:i1]
        start_ns = None if s.start_ns is None else s.start_ns + _ns(i0, s.rate)
        streams[name] = StreamData(name, samples, s.rate, s.channels, s.units, start_ns, s.n_filled)
    return Recording(rec.path, rec.format, streams, rec.skipped)


def frame_samples_for(stream: str, rate: float, frame_s: Mapping[str, float] | None = None) -> int:
    """Samples per frame of ``stream`` at ``rate`` Hz (at least 1)."""
    seconds = (frame_s or {}).get(stream, DEFAULT_FRAME_S[stream])
    n = max(1, math.floor(seconds * rate + 0.5))
    if n > MAX_SAMPLES_PER_FRAME:
        raise ConfigError(
            f"frame duration {seconds:g} s of {stream} at {rate:g} Hz gives {n} samples per frame, "
            f"limit {MAX_SAMPLES_PER_FRAME}"
        )
    return n


def device_id(prefix: str, i: int) -> str:
    """Id of device ``i`` (from 0): ``<prefix>-0001`` for ``i = 0``."""
    return f"{prefix}-{i + 1:04d}"


def plan_replay(recordings: Sequence[Recording], config: ReplayConfig) -> list[DeviceStream]:
    """Fan ``recordings`` out to ``config.devices`` devices, one :class:`DeviceStream` per stream.

    Device ``i`` replays recording ``i % len(recordings)`` starting ``i * stagger_s`` seconds in
    (wrapping). Deterministic: the same inputs give the same plan.
    """
    if not recordings:
        raise ConfigError("no recording to replay")
    plan = []
    for i in range(config.devices):
        rec = recordings[i % len(recordings)]
        dev = device_id(config.device_prefix, i)
        for name, s in rec.streams.items():
            offset = int(round(i * config.stagger_s * s.rate)) % s.n_samples
            plan.append(
                DeviceStream(
                    dev,
                    s,
                    config.topics[s.modality],
                    offset,
                    frame_samples_for(name, s.rate, config.frame_s),
                    config.loop,
                )
            )
    return plan


def target_frame_rate(plan: Sequence[DeviceStream], speed: float) -> float | None:
    """Frames per second the plan sends at ``speed`` (``None`` for as fast as possible)."""
    if speed <= 0:
        return None
    return speed * sum(ds.data.rate / ds.frame_samples for ds in plan)


def total_frames(plan: Sequence[DeviceStream]) -> int | None:
    """Frames of one pass of the plan (``None`` when looping)."""
    counts = [ds.n_frames for ds in plan]
    return None if any(c is None for c in counts) else sum(c for c in counts if c is not None)


@dataclass(frozen=True, slots=True)
class ScheduledFrame:
    """A frame with its due time.

    Attributes
    ----------
    due_ns : int
        When the frame should be handed to Kafka, ns on the sender clock (epoch).
    topic : str
    key : bytes
        The device id.
    frame : Frame
        Send time still 0; stamped by :func:`send_loop`.
    """

    due_ns: int
    topic: str
    key: bytes
    frame: Frame


def schedule(plan: Sequence[DeviceStream], t0_ns: int, speed: float) -> Iterator[ScheduledFrame]:
    """All frames of ``plan`` in due-time order (ties: plan order), computed from ``t0_ns`` only.

    Frame ``k`` of a stream is due at ``t0_ns + end_k / speed``, where ``end_k`` is the recording
    time at its last sample; with ``speed == 0`` everything is due at ``t0_ns`` (the order stays
    the recording-time order).
    """
    heap: list[tuple[int, int, int]] = [(ds.frame_end_ns(0), i, 0) for i, ds in enumerate(plan)]
    heapq.heapify(heap)
    keys = [ds.device_id.encode() for ds in plan]
    while heap:
        end_ns, i, k = heapq.heappop(heap)
        ds = plan[i]
        due = t0_ns + (int(round(end_ns / speed)) if speed > 0 else 0)
        yield ScheduledFrame(due, ds.topic, keys[i], ds.frame(k, t0_ns))
        n = ds.n_frames
        if n is None or k + 1 < n:
            heapq.heappush(heap, (ds.frame_end_ns(k + 1), i, k + 1))


class Sender(Protocol):
    """Where :func:`send_loop` hands encoded frames."""

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        """Hand one message over (may be asynchronous)."""

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every message handed over is delivered; raise on delivery failure."""

    def close(self) -> None:
        """Release resources."""


class MemorySender:
    """A :class:`Sender` that keeps ``(topic, key, value)`` in :attr:`messages` (tests)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bytes]] = []

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        """Append the message."""
        self.messages.append((topic, key, value))

    def flush(self, timeout_s: float | None = None) -> None:
        """Nothing to wait for."""

    def close(self) -> None:
        """Nothing to release."""


class KafkaSender:
    """A :class:`Sender` producing with kafka-python (acks=all, retries that cannot reorder).

    Delivery failures reported by the producer's callbacks are counted and raised as
    :class:`BrokerError` by :meth:`flush`.
    """

    def __init__(self, bootstrap: str, *, security: ClientSecurity | None = None, **overrides: Any) -> None:
        from connectors.kafka import make_producer, resolve_security

        self.bootstrap = bootstrap
        self.security = resolve_security(security)
        settings = {"max_block_ms": 15000, **overrides}
        self._producer = make_producer(bootstrap, security=self.security, **settings)
        self.errors = 0
        self.first_error: str | None = None

    def _on_error(self, exc: BaseException) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = f"{type(exc).__name__}: {exc}"

    def warm_up(self, topics: Iterable[str]) -> None:
        """Fetch the metadata of ``topics`` now, so the first sends of a paced replay do not wait."""
        from connectors.kafka import broker_errors

        with broker_errors(self.bootstrap, self.security, "fetch topic metadata"):
            for t in topics:
                self._producer.partitions_for(t)

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        """Hand the message to the producer (asynchronous)."""
        from connectors.kafka import broker_errors

        with broker_errors(self.bootstrap, self.security, f"write {topic}"):
            self._producer.send(topic, key=key, value=value).add_errback(self._on_error)

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait for delivery of everything sent; raise :class:`BrokerError` if any failed."""
        from connectors.kafka import broker_errors

        with broker_errors(self.bootstrap, self.security, "flush"):
            self._producer.flush(timeout=60.0 if timeout_s is None else timeout_s)
        if self.errors:
            raise BrokerError(f"{self.errors} frame(s) were not delivered to {self.bootstrap}: {self.first_error}")

    def close(self) -> None:
        """Close the producer without waiting long."""
        self._producer.close(timeout=5)


def prepare_topics(bootstrap: str, topics: Iterable[str], timeout_s: float = 5.0, *,
                   security: ClientSecurity | None = None) -> list[str]:
    """Check the broker answers and create the missing ``topics``; return the names created.

    Project topics get their project settings (:func:`connectors.kafka.project_topics`), others
    the default partitions. Raises :class:`BrokerError` when no broker answers.
    """
    from connectors.kafka import TopicSpec, check_broker, ensure_topics, project_topics

    check_broker(bootstrap, timeout_s=timeout_s, security=security)
    known = {t.name: t for t in project_topics()}
    return ensure_topics(bootstrap, [known.get(t, TopicSpec(t)) for t in sorted(set(topics))], security=security)


class EpochClock:
    """Monotonic nanoseconds anchored to the Unix epoch once, at construction.

    Pacing needs a clock that never jumps (NTP steps would make a ``time.time_ns`` schedule
    skip or stall); frames need epoch timestamps. This gives both.
    """

    def __init__(self) -> None:
        self._mono0 = time.monotonic_ns()
        self._wall0 = time.time_ns()

    def __call__(self) -> int:
        """Now, ns since the epoch."""
        return self._wall0 + time.monotonic_ns() - self._mono0


@dataclass
class ReplaySummary:
    """What a replay did. Pacing errors are send time minus due time, ms (``None`` at speed 0).

    Attributes
    ----------
    frames, samples, bytes : int
        Frames sent, samples per channel summed over frames, encoded bytes sent.
    elapsed_s : float
        Wall time from the start of the schedule to the last send, s.
    speed : float
    target_fps, achieved_fps : float or None
        Frames per second planned (``None`` at speed 0) and achieved.
    pacing_ms : dict of str to float or None
        ``median``, ``p99``, ``max`` and ``mean`` of the pacing error, ms.
    late_frames : int
        Frames sent more than 20 ms after their due time.
    per_stream : dict of str to int
        Frames per stream name.
    devices : int
    interrupted : bool
        The replay was stopped before the end (Ctrl-C).
    """

    frames: int = 0
    samples: int = 0
    bytes: int = 0
    elapsed_s: float = 0.0
    speed: float = 1.0
    target_fps: float | None = None
    achieved_fps: float = 0.0
    pacing_ms: dict[str, float | None] = field(default_factory=dict)
    late_frames: int = 0
    per_stream: dict[str, int] = field(default_factory=dict)
    devices: int = 0
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy."""
        return {
            "frames": self.frames,
            "samples": self.samples,
            "bytes": self.bytes,
            "elapsed_s": round(self.elapsed_s, 6),
            "speed": self.speed,
            "target_fps": self.target_fps,
            "achieved_fps": self.achieved_fps,
            "pacing_error_ms": self.pacing_ms,
            "late_frames_over_20ms": self.late_frames,
            "frames_per_stream": self.per_stream,
            "devices": self.devices,
            "interrupted": self.interrupted,
        }

    def format(self) -> str:
        """Human-readable multi-line report."""
        rate = f"{self.achieved_fps:.1f} frames/s"
        if self.target_fps is not None:
            rate += f" (target {self.target_fps:.1f})"
        lines = [
            f"replay {'interrupted' if self.interrupted else 'done'}: {self.frames} frames "
            f"({', '.join(f'{k} {v}' for k, v in sorted(self.per_stream.items()))}) from {self.devices} device(s)",
            f"  bytes sent     {self.bytes} ({self.bytes / 1e6:.2f} MB)",
            f"  elapsed        {self.elapsed_s:.3f} s at speed {self.speed:g}" + (" (as fast as possible)" if self.speed == 0 else ""),
            f"  achieved rate  {rate}",
        ]
        p = self.pacing_ms
        if p.get("median") is not None:
            lines.append(
                f"  pacing error   median {p['median']:.3f} ms, p99 {p['p99']:.3f} ms, max {p['max']:.3f} ms "
                f"({self.late_frames} frame(s) later than 20 ms)"
            )
        else:
            lines.append("  pacing error   n/a (speed 0 sends as fast as possible)")
        return "\n".join(lines)


def pacing_stats(errors_ns: Sequence[int] | array) -> dict[str, float | None]:
    """Median, p99, max and mean of pacing errors given in ns, reported in ms."""
    if len(errors_ns) == 0:
        return {"median": None, "p99": None, "max": None, "mean": None}
    e = np.frombuffer(errors_ns, dtype=np.int64) if isinstance(errors_ns, array) else np.asarray(errors_ns, np.int64)
    ms = e.astype(np.float64) / 1e6
    return {
        "median": float(np.median(ms)),
        "p99": float(np.percentile(ms, 99)),
        "max": float(ms.max()),
        "mean": float(ms.mean()),
    }


def send_loop(
    frames: Iterable[ScheduledFrame],
    sender: Sender,
    *,
    speed: float,
    encoding: str = "binary",
    clock: Callable[[], int] | None = None,
    sleep: Callable[[float], Any] = time.sleep,
    should_stop: Callable[[], bool] = lambda: False,
    on_sent: Callable[[ScheduledFrame, int], None] | None = None,
    start_ns: int | None = None,
    target_fps: float | None = None,
    devices: int = 0,
) -> ReplaySummary:
    """Send ``frames`` at their due times; return the summary.

    Each frame waits until ``clock() >= due_ns`` (sleeping the remaining time, re-checking after
    early wake-ups; no waiting at ``speed == 0``), is stamped with ``send_ns = clock()``, encoded
    and handed to ``sender``. The pacing error of a frame is ``send_ns - due_ns``; since due
    times come from the schedule, not from the previous send, a slow send only delays the frames
    that became due meanwhile.

    Parameters
    ----------
    frames : iterable of ScheduledFrame
        In due-time order (see :func:`schedule`).
    sender : Sender
    speed : float
        Only tells whether to wait (``> 0``) and is copied to the summary.
    encoding : str
        ``binary`` or ``json``.
    clock : callable, optional
        Returns now in ns since the epoch; default a fresh :class:`EpochClock`.
    sleep : callable
        Sleeps the given seconds (may return early, e.g. ``threading.Event.wait``).
    should_stop : callable
        Polled before each frame and after each sleep; ``True`` ends the loop (interrupted).
    on_sent : callable, optional
        Called with each frame and its send time after it was handed over (progress).
    start_ns : int, optional
        Start of the schedule for the elapsed time; default the clock at the call.
    target_fps, devices
        Copied to the summary.
    """
    clock = clock if clock is not None else EpochClock()
    t_start = clock() if start_ns is None else start_ns
    errors = array("q")
    summary = ReplaySummary(speed=speed, target_fps=target_fps, devices=devices)
    per_stream: dict[str, int] = {}
    late = 0
    last_send = t_start
    pace = speed > 0
    for sf in frames:
        if should_stop():
            summary.interrupted = True
            break
        if pace:
            remaining = sf.due_ns - clock()
            while remaining > 0:
                sleep(remaining / 1e9)
                if should_stop():
                    break
                remaining = sf.due_ns - clock()
            if should_stop():
                summary.interrupted = True
                break
        send_ns = clock()
        value = encode_frame(sf.frame.with_send_ns(send_ns), encoding)
        sender.send(sf.topic, sf.key, value)
        last_send = send_ns
        if pace:
            err = send_ns - sf.due_ns
            errors.append(err)
            if err > 20_000_000:
                late += 1
        summary.frames += 1
        summary.samples += sf.frame.n_samples
        summary.bytes += len(value)
        per_stream[sf.frame.stream] = per_stream.get(sf.frame.stream, 0) + 1
        if on_sent is not None:
            on_sent(sf, send_ns)
    summary.elapsed_s = max(0.0, (last_send - t_start) / 1e9)
    summary.achieved_fps = summary.frames / summary.elapsed_s if summary.elapsed_s > 0 else 0.0
    summary.pacing_ms = pacing_stats(errors)
    summary.late_frames = late
    summary.per_stream = per_stream
    return summary


def replay(
    recordings: Sequence[Recording],
    config: ReplayConfig,
    sender: Sender,
    *,
    clock: Callable[[], int] | None = None,
    sleep: Callable[[float], Any] = time.sleep,
    should_stop: Callable[[], bool] = lambda: False,
    on_sent: Callable[[ScheduledFrame, int], None] | None = None,
) -> ReplaySummary:
    """Plan, schedule and send ``recordings`` as configured; flush the sender; return the summary.

    The schedule starts at the clock's now (``t0``): frame capture times are ``t0`` plus
    recording time, due times ``t0`` plus recording time over ``speed``.
    """
    clock = clock if clock is not None else EpochClock()
    plan = plan_replay(recordings, config)
    t0 = clock()
    summary = send_loop(
        schedule(plan, t0, config.speed),
        sender,
        speed=config.speed,
        encoding=config.encoding,
        clock=clock,
        sleep=sleep,
        should_stop=should_stop,
        on_sent=on_sent,
        start_ns=t0,
        target_fps=target_frame_rate(plan, config.speed),
        devices=config.devices,
    )
    sender.flush()
    return summary
