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

:func:`write_aggregates` and :func:`read_aggregates` keep these records in a file, as CSV
(``.csv``: the :data:`FIELDS` columns, the period and interval flattened) or as JSON lines.
"""

from __future__ import annotations

import csv
import functools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, PrivacyError
from pipeline.privacy.estimators import BitStats, ValueStats, least_variance, present_mean

__all__ = ["AGGREGATE_SCHEMA_VERSION", "FIELDS", "Aggregator", "GroupKey", "check_record", "read_aggregates", "write_aggregates"]

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

    def __init__(self, *, days: bool = True, features: Iterable[str] | None = None) -> None:
        self.days = days
        #: estimate only these features (None: all)
        self.features = None if features is None else frozenset(features)
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
            if self.features is not None and feature not in self.features:
                continue
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


#: CSV columns of an aggregates file, in order.
FIELDS = ("feature_set", "feature", "period_start", "period_seconds", "estimate", "std_error", "ci95_low",
          "ci95_high", "reports", "present_share", "mechanism", "epsilon", "scheduling")


def _is_csv(path: Path) -> bool:
    return path.suffix.lower() == ".csv"


def write_aggregates(path: Path, estimates: list[dict[str, Any]]) -> None:
    """Write aggregate records as CSV (``.csv``) or JSON lines (any other name)."""
    with open(path, "w", newline="") as fh:
        if _is_csv(path):
            w = csv.writer(fh)
            w.writerow(FIELDS)
            for e in estimates:
                w.writerow([e["feature_set"], e["feature"], e["period"]["start"], e["period"]["seconds"], e["estimate"],
                            e["std_error"], e["ci95"][0], e["ci95"][1], e["reports"], e["present_share"],
                            e["mechanism"], e["epsilon"], e["scheduling"]])
        else:
            for e in estimates:
                fh.write(json.dumps(e) + "\n")


def _optional(cell: str, kind: type) -> Any:
    return None if cell in ("", "None") else kind(cell)


def _from_row(row: dict[str, str]) -> dict[str, Any]:
    return {
        "v": AGGREGATE_SCHEMA_VERSION,
        "feature_set": row["feature_set"],
        "feature": row["feature"],
        "period": {"start": row["period_start"], "seconds": float(row["period_seconds"])},
        "estimate": float(row["estimate"]),
        "std_error": float(row["std_error"]),
        "ci95": [float(row["ci95_low"]), float(row["ci95_high"])],
        "reports": int(float(row["reports"])),
        "present_share": _optional(row["present_share"], float),
        "mechanism": _optional(row["mechanism"], str),
        "epsilon": _optional(row["epsilon"], float),
        "scheduling": _optional(row["scheduling"], str),
    }


def check_record(doc: Any, where: str) -> dict[str, Any]:
    """``doc`` if it is an aggregate record of schema ``v`` 1 (the fields a reader needs), else ConfigError."""
    try:
        ok = (isinstance(doc, dict) and doc.get("v") == AGGREGATE_SCHEMA_VERSION
              and all(isinstance(doc[k], str) for k in ("feature_set", "feature"))
              and isinstance(doc["period"]["start"], str) and len(doc["ci95"]) == 2
              and all(isinstance(doc[k], (int, float)) for k in ("estimate", "std_error", "reports")))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise ConfigError(f"{where}: not an aggregate record of schema v {AGGREGATE_SCHEMA_VERSION} "
                          f"(see docs/analysis.md): {str(doc)[:120]}")
    return doc


def read_aggregates(path: Path) -> list[dict[str, Any]]:
    """Aggregate records from a file :func:`write_aggregates` wrote (``biopriv aggregate --out``).

    Raises ConfigError (naming the file, and the line for a malformed one) when the file is
    missing or unreadable or a line is not an aggregate record.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read aggregates file {path}: {exc.strerror or exc}") from None
    out: list[dict[str, Any]] = []
    if _is_csv(path):
        reader = csv.DictReader(text.splitlines())
        missing = [f for f in FIELDS if f not in (reader.fieldnames or ())]
        if missing:
            raise ConfigError(f"{path}: not an aggregates CSV: missing column(s) {', '.join(missing)}")
        for i, row in enumerate(reader, start=2):
            try:
                out.append(_from_row(row))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{path}:{i}: not an aggregate row: {exc}") from None
        return out
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            raise ConfigError(f"{path}:{i}: not a JSON line") from None
        out.append(check_record(doc, f"{path}:{i}"))
    return out
