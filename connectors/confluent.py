"""The stream worker's Kafka port on confluent-kafka (librdkafka): :class:`ConfluentPort`, its
client settings and its error mapping (:func:`confluent_error`).

librdkafka does its network I/O in its own threads: the consumer prefetches every assigned
partition in the background and the producer writes as soon as a record is queued
(``linger.ms=0``). From Python each call is a short C call. Three threads of the port's own
(daemons, so a hung broker cannot hold the process at exit) talk to it:

* the *consume* thread runs every blocking ``Consumer`` call: the batch ``consume()`` of
  :meth:`ConfluentPort.fetch` and ``close()``. librdkafka runs the group's rebalance callbacks
  inside ``consume()``; there the thread hands the revoked or assigned partitions to the worker's
  coroutine on the event loop and waits for it (``asyncio.run_coroutine_threadsafe``), so the
  worker checkpoints and commits revoked partitions *before* they leave (the eager protocol:
  ``range``, see below). Partitions librdkafka declares *lost* (no contact with the coordinator
  for the session timeout: a broker outage) are revoked from the worker at the next rebalance,
  once the broker is back, which is when aiokafka revokes them too;
* the *commit* thread runs the synchronous offset commits and the watermark queries, so a commit
  answered late (a broker outage) holds neither the fetches nor a revocation that waits for it;
* the *poll* thread serves the producer's delivery reports (``poll()``) and resolves the
  acknowledgement futures on the event loop, one hand-over per poll call.

Partition assignment: ``range``, librdkafka's eager assignor. With the same partition count on
every raw topic (which co-partitioning needs anyway: a device's key hashes to the same number
on each) it gives each member the same partition *numbers* of every subscribed topic, as
:func:`connectors.kafka.copartitioned_assignor` does for aiokafka (in contiguous ranges instead of
round-robin), so one worker holds every stream of a device. librdkafka cannot run a Python
assignor, and the two clients' groups do not mix: every worker of a group uses the same client.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from connectors.kafka import OutRecord, mute_client_logs, read_partition
from connectors.port import Message, Partition, PendingCommit, Rebalance, Stored
from connectors.security import ClientSecurity
from pipeline.errors import BrokerError, BrokerUnavailable

log = logging.getLogger("biopriv.librdkafka")

T = TypeVar("T")

#: librdkafka's own error codes (negative, ``_NAME``) and broker codes that mean "no answer now,
#: try again": a broker outage, a coordinator or leader moving. Anything else not retriable by
#: librdkafka's own judgement (``KafkaError.retriable()``) is a :class:`BrokerError`.
TRANSIENT = frozenset({
    "_TRANSPORT", "_ALL_BROKERS_DOWN", "_TIMED_OUT", "_TIMED_OUT_QUEUE", "_MSG_TIMED_OUT", "_WAIT_COORD",
    "_RESOLVE", "_QUEUE_FULL", "_UNKNOWN_BROKER", "_DESTROY_BROKER", "_RETRY", "_PREV_IN_PROGRESS",
    "_WAIT_CACHE", "_ISR_INSUFF", "_NODE_UPDATE", "_PURGE_INFLIGHT", "_PURGE_QUEUE",
    "NOT_COORDINATOR", "COORDINATOR_NOT_AVAILABLE", "COORDINATOR_LOAD_IN_PROGRESS", "REQUEST_TIMED_OUT",
    "NETWORK_EXCEPTION", "LEADER_NOT_AVAILABLE", "NOT_LEADER_FOR_PARTITION", "BROKER_NOT_AVAILABLE",
    "REPLICA_NOT_AVAILABLE", "NOT_ENOUGH_REPLICAS", "NOT_ENOUGH_REPLICAS_AFTER_APPEND", "KAFKA_STORAGE_ERROR",
    "FENCED_LEADER_EPOCH", "UNKNOWN_LEADER_EPOCH", "OFFSET_NOT_AVAILABLE", "THROTTLING_QUOTA_EXCEEDED",
})

#: Codes that are never an outage whatever librdkafka says of them: a refused login or TLS
#: handshake, a denied resource, a bad setting, a group rebalanced under a commit.
PERMANENT = frozenset({
    "_AUTHENTICATION", "_SSL", "SASL_AUTHENTICATION_FAILED", "ILLEGAL_SASL_STATE", "UNSUPPORTED_SASL_MECHANISM",
    "TOPIC_AUTHORIZATION_FAILED", "GROUP_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED",
    "TRANSACTIONAL_ID_AUTHORIZATION_FAILED", "_INVALID_ARG", "INVALID_CONFIG", "_NOT_CONFIGURED",
    "REBALANCE_IN_PROGRESS", "ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID", "_FATAL", "_FENCED",
})


def confluent_error(exc: BaseException, action: str) -> BrokerError:
    """A confluent-kafka error (``KafkaException`` or a ``KafkaError``) as
    :class:`~pipeline.errors.BrokerUnavailable` when it is transient (:data:`TRANSIENT`, or
    retriable by librdkafka's judgement and not in :data:`PERMANENT`), else :class:`BrokerError`.
    The message names ``action`` and librdkafka's code name."""
    from confluent_kafka import KafkaError, KafkaException

    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError) else exc
    if isinstance(err, KafkaError):
        name = err.name()
        transient = name not in PERMANENT and not err.fatal() and (name in TRANSIENT or err.retriable())
        detail = err.str()
        cls = BrokerUnavailable if transient else BrokerError
        return cls(f"{action}: {name}: {detail}" if detail else f"{action}: {name}")
    if isinstance(exc, TimeoutError):
        return BrokerUnavailable(f"{action}: no answer within the request timeout")
    return BrokerError(f"{action}: {type(exc).__name__}: {exc}")


def consumer_config(bootstrap: str, group: str, security: ClientSecurity | None = None, *,
                    fetch_min_bytes: int = 1, fetch_max_wait_ms: int = 10, fetch_bytes_per_partition: int = 64 * 1024,
                    prefetch_messages: int = 500, session_timeout_s: float = 10.0,
                    request_timeout_s: float | None = None) -> dict[str, Any]:
    """The worker's librdkafka consumer settings: group member with offsets committed by the
    caller, eager ``range`` assignment, the fetch shape of :class:`pipeline.app.WorkerSettings`,
    a bounded prefetch queue, TLS/SASL from ``security`` (None: the environment's).

    Fairness: librdkafka hands the messages of every partition over in one queue, in the order
    they were fetched, so what a flooding partition has prefetched is processed before a frame of
    another partition fetched later. ``prefetch_messages`` (the worker passes its ``max_batch``)
    caps a partition's share of that queue (``queued.min.messages``), and 1 MiB the whole queue:
    a backlog then delays the other partitions by about one batch, as with aiokafka's fetch of
    ``fetch_bytes_per_partition``. With librdkafka's defaults (100,000 messages, 64 MiB) and with
    10,000 messages / 4 MiB, the flood test (``tests/integration/test_backpressure.py -k flood``)
    measured 2.9 s p50 for the normal devices during the flood. A partition over its share is
    fetched again after 10 ms (``fetch.queue.backoff.ms``, default 1 s)."""
    from connectors.kafka import resolve_security

    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "client.id": "biopriv-worker",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "range",
        "enable.partition.eof": False,
        "fetch.min.bytes": fetch_min_bytes,
        "fetch.wait.max.ms": fetch_max_wait_ms,
        "max.partition.fetch.bytes": fetch_bytes_per_partition,
        # the prefetch queue (see above): a burst waits in Kafka, not in the worker's memory
        "queued.max.messages.kbytes": 1024,
        "queued.min.messages": prefetch_messages,
        "fetch.queue.backoff.ms": 10,
        "session.timeout.ms": int(session_timeout_s * 1000),
        "heartbeat.interval.ms": int(max(0.5, session_timeout_s / 5) * 1000),
        "socket.nagle.disable": True,
        "log.connection.close": False,
        **resolve_security(security).librdkafka(),
    }
    if request_timeout_s is not None:
        conf["socket.timeout.ms"] = int(request_timeout_s * 1000)
    return conf


def producer_config(bootstrap: str, security: ClientSecurity | None = None, *,
                    request_timeout_s: float | None = None) -> dict[str, Any]:
    """The worker's librdkafka producer settings: ``acks=all``, no linger, idempotent (ordered
    per partition across retries with several requests in flight, no duplicates from its own
    retries), a record not acknowledged within the request timeout (default 15 s, as the aiokafka
    producer's) fails, TLS/SASL from ``security`` (None: the environment's)."""
    from connectors.kafka import resolve_security

    timeout_ms = int((request_timeout_s or 15.0) * 1000)
    return {
        "bootstrap.servers": bootstrap,
        "client.id": "biopriv-worker",
        "acks": "all",
        "linger.ms": 0,
        "enable.idempotence": True,
        "message.timeout.ms": timeout_ms,
        "request.timeout.ms": timeout_ms,
        "message.max.bytes": 2 * 1024 * 1024,
        "socket.nagle.disable": True,
        "log.connection.close": False,
        **resolve_security(security).librdkafka(),
    }


class _Runner:
    """One daemon thread running submitted calls in order; each call's outcome becomes an asyncio future."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any], asyncio.AbstractEventLoop] | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, call: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((call, future, loop))
        return future

    def close(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            call, future, loop = job
            try:
                result = call()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting coroutine
                _hand(loop, future, None, exc)
            else:
                _hand(loop, future, result, None)


def _hand(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    def settle() -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: nobody waits any more
        pass


class ConfluentPort:
    """:class:`~connectors.port.KafkaPort` over confluent-kafka (a consumer in ``group``, an
    idempotent producer) and kafka-python reads of whole partitions in a thread.

    ``consumer_options`` and ``producer_options`` go to :func:`consumer_config` and
    :func:`producer_config` (librdkafka settings given as ``extra`` dicts override theirs).
    ``quiet()`` is true during a broker outage: librdkafka's log lines are then muted
    (:class:`connectors.kafka.ClientLogMute`).
    """

    def __init__(self, bootstrap: str, group: str, topics: Sequence[str], *, security: ClientSecurity | None = None,
                 consumer_options: dict[str, Any] | None = None, producer_options: dict[str, Any] | None = None,
                 quiet: Callable[[], bool] = lambda: False) -> None:
        self.bootstrap, self.group, self.topics, self.security = bootstrap, group, tuple(topics), security
        self.consumer_options = dict(consumer_options or {})
        self.producer_options = dict(producer_options or {})
        self.quiet = quiet
        self.request_timeout_s = float(self.producer_options.get("request_timeout_s") or 15.0)
        self.consumer: Any = None
        self.producer: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consume: _Runner | None = None
        self._commits: _Runner | None = None
        self._poller: threading.Thread | None = None
        self._closing = False
        self._closed = False
        self._counts: dict[str, int] = {}  # partitions per subscribed topic, refreshed at each assignment
        self._commit = PendingCommit()
        self._fetch_error: BaseException | None = None  # a consumer error that came with records
        self._lost: set[Partition] = set()  # partitions librdkafka declared lost, not yet revoked from the worker

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, on_assign: Rebalance, on_revoke: Rebalance) -> None:
        from confluent_kafka import Consumer, Producer

        self._loop = asyncio.get_running_loop()
        self.muted = mute_client_logs(self.quiet, loggers=[log.name])
        extra_c = self.consumer_options.pop("extra", {})
        extra_p = self.producer_options.pop("extra", {})
        self.producer = Producer({**producer_config(self.bootstrap, self.security, **self.producer_options), **extra_p},
                                 logger=log, error_cb=self._client_error)
        self._acks: list[tuple[asyncio.Future[Any], Any]] = []  # delivery reports of the current poll
        self._poller = threading.Thread(target=self._poll, name="biopriv-kafka-poll", daemon=True)
        self._poller.start()
        self.consumer = Consumer({**consumer_config(self.bootstrap, self.group, self.security, **self.consumer_options),
                                  **extra_c}, logger=log, error_cb=self._client_error)
        self._consume = _Runner("biopriv-kafka-consume")
        self._commits = _Runner("biopriv-kafka-commit")

        def assigned(_consumer: Any, partitions: list[Any]) -> None:
            """In the consume thread, inside ``consume()``: the worker's coroutines run on the loop;
            partitions lost before are handed over first (see ``lost``)."""
            if self._closing:
                return
            if self._lost:
                lost, self._lost = self._lost, set()
                self._run_on_loop(on_revoke, lost)
            self._refresh_counts()
            self._run_on_loop(on_assign, {(tp.topic, tp.partition) for tp in partitions})

        def revoked(_consumer: Any, partitions: list[Any]) -> None:
            """In the consume thread: the partitions leave only once the worker's coroutine returned."""
            if self._closing:
                return
            tps, self._lost = {(tp.topic, tp.partition) for tp in partitions} | self._lost, set()
            self._run_on_loop(on_revoke, tps)

        def lost(_consumer: Any, partitions: list[Any]) -> None:
            """librdkafka declares the assignment lost when it could not reach the group coordinator
            for the session timeout: a broker outage, as a rule. The worker is told at the next
            rebalance, with the broker back (as aiokafka revokes on rejoining): telling it now would
            drop its windows and ledgers in the middle of the outage and make it retry a checkpoint
            it cannot write inside librdkafka's callback. Meanwhile no message of those partitions
            is fetched, and the outage shows in the worker's failing sends and commits."""
            tps = {(tp.topic, tp.partition) for tp in partitions}
            self._lost |= tps
            log.warning("the group considers %d partition(s) of this worker lost (no contact with the coordinator "
                        "for the session timeout); they are handed over at the next rebalance", len(tps))

        self.consumer.subscribe(list(self.topics), on_assign=assigned, on_revoke=revoked, on_lost=lost)
        await self._consume.submit(self._refresh_counts)

    def _run_on_loop(self, callback: Rebalance, partitions: set[Partition]) -> None:
        """Run ``callback(partitions)`` on the event loop and wait for it (from the consume thread)."""
        assert self._loop is not None

        async def run() -> None:
            await callback(partitions)

        try:
            asyncio.run_coroutine_threadsafe(run(), self._loop).result()
        except Exception:  # noqa: BLE001 - the worker logs its own failures; the rebalance goes on
            log.exception("rebalance callback failed")

    def _refresh_counts(self) -> None:
        """Partitions per subscribed topic, from the producer's metadata. Never the consumer's:
        this runs inside its rebalance callback, and a consumer call that blocks in librdkafka
        (``list_topics``) clears the consumer's per-thread call state on return, so the next
        callback served by the same ``consume()`` (a log line, an error) aborts the process
        (``CallState_get: Assertion `cs != NULL' failed``; tests/integration/test_confluent_live.py)."""
        try:
            meta = self.producer.list_topics(timeout=5.0)
        except Exception as exc:  # noqa: BLE001 - the counts seen last stay
            log.warning("topic metadata not refreshed: %s", exc)
            return
        self._counts = {t: len(m.partitions) for t, m in meta.topics.items() if m.error is None}

    def _client_error(self, err: Any) -> None:
        """librdkafka's global errors (a broker down, a refused login); the worker learns of an
        outage from its own calls failing, so these are only logged (muted during an outage)."""
        log.warning("kafka client: %s: %s", err.name(), err.str())

    def _poll(self) -> None:
        """The poll thread: serve delivery reports, hand each poll's acknowledgements to the loop at once."""
        producer, loop, acks = self.producer, self._loop, self._acks
        assert loop is not None
        while not self._closed:
            producer.poll(0.05)
            if acks:
                done = acks[:]
                acks.clear()
                try:
                    loop.call_soon_threadsafe(_acknowledge, done)
                except RuntimeError:  # the loop is closed
                    return

    async def stop(self) -> None:
        self._closing = True
        try:
            if self.consumer is not None and self._consume is not None:
                closing = self._consume.submit(self.consumer.close)
                await asyncio.wait([closing], timeout=30.0)
                if not closing.done():
                    log.warning("the consumer did not close within 30 s")
            if self.producer is not None and self._commits is not None:
                left = await self._commits.submit(functools.partial(self.producer.flush, self.request_timeout_s))
                if left:
                    log.warning("%d record(s) not delivered when the producer stopped", left)
        finally:
            self._closed = True
            for runner in (self._consume, self._commits):
                if runner is not None:
                    runner.close()

    # -- KafkaPort ----------------------------------------------------------------------------

    async def fetch(self, timeout_ms: int, max_records: int) -> dict[Partition, list[Message]] | None:
        if self._closing or self._consume is None:
            return None
        if self._fetch_error is not None:
            error, self._fetch_error = self._fetch_error, None
            raise confluent_error(error, "fetch")
        from confluent_kafka import KafkaException

        try:
            batch, error = await self._consume.submit(functools.partial(self._fetch, timeout_ms / 1000, max_records))
        except RuntimeError:  # consume() on a closed consumer
            return None
        except KafkaException as exc:
            raise confluent_error(exc, "fetch") from exc
        if error is not None:
            if not batch:
                raise confluent_error(error, "fetch")
            self._fetch_error = error  # the records fetched before it are processed first
        return batch

    def _fetch(self, timeout_s: float, max_records: int) -> tuple[dict[Partition, list[Message]], Any]:
        """In the consume thread: one batch, grouped by partition in offset order.

        librdkafka's batch ``consume(n, timeout)`` waits until it has ``n`` messages or the timeout
        expired, so a quiet moment would hold every batch for the whole timeout: the batch takes
        what the prefetch queue holds (timeout 0), and only when it is empty waits for the first
        message, then takes what came with it."""
        from confluent_kafka import KafkaError

        consume = self.consumer.consume
        got_now = consume(max_records, 0)
        if not got_now:
            got_now = consume(1, timeout_s)
            if got_now and max_records > 1:
                got_now += consume(max_records - 1, 0)
        out: dict[Partition, list[Message]] = {}
        error = None
        for m in got_now:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:  # disabled anyway; no error
                    error = error or err
                continue
            topic, number = m.topic(), m.partition()
            got = out.get((topic, number))
            if got is None:
                got = out[(topic, number)] = []
            got.append(Message(topic, number, m.offset(), m.key(), m.value()))
        return out, error

    async def send(self, record: OutRecord) -> asyncio.Future[Any]:
        from confluent_kafka import KafkaException

        assert self._loop is not None, "the port is not started"
        ack: asyncio.Future[Any] = self._loop.create_future()
        acks = self._acks

        def delivered(err: Any, _msg: Any) -> None:  # in the poll thread
            acks.append((ack, err))

        options: dict[str, Any] = {"key": record.key, "on_delivery": delivered}
        if record.headers:
            options["headers"] = list(record.headers)
        if record.partition is not None:
            options["partition"] = record.partition
        waited = 0.0
        while True:
            try:
                self.producer.produce(record.topic, record.value, **options)
                return ack
            except BufferError:  # the local queue is full: wait for room, at most the request timeout
                if waited >= self.request_timeout_s:
                    raise BrokerUnavailable(f"send to {record.topic}: the producer's queue stayed full for "
                                            f"{self.request_timeout_s:g} s") from None
                await asyncio.sleep(0.01)
                waited += 0.01
            except KafkaException as exc:
                raise confluent_error(exc, f"send to {record.topic}") from exc

    def delivery_error(self, exc: BaseException) -> BrokerError | None:
        from confluent_kafka import KafkaError, KafkaException

        return confluent_error(exc, "send") if isinstance(exc, KafkaException | KafkaError) else None

    async def commit(self, offsets: dict[Partition, int], timeout_s: float) -> None:
        """The commit waits for the group coordinator in the commit thread, bounded by ``timeout_s``
        and not abandoned: a retry waits for the same commit again (:class:`~connectors.port.PendingCommit`)."""
        from confluent_kafka import KafkaException, TopicPartition

        assert self._commits is not None, "the port is not started"
        commits = self._commits

        def begin() -> asyncio.Future[Any]:
            tps = [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]
            return commits.submit(functools.partial(self.consumer.commit, offsets=tps, asynchronous=False))

        action = "commit to the group coordinator"
        try:
            result = await self._commit.wait(begin, timeout_s)
        except KafkaException as exc:
            raise confluent_error(exc, action) from exc
        except RuntimeError as exc:  # the consumer is closed
            raise BrokerError(f"{action}: {exc}") from exc
        for tp in result or ():
            if tp.error is not None:
                raise confluent_error(tp.error, f"{action} ({tp.topic}/{tp.partition})")

    async def beginning_offsets(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        from confluent_kafka import KafkaException, TopicPartition

        assert self._commits is not None, "the port is not started"
        timeout = self.request_timeout_s

        def query() -> dict[Partition, int]:
            out = {}
            for tp in partitions:
                got = self.consumer.get_watermark_offsets(TopicPartition(*tp), timeout=timeout)
                if got is None:
                    raise TimeoutError
                out[tp] = int(got[0])
            return out

        try:
            return await self._commits.submit(query)
        except (KafkaException, TimeoutError) as exc:
            raise confluent_error(exc, "read beginning offsets") from exc

    async def read_partition(self, topic: str, partition: int, start: int | None = None,
                             end: int | None = None) -> list[Stored]:
        read = functools.partial(read_partition, self.bootstrap, topic, partition, start, end, security=self.security)
        return await asyncio.get_running_loop().run_in_executor(None, read)

    def partition_count(self, topic: str) -> int:
        return self._counts.get(topic, 0)

    def highwater(self, partition: Partition) -> int | None:
        from confluent_kafka import TopicPartition

        if self.consumer is None or self._closed:
            return None
        try:
            got = self.consumer.get_watermark_offsets(TopicPartition(*partition), cached=True)
        except Exception:  # noqa: BLE001 - unknown yet, or the consumer closed
            return None
        return None if got is None or got[1] < 0 else int(got[1])


def _acknowledge(acks: list[tuple[asyncio.Future[Any], Any]]) -> None:
    """On the loop: settle the acknowledgement futures of one poll (an error as ``KafkaException``)."""
    from confluent_kafka import KafkaException

    for ack, err in acks:
        if ack.done():
            continue
        if err is None:
            ack.set_result(None)
        else:
            ack.set_exception(KafkaException(err))
