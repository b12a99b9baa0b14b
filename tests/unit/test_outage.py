"""Riding out broker outages without a broker (pipeline.outage): the backoff is bounded, failed
records are re-sent (the same objects, in order) until acknowledged, and a batch counts as done
(offsets may be committed) only after every record of it was acknowledged."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from pipeline.errors import BrokerError, BrokerUnavailable, ConfigError
from pipeline.outage import Backoff, Delivery, Outage, Stopping, retry


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


class FakeBroker:
    """Acknowledges records unless ``down``; ``refuse`` makes enqueueing itself fail (buffer full)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.down_until = 0.0
        self.refuse = False
        self.attempts: list[object] = []  # every record handed to send, in order
        self.acked: list[object] = []
        self.log: list[str] = []  # "ack <record>" and "commit" in order

    async def send(self, record: object) -> asyncio.Future[None]:
        self.attempts.append(record)
        if self.refuse and self.clock.now < self.down_until:
            raise BrokerUnavailable("buffer full")
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.clock.now < self.down_until:
            ack.set_exception(BrokerUnavailable("request timed out"))
        else:
            self.acked.append(record)
            self.log.append(f"ack {record}")
            ack.set_result(None)
        return ack


def make(down_s: float = 0.0, refuse: bool = False) -> tuple[FakeClock, FakeBroker, Outage]:
    clock = FakeClock()
    broker = FakeBroker(clock)
    broker.down_until, broker.refuse = down_s, refuse
    return clock, broker, Outage(rng=random.Random(1), clock=clock)


async def run_batch(records: list[object], broker: FakeBroker, outage: Outage, clock: FakeClock) -> int:
    """What the worker does per batch: add as made, settle, then mark the offsets consumed."""
    delivery: Delivery[object] = Delivery(broker.send, outage, sleep=clock.sleep)
    for r in records:
        await delivery.add(r)
    n = await delivery.settle()
    broker.log.append("commit")
    return n


def test_backoff_grows_to_the_cap_and_stays_within_the_jitter_band() -> None:
    b, rng = Backoff(initial_s=0.5, cap_s=30.0, factor=2.0, jitter=0.5), random.Random(7)
    delays = [b.delay(n, rng) for n in range(200)]
    for n, d in enumerate(delays):
        base = min(30.0, 0.5 * 2**n)
        assert 0.5 * base <= d <= base
    assert max(delays) <= 30.0 and min(delays) >= 0.25
    assert max(delays[:3]) <= 2.0 and min(delays[10:]) >= 15.0  # grows, then held at the cap
    with pytest.raises(ConfigError, match="backoff cap must be in"):
        Backoff(initial_s=1.0, cap_s=0.5)


def test_no_outage_every_record_acknowledged_before_the_commit() -> None:
    clock, broker, outage = make()
    assert asyncio.run(run_batch(list("abc"), broker, outage, clock)) == 3
    assert broker.log == ["ack a", "ack b", "ack c", "commit"]
    assert broker.attempts == list("abc") and not outage.active and outage.retries_total == 0 and clock.slept == []


@pytest.mark.parametrize("refuse", [False, True], ids=["acks fail", "enqueue fails"])
def test_failed_records_are_resent_in_order_and_nothing_is_committed_before_they_are_acked(refuse: bool) -> None:
    clock, broker, outage = make(down_s=100.0, refuse=refuse)
    records = [object() for _ in range(4)]
    assert asyncio.run(run_batch(records, broker, outage, clock)) == 4
    assert broker.log[-1] == "commit" and broker.log.count("commit") == 1
    assert [e for e in broker.log if e != "commit"] == [f"ack {r}" for r in records]  # all acked, each once, in order
    assert all(a is b for a, b in zip(broker.acked, records, strict=True))  # the same objects: the same bytes
    rounds = len(broker.attempts) // 4 if not refuse else None
    if rounds is not None:  # every round re-sends the whole batch in order
        assert broker.attempts == records * rounds
    else:  # after the first refused enqueue, the rest of the round is not handed to the producer
        assert broker.attempts[:2] == records[:1] * 2 and broker.attempts[-4:] == records
    assert clock.now >= 100.0
    assert not outage.active and outage.outages_total == 1
    assert outage.seconds_total() >= 100.0
    assert sum(clock.slept) == pytest.approx(clock.now)
    assert all(s <= 0.5 for s in clock.slept)  # sleeps in short steps (a stop is noticed quickly)


def test_a_long_outage_waits_at_most_the_cap_between_attempts() -> None:
    clock, broker, outage = make(down_s=300.0)
    asyncio.run(run_batch(["x"], broker, outage, clock))
    # attempt times: when the broker saw "x"; gaps are the backoff delays (the fake acks at once)
    # retries happen at most 30 s apart, so the record is acknowledged within 30 s of the broker's return
    assert clock.now - 300.0 <= 30.0
    assert outage.retries_total == len(broker.attempts) - 1
    assert 8 <= outage.retries_total <= 30  # 0.25..0.5, 0.5..1, ... then every 15..30 s


def test_one_log_line_when_an_outage_begins_and_one_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    clock, broker, outage = make(down_s=60.0)
    with caplog.at_level(logging.INFO, logger="biopriv.worker"):
        asyncio.run(run_batch(["a", "b"], broker, outage, clock))
        asyncio.run(run_batch(["c"], broker, outage, clock))
    lines = [r.getMessage() for r in caplog.records]
    assert outage.retries_total > 3
    assert len(lines) == 2, lines
    assert lines[0].startswith("broker unavailable (2 record(s) not acknowledged: request timed out)")
    assert lines[1].startswith(f"broker available again after {clock.now:.1f} s and {outage.retries_total} retries")


def test_a_stopping_worker_gives_up_the_unacknowledged_batch_without_committing() -> None:
    clock, broker, outage = make(down_s=1e9)
    delivery: Delivery[object] = Delivery(broker.send, outage, sleep=clock.sleep, stopping=lambda: clock.now > 10)

    async def batch() -> None:
        await delivery.add("a")
        await delivery.settle()
        broker.log.append("commit")

    with pytest.raises(Stopping):
        asyncio.run(batch())
    assert "commit" not in broker.log and broker.acked == []
    assert outage.active  # still out: readiness stays false


def test_retry_runs_an_idempotent_read_until_it_succeeds() -> None:
    clock, _broker, outage = make()
    calls: list[float] = []

    async def read() -> str:
        calls.append(clock.now)
        if clock.now < 5.0:
            raise BrokerUnavailable("no answer")
        return "records"

    assert asyncio.run(retry("read state", read, outage, sleep=clock.sleep)) == "records"
    assert len(calls) > 2 and not outage.active and outage.outages_total == 1

    async def denied() -> str:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        asyncio.run(retry("read state", denied, outage, sleep=clock.sleep))
    assert issubclass(BrokerUnavailable, BrokerError)


def test_client_errors_map_to_broker_unavailable_only_when_transient() -> None:
    from aiokafka.errors import CommitFailedError, KafkaConnectionError, KafkaTimeoutError, RequestTimedOutError

    from connectors.kafka import async_error

    for exc in (KafkaTimeoutError(), KafkaConnectionError("refused"), RequestTimedOutError(), TimeoutError()):
        mapped = async_error(exc, "send to t.private.features")
        assert isinstance(mapped, BrokerUnavailable), exc
        assert str(mapped).startswith(f"send to t.private.features: {type(exc).__name__}")
    mapped = async_error(CommitFailedError("rebalanced"), "commit")
    assert isinstance(mapped, BrokerError) and not isinstance(mapped, BrokerUnavailable)


def test_client_logs_are_muted_only_during_an_outage() -> None:
    from connectors.kafka import mute_client_logs

    out = Outage()
    clock = FakeClock()
    mute = mute_client_logs(lambda: out.active, clock=clock)
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Keep()
    logger = logging.getLogger("aiokafka.conn")
    logger.addHandler(handler)
    try:
        logger.error("before")
        out.since = 0.0  # an outage under way
        logger.error("during")
        logging.getLogger("aiokafka").warning("during too")
        logger.critical("critical passes")
        out.since = None
        logger.error("after")
        logger.error("again %s", 1)  # a repeated kind: once a minute
        logger.error("again %s", 2)
        clock.now += 61.0
        logger.error("again %s", 3)
    finally:
        logger.removeHandler(handler)
        for name in list(logging.Logger.manager.loggerDict):
            if name.startswith("aiokafka"):
                logging.getLogger(name).removeFilter(mute)
    assert seen == ["before", "critical passes", "after", "again 1", "again 3"] and mute.dropped == 3
