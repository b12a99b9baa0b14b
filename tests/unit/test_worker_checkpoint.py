"""The worker's checkpoint bookkeeping (:mod:`pipeline.durability`), without a broker: what a
checkpoint takes when it begins, that its device records are encoded a slice at a time, what they
contain, and what is written after them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline import durability
from pipeline.frames import encode_frame
from pipeline.processor import Processor
from pipeline.state import ResumeTracker, StateCipher, load_partition
from tests.unit.test_processor import eeg_frames, make_processor

TOPIC = "biopriv.raw.eeg"


@dataclass
class Fed:
    """A processor that has seen some EEG, with the worker's bookkeeping around it."""

    processor: Processor
    tracker: ResumeTracker
    cipher: StateCipher
    recovered: set[tuple[str, int]] = field(default_factory=set)
    consumed: dict[tuple[str, int], int] = field(default_factory=dict)

    def begin(self, partitions: set[int] | None) -> durability.Checkpoint:
        return durability.begin(self.processor, self.tracker, self.recovered, self.consumed, partitions)

    def encode(self, cp: durability.Checkpoint, budget_s: float | None) -> bool:
        return durability.encode(cp, self.processor, self.tracker, self.cipher, budget_s)


def fed(tmp_path: Path, devices: dict[str, int], seconds: float = 3.0) -> Fed:
    """``seconds`` of EEG from each device (device -> partition), processed and tracked."""
    processor = make_processor(tmp_path)
    f = Fed(processor, ResumeTracker(processor.history_frames), StateCipher(processor.engine.keys))
    offsets = dict.fromkeys(devices.values(), 0)
    for i, (device, p) in enumerate(devices.items()):
        for frame in eeg_frames(device, seconds, seed=i):
            outcome = processor.process(encode_frame(frame), device.encode())
            f.tracker.observe((TOPIC, p), offsets[p], outcome.frame)
            offsets[p] += 1
        f.recovered.add((TOPIC, p))
        f.consumed[(TOPIC, p)] = offsets[p]
    return f


def records_by_device(f: Fed, records: list[tuple[bytes, bytes, int]]) -> dict[str, tuple[dict, int]]:
    out = {}
    for key, value, partition in records:
        assert b'"sealed"' in value and b'"ledger"' not in value  # opens only with the state key
        ps = load_partition([(key, value)], f.cipher)
        ((device, ledger),) = ps.devices.items()
        out[device] = (ledger, partition)
    return out


def test_a_checkpoint_takes_dirty_devices_and_offsets_when_it_begins(tmp_path: Path) -> None:
    f = fed(tmp_path, {"a": 0, "b": 1, "c": 1})
    cp = f.begin(None)
    assert cp.dirty == {"a", "b", "c"}
    assert f.processor.dirty_devices == set()
    assert cp.commits == {(TOPIC, 0): 24, (TOPIC, 1): 48}
    assert set(cp.resume) == {(TOPIC, 0), (TOPIC, 1)}


def test_a_partial_checkpoint_leaves_other_partitions_dirty(tmp_path: Path) -> None:
    f = fed(tmp_path, {"a": 0, "b": 1, "c": 1})
    cp = f.begin({1})
    assert cp.dirty == {"b", "c"}
    assert f.processor.dirty_devices == {"a"}
    assert set(cp.commits) == {(TOPIC, 1)}
    assert set(cp.resume) == {(TOPIC, 1)}


def test_records_are_encoded_a_slice_at_a_time_and_hold_the_ledger(tmp_path: Path) -> None:
    f = fed(tmp_path, {"a": 0, "b": 1, "c": 2})
    cp = f.begin(None)
    steps = 0
    while not f.encode(cp, budget_s=0.0):  # a zero budget: one device per step
        steps += 1
        assert len(cp.records) == steps
    assert steps == 2 and len(cp.records) == 3  # three calls for three devices
    ledger = f.processor.engine.ledger_state()["devices"]
    got = records_by_device(f, cp.records)
    assert {d: p for d, (_, p) in got.items()} == {"a": 0, "b": 1, "c": 2}  # the device's partition number
    for device, (slice_, _) in got.items():
        assert slice_ == ledger[device]
        assert slice_["entries"], device  # charges were recorded


def test_a_record_encoded_later_carries_the_later_ledger(tmp_path: Path) -> None:
    """A slice encoded after more charges is newer than the checkpoint's resume offsets, which is
    what recovery needs (the windows it does not re-feed are in the ledger)."""
    f = fed(tmp_path, {"a": 0}, seconds=3.0)
    cp = f.begin(None)
    def last_window(ledger: dict) -> int:
        (stream,) = ledger["streams"].values()
        return int(stream["last"])

    before = last_window(f.processor.engine.ledger_state()["devices"]["a"])
    for frame in eeg_frames("a", 5.0, seed=0)[24:]:  # seconds 3-5 of the same stream: 4 more windows
        f.processor.process(encode_frame(frame), b"a")
    assert f.encode(cp, budget_s=None)
    (slice_, _), = records_by_device(f, cp.records).values()
    assert last_window(slice_) == before + 4
    assert f.processor.dirty_devices == {"a"}  # the new charges are in the next checkpoint too


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
    assert [r.topic for r in plain] == [t.private, t.deadletter, t.events]
    r = releases[0]
    assert (plain[0].key, plain[0].value, plain[0].headers) == (r.key, r.value, (("biopriv-t-release-ns", str(r.t_release_ns).encode()),))
    assert timed[0].headers[1:] == (("biopriv-t-frame-send-ns", str(r.last_send_ns).encode()),
                                    ("biopriv-last-seq", str(r.last_seq).encode()))
    key, value, headers = plain[1].key, plain[1].value, plain[1].headers
    assert (key, value) == (b"a", big[:DEADLETTER_MAX_VALUE])
    assert dict(headers) == {"biopriv-reason": b"bad_frame", "biopriv-detail": b"why",
                             "biopriv-source": b"x.raw.eeg/2/7", "biopriv-truncated": str(len(big)).encode()}
    assert (plain[2].key, plain[2].value, plain[2].headers) == (b"p1", b'{"event": "suppressed", "pseudonym": "p1"}', ())


def test_after_the_ledgers_come_the_meta_records_then_the_resume_offsets(tmp_path: Path) -> None:
    f = fed(tmp_path, {"a": 0, "b": 1})
    cp = f.begin(None)
    meta = [(b"m:layout", b"L"), (b"m:keys", b"K")]
    final = durability.final_records(cp, meta, {1, 0})
    assert [(k, p) for k, _v, p in final[:4]] == [(b"m:layout", 0), (b"m:keys", 0), (b"m:layout", 1), (b"m:keys", 1)]
    resume = final[4:]
    assert sorted((k, p) for k, _v, p in resume) == [(b"r:" + TOPIC.encode(), 0), (b"r:" + TOPIC.encode(), 1)]
    assert durability.final_records(cp, meta, ()) == resume
