"""Sliding windows over one stream of one device: an incremental ring buffer.

A :class:`Windower` turns the frames of one ``(device, stream)`` into fixed-length windows with a
fixed hop. It is fed frame by frame (:meth:`Windower.push`), costs O(frame) per push plus one copy
of the window when a window completes, and copes with what real devices send:

* **Deterministic boundaries.** Within a *segment* (a run of frames with the same sample rate,
  channels and frame length) the first sample of frame ``seq`` has position
  ``(seq - base_seq) * n`` and window ``k`` covers positions ``[k * hop, k * hop + length)``. The
  first segment of a stream has ``base_seq = 0``, so its grid is a function of the sequence numbers
  only, whatever frame the worker starts consuming from. Replaying the same frames yields the same
  windows (same index, bounds, data).
* **Duplicates** (a sequence number already received) are dropped.
* **Reordering.** A window is released as soon as all its samples are present. If some are
  missing, it waits until a frame more than ``reorder_frames`` frames past its last frame has arrived; then it
  is released if at most ``max_missing`` of its samples are missing, otherwise it is counted in
  ``stats.incomplete`` and not released. Frames older than every pending window are dropped (``late``).
* **Gaps.** Missing samples of a released window are filled by linear interpolation between the
  nearest received samples of the same channel (held constant at the window edges);
  :attr:`Window.missing_fraction` says how much was filled.
* **Non-finite samples** (NaN or infinity in an accepted frame) are filled the same way, per
  channel, but never count towards ``max_missing``: whether a window is released depends on which
  frames arrived, never on sample values (``docs/privacy.md``, threat model). A channel with no
  finite sample in the window stays NaN (its features are then undefined).
* **Restarts.** A change of sample rate, channel names, units or frame length starts a new segment:
  pending windows are discarded (counted as ``incomplete``), the grid is re-anchored at the first
  frame of the new segment (``base_seq`` = its seq), and window indices continue to increase. A
  sequence number that falls far behind (more than the buffer) with a *later* capture time is a
  device reboot and also restarts the stream; with an earlier capture time it is a stale redelivery
  and is dropped as late.

**Incremental features.** Every window of a segment carries the segment's :class:`WindowCache`, a
scratch space in which a feature extractor may keep per-position partial results (a Welch segment's
periodogram, per-block sums) for the next windows. It is sound because a received sample is
written once and never changes within a segment: in every window with ``missing_fraction == 0``
the sample at segment position ``p`` has the same value. Windows with interpolated samples must not
read or feed the cache (their filled values depend on the window). A restart starts a new segment,
hence an empty cache; :meth:`Windower.state` does not save it (a restored windower starts cold).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pipeline.errors import ConfigError
from pipeline.frames import Frame
from pipeline.validation import check_range

__all__ = ["Window", "WindowCache", "WindowSpec", "WindowStats", "Windower"]


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """Length, hop and tolerances of a sliding window.

    Attributes
    ----------
    length_s : float
        Window length, s.
    hop_s : float
        Time between the starts of consecutive windows, s.
    max_missing : float
        Largest fraction of missing samples (in ``[0, 1)``) a released window may have; a window
        missing more is not released and is counted in :attr:`WindowStats.incomplete`.
    reorder_frames : int
        Tolerated lateness, in frames: a frame arriving after up to this many higher-numbered frames
        still counts; an incomplete window is judged once a frame more than this many frames past
        its last frame has arrived.
    """

    length_s: float
    hop_s: float
    max_missing: float = 0.1
    reorder_frames: int = 2

    def __post_init__(self) -> None:
        check_range("length_s", self.length_s, 0.0, 3600.0, low_inclusive=False, unit="s")
        check_range("hop_s", self.hop_s, 0.0, 3600.0, low_inclusive=False, unit="s")
        check_range("max_missing", self.max_missing, 0.0, 1.0, high_inclusive=False)
        if isinstance(self.reorder_frames, bool) or not isinstance(self.reorder_frames, int) or not (
            0 <= self.reorder_frames <= 10_000
        ):
            raise ConfigError(f"reorder_frames must be an integer in [0, 10000], got {self.reorder_frames!r}")

    def n_length(self, sample_rate: float) -> int:
        """Window length in samples at ``sample_rate`` Hz (at least 1)."""
        return max(1, int(round(self.length_s * sample_rate)))

    def n_hop(self, sample_rate: float) -> int:
        """Hop in samples at ``sample_rate`` Hz (at least 1)."""
        return max(1, int(round(self.hop_s * sample_rate)))


@dataclass(slots=True, eq=False)
class WindowCache:
    """Scratch space shared by the windows of one segment of one :class:`Windower`.

    Owned by the windower, opaque to it: extractors store what they like in :attr:`store`, under
    keys of their own, indexed by segment positions (see the module docstring for when that is
    sound). Entries they no longer need (positions before the current window) are theirs to evict.

    Attributes
    ----------
    n_length, n_hop : int
        Window length and hop of the segment, samples.
    store : dict
        The extractors' entries.
    """

    n_length: int
    n_hop: int
    store: dict[Any, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, eq=False)
class Window:
    """One completed window of one stream.

    Attributes
    ----------
    index : int
        Window number: ``k`` of the grid in the first segment, strictly increasing over the stream's
        life (also across restarts).
    start_ns, end_ns : int
        Capture-time span, ns since the Unix epoch (device clock); ``end_ns`` is exclusive.
    sample_rate : float
        Hz.
    channels, units : tuple of str
        As in the frames.
    data : numpy.ndarray
        float64, shape ``(n_channels, n_window_samples)``; missing samples linearly interpolated.
    last_seq : int
        Sequence number of the frame holding the window's last sample.
    last_send_ns : int
        ``send_ns`` of the frame whose arrival released the window (for end-to-end latency).
    missing_fraction : float
        Fraction of the window's samples that were missing and interpolated.
    start_sample : int
        Position of the first sample within the segment (``k * hop``), samples.
    base_seq, n_frame : int
        The segment: sequence number of its first frame, samples per frame.
    missing_frames : tuple of int
        Frames (numbered within the segment) whose samples were missing and interpolated.
    cache : WindowCache or None
        The segment's cache (None for windows not made by a :class:`Windower`); usable only when
        ``missing_fraction == 0``.
    """

    index: int
    start_ns: int
    end_ns: int
    sample_rate: float
    channels: tuple[str, ...]
    units: tuple[str, ...]
    data: np.ndarray
    last_seq: int
    last_send_ns: int
    missing_fraction: float
    start_sample: int = 0
    cache: WindowCache | None = field(default=None, repr=False)
    base_seq: int = 0
    n_frame: int = 0
    missing_frames: tuple[int, ...] = ()

    def content_id(self) -> bytes:
        """Canonical bytes of what the window holds: segment, position, capture span, gaps.

        Two windows with equal ``content_id`` were cut from the same frames of the same segment at
        the same place; the privacy engine binds its noise to it, so a window index that comes to
        cover other data (a rebuilt grid, a reboot) never reuses noise.
        """
        return b"w1|%d|%d|%r|%d|%d|%d|%d|%s" % (
            self.base_seq, self.n_frame, self.sample_rate, self.start_sample, len(self.channels),
            self.start_ns, self.end_ns, ",".join(map(str, self.missing_frames)).encode(),
        )


@dataclass(slots=True)
class WindowStats:
    """Plain counters of a :class:`Windower` (read them, don't write them)."""

    frames: int = 0  #: frames pushed
    accepted: int = 0  #: frames written into the buffer
    duplicates: int = 0  #: frames whose seq was already received
    reordered: int = 0  #: accepted frames that arrived after a higher seq
    late: int = 0  #: frames dropped because every window they belong to was already judged
    gaps: int = 0  #: forward jumps in the sequence numbers (events)
    skipped_frames: int = 0  #: frames skipped by those jumps (some may arrive later, reordered)
    incomplete: int = 0  #: windows not released (too many missing samples, or cut by a restart)
    restarts: int = 0  #: new segments after a rate/channel/frame-length change or a device reboot
    released: int = 0  #: windows released
    nonfinite_samples: int = 0  #: NaN or infinite samples in accepted frames (filled like missing ones)

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return asdict(self)


@dataclass(slots=True)
class _Segment:
    """Geometry and buffer of the current segment (run of frames with constant format)."""

    sample_rate: float
    channels: tuple[str, ...]
    units: tuple[str, ...]
    n_frame: int  # samples per frame
    base_seq: int
    index_offset: int  # window index = index_offset + k
    n_len: int
    n_hop: int
    capacity: int
    ring: np.ndarray  # (n_channels, capacity) float64
    next_k: int  # next window to judge
    max_rel: int  # highest relative seq received
    high: int  # highest position written (exclusive)
    received: dict[int, int] = field(default_factory=dict)  # relative seq -> capture_ns
    ordered: bool = True  # received's keys were inserted in increasing order (its order is sorted)
    nonfinite: set[int] = field(default_factory=set)  # relative seqs of frames holding NaN or inf
    last_capture_ns: int = 0
    cache: WindowCache | None = None  # created with the segment


class Windower:
    """Incremental sliding windows over the frames of one stream of one device.

    Parameters
    ----------
    spec : WindowSpec
        Window length, hop and tolerances.

    Notes
    -----
    Memory is one ring buffer of ``length + (reorder_frames + 3) * frame_length`` samples per
    channel. See the module docstring for the rules on gaps, duplicates, reordering and restarts.
    """

    def __init__(self, spec: WindowSpec) -> None:
        if not isinstance(spec, WindowSpec):
            raise ConfigError(f"spec must be a WindowSpec, got {type(spec).__name__}")
        self.spec = spec
        self.stats = WindowStats()
        self._seg: _Segment | None = None
        self._next_index = 0  # first index a new segment may use

    # ------------------------------------------------------------------ public API
    def push(self, frame: Frame) -> list[Window]:
        """Add one frame; return the windows it completed, in index order (usually 0 or 1)."""
        self.stats.frames += 1
        out: list[Window] = []
        seg = self._seg
        n = frame.samples.shape[1]  # frame.n_samples
        if seg is not None and (
            frame.sample_rate != seg.sample_rate
            or (frame.channels is not seg.channels and frame.channels != seg.channels)
            or (frame.units is not seg.units and frame.units != seg.units)
            or n != seg.n_frame
        ):
            self._restart()
            seg = None
        if seg is not None and frame.seq < seg.base_seq:
            if frame.capture_ns > seg.last_capture_ns:  # the device rebooted and counts from 0 again
                self._restart()
                seg = None
            else:
                self.stats.late += 1
                return out
        if seg is None:
            seg = self._new_segment(frame)
        rel = frame.seq - seg.base_seq
        if rel < seg.max_rel - seg.capacity // n - 1 and frame.capture_ns > seg.last_capture_ns:
            # far behind but newer in time: the device rebooted and counts again from a lower seq
            self._restart()
            seg = self._new_segment(frame)
            rel = frame.seq - seg.base_seq
        if rel in seg.received:
            self.stats.duplicates += 1
            return out
        fs = rel * n
        fe = fs + n
        w_lo = seg.next_k * seg.n_hop
        if fe <= w_lo:
            self.stats.late += 1
            return out
        if rel > seg.max_rel:
            if seg.max_rel >= 0 and rel > seg.max_rel + 1:
                self.stats.gaps += 1
                self.stats.skipped_frames += rel - seg.max_rel - 1
            new_max = rel
        else:
            if seg.max_rel >= 0:
                self.stats.reordered += 1
            new_max = seg.max_rel
            seg.ordered = False
        # judge windows that end before this frame and whose deadline has passed
        if w_lo + seg.n_len <= fs:  # (the next pending window ends before this frame)
            self._judge(seg, new_max, before=fs, send_ns=frame.send_ns, out=out)
            w_lo = seg.next_k * seg.n_hop
        if fe - w_lo > seg.capacity:  # cannot happen with the capacity chosen; never corrupt the ring
            self.stats.late += 1
            return out
        self.stats.accepted += 1
        if frame.nonfinite:
            self.stats.nonfinite_samples += frame.nonfinite
            seg.nonfinite.add(rel)
        seg.max_rel = new_max
        seg.received[rel] = frame.capture_ns
        if frame.capture_ns > seg.last_capture_ns:
            seg.last_capture_ns = frame.capture_ns
        self._write(seg, frame.samples, fs, fs if fs >= w_lo else w_lo)
        if fe > seg.high:
            seg.high = fe
        e = w_lo + seg.n_len  # the next pending window: skip the call while it surely waits
        if e <= seg.high or new_max > (e - 1) // n + self.spec.reorder_frames:
            self._judge(seg, new_max, before=None, send_ns=frame.send_ns, out=out)
        return out

    def flush(self) -> list[Window]:
        """Judge every pending window now (end of a recording): release those complete enough."""
        out: list[Window] = []
        seg = self._seg
        if seg is not None:
            self._judge(seg, 1 << 62, before=None, send_ns=0, out=out, upto=seg.high)
        return out

    def state(self) -> dict[str, Any]:
        """Plain-data snapshot (JSON-compatible) from which :meth:`from_state` rebuilds this windower."""
        seg = self._seg
        seg_state: dict[str, Any] | None = None
        if seg is not None:
            lo = seg.next_k * seg.n_hop
            hi = max(seg.high, lo)
            seg_state = {
                "sample_rate": seg.sample_rate,
                "channels": list(seg.channels),
                "units": list(seg.units),
                "n_frame": seg.n_frame,
                "base_seq": seg.base_seq,
                "index_offset": seg.index_offset,
                "next_k": seg.next_k,
                "max_rel": seg.max_rel,
                "high": seg.high,
                "received": [[k, v] for k, v in sorted(seg.received.items())],
                "last_capture_ns": seg.last_capture_ns,
                "buffer_start": lo,
                "buffer": self._read(seg, lo, hi).tolist(),
            }
        return {"version": 1, "next_index": self._next_index, "stats": self.stats.as_dict(), "segment": seg_state}

    @classmethod
    def from_state(cls, spec: WindowSpec, state: dict[str, Any]) -> Windower:
        """Rebuild a windower from :meth:`state` output (same ``spec``)."""
        self = cls(spec)
        self._next_index = int(state["next_index"])
        self.stats = WindowStats(**state["stats"])
        s = state["segment"]
        if s is not None:
            seg = self._make_segment(
                float(s["sample_rate"]), tuple(s["channels"]), tuple(s["units"]), int(s["n_frame"]),
                int(s["base_seq"]), int(s["index_offset"]),
            )
            seg.next_k = int(s["next_k"])
            seg.max_rel = int(s["max_rel"])
            seg.high = int(s["high"])
            seg.received = {int(k): int(v) for k, v in s["received"]}
            seg.last_capture_ns = int(s["last_capture_ns"])
            buf = np.asarray(s["buffer"], dtype=np.float64).reshape(len(seg.channels), -1)
            if buf.shape[1]:
                self._write(seg, buf, int(s["buffer_start"]), int(s["buffer_start"]))
            self._seg = seg
        return self

    def anchor(self, *, force: bool = True) -> dict[str, Any] | None:
        """The grid anchor of a windower: enough to continue its window indices, no samples.

        Unlike :meth:`state`, no ring buffer is copied (megabytes per checkpoint for a fleet of EEG
        headsets): an evicted (idle) windower keeps only this, and a durable-state record carries it
        for streams whose grid restarted. ``force=False``: None when the grid is the default one
        (first segment at sequence 0, nothing restarted). :meth:`from_anchor` continues the grid.
        """
        seg = self._seg
        if not force and self.stats.restarts == 0 and (seg is None or (seg.base_seq == 0 and seg.index_offset == 0)):
            return None
        anchor: dict[str, Any] = {"next_index": self._next_index, "stats": self.stats.as_dict(), "segment": None}
        if seg is not None:
            anchor["segment"] = {
                "sample_rate": seg.sample_rate, "channels": list(seg.channels), "units": list(seg.units),
                "n_frame": seg.n_frame, "base_seq": seg.base_seq, "index_offset": seg.index_offset,
                "last_capture_ns": seg.last_capture_ns, "max_seq": seg.base_seq + seg.max_rel,
            }
            # the index a restart would continue from (as _restart computes it)
            anchor["end_index"] = seg.index_offset + max(seg.next_k, -(-seg.high // seg.n_hop))
        return anchor

    @classmethod
    def from_anchor(cls, spec: WindowSpec, anchor: dict[str, Any], frame: Frame) -> Windower | None:
        """A windower continuing ``anchor``'s grid for ``frame`` (None: the frame is stale, drop it)."""
        seg = anchor["segment"]
        stats = dict(anchor["stats"])
        if seg is None:
            return cls.from_state(spec, {"version": 1, "next_index": anchor["next_index"], "stats": stats, "segment": None})
        same = (float(seg["sample_rate"]) == frame.sample_rate and tuple(seg["channels"]) == frame.channels
                and tuple(seg["units"]) == frame.units and int(seg["n_frame"]) == frame.n_samples)
        base = int(seg["base_seq"])
        rebooted = frame.seq <= int(seg.get("max_seq", -1)) and frame.capture_ns > int(seg["last_capture_ns"])
        if same and frame.seq >= base and not rebooted:
            # the segment continues: start like _new_segment, on the anchored grid
            n = frame.n_samples
            p0 = (frame.seq - base) * n - spec.reorder_frames * n
            next_k = max(0, -(-p0 // spec.n_hop(frame.sample_rate)))
            state = {"version": 1, "next_index": anchor["next_index"], "stats": stats, "segment": {
                **seg, "next_k": next_k, "max_rel": -1, "high": max(0, p0), "received": [],
                "last_capture_ns": frame.capture_ns, "buffer_start": 0, "buffer": [[] for _ in seg["channels"]]}}
            return cls.from_state(spec, state)
        if frame.capture_ns <= int(seg["last_capture_ns"]):
            # another format or a lower seq, and not newer: a frame of an earlier segment (a rebuild
            # re-reading frames from before the anchored restart, or a stale redelivery); its windows
            # were released (and charged) or discarded before the anchor was taken
            return None
        # a format change, or a reboot (a seq already seen, later capture): a restart after the anchored segment
        stats["restarts"] = int(stats.get("restarts", 0)) + 1
        return cls.from_state(spec, {"version": 1, "next_index": int(anchor["end_index"]), "stats": stats, "segment": None})

    # ------------------------------------------------------------------ internals
    def _make_segment(
        self, rate: float, channels: tuple[str, ...], units: tuple[str, ...], n_frame: int, base_seq: int, offset: int
    ) -> _Segment:
        n_len = self.spec.n_length(rate)
        n_hop = self.spec.n_hop(rate)
        capacity = n_len + (self.spec.reorder_frames + 3) * n_frame + 1
        return _Segment(
            sample_rate=rate, channels=channels, units=units, n_frame=n_frame, base_seq=base_seq,
            index_offset=offset, n_len=n_len, n_hop=n_hop, capacity=capacity,
            ring=np.zeros((len(channels), capacity)), next_k=0, max_rel=-1, high=0,
            cache=WindowCache(n_len, n_hop),
        )

    def _new_segment(self, frame: Frame) -> _Segment:
        first = self._seg is None and self.stats.restarts == 0 and self._next_index == 0
        base = 0 if first else frame.seq
        seg = self._make_segment(
            frame.sample_rate, frame.channels, frame.units, frame.n_samples, base, 0 if first else self._next_index
        )
        # start with the first window that may still be complete (allowing for reordered frames)
        p0 = (frame.seq - base) * frame.n_samples - self.spec.reorder_frames * frame.n_samples
        seg.next_k = max(0, -(-p0 // seg.n_hop))
        seg.high = max(0, p0)
        seg.last_capture_ns = frame.capture_ns
        self._seg = seg
        return seg

    def _restart(self) -> None:
        seg = self._seg
        if seg is None:
            return
        # pending windows that already hold data (start before the highest written position) are lost
        k_end = -(-seg.high // seg.n_hop)
        self.stats.incomplete += max(0, k_end - seg.next_k)
        self._next_index = seg.index_offset + max(seg.next_k, k_end)
        self.stats.restarts += 1
        self._seg = None

    def _write(self, seg: _Segment, samples: np.ndarray, fs: int, lo: int) -> None:
        """Write samples that start at position ``fs`` into the ring, skipping positions < ``lo``."""
        n = samples.shape[1]
        a = lo - fs
        if a >= n:
            return
        start = lo % seg.capacity
        count = n - a
        first = min(count, seg.capacity - start)
        if first == n:  # the whole frame in one run (the usual case): no slice of it needed
            seg.ring[:, start : start + n] = samples
            return
        seg.ring[:, start : start + first] = samples[:, a : a + first]
        if first < count:
            seg.ring[:, : count - first] = samples[:, a + first :]

    def _read(self, seg: _Segment, lo: int, hi: int) -> np.ndarray:
        count = hi - lo
        start = lo % seg.capacity
        first = min(count, seg.capacity - start)
        if first == count:
            return seg.ring[:, start : start + count].copy()
        return np.concatenate((seg.ring[:, start:], seg.ring[:, : count - first]), axis=1)

    def _judge(
        self, seg: _Segment, max_rel: int, *, before: int | None, send_ns: int, out: list[Window], upto: int | None = None
    ) -> None:
        """Judge pending windows in order while each is complete or past its deadline.

        ``before``: only windows ending at or before this position. ``upto``: at flush, only windows
        ending at or before the highest written position.
        """
        n = seg.n_frame
        reorder = self.spec.reorder_frames
        while True:
            k = seg.next_k
            s = k * seg.n_hop
            e = s + seg.n_len
            if before is not None and e > before:
                return
            if upto is not None and e > upto:
                return
            last_frame = (e - 1) // n
            first_frame = s // n
            deadline = max_rel > last_frame + reorder  # a frame `reorder` frames late still counts
            if not deadline and e > seg.high:  # samples past the highest written one: surely incomplete
                return
            if s >= seg.high and deadline:
                # nothing received at or after s: every window up to the deadline is empty
                limit_e = (max_rel - reorder) * n
                if before is not None:
                    limit_e = min(limit_e, before)
                if upto is not None:
                    limit_e = min(limit_e, upto)
                k_end = (limit_e - seg.n_len) // seg.n_hop
                count = max(1, k_end - k + 1)
                self.stats.incomplete += count
                self._advance(seg, k + count)
                continue
            missing = 0
            missing_frames: list[int] = []
            for f in range(first_frame, last_frame + 1):
                if f not in seg.received:
                    missing_frames.append(f)
                    missing += min(e, (f + 1) * n) - max(s, f * n)
            if missing and not deadline:
                return
            frac = missing / seg.n_len
            if frac > self.spec.max_missing:
                self.stats.incomplete += 1
            else:
                out.append(self._make_window(seg, k, s, e, missing_frames, frac, send_ns))
                self.stats.released += 1
            self._advance(seg, k + 1)

    def _advance(self, seg: _Segment, k: int) -> None:
        seg.next_k = k
        lo_frame = (k * seg.n_hop) // seg.n_frame
        keep = lo_frame - seg.capacity // seg.n_frame - 1  # remember a little more, to catch duplicates
        received = seg.received
        if seg.ordered:  # the oldest entries come first: drop them from the front (no scan, no copy)
            while received:
                f = next(iter(received))
                if f >= keep:
                    break
                del received[f]
        elif received and min(received) < keep:
            seg.received = dict(sorted((f, c) for f, c in received.items() if f >= keep))
            seg.ordered = True
        if seg.nonfinite and min(seg.nonfinite) < keep:
            seg.nonfinite = {f for f in seg.nonfinite if f >= keep}

    def _make_window(
        self, seg: _Segment, k: int, s: int, e: int, missing_frames: list[int], frac: float, send_ns: int
    ) -> Window:
        data = self._read(seg, s, e)
        n = seg.n_frame
        if missing_frames:
            present = np.ones(e - s, dtype=bool)
            for f in missing_frames:
                present[max(0, f * n - s) : min(e - s, (f + 1) * n - s)] = False
            idx = np.flatnonzero(present)
            gaps = np.flatnonzero(~present)
            for row in data:
                row[gaps] = np.interp(gaps, idx, row[idx])
        cache = seg.cache
        if seg.nonfinite and any(f in seg.nonfinite for f in range(s // n, (e - 1) // n + 1)):
            _fill_nonfinite(data)
            cache = None  # filled values depend on the window: keep them out of the segment's cache
        # capture time from the first received frame overlapping the window
        rate = seg.sample_rate
        start_ns = 0
        for f in range(s // n, (e - 1) // n + 1):
            cap = seg.received.get(f)
            if cap is not None:
                start_ns = cap + int(round((s - f * n) * 1e9 / rate))
                break
        end_ns = start_ns + int(round(seg.n_len * 1e9 / rate))
        return Window(
            index=seg.index_offset + k,
            start_ns=start_ns,
            end_ns=end_ns,
            sample_rate=rate,
            channels=seg.channels,
            units=seg.units,
            data=data,
            last_seq=seg.base_seq + (e - 1) // n,
            last_send_ns=send_ns,
            missing_fraction=float(frac),
            start_sample=s,
            cache=cache,
            base_seq=seg.base_seq,
            n_frame=n,
            missing_frames=tuple(missing_frames),
        )


def _fill_nonfinite(data: np.ndarray) -> None:
    """Replace NaN and infinite samples in place by linear interpolation along each channel."""
    for row in data:
        bad = ~np.isfinite(row)
        if bad.any():
            good = np.flatnonzero(~bad)
            if good.size:
                row[bad] = np.interp(np.flatnonzero(bad), good, row[good])
            else:
                row[:] = np.nan


def n_windows(n_samples: int, spec: WindowSpec, sample_rate: float) -> int:
    """Number of complete windows in a gap-free recording of ``n_samples`` samples."""
    L, h = spec.n_length(sample_rate), spec.n_hop(sample_rate)
    return 0 if n_samples < L else (n_samples - L) // h + 1

