"""The planner's Monte Carlo against the aggregator's estimator, and the simulator's fast path
against the engine's path.

Statistical checks: a measured 95 % quantile of |error| from ``RUNS`` simulated days has a
distribution-free confidence interval from order statistics; the planner (its own Monte Carlo,
relative sd about 1.5 %) must fall inside the 99.9 % interval, and a prediction off by the
amount the checks are meant to catch (a factor 0.85, or the 90 % quantile) must fall outside it.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
from scipy import stats

from pipeline.errors import PrivacyError
from pipeline.evaluation import Simulator
from pipeline.plan import delta_half_width, devices_for, error_quantile, predict
from pipeline.privacy import KeyRing
from pipeline.privacy.estimators import BitStats, ValueStats, present_mean, present_point
from pipeline.study import from_mapping

RUNS = 3000


def _study(epsilon_per_day: float) -> object:
    return from_mapping({"budget": {"epsilon_per_day": epsilon_per_day, "lifetime_epsilon": 60.0},
                         "sets": {"hr": {"features": ["hr"], "period": "10min", "epsilon_per_day": epsilon_per_day}}},
                        f"hr at {epsilon_per_day}")


def _keys(seed: int) -> KeyRing:
    rng = np.random.default_rng(seed)
    return KeyRing({"n1": rng.bytes(32)}, {"p1": rng.bytes(32)}, "n1", "p1")


def _measured(study: object, devices: int, x: float, runs: int, seed: int, present: float = 1.0) -> np.ndarray:
    """|estimate - x| of the aggregator's estimator (fast path) over ``runs`` days of ``devices``
    devices all at ``x``, but for a share ``1 - present`` of them without a value (NaN on a day
    without an estimate)."""
    sim = Simulator(study, _keys(seed))  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    truth = np.full((devices, 1), x)
    truth[round(present * devices):] = np.nan
    out = np.full(runs, np.nan)
    for r in range(runs):
        got = sim.day_estimates_fast("hr", truth, rng).get("hr")
        if got is not None:
            out[r] = abs(got["estimate"] - x)
    return out


def _order_ci(a: np.ndarray, q: float, confidence: float) -> tuple[float, float]:
    a = np.sort(a)
    m = a.size
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    spread = z * math.sqrt(m * q * (1 - q))
    return float(a[int(math.floor(m * q - spread)) - 1]), float(a[int(math.ceil(m * q + spread)) - 1])


@pytest.mark.parametrize(("eps", "devices", "mechanism"), [
    (0.2, 100, "duchi"),       # share sd 0.7: heavy tails, many estimates clipped to the bounds
    (0.4, 300, "duchi"),       # share sd 0.25
    (8.0, 60, "piecewise"),    # values drawn one by one (<= EXACT_SUM per day)
    (8.0, 1500, "piecewise"),  # the sum from its exact mean and variance (normal)
])
def test_planner_quantile_matches_the_aggregators_error(eps: float, devices: int, mechanism: str) -> None:
    study = _study(eps)
    (row,) = predict(study, devices, {"hr": 75.0})  # type: ignore[arg-type]
    assert row["mechanism"] == mechanism
    err = _measured(study, devices, 75.0, RUNS, seed=int(eps * 10) + devices)
    ok = err[np.isfinite(err)]
    lo, hi = _order_ci(ok, 0.95, 0.999)
    assert lo <= row["half_width_day"] <= hi, (row["half_width_day"], lo, hi)
    assert abs(row["estimated_share_day"] - ok.size / RUNS) < 4 * math.sqrt(0.25 / RUNS) + 0.01
    # the check has the power to catch a planner 15 % low, or one that predicts the 90 % quantile
    assert not lo <= 0.85 * row["half_width_day"] <= hi
    (r,) = _rows(study, 75.0)
    if hi < max(75.0 - r["bounds"][0], r["bounds"][1] - 75.0):  # not pinned at a bound (clipped estimates)
        assert not lo <= error_quantile(r, devices, quantile=0.90)[0] <= hi


def test_planner_follows_devices_without_a_value() -> None:
    """Devices that were not worn release the fallback and a presence bit of 0: with 60 % of the
    cohort present the planner (``present``) matches the aggregator's error within the measured
    quantile's 99.9 % CI, and the planner that assumes every device present falls outside it."""
    study = _study(2.0)
    err = _measured(study, 2000, 75.0, RUNS, seed=11, present=0.6)
    lo, hi = _order_ci(err[np.isfinite(err)], 0.95, 0.999)
    (row,) = predict(study, 2000, {"hr": 75.0}, present={"hr": 0.6})  # type: ignore[arg-type]
    assert lo <= row["half_width_day"] <= hi, (row["half_width_day"], lo, hi)
    (everyone,) = predict(study, 2000, {"hr": 75.0})  # type: ignore[arg-type]
    assert not lo <= everyone["half_width_day"] <= hi, (everyone["half_width_day"], lo, hi)
    # where the share is well estimated the delta method agrees (Monte Carlo error 0.5 %)
    from pipeline.plan import _per_report

    (r,) = _per_report(study, "hr", {"hr": 75.0}, present={"hr": 0.6})  # type: ignore[arg-type]
    hw = error_quantile(r, 100_000)[0]
    assert abs(hw / delta_half_width(r, 100_000) - 1) < 0.03, (hw, delta_half_width(r, 100_000))
    with pytest.raises(ValueError, match="must be in"):
        predict(study, 100, present={"hr": 0.0})  # type: ignore[arg-type]


def _rows(study: object, x: float) -> list[dict]:
    from pipeline.plan import _per_report

    return _per_report(study, "hr", {"hr": x})  # type: ignore[arg-type]


def test_monte_carlo_is_the_delta_method_where_the_share_is_well_estimated() -> None:
    """At 20,000 devices (share sd 0.04) the quantile is 1.96 sd of the delta method: within the
    Monte Carlo's own error (1.5 % relative sd; 5 % is 3 sd). A wrong variance (a sum drawn from
    another mechanism's output, or the presence bits' variance dropped) moves it further."""
    study = _study(2.0)
    (r,) = _rows(study, 45.0)
    hw, share = error_quantile(r, 20_000)
    delta = delta_half_width(r, 20_000)
    assert share == 1.0 and abs(hw / delta - 1) < 0.05, (hw, delta)
    no_bits = math.sqrt(r["var_value"] / (20_000 * r["share"])) * 1.959963984540054
    assert abs(no_bits / delta - 1) > 0.05  # the bits' term matters at 45 on 40..180


def test_devices_for_inverts_predict() -> None:
    study = _study(2.0)
    for target in (30.0, 8.0):  # heavy-tailed (a few hundred devices) and delta regime
        n = devices_for(study, "hr", target, expected={"hr": 75.0})  # type: ignore[arg-type]
        (row,) = predict(study, n, {"hr": 75.0})  # type: ignore[arg-type]
        assert row["half_width_day"] <= target
        (fewer,) = predict(study, int(n * 0.97), {"hr": 75.0})  # type: ignore[arg-type]
        assert fewer["half_width_day"] > target, (n, fewer["half_width_day"], target)
    with pytest.raises(ValueError):
        devices_for(study, "hr", 1.0, per="week")  # type: ignore[arg-type]


def test_estimate_is_clipped_to_the_bounds() -> None:
    assert present_point(500.0, 0.1, 110.0, (40.0, 180.0)) == 180.0
    assert present_point(100.0, 0.5, 110.0, (40.0, 180.0)) == 90.0
    values, bits = ValueStats(), BitStats(0.1)
    for v in (170.0, 175.0, 172.0):
        values.add(v)
    for b in (1.0, 0.0, 0.0, 1.0):
        bits.add(b)
    est = present_mean(values, bits, 110.0, bounds=(40.0, 180.0))
    assert 40.0 <= est.value <= 180.0 and est.ci_low <= est.value <= est.ci_high
    # per-window releases carry no presence bit: the plain mean and its interval are clipped too
    wild = ValueStats()
    for v in (1900.0, -300.0, 1700.0):
        wild.add(v)
    plain = present_mean(wild, None, 110.0, bounds=(40.0, 180.0))
    assert (plain.value, plain.ci_high) == (180.0, 180.0) and 40.0 <= plain.ci_low < 180.0
    assert present_mean(wild, None, 110.0).value == pytest.approx(1100.0)  # no bounds: unclipped
    low = ValueStats()
    for v in (-900.0, -910.0, -905.0):
        low.add(v)
    with pytest.raises(PrivacyError, match="does not meet the bounds"):  # an interval [40, 40] would claim certainty
        present_mean(low, None, 110.0, bounds=(40.0, 180.0))


def test_fast_path_draws_what_the_engines_path_draws() -> None:
    """The day estimates of the fast path (generator words) and of the engine's path (each
    report's noise identity, records through the Aggregator) on the same cohort: two-sample
    Kolmogorov-Smirnov, p > 0.001 (a false failure once in 1,000 runs); the same test tells a
    fast path at another epsilon apart (power check)."""
    study, other = _study(1.0), _study(2.0)
    truth = np.random.default_rng(3).normal(70, 12, (300, 1))
    runs = 250
    slow, fast, off = [], [], []
    sims = {k: Simulator(s, _keys(7)) for k, s in (("a", study), ("b", other))}  # type: ignore[arg-type]
    rng = np.random.default_rng(11)
    for _ in range(runs):
        for got, sim, fn in ((slow, "a", "day_estimates"), (fast, "a", "day_estimates_fast"),
                             (off, "b", "day_estimates_fast")):
            e = getattr(sims[sim], fn)("hr", truth, rng).get("hr")
            got.append(e["estimate"] if e else math.nan)
    slow_a, fast_a, off_a = (np.array(x) for x in (slow, fast, off))
    assert stats.ks_2samp(slow_a[np.isfinite(slow_a)], fast_a[np.isfinite(fast_a)]).pvalue > 0.001
    assert stats.ks_2samp(slow_a[np.isfinite(slow_a)], off_a[np.isfinite(off_a)]).pvalue < 0.001


def test_spread_follows_the_mechanisms_variance_over_the_population() -> None:
    """A population spread over the bounds (half at 50, half at 170 on 30..220, Piecewise at 8
    epsilon, 1,500 devices) widens the error: Piecewise's variance grows away from the midpoint,
    and under 1-of-2 sampling the devices that carry the value are a random half of the cohort.
    The planner with that spread predicts the aggregator's error on such days (99.9 %
    order-statistic interval, as above); the planner without it falls outside."""
    study = _study(8.0)
    sim = Simulator(study, _keys(5))  # type: ignore[arg-type]
    rng = np.random.default_rng(5)
    truth = np.repeat([[50.0], [170.0]], 750, axis=0)
    err = np.array([abs(sim.day_estimates_fast("hr", truth, rng)["hr"]["estimate"] - 110.0) for _ in range(RUNS)])
    lo, hi = _order_ci(err, 0.95, 0.999)
    (with_spread,) = predict(study, 1500, {"hr": 110.0}, {"hr": 60.0})  # type: ignore[arg-type]
    (without,) = predict(study, 1500, {"hr": 110.0})  # type: ignore[arg-type]
    assert lo <= with_spread["half_width_day"] <= hi, (with_spread["half_width_day"], lo, hi)
    assert not lo <= without["half_width_day"] <= hi, (without["half_width_day"], lo, hi)


def test_plan_cli_takes_a_spread(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from pipeline.cli import main

    assert main(["plan", "--devices", "5000", "--json", "--expected", "hr=75", "--spread", "hr=40"]) == 0
    spread = {r["feature"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert main(["plan", "--devices", "5000", "--json", "--expected", "hr=75"]) == 0
    plain = {r["feature"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    # Duchi's variance falls away from the midpoint, but 1-of-2 sampling adds the spread's own term
    assert spread["hr"]["half_width_day"] != plain["hr"]["half_width_day"]
    assert spread["scl"]["half_width_day"] == plain["scl"]["half_width_day"]
    assert main(["plan", "--spread", "heart=2"]) == 2
    assert "unknown feature 'heart'" in capsys.readouterr().err


def test_plan_cli_takes_a_presence_share(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from pipeline.cli import main

    assert main(["plan", "--devices", "20000", "--json", "--expected", "hr=75", "--present", "hr=0.5"]) == 0
    half = {r["feature"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert main(["plan", "--devices", "20000", "--json", "--expected", "hr=75"]) == 0
    plain = {r["feature"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert half["hr"]["half_width_day"] > 1.3 * plain["hr"]["half_width_day"]  # half the values, and the bits' term
    assert half["scl"]["half_width_day"] == plain["scl"]["half_width_day"]
    assert main(["plan", "--present", "hr=0"]) == 2
    assert "must be in (0, 1]" in capsys.readouterr().err
