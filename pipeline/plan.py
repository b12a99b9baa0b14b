"""The planner: how precise a study's population estimates will be, before anyone is recruited.

For each feature of a study, :func:`predict` gives the expected 95 % interval half-width of the
population mean per report period and per UTC day for a cohort of ``devices``, from the same
quantities the aggregator's intervals come from: the variance of one released value (the
mechanism's exact variance at the expected true value, ``expected``; default the midpoint of the
bounds, where Duchi's and Piecewise's variance is largest), the presence bit's variance (zero
term when the expected value is the fallback, i.e. the midpoint), and the number of reports that
carry the feature (scheduling, reports per day, 1-of-d sampling). :func:`devices_for` inverts it.

The prediction is the delta method's, valid while the share of devices with a value is itself
well estimated: each row gives that share's standard deviation (``share_sd_*``); above about 0.1
the estimate is a ratio with a noisy denominator, its error has heavy tails and exceeds the
prediction (``benchmarks/results/utility.md``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from pipeline.privacy import mechanisms as mech
from pipeline.privacy.estimators import mechanism_variance
from pipeline.study import Study

__all__ = ["USEFUL_SHARE", "devices_for", "predict", "too_wide_note"]

Z95 = 1.959963984540054
#: An interval is useful when its half-width is at most this share of the feature's bounds' range.
USEFUL_SHARE = 0.05


def _per_report(study: Study, set_name: str, expected: dict[str, float]) -> list[dict[str, Any]]:
    """Per feature of the set: variance of one report's contribution and the share of reports
    that carry the feature and its presence bit."""
    from pipeline.privacy.vector import ReleasePlan

    s = study.sets[set_name]
    cfg = dataclasses.replace(study.privacy_config(), epsilon=s.epsilon_per_report)
    plan = ReleasePlan(set_name, s.specs, cfg)
    desc = plan.describe(plan.names)
    share = 1.0 if plan.k >= plan.d else plan.k / plan.d
    out = []
    for f in s.features:
        n, b = desc[f.name], desc[f"{f.name}.present"]
        c = (f.spec.lower + f.spec.upper) / 2.0
        x = expected.get(f.name, c)
        var_v = float(mechanism_variance(n["mechanism"], n["epsilon"], n["lower"], n["upper"], x, n["grid_steps"],
                                         n.get("sigma_steps")))
        p, q = (float(a) for a in mech.grr_probs(b["epsilon"], 2))
        var_bit = p * (1 - p) / (p - q) ** 2  # one presence bit, every device present
        out.append({"feature": f.name, "var_value": var_v, "var_bit": var_bit, "fallback_gap": x - c,
                    "share": share, "mechanism": n["mechanism"], "epsilon": n["epsilon"]})
    return out


def _half_width(row: dict[str, Any], reports: float) -> float:
    n = reports * row["share"]
    if n < 2:
        return math.inf
    var = (row["var_value"] + row["fallback_gap"] ** 2 * row["var_bit"]) / n
    return Z95 * math.sqrt(var)


def _share_sd(row: dict[str, Any], reports: float) -> float:
    """Standard deviation of the estimated share of devices with a value (its presence bits)."""
    n = reports * row["share"]
    return math.sqrt(row["var_bit"] / n) if n >= 1 else math.inf


def _reports(study: Study, set_name: str, devices: int) -> tuple[float, float]:
    """Expected reports per period and per day from ``devices`` devices."""
    s = study.sets[set_name]
    per_day = devices * (s.reports_per_day if s.scheduling == "population" else s.periods_per_day)
    return per_day / s.periods_per_day, float(per_day)


def predict(study: Study, devices: int, expected: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Predicted 95 % half-widths per feature (per period and per day) for ``devices`` devices."""
    rows = []
    for name, s in study.sets.items():
        per_period, per_day = _reports(study, name, devices)
        for r in _per_report(study, name, expected or {}):
            rows.append({
                "feature_set": name, "feature": r["feature"], "period_s": s.period_s,
                "reports_per_period": per_period, "reports_per_day": per_day,
                "half_width_period": _half_width(r, per_period), "half_width_day": _half_width(r, per_day),
                "share_sd_period": _share_sd(r, per_period), "share_sd_day": _share_sd(r, per_day),
                "mechanism": r["mechanism"], "epsilon": r["epsilon"],
            })
    return rows


def devices_for(study: Study, feature: str, half_width: float, *, per: str = "day",
                expected: dict[str, float] | None = None) -> int:
    """Devices needed for a 95 % half-width of ``half_width`` on ``feature`` (per ``day`` or ``period``)."""
    for name in study.sets:
        for r in _per_report(study, name, expected or {}):
            if r["feature"] != feature:
                continue
            per_period, per_day = _reports(study, name, 1)
            reports_per_device = per_day if per == "day" else per_period
            var = r["var_value"] + r["fallback_gap"] ** 2 * r["var_bit"]
            n = (Z95 / half_width) ** 2 * var / r["share"]
            return max(1, math.ceil(n / reports_per_device))
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
