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
    A release is charged to every period its capture span ``[start, end)`` meets (UTC-aligned
    periods of capture time, so replays are charged the same way); each period has its own budget.
lifetime rule
    Total epsilon of the device; total delta is capped the same way (``delta_cap``).

Memory is bounded: entries older than ``retention_s + horizon_s`` plus the longest span the device
was charged behind its newest capture time are dropped, and a release *ending* more than
``retention_s`` behind it is refused as ``late`` (it could meet dropped entries).

The ledger is a typed record with this module as its one owner: :class:`DeviceLedger` per device
(its :class:`DeviceHeader`, charges, and per stream a :class:`StreamLedger` of recent
:class:`Released` / :class:`Suppressed` outcomes). :meth:`Accountant.state` serializes it to plain
data and back; nothing else builds or reads its fields by position.
"""

from __future__ import annotations

import functools
import math
import secrets
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.errors import PrivacyError
from pipeline.privacy.config import DELTA_N_MAX, PrivacyConfig

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


@dataclass(slots=True)
class Released:
    """A window that was released: what it cost, under which noise key, and a keyed digest of
    its released values (to recognize a replay of the same data)."""

    cost: int
    key_id: str
    digest: str
    end_ns: int


@dataclass(slots=True)
class Suppressed:
    """A window that was not released, and why."""

    reason: str
    end_ns: int


Outcome = Released | Suppressed


@dataclass(slots=True)
class StreamLedger:
    """Per (stream, feature set): the highest window index seen and the recent outcomes."""

    last: int = -1
    recent: dict[int, Outcome] = field(default_factory=dict)


@dataclass(slots=True)
class DeviceHeader:
    """What must be durable before any release of the device is published (written ahead).

    ``lineage`` is random, drawn when the device's ledger is created: it is part of every noise
    identity, so a ledger recreated after a loss draws fresh noise and never reuses old noise on
    other data. ``keys`` fixes the noise key of each UTC day, so a window is never noised again
    under another key (a rotation takes effect at the device's next day).
    """

    lineage: str
    keys: dict[int, str] = field(default_factory=dict)

    def to_mapping(self) -> dict[str, Any]:
        return {"lineage": self.lineage, "keys": {str(d): k for d, k in sorted(self.keys.items())}}

    @classmethod
    def from_mapping(cls, data: Any) -> DeviceHeader:
        lineage = data["lineage"]
        if not isinstance(lineage, str) or len(lineage) != 32:
            raise ValueError(f"lineage must be 32 hex characters, got {lineage!r:.40}")
        return cls(lineage, {int(d): str(k) for d, k in data["keys"].items()})


class DeviceLedger:
    """Everything the accountant knows of one device."""

    __slots__ = (
        "header", "starts", "ends", "costs", "n", "max_end", "max_span", "periods", "lifetime", "delta",
        "streams", "windex", "guard_ns", "guard_margin",
    )

    def __init__(self, header: DeviceHeader) -> None:
        self.header = header
        self.starts = np.zeros(64, dtype=np.int64)
        self.ends = np.zeros(64, dtype=np.int64)
        self.costs = np.zeros(64, dtype=np.int64)
        self.n = 0
        self.windex = _WIndex()
        self.max_end: int | None = None
        self.max_span = 0
        self.periods: dict[int, int] = {}
        self.lifetime = 0
        self.delta = 0.0
        self.streams: dict[str, StreamLedger] = {}
        #: Windows ending at or before this capture time are suppressed (``ledger_missing``).
        self.guard_ns: int | None = None
        #: Set when the ledger was lost and the device's published history is unknown: the first
        #: window seen sets ``guard_ns`` to its end plus this margin.
        self.guard_margin: int | None = None


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
        self._delta_cap = config.delta_cap if config.delta_cap is not None else DELTA_N_MAX / config.n_devices
        self._retention_ns = int(round(config.retention_s * 1e9))
        self._devices: dict[str, DeviceLedger] = {}
        #: Devices whose header changed since :meth:`take_unsaved_headers` last returned them.
        self._unsaved: set[str] = set()
        if state:
            self._restore(state)

    # ------------------------------------------------------------------ queries
    def device(self, device_id: str) -> DeviceLedger | None:
        """The device's ledger, or None if it has none."""
        return self._devices.get(device_id)

    def open_device(self, device_id: str) -> DeviceLedger:
        """The device's ledger, created with a fresh random lineage (header unsaved) if missing."""
        dev = self._devices.get(device_id)
        if dev is None:
            dev = self._devices[device_id] = DeviceLedger(DeviceHeader(secrets.token_hex(16)))
            self._unsaved.add(device_id)
        return dev

    def stream(self, device_id: str, stream_key: str) -> StreamLedger | None:
        dev = self._devices.get(device_id)
        return None if dev is None else dev.streams.get(stream_key)

    def is_late(self, device_id: str, end_ns: int) -> bool:
        """True when a window ending at ``end_ns`` lags the device's newest capture time by more
        than retention (its span could meet charges already dropped from memory)."""
        dev = self._devices.get(device_id)
        return dev is not None and dev.max_end is not None and end_ns < dev.max_end - self._retention_ns

    def key_for(self, device_id: str, day: int, active: str) -> str:
        """The noise key id of the device's UTC ``day``: fixed the first time it is asked (the
        ``active`` one), recorded in the header (unsaved until written ahead)."""
        dev = self.open_device(device_id)
        kid = dev.header.keys.get(day)
        if kid is None:
            kid = dev.header.keys[day] = active
            for old in [d for d in dev.header.keys if d < day - 2]:  # replays reach back hours, not days
                del dev.header.keys[old]
            self._unsaved.add(device_id)
        return kid

    def take_unsaved_headers(self) -> set[str]:
        """Devices whose header must be made durable before their next release is published."""
        out, self._unsaved = self._unsaved, set()
        return out

    def headers(self, devices: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Plain-data headers of ``devices`` (those with a ledger)."""
        return {d: self._devices[d].header.to_mapping() for d in devices if d in self._devices}

    def guard(self, device_id: str, until_ns: int) -> None:
        """Suppress the device's windows ending at or before ``until_ns`` (its ledger was lost:
        they may have been released under the lost lineage already)."""
        dev = self.open_device(device_id)
        dev.guard_ns = max(until_ns, dev.guard_ns or until_ns)

    def guard_from_first(self, device_id: str, margin_ns: int) -> None:
        """Suppress the device's windows ending within ``margin_ns`` after the end of the first
        window it asks to release (its ledger was lost and what it published is unknown)."""
        self.open_device(device_id).guard_margin = int(margin_ns)

    def resolve_guard(self, dev: DeviceLedger, end_ns: int) -> None:
        """Turn a pending :meth:`guard_from_first` into a guard, at the first window's end."""
        if dev.guard_margin is not None:
            until = end_ns + dev.guard_margin
            dev.guard_ns = max(until, dev.guard_ns or until)
            dev.guard_margin = None

    def _w_sum(self, dev: DeviceLedger | None, start_ns: int, end_ns: int, cost: int) -> int:
        """Worst w-event sum over intervals meeting ``[start_ns, end_ns]`` if ``cost`` is added.

        Uses the device's incremental :class:`_WIndex` (``O(log n)`` plus the entries within the
        horizon); :meth:`_w_sum_scan` is the direct computation it equals.
        """
        assert self._horizon_ns is not None
        if dev is None or dev.n == 0:
            return cost
        return dev.windex.worst(start_ns, end_ns, self._horizon_ns) + cost

    def _w_sum_scan(self, dev: DeviceLedger | None, start_ns: int, end_ns: int, cost: int) -> int:
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

    def _period_range(self, start_ns: int, end_ns: int) -> range:
        """Indices of the periods a capture span ``[start_ns, end_ns)`` meets."""
        assert self._period_ns is not None
        return range(start_ns // self._period_ns, max(start_ns, end_ns - 1) // self._period_ns + 1)

    def assess(
        self, device_id: str, start_ns: int, end_ns: int, epsilon: float, delta: float = 0.0
    ) -> tuple[Shortfall | None, dict[str, Any]]:
        """Can the device pay ``epsilon`` (and ``delta``) for this capture span?

        Returns
        -------
        shortfall : Shortfall or None
            The first rule (lifetime, delta, period, w_event) that cannot pay, or None.
        budget : dict
            Per rule: ``epsilon`` (the budget), ``spent`` and ``remaining`` as they will be once
            the release is charged (as they are, when it cannot be paid). For operators (the
            ``budget`` command); never published.
        """
        cost = _cost_units(epsilon)
        dev = self._devices.get(device_id)
        short: Shortfall | None = None
        budget: dict[str, Any] = {}
        rules: list[tuple[str, int, int, dict[str, Any]]] = []
        if self._life_budget is not None:
            rules.append(("lifetime", self._life_budget, 0 if dev is None else dev.lifetime, {}))
        if self._period_budget is not None:
            periods = dev.periods if dev is not None else {}
            worst = max(self._period_range(start_ns, end_ns), key=lambda i: periods.get(i, 0))
            rules.append(("period", self._period_budget, periods.get(worst, 0), {"index": worst}))
        if self._w_budget is not None:
            rules.append(("w_event", self._w_budget, self._w_sum(dev, start_ns, end_ns, 0), {}))
        if delta > 0.0 and (dev.delta if dev is not None else 0.0) + delta > self._delta_cap * (1.0 + 1e-12):
            return Shortfall("delta", 0.0, 0.0), budget
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

    def shortfall(self, device_id: str, start_ns: int, end_ns: int, epsilon: float, delta: float = 0.0) -> Shortfall | None:
        """The first rule that cannot pay ``epsilon`` for this capture span, or None."""
        return self.assess(device_id, start_ns, end_ns, epsilon, delta)[0]

    def spent(self, device_id: str) -> dict[str, Any]:
        """The device's spending per rule, for operators: lifetime, delta, the latest periods."""
        dev = self._devices.get(device_id)
        if dev is None:
            return {}
        out: dict[str, Any] = {"lifetime_epsilon": to_epsilon(dev.lifetime), "delta": dev.delta}
        if self._period_ns is not None:
            out["periods"] = {str(i): to_epsilon(v) for i, v in sorted(dev.periods.items())}
        return out

    def devices(self) -> list[str]:
        """Device ids with a ledger."""
        return list(self._devices)

    # ------------------------------------------------------------------ updates
    def _stream(self, dev: DeviceLedger, stream_key: str) -> StreamLedger:
        st = dev.streams.get(stream_key)
        if st is None:
            st = dev.streams[stream_key] = StreamLedger()
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
        key_id: str,
        digest: str,
    ) -> None:
        """Record a release (call only after :meth:`shortfall` returned None)."""
        cost = _cost_units(epsilon)
        dev = self.open_device(device_id)
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
        dev.max_span = max(dev.max_span, end_ns - start_ns)
        if self._horizon_ns is not None:
            dev.windex.add(int(start_ns), int(end_ns), cost, self._horizon_ns)
        if self._period_ns is not None:
            for idx in self._period_range(start_ns, end_ns):
                dev.periods[idx] = dev.periods.get(idx, 0) + cost
        dev.lifetime += cost
        dev.delta += delta
        self._remember(dev, stream_key, window_index, end_ns, Released(cost, key_id, digest, end_ns))

    def record_suppression(self, device_id: str, stream_key: str, window_index: int, end_ns: int, reason: str) -> None:
        """Remember a suppressed window so that its replay is suppressed identically."""
        dev = self.open_device(device_id)
        self._remember(dev, stream_key, window_index, end_ns, Suppressed(reason, end_ns))

    def _cutoff(self, dev: DeviceLedger) -> int:
        assert dev.max_end is not None
        return dev.max_end - self._retention_ns - (self._horizon_ns or 0) - dev.max_span

    def _remember(self, dev: DeviceLedger, stream_key: str, window_index: int, end_ns: int, outcome: Outcome) -> None:
        st = self._stream(dev, stream_key)
        st.last = max(st.last, window_index)
        st.recent[window_index] = outcome
        if dev.max_end is None or end_ns > dev.max_end:
            dev.max_end = end_ns
        if len(st.recent) > _MAX_RECENT:
            cutoff = self._cutoff(dev)
            st.recent = {k: v for k, v in st.recent.items() if v.end_ns >= cutoff}
            while len(st.recent) > _MAX_RECENT:
                del st.recent[min(st.recent)]

    def _prune(self, dev: DeviceLedger) -> None:
        if dev.max_end is None:
            return
        cutoff = self._cutoff(dev)
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
            st.recent = {w: o for w, o in st.recent.items() if o.end_ns >= cutoff}

    # ------------------------------------------------------------------ state
    def state(self, devices_only: Iterable[str] | None = None) -> dict[str, Any]:
        """Plain JSON-able ledger; ``Accountant(config, state)`` restores it.

        ``devices_only``: just these devices (those absent are skipped), e.g. the ones that
        changed since the last checkpoint. Holds no release id, pseudonym or released value: a
        replay is recognized by a digest keyed with the device's noise key.
        """
        devices: dict[str, Any] = {}
        chosen = (
            self._devices.items() if devices_only is None
            else ((d, self._devices[d]) for d in devices_only if d in self._devices)
        )
        for device_id, dev in chosen:
            self._prune(dev)
            devices[device_id] = {
                "header": dev.header.to_mapping(),
                "entries": [
                    [int(a), int(b), int(c)]
                    for a, b, c in zip(dev.starts[: dev.n], dev.ends[: dev.n], dev.costs[: dev.n], strict=True)
                ],
                "max_end_ns": dev.max_end,
                "max_span_ns": dev.max_span,
                "periods": {str(k): v for k, v in dev.periods.items()},
                "lifetime_units": dev.lifetime,
                "delta": dev.delta,
                "guard_ns": dev.guard_ns,
                "guard_margin_ns": dev.guard_margin,
                "streams": {
                    k: {"last": st.last, "recent": {str(w): _outcome_list(o) for w, o in st.recent.items()}}
                    for k, st in dev.streams.items()
                },
            }
        return {"format": LEDGER_FORMAT, "units_per_epsilon": UNITS_PER_EPSILON, "devices": devices}

    def _restore(self, state: dict[str, Any]) -> None:
        if state.get("format") != LEDGER_FORMAT or state.get("units_per_epsilon") != UNITS_PER_EPSILON:
            raise PrivacyError(f"ledger state has format {state.get('format')!r}, expected {LEDGER_FORMAT!r}")
        try:
            for device_id, d in state["devices"].items():
                dev = self._devices[device_id] = DeviceLedger(DeviceHeader.from_mapping(d["header"]))
                entries = np.asarray(d["entries"], dtype=np.int64).reshape(-1, 3)
                size = max(64, 2 * len(entries))
                dev.starts, dev.ends, dev.costs = (np.zeros(size, dtype=np.int64) for _ in range(3))
                dev.n = len(entries)
                dev.starts[: dev.n], dev.ends[: dev.n], dev.costs[: dev.n] = entries[:, 0], entries[:, 1], entries[:, 2]
                if self._horizon_ns is not None:
                    for a, b, c in entries.tolist():
                        dev.windex.add(a, b, c, self._horizon_ns)
                dev.max_end = d["max_end_ns"]
                dev.max_span = int(d["max_span_ns"])
                dev.periods = {int(k): int(v) for k, v in d["periods"].items()}
                dev.lifetime = int(d["lifetime_units"])
                dev.delta = float(d["delta"])
                dev.guard_ns = d["guard_ns"]
                dev.guard_margin = d.get("guard_margin_ns")
                for key, sd in d["streams"].items():
                    st = self._stream(dev, key)
                    st.last = int(sd["last"])
                    st.recent = {int(w): _outcome_from(o) for w, o in sd["recent"].items()}
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise PrivacyError(f"ledger state is malformed: {type(exc).__name__}: {exc}") from None

    def set_header(self, device_id: str, header: dict[str, Any]) -> None:
        """Install a header written ahead (it is newer than the ledger's own copy, or equal)."""
        try:
            h = DeviceHeader.from_mapping(header)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PrivacyError(f"device header is malformed: {type(exc).__name__}: {exc}") from None
        dev = self._devices.get(device_id)
        if dev is None:
            self._devices[device_id] = DeviceLedger(h)
        else:
            h.keys = {**dev.header.keys, **h.keys} if h.lineage == dev.header.lineage else h.keys
            dev.header = h


LEDGER_FORMAT = "biopriv-ledger/2"


def _outcome_list(o: Outcome) -> list[Any]:
    if isinstance(o, Released):
        return ["r", o.cost, o.key_id, o.digest, o.end_ns]
    return ["s", o.reason, o.end_ns]


def _outcome_from(data: list[Any]) -> Outcome:
    if data[0] == "r":
        return Released(int(data[1]), str(data[2]), str(data[3]), int(data[4]))
    if data[0] == "s":
        return Suppressed(str(data[1]), int(data[2]))
    raise ValueError(f"unknown outcome kind {data[0]!r}")
