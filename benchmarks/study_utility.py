"""Utility of the default study on real recordings: population division against budget division.

A cohort is built from the shared real recordings (``../shared/data``): each simulated device's
value for a report period is the mean of a block of consecutive windows (from one to as many as
the period holds, ``connectors.cohort``) cut at a random place of a random recording that carries the
feature set, computed by the pipeline's own feature code; a block without any valid window is a
missing value. One simulated UTC day of ``--devices`` devices is then released through the
study's release plan under the engine's noise identities (``pipeline.evaluation``) under the default study, once with each scheduling at the same daily
epsilon per device:

* **population division**: each device reports in one period of the day (chosen from its key),
  with the set's whole daily epsilon;
* **budget division**: each device reports in every period, with the daily epsilon divided among
  the day's periods.

From the published fields of the reports alone (``estimate_present_mean``), it estimates each
feature's population mean per period and over the day, and compares them with the non-private
truth (the mean over every device with a value). Writes ``benchmarks/results/study.{json,md}``.

    python benchmarks/study_utility.py [--devices 1000] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_model, load_average  # noqa: E402
from connectors.cohort import cohort, window_values  # noqa: E402
from pipeline.errors import PrivacyError  # noqa: E402
from pipeline.evaluation import DAY0_NS, Simulator, report_values  # noqa: E402
from pipeline.plan import predict  # noqa: E402
from pipeline.privacy import KeyRing, estimate_present_mean  # noqa: E402
from pipeline.study import DEFAULT_STUDY, Study, StudySet, from_mapping  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"

def release(s: StudySet, study: Study, truth: np.ndarray, seed: int) -> list[list[dict[str, Any]]]:
    """Privatize the scheduled reports of one day (``pipeline.evaluation``); records per period."""
    rng = np.random.default_rng(seed)
    keys = KeyRing({"n1": rng.bytes(32)}, {"p1": rng.bytes(32)}, "n1", "p1")
    sim = Simulator(study, keys)
    devices, periods, _ = truth.shape
    first = DAY0_NS // (s.period_s * 10**9)
    lineages = [rng.bytes(16).hex() for _ in range(devices)]  # one ledger per device, as the engine's
    by_period: list[list[dict[str, Any]]] = []
    for p in range(periods):
        who = [d for d in range(devices) if study.scheduled(keys.tag, f"dev-{d}", s.name, first + p)]
        values = report_values(s, truth[who, p]) if who else np.empty((0, 2 * len(s.features)))
        by_period.append(sim.records(s.name, values, [f"dev-{d}" for d in who], [first + p] * len(who),
                                     [lineages[d] for d in who], b"bench|%d" % p))
    return by_period


def estimate(records: list[dict[str, Any]], feature: str) -> float:
    try:
        return estimate_present_mean(records, feature).value
    except PrivacyError:
        return math.nan


def evaluate(s: StudySet, truth: np.ndarray, by_period: list[list[dict[str, Any]]]) -> dict[str, Any]:
    out = {}
    for i, f in enumerate(s.features):
        t = truth[:, :, i]
        per_period_truth = np.array([np.nanmean(t[:, p]) if np.isfinite(t[:, p]).any() else np.nan
                                     for p in range(t.shape[1])])
        est = np.array([estimate(recs, f.name) for recs in by_period])
        ok = np.isfinite(est) & np.isfinite(per_period_truth)
        err = est[ok] - per_period_truth[ok]
        all_records = [r for recs in by_period for r in recs]
        day_truth = float(np.nanmean(t))
        try:
            day_est = estimate_present_mean(all_records, f.name)
            day = (round(day_est.value - day_truth, 4), round((day_est.ci_high - day_est.ci_low) / 2, 4))
        except PrivacyError:  # too few reports for a positive presence estimate
            day = (math.nan, math.nan)
        out[f.name] = {
            "truth_day_mean": round(day_truth, 4),
            "missing_share": round(float(np.mean(~np.isfinite(t))), 4),
            "reports": len(all_records),
            "period_rmse": round(float(np.sqrt(np.mean(err**2))), 4) if err.size else None,
            "periods_estimable": round(float(ok.mean()), 4),
            "day_error": day[0],
            "day_ci95_halfwidth": day[1],
            "bounds": [f.spec.lower, f.spec.upper],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if not DATA.exists():
        print(f"study_utility: the shared recordings are not at {DATA}", file=sys.stderr)
        return 2
    t0 = time.time()
    studies = {}
    for scheduling in ("population", "budget"):
        data = json.loads(json.dumps(DEFAULT_STUDY))
        data["budget"]["scheduling"] = scheduling
        studies[scheduling] = from_mapping(data, f"default study, {scheduling} division")
    print("features of the real recordings:", flush=True)
    sources = window_values(studies["population"], DATA, verbose=True)
    results: dict[str, Any] = {"devices": args.devices, "seed": args.seed, "sets": {}}
    for name, s in studies["population"].sets.items():
        if not sources[name]:
            results["sets"][name] = {"skipped": "no shared recording carries this feature set"}
            print(f"{name}: no shared recording, skipped", flush=True)
            continue
        truth = cohort(s, sources[name], args.devices, np.random.default_rng(args.seed))
        entry: dict[str, Any] = {"period_s": s.period_s, "epsilon_per_day": s.epsilon_per_day}
        for scheduling, study in studies.items():
            ss = study.sets[name]
            t1 = time.time()
            by_period = release(ss, study, truth, args.seed)
            feats = evaluate(ss, truth, by_period)
            expected = {f: v["truth_day_mean"] for f, v in feats.items()}
            for row in predict(study, args.devices, expected):
                if row["feature"] in feats:  # the planner's prediction beside the measured interval
                    feats[row["feature"]]["planner_day_halfwidth"] = round(row["half_width_day"], 4)
            entry[scheduling] = {"epsilon_per_report": ss.epsilon_per_report, "features": feats}
            print(f"{name:<5} {scheduling:<10} eps/report {ss.epsilon_per_report:.4g}: "
                  + "; ".join(f"{f} period RMSE {v['period_rmse']}, day error {v['day_error']} +- {v['day_ci95_halfwidth']}"
                              for f, v in entry[scheduling]["features"].items()) + f" ({time.time() - t1:.0f} s)", flush=True)
        results["sets"][name] = entry
    results["machine"] = {"cpu": cpu_model(), "cores": os.cpu_count(), "loadavg_1_5_15": load_average()}
    results["command"] = "python benchmarks/study_utility.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results["seconds"] = round(time.time() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "study.json").write_text(json.dumps(results, indent=1))
    (args.out / "study.md").write_text(report_md(results))
    print(f"wrote {args.out / 'study.md'} in {results['seconds']} s")
    return 0


def _needed(v: dict[str, Any], devices: int) -> str:
    """Devices for a day-mean 95 % half-width of 5 % of the bounds' range (the half-width scales as
    1/sqrt(devices))."""
    half, width = v["day_ci95_halfwidth"], v["bounds"][1] - v["bounds"][0]
    if not isinstance(half, float) or not math.isfinite(half):
        return "n/a"
    return f"{devices * (half / (0.05 * width)) ** 2:,.0f}"


def _day_loss(v: dict[str, Any]) -> float:
    """|day error| + CI half-width; infinite when there is no day estimate."""
    loss = abs(v["day_error"]) + v["day_ci95_halfwidth"]
    return loss if math.isfinite(loss) else math.inf


def report_md(r: dict[str, Any]) -> str:
    lines = [
        "# Utility of the default study: population vs budget division",
        "",
        f"`{r['command']}` on {r['machine'].get('cpu', '?')} ({r['machine'].get('cores', '?')} cores), "
        f"{r['seconds']} s. {r['devices']} simulated devices, one UTC day, the default study "
        "(2 epsilon per device per day). Device values per period are means of blocks of consecutive "
        "windows of the shared real recordings (segments as devices); estimates come from the published "
        "report fields alone (`estimate_present_mean`), truth is the non-private mean over every device "
        "with a value.",
        "",
        "| set | feature | bounds | truth (day) | missing | division | eps/report | reports | per-period RMSE | day error | day 95% CI +- | planner's +- | devices for CI +-5% of range |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in r["sets"].items():
        if "skipped" in e:
            lines.append(f"| {name} | | | | | | | | {e['skipped']} | | | | |")
            continue
        for scheduling in ("population", "budget"):
            for f, v in e[scheduling]["features"].items():
                lines.append(
                    f"| {name} | {f} | {v['bounds'][0]:g}..{v['bounds'][1]:g} | {v['truth_day_mean']:.4g} | "
                    f"{v['missing_share']:.0%} | {scheduling} | {e[scheduling]['epsilon_per_report']:.3g} | {v['reports']} | "
                    f"{v['period_rmse']} ({v['periods_estimable']:.0%} of periods) | {v['day_error']} | {v['day_ci95_halfwidth']} | "
                    f"{v.get('planner_day_halfwidth')} | {_needed(v, r['devices'])} |"
                )
    wins = {"population": 0, "budget": 0}
    for e in r["sets"].values():
        if "skipped" in e:
            continue
        for f in e["population"]["features"]:
            pop, bud = e["population"]["features"][f], e["budget"]["features"][f]
            wins["population" if _day_loss(pop) <= _day_loss(bud) else "budget"] += 1
    lines += [
        "",
        f"Day-mean error (|error| + CI half-width) is lower under population division for {wins['population']} "
        f"feature(s) and under budget division for {wins['budget']}: population division is the default. "
        "Per-period RMSE is over the periods whose estimate exists (under population division about "
        "devices/periods reports fall in each period; a period with too few reports has no positive presence "
        "estimate). Per-period means are out of reach at this cohort size under 2 epsilon a day; day means need "
        "the cohort sizes in the last column (a presence bit shares each report's epsilon, the price of unbiased "
        "means when values are missing). Skin temperature has no shared recording and is not measured.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
