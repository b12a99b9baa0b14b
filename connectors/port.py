"""The stream worker's narrow port to Kafka, and its aiokafka implementation.

:class:`KafkaPort` is everything the worker (:class:`pipeline.app.StreamWorker`) needs from Kafka:
fetch a batch from its assigned raw partitions, learn of assignment and revocation, send records
with headers (an acknowledgement to await), read a partition (state records, raw frames to rebuild
windows from), commit offsets, and the few facts the loop and its metrics ask for (beginning
offsets, partition counts, high watermarks). Partitions are plain ``(topic, partition)`` tuples.
Every failure is a :class:`~pipeline.errors.BrokerError` (:class:`~pipeline.errors.BrokerUnavailable`
when transient), mapped by :func:`connectors.kafka.async_error` (aiokafka) or
:func:`connectors.confluent.confluent_error` (librdkafka).

Two production ports: :class:`connectors.confluent.ConfluentPort` (confluent-kafka, the default)
and :class:`AiokafkaPort` here (one aiokafka consumer in the worker's group, one aiokafka producer,
kafka-python reads in a thread; ``biopriv worker --kafka-client aiokafka``).
:class:`connectors.memory.MemoryPort` is the in-memory one the worker-loop unit tests run on.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, Protocol

from connectors.kafka import (
    OutRecord,
    async_consumer,
    async_error,
    async_errors,
    async_producer,
    async_sender,
    delivery_error,
    mute_client_logs,
    read_partition,
)
from connectors.security import ClientSecurity
from pipeline.errors import BrokerError, BrokerUnavailable

#: A topic partition: ``(topic, partition number)``.
Partition = tuple[str, int]
#: What :meth:`KafkaPort.read_partition` returns: ``(key, value, offset)`` in offset order.
Stored = tuple[bytes | None, bytes | None, int]
#: Called with the partitions assigned to, or revoked from, the worker.
Rebalance = Callable[[set[Partition]], Awaitable[None]]


class Message(NamedTuple):
    """One fetched record of a raw partition.

    A named tuple, not a frozen dataclass: one is built per message fetched (in the consume
    thread with confluent-kafka), and a tuple is built in a third of the time."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class KafkaPort(Protocol):
    """What the stream worker needs from Kafka; see the module docstring."""

    async def start(self, on_assign: Rebalance, on_revoke: Rebalance) -> None:
        """Join the group; ``on_revoke`` runs before partitions leave, ``on_assign`` after they come."""

    async def stop(self) -> None:
        """Leave the group and close the clients (nothing is committed here)."""

    async def fetch(self, timeout_ms: int, max_records: int) -> dict[Partition, list[Message]] | None:
        """The next batch of the assigned partitions ({} after ``timeout_ms`` without data); None once stopped."""

    async def send(self, record: OutRecord) -> asyncio.Future[Any]:
        """Enqueue ``record`` (:class:`BrokerError` if it cannot); return the future of its
        acknowledgement, which may fail with the client's own error (:meth:`delivery_error`)."""

    def delivery_error(self, exc: BaseException) -> BrokerError | None:
        """A failed acknowledgement's exception as a :class:`BrokerError` (None: not a broker failure)."""

    async def commit(self, offsets: dict[Partition, int], timeout_s: float) -> None:
        """Commit the group's next offsets to consume; :class:`BrokerUnavailable` after ``timeout_s``
        (a retry then waits for the same commit)."""

    async def beginning_offsets(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        """The first offset still held of each partition."""

    async def read_partition(self, topic: str, partition: int, start: int | None = None,
                             end: int | None = None) -> list[Stored]:
        """The records of ``[start, end)`` (default: the beginning, the end offset when called)."""

    def partition_count(self, topic: str) -> int:
        """Partitions of ``topic`` as the group sees it (0 if unknown)."""

    def highwater(self, partition: Partition) -> int | None:
        """The partition's end offset when last fetched from (None before)."""


class AiokafkaPort:
    """:class:`KafkaPort` over aiokafka (consumer in ``group``, producer) and kafka-python reads.

    ``consumer_options`` and ``producer_options`` go to :func:`connectors.kafka.async_consumer`
    and :func:`connectors.kafka.async_producer`. ``quiet()`` is true during a broker outage: the
    clients' logs are then muted (:func:`connectors.kafka.mute_client_logs`).
    """

    def __init__(self, bootstrap: str, group: str, topics: Sequence[str], *, security: ClientSecurity | None = None,
                 consumer_options: dict[str, Any] | None = None, producer_options: dict[str, Any] | None = None,
                 quiet: Callable[[], bool] = lambda: False) -> None:
        self.bootstrap, self.group, self.topics, self.security = bootstrap, group, tuple(topics), security
        self.consumer_options = consumer_options or {}
        self.producer_options = producer_options or {}
        self.quiet = quiet
        self.consumer: Any = None
        self.producer: Any = None
        self._send: Callable[[OutRecord], Awaitable[Any]] | None = None
        self._commit = PendingCommit()

    async def start(self, on_assign: Rebalance, on_revoke: Rebalance) -> None:
        from aiokafka import ConsumerRebalanceListener

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no type hints
            async def on_partitions_revoked(self, revoked: Any) -> None:
                await on_revoke({(tp.topic, tp.partition) for tp in revoked})

            async def on_partitions_assigned(self, assigned: Any) -> None:
                await on_assign({(tp.topic, tp.partition) for tp in assigned})

        self.muted = mute_client_logs(self.quiet)
        self.producer = async_producer(self.bootstrap, security=self.security, **self.producer_options)
        await self.producer.start()
        self._send = async_sender(self.producer)
        self.consumer = async_consumer(self.topics, self.bootstrap, group_id=self.group, listener=Listener(),
                                       security=self.security, **self.consumer_options)
        await self.consumer.start()

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()

    async def fetch(self, timeout_ms: int, max_records: int) -> dict[Partition, list[Message]] | None:
        from aiokafka.errors import ConsumerStoppedError, KafkaError

        try:
            batches = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except ConsumerStoppedError:
            return None
        except KafkaError as exc:
            raise async_error(exc, "fetch") from exc
        return {(tp.topic, tp.partition): [Message(tp.topic, tp.partition, m.offset, m.key, m.value) for m in msgs]
                for tp, msgs in batches.items()}

    async def send(self, record: OutRecord) -> asyncio.Future[Any]:
        assert self._send is not None, "the port is not started"
        ack: asyncio.Future[Any] = await self._send(record)
        return ack

    def delivery_error(self, exc: BaseException) -> BrokerError | None:
        return delivery_error(exc)

    async def commit(self, offsets: dict[Partition, int], timeout_s: float) -> None:
        """Bounded by ``timeout_s``, not cancelled: a retry waits for the same commit (:class:`PendingCommit`)."""
        from aiokafka import TopicPartition

        def begin() -> asyncio.Future[Any]:
            return asyncio.ensure_future(self.consumer.commit({TopicPartition(*tp): o for tp, o in offsets.items()}))

        with async_errors("commit to the group coordinator"):
            await self._commit.wait(begin, timeout_s)

    async def beginning_offsets(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        from aiokafka import TopicPartition

        with async_errors("read beginning offsets"):
            got = await self.consumer.beginning_offsets([TopicPartition(*tp) for tp in partitions])
        return {(tp.topic, tp.partition): o for tp, o in got.items()}

    async def read_partition(self, topic: str, partition: int, start: int | None = None,
                             end: int | None = None) -> list[Stored]:
        read = functools.partial(read_partition, self.bootstrap, topic, partition, start, end, security=self.security)
        return await asyncio.get_running_loop().run_in_executor(None, read)

    def partition_count(self, topic: str) -> int:
        return len(self.consumer.partitions_for_topic(topic) or ())

    def highwater(self, partition: Partition) -> int | None:
        from aiokafka import TopicPartition

        if self.consumer is None:
            return None
        high = self.consumer.highwater(TopicPartition(*partition))
        return None if high is None else int(high)


class PendingCommit:
    """The offset commit a port waits for, shared by both production ports.

    A commit waits for the group coordinator without a limit of its own (aiokafka's request,
    librdkafka's synchronous commit in the port's commit thread). :meth:`wait` bounds the wait, so
    an outage is visible (readiness) even when the worker has nothing to send, but does not
    cancel the commit (aiokafka shields its request; a cancelled wait left a task whose timeout
    error was logged with a traceback): the retry waits for the same commit again, and only once
    it was answered does the next call begin a new one.
    """

    def __init__(self) -> None:
        self._pending: asyncio.Future[Any] | None = None  # a commit not answered yet

    async def wait(self, begin: Callable[[], asyncio.Future[Any]], timeout_s: float) -> Any:
        """The outcome of the commit not answered yet, else of the one ``begin()`` starts: its
        result, or its exception raised as is; :class:`BrokerUnavailable` when no answer came
        within ``timeout_s``."""
        task = self._pending
        if task is None:
            task = self._pending = begin()
            task.add_done_callback(retrieved)
        await asyncio.wait([task], timeout=timeout_s)
        if not task.done():
            raise BrokerUnavailable("commit to the group coordinator: no answer within the request timeout")
        self._pending = None
        return task.result()


def retrieved(future: asyncio.Future[Any]) -> None:
    """Done callback: the outcome of a future is looked at (asyncio logs unretrieved exceptions)."""
    if not future.cancelled():
        future.exception()
