"""Simulated study days through the real core: what the utility benchmark and the coverage test run.

A simulated device makes one report of a feature set per UTC day (population division, the
default: the period it reports in is chosen independently of the data, so here it is drawn
uniformly). Its report values are the period's true feature values (NaN where it had no valid
window: the public fallback is released with a presence bit of 0, as
:class:`~pipeline.study.ReportBuilder` does), privatized with the study's compiled
:class:`~pipeline.privacy.vector.ReleasePlan` under a noise identity derived exactly as
:meth:`PrivacyEngine.privatize <pipeline.privacy.engine.PrivacyEngine.privatize>` derives it for a
device's first report (``tests/unit/privacy/test_fast_path.py`` checks the records are
bit-identical), and published as release records (:func:`~pipeline.releases.release_document`).
:func:`simulate_day` feeds them to the analyst's :class:`~pipeline.aggregate.Aggregator`.

Many devices are privatized at once (:meth:`ReleasePlan.apply_many`): no budget accounting (each
simulated device makes one report), so cohorts of 10,000 devices and thousands of runs fit in
minutes. :meth:`Simulator.day_estimates_fast` is the utility benchmark's path for thousands of
runs of 10,000 devices: the same plan and mechanism code (:meth:`ReleasePlan.apply_words`) on
words from a seeded generator instead of each report's noise identity, and the aggregator's own
estimator (:func:`~pipeline.privacy.estimators.present_mean`) on the day's sums, without records
(``tests/unit/test_evaluation_fast.py`` checks both paths give the same distribution). Pure: no I/O (the cohort values come from :mod:`connectors.cohort`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.aggregate import Aggregator
from pipeline.errors import PrivacyError
from pipeline.privacy.estimators import BitStats, ValueStats, least_variance, present_mean
from pipeline.privacy.keys import KeyProvider
from pipeline.privacy.noise import NoiseStream, identity_bytes, release_key
from pipeline.privacy.vector import ReleasePlan
from pipeline.releases import release_document
from pipeline.study import DAY_S, Study, StudySet

__all__ = ["DAY0_NS", "Simulator", "report_values", "truth_mean"]

#: The simulated UTC day starts at 2026-01-01T00:00:00Z (ns).
DAY0_NS = 1_767_225_600 * 10**9


def report_values(s: StudySet, truth: np.ndarray) -> np.ndarray:
    """Report vectors (``StudySet.specs`` order: features, then presence bits) of true period
    values ``truth`` (devices x features, NaN = no valid window: the midpoint is released)."""
    mids = np.array([(f.spec.lower + f.spec.upper) / 2.0 for f in s.features])
    present = np.isfinite(truth)
    return np.concatenate([np.where(present, truth, mids), present.astype(np.float64)], axis=1)


def truth_mean(truth: np.ndarray) -> np.ndarray:
    """The non-private target per feature: the mean over the devices with a value (NaN if none)."""
    ok = np.isfinite(truth)
    with np.errstate(invalid="ignore"):
        return np.where(ok.any(axis=0), np.nansum(truth, axis=0) / np.maximum(ok.sum(axis=0), 1), np.nan)


@dataclass
class Simulator:
    """Privatizes simulated reports of one study with one key ring (plans compiled once per set)."""

    study: Study
    keys: KeyProvider
    _plans: dict[str, ReleasePlan] = field(default_factory=dict, repr=False)
    _floors: dict[str, float] = field(default_factory=dict, repr=False)

    def plan(self, set_name: str) -> ReleasePlan:
        """The plan the engine compiles for the set's reports (the study's per-report epsilon)."""
        plan = self._plans.get(set_name)
        if plan is None:
            from dataclasses import replace

            s = self.study.sets[set_name]
            cfg = replace(self.study.privacy_config(), epsilon=s.epsilon_per_report)
            plan = self._plans[set_name] = ReleasePlan(set_name, s.specs, cfg)
        return plan

    def records(
        self,
        set_name: str,
        values: np.ndarray,
        devices: Sequence[str],
        periods: Sequence[int],
        lineages: Sequence[str],
        content: bytes = b"sim",
    ) -> list[dict[str, Any]]:
        """Release records of one report per device: ``values[i]`` (a report vector,
        :func:`report_values`) of ``devices[i]`` in report period ``periods[i]`` (index since
        the epoch) under ledger lineage ``lineages[i]``; stream name = feature set name."""
        s = self.study.sets[set_name]
        plan = self.plan(set_name)
        step = s.period_s * 1_000_000_000
        streams = []
        for dev, p, lin in zip(devices, periods, lineages, strict=True):
            ident = identity_bytes(dev, set_name, set_name, int(p), lin, int(p) * step, (int(p) + 1) * step, content)
            streams.append(NoiseStream(release_key(self.keys.noise_key(dev)[1], ident)))
        out, sel = plan.apply_many(values, streams)
        names, design = plan.names, s.design()
        skey = f"{set_name}\x00{set_name}".encode()
        docs = []
        for i, dev in enumerate(devices):
            idx = range(plan.d) if sel is None else sel[i].tolist()
            vals = {names[j]: float(out[i, j]) for j in idx}
            rid = self.keys.tag(dev, b"release\x00%s\x00%d" % (skey, int(periods[i])))[:16].hex()
            docs.append(release_document(rid, self.keys.pseudonym(dev), set_name, set_name, int(periods[i]) * step,
                                         float(s.period_s), vals, plan.describe(vals), design))
        return docs

    def day(self, set_name: str, truth: np.ndarray, rng: np.random.Generator,
            devices: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Release records of one simulated day: device ``i`` reports ``truth[i]`` (devices x
        features, NaN = missing) in a period of the day drawn uniformly, under a fresh lineage."""
        s = self.study.sets[set_name]
        n = len(truth)
        devices = devices if devices is not None else [f"dev-{i}" for i in range(n)]
        first = DAY0_NS // (s.period_s * 1_000_000_000)
        periods = (first + rng.integers(0, s.periods_per_day, size=n)).tolist()
        lineages = [rng.bytes(16).hex() for _ in range(n)]
        return self.records(set_name, report_values(s, truth), devices, periods, lineages)

    def day_estimates(self, set_name: str, truth: np.ndarray, rng: np.random.Generator) -> dict[str, dict[str, Any]]:
        """The aggregator's day estimate per feature (aggregate records keyed by feature) from
        one simulated day of ``truth``; a feature with too few reports is absent."""
        agg = Aggregator()
        for doc in self.day(set_name, truth, rng):
            agg.add(doc)
        return {e["feature"]: e for e in agg.estimates({k for k in agg.keys() if k[3] == float(DAY_S)})}

    def _floor(self, noise: dict[str, Any]) -> float:
        key = repr(sorted(noise.items()))
        if key not in self._floors:
            self._floors[key] = least_variance(noise)
        return self._floors[key]

    def day_estimates_fast(self, set_name: str, truth: np.ndarray, rng: np.random.Generator) -> dict[str, dict[str, Any]]:
        """:meth:`day_estimates` for utility measurement: the set's plan privatizes every device's
        report vector with keystream words drawn from ``rng`` (:meth:`ReleasePlan.apply_words`,
        the engine's mechanism code; the engine's path derives the words from each report's noise
        identity), and the aggregator's estimator (:func:`present_mean`, Fieller's interval within
        the bounds) runs on the day's sums. Returns ``estimate`` and ``ci95`` per feature; a feature
        without an estimate (too few reports, share not positive) is absent."""
        s = self.study.sets[set_name]
        plan = self.plan(set_name)
        n = len(truth)
        words = rng.bit_generator.random_raw((n, plan.words))  # uniform 64-bit words, as a keystream's
        out, sel = plan.apply_words(report_values(s, truth), words)
        if sel is None:
            carried = np.ones(out.shape, dtype=bool)
        else:
            carried = np.zeros(out.shape, dtype=bool)
            np.put_along_axis(carried, sel, True, axis=1)
        col = {name: j for j, name in enumerate(plan.names)}
        desc = plan.describe(plan.names)
        est: dict[str, dict[str, Any]] = {}
        for f in s.features:
            j, b = col[f.name], col[f"{f.name}.present"]
            vals = out[carried[:, j], j]
            noise = desc[f.name]
            stats = ValueStats(floor=self._floor(noise))
            stats.n = int(vals.size)
            stats._total, stats._total_sq = [float(vals.sum())], [float(np.dot(vals, vals))]  # float sums: one order
            bits = BitStats(float(desc[f"{f.name}.present"]["epsilon"]))
            bits.n = int(carried[:, b].sum())
            bits.ones = int(np.count_nonzero(out[carried[:, b], b] >= 0.5))
            if stats.n < 2 or bits.n < 1:
                continue
            try:
                e = present_mean(stats, bits, (f.spec.lower + f.spec.upper) / 2.0, bounds=(f.spec.lower, f.spec.upper))
            except PrivacyError:
                continue
            est[f.name] = {"feature": f.name, "estimate": e.value, "ci95": [e.ci_low, e.ci_high]}
        return est
