"""The stream worker's batch through a broker outage, without a broker: the worker loop on the
in-memory port (:mod:`connectors.memory`) whose acknowledgements of releases fail for a while.
The batch's offsets are marked consumed (so checkpointed and committed) only once every record is
acknowledged; failed records are re-sent unchanged; the worker is not ready meanwhile and ready
again after; a stop during the outage gives the batch up without marking anything consumed."""

from __future__ import annotations

import asyncio
import json
import random
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from connectors.kafka import OutRecord, Topics
from connectors.memory import MemoryBroker, MemoryPort
from pipeline.app import StreamWorker, WorkerSettings
from pipeline.errors import BrokerError, BrokerUnavailable
from pipeline.frames import encode_frame
from pipeline.outage import Backoff, Outage
from pipeline.privacy import PrivacyWarning
from tests.unit.test_processor import eeg_frames, make_processor

TOPICS = Topics()
TP = (TOPICS.raw("eeg"), 0)
#: A guard against a hanging loop, not a timed assertion.
HANG_S = 30.0


@pytest.fixture(autouse=True)
def _no_privacy_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        yield


class Flaky:
    """Fails the acknowledgement of every release until the worker has retried ``failing_retries``
    times; records each attempt with what the worker showed then."""

    def __init__(self, failing_retries: int) -> None:
        self.failing_retries = failing_retries
        self.worker: StreamWorker | None = None
        self.attempts: list[OutRecord] = []  # every acknowledgement attempt, in order
        self.acked: list[OutRecord] = []
        self.seen: list[tuple[bool, bool, int | None]] = []  # (outage active, ready, consumed) per attempt

    def __call__(self, r: OutRecord) -> BrokerError | None:
        w = self.worker
        assert w is not None
        self.attempts.append(r)
        self.seen.append((w.outage.active, w.ready(), w.consumed.get(TP)))
        if r.topic == TOPICS.private and w.outage.retries_total < self.failing_retries:
            return BrokerUnavailable("send to biopriv.private.features: RequestTimedOutError")
        self.acked.append(r)
        return None


def setup(tmp_path: Path, flaky: Flaky) -> tuple[StreamWorker, MemoryBroker, MemoryPort, int]:
    broker = MemoryBroker()
    broker.create([*TOPICS.raw_all, TOPICS.private, TOPICS.deadletter, TOPICS.state], 1)
    broker.create([TOPICS.events], 1)
    frames = eeg_frames("eeg-1", 6.0)
    for f in frames:
        broker.append(TP[0], encode_frame(f), b"eeg-1", partition=0)
    port = MemoryPort(broker, fail_send=flaky)
    worker = StreamWorker(WorkerSettings(key_file=tmp_path / "keys.json", per_window=True, partitions=1),
                          make_processor(tmp_path), port=port)
    worker.outage = Outage(backoff=Backoff(initial_s=0.01, cap_s=0.04), rng=random.Random(0))
    flaky.worker = worker
    return worker, broker, port, len(frames)


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.001)


def test_a_batch_is_consumed_only_once_every_record_is_acknowledged(tmp_path: Path) -> None:
    flaky = Flaky(failing_retries=4)
    worker, broker, port, n = setup(tmp_path, flaky)

    async def run() -> None:
        await worker.start()
        await port.rebalance({TP})
        await asyncio.wait_for(until(lambda: worker.consumed.get(TP) == n), HANG_S)
        assert worker.ready() and not worker.outage.active
        await worker.stop()

    asyncio.run(run())
    private = TOPICS.private
    releases = [r for r in flaky.acked if r.topic == private]
    ids = [json.loads(r.value)["release_id"] for r in releases]
    assert len(ids) == worker.processor.stats.releases >= 3 and len(set(ids)) == len(ids)  # each acknowledged once
    assert [json.loads(r.value)["release_id"] for r in broker.records(private)] == ids  # written once each
    first: dict[str, OutRecord] = {}
    for r in flaky.attempts:
        if r.topic == private:
            first.setdefault(json.loads(r.value)["release_id"], r)
    assert all(first[i] is r for i, r in zip(ids, releases, strict=True))  # re-sent: the records first made
    # every re-send happened during the outage, while not ready and before the offsets counted
    n_private = sum(r.topic == private for r in flaky.attempts)
    assert n_private >= 4 * len(ids)  # every release failed and was re-sent in each of the 4 retries
    retries = [seen for seen in flaky.seen if seen[0]]
    assert len(retries) >= 4 * len(ids)
    assert all(not ready and consumed is None for _active, ready, consumed in retries)
    assert worker.outage.outages_total == 1 and worker.outage.retries_total >= 3
    assert worker.outage.resent_total >= 4 * len(ids)  # biopriv_send_retries_total counts them
    assert broker.committed[port.group][TP] == n  # committed (final checkpoint) once acknowledged


def test_a_stop_during_the_outage_gives_the_batch_up_unconsumed(tmp_path: Path) -> None:
    flaky = Flaky(failing_retries=10**9)
    worker, broker, port, _n = setup(tmp_path, flaky)

    async def run() -> None:
        await worker.start()
        await port.rebalance({TP})
        await asyncio.wait_for(until(lambda: worker.outage.retries_total >= 3), HANG_S)
        assert not worker.ready()
        await worker.stop()

    asyncio.run(run())
    assert TP not in worker.consumed and not worker.ready() and worker.abandoned
    assert not broker.committed  # nothing committed
    assert not any(k.startswith(b"r:") for r in broker.records(TOPICS.state) if (k := r.key))  # no resume offsets
    assert not broker.records(TOPICS.private)
