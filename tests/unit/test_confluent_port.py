"""confluent-kafka (librdkafka) errors reach the worker only as the project's
:class:`~pipeline.errors.BrokerError` (:class:`~pipeline.errors.BrokerUnavailable` when transient),
through :class:`connectors.confluent.ConfluentPort` and :func:`connectors.confluent.confluent_error`.
No broker: the port's consumer and producer are stand-ins."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from connectors.confluent import PERMANENT, TRANSIENT, ConfluentPort, _Runner, confluent_error
from connectors.kafka import OutRecord
from connectors.port import Message
from pipeline.errors import BrokerError, BrokerUnavailable

#: Every error code confluent-kafka names (librdkafka's own ``_NAME`` ones and the broker's).
CODES = sorted(n for n in dir(KafkaError) if n.isupper() and isinstance(getattr(KafkaError, n), int)
               and n != "NO_ERROR") + sorted(n for n in dir(KafkaError) if n.startswith("_") and not n.startswith("__"))


def test_every_librdkafka_error_maps_into_broker_error_naming_the_action_and_code() -> None:
    assert len(CODES) > 150
    for name in CODES:
        err = KafkaError(getattr(KafkaError, name))
        for exc in (err, KafkaException(err)):
            mapped = confluent_error(exc, "fetch")
            assert isinstance(mapped, BrokerError), name
            assert str(mapped).startswith(f"fetch: {err.name()}"), (name, str(mapped))
            assert isinstance(mapped, BrokerUnavailable) == (err.name() in TRANSIENT), name


@pytest.mark.parametrize("name", ["_TRANSPORT", "_ALL_BROKERS_DOWN", "_TIMED_OUT", "_MSG_TIMED_OUT", "NOT_COORDINATOR",
                                  "COORDINATOR_NOT_AVAILABLE", "REQUEST_TIMED_OUT", "LEADER_NOT_AVAILABLE"])
def test_an_outage_is_transient(name: str) -> None:
    assert isinstance(confluent_error(KafkaException(KafkaError(getattr(KafkaError, name))), "send"), BrokerUnavailable)


@pytest.mark.parametrize("name", ["_AUTHENTICATION", "SASL_AUTHENTICATION_FAILED", "TOPIC_AUTHORIZATION_FAILED",
                                  "GROUP_AUTHORIZATION_FAILED", "_SSL", "_INVALID_ARG", "INVALID_CONFIG",
                                  "REBALANCE_IN_PROGRESS", "ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID"])
def test_a_refusal_a_bad_setting_or_a_rebalance_is_not_an_outage_even_when_librdkafka_would_retry(name: str) -> None:
    assert name in PERMANENT
    mapped = confluent_error(KafkaError(getattr(KafkaError, name), retriable=True), "commit")
    assert type(mapped) is BrokerError


def test_a_fatal_error_is_permanent_and_the_detail_is_kept() -> None:
    mapped = confluent_error(KafkaException(KafkaError(KafkaError._TRANSPORT, "boom", fatal=True)), "send")
    assert type(mapped) is BrokerError
    assert str(mapped) == "send: _TRANSPORT: boom"
    assert isinstance(confluent_error(TimeoutError(), "read"), BrokerUnavailable)
    assert type(confluent_error(ValueError("x"), "read")) is BrokerError


class Msg:
    """A stand-in ``confluent_kafka.Message``."""

    def __init__(self, topic: str, partition: int, offset: int, error: KafkaError | None = None) -> None:
        self._t, self._p, self._o, self._e = topic, partition, offset, error

    def error(self) -> KafkaError | None:
        return self._e

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def key(self) -> bytes:
        return b"k%d" % self._o

    def value(self) -> bytes:
        return b"v%d" % self._o


class Consumer:
    """A stand-in confluent-kafka consumer: ``consume`` returns the queued batches; ``commit``
    answers once ``answer`` is set (with ``error`` raised, or per-partition ``partition_error``)."""

    def __init__(self, batches: list[list[Msg]] | None = None, error: KafkaError | None = None,
                 partition_error: KafkaError | None = None) -> None:
        self.batches = list(batches or [])
        self.error, self.partition_error = error, partition_error
        self.answer = threading.Event()
        self.commits: list[list[tuple[str, int, int]]] = []
        self.consumed: list[tuple[int, float]] = []

    def consume(self, num: int, timeout: float) -> list[Msg]:
        self.consumed.append((num, timeout))
        return self.batches.pop(0) if self.batches else []

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[SimpleNamespace]:
        assert asynchronous is False
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])
        self.answer.wait()
        if self.error is not None:
            raise KafkaException(self.error)
        return [SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=tp.offset, error=self.partition_error)
                for tp in offsets]


def port_with(consumer: Consumer, producer: Any = None, request_timeout_s: float = 15.0) -> ConfluentPort:
    port = ConfluentPort("127.0.0.1:1", "g", ["t.raw.eeg"], producer_options={"request_timeout_s": request_timeout_s})
    port.consumer, port.producer = consumer, producer
    port._loop = asyncio.get_running_loop()
    port._consume, port._commits = _Runner("test-consume"), _Runner("test-commit")
    port._acks = []
    return port


def test_a_batch_is_grouped_by_partition_and_an_error_behind_records_comes_at_the_next_fetch() -> None:
    denied = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)

    async def run() -> None:
        port = port_with(Consumer([
            [Msg("t.raw.eeg", 0, 5), Msg("t.raw.eeg", 1, 2), Msg("t.raw.eeg", 0, 6), Msg("t.raw.eeg", 0, 0, denied)],
            [Msg("t.raw.eeg", 0, 0, KafkaError(KafkaError._TRANSPORT))],
        ]))
        got = await port.fetch(10, 5)
        assert got == {("t.raw.eeg", 0): [Message("t.raw.eeg", 0, 5, b"k5", b"v5"), Message("t.raw.eeg", 0, 6, b"k6", b"v6")],
                       ("t.raw.eeg", 1): [Message("t.raw.eeg", 1, 2, b"k2", b"v2")]}
        with pytest.raises(BrokerError, match="^fetch: TOPIC_AUTHORIZATION_FAILED") as denied_error:
            await port.fetch(10, 5)
        assert not isinstance(denied_error.value, BrokerUnavailable)
        with pytest.raises(BrokerUnavailable, match="^fetch: _TRANSPORT"):
            await port.fetch(10, 5)
        assert await port.fetch(10, 5) == {}
        # librdkafka holds a batch consume(n, timeout) until it has n messages: only a consume of
        # one message may wait, a batch takes what is there
        assert all(num == 1 or timeout == 0 for num, timeout in port.consumer.consumed)
        assert (1, 0.01) in port.consumer.consumed
        port._closing = True
        assert await port.fetch(10, 5) is None

    asyncio.run(run())


def test_an_empty_prefetch_queue_waits_for_one_message_then_takes_what_came_with_it() -> None:
    async def run() -> None:
        consumer = Consumer([[], [Msg("t.raw.eeg", 0, 1)], [Msg("t.raw.eeg", 0, 2), Msg("t.raw.eeg", 0, 3)]])
        port = port_with(consumer)
        got = await port.fetch(100, 500)
        assert got is not None and [m.offset for m in got[("t.raw.eeg", 0)]] == [1, 2, 3]
        assert consumer.consumed == [(500, 0), (1, 0.1), (499, 0)]

    asyncio.run(run())


def test_a_silent_coordinator_is_an_outage_and_the_retry_waits_for_the_same_commit() -> None:
    async def run() -> None:
        consumer = Consumer()
        port = port_with(consumer)
        with pytest.raises(BrokerUnavailable, match="commit to the group coordinator: no answer within the request timeout"):
            await port.commit({("t.raw.eeg", 0): 3}, timeout_s=0.01)
        consumer.answer.set()
        await port.commit({("t.raw.eeg", 0): 4}, timeout_s=5.0)  # the first commit's answer
        assert consumer.commits == [[("t.raw.eeg", 0, 3)]]
        await port.commit({("t.raw.eeg", 0): 4}, timeout_s=5.0)
        assert consumer.commits[-1] == [("t.raw.eeg", 0, 4)]

    asyncio.run(run())


@pytest.mark.parametrize(("consumer", "kind", "match"), [
    (Consumer(error=KafkaError(KafkaError.REBALANCE_IN_PROGRESS)), BrokerError, "REBALANCE_IN_PROGRESS"),
    (Consumer(error=KafkaError(KafkaError._WAIT_COORD)), BrokerUnavailable, "_WAIT_COORD"),
    (Consumer(partition_error=KafkaError(KafkaError.ILLEGAL_GENERATION)), BrokerError, r"\(t.raw.eeg/0\): ILLEGAL_GENERATION"),
])
def test_commit_errors_are_mapped(consumer: Consumer, kind: type[BrokerError], match: str) -> None:
    consumer.answer.set()

    async def run() -> None:
        with pytest.raises(kind, match=match) as got:
            await port_with(consumer).commit({("t.raw.eeg", 0): 3}, timeout_s=5.0)
        assert (kind is BrokerError) == (not isinstance(got.value, BrokerUnavailable))

    asyncio.run(run())


class Producer:
    """A stand-in producer: ``produce`` raises ``error`` (an exception instance) or reports delivery at once."""

    def __init__(self, error: BaseException | None = None, report: KafkaError | None = None) -> None:
        self.error, self.report = error, report
        self.produced: list[tuple[str, bytes, dict[str, Any]]] = []

    def produce(self, topic: str, value: bytes, **options: Any) -> None:
        if self.error is not None:
            raise self.error
        self.produced.append((topic, value, options))
        options["on_delivery"](self.report, None)


def test_send_hands_the_record_over_and_maps_refusals_and_failed_deliveries() -> None:
    from connectors.confluent import _acknowledge

    async def run() -> None:
        failed = KafkaError(KafkaError._MSG_TIMED_OUT)
        port = port_with(Consumer(), Producer(report=failed))
        ack = await port.send(OutRecord("t.private", b"v", key=b"k", headers=(("h", b"1"),), partition=2))
        topic, value, options = port.producer.produced[0]
        assert (topic, value, options["key"], options["headers"], options["partition"]) == (
            "t.private", b"v", b"k", [("h", b"1")], 2)
        _acknowledge(port._acks)  # what the poll thread hands to the loop
        with pytest.raises(KafkaException) as exc:
            await ack
        mapped = port.delivery_error(exc.value)
        assert isinstance(mapped, BrokerUnavailable) and str(mapped).startswith("send: _MSG_TIMED_OUT")
        assert port.delivery_error(ValueError("a bug")) is None
        with pytest.raises(BrokerUnavailable, match="queue stayed full"):
            await port_with(Consumer(), Producer(error=BufferError()), request_timeout_s=0.02).send(OutRecord("t", b"v"))
        with pytest.raises(BrokerError, match="^send to t: _INVALID_ARG"):
            await port_with(Consumer(), Producer(error=KafkaException(KafkaError(KafkaError._INVALID_ARG)))).send(
                OutRecord("t", b"v"))

    asyncio.run(run())
