"""The latency benchmark's attribution of frames to read-back records (pure logic, no timings)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "latency"))

from attribution import Attributor  # noqa: E402


def due(device: str, stream: str, seq: int) -> int:
    """Frame ``seq`` due at ``(seq + 1) * 100`` ns, device ``b`` starting 10,000 ns later."""
    return (seq + 1) * 100 + (10_000 if device == "b" else 0)


def test_frames_without_a_window_are_accounted_by_the_next_release() -> None:
    a = Attributor(due)
    r = a.account("a", "mic", 4, readback_ns=530)
    assert r.frames == 5
    assert r.latency_ns == 530 - 500
    assert r.due_ns == 500
    assert r.ages_ns == (430, 330, 230, 130, 30)
    r = a.account("a", "mic", 6, readback_ns=720)
    assert (r.frames, r.latency_ns, r.ages_ns) == (2, 20, (120, 20))
    assert a.frames == 7


def test_an_overlapping_release_accounts_nothing_twice() -> None:
    a = Attributor(due)
    a.account("a", "ppg", 9, readback_ns=1_050)
    r = a.account("a", "ppg", 5, readback_ns=1_100)  # hrv window ending earlier than hr's
    assert r.frames == 0 and r.ages_ns == ()
    assert a.stale == 1 and a.frames == 10


def test_streams_and_devices_are_separate() -> None:
    a = Attributor(due)
    assert a.account("a", "eeg", 3, 450).frames == 4
    assert a.account("a", "acc", 0, 150).frames == 1
    r = a.account("b", "eeg", 0, 10_160)
    assert (r.frames, r.latency_ns) == (1, 60)
    assert a.next_seq("a", "eeg") == 4 and a.next_seq("b", "eeg") == 1 and a.next_seq("c", "eeg") == 0


def test_latency_counts_from_the_due_time_even_when_the_send_was_late() -> None:
    a = Attributor(due)
    r = a.account("a", "temp", 0, readback_ns=5_100)  # a stall of ~5 us shows in full
    assert r.latency_ns == 5_000
