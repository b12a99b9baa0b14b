"""Durable worker state: what survives a crash or a rebalance, and how windows are rebuilt.

The worker keeps two kinds of state per device, and treats them differently:

* the **privacy ledger** (small: charges, last window per stream, recent release digests) is
  written to a compacted *state topic* (``<prefix>state``) as one record per device, keyed
  ``d:<device id>`` and sent to the partition number of the device's raw topics, so the worker
  that owns a device's raw partitions owns its ledger record;
* the **windows** (large: an EEG window is 64 channels x 512 samples) are never written, only the
  *grid anchor* of a stream whose window grid restarted (rate change, reboot: ``base_seq``, index
  offset, format; in the device record, key ``windows``), so that the rebuild re-indexes its
  windows as before. They are
  rebuilt from the raw log: per raw partition the state topic holds a *resume offset* (key
  ``r:<raw topic>``), the oldest offset whose frame some pending window may still need. On
  assignment the worker re-feeds ``[resume, committed)`` to the processor, discarding the output
  (it was published before the offsets were committed), then continues from the committed offset.

Windows are a function of the sequence numbers, and noise a function of (device key, release
identity), so the rebuilt windows and releases equal the lost ones; the ledger makes a window
already charged a replay (answered without charging, not published again).

This module is pure: :class:`ResumeTracker` computes resume offsets, the ``*_record`` and
:func:`load_partition` functions encode and decode the state topic, :func:`merge_ledger` and
:func:`split_ledger` move device slices between ledger states. The Kafka I/O is in
:mod:`pipeline.app` and :mod:`connectors.kafka`.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import StateError

__all__ = [
    "PartitionState",
    "ResumeTracker",
    "device_record",
    "load_partition",
    "merge_ledger",
    "resume_record",
    "split_ledger",
]

STATE_FORMAT = 1
LEDGER_FORMAT = "biopriv-ledger/1"

TP = tuple[str, int]


@dataclass(slots=True)
class _Track:
    entries: deque[tuple[int, int]] = field(default_factory=deque)  # (offset, seq), arrival order
    last_seq: int = -1
    last_capture_ns: int = 0
    touched: float = 0.0


class ResumeTracker:
    """Per raw partition, the oldest offset a rebuild must re-read to restore every pending window.

    For each (partition, device, stream) it remembers the offsets of the frames within
    ``history_frames(frame)`` sequence numbers of the newest one: enough for the longest window
    of the stream plus its hop and reorder tolerance. The resume offset of a partition is the
    oldest such offset, or the next offset to read when no frame is remembered.

    Parameters
    ----------
    history_frames : callable
        ``FrameRef -> int``: how many frames back a pending window of that stream may reach.
    idle_s : float
        A (device, stream) silent for longer than this (wall clock, s) stops pinning the resume
        offset; its pending window, if the device ever resumes, is not rebuilt after a crash.
    clock : callable
        ``() -> seconds`` (monotonic).
    """

    def __init__(
        self,
        history_frames: Callable[[Any], int],
        *,
        idle_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._history = history_frames
        self._idle_s = idle_s
        self._clock = clock
        self._tracks: dict[TP, dict[tuple[str, str], _Track]] = {}
        self._next: dict[TP, int] = {}
        self._partition_of: dict[str, int] = {}

    def observe(self, tp: TP, offset: int, frame: Any | None) -> None:
        """Record that the message at ``offset`` was processed (``frame``: its FrameRef, if any)."""
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)
        if frame is None:
            return
        self._partition_of[frame.device_id] = tp[1]
        tracks = self._tracks.setdefault(tp, {})
        tr = tracks.get((frame.device_id, frame.stream))
        if tr is None:
            tr = tracks[(frame.device_id, frame.stream)] = _Track()
        keep = max(1, int(self._history(frame)))
        if tr.last_seq >= 0 and frame.seq < tr.last_seq - keep and frame.capture_ns > tr.last_capture_ns:
            tr.entries.clear()  # the device rebooted (sequence numbers restart): older frames are not needed
            tr.last_seq = -1
        tr.entries.append((offset, frame.seq))
        tr.last_seq = max(tr.last_seq, frame.seq)
        tr.last_capture_ns = max(tr.last_capture_ns, frame.capture_ns)
        tr.touched = self._clock()
        floor = tr.last_seq - keep
        while tr.entries and tr.entries[0][1] < floor:
            tr.entries.popleft()

    def resume_offsets(self, tps: Iterable[TP] | None = None) -> dict[TP, int]:
        """Resume offset per partition seen (or per ``tps``); expires idle (device, stream) entries."""
        now = self._clock()
        out: dict[TP, int] = {}
        for tp in list(self._next) if tps is None else tps:
            if tp not in self._next:
                continue
            tracks = self._tracks.get(tp, {})
            for key in [k for k, tr in tracks.items() if now - tr.touched > self._idle_s or not tr.entries]:
                del tracks[key]
            out[tp] = min([self._next[tp], *(min(o for o, _ in tr.entries) for tr in tracks.values())])
        return out

    def partition_of(self, device_id: str) -> int | None:
        """Partition number on which the device's frames arrive (None if never seen)."""
        return self._partition_of.get(device_id)

    def devices_on(self, partitions: set[int]) -> set[str]:
        """Devices seen on those partition numbers."""
        return {d for d, p in self._partition_of.items() if p in partitions}

    def forget(self, partitions: set[int]) -> None:
        """Drop everything about those partition numbers (revoked)."""
        for tp in [tp for tp in self._next if tp[1] in partitions]:
            self._next.pop(tp, None)
            self._tracks.pop(tp, None)
        self._partition_of = {d: p for d, p in self._partition_of.items() if p not in partitions}


# ---------------------------------------------------------------------- state topic records


def device_record(
    device_id: str, ledger: dict[str, Any] | None, windows: dict[str, Any] | None = None
) -> tuple[bytes, bytes]:
    """Key and value of a device's record: ``ledger`` (its slice of a ledger state, None when it
    has no charges) and ``windows``, the grid anchors of its restarted streams
    (:meth:`pipeline.processor.Processor.anchors`) that the window rebuild needs."""
    doc: dict[str, Any] = {"v": STATE_FORMAT, "kind": "device", "device": device_id, "ledger": ledger, "t_ns": time.time_ns()}
    if windows:
        doc["windows"] = windows
    return b"d:" + device_id.encode(), json.dumps(doc, separators=(",", ":")).encode()


def resume_record(topic: str, partition: int, offset: int) -> tuple[bytes, bytes]:
    """Key and value of a raw partition's resume offset record."""
    doc = {"v": STATE_FORMAT, "kind": "resume", "topic": topic, "partition": partition, "offset": int(offset)}
    return b"r:" + topic.encode(), json.dumps(doc, separators=(",", ":")).encode()


@dataclass
class PartitionState:
    """What one partition of the state topic holds: device ledgers and raw resume offsets."""

    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    resume: dict[str, int] = field(default_factory=dict)
    windows: dict[str, dict[str, Any]] = field(default_factory=dict)  # device -> grid anchors
    records: int = 0


def load_partition(records: Iterable[tuple[bytes | None, bytes | None]]) -> PartitionState:
    """Fold ``(key, value)`` records of one state partition, oldest first (latest per key wins)."""
    ps = PartitionState()
    for key, value in records:
        ps.records += 1
        if key is None or value is None:
            continue
        try:
            doc = json.loads(value)
        except ValueError as exc:
            raise StateError(f"state record {key[:80]!r} is not JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("v") != STATE_FORMAT:
            raise StateError(f"state record {key[:80]!r} has format {doc.get('v') if isinstance(doc, dict) else doc!r}, expected {STATE_FORMAT}")
        if doc.get("kind") == "device":
            device = str(doc["device"])
            ps.devices.pop(device, None)
            ps.windows.pop(device, None)
            if doc.get("ledger") is not None:
                ps.devices[device] = doc["ledger"]
            if doc.get("windows"):
                ps.windows[device] = doc["windows"]
        elif doc.get("kind") == "resume":
            ps.resume[str(doc["topic"])] = int(doc["offset"])
        else:
            raise StateError(f"state record {key[:80]!r} has kind {doc.get('kind')!r}; allowed: 'device', 'resume'")
    return ps


def split_ledger(state: dict[str, Any], devices: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The slices of ``devices`` in a ledger state (devices absent from it are skipped)."""
    all_devices = state["devices"]
    return {d: all_devices[d] for d in devices if d in all_devices}


def merge_ledger(
    state: dict[str, Any], slices: dict[str, dict[str, Any]], *, drop: Iterable[str] = ()
) -> dict[str, Any]:
    """A ledger state with ``drop`` removed and ``slices`` put in (replacing the same devices)."""
    if state.get("format") != LEDGER_FORMAT:
        raise StateError(f"ledger state has format {state.get('format')!r}, expected {LEDGER_FORMAT!r}")
    dropped = set(drop)
    devices = {d: v for d, v in state["devices"].items() if d not in dropped}
    devices.update(slices)
    return {**state, "devices": devices}


def history_frames(length_s: float, hop_s: float, reorder_frames: int, sample_rate: float, n_samples: int) -> int:
    """Frames a pending window may reach back: longest window + hop, plus reorder slack and a margin."""
    frame_s = n_samples / sample_rate
    return int(math.ceil((length_s + hop_s) / frame_s)) + reorder_frames + 3
