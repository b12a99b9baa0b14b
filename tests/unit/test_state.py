"""Durable worker state (pipeline.state): resume offsets, state records, ledger slices; decoder fuzz."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import FrameError, StateError
from pipeline.frames import decode_frame
from pipeline.processor import FrameRef
from pipeline.state import ResumeTracker, device_record, load_partition, merge_ledger, resume_record, split_ledger

TP = ("raw.eeg", 0)


def ref(device: str, seq: int, capture_ns: int | None = None) -> FrameRef:
    return FrameRef(device, "eeg", seq, 32, 256.0, seq * 125_000_000 if capture_ns is None else capture_ns)


def test_resume_keeps_history_of_each_device() -> None:
    tr = ResumeTracker(lambda f: 4, clock=lambda: 0.0)
    for off in range(20):
        tr.observe(TP, 2 * off, ref("a", off))
        tr.observe(TP, 2 * off + 1, ref("b", off // 2))
    # a: seq 19 newest, keeps seq >= 15 -> offset 30; b: seq 9 newest, keeps seq >= 5 -> offset 21
    assert tr.resume_offsets() == {TP: 21}
    assert tr.partition_of("a") == 0 and tr.devices_on({0}) == {"a", "b"}


def test_resume_without_frames_is_next_offset_and_idle_devices_expire() -> None:
    now = [0.0]
    tr = ResumeTracker(lambda f: 2, idle_s=10, clock=lambda: now[0])
    tr.observe(TP, 5, None)
    assert tr.resume_offsets() == {TP: 6}
    tr.observe(TP, 6, ref("a", 0))
    tr.observe(TP, 7, None)
    assert tr.resume_offsets() == {TP: 6}
    now[0] = 11.0
    assert tr.resume_offsets() == {TP: 8}


def test_reboot_clears_history() -> None:
    tr = ResumeTracker(lambda f: 2, clock=lambda: 0.0)
    for s in range(10):
        tr.observe(TP, s, ref("a", s))
    tr.observe(TP, 10, ref("a", 0, capture_ns=10**18))
    assert tr.resume_offsets() == {TP: 10}
    tr.forget({0})
    assert tr.resume_offsets() == {}


def test_records_round_trip_latest_wins() -> None:
    recs = [device_record("a", {"x": 1}), resume_record("raw.eeg", 0, 5), device_record("a", {"x": 2}),
            resume_record("raw.eeg", 0, 9), (b"d:gone", None)]
    ps = load_partition(recs)
    assert ps.devices == {"a": {"x": 2}} and ps.resume == {"raw.eeg": 9} and ps.records == 5
    with pytest.raises(StateError, match="not JSON"):
        load_partition([(b"d:a", b"{")])
    with pytest.raises(StateError, match="kind"):
        load_partition([(b"d:a", b'{"v": 1, "kind": "other"}')])


def test_merge_and_split_ledger() -> None:
    state = {"format": "biopriv-ledger/1", "units_per_epsilon": 10**9, "devices": {"a": {"n": 1}, "b": {"n": 2}}}
    assert split_ledger(state, ["a", "zz"]) == {"a": {"n": 1}}
    merged = merge_ledger(state, {"c": {"n": 3}, "b": {"n": 9}}, drop={"a"})
    assert merged["devices"] == {"b": {"n": 9}, "c": {"n": 3}}
    with pytest.raises(StateError, match="format"):
        merge_ledger({"format": "x"}, {})


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=300))
def test_decode_frame_never_raises_anything_but_frame_error(data: bytes) -> None:
    try:
        decode_frame(data)
    except FrameError as exc:
        assert exc.reason and exc.detail


@settings(max_examples=1000, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=6), max_leaves=20))
def test_decode_frame_on_random_json(doc: object) -> None:
    import json

    try:
        decode_frame(json.dumps(doc).encode())
    except FrameError as exc:
        assert exc.reason
