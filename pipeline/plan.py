"""The planner: how precise a study's population estimates will be, before anyone is recruited.

For each feature of a study, :func:`predict` gives the 95 % half-width of the population mean's
error per report period and per UTC day for a cohort of ``devices``: the 95 % quantile of
``|estimate - truth|``, the half-width a 95 % interval centred on the estimate needs (1.96 sd
when the error is normal). It is computed by a seeded Monte Carlo of the aggregator's own
estimator under the study's mechanisms (:func:`error_quantile`): per simulated day, the number
of reports that carry the feature's value and its presence bit (scheduling, reports per day,
k-of-d sampling), the sum of the released values drawn from the mechanism's exact output
distribution (:data:`EXACT_SUM`) at the expected true value (``expected``; default the midpoint of the bounds, the
worst case for Duchi and Piecewise; optionally with a ``spread`` across devices), the presence
bits' count of ones (a share ``present`` of the devices with a value, default all; the others
release the fallback),
then :func:`~pipeline.privacy.estimators.debiased_share` and
:func:`~pipeline.privacy.estimators.present_point`, the functions :class:`~pipeline.aggregate.Aggregator`
uses. Noise draws only: no feature values, so a study takes well under a second.

Where the share of devices with a value is well estimated (``share_sd_*`` small) this is the
delta method's ``1.96 sqrt(var / reports)`` (:func:`delta_half_width`, kept in each row as
``delta_half_width_*``); where it is not, the estimate is a ratio with a noisy denominator and
its error has heavy tails, which the Monte Carlo follows. The quantile is conditional on an
estimate existing (the aggregator gives none while fewer than 2 values arrived or the estimated
share is not positive); ``estimated_share_*`` is the predicted share of days with an estimate.
:func:`devices_for` inverts the day half-width by bisection.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np

from pipeline.attacks import likelihood
from pipeline.privacy import mechanisms as mech
from pipeline.privacy.estimators import debiased_share, mechanism_variance, present_point
from pipeline.study import Study

__all__ = ["MC_RUNS", "USEFUL_SHARE", "delta_half_width", "devices_for", "error_quantile", "predict", "too_wide_note"]

Z95 = 1.959963984540054
#: An interval is useful when its half-width is at most this share of the feature's bounds' range.
USEFUL_SHARE = 0.05
#: Simulated days per prediction: the 95 % quantile's relative sampling error is about 0.5 % for
#: normal errors (sd ``sqrt(0.05 * 0.95 / R) / (2 phi(1.96) 1.96)``) and 1-2.5 % where the share
#: is poorly estimated and the quantile lies in a thin heavy tail near the clipped estimate's atom at
#: a bound (measured over 5 seeds, ``benchmarks/results/utility.md``); 4,000 days left 3-4 % there.
#: About 30 ms per feature and period.
MC_RUNS = 40_000
#: The Monte Carlo's seed: a prediction is a deterministic function of the study.
MC_SEED = 20261202


def _per_report(study: Study, set_name: str, expected: dict[str, float],
                spread: dict[str, float] | None = None, present: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Per feature of the set: what one report contributes (variance of its value and presence
    bit, noise descriptors), how reports carry the feature (k-of-d sampling) and the share of
    devices with a value (``present``, default 1)."""
    from pipeline.privacy.vector import ReleasePlan

    s = study.sets[set_name]
    cfg = dataclasses.replace(study.privacy_config(), epsilon=s.epsilon_per_report)
    plan = ReleasePlan(set_name, s.specs, cfg)
    desc = plan.describe(plan.names)
    k, d = min(plan.k, plan.d), plan.d
    share = 1.0 if plan.k >= plan.d else plan.k / plan.d
    out = []
    for f in s.features:
        n, b = desc[f.name], desc[f"{f.name}.present"]
        c = (f.spec.lower + f.spec.upper) / 2.0
        x = min(max(expected.get(f.name, c), f.spec.lower), f.spec.upper)
        pi = _share_present(f.name, (present or {}).get(f.name, 1.0))

        def var_m(at: float, n: dict[str, Any] = n) -> float:
            return float(mechanism_variance(n["mechanism"], n["epsilon"], n["lower"], n["upper"], at, n["grid_steps"],
                                            n.get("sigma_steps")))

        # the noise of a released value: the device's (share pi of the reports) or the fallback c
        var_v = pi * var_m(x) + (1.0 - pi) * var_m(c)
        p, q = (float(a) for a in mech.grr_probs(b["epsilon"], 2))
        var_bit = (pi * p * (1 - p) + (1.0 - pi) * q * (1 - q)) / (p - q) ** 2  # one bit's, debiased
        both = 1.0 if k >= d else k * (k - 1) / (d * (d - 1))  # a report carries the value and its bit
        out.append({"feature": f.name, "var_value": var_v, "var_bit": var_bit, "fallback_gap": x - c, "present": pi,
                    "share": share, "both": both, "mechanism": n["mechanism"], "epsilon": n["epsilon"],
                    "noise": n, "bit_epsilon": float(b["epsilon"]), "x": x, "fallback": c,
                    "spread": abs(float((spread or {}).get(f.name, 0.0))),
                    "bounds": (float(f.spec.lower), float(f.spec.upper))})
    return out


def delta_half_width(row: dict[str, Any], reports: float) -> float:
    """The delta method's 95 % half-width ``1.96 sqrt(var / n)`` (``n`` reports carrying the feature)."""
    n = reports * row["share"]
    if n < 2:
        return math.inf
    return Z95 * math.sqrt(_delta_var(row) / n)


def _delta_var(row: dict[str, Any]) -> float:
    """One report's contribution to the variance of ``mu = (v - (1 - p) c) / p`` (delta method):
    ``(var_v + (x - c)^2 (var_p + 2 p (1 - p) (s - both) / s)) / p^2``; the last term because
    the reports carrying the value and those carrying the bit hold different shares of devices
    with a value (k-of-d sampling: a share ``s`` of reports carries each, ``both`` both)."""
    pi, s = row["present"], row["share"]
    mix = 2.0 * pi * (1.0 - pi) * (s - row["both"]) / s
    return (row["var_value"] + row["fallback_gap"] ** 2 * (row["var_bit"] + mix)) / pi**2


def _share_present(feature: str, share: float) -> float:
    if not 0.0 < share <= 1.0:
        raise ValueError(f"the share of devices with a value of {feature} must be in (0, 1], got {share:g}")
    return float(share)


@functools.lru_cache(maxsize=256)
def _output_pmf(noise_items: tuple[tuple[str, Any], ...], x: float) -> tuple[np.ndarray, np.ndarray]:
    """(released values, their probabilities) of one release of true value ``x``: the exact
    output distribution (:func:`pipeline.attacks.likelihood`) over the mechanism's output grid."""
    noise = dict(noise_items)
    impl = mech.get(noise["mechanism"])
    eps, lo, hi, g = float(noise["epsilon"]), float(noise["lower"]), float(noise["upper"]), int(noise["grid_steps"])
    offset, step = impl.output_grid(eps, lo, hi, g)
    last = impl.output_range(eps, lo, hi, g)[1]
    values = offset + step * np.arange(int(round((last - offset) / step)) + 1)
    probs = np.array([float(likelihood(noise, float(v), np.array([x]))[0]) for v in values])
    return values, probs / probs.sum()


#: Up to this many values in a day, their sum is drawn value by value; beyond, from the normal
#: distribution with the release's exact mean and variance (the sum of that many bounded iid
#: values; Duchi's two outputs are always drawn exactly, as a binomial count).
EXACT_SUM = 256


def _value_sums(rng: np.random.Generator, row: dict[str, Any], n_v: np.ndarray, x: float) -> np.ndarray:
    """Sum of ``n_v[i]`` iid released values of true value ``x``, per simulated day ``i``."""
    values, probs = _output_pmf(tuple(sorted(row["noise"].items())), x)
    if values.size == 2:  # Duchi: the count of high outputs is binomial
        high = rng.binomial(n_v, probs[1])
        return high * values[1] + (n_v - high) * values[0]
    sums = np.empty(n_v.size)
    small = n_v <= EXACT_SUM
    if small.any():
        counts = n_v[small]
        draws = values[np.minimum(np.searchsorted(np.cumsum(probs), rng.random(int(counts.sum())), side="right"),
                                  values.size - 1)]
        sums[small] = np.bincount(np.repeat(np.arange(counts.size), counts), weights=draws, minlength=counts.size)
    if (~small).any():
        mean = float(probs @ values)
        var = float(probs @ (values - mean) ** 2)
        big = n_v[~small]
        sums[~small] = big * mean + np.sqrt(big * var) * rng.standard_normal(big.size)
    return sums


def error_quantile(row: dict[str, Any], reports: Any, *, runs: int = MC_RUNS, seed: int = MC_SEED,
                   quantile: float = 0.95) -> tuple[float, float]:
    """``(q, estimated)``: the ``quantile`` of ``|estimate - x|`` over ``runs`` simulated days on
    which the aggregator has an estimate, and the share of days it has one.

    ``reports`` is the number of reports in the period (an int), or an array of one count per
    simulated day. Each day: the reports carrying the value and the bit (multinomial over
    both / value only / bit only / neither under k-of-d sampling), the sum of the released values
    (draws from the mechanism's exact output distribution at ``x``, the devices' values being iid; beyond :data:`EXACT_SUM` values of a mechanism with more than two outputs,
    the normal law with the release's exact mean and variance; the devices without a value, a
    share ``1 - present`` of the cohort, release the fallback), the bits' ones (binomial), then the
    aggregator's :func:`debiased_share` and :func:`present_point` (clipped to the bounds). With a
    ``spread`` in the row, half the devices are at ``x - spread`` and half at ``x + spread`` and
    the truth is their mean: the mechanism's variance averaged over a population of that standard
    deviation (Piecewise's variance grows with the distance from the midpoint, Duchi's falls), and
    under k-of-d sampling the reports that carry the value are a random subset of the devices
    (hypergeometric), whose mean differs from the cohort's.
    """
    rng = np.random.default_rng(seed)
    total = np.broadcast_to(np.asarray(reports, dtype=np.int64), (runs,))
    s, both, pi = row["share"], row["both"], row["present"]
    # reports of devices with a value (share pi of the cohort's) and of devices without one
    pres = np.rint(pi * total).astype(np.int64) if pi < 1.0 else total
    if s >= 1.0:
        n_v = n_b = total
        pres_v = pres_b = pres
    else:  # k-of-d sampling: each report carries both, the value only, the bit only or neither
        cells = [both, s - both, s - both, 1.0 - 2.0 * s + both]
        c_p = rng.multinomial(pres, cells)
        c_a = rng.multinomial(total - pres, cells) if pi < 1.0 else np.zeros_like(c_p)
        pres_v, pres_b = c_p[:, 0] + c_p[:, 1], c_p[:, 0] + c_p[:, 2]
        n_v, n_b = pres_v + c_a[:, 0] + c_a[:, 1], pres_b + c_a[:, 0] + c_a[:, 2]
    x: float = row["x"]
    lo, hi = row["bounds"]
    if row["spread"] > 0.0:  # half the devices at x - spread, half at x + spread (within the bounds)
        xs = (max(x - row["spread"], lo), min(x + row["spread"], hi))
        half = pres // 2
        low = rng.hypergeometric(np.maximum(half, 0), pres - half, pres_v) if s < 1.0 else half
        sums = _value_sums(rng, row, low, xs[0]) + _value_sums(rng, row, pres_v - low, xs[1])
        truth = (half * xs[0] + (pres - half) * xs[1]) / np.maximum(pres, 1)
    else:
        sums, truth = _value_sums(rng, row, pres_v, x), np.full(n_v.shape, x)
    if pi < 1.0:  # the devices without a value release the fallback
        sums = sums + _value_sums(rng, row, n_v - pres_v, row["fallback"])
    p_keep = float(mech.grr_probs(row["bit_epsilon"], 2)[0])
    ones = rng.binomial(pres_b, p_keep)
    if pi < 1.0:
        ones = ones + rng.binomial(n_b - pres_b, 1.0 - p_keep)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = debiased_share(ones, np.maximum(n_b, 1), row["bit_epsilon"])
        est = present_point(sums / np.maximum(n_v, 1), share, row["fallback"], row["bounds"])
    ok = (n_v >= 2) & (n_b >= 1) & (share > 0.0) & (pres >= 1)
    if not ok.any():
        return math.inf, 0.0
    return float(np.quantile(np.abs(est[ok] - truth[ok]), quantile)), float(ok.mean())


def _share_sd(row: dict[str, Any], reports: float) -> float:
    """Standard deviation of the estimated share of devices with a value (its presence bits)."""
    n = reports * row["share"]
    pi = row["present"]  # the bits' noise, and which devices' reports carry them (k-of-d sampling)
    return math.sqrt((row["var_bit"] + pi * (1.0 - pi) * (1.0 - row["share"])) / n) if n >= 1 else math.inf


def _reports(study: Study, set_name: str, devices: int) -> tuple[float, float]:
    """Expected reports per period and per day from ``devices`` devices."""
    s = study.sets[set_name]
    per_day = devices * (s.reports_per_day if s.scheduling == "population" else s.periods_per_day)
    return per_day / s.periods_per_day, float(per_day)


def _period_reports(study: Study, set_name: str, devices: int, runs: int = MC_RUNS, seed: int = MC_SEED) -> Any:
    """Reports in one period, per simulated day: each report of the day falls in a period drawn
    uniformly under population scheduling (binomial); every device reports every period otherwise."""
    s = study.sets[set_name]
    per_period, per_day = _reports(study, set_name, devices)
    if s.scheduling != "population":
        return round(per_period)
    return np.random.default_rng(seed + 1).binomial(round(per_day), 1.0 / s.periods_per_day, size=runs)


def predict(study: Study, devices: int, expected: dict[str, float] | None = None,
            spread: dict[str, float] | None = None, *, present: dict[str, float] | None = None,
            seed: int = MC_SEED) -> list[dict[str, Any]]:
    """Predicted 95 % half-widths per feature (per period and per day) for ``devices`` devices
    whose values are at ``expected`` (per feature; default the midpoint), with standard deviation
    ``spread`` across devices (default 0), of which a share ``present`` have a value in a report
    (per feature, default 1: the others report the fallback and a presence bit of 0). ``seed``:
    the Monte Carlo's (another seed measures the prediction's own sampling error)."""
    rows = []
    for name, s in study.sets.items():
        per_period, per_day = _reports(study, name, devices)
        period_n = _period_reports(study, name, devices, seed=seed)
        for r in _per_report(study, name, expected or {}, spread, present):
            hw_period, est_period = error_quantile(r, period_n, seed=seed)
            hw_day, est_day = error_quantile(r, round(per_day), seed=seed)
            rows.append({
                "feature_set": name, "feature": r["feature"], "period_s": s.period_s,
                "reports_per_period": per_period, "reports_per_day": per_day,
                "half_width_period": hw_period, "half_width_day": hw_day,
                "estimated_share_period": est_period, "estimated_share_day": est_day,
                "delta_half_width_period": delta_half_width(r, per_period),
                "delta_half_width_day": delta_half_width(r, per_day),
                "share_sd_period": _share_sd(r, per_period), "share_sd_day": _share_sd(r, per_day),
                "mechanism": r["mechanism"], "epsilon": r["epsilon"],
            })
    return rows


def devices_for(study: Study, feature: str, half_width: float, *, per: str = "day",
                expected: dict[str, float] | None = None, spread: dict[str, float] | None = None,
                present: dict[str, float] | None = None) -> int:
    """Devices needed for a 95 % half-width of ``half_width`` on ``feature`` (per ``day`` or
    ``period``): the fewest devices whose predicted half-width (:func:`error_quantile`, the same
    seeded Monte Carlo as :func:`predict`) is at most ``half_width``, found by bisection (to
    0.5 % of the count)."""
    if per not in ("day", "period"):
        raise ValueError(f"per must be 'day' or 'period', got {per!r}")
    for name in study.sets:
        for r in _per_report(study, name, expected or {}, spread, present):
            if r["feature"] != feature:
                continue

            def hw(devices: int, r: dict[str, Any] = r, name: str = name) -> float:
                n = _period_reports(study, name, devices) if per == "period" else round(_reports(study, name, devices)[1])
                return error_quantile(r, n)[0]

            # the delta method's count as the first guess, then a bracket [lo, hi] with hw(hi) <= target
            per_device = _reports(study, name, 1)[1 if per == "day" else 0]
            var = _delta_var(r)
            guess = max(1, math.ceil((Z95 / half_width) ** 2 * var / r["share"] / per_device))
            lo, hi = max(1, guess // 2), guess
            while hw(hi) > half_width:
                lo, hi = hi, hi * 2
                if hi > 10**12:
                    raise ValueError(f"no cohort up to 10^12 devices reaches +-{half_width:g} on {feature}")
            while lo > 1 and hw(lo) <= half_width:
                lo, hi = max(1, lo // 2), lo
            while hi - lo > max(1, hi // 200):
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if hw(mid) <= half_width else (mid, hi)
            return hi
    raise KeyError(feature)


def too_wide_note(study: Study, feature: str, half_width: float, expected: float) -> str | None:
    """One plain sentence when a 95 % half-width is too wide to be useful (more than
    :data:`USEFUL_SHARE` of the feature's bounds' range): the devices a useful interval on the
    day's mean needs under ``study`` at the ``expected`` value. None when the interval is useful
    or the study does not release ``feature``."""
    spec = next((f.spec for s in study.sets.values() for f in s.features if f.name == feature), None)
    if spec is None:
        return None
    target = USEFUL_SHARE * (spec.upper - spec.lower)
    if not half_width > target:
        return None
    need = devices_for(study, feature, target, expected={feature: min(max(expected, spec.lower), spec.upper)})
    which = "the default study" if study.source == "built-in default" else f"the study {study.source}"
    return (f"too few releases for a useful interval: under {which} a +-{target:.3g} interval on the day's mean "
            f"needs about {need:,} devices (biopriv plan)")
