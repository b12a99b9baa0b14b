"""Per-frame latency attribution: which frames a read-back record accounts for, and their latency.

A release covers the frames of one (device, stream) up to its ``last_seq``; the frame with
``seq == last_seq`` completed the window. Every frame not yet accounted with ``seq <= last_seq``
is accounted by this record (frames that complete no window are thus accounted through the next
release that contains them), each with the latency of the completing frame: read-back time minus
the completing frame's *due* time on the fixed schedule. Measuring from the due time, not the
send time, keeps a stalled sender or a stalled system from hiding (no coordinated omission).

The *age* of a frame (read-back time minus its own due time) is returned as well: it adds the
window hop a frame waits for the frame that completes its window, a property of the feature
windows rather than of the system.

Pure logic, no Kafka: ``tests/unit/test_latency_attribution.py`` tests it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Accounted", "Attributor"]


@dataclass(frozen=True, slots=True)
class Accounted:
    """What one read-back record accounts for.

    Attributes
    ----------
    frames : int
        Frames newly accounted (0 when every frame up to ``last_seq`` already was).
    latency_ns : int
        Read-back time minus the due time of the completing frame (``last_seq``), ns.
    due_ns : int
        Due time of the completing frame, ns (same clock as the schedule).
    ages_ns : tuple of int
        Read-back time minus each newly accounted frame's own due time, ns, oldest first.
    """

    frames: int
    latency_ns: int
    due_ns: int
    ages_ns: tuple[int, ...]


class Attributor:
    """Accounts frames per (device, stream) from read-back records.

    Parameters
    ----------
    due_ns : callable
        ``(device, stream, seq) -> due time in ns`` on the schedule's clock.
    """

    def __init__(self, due_ns: Callable[[str, str, int], int]) -> None:
        self._due = due_ns
        self._next: dict[tuple[str, str], int] = {}
        self.records = 0
        self.stale = 0
        self.frames = 0

    def next_seq(self, device: str, stream: str) -> int:
        """The first seq of ``(device, stream)`` not yet accounted."""
        return self._next.get((device, stream), 0)

    def account(self, device: str, stream: str, last_seq: int, readback_ns: int) -> Accounted:
        """Account every not-yet-accounted frame of ``(device, stream)`` with ``seq <= last_seq``."""
        self.records += 1
        key = (device, stream)
        first = self._next.get(key, 0)
        due = self._due(device, stream, last_seq)
        if last_seq < first:
            self.stale += 1
            return Accounted(0, readback_ns - due, due, ())
        self._next[key] = last_seq + 1
        n = last_seq - first + 1
        self.frames += n
        ages = tuple(readback_ns - self._due(device, stream, s) for s in range(first, last_seq + 1))
        return Accounted(n, readback_ns - due, due, ages)
