"""Sliding windows: boundaries, gaps, duplicates, reordering, restarts, determinism under replay."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import ConfigError
from pipeline.frames import Frame, make_frame
from pipeline.windows import Window, Windower, WindowSpec

RATE = 64.0
N = 8  # samples per frame
SIGNAL = np.arange(4096, dtype=np.float32)  # sample value == its stream index: easy to check


def frame(seq: int, rate: float = RATE, n: int = N, channels: tuple[str, ...] = ("a",), send_ns: int = 0) -> Frame:
    cap = int(seq * n * 1e9 / rate)
    values = SIGNAL[(seq * n) % 4000 : (seq * n) % 4000 + n]
    return make_frame("dev", "eeg", seq, cap, rate, channels, "uV", np.tile(values, (len(channels), 1)), send_ns=send_ns)


def run(w: Windower, seqs: list[int], **kw: object) -> list[Window]:
    out: list[Window] = []
    for s in seqs:
        out += w.push(frame(s, **kw))  # type: ignore[arg-type]
    return out


SPEC = WindowSpec(length_s=1.0, hop_s=0.25, max_missing=0.1, reorder_frames=2)  # 64 samples, hop 16


def test_windows_in_order_cover_the_grid() -> None:
    w = Windower(SPEC)
    wins = run(w, list(range(40)))
    assert [x.index for x in wins] == list(range(len(wins)))
    assert len(wins) == (40 * N - 64) // 16 + 1
    for x in wins:
        assert x.data.shape == (1, 64)
        np.testing.assert_array_equal(x.data[0], np.arange(x.start_sample, x.start_sample + 64))
        assert x.start_sample == 16 * x.index
        assert x.start_ns == int(x.start_sample * 1e9 / RATE)
        assert x.end_ns - x.start_ns == 1_000_000_000
        assert x.last_seq == (x.start_sample + 63) // N
        assert x.missing_fraction == 0.0
    assert w.stats.released == len(wins) and w.stats.incomplete == 0


def test_complete_window_is_released_by_its_last_frame() -> None:
    w = Windower(SPEC)
    assert run(w, list(range(7))) == []
    (x,) = w.push(frame(7, send_ns=123))  # samples 56..63 complete window 0
    assert x.index == 0 and x.last_send_ns == 123


def test_duplicates_are_dropped() -> None:
    w = Windower(SPEC)
    ref = run(Windower(SPEC), list(range(30)))
    wins = run(w, [s for s in range(30) for _ in (0, 1)])
    assert w.stats.duplicates == 30
    assert [x.index for x in wins] == [x.index for x in ref]


def test_small_gap_is_interpolated_and_counted() -> None:
    w = Windower(SPEC)
    wins = run(w, [s for s in range(30) if s != 10])  # frame 10 = samples 80..87
    assert w.stats.gaps == 1 and w.stats.skipped_frames == 1
    # 8 of 64 samples missing = 12.5 % > 10 %: those windows are not released
    assert all(not (x.start_sample <= 80 < x.start_sample + 64) for x in wins)
    assert w.stats.incomplete == 4 + 0  # windows starting at 32, 48, 64, 80 hold samples 80..87


def test_gap_below_tolerance_is_released_with_linear_fill() -> None:
    spec = WindowSpec(length_s=1.0, hop_s=0.25, max_missing=0.2, reorder_frames=0)
    w = Windower(spec)
    wins = run(w, [s for s in range(30) if s != 10])
    hit = [x for x in wins if x.start_sample <= 80 < x.start_sample + 64]
    assert len(hit) == 4
    for x in hit:
        assert x.missing_fraction == pytest.approx(8 / 64)
        expected = np.arange(x.start_sample, x.start_sample + 64, dtype=float)
        if x.start_sample == 80:  # the gap opens the window: held at the first received value
            expected[:8] = 88.0
        # inside, the ramp is linear, so interpolation restores it exactly
        np.testing.assert_allclose(x.data[0], expected)


def test_reordered_frames_within_tolerance_give_the_same_windows() -> None:
    order = list(range(40))
    order[10], order[11] = order[11], order[10]
    order[20], order[22] = order[22], order[20]
    w = Windower(SPEC)
    wins = run(w, order)
    ref = run(Windower(SPEC), list(range(40)))
    assert [(x.index, x.data.tobytes()) for x in wins] == [(x.index, x.data.tobytes()) for x in ref]
    assert w.stats.reordered == 3 and w.stats.late == 0  # 10, 20 and 21 arrive after a higher seq


def test_frame_older_than_every_pending_window_is_late() -> None:
    w = Windower(SPEC)
    run(w, list(range(30)))
    assert w.push(frame(0)) == []
    assert w.stats.late + w.stats.duplicates == 1


def test_rate_change_restarts_with_increasing_indices() -> None:
    w = Windower(SPEC)
    first = run(w, list(range(20)))
    second = run(w, list(range(20, 60)), rate=128.0)
    assert w.stats.restarts == 1
    assert second and second[0].index > first[-1].index
    assert all(x.sample_rate == 128.0 and x.data.shape == (1, 128) for x in second)
    idx = [x.index for x in first + second]
    assert idx == sorted(set(idx))


def test_channel_change_restarts() -> None:
    w = Windower(SPEC)
    run(w, list(range(20)))
    wins = run(w, list(range(20, 40)), channels=("a", "b"))
    assert w.stats.restarts == 1 and wins and wins[0].data.shape == (2, 64)


def test_device_reboot_restarts_but_stale_redelivery_is_dropped() -> None:
    w = Windower(SPEC)
    run(w, list(range(100)))
    stale = frame(3)  # old capture time: a redelivered frame
    assert w.push(stale) == [] and w.stats.restarts == 0
    reboot = make_frame("dev", "eeg", 0, 10**12, RATE, ("a",), "uV", SIGNAL[:N])
    w.push(reboot)
    assert w.stats.restarts == 1


def test_flush_releases_pending_complete_windows() -> None:
    spec = WindowSpec(length_s=1.0, hop_s=0.25, reorder_frames=3)
    w = Windower(spec)
    wins = run(w, [s for s in range(20) if s != 15])
    tail = w.flush()
    assert [x.index for x in wins + tail] == sorted({x.index for x in wins + tail})


def test_state_round_trip_continues_identically() -> None:
    seqs = list(range(25))
    w = Windower(SPEC)
    run(w, seqs)
    clone = Windower.from_state(SPEC, w.state())
    rest = [s for s in range(25, 60) if s != 40]
    a = run(w, rest)
    b = run(clone, rest)
    assert [(x.index, x.data.tobytes(), x.start_ns) for x in a] == [(x.index, x.data.tobytes(), x.start_ns) for x in b]
    assert w.stats == clone.stats


@pytest.mark.parametrize(
    "kwargs",
    [dict(length_s=0.0, hop_s=1.0), dict(length_s=1.0, hop_s=-1.0), dict(length_s=1.0, hop_s=1.0, max_missing=1.0),
     dict(length_s=1.0, hop_s=1.0, reorder_frames=-1)],
)
def test_spec_validation_names_the_value(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="must be"):
        WindowSpec(**kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- properties
def _fingerprint(wins: list[Window]) -> list[tuple[int, int, bytes, float]]:
    return [(x.index, x.start_ns, x.data.tobytes(), x.missing_fraction) for x in wins]


@st.composite
def arrivals(draw: st.DrawFn) -> list[int]:
    """Sequence numbers 0..n-1 with drops, duplicates and local swaps (within 2 frames)."""
    n = draw(st.integers(20, 80))
    seqs = [s for s in range(n) if not draw(st.booleans()) or draw(st.integers(0, 9)) > 0]
    out = list(seqs)
    for i in range(len(out) - 1):
        if draw(st.integers(0, 5)) == 0 and abs(out[i] - out[i + 1]) <= 2:
            out[i], out[i + 1] = out[i + 1], out[i]
    dups = draw(st.lists(st.sampled_from(out), max_size=5)) if out else []
    for d in dups:
        out.insert(out.index(d) + 1, d)
    return out


@settings(max_examples=60, deadline=None)
@given(arrivals())
def test_replay_is_deterministic(order: list[int]) -> None:
    assert _fingerprint(run(Windower(SPEC), order)) == _fingerprint(run(Windower(SPEC), order))


@settings(max_examples=60, deadline=None)
@given(arrivals())
def test_windows_are_increasing_within_bounds_and_exact(order: list[int]) -> None:
    w = Windower(SPEC)
    wins = run(w, order) + w.flush()
    idx = [x.index for x in wins]
    assert idx == sorted(set(idx))
    received = set(order)
    for x in wins:
        assert x.missing_fraction <= SPEC.max_missing
        # every sample from a received frame is exact
        for f in range(x.start_sample // N, (x.start_sample + 63) // N + 1):
            if f in received:
                a = max(f * N, x.start_sample) - x.start_sample
                b = min((f + 1) * N, x.start_sample + 64) - x.start_sample
                np.testing.assert_array_equal(x.data[0, a:b], np.arange(a, b) + x.start_sample)
    assert w.stats.frames == len(order)
    assert w.stats.duplicates + w.stats.late + w.stats.accepted == len(order)


@settings(max_examples=40, deadline=None)
@given(arrivals())
def test_reordering_within_tolerance_does_not_change_windows(order: list[int]) -> None:
    in_order = sorted(set(order))
    a = run(Windower(SPEC), order) + []
    b = run(Windower(SPEC), in_order)
    # same windows, except that reordering may delay (never change) a release past the end
    fa, fb = _fingerprint(a), _fingerprint(b)
    assert fa == fb[: len(fa)] or fb == fa[: len(fb)]


@settings(max_examples=60, deadline=None)
@given(arrivals(), st.lists(st.integers(0, 200), max_size=3))
def test_received_keeps_exactly_the_recent_frames(order: list[int], stale: list[int]) -> None:
    # the duplicate detection remembers exactly the accepted frames from `keep` on, pruned from the
    # front while they arrived in order and by a full pass after a reordered one
    w = Windower(SPEC)
    accepted: set[int] = set()
    for s in order + [x + max(order, default=0) // 2 for x in stale]:
        before = w.stats.accepted
        w.push(frame(s))
        if w.stats.accepted > before:
            accepted.add(s)
        seg = w._seg
        assert seg is not None
        keep = (seg.next_k * seg.n_hop) // N - seg.capacity // N - 1
        assert set(seg.received) == {f for f in accepted if f >= keep}
        if seg.ordered:
            assert list(seg.received) == sorted(seg.received)


def test_windows_of_a_segment_share_one_cache_and_restarts_get_a_new_one() -> None:
    w = Windower(SPEC)
    first = run(w, list(range(30)))
    assert first and all(x.cache is first[0].cache for x in first)
    assert first[0].cache is not None and (first[0].cache.n_length, first[0].cache.n_hop) == (64, 16)
    first[0].cache.store["k"] = 1  # extractors' scratch space
    after = run(w, list(range(30, 60)), rate=2 * RATE)  # rate change: new segment
    assert w.stats.restarts == 1 and after
    assert all(x.cache is after[0].cache for x in after) and after[0].cache is not first[0].cache
    assert after[0].cache.store == {}
    state = w.state()
    assert "cache" not in repr(state)  # not persisted: a restored windower starts with an empty cache
    clone = Windower.from_state(SPEC, state)
    more = run(clone, list(range(60, 90)), rate=2 * RATE)
    assert more and more[0].cache is not None and more[0].cache is not after[0].cache and more[0].cache.store == {}
    assert Window(0, 0, 0, RATE, ("a",), ("uV",), np.zeros((1, 4)), 0, 0, 0.0).cache is None
