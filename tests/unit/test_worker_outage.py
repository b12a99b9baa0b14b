"""The stream worker's batch through a broker outage, without a broker: a fake producer whose
acknowledgements fail for a while. The batch's offsets are marked consumed (so checkpointed and
committed) only once every record is acknowledged; failed records are re-sent unchanged; the
worker is not ready meanwhile and ready again after; a stop during the outage gives the batch up
without marking anything consumed."""

from __future__ import annotations

import asyncio
import json
import random
import warnings
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from connectors.kafka import OutRecord
from pipeline.app import StreamWorker, WorkerSettings
from pipeline.errors import BrokerUnavailable
from pipeline.frames import encode_frame
from pipeline.outage import Backoff, Outage
from pipeline.privacy import PrivacyWarning
from tests.unit.test_processor import eeg_frames, make_processor

TP = TopicPartition("biopriv.raw.eeg", 0)


@dataclass
class Msg:
    offset: int
    key: bytes
    value: bytes


class FlakyProducer:
    """Acknowledges no release until the worker has retried ``failing_retries`` times; other records at once."""

    def __init__(self, worker: StreamWorker, failing_retries: int) -> None:
        self.worker = worker
        self.failing_retries = failing_retries
        self.sent: list[OutRecord] = []  # every send, in order
        self.acked: list[OutRecord] = []
        self.seen_during_outage: list[tuple[bool, bool, int | None]] = []  # (active, ready, consumed)

    async def send(self, r: OutRecord) -> Awaitable[None]:
        self.sent.append(r)
        w = self.worker
        self.seen_during_outage.append((w.outage.active, w.ready(), w.consumed.get(TP)))
        return self._ack(r, fail=r.topic == w.settings.topics.private)

    async def _ack(self, r: OutRecord, fail: bool) -> None:
        if fail and self.worker.outage.retries_total < self.failing_retries:
            raise BrokerUnavailable("send to biopriv.private.features: RequestTimedOutError")
        self.acked.append(r)



def make_worker(tmp_path: Path) -> tuple[StreamWorker, list[Msg]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        worker = StreamWorker(WorkerSettings(key_file=tmp_path / "keys.json", per_window=True), make_processor(tmp_path))
    worker.outage = Outage(backoff=Backoff(initial_s=0.01, cap_s=0.04), rng=random.Random(0))
    worker.assigned = {TP}
    worker.recovered.add((TP.topic, TP.partition))  # no recovery read: the partition is fresh
    worker.loop_running = True
    msgs = [Msg(i, b"eeg-1", encode_frame(f)) for i, f in enumerate(eeg_frames("eeg-1", 6.0))]
    return worker, msgs


def test_a_batch_is_consumed_only_once_every_record_is_acknowledged(tmp_path: Path) -> None:
    worker, msgs = make_worker(tmp_path)
    producer = FlakyProducer(worker, failing_retries=4)
    worker.port.send = producer.send  # type: ignore[method-assign]
    assert worker.ready()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        asyncio.run(worker._process({TP: msgs}))

    private = worker.settings.topics.private
    releases = [r for r in producer.acked if r.topic == private]
    ids = [json.loads(r.value)["release_id"] for r in releases]
    assert len(ids) == worker.processor.stats.releases >= 3 and len(set(ids)) == len(ids)  # each acknowledged once
    first: dict[str, OutRecord] = {}
    for r in producer.sent:
        if r.topic == private:
            first.setdefault(json.loads(r.value)["release_id"], r)
    assert all(first[i] is r for i, r in zip(ids, releases, strict=True))  # re-sent: the records first made
    assert len(producer.sent) > len(producer.acked)
    # every re-send happened during the outage, while not ready and before the offsets counted
    n_private = sum(r.topic == private for r in producer.sent)
    assert n_private >= 4 * len(ids)  # every release failed and was re-sent in each of the 4 retries
    retries = [seen for seen in producer.seen_during_outage if seen[0]]
    assert len(retries) >= 4 * len(ids)
    assert all(not ready and consumed is None for _active, ready, consumed in retries)
    assert worker.consumed[TP] == msgs[-1].offset + 1
    assert worker.ready() and not worker.outage.active
    assert worker.outage.outages_total == 1 and worker.outage.retries_total >= 3


def test_a_stop_during_the_outage_gives_the_batch_up_unconsumed(tmp_path: Path) -> None:
    from pipeline.outage import Stopping

    worker, msgs = make_worker(tmp_path)
    producer = FlakyProducer(worker, failing_retries=10**9)
    worker.port.send = producer.send  # type: ignore[method-assign]

    async def stop_later() -> None:
        task = asyncio.ensure_future(worker._process({TP: msgs}))
        while worker.outage.retries_total < 3:
            await asyncio.sleep(0.01)
        worker._stopped.set()  # mode's flag behind should_stop
        await task

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        with pytest.raises(Stopping):
            asyncio.run(stop_later())
    assert TP not in worker.consumed and not worker.ready()
