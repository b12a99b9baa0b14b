"""The processing core: frame bytes in, privatized releases and dead letters out.

:class:`Processor` knows nothing of Kafka or Faust. The worker shell (:mod:`pipeline.app`) hands
it each message's key and value and sends what comes back; tests and benchmarks call it
directly. Per device, stream and feature set it keeps one :class:`~pipeline.windows.Windower`;
every completed window goes through the feature set's ``compute`` and then through the privacy
engine, which either returns a noised release or a suppression (budget exhausted). Nothing else
leaves: a release holds only privatized values and the public description of their noise, under
the device's keyed pseudonym; channel names in feature names are standard electrode names or
indices (:mod:`pipeline.channels`).

Every :class:`Outcome` lists the devices whose durable *header* (privacy lineage, noise key of the
day) changed while processing the message (``headers``): the worker writes those ahead, before it
publishes the outcome's releases, so that a re-release after a crash uses the same noise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.channels import public_channel_names
from pipeline.errors import FrameError
from pipeline.features import FeatureSet, feature_sets
from pipeline.features.spec import FeatureSpec
from pipeline.frames import Frame, decode_frame
from pipeline.named import NamedValues
from pipeline.privacy import PrivacyEngine, PrivateRelease, ReleaseRequest, Suppression
from pipeline.releases import ReleaseRecord, release_record, suppression_event
from pipeline.state import history_frames
from pipeline.study import ReportBuilder, Study
from pipeline.windows import Window, Windower, WindowSpec


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not be processed, with why. ``value`` is the original bytes."""

    reason: str
    detail: str
    key: bytes | None
    value: bytes


@dataclass(frozen=True, slots=True)
class FrameRef:
    """Identity of the frame a message held (no samples): what the state tracker needs."""

    device_id: str
    stream: str
    seq: int
    n_samples: int
    sample_rate: float
    capture_ns: int


@dataclass(slots=True)
class Outcome:
    """What one message produced: releases to publish, dead letters, operational events.

    ``frame`` identifies the frame when the message decoded to one (``None`` for dead letters);
    ``replayed`` counts windows answered from the ledger (already released or suppressed before:
    not published again, see :meth:`Processor.process_frame`); ``headers`` are the devices whose
    durable header must be written before the releases are published.
    """

    releases: list[ReleaseRecord] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    frame: FrameRef | None = None
    replayed: int = 0
    headers: set[str] = field(default_factory=set)


@dataclass(slots=True)
class ProcessorStats:
    """Counters since start (plain data; the worker logs them periodically)."""

    frames: int = 0
    dead_letters: int = 0
    releases: int = 0
    suppressed: int = 0
    feature_errors: int = 0
    replayed: int = 0
    busy_ns: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)  # dead letters by reason
    frames_by_stream: dict[str, int] = field(default_factory=dict)
    releases_by_set: dict[str, int] = field(default_factory=dict)
    suppressed_by_reason: dict[str, int] = field(default_factory=dict)


class Processor:
    """Turns frames into privatized releases.

    Parameters
    ----------
    engine : PrivacyEngine
        Privatizes and accounts every release.
    pseudonym : callable
        ``device_id -> pseudonym`` (keyed HMAC; see :meth:`pipeline.privacy.KeyProvider.pseudonym`).
    windows : mapping, optional
        Window overrides per feature-set name (``{"eeg": WindowSpec(4.0, 1.0)}``).
    clock : callable
        ``() -> ns``; stamped on releases as ``t_release_ns`` (a header, not part of the value).
    idle_clock : callable
        ``() -> seconds`` (monotonic); when a device last sent a frame, for :meth:`evict_idle`.
    """

    def __init__(
        self,
        engine: PrivacyEngine,
        pseudonym: Callable[[str], str],
        *,
        windows: Mapping[str, WindowSpec] | None = None,
        clock: Callable[[], int] = time.time_ns,
        idle_clock: Callable[[], float] = time.monotonic,
        study: Study | None = None,
    ) -> None:
        self.engine = engine
        #: What is released (None: every window of every feature set, the per-window mode).
        self.study = study
        self.reports = ReportBuilder(study, engine.keys.tag) if study is not None else None
        #: Study mode: per feature set, the features its reports read (extractors may skip the others).
        self._needed: dict[str, frozenset[str]] = (
            {name: frozenset(f.base for f in s.features) for name, s in study.sets.items()} if study is not None else {}
        )
        self._pseudonym = pseudonym
        self._window_overrides = dict(windows or {})
        self._clock = clock
        self._sets: dict[str, tuple[FeatureSet, ...]] = {}
        self._active: dict[str, tuple[FeatureSet, ...]] = {}  # stream -> _active_sets(stream)
        self._windowers: dict[tuple[str, str, str], Windower] = {}
        self._specs: dict[tuple[str, tuple[str, ...], float], tuple[FeatureSpec, ...]] = {}
        self._raw_names: dict[tuple[str, tuple[str, ...], float], tuple[str, ...]] = {}
        self._public_names: dict[tuple[str, tuple[str, ...], float], tuple[str, ...]] = {}
        self._pseudonyms: dict[str, str] = {}
        self._history: dict[tuple[str, float, int], int] = {}
        self._idle_clock = idle_clock
        self._last_seen: dict[str, float] = {}  # device -> idle_clock() of its last frame
        self._parked: dict[tuple[str, str, str], dict[str, Any]] = {}  # grid anchors of evicted windowers
        self._anchored: set[str] = set()  # devices with a restarted stream or a parked anchor
        self.evicted = 0  # windowers evicted since start
        self.stats = ProcessorStats()
        #: Devices whose ledger changed (fresh charge or suppression) since the caller last cleared it.
        self.dirty_devices: set[str] = set()

    # -- entry points -------------------------------------------------------------------------

    def process(self, value: bytes, key: bytes | None = None) -> Outcome:
        """Decode, validate and process one message (Kafka key and value)."""
        t0 = time.perf_counter_ns()
        try:
            frame = decode_frame(value)
            if key is not None and key != frame.device_id.encode():
                raise FrameError(
                    "key_mismatch", f"Kafka key {key[:64]!r} is not the frame's device id {frame.device_id!r}"
                )
        except FrameError as exc:
            self.stats.dead_letters += 1
            self.stats.by_reason[exc.reason] = self.stats.by_reason.get(exc.reason, 0) + 1
            self.stats.busy_ns += time.perf_counter_ns() - t0
            return Outcome(dead_letters=[DeadLetter(exc.reason, exc.detail, key, bytes(value))])
        out = self.process_frame(frame)
        self.stats.busy_ns += time.perf_counter_ns() - t0
        return out

    def process_frame(self, frame: Frame) -> Outcome:
        """Process one validated frame.

        A window the privacy engine recognizes as a replay (its index is at or below the last one
        the ledger recorded for the stream: the frame was redelivered after a crash or rebalance)
        yields nothing: it was published, or suppressed, when it was first seen. It is counted in
        ``Outcome.replayed`` and ``stats.replayed``. Fresh windows are charged once and released.
        """
        self.stats.frames += 1
        by_stream = self.stats.frames_by_stream
        by_stream[frame.stream] = by_stream.get(frame.stream, 0) + 1
        out = Outcome(
            frame=FrameRef(frame.device_id, frame.stream, frame.seq, frame.samples.shape[1], frame.sample_rate,
                           frame.capture_ns)
        )
        self._last_seen[frame.device_id] = self._idle_clock()
        active = self._active.get(frame.stream)
        if active is None:
            active = self._active[frame.stream] = self._active_sets(frame.stream)
        for fs in active:
            wkey = (frame.device_id, frame.stream, fs.name)
            windower = self._windowers.get(wkey)
            if windower is None:
                anchor = self._parked.get(wkey)
                if anchor is None:
                    windower = Windower(fs.window)
                else:
                    restored = Windower.from_anchor(fs.window, anchor, frame)
                    if restored is None:  # a stale frame of the evicted segment: late, as it would have been
                        continue
                    windower = restored
                    del self._parked[wkey]
                self._windowers[wkey] = windower
            restarts = windower.stats.restarts
            for window in windower.push(frame):
                self._release(frame, fs, window, out)
            if windower.stats.restarts != restarts:
                self.dirty_devices.add(frame.device_id)  # a new grid anchor to checkpoint
                self._anchored.add(frame.device_id)
        unsaved = self.engine.take_unsaved_headers()
        if unsaved:
            out.headers = unsaved
            self.dirty_devices |= unsaved
        return out

    # -- internals ----------------------------------------------------------------------------

    def _feature_sets(self, stream: str) -> tuple[FeatureSet, ...]:
        sets = self._sets.get(stream)
        if sets is None:
            sets = self._sets[stream] = feature_sets(stream, self._window_overrides)
        return sets

    def _active_sets(self, stream: str) -> tuple[FeatureSet, ...]:
        """The stream's feature sets whose windows are cut: all of them, or in study mode those the
        study asks for (for the others no window is even cut)."""
        sets = self._feature_sets(stream)
        if self.study is None:
            return sets
        return tuple(fs for fs in sets if fs.name in self.study.sets)

    def _specs_for(self, fs: FeatureSet, window: Window) -> tuple[FeatureSpec, ...]:
        """The set's specs for the window's layout, named with public channel labels (same order
        as the values ``compute`` returns for the device's own channel names)."""
        key = (fs.name, window.channels, window.sample_rate)
        specs = self._specs.get(key)
        if specs is None:
            specs = self._specs[key] = fs.specs(public_channel_names(window.channels), window.sample_rate)
            self._raw_names[key] = tuple(s.name for s in fs.specs(window.channels, window.sample_rate))
        return specs

    def _names_for(self, fs: FeatureSet, window: Window) -> tuple[str, ...]:
        """The public feature names of :meth:`_specs_for`, in order."""
        key = (fs.name, window.channels, window.sample_rate)
        names = self._public_names.get(key)
        if names is None:
            names = self._public_names[key] = tuple(s.name for s in self._specs_for(fs, window))
        return names

    def _array(self, values: Mapping[str, float], fs: FeatureSet, window: Window) -> Any:
        """A dict of feature values as an array in spec order (the device's channel names may
        differ from the public names of the specs; the order is the same)."""
        self._specs_for(fs, window)
        names = self._raw_names[(fs.name, window.channels, window.sample_rate)]
        return np.fromiter((values[n] for n in names), dtype=np.float64, count=len(names))

    def pseudonym(self, device_id: str) -> str:
        """The device's pseudonym (cached)."""
        p = self._pseudonyms.get(device_id)
        if p is None:
            p = self._pseudonyms[device_id] = self._pseudonym(device_id)
        return p

    def _release(self, frame: Frame, fs: FeatureSet, window: Window, out: Outcome) -> None:
        try:
            values = fs.compute(window, self._needed.get(fs.name))
        except Exception as exc:  # noqa: BLE001 - a feature bug must not kill the worker
            self.stats.feature_errors += 1
            out.events.append(
                {"event": "feature_error", "pseudonym": self.pseudonym(frame.device_id), "stream": frame.stream,
                 "feature_set": fs.name, "window_index": window.index, "error": type(exc).__name__}
            )
            return
        if self.reports is not None:
            self._report(frame, fs, window, values, out)
            return
        request = ReleaseRequest(
            device_id=frame.device_id,
            stream=frame.stream,
            feature_set=fs.name,
            window_index=window.index,
            hop_s=fs.window.hop_s,
            length_s=fs.window.length_s,
            start_ns=window.start_ns,
            end_ns=window.end_ns,
            # an array in spec order spares the engine a per-name lookup of hundreds of values
            values=values.array if isinstance(values, NamedValues) else self._array(values, fs, window),
            specs=self._specs_for(fs, window),
            content=window.content_id(),
        )
        self._privatize(request, window, out)

    def _report(self, frame: Frame, fs: FeatureSet, window: Window, values: Mapping[str, float], out: Outcome) -> None:
        """Study mode: add the window to its period; privatize the reports of the periods it closed."""
        assert self.reports is not None and self.study is not None
        array = values.array if isinstance(values, NamedValues) else self._array(values, fs, window)
        closed = self.reports.add_array(frame.device_id, frame.stream, fs.name, window.index, window.start_ns,
                                        window.end_ns, self._names_for(fs, window), array)
        for report in closed:
            s = self.study.sets[fs.name]
            request = ReleaseRequest(
                device_id=report.device_id,
                stream=report.stream,
                feature_set=report.feature_set,
                window_index=report.period,
                hop_s=float(s.period_s),
                length_s=float(s.period_s),
                start_ns=report.start_ns,
                end_ns=report.end_ns,
                values=report.values,
                specs=s.specs,
                content=report.content,
                epsilon=s.epsilon_per_report,
            )
            self._privatize(request, window, out, s.design())

    def _privatize(self, request: ReleaseRequest, window: Window, out: Outcome,
                   design: dict[str, Any] | None = None) -> None:
        replayed_before = self.engine.stats["replayed"]
        result = self.engine.privatize(request)
        if self.engine.stats["replayed"] != replayed_before:
            out.replayed += 1
            self.stats.replayed += 1
            return
        self.dirty_devices.add(request.device_id)
        pseudonym = self.pseudonym(request.device_id)
        if isinstance(result, PrivateRelease):
            self.stats.releases += 1
            by_set = self.stats.releases_by_set
            by_set[request.feature_set] = by_set.get(request.feature_set, 0) + 1
            out.releases.append(release_record(result, request, pseudonym, window, self._clock(), design))
        elif isinstance(result, Suppression):
            self.stats.suppressed += 1
            by_reason = self.stats.suppressed_by_reason
            by_reason[result.reason] = by_reason.get(result.reason, 0) + 1
            out.events.append(suppression_event(result, request, pseudonym))
        else:  # pragma: no cover - engine contract
            raise TypeError(f"privacy engine returned {type(result).__name__}")

    def header_records(self, devices: set[str]) -> dict[str, dict[str, Any]]:
        """Durable headers of ``devices`` (lineage, day keys), to write ahead of their releases."""
        return self.engine.headers(devices)

    def history_frames(self, ref: FrameRef) -> int:
        """How many frames back a pending window of ``ref``'s stream may reach (for rebuilds)."""
        key = (ref.stream, ref.sample_rate, ref.n_samples)
        n = self._history.get(key)
        if n is None:
            n = self._history[key] = max(
                (history_frames(fs.window.length_s, fs.window.hop_s, fs.window.reorder_frames, ref.sample_rate, ref.n_samples)
                 for fs in self._feature_sets(ref.stream)),
                default=1,
            )
        return n

    def devices(self) -> set[str]:
        """Device ids that currently have window state."""
        return {dev for dev, _stream, _fs in self._windowers}

    def forget_devices(self, devices: set[str]) -> None:
        """Drop the window state of ``devices`` (their partitions moved, or are being rebuilt)."""
        if devices:
            self._windowers = {k: w for k, w in self._windowers.items() if k[0] not in devices}
            self._parked = {k: a for k, a in self._parked.items() if k[0] not in devices}
            for d in devices:
                self._last_seen.pop(d, None)
            self._anchored -= devices
            self.dirty_devices -= devices
            if self.reports is not None:  # their open periods: a rebuild re-adds what it re-reads
                self.reports.forget(devices)

    def evict_idle(self, idle_s: float) -> set[str]:
        """Evict the window state of devices without a frame for ``idle_s`` (``idle_clock`` seconds).

        Each evicted windower (a ring buffer: up to megabytes for a 64-channel EEG) is replaced by
        its *grid anchor* (segment format, ``base_seq``, window index offset, a few hundred bytes),
        so a device that comes back keeps its window indices, also after a rate change or reboot:
        window ``k`` of the resumed stream is the window ``k`` it would have been. What is lost:
        the samples of windows still pending when the device went silent (with a silence longer
        than any window, these could only be released as mostly interpolated). The privacy ledger
        is not touched (it is small and must outlive the windows). Returns the evicted devices.
        """
        cutoff = self._idle_clock() - idle_s
        idle = {d for d, t in self._last_seen.items() if t < cutoff}
        if not idle:
            return idle
        for wkey in [k for k in self._windowers if k[0] in idle]:
            anchor = self._windowers.pop(wkey).anchor()
            assert anchor is not None  # force=True always anchors
            self._parked[wkey] = anchor
            self._anchored.add(wkey[0])
            self.evicted += 1
        for d in idle:
            del self._last_seen[d]
            self._pseudonyms.pop(d, None)
        return idle

    def anchors(self, device_id: str) -> dict[str, dict[str, Any]]:
        """Grid anchors of the device's streams that a fresh windower would not reproduce.

        Keyed ``"<stream>/<feature set>"``. A stream whose grid is still the first one (``base_seq``
        0, index offset 0, no restart) needs none: a new windower has the same grid. Written to
        the device's state record so that a rebuild after a restart re-indexes windows exactly.
        """
        out: dict[str, dict[str, Any]] = {}
        if device_id not in self._anchored:
            return out
        for (dev, stream, fs_name), w in self._windowers.items():
            if dev == device_id:
                a = w.anchor(force=False)
                if a is not None:
                    out[f"{stream}/{fs_name}"] = a
        for (dev, stream, fs_name), a in self._parked.items():
            if dev == device_id:
                out[f"{stream}/{fs_name}"] = a
        return out

    def park(self, device_id: str, anchors: Mapping[str, dict[str, Any]]) -> None:
        """Install grid anchors (from :meth:`anchors`, via the state topic) for the device's next frames."""
        self._anchored.add(device_id)
        for name, a in anchors.items():
            stream, _, fs_name = name.partition("/")
            self._windowers.pop((device_id, stream, fs_name), None)
            self._parked[(device_id, stream, fs_name)] = a

    def parked(self) -> int:
        """Evicted windowers whose grid anchor is kept."""
        return len(self._parked)

    def window_stats(self) -> dict[str, dict[str, int]]:
        """Summed window counters per feature set (plain data)."""
        totals: dict[str, dict[str, int]] = {}
        for (_dev, _stream, fs_name), w in self._windowers.items():
            agg = totals.setdefault(fs_name, {})
            for k, v in w.stats.as_dict().items():
                agg[k] = agg.get(k, 0) + int(v)
        return totals

