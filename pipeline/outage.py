"""Riding out broker outages: backoff, the outage's bookkeeping, and a batch's delivery rule.

Pure: no Kafka import. The worker (:mod:`pipeline.app`) hands every record of a batch to a
:class:`Delivery` as soon as it is made; a send is a coroutine that enqueues one record and
returns the future of its acknowledgement, and raises :class:`~pipeline.errors.BrokerError` when
it cannot (the mapping from client errors lives in :mod:`connectors.kafka`). A batch's delivery
is settled in the background while the next batch is processed; its offsets count once it is.

The rule (``docs/operations.md``, "Broker outages"): a batch's offsets are marked consumed, and
so can be checkpointed and committed, only after :meth:`Delivery.settle` returned, that is once
every record of the batch was acknowledged. A record whose send failed is sent again, the same
object (same bytes), after a backoff, in the order the records were made, until it is
acknowledged; nothing further is consumed meanwhile and the worker's in-memory state is kept.
Re-sending identical bytes is an at-least-once duplicate that readers drop by ``release_id``,
never a different value.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pipeline.errors import BrokerError

log = logging.getLogger("biopriv.worker")

R = TypeVar("R")

#: Enqueue one record (raises BrokerError if it cannot) and return the future of its acknowledgement.
Send = Callable[[R], Awaitable["asyncio.Future[Any]"]]


def _own(exc: BaseException) -> BrokerError | None:
    """Default error mapping of :class:`Delivery`: only the package's own broker errors are retried."""
    return exc if isinstance(exc, BrokerError) else None


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter and a cap.

    Attempt ``n`` (0-based) waits ``min(cap_s, initial_s * factor**n)`` scaled by a factor drawn
    uniformly from ``[1 - jitter, 1]``: never more than ``cap_s``, never less than
    ``(1 - jitter) * initial_s``. The jitter keeps workers that lost the broker together from
    returning in step.
    """

    initial_s: float = 0.5
    cap_s: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        from pipeline.validation import check_range

        check_range("backoff initial delay", self.initial_s, 0.0, low_inclusive=False, unit="s")
        check_range("backoff cap", self.cap_s, self.initial_s, unit="s")
        check_range("backoff factor", self.factor, 1.0)
        check_range("backoff jitter", self.jitter, 0.0, 1.0, high_inclusive=False)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry ``attempt`` (0 for the first retry)."""
        base = min(self.cap_s, self.initial_s * self.factor ** min(attempt, 64))
        return base * (1.0 - self.jitter * rng.random())


@dataclass
class Outage:
    """Whether the broker is out, for how long and how many retries, with one log line at each end.

    :meth:`failed` is called on every failed attempt and returns the delay before the next one;
    only the first of an outage logs. :meth:`recovered` is called after a success and logs the
    end (duration, retries) if an outage was under way. The totals feed the worker's metrics.
    """

    backoff: Backoff = field(default_factory=Backoff)
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.monotonic
    since: float | None = None  # clock time the current outage began; None: no outage
    attempts: int = 0  # failed attempts in the current outage
    retries_total: int = 0  # failed attempts over the worker's life (each is followed by a retry)
    resent_total: int = 0  # records sent again after their send failed
    outages_total: int = 0
    _seconds_done: float = 0.0  # duration of the outages that ended

    @property
    def active(self) -> bool:
        return self.since is not None

    def seconds_total(self) -> float:
        """Seconds spent in outages, the current one included."""
        return self._seconds_done + (self.clock() - self.since if self.since is not None else 0.0)

    def failed(self, what: str, exc: BaseException, records: int = 0) -> float:
        """Note a failed attempt at ``what`` (sending ``records``); return the backoff before the next attempt, s."""
        if self.since is None:
            self.since = self.clock()
            self.attempts = 0
            self.outages_total += 1
            log.warning("broker unavailable (%s: %s): not ready; the worker keeps its state, consumes nothing "
                        "further and retries with backoff (at most %g s apart)", what, exc, self.backoff.cap_s)
        delay = self.backoff.delay(self.attempts, self.rng)
        self.attempts += 1
        self.retries_total += 1
        self.resent_total += records
        return delay

    def recovered(self) -> None:
        """Note a success: ends the current outage, if any, with one log line."""
        if self.since is None:
            return
        took = self.clock() - self.since
        self._seconds_done += took
        self.since = None
        log.warning("broker available again after %.1f s and %d retries; ready", took, self.attempts)


class Stopping(Exception):
    """The worker is stopping: the records not yet acknowledged are given up (offsets not committed)."""


class Delivery(Generic[R]):
    """The records of one batch, sent as they are made and settled before the batch counts as done.

    Parameters
    ----------
    send
        Enqueues one record and returns the future of its acknowledgement; raises
        :class:`BrokerError` when the record cannot even be enqueued.
    outage
        Shared outage state: backoff, log lines, totals.
    error
        Maps the exception of a failed acknowledgement to a :class:`BrokerError` (retried), or
        to None for an exception that is no broker failure (raised: a bug is not an outage).
    sleep
        ``asyncio.sleep`` (a fake in tests).
    stopping
        True once the worker is asked to stop: :meth:`settle` then raises :class:`Stopping`
        instead of waiting for the broker.
    """

    def __init__(self, send: Send[R], outage: Outage, *, error: Callable[[BaseException], BrokerError | None] = _own,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self._send = send
        self.outage = outage
        self._error = error
        self._sleep = sleep
        self._stopping = stopping
        self._sent: list[tuple[R, asyncio.Future[Any] | None]] = []  # None: enqueueing failed
        self._blocked: BrokerError | None = None  # first enqueue failure of this round

    def __len__(self) -> int:
        return len(self._sent)

    async def add(self, record: R) -> None:
        """Send ``record`` now (or, after an enqueue failed in this round, at the retry)."""
        self._sent.append((record, await self._enqueue(record)))

    async def _enqueue(self, record: R) -> asyncio.Future[Any] | None:
        if self._blocked is not None:  # the producer refuses records: don't wait its timeout per record
            return None
        try:
            return await self._send(record)
        except BrokerError as exc:
            self._blocked = exc
            return None

    async def settle(self) -> int:
        """Wait until every record added is acknowledged, re-sending the failed ones; return the count.

        The failed records are sent again in the order they were added, after a backoff, until
        all are acknowledged. Raises :class:`Stopping` when the worker stops first.
        """
        done = 0
        while self._sent:
            pending = [f for _r, f in self._sent if f is not None]
            if pending:
                await asyncio.wait(pending)
            failed: list[R] = []
            error: BrokerError | None = self._blocked
            for record, ack in self._sent:
                if ack is None:
                    exc: BaseException | None = error
                elif ack.cancelled():
                    exc = BrokerError("the send was cancelled")
                else:
                    exc = ack.exception()
                if exc is None:
                    done += 1
                    continue
                mapped = exc if isinstance(exc, BrokerError) else self._error(exc)
                if mapped is None:
                    raise exc
                failed.append(record)
                error = mapped
            self._sent, self._blocked = [], None
            if not failed:
                break
            delay = self.outage.failed(f"{len(failed)} record(s) not acknowledged", error or BrokerError("unknown"),
                                       records=len(failed))
            await wait_unless_stopping(delay, self.outage.clock, self._sleep, self._stopping)
            for record in failed:
                self._sent.append((record, await self._enqueue(record)))
        if done:
            self.outage.recovered()
        return done


async def wait_unless_stopping(delay_s: float, clock: Callable[[], float], sleep: Callable[[float], Awaitable[None]],
                               stopping: Callable[[], bool]) -> None:
    """Sleep ``delay_s`` in steps of at most 0.5 s, raising :class:`Stopping` as soon as ``stopping()``."""
    end = clock() + delay_s
    while True:
        if stopping():
            raise Stopping()
        left = end - clock()
        if left <= 0:
            return
        await sleep(min(left, 0.5))


async def retry(what: str, attempt: Callable[[], Awaitable[R]], outage: Outage, *,
                sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                stopping: Callable[[], bool] = lambda: False) -> R:
    """Run ``attempt`` until it does not raise :class:`BrokerError`, with the outage's backoff between.

    For idempotent operations (the reads of a recovery, an offset commit). Raises
    :class:`Stopping` when the worker stops first.
    """
    while True:
        try:
            result = await attempt()
        except BrokerError as exc:
            await wait_unless_stopping(outage.failed(what, exc), outage.clock, sleep, stopping)
            continue
        outage.recovered()
        return result
