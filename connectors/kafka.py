"""Kafka in one place: topic names, client factories with the project's settings, error mapping.

Everything that talks to Kafka goes through these factories: kafka-python clients for the
command line, replay, tail and state reads; aiokafka clients (:func:`async_consumer`,
:func:`async_producer`, with the group's :func:`copartitioned_assignor`) for the stream worker's
event loop (:mod:`pipeline.app`). Settings such as ``acks=all`` or "no producer linger" are decided
once. Client errors are mapped to :class:`~pipeline.errors.BrokerError` with one clear line, so the
command line never prints a traceback for an unreachable broker.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.errors import BrokerError

DEFAULT_BOOTSTRAP = os.environ.get("BIOPRIV_BOOTSTRAP", "127.0.0.1:9092")

#: Input topics, one per modality. Key = device id, so a device's frames stay on one partition.
RAW_TOPICS = {"eeg": "biopriv.raw.eeg", "audio": "biopriv.raw.audio", "bio": "biopriv.raw.bio"}
#: Privatized releases: the only topic downstream consumers should read.
PRIVATE_TOPIC = "biopriv.private.features"
#: Frames that failed validation, with the reason and the original bytes (access-restricted).
DEADLETTER_TOPIC = "biopriv.deadletter"
#: Operational events without raw data (budget exhausted, windows dropped...).
EVENTS_TOPIC = "biopriv.events"

#: Durable worker state (privacy ledger per device, resume offsets per raw partition); compacted,
#: co-partitioned with the raw topics. Holds device ids: restrict access like the raw topics.
STATE_TOPIC = "biopriv.state"

#: Partitions of every project topic; bounds the number of workers that share the work.
DEFAULT_PARTITIONS = 6
DEFAULT_PREFIX = "biopriv."


@dataclass(frozen=True)
class TopicSpec:
    """A topic the project needs: name, partitions and topic-level configs."""

    name: str
    partitions: int = DEFAULT_PARTITIONS
    configs: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Topics:
    """The names of the topics one deployment uses, all sharing a prefix.

    The default prefix gives the names above; tests and parallel deployments pass their own
    (``Topics.with_prefix("t-1234.")``) so they never see each other's records.
    """

    prefix: str = DEFAULT_PREFIX

    @classmethod
    def with_prefix(cls, prefix: str) -> Topics:
        return cls(prefix)

    def raw(self, modality: str) -> str:
        """Input topic of a modality (``eeg``, ``audio``, ``bio``)."""
        return f"{self.prefix}raw.{modality}"

    @property
    def raw_all(self) -> tuple[str, ...]:
        return tuple(self.raw(m) for m in RAW_TOPICS)

    @property
    def private(self) -> str:
        return f"{self.prefix}private.features"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}deadletter"

    @property
    def events(self) -> str:
        return f"{self.prefix}events"

    @property
    def state(self) -> str:
        """Compacted worker state topic (see :mod:`pipeline.state`)."""
        return f"{self.prefix}state"

    def specs(self, partitions: int = DEFAULT_PARTITIONS) -> list[TopicSpec]:
        """The topics to create for this deployment."""
        week_ms = str(7 * 24 * 3600 * 1000)
        keep = (("retention.ms", week_ms),)
        return [
            *(TopicSpec(t, partitions, keep) for t in self.raw_all),
            TopicSpec(self.private, partitions),
            TopicSpec(self.deadletter, partitions, keep),
            TopicSpec(self.events, 1),
            TopicSpec(self.state, partitions, (("cleanup.policy", "compact"), ("min.compaction.lag.ms", "60000"))),
        ]

log = logging.getLogger(__name__)


def project_topics(partitions: int = DEFAULT_PARTITIONS) -> list[TopicSpec]:
    """The topics ``biopriv kafka up`` creates (default prefix)."""
    return Topics().specs(partitions)


#: Producer settings: durable and ordered (acks=all, one request in flight so retries cannot
#: reorder), tuned for latency (no linger: a frame is sent as soon as it is handed over).
PRODUCER_SETTINGS: dict[str, Any] = {
    "acks": "all",
    "linger_ms": 0,
    "retries": 5,
    "max_in_flight_requests_per_connection": 1,
    "request_timeout_ms": 15000,
    "max_request_size": 2 * 1024 * 1024,
}

#: Consumer settings tuned for latency: the broker answers a fetch as soon as one byte is there,
#: and waits at most 10 ms otherwise.
CONSUMER_SETTINGS: dict[str, Any] = {
    "fetch_min_bytes": 1,
    "fetch_max_wait_ms": 10,
    "auto_offset_reset": "earliest",
}


#: The stream worker's aiokafka producer: the same guarantees as :data:`PRODUCER_SETTINGS`
#: (aiokafka keeps one batch per partition in flight, so retries cannot reorder a partition).
ASYNC_PRODUCER_SETTINGS: dict[str, Any] = {
    "acks": "all",
    "linger_ms": 0,
    "request_timeout_ms": 15000,
    "max_request_size": 2 * 1024 * 1024,
}


@functools.cache
def copartitioned_assignor() -> Any:
    """The worker group's partition assignor (an aiokafka assignor class, see below)."""
    from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata

    class CopartitionedAssignor(AbstractPartitionAssignor):  # type: ignore[misc]  # aiokafka ships no type hints
        """Partition *numbers* go round-robin over the members (sorted by member id), each member
        taking that number of every subscribed topic. All raw topics of a device share its key, so
        they share its partition number: one worker holds every stream of a device (the privacy
        unit: one ledger) and the matching ``<prefix>state`` partition. aiokafka's round-robin
        assignor deals topic-partitions one by one, which splits a device over workers as soon as
        the partition count is not a multiple of the member count.
        """

        name = "biopriv-copartitioned"
        version = 0

        @classmethod
        def assign(cls, cluster: Any, members: Any) -> dict[str, Any]:
            numbers: set[int] = set()
            topics = sorted({t for m in members.values() for t in m.subscription})
            parts = {t: set(cluster.partitions_for_topic(t) or ()) for t in topics}
            for ps in parts.values():
                numbers |= ps
            order = sorted(members)
            plan: dict[str, dict[str, list[int]]] = {m: {} for m in order}
            for i, number in enumerate(sorted(numbers)):
                member = order[i % len(order)]
                for t in topics:
                    if number in parts[t] and t in members[member].subscription:
                        plan[member].setdefault(t, []).append(number)
            return {m: ConsumerProtocolMemberAssignment(cls.version, sorted(plan[m].items()), b"") for m in order}

        @classmethod
        def metadata(cls, topics: Any) -> Any:
            return ConsumerProtocolMemberMetadata(cls.version, list(topics), b"")

        @classmethod
        def on_assignment(cls, assignment: Any) -> None:
            pass

    return CopartitionedAssignor


def async_consumer(topics: Sequence[str], bootstrap: str, *, group_id: str, listener: Any = None,
                   **overrides: Any) -> Any:
    """An ``aiokafka.AIOKafkaConsumer`` in ``group_id`` with :data:`CONSUMER_SETTINGS`, subscribed
    to ``topics`` (with the rebalance ``listener``), partitions assigned by
    :func:`copartitioned_assignor`, offsets committed by the caller. Not started.
    """
    from aiokafka import AIOKafkaConsumer

    settings = {**CONSUMER_SETTINGS, "enable_auto_commit": False,
                "partition_assignment_strategy": (copartitioned_assignor(),), **overrides}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, client_id="biopriv-worker",
                                **settings)
    consumer.subscribe(list(topics), listener=listener)
    return consumer


def async_producer(bootstrap: str, **overrides: Any) -> Any:
    """An ``aiokafka.AIOKafkaProducer`` with :data:`ASYNC_PRODUCER_SETTINGS`. Not started."""
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(bootstrap_servers=bootstrap, client_id="biopriv-worker",
                            **{**ASYNC_PRODUCER_SETTINGS, **overrides})


@contextlib.contextmanager
def broker_errors(bootstrap: str) -> Iterator[None]:
    """Map kafka-python errors raised inside the block to :class:`BrokerError`."""
    from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

    try:
        yield
    except (KafkaTimeoutError, KafkaConnectionError) as exc:
        raise BrokerError(
            f"no Kafka broker answers at {bootstrap} ({exc}); start one with `biopriv kafka up`"
        ) from None
    except KafkaError as exc:
        raise BrokerError(f"Kafka at {bootstrap}: {type(exc).__name__}: {exc}") from None


def make_producer(bootstrap: str = DEFAULT_BOOTSTRAP, **overrides: Any) -> Any:
    """A ``kafka.KafkaProducer`` with :data:`PRODUCER_SETTINGS` (bytes keys and values)."""
    from kafka import KafkaProducer

    settings = {**PRODUCER_SETTINGS, **overrides}
    with broker_errors(bootstrap):
        return KafkaProducer(bootstrap_servers=bootstrap, client_id="biopriv", **settings)


def make_consumer(
    topics: Sequence[str],
    bootstrap: str = DEFAULT_BOOTSTRAP,
    *,
    group_id: str | None = None,
    **overrides: Any,
) -> Any:
    """A ``kafka.KafkaConsumer`` subscribed to ``topics`` with :data:`CONSUMER_SETTINGS`.

    ``group_id=None`` reads without committing offsets (tail, tests).
    """
    from kafka import KafkaConsumer

    settings = {**CONSUMER_SETTINGS, **overrides}
    if group_id is None:
        settings.setdefault("enable_auto_commit", False)
    with broker_errors(bootstrap):
        return KafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=group_id, **settings)


def _tcp_reachable(bootstrap: str, timeout_s: float) -> bool:
    """True when a TCP connection to some ``host:port`` of ``bootstrap`` succeeds."""
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
                return True
        except (OSError, ValueError):
            continue
    return False


def check_broker(bootstrap: str = DEFAULT_BOOTSTRAP, timeout_s: float = 5.0) -> None:
    """Raise :class:`BrokerError` unless a broker answers at ``bootstrap`` within ``timeout_s``.

    A plain TCP probe comes first: when nothing listens, the error is immediate, and no Kafka
    client is built (kafka-python leaves sockets open when its bootstrap fails).
    """
    from kafka import KafkaAdminClient

    if not _tcp_reachable(bootstrap, min(timeout_s, 2.0)):
        raise BrokerError(f"no Kafka broker answers at {bootstrap} (connection refused); start one with `biopriv kafka up`")
    with broker_errors(bootstrap):
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=int(timeout_s * 1000),
            bootstrap_timeout_ms=int(timeout_s * 1000),
        )
        try:
            admin.list_topics()
        finally:
            admin.close()


def ensure_topics(bootstrap: str = DEFAULT_BOOTSTRAP, topics: Sequence[TopicSpec] | None = None) -> list[str]:
    """Create the missing ``topics`` (default: :func:`project_topics`); return the names created."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    specs = list(topics) if topics is not None else project_topics()
    with broker_errors(bootstrap):
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="biopriv-admin", bootstrap_timeout_ms=10000)
        try:
            existing = set(admin.list_topics())
            new = [
                NewTopic(s.name, num_partitions=s.partitions, replication_factor=1, topic_configs=dict(s.configs))
                for s in specs
                if s.name not in existing
            ]
            if new:
                try:
                    admin.create_topics(new)
                except TopicAlreadyExistsError:
                    pass
            return [t.name for t in new]
        finally:
            admin.close()


def delete_topics(bootstrap: str, names: Sequence[str]) -> None:
    """Delete topics (tests use their own topics and clean up)."""
    from kafka import KafkaAdminClient

    with broker_errors(bootstrap):
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="biopriv-admin", bootstrap_timeout_ms=10000)
        try:
            admin.delete_topics(list(names))
        finally:
            admin.close()


def read_partition(
    bootstrap: str,
    topic: str,
    partition: int,
    start: int | None = None,
    end: int | None = None,
    *,
    timeout_s: float = 60.0,
) -> list[tuple[bytes | None, bytes | None, int]]:
    """``(key, value, offset)`` of one partition from ``start`` (default: the beginning) up to
    ``end`` exclusive (default: the end offset when called). Used on partition assignment to read
    the state topic and to re-read raw frames for a window rebuild.
    """
    import time as _time

    from kafka import TopicPartition

    tp = TopicPartition(topic, partition)
    with broker_errors(bootstrap):
        consumer = make_consumer([], bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100,
                                 max_partition_fetch_bytes=4 * 1024 * 1024)
        try:
            consumer.assign([tp])
            first = consumer.beginning_offsets([tp])[tp]
            last = consumer.end_offsets([tp])[tp]
            stop = last if end is None else min(end, last)
            begin = first if start is None else max(start, first)
            out: list[tuple[bytes | None, bytes | None, int]] = []
            if begin >= stop:
                return out
            consumer.seek(tp, begin)
            deadline = _time.monotonic() + timeout_s
            while consumer.position(tp) < stop:
                if _time.monotonic() > deadline:
                    raise BrokerError(f"reading {topic}/{partition} [{begin}, {stop}) timed out after {timeout_s} s")
                for records in consumer.poll(timeout_ms=200).values():
                    out.extend((r.key, r.value, r.offset) for r in records if r.offset < stop)
            return out
        finally:
            consumer.close()
