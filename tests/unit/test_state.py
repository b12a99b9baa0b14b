"""Durable worker state (pipeline.state): resume offsets, state records, ledger slices; decoder fuzz."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import FrameError, StateError
from pipeline.frames import decode_frame
from pipeline.processor import FrameRef
from pipeline.state import (
    ResumeTracker,
    StateCipher,
    check_fingerprints,
    check_layout,
    device_record,
    header_record,
    keys_record,
    layout_record,
    load_partition,
    merge_ledger,
    resume_record,
    split_ledger,
)

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
        load_partition([(b"d:a", b'{"v": 2, "kind": "other"}')])
    with pytest.raises(StateError, match="older biopriv"):
        load_partition([(b"d:a", b'{"v": 1, "kind": "device"}')])


def test_sealed_records_open_only_with_the_same_keys_and_record_key() -> None:
    from pipeline.privacy import KeyRing

    keys = KeyRing.generate()
    cipher = StateCipher(keys)
    ledger = {"entries": [[1, 2, 3]], "secret-ish": "digest"}
    key, value = device_record("dev-a", ledger, None, cipher)
    assert b"digest" not in value and b"entries" not in value and b"dev-a" not in value.replace(key, b"")
    hk, hv = header_record("dev-a", {"lineage": "ab" * 16, "keys": {"20000": "n1"}}, cipher)
    ps = load_partition([(key, value), (hk, hv)], cipher)
    assert ps.devices == {"dev-a": ledger} and ps.headers == {"dev-a": {"lineage": "ab" * 16, "keys": {"20000": "n1"}}}
    with pytest.raises(StateError, match="another key file"):
        load_partition([(key, value)], StateCipher(KeyRing.generate()))
    with pytest.raises(StateError, match="does not open"):  # moved to another device's key
        load_partition([(b"d:dev-b", value)], cipher)


def test_layout_and_fingerprint_checks_refuse_with_a_clear_message() -> None:
    from pipeline.privacy import KeyRing

    ps = load_partition([layout_record({"raw.eeg": 6, "raw.bio": 6}), keys_record({"noise:n1": "aa", "pseudonym:p1": "bb"})])
    check_layout(ps.layout, {"raw.eeg": 6, "raw.bio": 6})
    with pytest.raises(StateError, match=r"repartitioned .*raw.bio: 6 -> 12"):
        check_layout(ps.layout, {"raw.eeg": 6, "raw.bio": 12})
    check_fingerprints(ps.fingerprints, {"noise:n1": "aa", "noise:n2": "cc", "pseudonym:p1": "bb"})  # a rotation
    with pytest.raises(StateError, match="noise:n1"):
        check_fingerprints(ps.fingerprints, {"noise:n1": "zz", "pseudonym:p1": "bb"})
    with pytest.raises(StateError, match="differs from the one that wrote"):
        check_fingerprints(ps.fingerprints, KeyRing.generate().fingerprints())
    with pytest.raises(StateError, match="shares no key"):
        check_fingerprints(ps.fingerprints, {"noise:n7": "aa"})


def test_merge_and_split_ledger() -> None:
    state = {"format": "biopriv-ledger/2", "units_per_epsilon": 10**9, "devices": {"a": {"n": 1}, "b": {"n": 2}}}
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


def _rate_change_frames() -> list:
    import numpy as np

    from pipeline.frames import make_frame

    t0, n = 1_764_000_000_000_000_000, 32
    rng = np.random.default_rng(7)
    out = []
    t = t0
    for k in range(160):  # 256 Hz for 40 frames, then the device switches to 128 Hz (a restart)
        rate = 256.0 if k < 40 else 128.0
        out.append(make_frame("eeg-r", "eeg", k, t, rate, ["Fz", "Cz"], "uV", rng.normal(0, 20, (2, n)), send_ns=t0 + k))
        t += int(n * 1e9 / rate)
    return out


def _run_until_crash(tmp_path, with_anchors: bool) -> tuple[list, list, int]:
    """Worker A checkpoints at offset 100 and goes on; worker B recovers from that checkpoint."""
    import json

    from pipeline.frames import encode_frame
    from pipeline.privacy import PrivacyConfig, PrivacyEngine, load_keys
    from pipeline.processor import Processor

    keys = load_keys(tmp_path / "keys.json")

    def new() -> Processor:
        return Processor(PrivacyEngine(PrivacyConfig.default(), keys), keys.pseudonym, clock=lambda: 42)

    frames = [(encode_frame(f), b"eeg-r") for f in _rate_change_frames()]
    a, tracker = new(), None
    tracker = ResumeTracker(a.history_frames, clock=lambda: 0.0)
    checkpoint_at = 100
    for off, (v, k) in enumerate(frames[:checkpoint_at]):
        tracker.observe(TP, off, a.process(v, k).frame)
    ledger = split_ledger(a.engine.ledger_state(), {"eeg-r"})
    anchors = a.anchors("eeg-r") if with_anchors else None
    cipher = StateCipher(keys)
    ps = load_partition(
        [device_record("eeg-r", ledger["eeg-r"], anchors, cipher), resume_record(TP[0], 0, tracker.resume_offsets()[TP])],
        cipher,
    )
    released_a = [json.loads(r.value) for v, k in frames[checkpoint_at:] for r in a.process(v, k).releases]
    # B: load the ledger and the grid anchors, re-feed [resume, checkpoint) discarding, then go on
    b = new()
    b.engine = b.engine.with_ledger(merge_ledger(b.engine.ledger_state(), ps.devices))
    for device, anc in ps.windows.items():
        b.park(device, anc)
    for v, k in frames[ps.resume[TP[0]]:checkpoint_at]:
        b.process(v, k)
    released_b = [json.loads(r.value) for v, k in frames[checkpoint_at:] for r in b.process(v, k).releases]
    return released_a, released_b, ps.resume[TP[0]]


def test_rebuild_after_a_rate_change_restores_the_window_grid(tmp_path) -> None:
    """The stream restarted (256 -> 128 Hz at offset 40) before the resume offset: with the grid anchor
    in the device record the rebuilt windows are the lost ones (same index, id, values, budget)."""
    released_a, released_b, resume = _run_until_crash(tmp_path, with_anchors=True)
    assert 40 < resume < 100  # the restart is before the resume offset
    assert released_a and released_b == released_a
    # without the anchor (the record format before this fix) the rebuilt grid is re-indexed
    _a, without, _r = _run_until_crash(tmp_path, with_anchors=False)
    assert [d["release_id"] for d in without] != [d["release_id"] for d in released_a]


def test_device_record_with_anchors_only_and_latest_wins() -> None:
    anchors = {"eeg/eeg": {"next_index": 3, "stats": {}, "segment": None}}
    ps = load_partition([device_record("x", {"units": 1}), device_record("x", None, anchors)])
    assert ps.devices == {} and ps.windows == {"x": anchors}
    ps = load_partition([device_record("x", None, anchors), device_record("x", {"units": 1})])
    assert ps.devices == {"x": {"units": 1}} and ps.windows == {}
