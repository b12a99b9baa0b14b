"""The stream worker: a faust-streaming app whose one service feeds :class:`~pipeline.processor.Processor`
in batches.

:class:`StreamWorker` consumes the three raw topics (``<prefix>raw.eeg|audio|bio``, keyed by device
id so each device's frames arrive in order on one partition) through its Kafka port, a consumer in
the worker's consumer group, takes what one fetch returned (at most ``max_batch`` messages), calls
the processor for every message in partition order and sends what comes back:

* releases to ``<prefix>private.features`` (key = pseudonym, value = JSON release, header
  ``biopriv-t-release-ns``);
* dead letters to ``<prefix>deadletter``: the original bytes unchanged, with the reason in the
  headers ``biopriv-reason``, ``biopriv-detail``, ``biopriv-source`` (topic/partition/offset);
* operational events (suppressed releases, feature errors) to ``<prefix>events``.

**Why batches, not a Faust agent.** The first worker was an ``@app.agent`` over a Faust stream.
Profiled under the standard load of ``benchmarks/latency`` (``benchmarks/results/latest.md``), Faust's
per-event path (its consumer thread handing each message across threads, the conductor, one
``Event`` and one acknowledgement per message, one ``Topic.send`` future per release) took 49 %
of the worker's main thread against 25 % for the processing core, and one worker sustained 390
frames/s. The Faust app still hosts the worker (process lifecycle, signals, logging, timers), but
consuming and producing are one fetch -> process -> send loop, the shape of the passthrough floor
the benchmark compares against. The worker sees Kafka only through its port
(:class:`connectors.port.KafkaPort`): :class:`~connectors.confluent.ConfluentPort` (confluent-kafka,
librdkafka; the default, ``--kafka-client confluent``) or :class:`~connectors.port.AiokafkaPort`
(aiokafka, ``--kafka-client aiokafka``) in production, chosen by the A/B in
``benchmarks/results/ab_clients.md``; :class:`connectors.memory.MemoryPort` in the worker-loop unit
tests.

Latency settings, and why:

* producer linger 0: a release is handed to the broker connection as soon as it exists;
* a fetch returns once 8 KiB are available or after 5 ms (``fetch_min_bytes``,
  ``fetch_max_wait_ms``; ``--fetch-min-bytes``, ``--fetch-max-wait-ms``), for both clients. aiokafka
  keeps one fetch in flight per broker, and a partition whose records were just consumed is not
  in it, so the wait bounds how long its next frame can sit at the broker. Answering every frame
  at once (``fetch_min_bytes=1``) costs a fetch request and response per frame or two, encoded in
  pure Python: at the standard benchmark load it took the aiokafka worker from 41 % to 59 % of a
  core for about 1 ms less median latency (librdkafka prefetches every partition in its own
  threads; ``fetch_min_bytes=1`` was not measured with it);
* processing yields to the event loop every :data:`YIELD_EVERY_S` (2 ms) of a batch, so the
  producer's sender writes releases out while the rest of the batch is processed.
* the event loop is uvloop (``--event-loop``): at the standard benchmark load the worker used
  46-48 % of a core with it, 50 % with asyncio's own loop, for the same latency.

Fairness and bounded memory (``docs/operations.md``, "Backpressure and floods"): one fetch returns
at most ``fetch_bytes_per_partition`` (64 KiB, ``--fetch-bytes``) per partition, and one batch at
most ``max_batch`` messages (``--max-batch``): a partition with a backlog delays the others by at
most one batch, and a burst waits in Kafka, not in the worker's memory. Devices silent for
``device_idle_s`` have their windows evicted (:meth:`~pipeline.processor.Processor.evict_idle`).

Durable state (:mod:`pipeline.state`; what a checkpoint holds, its write order and a partition's
recovery are :mod:`pipeline.durability`, ``docs/operations.md``): every ``checkpoint_interval_s``
the loop begins a checkpoint between two batches: the devices whose ledger changed, the resume
offset of each raw partition it owns and the offsets consumed so far. Their device records (ledger
slice, window-grid anchors of restarted streams) are then encoded between the following batches,
at most :data:`CHECKPOINT_SLICE_S` (2 ms) at a time: encoding all 140 devices of the standard
benchmark fleet at once held the loop 35-100 ms. A background task then waits until the output
those ledgers charge is acknowledged, commits the consumed offsets, writes the device records to
``<prefix>state``, waits for their acknowledgements, then writes the resume offsets; processing
goes on meanwhile (one checkpoint is written at a time, in order). On revocation the revoked partitions are checkpointed and committed
before they are released. The first message of a newly assigned raw partition triggers its
recovery: the partition's ledger records are loaded into the privacy engine, grid anchors are
parked in the processor, and ``[resume, first offset)`` is re-fed to the processor with its output
discarded (offsets are committed only after the output of the messages before them was
acknowledged, so that output was published already). Delivery is at-least-once; a redelivered
window is a ledger replay and is not published again, and a release lost from the ledger between
two checkpoints is re-released bit-identically (same ``release_id`` and value bytes; only the
``biopriv-t-release-ns`` header, delivery metadata, differs). Transactions (``exactly_once``) were
tried and are not used (``docs/operations.md``, "exactly_once").

Broker outages (:mod:`pipeline.outage`, ``docs/operations.md``, "Broker outages"): a batch's
offsets count as consumed only once every record it produced is acknowledged (settled in the
background while the next batches are processed, at most :data:`MAX_UNSETTLED_BATCHES`); failed
sends are re-sent unchanged with backoff before anything further is consumed, recovery reads and
offset commits are retried the same way, and readiness is false meanwhile: a broker outage never
ends the loop.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import gc
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from faust.app.base import BootStrategy
from mode import Service

from connectors.kafka import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_PARTITIONS,
    KAFKA_CLIENT,
    KAFKA_CLIENTS,
    OutRecord,
    Topics,
)
from connectors.port import AiokafkaPort, KafkaPort, Message, Partition, retrieved
from connectors.security import ClientSecurity
from pipeline import durability
from pipeline.durability import Checkpoint
from pipeline.errors import BrokerError, BrokerUnavailable, ConfigError, StateError
from pipeline.outage import Delivery, Outage, Stopping, retry, wait_unless_stopping
from pipeline.processor import DeadLetter, Outcome, Processor
from pipeline.state import (
    ResumeTracker,
    StateCipher,
    check_fingerprints,
    check_layout,
    header_record,
    keys_record,
    layout_record,
    load_partition,
)

log = logging.getLogger("biopriv.worker")

#: Largest dead-letter value published: longer (oversize) originals are cut to this many bytes
#: and carry ``biopriv-truncated: <original length>``, so one huge frame cannot exceed the
#: producer's request size.
DEADLETTER_MAX_VALUE = 900_000

#: Processing time after which a batch yields to the event loop (producer sender, heartbeats).
YIELD_EVERY_S = 0.002

#: Longest a checkpoint's record encoding holds the loop between two batches, s.
CHECKPOINT_SLICE_S = 0.002

#: Longest wait of one fetch when no partition has data, ms (the loop's idle tick).
POLL_TIMEOUT_MS = 100

#: Most batches whose output is still being acknowledged while the loop goes on: the loop waits
#: for the oldest beyond this (memory), and for all of them during a broker outage.
MAX_UNSETTLED_BATCHES = 16


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker needs to start; defaults suit the local broker."""

    bootstrap: str = DEFAULT_BOOTSTRAP
    #: TLS/SASL of every Kafka client of the worker; None: the environment's (connectors.security).
    security: ClientSecurity | None = None
    group: str = "biopriv-worker"
    topics: Topics = field(default_factory=Topics)
    partitions: int = DEFAULT_PARTITIONS
    privacy_config: Path | None = None
    #: The study deciding what is released (None: the built-in default study).
    study: Path | None = None
    #: Release every window of every feature set under ``privacy_config`` instead of a study's
    #: reports (the stress mode of the latency benchmark and of the crash tests).
    per_window: bool = False
    key_file: Path = Path(".biopriv/keys.json")
    #: Further key files holding other sections (e.g. the pseudonym key apart from the noise keys).
    more_key_files: tuple[Path, ...] = ()
    #: Add ``biopriv-t-frame-send-ns`` and ``biopriv-last-seq`` headers to releases (latency
    #: benchmark, operations); off by default: they are device metadata outside the privacy model.
    latency_headers: bool = False
    #: When a partition's state was lost, a device without a ledger has its windows suppressed
    #: (``ledger_missing``) up to this much capture time after the first window it is seen with.
    ledger_loss_guard_s: float = 600.0
    stats_interval_s: float = 10.0
    data_dir: Path = Path(".biopriv/worker")
    checkpoint_interval_s: float = 1.0
    session_timeout_s: float = 10.0
    #: Request timeout of the worker's producer and consumer, s (None: 15 s for the producer, the
    #: client's default for the consumer: 60 s socket timeout for librdkafka, 40 s for aiokafka).
    #: A send not acknowledged within it has failed.
    request_timeout_s: float | None = None
    state_idle_s: float = 600.0
    #: Most messages processed per fetched batch.
    max_batch: int = 500
    #: Bytes fetched per partition and request (``max.partition.fetch.bytes``).
    fetch_bytes_per_partition: int = 64 * 1024
    #: A fetch returns once this many bytes are available, or after ``fetch_max_wait_ms``.
    fetch_min_bytes: int = 8192
    fetch_max_wait_ms: int = 5
    #: Window state of a device silent this long (wall clock, s) is evicted (its grid anchor kept).
    device_idle_s: float = 600.0
    #: ``uvloop`` (libuv event loop) or ``asyncio`` (the standard library's).
    event_loop: str = "uvloop"
    #: The Kafka client behind the worker's port: ``confluent`` (librdkafka,
    #: :class:`~connectors.confluent.ConfluentPort`) or ``aiokafka`` (:class:`~connectors.port.AiokafkaPort`).
    #: Every worker of a group uses the same client (their assignors differ).
    kafka_client: str = KAFKA_CLIENT
    #: Port of the worker's web server (``/metrics``, ``/healthz``, ``/readyz``); 0 disables it.
    web_port: int = 0
    web_host: str = "0.0.0.0"


def outgoing(outcome: Outcome, topics: Topics, source: str, latency_headers: bool) -> list[OutRecord]:
    """The records a processed message publishes (releases, dead letters, events), in order.

    ``source`` (``topic/partition/offset`` of the message) goes into dead letters' headers;
    ``latency_headers`` adds ``biopriv-t-frame-send-ns`` and ``biopriv-last-seq`` to releases.
    Shared by the worker and the latency benchmark's Quix Streams peer, so both publish the same.
    """
    out: list[OutRecord] = []
    for r in outcome.releases:
        headers: tuple[tuple[str, bytes], ...] = (("biopriv-t-release-ns", b"%d" % r.t_release_ns),)
        if latency_headers:
            headers += (("biopriv-t-frame-send-ns", b"%d" % r.last_send_ns), ("biopriv-last-seq", b"%d" % r.last_seq))
        out.append(OutRecord(topics.private, r.value, key=r.key, headers=headers))
    for d in outcome.dead_letters:
        headers = (
            ("biopriv-reason", d.reason.encode()),
            ("biopriv-detail", d.detail.encode()[:1000]),
            ("biopriv-source", source.encode()),
        )
        value = d.value
        if len(value) > DEADLETTER_MAX_VALUE:
            headers += (("biopriv-truncated", str(len(value)).encode()),)
            value = value[:DEADLETTER_MAX_VALUE]
        out.append(OutRecord(topics.deadletter, value, key=(d.key or b"")[:1000] or None, headers=headers))
    for e in outcome.events:
        out.append(OutRecord(topics.events, json.dumps(e).encode(), key=str(e.get("pseudonym", "")).encode()))
    return out


def build_processor(settings: WorkerSettings) -> Processor:
    """The processing core configured from the settings (study or per-window privacy config, keys).

    With a study, the privacy configuration (``--privacy-config``, if given) supplies the
    mechanisms, grid and strategy; the study sets the per-report epsilon and the day and lifetime
    rules.
    """
    from pipeline.privacy import PrivacyConfig, PrivacyEngine, load_keys
    from pipeline.study import load_study

    base = PrivacyConfig.from_file(settings.privacy_config) if settings.privacy_config else None
    keys = load_keys(settings.key_file, *settings.more_key_files)
    if settings.per_window:
        return Processor(PrivacyEngine(base or PrivacyConfig.default(), keys), keys.pseudonym)
    study = load_study(settings.study)
    log.info("study %s: %g epsilon per device per day, lifetime cap %g, %s division, feature sets %s",
             study.source, study.daily_spend(), study.lifetime_epsilon, study.scheduling, ", ".join(study.sets))
    return Processor(PrivacyEngine(study.privacy_config(base), keys), keys.pseudonym, study=study)


class StreamWorker(Service):
    """Fetch -> process -> send loop over the raw topics, with durable-state checkpoints."""

    def __init__(self, settings: WorkerSettings, processor: Processor, port: KafkaPort | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.processor = processor
        #: Kafka as the worker sees it (:mod:`connectors.port`); default: the clients of ``settings.kafka_client``.
        self.port: KafkaPort = port if port is not None else kafka_port(settings, lambda: self.outage.active)
        self.tracker = ResumeTracker(processor.history_frames, idle_s=settings.state_idle_s)
        #: Held while a batch is processed, and by revocation and eviction, which change the state.
        self.lock = asyncio.Lock()
        self.assigned: set[Partition] = set()
        self.recovered: set[tuple[str, int]] = set()
        self.loaded: dict[int, dict[str, int]] = {}  # partition number -> resume offset per raw topic
        self.consumed: dict[Partition, int] = {}  # next offset to commit, per raw partition
        self.checkpoints = 0
        #: times the loop stopped fetching until batches' output was acknowledged, and how long in all
        self.settle_waits, self.settle_wait_s = 0, 0.0
        self.rebuilt_frames = 0
        #: Seals device and header records (the key file's state key).
        self.cipher = StateCipher(processor.engine.keys)
        #: Raw partitions whose durable state was lost (consumed before, no resume offset): their
        #: devices without a ledger get a ``ledger_missing`` guard when first seen.
        self.lost: set[tuple[str, int]] = set()
        self.with_state: set[str] = set()  # devices whose ledger or header was loaded from state
        self.checked: set[str] = set()  # devices of lost partitions already guarded or found with state
        self.layout: dict[str, int] = {}  # raw topic -> partition count, as the consumer sees it
        self.last_checkpoint: float | None = None  # monotonic time of the last checkpoint written
        self.recovering = 0  # recoveries under way
        self.loop_running = False  # the consumer joined and the loop runs
        from pipeline.metrics import GcPauses, WorkerMetrics

        self.metrics = WorkerMetrics(self)
        self.gc_pauses = GcPauses()
        self.meta_written: set[int] = set()  # state partitions given layout and key records
        self.verified: set[int] = set()  # state partitions whose layout and key records were checked
        self._writing: asyncio.Task[None] | None = None  # the checkpoint being written
        self._pending: Checkpoint | None = None  # the checkpoint being encoded
        self._next_checkpoint = 0.0
        self._loop_done = asyncio.Event()
        #: Broker outage state: backoff, readiness, one log line at each end, retry totals.
        self.outage = Outage()
        #: A batch was given up unacknowledged (stop during an outage): its ledger charges must
        #: not be checkpointed, so the next owner re-releases those windows.
        self.abandoned = False
        self._port_open = False
        #: Batches processed whose output is being acknowledged, oldest first, with the offsets
        #: they mark consumed once it is (:meth:`_reap`).
        self._unsettled: collections.deque[tuple[asyncio.Task[int], dict[Partition, int]]] = collections.deque()

    # -- lifecycle ----------------------------------------------------------------------------

    async def on_start(self) -> None:
        # What start-up made (modules, Faust's app, the processor) lives as long as the worker: out
        # of the collector's reach, a full collection scans only what came after (~100,000 objects
        # took 80-170 ms per full collection, a pause of the loop: gc2 in the stats line)
        gc.collect()
        gc.freeze()
        self.gc_pauses.install()
        await self.port.start(self.assign, self.revoke)
        self._port_open = True
        self._next_checkpoint = time.monotonic() + self.settings.checkpoint_interval_s
        self.loop_running = True

    async def on_stop(self) -> None:
        """Finish the batch in hand, checkpoint and commit everything owned, leave the group."""
        try:
            await asyncio.wait_for(self._loop_done.wait(), timeout=30)
        except TimeoutError:
            log.warning("the processing loop did not stop within 30 s")
        try:
            await self._settle_all()
        except Stopping:
            self.abandoned = True
        try:
            if self.abandoned:
                log.warning("no final checkpoint: a batch was given up unacknowledged; the next owner "
                            "re-reads it from the last committed offsets")
            else:
                async with self.lock:
                    await self._checkpoint(None)
        except Stopping:
            log.warning("final checkpoint given up: the broker is unavailable; the next owner rebuilds "
                        "from the last checkpoint")
        except Exception:  # noqa: BLE001 - the next owner rebuilds from the last checkpoint
            log.exception("final checkpoint failed")
        if self._port_open:
            await self.port.stop()
        self.gc_pauses.uninstall()

    @Service.task
    async def _consume(self) -> None:
        try:
            while not self.should_stop:
                try:
                    self._reap()
                    if self.outage.active or len(self._unsettled) >= MAX_UNSETTLED_BATCHES:
                        t0 = time.perf_counter()
                        await self._settle_all()  # nothing further is consumed until it is acknowledged
                        self.settle_waits += 1
                        self.settle_wait_s += time.perf_counter() - t0
                except Stopping:  # asked to stop during an outage: those batches are given up
                    self.abandoned = True
                    break
                try:
                    batches = await self.port.fetch(POLL_TIMEOUT_MS, self.settings.max_batch)
                except BrokerUnavailable as error:
                    try:
                        await self._backoff(self.outage.failed("fetch", error))
                    except Stopping:
                        break
                    continue
                if batches is None:  # the port was stopped
                    break
                if batches:
                    async with self.lock:
                        try:
                            await self._process(batches)
                        except Stopping:  # asked to stop during an outage: the batch is given up
                            self.abandoned = True
                            break
                if not self.lock.locked():  # a revocation is checkpointing: it goes first
                    self._checkpoint_step()
        finally:
            self._loop_done.set()

    # -- processing ---------------------------------------------------------------------------

    def _stopping(self) -> bool:
        return bool(self.should_stop)

    def _delivery(self) -> Delivery[OutRecord]:
        return Delivery(self.port.send, self.outage, error=self.port.delivery_error, stopping=self._stopping)

    async def _backoff(self, delay_s: float) -> None:
        await wait_unless_stopping(delay_s, self.outage.clock, asyncio.sleep, self._stopping)

    async def _process(self, batches: dict[Partition, list[Message]]) -> None:
        """Process one fetched batch and send its output; queue its delivery, which marks the
        batch's offsets consumed once all of it is acknowledged (:meth:`_reap`; failed sends are
        retried with backoff, the same records, :class:`~pipeline.outage.Delivery`)."""
        process, observe, clock = self.processor.process, self.tracker.observe, time.perf_counter
        out = self._delivery()
        done: dict[Partition, int] = {}
        deadline = clock() + YIELD_EVERY_S
        for key, messages in batches.items():
            if key not in self.assigned:  # revoked after the fetch: the next owner reads them
                continue
            if key not in self.recovered:
                await self._recover(key, messages[0].offset)
            lost = key in self.lost
            for _topic, _partition, offset, msg_key, msg_value in messages:
                value = msg_value if msg_value is not None else b""
                if lost and msg_key is not None:
                    await self._guard_if_lost(msg_key, key, out)
                try:
                    outcome = process(value, msg_key)
                except Exception as exc:  # noqa: BLE001 - keep the worker alive; nothing is lost
                    log.exception("internal error on %s/%d/%d", key[0], key[1], offset)
                    outcome = Outcome(dead_letters=[DeadLetter("internal_error", repr(exc)[:500], msg_key, value)])
                observe(key, offset, outcome.frame)
                if outcome.releases or outcome.dead_letters or outcome.events or outcome.headers:
                    await self._publish(outcome, key, offset, out)
                if clock() >= deadline:
                    await asyncio.sleep(0)  # let the producer send what is ready
                    deadline = clock() + YIELD_EVERY_S
            done[key] = messages[-1].offset + 1
        # offsets count (are checkpointed, committed) only once the output is acknowledged
        settle = asyncio.create_task(out.settle())
        settle.add_done_callback(retrieved)  # a batch given up at a stop raises Stopping, looked at or not
        self._unsettled.append((settle, done))

    def _reap(self) -> None:
        """Mark consumed the offsets of the oldest batches whose output is acknowledged, in order.

        Raises :class:`~pipeline.outage.Stopping` for a batch given up at a stop.
        """
        while self._unsettled and self._unsettled[0][0].done():
            task, done = self._unsettled.popleft()
            task.result()
            self.consumed.update(done)

    async def _settle_all(self) -> None:
        """Wait until the output of every batch processed so far is acknowledged (retried through an
        outage), and mark their offsets consumed."""
        while self._unsettled:
            await asyncio.wait([self._unsettled[0][0]])
            self._reap()

    async def _publish(self, outcome: Outcome, tp: Partition, offset: int, out: Delivery[OutRecord]) -> None:
        t, send = self.settings.topics, out.add
        if outcome.headers:  # durable before any release that depends on them is published
            await self._write_headers(outcome.headers, tp[1])
        observe = self.metrics.observe_release
        for r in outcome.releases:
            observe(r.last_send_ns, r.t_release_ns)
        source = f"{tp[0]}/{tp[1]}/{offset}" if outcome.dead_letters else ""  # named in dead letters only
        for record in outgoing(outcome, t, source, self.settings.latency_headers):
            await send(record)

    async def _write_headers(self, devices: set[str], partition: int) -> None:
        """Write the devices' headers (lineage, day keys) to the state topic and wait until they are
        acknowledged (retried through an outage): they are durable before any release relying on them."""
        out = self._delivery()
        for device, header in self.processor.header_records(devices).items():
            key, value = header_record(device, header, self.cipher)
            await out.add(OutRecord(self.settings.topics.state, value, key=key, partition=partition))
        await out.settle()

    async def _guard_if_lost(self, key: bytes, tp: Partition, out: Delivery[OutRecord]) -> None:
        """First message of a device on a partition whose state was lost: without a ledger of its
        own (from another partition's state), its first windows may repeat what was published under
        the lost lineage, so they are suppressed (``ledger_missing``) for ``ledger_loss_guard_s``."""
        device = key.decode("utf-8", "replace")
        if device in self.checked:
            return
        self.checked.add(device)
        if device in self.with_state:
            return
        margin_s = self.settings.ledger_loss_guard_s
        self.processor.engine.guard_from_first(device, int(margin_s * 1e9))
        pseudonym = self.processor.pseudonym(device)
        event = {"event": "ledger_missing", "pseudonym": pseudonym, "source": f"{tp[0]}/{tp[1]}", "guard_s": margin_s}
        log.warning("state of %s/%d was lost: device %s gets a %.0f s ledger_missing guard",
                    tp[0], tp[1], pseudonym, margin_s)
        await out.add(OutRecord(self.settings.topics.events, json.dumps(event).encode(), key=pseudonym.encode()))

    # -- durable state ------------------------------------------------------------------------

    def _begin(self, partitions: set[int] | None) -> Checkpoint:
        return durability.begin(self.processor, self.tracker, self.recovered, self.consumed, partitions)

    def _encode(self, cp: Checkpoint, budget_s: float | None) -> bool:
        return durability.encode(cp, self.processor, self.tracker, self.cipher, budget_s)

    def _checkpoint_step(self) -> None:
        """Between batches: begin a due checkpoint, encode a slice of it, or hand it to the writer."""
        if self._pending is None:
            if time.monotonic() < self._next_checkpoint or (self._writing is not None and not self._writing.done()):
                return
            self._next_checkpoint = time.monotonic() + self.settings.checkpoint_interval_s
            self._pending = self._begin(None)
        if self._encode(self._pending, CHECKPOINT_SLICE_S):
            self._writing = self._start_write(self._pending)
            self._pending = None

    async def _write(self, cp: Checkpoint, after: list[asyncio.Task[int]] | None = None) -> None:
        """Write one checkpoint in :mod:`pipeline.durability`'s order: offsets, then ledgers, then
        resume offsets, each step acknowledged.

        It first waits until every release charged in the device records is acknowledged (the
        batches processed before they were encoded, ``after``). Through an outage the writes
        are retried with backoff (the same records), so they stay in order.
        """
        state_topic = self.settings.topics.state
        try:
            for task in after or ():  # raises Stopping for a batch given up
                await asyncio.wait([task])
                task.result()
            if cp.commits:
                await retry("offset commit", functools.partial(self._commit, cp.commits), self.outage,
                            stopping=self._stopping)
            out = self._delivery()
            for key, value, partition in cp.records:
                await out.add(OutRecord(state_topic, value, key=key, partition=partition))
            await out.settle()  # ledger records before the resume offsets that rely on them
            # layout and keys once per partition and assignment, only where this worker checked them before
            meta = self.verified - self.meta_written
            for key, value, partition in durability.final_records(cp, self._meta_records(), meta):
                await out.add(OutRecord(state_topic, value, key=key, partition=partition))
            self.meta_written |= meta
            await out.settle()
        except BaseException:
            self.processor.dirty_devices |= cp.dirty
            raise
        self.checkpoints += 1
        self.last_checkpoint = time.monotonic()

    async def _commit(self, offsets: dict[Partition, int]) -> None:
        """Commit consumed offsets; an outage is a :class:`BrokerUnavailable` after the request timeout."""
        try:
            await self.port.commit(offsets, self.settings.request_timeout_s or 15.0)
        except BrokerUnavailable:
            raise
        except BrokerError as exc:  # CommitFailedError: a rebalance is under way
            log.warning("offset commit failed (%s); those messages will be redelivered", exc)

    def _start_write(self, cp: Checkpoint) -> asyncio.Task[None]:
        """Write an encoded checkpoint in the background, after the output its ledgers charge (the
        batches processed before its device records were encoded)."""
        after = [task for task, _done in self._unsettled]
        return asyncio.create_task(self._write_logged(cp, after))

    async def _write_logged(self, cp: Checkpoint, after: list[asyncio.Task[int]]) -> None:
        try:
            await self._write(cp, after)
        except Stopping:
            pass
        except Exception:  # noqa: BLE001 - the devices stay dirty; the next checkpoint retries
            log.exception("checkpoint failed")

    async def _checkpoint(self, partitions: set[int] | None) -> None:
        """Write a checkpoint now, after the ones in progress (caller holds the lock)."""
        await self._settle_all()  # the batches processed so far count, their output acknowledged
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._encode(pending, None)
            self._writing = self._start_write(pending)
        if self._writing is not None:
            await asyncio.gather(self._writing, return_exceptions=True)
        cp = self._begin(partitions)
        self._encode(cp, None)
        await self._write(cp)

    async def assign(self, assigned: set[Partition]) -> None:
        """Partitions assigned (after a rebalance): each is recovered when its first batch comes."""
        self.assigned = set(assigned)
        self.meta_written = set()
        log.info("assigned %d partitions: %s", len(assigned), sorted(f"{t}/{p}" for t, p in assigned))

    async def revoke(self, revoked: set[Partition]) -> None:
        """Checkpoint and commit revoked raw partitions, then forget their devices."""
        self.assigned -= revoked
        parts = {p for t, p in revoked if t in self.settings.topics.raw_all}
        if not parts:
            return
        async with self.lock:
            try:
                if not self.abandoned:
                    await self._checkpoint(parts)
            except Stopping:
                log.warning("checkpoint on revocation given up: the broker is unavailable")
            except Exception:  # noqa: BLE001 - the next owner rebuilds from the last checkpoint
                log.exception("checkpoint on revocation failed")
            self._drop(parts)

    def _drop(self, partitions: set[int]) -> None:
        """Forget windows, ledger and offsets of devices on revoked partition numbers."""
        devices = durability.drop(self.processor, self.tracker, partitions)
        self.recovered = {tp for tp in self.recovered if tp[1] not in partitions}
        self.consumed = {tp: o for tp, o in self.consumed.items() if tp[1] not in partitions}
        for p in partitions:
            self.loaded.pop(p, None)
            self.verified.discard(p)
        log.info("dropped state of partitions %s (%d devices)", sorted(partitions), len(devices))

    def _meta_records(self) -> list[tuple[bytes, bytes]]:
        """The layout and key-fingerprint records every state partition carries."""
        return [layout_record(self.layout), keys_record(self.processor.engine.keys.fingerprints())]

    async def _load_state(self, partition: int) -> None:
        """Load a state partition: refuse another layout or key file, install ledgers and headers."""
        state = self.settings.topics.state
        records = await self.port.read_partition(state, partition)
        ps = load_partition(((k, v) for k, v, _o in records), self.cipher)
        if not self.layout:  # first takeover: the layout every state partition was written under
            counts = {t: self.port.partition_count(t) for t in self.settings.topics.raw_all}
            layout = {t: n for t, n in counts.items() if n}
            if partition != 0:  # a partition added by repartitioning has no state: partition 0 always does
                first = await self.port.read_partition(state, 0)
                check_layout(load_partition(((k, v) for k, v, _o in first if k == b"m:layout")).layout, layout)
            self.layout = layout  # only once checked: a read failing above is retried from the start
            self.verified.add(0)
        check_layout(ps.layout, self.layout)
        check_fingerprints(ps.fingerprints, self.processor.engine.keys.fingerprints())
        self.verified.add(partition)
        self.with_state |= durability.install(self.processor, ps)
        self.loaded[partition] = ps.resume
        log.info("loaded state partition %d: %d records, %d device ledgers, %d headers, resume offsets %s",
                 partition, ps.records, len(ps.devices), len(ps.headers), ps.resume)

    async def _recover(self, tp: tuple[str, int], first_offset: int) -> None:
        """Load the partition's ledger (once per partition number) and rebuild its windows.

        A state partition written under another raw partition count or key file is refused: the
        worker stops with a one-line error (:class:`~pipeline.errors.StateError`).
        """
        self.recovering += 1
        try:
            await self._recover_partition(tp, first_offset)
        finally:
            self.recovering -= 1

    async def _recover_partition(self, tp: tuple[str, int], first_offset: int) -> None:
        topic, partition = tp
        t0 = time.monotonic()
        stopping = self._stopping
        if partition not in self.loaded:  # reads are retried through an outage; nothing changes before they succeed
            try:
                await retry(f"read state partition {partition}", functools.partial(self._load_state, partition),
                            self.outage, stopping=stopping)
            except StateError as exc:
                log.error("cannot take over %s/%d: %s", topic, partition, exc)
                raise
        if topic not in self.loaded[partition]:
            beginning = (await retry(f"read the beginning of {topic}/{partition}",
                                     functools.partial(self.port.beginning_offsets, [tp]), self.outage,
                                     stopping=stopping))[tp]
            if first_offset > beginning:  # the group consumed it before, and its state is gone
                self.lost.add(tp)
                log.warning("%s/%d was consumed up to offset %d but the state topic holds no resume offset for "
                            "it: its state was lost", topic, partition, first_offset)
        start = self.loaded[partition].get(topic, 0)
        if start < first_offset:
            frames = await retry(f"read {topic}/{partition} to rebuild windows",
                                 functools.partial(self.port.read_partition, topic, partition, start, first_offset),
                                 self.outage, stopping=stopping)
            done = durability.rebuild(self.processor, self.tracker, tp, frames)
            if done.headers:  # windows rebuilt here are not published, later ones may be
                await self._write_headers(done.headers, partition)
            self.rebuilt_frames += done.frames
            log.info("rebuilt %s/%d from offset %d to %d: %d messages, %d windows recharged, %d replayed, %.2f s",
                     topic, partition, start, first_offset, done.frames, done.recharged, done.replayed,
                     time.monotonic() - t0)
        self.recovered.add(tp)

    # -- health -------------------------------------------------------------------------------

    def alive(self) -> bool:
        """The processing loop runs (or has not been asked to stop)."""
        return self.loop_running and not self._loop_done.is_set()

    def ready(self) -> bool:
        """Partitions are assigned, no recovery is under way and the broker is not out."""
        return self.alive() and bool(self.assigned) and self.recovering == 0 and not self.outage.active

    def lag(self) -> dict[tuple[str, int], int]:
        """Per assigned raw partition: high watermark minus the next offset to consume."""
        out: dict[tuple[str, int], int] = {}
        if not self._port_open:
            return out
        for tp in self.assigned:
            high, done = self.port.highwater(tp), self.consumed.get(tp)
            if high is not None and done is not None:  # known once the partition was fetched from
                out[tp] = max(0, high - done)
        return out

    # -- periodic -----------------------------------------------------------------------------

    async def evict_idle(self) -> None:
        """Drop the ring buffers of idle devices (their grid anchors and ledgers stay)."""
        async with self.lock:
            evicted = self.processor.evict_idle(self.settings.device_idle_s)
        if evicted:
            log.info("evicted the window state of %d device(s) idle for %.0f s", len(evicted), self.settings.device_idle_s)

    def log_stats(self) -> None:
        """One line of counters. ``busy`` is the core's wall time (inflated when the host is
        contended); ``cpu_loop`` the CPU time of the event loop's thread (core and shell; this runs
        on it) and ``cpu_process`` of every thread (the Kafka client's besides), both since start,
        so that live figures split into core, loop and client threads (``benchmarks/shell_bench.py``);
        ``settle_waits`` the times the loop stopped fetching until output was acknowledged, and
        ``gc2`` the full garbage collections with their total and longest pause since the last line
        (each pause stops the loop)."""
        s, p = self.processor.stats, self.processor
        log.info(
            "frames=%d releases=%d suppressed=%d replayed=%d dead_letters=%d %s busy=%.0f ms (%.1f us/frame) "
            "checkpoints=%d rebuilt_frames=%d devices=%d parked=%d cpu_loop=%.0f ms cpu_process=%.0f ms "
            "settle_waits=%d (%.0f ms) gc2=%d (%.0f ms, max %.1f ms)",
            s.frames, s.releases, s.suppressed, s.replayed, s.dead_letters, s.by_reason or "", s.busy_ns / 1e6,
            (s.busy_ns / 1e3 / s.frames) if s.frames else 0.0, self.checkpoints, self.rebuilt_frames,
            len(p.devices()), p.parked(), time.thread_time() * 1e3, time.process_time() * 1e3,
            self.settle_waits, self.settle_wait_s * 1e3, self.gc_pauses.count, self.gc_pauses.total_s * 1e3,
            self.gc_pauses.take_max() * 1e3,
        )


class _ShellOnly(BootStrategy):
    """Faust boots no Kafka client, web server or sensor of its own: :class:`StreamWorker` owns Kafka."""

    enable_kafka = False
    enable_web = False
    enable_sensors = False


class _ShellWithWeb(_ShellOnly):
    """As :class:`_ShellOnly`, plus Faust's web server for ``/metrics``, ``/healthz`` and ``/readyz``."""

    enable_web = True


class _App(faust.App):
    BootStrategy = _ShellOnly
    stream_worker: StreamWorker | None = None

    def on_init_dependencies(self) -> Any:
        deps = list(super().on_init_dependencies())
        return deps + [self.stream_worker] if self.stream_worker is not None else deps


def kafka_port(settings: WorkerSettings, quiet: Callable[[], bool]) -> KafkaPort:
    """The production port of ``settings.kafka_client`` (:data:`KAFKA_CLIENTS`)."""
    if settings.kafka_client == "confluent":
        return confluent_port(settings, quiet)
    if settings.kafka_client == "aiokafka":
        return aiokafka_port(settings, quiet)
    raise ConfigError(f"kafka client must be one of {', '.join(KAFKA_CLIENTS)}, got {settings.kafka_client!r}")


def confluent_port(settings: WorkerSettings, quiet: Callable[[], bool]) -> KafkaPort:
    """The port on confluent-kafka (librdkafka) with the settings' fetch, session and request timeouts."""
    from connectors.confluent import ConfluentPort

    s = settings
    consumer = dict(fetch_min_bytes=s.fetch_min_bytes, fetch_max_wait_ms=s.fetch_max_wait_ms,
                    fetch_bytes_per_partition=s.fetch_bytes_per_partition, prefetch_messages=max(1, s.max_batch // 5),
                    session_timeout_s=s.session_timeout_s,
                    request_timeout_s=s.request_timeout_s)
    return ConfluentPort(s.bootstrap, s.group, s.topics.raw_all, security=s.security, consumer_options=consumer,
                         producer_options={"request_timeout_s": s.request_timeout_s}, quiet=quiet)


def aiokafka_port(settings: WorkerSettings, quiet: Callable[[], bool]) -> AiokafkaPort:
    """The port on aiokafka clients with the settings' fetch, session and request timeouts."""
    s = settings
    timeout = {} if s.request_timeout_s is None else {"request_timeout_ms": int(s.request_timeout_s * 1000)}
    consumer = dict(max_partition_fetch_bytes=s.fetch_bytes_per_partition, fetch_min_bytes=s.fetch_min_bytes,
                    fetch_max_wait_ms=s.fetch_max_wait_ms, session_timeout_ms=int(s.session_timeout_s * 1000),
                    heartbeat_interval_ms=int(max(0.5, s.session_timeout_s / 5) * 1000), **timeout)
    return AiokafkaPort(s.bootstrap, s.group, s.topics.raw_all, security=s.security, consumer_options=consumer,
                        producer_options=timeout, quiet=quiet)


def create_app(settings: WorkerSettings, processor: Processor) -> tuple[faust.App, StreamWorker]:
    """The Faust app hosting one :class:`StreamWorker` (plus its eviction and statistics timers)."""
    web = settings.web_port > 0
    app = _App(settings.group, autodiscover=False, web_enabled=web, web_port=settings.web_port or 6066,
               web_bind=settings.web_host, datadir=str(settings.data_dir), store="memory://")
    if web:
        app.boot_strategy = _ShellWithWeb(app)
    worker = app.stream_worker = StreamWorker(settings, processor)

    if web:
        from pipeline.metrics import CONTENT_TYPE

        @app.page("/metrics")
        async def metrics(self: Any, request: Any) -> Any:
            return self.bytes(worker.metrics.text(), content_type=CONTENT_TYPE)

        @app.page("/healthz")
        async def healthz(self: Any, request: Any) -> Any:
            ok = worker.alive()
            return self.json({"alive": ok}, status=200 if ok else 503)

        @app.page("/readyz")
        async def readyz(self: Any, request: Any) -> Any:
            ok = worker.ready()
            return self.json({"ready": ok, "assigned": len(worker.assigned), "recovering": worker.recovering,
                              "broker_outage": worker.outage.active}, status=200 if ok else 503)

    @app.timer(settings.checkpoint_interval_s)
    async def evict() -> None:
        await worker.evict_idle()

    @app.timer(settings.stats_interval_s)
    async def report_stats() -> None:
        worker.log_stats()

    return app, worker


def run_worker(settings: WorkerSettings, loglevel: str = "info") -> None:
    """Build the processor and app, then run the Faust worker until SIGINT/SIGTERM."""
    from faust.worker import Worker

    if settings.event_loop == "uvloop":
        import uvloop

        uvloop.install()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    processor = build_processor(settings)
    app, _ = create_app(settings, processor)
    started = time.monotonic()
    log.info("worker %s consuming %s from %s (Kafka client: %s)", settings.group, ", ".join(settings.topics.raw_all),
             settings.bootstrap, settings.kafka_client)
    worker = Worker(app, loglevel=loglevel, quiet=True)
    try:
        worker.execute_from_commandline()
    finally:
        log.info("worker stopped after %.1f s", time.monotonic() - started)
