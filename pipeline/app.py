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
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as faust_aiokafka

from connectors.kafka import CONSUMER_SETTINGS, DEFAULT_BOOTSTRAP, DEFAULT_PARTITIONS, Topics
from pipeline.processor import DeadLetter, Outcome, Processor

log = logging.getLogger("biopriv.worker")


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
    )
    t = settings.topics
    source = app.topic(*t.raw_all, key_type=bytes, value_type=bytes)
    private = app.topic(t.private, key_type=bytes, value_type=bytes)
    deadletter = app.topic(t.deadletter, key_type=bytes, value_type=bytes)
    events = app.topic(t.events, key_type=bytes, value_type=bytes)

    async def publish(outcome: Outcome, source_ref: str) -> None:
        for r in outcome.releases:
            await private.send(key=r.key, value=r.value)
        for d in outcome.dead_letters:
            await deadletter.send(
                key=d.key,
                value=d.value,
                headers=[
                    ("biopriv-reason", d.reason.encode()),
                    ("biopriv-detail", d.detail.encode()[:1000]),
                    ("biopriv-source", source_ref.encode()),
                ],
            )
        for e in outcome.events:
            await events.send(key=str(e.get("pseudonym", "")).encode(), value=json.dumps(e).encode())

    @app.agent(source, name="biopriv-process")
    async def process(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            ref = f"{msg.topic}/{msg.partition}/{msg.offset}"
            value = bytes(msg.value) if isinstance(msg.value, (bytes, bytearray)) else b""
            try:
                outcome = processor.process(value, msg.key)
            except Exception as exc:  # noqa: BLE001 - keep the worker alive; nothing is lost
                log.exception("internal error on %s", ref)
                outcome = Outcome(dead_letters=[DeadLetter("internal_error", repr(exc)[:500], msg.key, value)])
            await publish(outcome, ref)

    @app.timer(settings.stats_interval_s)
    async def report_stats() -> None:
        s = processor.stats
        busy_ms = s.busy_ns / 1e6
        log.info(
            "frames=%d releases=%d suppressed=%d dead_letters=%d %s busy=%.0f ms (%.1f us/frame)",
            s.frames, s.releases, s.suppressed, s.dead_letters, s.by_reason or "", busy_ms,
            (s.busy_ns / 1e3 / s.frames) if s.frames else 0.0,
        )

    return app


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
