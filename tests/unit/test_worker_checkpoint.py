"""The stream worker's checkpoint bookkeeping, without a broker: what a checkpoint takes when it
begins, that its device records are encoded a slice at a time, and what they contain."""

from __future__ import annotations

from pathlib import Path

from aiokafka import TopicPartition

from pipeline.app import StreamWorker, WorkerSettings
from pipeline.frames import encode_frame
from pipeline.state import load_partition
from tests.unit.test_processor import eeg_frames, make_processor

TOPIC = "biopriv.raw.eeg"


def fed_worker(tmp_path: Path, devices: dict[str, int], seconds: float = 3.0) -> StreamWorker:
    """A worker whose processor has seen ``seconds`` of EEG from each device (device -> partition)."""
    worker = StreamWorker(WorkerSettings(key_file=tmp_path / "keys.json"), make_processor(tmp_path))
    offsets = dict.fromkeys(devices.values(), 0)
    for i, (device, p) in enumerate(devices.items()):
        for frame in eeg_frames(device, seconds, seed=i):
            outcome = worker.processor.process(encode_frame(frame), device.encode())
            worker.tracker.observe((TOPIC, p), offsets[p], outcome.frame)
            offsets[p] += 1
        worker.recovered.add((TOPIC, p))
        worker.consumed[TopicPartition(TOPIC, p)] = offsets[p]
    return worker


def records_by_device(worker: StreamWorker, records: list[tuple[bytes, bytes, int]]) -> dict[str, tuple[dict, int]]:
    out = {}
    for key, value, partition in records:
        assert b'"sealed"' in value and b'"ledger"' not in value  # opens only with the state key
        ps = load_partition([(key, value)], worker.cipher)
        ((device, ledger),) = ps.devices.items()
        out[device] = (ledger, partition)
    return out


def test_a_checkpoint_takes_dirty_devices_and_offsets_when_it_begins(tmp_path: Path) -> None:
    worker = fed_worker(tmp_path, {"a": 0, "b": 1, "c": 1})
    cp = worker._begin(None)
    assert cp.dirty == {"a", "b", "c"}
    assert worker.processor.dirty_devices == set()
    assert cp.commits == {TopicPartition(TOPIC, 0): 24, TopicPartition(TOPIC, 1): 48}
    assert set(cp.resume) == {(TOPIC, 0), (TOPIC, 1)}


def test_a_partial_checkpoint_leaves_other_partitions_dirty(tmp_path: Path) -> None:
    worker = fed_worker(tmp_path, {"a": 0, "b": 1, "c": 1})
    cp = worker._begin({1})
    assert cp.dirty == {"b", "c"}
    assert worker.processor.dirty_devices == {"a"}
    assert set(cp.commits) == {TopicPartition(TOPIC, 1)}
    assert set(cp.resume) == {(TOPIC, 1)}


def test_records_are_encoded_a_slice_at_a_time_and_hold_the_ledger(tmp_path: Path) -> None:
    worker = fed_worker(tmp_path, {"a": 0, "b": 1, "c": 2})
    cp = worker._begin(None)
    steps = 0
    while not worker._encode(cp, budget_s=0.0):  # a zero budget: one device per step
        steps += 1
        assert len(cp.records) == steps
    assert steps == 2 and len(cp.records) == 3  # three calls for three devices
    ledger = worker.processor.engine.ledger_state()["devices"]
    got = records_by_device(worker, cp.records)
    assert {d: p for d, (_, p) in got.items()} == {"a": 0, "b": 1, "c": 2}  # the device's partition number
    for device, (slice_, _) in got.items():
        assert slice_ == ledger[device]
        assert slice_["entries"], device  # charges were recorded


def test_a_record_encoded_later_carries_the_later_ledger(tmp_path: Path) -> None:
    """A slice encoded after more charges is newer than the checkpoint's resume offsets, which is
    what recovery needs (the windows it does not re-feed are in the ledger)."""
    worker = fed_worker(tmp_path, {"a": 0}, seconds=3.0)
    cp = worker._begin(None)
    def last_window(ledger: dict) -> int:
        (stream,) = ledger["streams"].values()
        return int(stream["last"])

    before = last_window(worker.processor.engine.ledger_state()["devices"]["a"])
    for frame in eeg_frames("a", 5.0, seed=0)[24:]:  # seconds 3-5 of the same stream: 4 more windows
        worker.processor.process(encode_frame(frame), b"a")
    assert worker._encode(cp, budget_s=None)
    (slice_, _), = records_by_device(worker, cp.records).values()
    assert last_window(slice_) == before + 4
    assert worker.processor.dirty_devices == {"a"}  # the new charges are in the next checkpoint too


def test_outgoing_records_are_releases_then_dead_letters_then_events(tmp_path: Path) -> None:
    from connectors.kafka import Topics
    from pipeline.app import DEADLETTER_MAX_VALUE, outgoing
    from pipeline.processor import DeadLetter, Outcome

    proc = make_processor(tmp_path)
    releases = [r for f in eeg_frames("a", 3.0) for r in proc.process(encode_frame(f), b"a").releases]
    assert releases
    big = b"x" * (DEADLETTER_MAX_VALUE + 5)
    outcome = Outcome(releases=releases[:1], dead_letters=[DeadLetter("bad_frame", "why", b"a", big)],
                      events=[{"event": "suppressed", "pseudonym": "p1"}])
    t = Topics.with_prefix("x.")
    plain, timed = outgoing(outcome, t, "x.raw.eeg/2/7", False), outgoing(outcome, t, "x.raw.eeg/2/7", True)
    assert [r[0] for r in plain] == [t.private, t.deadletter, t.events]
    r = releases[0]
    assert plain[0] == (t.private, r.key, r.value, [("biopriv-t-release-ns", str(r.t_release_ns).encode())])
    assert timed[0][3][1:] == [("biopriv-t-frame-send-ns", str(r.last_send_ns).encode()),
                               ("biopriv-last-seq", str(r.last_seq).encode())]
    topic, key, value, headers = plain[1]
    assert (key, value) == (b"a", big[:DEADLETTER_MAX_VALUE])
    assert dict(headers) == {"biopriv-reason": b"bad_frame", "biopriv-detail": b"why",
                             "biopriv-source": b"x.raw.eeg/2/7", "biopriv-truncated": str(len(big)).encode()}
    assert plain[2][1:] == (b"p1", b'{"event": "suppressed", "pseudonym": "p1"}', [])
