"""The stream worker: a thin faust-streaming shell around :class:`~pipeline.processor.Processor`.

One agent consumes the three raw topics (``<prefix>raw.eeg|audio|bio``), keyed by device id so
each device's frames arrive in order on one partition. For every message it calls the processor
and sends what comes back:

* releases to ``<prefix>private.features`` (key = pseudonym, value = JSON release);
* dead letters to ``<prefix>deadletter``: the original bytes unchanged, with the reason in the
  headers ``biopriv-reason``, ``biopriv-detail``, ``biopriv-source`` (topic/partition/offset);
* operational events (suppressed releases, feature errors) to ``<prefix>events``.

Latency settings, and why:

* producer linger 0: a release is sent as soon as it exists, not batched;
* the consumer's fetch returns as soon as one byte is available (``fetch_min_bytes=1``) and an
  idle fetch waits at most ``fetch_max_wait_ms`` = 10 ms (:data:`CONSUMER_SETTINGS`). Faust
  hard-codes 1,500 ms there; :class:`LowLatencyTransport` lowers it, because aiokafka keeps one
  fetch in flight per broker and a partition whose records were just consumed is not in that
  fetch: its next frame would otherwise wait up to 1.5 s for an idle fetch to return;
* ``stream_wait_empty=False``, ``web_enabled=False``: no waiting on shutdown for buffers, no
  web server in the worker.

Fairness and bounded memory (``docs/operations.md``, "Backpressure and floods"): Faust delivers
each fetched batch round-robin over partitions into one agent queue, so a partition with a backlog
delays the others by its batch plus the queue. Faust's defaults (4 MiB fetched per partition,
4,096 queued messages) let one flooding device add seconds (measured: 6.1 s p50, 8.7 s max) to the
devices on other partitions; ``consumer_max_fetch_size`` = 64 KiB and ``stream_buffer_maxsize`` =
1,024 (:class:`WorkerSettings`, ``--fetch-bytes``, ``--stream-buffer``) bring that to about 0.25 s
p50 / 0.9 s max, and bound what a worker buffers: a full queue pauses fetching, so a burst waits
in Kafka, not in the worker's memory. Devices silent for ``device_idle_s`` have their windows
evicted (:meth:`~pipeline.processor.Processor.evict_idle`).

Durable state (:mod:`pipeline.state`, ``docs/operations.md``): every ``checkpoint_interval_s`` the
worker snapshots the ledger (and the window-grid anchors of restarted streams) of the devices that
changed and the resume offset of each raw partition it owns, waits until every release sent so far
is acknowledged, writes the device records to ``<prefix>state``, waits again, then writes the
resume offsets. The first message of a newly assigned raw partition triggers its recovery: the
partition's ledger records are loaded into the privacy engine, grid anchors are parked in the
processor, and ``[resume, first offset)`` is re-fed to the processor with its output discarded
(Faust flushes the producer before it commits an offset, so that output was published already).
Delivery is at-least-once; a redelivered window is a ledger replay and is not published again, and
a release lost from the ledger between two checkpoints is re-released bit-identically (same
``release_id`` and value bytes; only the ``biopriv-t-release-ns`` header, delivery metadata,
differs). ``exactly_once`` was tried and
is not used (``docs/operations.md``, "exactly_once").
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as faust_aiokafka

from connectors.kafka import CONSUMER_SETTINGS, DEFAULT_BOOTSTRAP, DEFAULT_PARTITIONS, Topics, read_partition
from pipeline.processor import DeadLetter, Outcome, Processor
from pipeline.state import ResumeTracker, device_record, load_partition, merge_ledger, resume_record, split_ledger

log = logging.getLogger("biopriv.worker")

#: Largest dead-letter value published: longer (oversize) originals are cut to this many bytes
#: and carry ``biopriv-truncated: <original length>``, so one huge frame cannot exceed the
#: producer's request size and crash the agent.
DEADLETTER_MAX_VALUE = 900_000


class _LowLatencyConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this when it builds its fetcher in start(), after this point.
        consumer._fetch_max_wait_ms = CONSUMER_SETTINGS["fetch_max_wait_ms"]
        return consumer


class _LowLatencyConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _LowLatencyConsumerThread(self, loop=self.loop, beacon=self.beacon)


class LowLatencyTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with a short fetch wait (see the module docstring)."""

    Consumer = _LowLatencyConsumer


TRANSPORTS.aliases["biopriv"] = f"{__name__}:LowLatencyTransport"


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker needs to start; defaults suit the local broker."""

    bootstrap: str = DEFAULT_BOOTSTRAP
    group: str = "biopriv-worker"
    topics: Topics = field(default_factory=Topics)
    partitions: int = DEFAULT_PARTITIONS
    privacy_config: Path | None = None
    key_file: Path = Path(".biopriv/keys.json")
    stats_interval_s: float = 10.0
    data_dir: Path = Path(".biopriv/worker")
    checkpoint_interval_s: float = 1.0
    session_timeout_s: float = 10.0
    processing_guarantee: str = "at_least_once"
    state_idle_s: float = 600.0
    #: Messages the agent's input queue holds (Faust ``stream_buffer_maxsize``; Faust's default is 4,096).
    stream_buffer: int = 1024
    #: Bytes fetched per partition and request (Faust ``consumer_max_fetch_size``; Faust's default is 4 MiB).
    fetch_bytes_per_partition: int = 64 * 1024
    #: Window state of a device silent this long (wall clock, s) is evicted (its grid anchor kept).
    device_idle_s: float = 600.0


def build_processor(settings: WorkerSettings) -> Processor:
    """The processing core configured from the settings (privacy config, keys)."""
    from pipeline.privacy import PrivacyConfig, PrivacyEngine, load_keys

    config = PrivacyConfig.from_file(settings.privacy_config) if settings.privacy_config else PrivacyConfig.default()
    keys = load_keys(settings.key_file)
    return Processor(PrivacyEngine(config, keys), keys.pseudonym)


def create_app(settings: WorkerSettings, processor: Processor) -> faust.App:
    """The Faust app: one agent over the raw topics, sending the processor's outcome."""
    app = faust.App(
        settings.group,
        broker=f"biopriv://{settings.bootstrap}",
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions,
        producer_linger=0.0,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        stream_wait_empty=False,
        web_enabled=False,
        autodiscover=False,
        datadir=str(settings.data_dir),
        store="memory://",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(0.5, settings.session_timeout_s / 5),
        processing_guarantee=settings.processing_guarantee,
        # fairness and bounded memory under a flood or a backlog (docs/operations.md, "Backpressure")
        stream_buffer_maxsize=settings.stream_buffer,
        consumer_max_fetch_size=settings.fetch_bytes_per_partition,
    )
    t = settings.topics
    source = app.topic(*t.raw_all, key_type=bytes, value_type=bytes)
    private = app.topic(t.private, key_type=bytes, value_type=bytes)
    deadletter = app.topic(t.deadletter, key_type=bytes, value_type=bytes)
    events = app.topic(t.events, key_type=bytes, value_type=bytes)
    state_topic = app.topic(t.state, key_type=bytes, value_type=bytes)
    state = _WorkerState(settings, processor)

    async def publish(outcome: Outcome, source_ref: str) -> None:
        for r in outcome.releases:
            await private.send(key=r.key, value=r.value, headers=[("biopriv-t-release-ns", b"%d" % r.t_release_ns)])
        for d in outcome.dead_letters:
            headers = [
                ("biopriv-reason", d.reason.encode()),
                ("biopriv-detail", d.detail.encode()[:1000]),
                ("biopriv-source", source_ref.encode()),
            ]
            value = d.value
            if len(value) > DEADLETTER_MAX_VALUE:
                headers.append(("biopriv-truncated", str(len(value)).encode()))
                value = value[:DEADLETTER_MAX_VALUE]
            await deadletter.send(key=(d.key or b"")[:1000] or None, value=value, headers=headers)
        for e in outcome.events:
            await events.send(key=str(e.get("pseudonym", "")).encode(), value=json.dumps(e).encode())

    @app.agent(source, name="biopriv-process")
    async def process(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            tp = (msg.topic, msg.partition)
            if tp not in state.recovered:
                await state.recover(tp, msg.offset)
            ref = f"{msg.topic}/{msg.partition}/{msg.offset}"
            value = bytes(msg.value) if isinstance(msg.value, (bytes, bytearray)) else b""
            async with state.lock:
                try:
                    outcome = processor.process(value, msg.key)
                except Exception as exc:  # noqa: BLE001 - keep the worker alive; nothing is lost
                    log.exception("internal error on %s", ref)
                    outcome = Outcome(dead_letters=[DeadLetter("internal_error", repr(exc)[:500], msg.key, value)])
                state.tracker.observe(tp, msg.offset, outcome.frame)
                await publish(outcome, ref)  # enqueued under the lock: a checkpoint flush covers it

    async def checkpoint(partitions: set[int] | None = None) -> None:
        async with state.checkpoint_lock:
            async with state.lock:
                dirty = processor.dirty_devices
                processor.dirty_devices = set()
                if partitions is not None:
                    keep = {d for d in dirty if state.tracker.partition_of(d) not in partitions}
                    processor.dirty_devices |= keep
                    dirty -= keep
                ledger = split_ledger(processor.engine.ledger_state(dirty), dirty) if dirty else {}
                windows = {d: a for d in dirty if (a := processor.anchors(d))}
                owned = [tp for tp in state.recovered if partitions is None or tp[1] in partitions]
                resume = state.tracker.resume_offsets(owned)
                where = {d: state.tracker.partition_of(d) for d in set(ledger) | set(windows)}
            try:
                await app.producer.flush()  # every release charged in `ledger` is acknowledged
                for device, p in where.items():
                    if p is None:
                        continue
                    key, value = device_record(device, ledger.get(device), windows.get(device))
                    await state_topic.send(key=key, value=value, partition=p)
                await app.producer.flush()  # ledger records before the resume offsets that rely on them
                for (topic, partition), offset in resume.items():
                    key, value = resume_record(topic, partition, offset)
                    await state_topic.send(key=key, value=value, partition=partition)
                await app.producer.flush()
            except BaseException:
                processor.dirty_devices |= dirty
                raise
            state.checkpoints += 1

    @app.timer(settings.checkpoint_interval_s)
    async def checkpoint_timer() -> None:
        await checkpoint()
        async with state.lock:  # idle devices' ring buffers go; their grid anchors and ledgers stay
            evicted = processor.evict_idle(settings.device_idle_s)
        if evicted:
            log.info("evicted the window state of %d device(s) idle for %.0f s", len(evicted), settings.device_idle_s)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # mode types omit **kwargs handlers
    async def on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        parts = {tp.partition for tp in revoked if tp.topic in t.raw_all}
        if not parts:
            return
        try:
            await checkpoint(parts)
        except Exception:  # noqa: BLE001 - the next owner rebuilds from the last checkpoint
            log.exception("checkpoint on revocation failed")
        async with state.lock:
            state.drop(parts)

    @app.timer(settings.stats_interval_s)
    async def report_stats() -> None:
        s = processor.stats
        busy_ms = s.busy_ns / 1e6
        log.info(
            "frames=%d releases=%d suppressed=%d replayed=%d dead_letters=%d %s busy=%.0f ms (%.1f us/frame) "
            "checkpoints=%d rebuilt_frames=%d devices=%d parked=%d",
            s.frames, s.releases, s.suppressed, s.replayed, s.dead_letters, s.by_reason or "", busy_ms,
            (s.busy_ns / 1e3 / s.frames) if s.frames else 0.0, state.checkpoints, state.rebuilt_frames,
            len(processor.devices()), processor.parked(),
        )

    return app


class _WorkerState:
    """The shell's bookkeeping for durable state: owned partitions, recovery, checkpoints."""

    def __init__(self, settings: WorkerSettings, processor: Processor) -> None:
        self.settings = settings
        self.processor = processor
        self.tracker = ResumeTracker(processor.history_frames, idle_s=settings.state_idle_s)
        self.lock = asyncio.Lock()  # processing + enqueueing outputs vs. checkpoint snapshots
        self.checkpoint_lock = asyncio.Lock()
        self.recovered: set[tuple[str, int]] = set()
        self.loaded: dict[int, dict[str, int]] = {}  # partition number -> resume offset per raw topic
        self.checkpoints = 0
        self.rebuilt_frames = 0

    def _swap_ledger(self, slices: dict[str, Any], drop: set[str]) -> None:
        engine = self.processor.engine
        self.processor.engine = engine.with_ledger(merge_ledger(engine.ledger_state(), slices, drop=drop))

    def drop(self, partitions: set[int]) -> None:
        """Forget windows, ledger and offsets of devices on revoked partition numbers."""
        devices = self.tracker.devices_on(partitions)
        self.processor.forget_devices(devices)
        if devices:
            self._swap_ledger({}, devices)
        self.tracker.forget(partitions)
        self.recovered = {tp for tp in self.recovered if tp[1] not in partitions}
        for p in partitions:
            self.loaded.pop(p, None)
        log.info("dropped state of partitions %s (%d devices)", sorted(partitions), len(devices))

    async def recover(self, tp: tuple[str, int], first_offset: int) -> None:
        """Load the partition's ledger (once per partition number) and rebuild its windows."""
        loop = asyncio.get_running_loop()
        bootstrap, state_topic = self.settings.bootstrap, self.settings.topics.state
        topic, partition = tp
        t0 = time.monotonic()
        if partition not in self.loaded:
            records = await loop.run_in_executor(None, read_partition, bootstrap, state_topic, partition)
            ps = load_partition((k, v) for k, v, _o in records)
            async with self.lock:
                self.processor.forget_devices(set(ps.devices) | set(ps.windows))
                for device, anchors in ps.windows.items():  # restarted streams' grids, before the rebuild
                    self.processor.park(device, anchors)
                self._swap_ledger(ps.devices, set(ps.devices))
                self.loaded[partition] = ps.resume
            log.info("loaded state partition %d: %d records, %d device ledgers, resume offsets %s",
                     partition, ps.records, len(ps.devices), ps.resume)
        start = self.loaded[partition].get(topic, 0)
        frames = []
        if start < first_offset:
            frames = await loop.run_in_executor(None, read_partition, bootstrap, topic, partition, start, first_offset)
            async with self.lock:
                before = (self.processor.stats.releases, self.processor.stats.replayed)
                for key, value, offset in frames:
                    try:
                        outcome = self.processor.process(value or b"", key)
                    except Exception:  # noqa: BLE001 - it was dead-lettered when first seen
                        outcome = Outcome()
                    self.tracker.observe(tp, offset, outcome.frame)
                recharged = self.processor.stats.releases - before[0]
                replayed = self.processor.stats.replayed - before[1]
            self.rebuilt_frames += len(frames)
            log.info("rebuilt %s/%d from offset %d to %d: %d messages, %d windows recharged, %d replayed, %.2f s",
                     topic, partition, start, first_offset, len(frames), recharged, replayed, time.monotonic() - t0)
        self.recovered.add(tp)


def run_worker(settings: WorkerSettings, loglevel: str = "info") -> None:
    """Build the processor and app, then run the Faust worker until SIGINT/SIGTERM."""
    from faust.worker import Worker

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    processor = build_processor(settings)
    app = create_app(settings, processor)
    started = time.monotonic()
    log.info("worker %s consuming %s from %s", settings.group, ", ".join(settings.topics.raw_all), settings.bootstrap)
    worker = Worker(app, loglevel=loglevel, quiet=True)
    try:
        worker.execute_from_commandline()
    finally:
        log.info("worker stopped after %.1f s", time.monotonic() - started)
