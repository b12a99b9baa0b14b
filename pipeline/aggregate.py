"""Population estimates from published releases: what an analyst computes, from the records alone.

:class:`Aggregator` takes release records (the JSON objects of the private topic, schema v2)
one at a time, drops duplicates by ``release_id`` (delivery is at-least-once), and keeps per group
the sufficient statistics of each numeric feature and of its presence bit. A group is a feature
in a period: the record's report period (``slot``), and the UTC day it falls in. Each group's
estimate is the mean over the devices with a value (:func:`~pipeline.privacy.estimators.present_mean`),
with its standard error and 95 % interval (Fieller's interval for the ratio, within the feature's
bounds); without presence bits (per-window releases) it is the plain mean of the released values.

The aggregator holds no state that the release topic does not: after a crash it is rebuilt by
reading the topic again, which is what ``biopriv aggregate`` does (``docs/analysis.md``).

Aggregate record (``<prefix>aggregates``, ``--out``), schema ``v`` 1::

    {"v": 1, "feature_set": "hr", "feature": "hr", "period": {"start": "...Z", "seconds": 600},
     "estimate": 71.2, "std_error": 3.1, "ci95": [65.1, 77.3], "reports": 140,
     "present_share": 0.97, "mechanism": "duchi", "epsilon": 0.2, "scheduling": "population"}
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.errors import PrivacyError
from pipeline.privacy.estimators import BitStats, ValueStats, least_variance, present_mean

__all__ = ["AGGREGATE_SCHEMA_VERSION", "Aggregator", "GroupKey"]

AGGREGATE_SCHEMA_VERSION = 1
DAY_S = 86_400

#: (feature set, feature, period start as published, period seconds)
GroupKey = tuple[str, str, str, float]


@dataclass
class _Group:
    values: ValueStats = field(default_factory=ValueStats)
    bits: BitStats | None = None
    noise: dict[str, Any] = field(default_factory=dict)
    scheduling: str | None = None


@functools.lru_cache(maxsize=4096)
def _day_start(stamp: str) -> str:
    t = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return datetime(t.year, t.month, t.day, tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Aggregator:
    """Estimates per feature and period from release records (see the module docstring)."""

    def __init__(self, *, days: bool = True) -> None:
        self.days = days
        self._seen: set[str] = set()
        self._groups: dict[GroupKey, _Group] = {}
        self.duplicates = 0
        self.rejected = 0
        self._floors: dict[str, float] = {}

    def _floor(self, noise: dict[str, Any]) -> float:
        key = repr(sorted(noise.items()))
        if key not in self._floors:
            self._floors[key] = least_variance(noise)
        return self._floors[key]

    def add(self, record: Any) -> set[GroupKey]:
        """Add one release record; returns the groups it changed (empty for a duplicate or a
        record that is not a v2 release)."""
        try:
            rid, fs, slot = record["release_id"], record["feature_set"], record["slot"]
            values, noise = record["values"], record["noise"]
            start, seconds = str(slot["start"]), float(slot["seconds"])
            if record.get("v") != 2 or not isinstance(values, dict):
                raise KeyError("v")
        except (KeyError, TypeError):
            self.rejected += 1
            return set()
        if rid in self._seen:
            self.duplicates += 1
            return set()
        self._seen.add(rid)
        periods = [(start, seconds)]
        if self.days and seconds < DAY_S:
            periods.append((_day_start(start), float(DAY_S)))
        scheduling = (record.get("design") or {}).get("scheduling")
        changed: set[GroupKey] = set()
        for name, value in values.items():
            base, _, suffix = name.rpartition(".")
            is_bit = suffix == "present" and base
            feature = base if is_bit else name
            n = noise.get(name, {})
            if not is_bit and "lower" not in n:
                continue  # binary or categorical feature of a per-window release: not a mean
            for p_start, p_seconds in periods:
                key = (fs, feature, p_start, p_seconds)
                g = self._groups.get(key)
                if g is None:
                    g = self._groups[key] = _Group(scheduling=scheduling)
                if is_bit:
                    if g.bits is None:
                        g.bits = BitStats(float(n.get("epsilon", math.nan)))
                    g.bits.add(float(value))
                else:
                    if g.noise != n:
                        g.values.floor = self._floor(n)
                    g.values.add(float(value))
                    g.noise = n
                changed.add(key)
        return changed

    @property
    def releases(self) -> int:
        """Distinct releases added."""
        return len(self._seen)

    def keys(self) -> list[GroupKey]:
        return sorted(self._groups)

    def estimate(self, key: GroupKey, confidence: float = 0.95) -> dict[str, Any] | None:
        """The group's aggregate record, or None while it has too few reports for an estimate."""
        g = self._groups[key]
        fs, feature, start, seconds = key
        if g.values.n < 2 or not g.noise:
            return None
        fallback = (g.noise["lower"] + g.noise["upper"]) / 2.0
        try:
            est = present_mean(g.values, g.bits, fallback, confidence=confidence,
                               bounds=(float(g.noise["lower"]), float(g.noise["upper"])))
            share = g.bits.share_and_variance()[0] if g.bits is not None else None
        except PrivacyError:
            return None
        return {
            "v": AGGREGATE_SCHEMA_VERSION,
            "feature_set": fs,
            "feature": feature,
            "period": {"start": start, "seconds": seconds},
            "estimate": est.value,
            "std_error": math.sqrt(est.variance),
            "ci95": [est.ci_low, est.ci_high],
            "reports": g.values.n,
            "present_share": share,
            "mechanism": g.noise.get("mechanism"),
            "epsilon": g.noise.get("epsilon"),
            "scheduling": g.scheduling,
        }

    def estimates(self, keys: set[GroupKey] | None = None) -> list[dict[str, Any]]:
        """Aggregate records of ``keys`` (all groups if None) that have an estimate, sorted."""
        chosen = self.keys() if keys is None else sorted(keys)
        return [e for e in (self.estimate(k) for k in chosen) if e is not None]
