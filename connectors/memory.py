"""An in-memory Kafka for the stream worker: :class:`MemoryBroker` (topics, committed offsets, an
event log) and :class:`MemoryPort`, a :class:`~connectors.port.KafkaPort` on it.

The worker-loop unit tests (``tests/unit/test_worker_loop.py``) run the real worker on it, without
a broker. The test drives the group: :meth:`MemoryPort.rebalance` revokes the port's partitions,
then assigns the new set, as aiokafka's eager rebalance does. A sent record is written when its
acknowledgement is awaited (the worker awaits them in the order it sent them), so a worker that
commits offsets without awaiting its output commits past records not written, which the event
log shows. :meth:`MemoryPort.kill` is a ``kill -9``: the port's pending records are lost and every
later call of the worker on it is cancelled, so nothing more reaches the broker.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from connectors.kafka import OutRecord
from connectors.port import Message, Partition, Rebalance, Stored
from pipeline.errors import BrokerError


@dataclass(frozen=True)
class Written:
    """A record as a partition holds it."""

    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


#: One entry of :attr:`MemoryBroker.events`: ``("write", topic, partition, offset, key)`` or
#: ``("commit", group, partition, offset)``.
Event = tuple[str, str, int, int, bytes | None] | tuple[str, str, Partition, int]


@dataclass
class MemoryBroker:
    """Topics as lists of records per partition, committed offsets per group, and an event log."""

    topics: dict[str, list[list[Written]]] = field(default_factory=dict)
    committed: dict[str, dict[Partition, int]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    #: Called with every event as it is logged (a test may kill a port at a chosen point).
    watch: Callable[[Event], None] | None = None

    def create(self, names: Sequence[str], partitions: int) -> None:
        for name in names:
            self.topics.setdefault(name, [[] for _ in range(partitions)])

    def append(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None,
               headers: tuple[tuple[str, bytes], ...] = ()) -> int:
        """Write one record (partition: given, else the key's hash, else 0); return its offset."""
        parts = self.topics[topic]
        if partition is None:
            partition = zlib.crc32(key) % len(parts) if key is not None else 0
        parts[partition].append(Written(key, value, headers))
        offset = len(parts[partition]) - 1
        self.log(("write", topic, partition, offset, key))
        return offset

    def log(self, event: Event) -> None:
        self.events.append(event)
        if self.watch is not None:
            self.watch(event)

    def records(self, topic: str) -> list[Written]:
        """Every record of ``topic``, partition by partition."""
        return [r for part in self.topics[topic] for r in part]


class MemoryPort:
    """A :class:`~connectors.port.KafkaPort` of one group member on a :class:`MemoryBroker`.

    ``fail_send(record)`` may return an error for a record's acknowledgement (the record is then
    not written): an injected broker outage.
    """

    def __init__(self, broker: MemoryBroker, group: str = "g",
                 fail_send: Callable[[OutRecord], BrokerError | None] | None = None) -> None:
        self.broker, self.group, self.fail_send = broker, group, fail_send
        self.assigned: set[Partition] = set()
        self.positions: dict[Partition, int] = {}
        self.stopped = self.killed = False
        self._pending: dict[asyncio.Future[Any], OutRecord] = {}  # sent, not yet written (acknowledgement -> record)
        self._on_assign: Rebalance | None = None
        self._on_revoke: Rebalance | None = None

    # -- the test's side ----------------------------------------------------------------------

    async def rebalance(self, assigned: set[Partition]) -> None:
        """Revoke every partition of this member, then assign ``assigned`` (from the committed offsets)."""
        assert self._on_assign is not None and self._on_revoke is not None, "the port is not started"
        await self._on_revoke(set(self.assigned))
        self.assigned = set()
        committed = self.broker.committed.get(self.group, {})
        self.positions = {tp: committed.get(tp, 0) for tp in assigned}
        self.assigned = set(assigned)
        await self._on_assign(set(assigned))

    def kill(self) -> None:
        """The process dies: records not yet written are lost, later calls never reach the broker."""
        self.killed = True
        for ack in self._pending:
            ack.cancel()
        self._pending = {}

    # -- KafkaPort ----------------------------------------------------------------------------

    def _alive(self) -> None:
        if self.killed:
            raise asyncio.CancelledError("the port was killed")

    async def start(self, on_assign: Rebalance, on_revoke: Rebalance) -> None:
        self._alive()
        self._on_assign, self._on_revoke = on_assign, on_revoke

    async def stop(self) -> None:
        self._alive()
        self.stopped = True

    async def fetch(self, timeout_ms: int, max_records: int) -> dict[Partition, list[Message]] | None:
        self._alive()
        if self.stopped:
            return None
        out: dict[Partition, list[Message]] = {}
        left = max_records
        for tp in sorted(self.assigned):
            topic, number = tp
            start = self.positions[tp]
            held = self.broker.topics[topic][number][start:start + left]
            if held:
                out[tp] = [Message(topic, number, start + i, r.key, r.value) for i, r in enumerate(held)]
                self.positions[tp] = start + len(held)
                left -= len(held)
        if not out:
            await asyncio.sleep(min(timeout_ms, 5) / 1000)
            self._alive()
        return out

    async def send(self, record: OutRecord) -> asyncio.Future[Any]:
        self._alive()
        loop = asyncio.get_running_loop()
        ack: asyncio.Future[Any] = loop.create_future()
        self._pending[ack] = record
        loop.call_soon(self._acknowledge, record, ack)  # written when the loop next runs, unless killed first
        return ack

    def delivery_error(self, exc: BaseException) -> BrokerError | None:
        return exc if isinstance(exc, BrokerError) else None

    def _acknowledge(self, record: OutRecord, ack: asyncio.Future[Any]) -> None:
        """Write the record (unless an injected failure says otherwise), then answer."""
        if self.killed or ack.done():
            return
        del self._pending[ack]
        error = self.fail_send(record) if self.fail_send is not None else None
        if error is not None:
            ack.set_exception(error)
        else:
            self.broker.append(record.topic, record.value, record.key, record.partition, record.headers)
            ack.set_result(None)

    async def commit(self, offsets: dict[Partition, int], timeout_s: float) -> None:
        self._alive()
        group = self.broker.committed.setdefault(self.group, {})
        for tp, offset in sorted(offsets.items()):
            group[tp] = offset
            self.broker.log(("commit", self.group, tp, offset))

    async def beginning_offsets(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        self._alive()
        return dict.fromkeys(partitions, 0)

    async def read_partition(self, topic: str, partition: int, start: int | None = None,
                             end: int | None = None) -> list[Stored]:
        self._alive()
        held = self.broker.topics[topic][partition]
        begin, stop = start or 0, len(held) if end is None else min(end, len(held))
        return [(held[o].key, held[o].value, o) for o in range(begin, stop)]

    def partition_count(self, topic: str) -> int:
        return len(self.broker.topics.get(topic, ()))

    def highwater(self, partition: Partition) -> int | None:
        topic, number = partition
        return len(self.broker.topics[topic][number]) if partition in self.positions else None
