"""The whole worker loop on the in-memory port (:mod:`connectors.memory`), without a broker.

The real :class:`~pipeline.app.StreamWorker` with a real processor runs its fetch -> process ->
send -> checkpoint loop against a :class:`~connectors.memory.MemoryBroker`; the test drives the
group (assignment, revocation) and crashes (:meth:`~connectors.memory.MemoryPort.kill`) and reads
the broker's topics and event log. Every run is compared with a reference: the same frames fed to
one plain processor, partition by partition (device lineages are pinned so noise is reproducible).
Only public attributes of the worker and the port are used.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from connectors.kafka import Topics
from connectors.memory import Event, MemoryBroker, MemoryPort
from pipeline.app import StreamWorker, WorkerSettings
from pipeline.frames import encode_frame
from pipeline.privacy import PrivacyWarning
from pipeline.state import load_partition
from tests.unit.test_processor import eeg_frames, make_processor

TOPICS = Topics.with_prefix("m.")
RAW = TOPICS.raw("eeg")
PARTITIONS = 3
DEVICES = ("eeg-1", "eeg-2", "eeg-3", "eeg-4")
ALL = {(t, p) for t in TOPICS.raw_all for p in range(PARTITIONS)}
#: A guard against a hanging loop, not a timed assertion: every run here takes well under a second.
HANG_S = 10.0


@pytest.fixture(autouse=True)
def _pinned_lineage(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fixed device lineages (drawn by the accountant with ``secrets.token_hex``): reproducible noise."""
    monkeypatch.setattr("pipeline.privacy.accountant.secrets.token_hex", lambda n=16: "cd" * n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        yield


def new_broker() -> MemoryBroker:
    broker = MemoryBroker()
    broker.create([*TOPICS.raw_all, TOPICS.private, TOPICS.deadletter, TOPICS.state], PARTITIONS)
    broker.create([TOPICS.events], 1)
    return broker


def feed(broker: MemoryBroker, seconds: float, start_s: float = 0.0) -> None:
    """Write EEG frames of every device from ``start_s`` to ``seconds`` (interleaved by frame)."""
    streams = [[f for f in eeg_frames(d, seconds, seed=i) if f.seq >= start_s * 8] for i, d in enumerate(DEVICES)]
    for frames in zip(*streams, strict=True):
        for f in frames:
            broker.append(RAW, encode_frame(f), f.device_id.encode())


def new_worker(tmp_path: Path, port: MemoryPort, checkpoint_interval_s: float = 0.0) -> StreamWorker:
    """A worker on ``port`` checkpointing between every two batches (by default), 7 messages a batch."""
    settings = WorkerSettings(key_file=tmp_path / "keys.json", topics=TOPICS, partitions=PARTITIONS, per_window=True,
                              checkpoint_interval_s=checkpoint_interval_s, max_batch=7)
    return StreamWorker(settings, make_processor(tmp_path), port=port)


def reference(tmp_path: Path, broker: MemoryBroker) -> tuple[dict[str, bytes], dict[tuple[int, int], set[str]]]:
    """Releases (id -> value bytes) of one plain processor over the raw partitions, and the
    release ids each raw message ``(partition, offset)`` produced."""
    proc = make_processor(tmp_path)
    values: dict[str, bytes] = {}
    made: dict[tuple[int, int], set[str]] = {}
    for p, records in enumerate(broker.topics[RAW]):
        for offset, r in enumerate(records):
            releases = proc.process(r.value, r.key).releases
            values.update((json.loads(x.value)["release_id"], x.value) for x in releases)
            made[(p, offset)] = {json.loads(x.value)["release_id"] for x in releases}
    return values, made


def published(broker: MemoryBroker) -> list[tuple[str, bytes]]:
    return [(json.loads(r.value)["release_id"], r.value) for r in broker.records(TOPICS.private)]


def ends(broker: MemoryBroker) -> dict[tuple[str, int], int]:
    return {(t, p): len(broker.topics[t][p]) for t, p in ALL}


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.001)


async def consumed_all(broker: MemoryBroker, group: str = "g") -> None:
    """Until the group committed every raw partition up to its end."""
    target = {tp: n for tp, n in ends(broker).items() if n}
    await asyncio.wait_for(until(lambda: all(broker.committed.get(group, {}).get(tp) == n
                                             for tp, n in target.items())), HANG_S)


def resume_offsets(broker: MemoryBroker) -> dict[int, dict[str, int]]:
    return {p: load_partition((r.key, r.value) for r in part if (r.key or b"").startswith(b"r:")).resume
            for p, part in enumerate(broker.topics[TOPICS.state])}


def test_assigned_partitions_are_processed_and_committed_after_their_releases(tmp_path: Path) -> None:
    broker = new_broker()
    feed(broker, 6.0)
    want, made = reference(tmp_path, broker)
    assert len(want) >= 12

    async def run() -> StreamWorker:
        port = MemoryPort(broker)
        worker = new_worker(tmp_path, port)
        await worker.start()
        await port.rebalance(ALL)
        assert worker.assigned == ALL
        await consumed_all(broker)
        assert worker.ready()
        await worker.stop()
        return worker

    worker = asyncio.run(run())
    got = published(broker)
    assert dict(got) == want and len(got) == len(want)  # each release once, the reference's bytes
    # a commit of offset N comes after every release made from the messages before N was written
    written: set[str] = set()
    for event in broker.events:
        if event[0] == "write" and event[1] == TOPICS.private:
            written.add(json.loads(broker.topics[TOPICS.private][event[2]][event[3]].value)["release_id"])
        elif event[0] == "commit" and event[2][0] == RAW:
            _, _, (_, p), n = event
            owed = set().union(*(made[(p, o)] for o in range(n)))
            assert owed <= written, (p, n, owed - written)
    assert worker.checkpoints > 0
    assert all(resume_offsets(broker)[p][RAW] > 0 for p in {p for p, _ in made})


def test_revoked_partitions_are_checkpointed_before_the_revocation_ends_and_the_next_owner_continues(
        tmp_path: Path) -> None:
    broker = new_broker()
    feed(broker, 6.0)
    first_part = ends(broker)

    async def run() -> None:
        a = MemoryPort(broker)
        worker_a = new_worker(tmp_path, a, checkpoint_interval_s=3600.0)  # no checkpoint but the revocation's
        await worker_a.start()
        await a.rebalance(ALL)
        target = {tp: n for tp, n in first_part.items() if n}
        await asyncio.wait_for(until(lambda: worker_a.consumed == target), HANG_S)
        assert not broker.committed and not any(broker.topics[TOPICS.state][p] and
                                                resume_offsets(broker)[p] for p in range(PARTITIONS))
        await a.rebalance(set())  # the partitions move to the other member
        assert worker_a.assigned == set() and not worker_a.processor.devices()
        # the revocation returned only once the revoked partitions' resume offsets were written
        resume = resume_offsets(broker)
        for (t, p), n in first_part.items():
            if t == RAW and n:
                assert resume[p][RAW] <= n and broker.committed["g"][(t, p)] == n
        feed(broker, 12.0, start_s=6.0)
        b = MemoryPort(broker)
        worker_b = new_worker(tmp_path, b)
        await worker_b.start()
        await b.rebalance(ALL)
        await consumed_all(broker)
        assert worker_b.rebuilt_frames > 0  # it rebuilt windows from the resume offsets
        await worker_b.stop()
        await worker_a.stop()

    asyncio.run(run())
    want, _ = reference(tmp_path, broker)
    got = published(broker)
    assert dict(got) == want and len(got) == len(want)  # as one undisturbed worker: same ids, same bytes


@pytest.mark.parametrize("kill_at", [5, 40, 90, 160])
def test_a_killed_worker_is_resumed_by_the_next_without_loss_or_conflicting_releases(tmp_path: Path,
                                                                                    kill_at: int) -> None:
    """Kill -9 after ``kill_at`` broker events (writes and commits), at different points of the
    batches and checkpoints; a new worker on the same broker finishes the work, and more frames."""
    broker = new_broker()
    feed(broker, 12.0)
    a = MemoryPort(broker)
    fed = len(broker.events)

    def watch(event: Event) -> None:
        if len(broker.events) - fed == kill_at:
            a.kill()

    async def run() -> StreamWorker:
        worker_a = new_worker(tmp_path, a)
        await worker_a.start()
        broker.watch = watch
        await a.rebalance(ALL)
        await asyncio.wait_for(until(lambda: a.killed), HANG_S)
        broker.watch = None
        b = MemoryPort(broker)
        worker_b = new_worker(tmp_path, b)
        await worker_b.start()
        await b.rebalance(ALL)
        feed(broker, 14.0, start_s=12.0)  # every partition gets new frames: the next owner recovers them all
        await consumed_all(broker)
        await worker_b.stop()
        return worker_b

    worker_b = asyncio.run(run())
    want, _ = reference(tmp_path, broker)
    got = published(broker)
    by_id: dict[str, set[bytes]] = {}
    for release_id, value in got:
        by_id.setdefault(release_id, set()).add(value)
    assert all(len(v) == 1 for v in by_id.values())  # no release id with two payloads
    assert {i: v.pop() for i, v in by_id.items()} == want  # every window released, the reference's bytes
    # each release charged once: the surviving ledger is the reference's
    ref = make_processor(tmp_path)
    for p_records in broker.topics[RAW]:
        for r in p_records:
            ref.process(r.value, r.key)
    assert worker_b.processor.engine.ledger_state()["devices"] == ref.engine.ledger_state()["devices"]


def test_checkpoint_writes_ledgers_before_resume_offsets_and_headers_before_releases(tmp_path: Path) -> None:
    broker = new_broker()
    feed(broker, 6.0)
    tagged: list[tuple[int, Event]] = []  # (checkpoints completed when written, event)

    async def run() -> StreamWorker:
        port = MemoryPort(broker)
        worker = new_worker(tmp_path, port)
        broker.watch = lambda event: tagged.append((worker.checkpoints, event))
        await worker.start()
        await port.rebalance(ALL)
        await consumed_all(broker)
        await worker.stop()
        broker.watch = None
        return worker

    worker = asyncio.run(run())
    pseudonyms = {worker.processor.pseudonym(d).encode(): d for d in DEVICES}
    headers: set[str] = set()
    # checkpoints are written one at a time, so the state records written while ``checkpoints``
    # was N belong to checkpoint N + 1: within it, no ledger record after a resume offset
    resumed: set[int] = set()
    for done, event in tagged:
        if event[0] == "write" and event[1] == TOPICS.state:
            key = event[4] or b""
            if key.startswith(b"h:"):
                headers.add(key[2:].decode())
            elif key.startswith(b"r:"):
                resumed.add(done)
            elif key.startswith(b"d:"):
                assert done not in resumed, "a ledger record written after the resume offsets of its checkpoint"
        elif event[0] == "write" and event[1] == TOPICS.private:
            assert pseudonyms[event[4] or b""] in headers, "a release published before its device's header"
    assert worker.checkpoints >= 2


def test_the_stats_line_splits_the_cpu_into_the_loop_thread_and_the_process(tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    broker = new_broker()
    feed(broker, 2.0)

    async def run() -> StreamWorker:
        port = MemoryPort(broker)
        worker = new_worker(tmp_path, port)
        await worker.start()
        await port.rebalance(ALL)
        await consumed_all(broker)
        with caplog.at_level(logging.INFO, logger="biopriv.worker"):
            worker.log_stats()
        await worker.stop()
        return worker

    worker = asyncio.run(run())
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("frames="))
    got = re.search(r"frames=(\d+) .*busy=(\d+) ms .*cpu_loop=(\d+) ms cpu_process=(\d+) ms "
                    r"settle_waits=(\d+) \((\d+) ms\) gc2=\d+ \(\d+ ms, max [\d.]+ ms\)$", line)
    assert got is not None, line
    frames, _busy, loop, process, waits, _wait_ms = (int(g) for g in got.groups())
    assert frames == worker.processor.stats.frames > 0
    assert 0 < loop <= process  # the loop's thread is one of the process's
    assert waits == worker.settle_waits


def test_gc_pauses_counts_full_collections_only() -> None:
    """The stats line's gc2: generation-2 collections and their longest pause, from gc.callbacks."""
    import gc

    from pipeline.metrics import GcPauses

    pauses = GcPauses()
    pauses.install()
    try:
        gc.collect(0)
        assert pauses.count == 0  # a young collection is not a full one
        gc.collect()
        gc.collect()
    finally:
        pauses.uninstall()
    assert pauses.count == 2 and 0 < pauses.max_s <= pauses.total_s
    assert pauses.take_max() > 0 and pauses.max_s == 0.0  # the max restarts at each stats line
    gc.collect()
    assert pauses.count == 2 and pauses not in gc.callbacks
