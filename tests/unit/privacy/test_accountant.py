"""Accountant: exact w-event sums with overlapping windows, periods, lifetime, state."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.privacy import PeriodRule, PrivacyConfig, WEventRule
from pipeline.privacy.accountant import Accountant, Suppressed, to_units

SEC = 1_000_000_000


def _config(**kw: object) -> PrivacyConfig:
    base: dict[str, object] = {"epsilon": 0.5, "w_event": WEventRule(2.0, 3.0), "retention_s": 1000.0}
    base.update(kw)
    return PrivacyConfig(**base)  # type: ignore[arg-type]


def _charge(acc: Accountant, w: int, start: int, end: int, eps: float, stream: str = "s") -> None:
    acc.charge("d", stream, w, start, end, eps, 0.0, "n1", "x")


def test_overlapping_windows_are_each_charged() -> None:
    """hop 1 s, length 4 s, horizon 3 s, 0.5 per window: a 3-s interval meets 7 windows at most."""
    acc = Accountant(_config())
    released = []
    for w in range(20):
        start, end = w * SEC, w * SEC + 4 * SEC
        if acc.shortfall("d", start, end, 0.5) is None:
            _charge(acc, w, start, end, 0.5)
            released.append(w)
    assert released == [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19]


def _worst(entries: list[tuple[int, int, int]], horizon: int) -> int:
    """Brute force: max over intervals [a, a + T] (a at every end and start - T) of sum of costs."""
    best = 0
    points = {e for _, e, _ in entries} | {s - horizon for s, _, _ in entries}
    for a in points:
        best = max(best, sum(c for s, e, c in entries if e >= a and s <= a + horizon))
    return best


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.integers(0, 2), st.integers(0, 40), st.integers(1, 8), st.sampled_from([0.1, 0.25, 0.3, 0.5, 0.7])
        ),
        min_size=1,
        max_size=40,
    ),
    horizon=st.integers(1, 6),
)
def test_w_event_sum_never_exceeds_budget_and_suppression_is_exact(
    ops: list[tuple[int, int, int, float]], horizon: int
) -> None:
    budget = 1.5
    acc = Accountant(_config(w_event=WEventRule(budget, float(horizon))))
    entries: list[tuple[int, int, int]] = []
    for i, (stream, start_s, length, eps) in enumerate(ops):
        start, end = start_s * SEC // 2, start_s * SEC // 2 + length * SEC // 2
        cost = to_units(eps, round_up=True)
        would = _worst([*entries, (start, end, cost)], horizon * SEC)
        short = acc.shortfall("d", start, end, eps)
        assert (short is not None) == (would > to_units(budget, round_up=False)), "suppressed exactly when short"
        if short is None:
            _charge(acc, i, start, end, eps, stream=str(stream))
            entries.append((start, end, cost))
        assert _worst(entries, horizon * SEC) <= to_units(budget, round_up=False)


def test_period_budget_renews_and_lifetime_caps() -> None:
    acc = Accountant(_config(w_event=None, period=PeriodRule(1.0, 10.0), lifetime_epsilon=2.5))
    out = []
    for w in range(30):
        start = w * SEC
        short = acc.shortfall("d", start, start + SEC, 0.5)
        out.append(None if short is None else short.rule)
        if short is None:
            _charge(acc, w, start, start + SEC, 0.5)
    # spans [w, w + 1) s lie in periods [0,10), [10,20), [20,30): 2 releases each, lifetime 5 releases
    assert [i for i, r in enumerate(out) if r is None] == [0, 1, 10, 11, 20]
    assert out[2] == "period" and out[21] == "lifetime"
    assert acc.assess("d", 40 * SEC, 41 * SEC, 0.0)[1]["lifetime"] == {"epsilon": 2.5, "spent": 2.5, "remaining": 0.0}


def test_accounting_is_exact_for_decimal_epsilons() -> None:
    acc = Accountant(_config(w_event=WEventRule(1.0, 100.0)))
    for w in range(10):
        assert acc.shortfall("d", 0, SEC, 0.1) is None
        _charge(acc, w, 0, SEC, 0.1)
    short = acc.shortfall("d", 0, SEC, 0.1)
    assert short is not None and short.rule == "w_event" and short.remaining == 0.0


def test_state_round_trip_preserves_decisions() -> None:
    cfg = _config(period=PeriodRule(3.0, 3600.0), lifetime_epsilon=10.0)
    acc = Accountant(cfg)
    for w in range(3):
        _charge(acc, w, w * SEC, w * SEC + 4 * SEC, 0.5)
    acc.record_suppression("d", "s", 3, 7 * SEC, "budget_exhausted")
    state = acc.state()
    restored = Accountant(cfg, state)
    assert restored.state() == state
    for start in (0, 2 * SEC, 10 * SEC, 20 * SEC):
        assert restored.assess("d", start, start + 4 * SEC, 0.5) == acc.assess("d", start, start + 4 * SEC, 0.5)
    assert restored.stream("d", "s").recent[3] == Suppressed("budget_exhausted", 7 * SEC)  # type: ignore[union-attr]
    assert restored.device("d").header == acc.device("d").header  # type: ignore[union-attr]


def test_a_span_over_a_period_boundary_is_charged_to_every_period_it_meets() -> None:
    acc = Accountant(_config(w_event=None, period=PeriodRule(1.0, 10.0)))
    _charge(acc, 0, 8 * SEC, 12 * SEC, 0.75)  # meets [0, 10) and [10, 20)
    assert acc.shortfall("d", 2 * SEC, 4 * SEC, 0.5).rule == "period"  # type: ignore[union-attr]
    assert acc.shortfall("d", 14 * SEC, 16 * SEC, 0.5).rule == "period"  # type: ignore[union-attr]
    assert acc.shortfall("d", 20 * SEC, 22 * SEC, 0.5) is None
    _charge(acc, 1, 19 * SEC, 20 * SEC, 0.25)  # ends exactly at 20 s (exclusive): period [10, 20) only
    assert acc.shortfall("d", 20 * SEC, 22 * SEC, 1.0) is None


def test_delta_is_capped_over_the_lifetime() -> None:
    acc = Accountant(_config(w_event=None, delta=1e-7, n_devices=10, delta_cap=3e-7))
    for w in range(3):
        assert acc.shortfall("d", w * SEC, (w + 1) * SEC, 0.1, 1e-7) is None
        acc.charge("d", "s", w, w * SEC, (w + 1) * SEC, 0.1, 1e-7, "n1", "x")
    assert acc.shortfall("d", 5 * SEC, 6 * SEC, 0.1, 1e-7).rule == "delta"  # type: ignore[union-attr]
    assert acc.shortfall("d", 5 * SEC, 6 * SEC, 0.1, 0.0) is None  # pure-epsilon releases still pay


def test_memory_is_bounded_and_late_releases_are_flagged() -> None:
    acc = Accountant(_config(retention_s=10.0, w_event=WEventRule(9.0, 2.0)))
    for w in range(5000):
        _charge(acc, w, w * SEC, w * SEC + 2 * SEC, 0.1)
    dev = acc._devices["d"]
    assert dev.n <= 64 and dev.starts.size <= 128
    assert len(acc.stream("d", "s").recent) <= 4096  # type: ignore[union-attr]
    assert acc.is_late("d", 4980 * SEC)
    assert not acc.is_late("d", 4995 * SEC)
