"""Per-device privacy accountant: w-event, per-period and lifetime budgets, replay bookkeeping.

The privacy unit is one device. Amounts are kept as integers in units of ``1e-9`` epsilon
(charges rounded up, budgets rounded down), so sums and comparisons are exact.

w-event rule
    For every closed interval ``I = [a, a + T]`` of capture time (``T = horizon_s``), the
    epsilons of all releases whose capture span ``[start, end]`` intersects ``I`` sum to at most
    the rule's epsilon. A raw sample lying in ``length / hop`` overlapping windows is thus
    charged once per window. When a release ``r`` is added, only intervals meeting ``r`` change;
    their worst sum is attained at ``a`` equal to the end of some release (or ``r``'s end), so
    checking those candidates is exact.
period rule
    Releases are assigned to the period ``floor(end_ns / period_ns)`` (UTC-aligned, capture
    time, so replays are charged to the same period); each period has its own budget.
lifetime rule
    Total epsilon of the device.

Memory is bounded: entries older than ``retention_s + horizon_s`` behind the device's newest
capture time are dropped, and a release starting more than ``retention_s`` behind it is refused
as ``late`` (it could meet dropped entries).
"""

from __future__ import annotations

import functools
import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import PrivacyError
from pipeline.privacy.config import PrivacyConfig

#: Accounting unit: 1e-9 epsilon.
UNITS_PER_EPSILON = 1_000_000_000
_MAX_RECENT = 4096


def to_units(epsilon: float, round_up: bool) -> int:
    """Epsilon in integer units; exact multiples stay exact, others round up or down."""
    v = epsilon * UNITS_PER_EPSILON
    r = round(v)
    if abs(v - r) <= 1e-9 * max(1.0, abs(v)):
        return int(r)
    return int(math.ceil(v)) if round_up else int(math.floor(v))


@functools.lru_cache(maxsize=256)
def _cost_units(epsilon: float) -> int:
    """``to_units(epsilon, round_up=True)``, memoized: a plan charges the same epsilon every time."""
    return to_units(epsilon, round_up=True)


def to_epsilon(units: int) -> float:
    """Units back to epsilon."""
    return units / UNITS_PER_EPSILON


@dataclass(frozen=True, slots=True)
class Shortfall:
    """Why a release cannot be paid: the rule, what it needs and what remains (epsilon)."""

    rule: str
    needed: float
    remaining: float


class _Device:
    __slots__ = ("starts", "ends", "costs", "n", "max_end", "periods", "lifetime", "delta", "streams", "windex")

    def __init__(self) -> None:
        self.starts = np.zeros(64, dtype=np.int64)
        self.ends = np.zeros(64, dtype=np.int64)
        self.costs = np.zeros(64, dtype=np.int64)
        self.n = 0
        self.windex = _WIndex()
        self.max_end: int | None = None
        self.periods: dict[int, int] = {}
        self.lifetime = 0
        self.delta = 0.0
        self.streams: dict[str, _Stream] = {}


class _WIndex:
    """The same entries as ``_Device.starts/ends/costs``, sorted by end, with the w-event sum at each end.

    ``sums[j] = W(ends[j])`` where ``W(a) = sum(c_i : e_i >= a and s_i <= a + T)`` over all current
    entries: the sum of the interval ``[a, a + T]``. Adding an entry ``(s, e, c)`` adds ``c`` to
    ``W(a)`` exactly for ``s - T <= a <= e``, a contiguous run of ``ends``; dropping entries older
    than a cutoff drops a prefix and changes no remaining sum (an entry counts at ``a`` only if it
    ends at or after ``a``). All integer, so the maintained sums equal the recomputed ones.
    """

    __slots__ = ("ends", "starts", "costs", "sums")

    def __init__(self) -> None:
        self.ends: list[int] = []
        self.starts: list[int] = []
        self.costs: list[int] = []
        self.sums: list[int] = []

    def at(self, a: int, horizon: int) -> int:
        """``W(a)``, by a scan of the entries ending at or after ``a``."""
        lim = a + horizon
        starts, costs = self.starts, self.costs
        first, n = bisect_left(self.ends, a), len(starts)
        if first >= n - 1:  # none or one (the usual case: the entry just added)
            return costs[first] if first == n - 1 and starts[first] <= lim else 0
        return sum(costs[i] for i in range(first, n) if starts[i] <= lim)

    def worst(self, start: int, end: int, horizon: int) -> int:
        """``max W(a)`` over ``a`` in the entry ends within ``[start - T, end]`` and ``a = end``."""
        ends = self.ends
        j0 = bisect_left(ends, start - horizon)
        if j0 == len(ends):
            return 0
        j1 = bisect_right(ends, end)
        here = self.at(end, horizon) if j1 < len(ends) else 0  # entries ending after ``end``
        return max(here, max(self.sums[j0:j1], default=0))

    def add(self, start: int, end: int, cost: int, horizon: int) -> None:
        ends, sums = self.ends, self.sums
        j0 = bisect_left(ends, start - horizon)
        j1 = bisect_right(ends, end)
        if j0 < j1:
            sums[j0:j1] = [v + cost for v in sums[j0:j1]]
        ends.insert(j1, end)
        self.starts.insert(j1, start)
        self.costs.insert(j1, cost)
        sums.insert(j1, 0)
        sums[j1] = self.at(end, horizon)

    def drop_before(self, cutoff: int) -> None:
        j = bisect_left(self.ends, cutoff)
        if j:
            del self.ends[:j], self.starts[:j], self.costs[:j], self.sums[:j]


class _Stream:
    __slots__ = ("last", "recent")

    def __init__(self) -> None:
        self.last = -1
        # window_index -> outcome list (JSON-able):
        #   ["released", release_id, cost_units, key_id, digest, end_ns]
        #   ["suppressed", release_id, reason, end_ns, event]
        self.recent: dict[int, list[Any]] = {}


class Accountant:
    """Ledger of every device's spending; restores from and exports plain data.

    Parameters
    ----------
    config : PrivacyConfig
        Budgets and retention.
    state : dict or None
        Output of :meth:`state` to restore.
    """

    def __init__(self, config: PrivacyConfig, state: dict[str, Any] | None = None) -> None:
        self.config = config
        w = config.w_event
        self._horizon_ns = None if w is None else int(round(w.horizon_s * 1e9))
        self._w_budget = None if w is None else to_units(w.epsilon, round_up=False)
        p = config.period
        self._period_ns = None if p is None else int(round(p.period_s * 1e9))
        self._period_budget = None if p is None else to_units(p.epsilon, round_up=False)
        self._life_budget = (
            None if config.lifetime_epsilon is None else to_units(config.lifetime_epsilon, round_up=False)
        )
        self._retention_ns = int(round(config.retention_s * 1e9))
        self._devices: dict[str, _Device] = {}
        if state:
            self._restore(state)

    # ------------------------------------------------------------------ queries
    def stream(self, device_id: str, stream_key: str) -> _Stream | None:
        dev = self._devices.get(device_id)
        return None if dev is None else dev.streams.get(stream_key)

    def is_late(self, device_id: str, start_ns: int) -> bool:
        """True when ``start_ns`` lags the device's newest capture time by more than retention."""
        dev = self._devices.get(device_id)
        return dev is not None and dev.max_end is not None and start_ns < dev.max_end - self._retention_ns

    def _w_sum(self, dev: _Device | None, start_ns: int, end_ns: int, cost: int) -> int:
        """Worst w-event sum over intervals meeting ``[start_ns, end_ns]`` if ``cost`` is added.

        Uses the device's incremental :class:`_WIndex` (``O(log n)`` plus the entries within the
        horizon); :meth:`_w_sum_scan` is the direct computation it equals.
        """
        assert self._horizon_ns is not None
        if dev is None or dev.n == 0:
            return cost
        return dev.windex.worst(start_ns, end_ns, self._horizon_ns) + cost

    def _w_sum_scan(self, dev: _Device | None, start_ns: int, end_ns: int, cost: int) -> int:
        """:meth:`_w_sum` computed directly over the device's entries (reference, for tests)."""
        assert self._horizon_ns is not None
        if dev is None or dev.n == 0:
            return cost
        t = self._horizon_ns
        ends = dev.ends[: dev.n]
        near = np.flatnonzero(ends >= start_ns - t)
        if near.size == 0:
            return cost
        s, e, c = dev.starts[near], ends[near], dev.costs[near]
        cand = np.append(e[e <= end_ns], end_ns)
        inside = (e >= cand[:, None]) & (s <= cand[:, None] + t)
        return int((inside @ c).max()) + cost

    def assess(
        self, device_id: str, start_ns: int, end_ns: int, epsilon: float
    ) -> tuple[Shortfall | None, dict[str, Any]]:
        """Can the device pay ``epsilon`` for this capture span?

        Returns
        -------
        shortfall : Shortfall or None
            The first rule (lifetime, period, w_event) that cannot pay, or None.
        budget : dict
            Per rule: ``epsilon`` (the budget), ``spent`` and ``remaining`` as they will be once
            the release is charged (as they are, when it cannot be paid).
        """
        cost = _cost_units(epsilon)
        dev = self._devices.get(device_id)
        short: Shortfall | None = None
        budget: dict[str, Any] = {}
        rules: list[tuple[str, int, int, dict[str, Any]]] = []
        if self._life_budget is not None:
            rules.append(("lifetime", self._life_budget, 0 if dev is None else dev.lifetime, {}))
        if self._period_budget is not None:
            assert self._period_ns is not None
            idx = end_ns // self._period_ns
            rules.append(("period", self._period_budget, 0 if dev is None else dev.periods.get(idx, 0), {"index": idx}))
        if self._w_budget is not None:
            rules.append(("w_event", self._w_budget, self._w_sum(dev, start_ns, end_ns, 0), {}))
        for rule, limit, spent, _ in rules:
            if spent + cost > limit:
                short = Shortfall(rule, to_epsilon(cost), to_epsilon(limit - spent))
                break
        paid = cost if short is None else 0
        u = UNITS_PER_EPSILON  # (x / u is to_epsilon(x), inlined: this runs for every release)
        for rule, limit, spent, extra in rules:
            budget[rule] = {
                **extra,
                "epsilon": limit / u,
                "spent": (spent + paid) / u,
                "remaining": (limit - spent - paid) / u,
            }
        return short, budget

    def shortfall(self, device_id: str, start_ns: int, end_ns: int, epsilon: float) -> Shortfall | None:
        """The first rule that cannot pay ``epsilon`` for this capture span, or None."""
        return self.assess(device_id, start_ns, end_ns, epsilon)[0]

    # ------------------------------------------------------------------ updates
    def _device(self, device_id: str) -> _Device:
        dev = self._devices.get(device_id)
        if dev is None:
            dev = self._devices[device_id] = _Device()
        return dev

    def _stream(self, dev: _Device, stream_key: str) -> _Stream:
        st = dev.streams.get(stream_key)
        if st is None:
            st = dev.streams[stream_key] = _Stream()
        return st

    def charge(
        self,
        device_id: str,
        stream_key: str,
        window_index: int,
        start_ns: int,
        end_ns: int,
        epsilon: float,
        delta: float,
        release_id: str,
        key_id: str,
        digest: str,
    ) -> None:
        """Record a release (call only after :meth:`shortfall` returned None)."""
        cost = _cost_units(epsilon)
        dev = self._device(device_id)
        if dev.n == dev.starts.size:
            self._prune(dev)
            if 2 * dev.n > dev.starts.size:
                for name in ("starts", "ends", "costs"):
                    arr = getattr(dev, name)
                    setattr(dev, name, np.concatenate([arr, np.zeros_like(arr)]))
        dev.starts[dev.n] = start_ns
        dev.ends[dev.n] = end_ns
        dev.costs[dev.n] = cost
        dev.n += 1
        if self._horizon_ns is not None:
            dev.windex.add(int(start_ns), int(end_ns), cost, self._horizon_ns)
        if self._period_ns is not None:
            idx = end_ns // self._period_ns
            dev.periods[idx] = dev.periods.get(idx, 0) + cost
        dev.lifetime += cost
        dev.delta += delta
        self._remember(dev, stream_key, window_index, end_ns, ["released", release_id, cost, key_id, digest, end_ns])

    def record_suppression(
        self,
        device_id: str,
        stream_key: str,
        window_index: int,
        end_ns: int,
        release_id: str,
        reason: str,
        event: dict[str, Any],
    ) -> None:
        """Remember a suppressed window so that its replay is suppressed identically."""
        dev = self._device(device_id)
        self._remember(dev, stream_key, window_index, end_ns, ["suppressed", release_id, reason, end_ns, event])

    def _remember(self, dev: _Device, stream_key: str, window_index: int, end_ns: int, outcome: list[Any]) -> None:
        st = self._stream(dev, stream_key)
        st.last = max(st.last, window_index)
        st.recent[window_index] = outcome
        if dev.max_end is None or end_ns > dev.max_end:
            dev.max_end = end_ns
        if len(st.recent) > _MAX_RECENT:
            cutoff = dev.max_end - self._retention_ns - (self._horizon_ns or 0)
            st.recent = {k: v for k, v in st.recent.items() if _outcome_end(v) >= cutoff}
            while len(st.recent) > _MAX_RECENT:
                del st.recent[min(st.recent)]

    def _prune(self, dev: _Device) -> None:
        if dev.max_end is None:
            return
        cutoff = dev.max_end - self._retention_ns - (self._horizon_ns or 0)
        keep = dev.ends[: dev.n] >= cutoff
        k = int(keep.sum())
        for name in ("starts", "ends", "costs"):
            arr = getattr(dev, name)
            arr[:k] = arr[: dev.n][keep]
        dev.n = k
        dev.windex.drop_before(cutoff)
        if self._period_ns is not None:
            oldest = cutoff // self._period_ns
            dev.periods = {i: v for i, v in dev.periods.items() if i >= oldest}
        for st in dev.streams.values():
            st.recent = {w: o for w, o in st.recent.items() if _outcome_end(o) >= cutoff}

    # ------------------------------------------------------------------ state
    def state(self, devices_only: Iterable[str] | None = None) -> dict[str, Any]:
        """Plain JSON-able ledger; ``Accountant(config, state)`` restores it.

        ``devices_only``: just these devices (those absent are skipped), e.g. the ones that
        changed since the last checkpoint.
        """
        devices: dict[str, Any] = {}
        chosen = (
            self._devices.items() if devices_only is None
            else ((d, self._devices[d]) for d in devices_only if d in self._devices)
        )
        for device_id, dev in chosen:
            self._prune(dev)
            devices[device_id] = {
                "entries": [
                    [int(a), int(b), int(c)]
                    for a, b, c in zip(dev.starts[: dev.n], dev.ends[: dev.n], dev.costs[: dev.n], strict=True)
                ],
                "max_end_ns": dev.max_end,
                "periods": {str(k): v for k, v in dev.periods.items()},
                "lifetime_units": dev.lifetime,
                "delta": dev.delta,
                "streams": {
                    k: {"last": st.last, "recent": {str(w): o for w, o in st.recent.items()}}
                    for k, st in dev.streams.items()
                },
            }
        return {"format": "biopriv-ledger/1", "units_per_epsilon": UNITS_PER_EPSILON, "devices": devices}

    def _restore(self, state: dict[str, Any]) -> None:
        if state.get("format") != "biopriv-ledger/1" or state.get("units_per_epsilon") != UNITS_PER_EPSILON:
            raise PrivacyError(f"ledger state has format {state.get('format')!r}, expected 'biopriv-ledger/1'")
        try:
            for device_id, d in state["devices"].items():
                dev = self._device(device_id)
                entries = np.asarray(d["entries"], dtype=np.int64).reshape(-1, 3)
                size = max(64, 2 * len(entries))
                dev.starts, dev.ends, dev.costs = (np.zeros(size, dtype=np.int64) for _ in range(3))
                dev.n = len(entries)
                dev.starts[: dev.n], dev.ends[: dev.n], dev.costs[: dev.n] = entries[:, 0], entries[:, 1], entries[:, 2]
                dev.windex = _WIndex()
                if self._horizon_ns is not None:
                    for a, b, c in entries.tolist():
                        dev.windex.add(a, b, c, self._horizon_ns)
                dev.max_end = d["max_end_ns"]
                dev.periods = {int(k): int(v) for k, v in d["periods"].items()}
                dev.lifetime = int(d["lifetime_units"])
                dev.delta = float(d["delta"])
                for key, sd in d["streams"].items():
                    st = self._stream(dev, key)
                    st.last = int(sd["last"])
                    st.recent = {int(w): list(o) for w, o in sd["recent"].items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise PrivacyError(f"ledger state is malformed: {type(exc).__name__}: {exc}") from None


def _outcome_end(outcome: list[Any]) -> int:
    return int(outcome[5] if outcome[0] == "released" else outcome[3])
