"""``biopriv plan``: predicted interval half-widths of a study's estimates, or the devices needed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError


def register(subparsers: Any) -> None:
    """Add the ``plan`` subcommand."""
    p = subparsers.add_parser(
        "plan",
        help="predict how precise a study's population estimates will be, or how many devices it needs",
        description="From the study (its mechanisms, epsilon per report, scheduling and report periods), predict "
        "the 95 % interval half-width of each feature's population mean per report period and per UTC day for "
        "--devices devices (the 95 % quantile of the estimate's error, by a seeded Monte Carlo of the aggregator's "
        "estimator under the study's mechanisms); with --target FEATURE=HALF_WIDTH, the devices a day's estimate "
        "needs (docs/analysis.md).",
    )
    p.add_argument("--study", type=Path, default=None, metavar="FILE", help="study file (default: built-in)")
    p.add_argument("--devices", type=int, default=1000, help="cohort size (default %(default)s)")
    p.add_argument("--expected", action="append", default=[], metavar="FEATURE=VALUE",
                   help="expected population value of a feature (default: the midpoint of its bounds, the worst case)")
    p.add_argument("--spread", action="append", default=[], metavar="FEATURE=SD",
                   help="standard deviation of a feature's value across devices (default 0: every device at --expected)")
    p.add_argument("--present", action="append", default=[], metavar="FEATURE=SHARE",
                   help="share of devices with a value of a feature in a report, in (0, 1] (default 1: every device "
                   "worn; the others release the fallback and a presence bit of 0)")
    p.add_argument("--target", action="append", default=[], metavar="FEATURE=HALF_WIDTH",
                   help="print the devices needed for this 95 %% half-width of the day's mean (repeatable)")
    p.add_argument("--json", action="store_true", help="one JSON object per feature")
    p.set_defaults(func=run)


def _pairs(items: list[str], what: str) -> dict[str, float]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise ConfigError(f"{what} must be FEATURE=NUMBER, got {item!r}")
    return out


def run(args: argparse.Namespace) -> int:
    from pipeline.plan import devices_for, predict
    from pipeline.study import load_study

    if args.devices < 1:
        raise ConfigError(f"--devices must be >= 1, got {args.devices}")
    study = load_study(args.study)
    expected = _pairs(args.expected, "--expected")
    targets = _pairs(args.target, "--target")
    spread = _pairs(args.spread, "--spread")
    present = _pairs(args.present, "--present")
    known = {f.name for s in study.sets.values() for f in s.features}
    for name in [*expected, *targets, *spread, *present]:
        if name not in known:
            raise ConfigError(f"unknown feature {name!r}; the study releases {', '.join(sorted(known))}")
    for name, share in present.items():
        if not 0.0 < share <= 1.0:
            raise ConfigError(f"--present {name}={share:g}: the share must be in (0, 1]")
    rows = predict(study, args.devices, expected, spread, present=present)
    for r in rows:
        if r["feature"] in targets:
            r["target_half_width"] = targets[r["feature"]]
            r["devices_needed"] = devices_for(study, r["feature"], targets[r["feature"]], expected=expected,
                                            spread=spread, present=present)
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print(f"study {study.source}: {args.devices} devices, 95 % half-widths of the population mean (95 % quantile of its error)")
    print(f"{'FEATURE':<22} {'PERIOD':>7} {'REPORTS/PERIOD':>14} {'+- PER PERIOD':>14} {'+- PER DAY':>11}")
    for r in rows:
        print(f"{r['feature']:<22} {r['period_s']:>6}s {r['reports_per_period']:>14.1f} {r['half_width_period']:>14.4g} "
              f"{r['half_width_day']:>11.4g}")
        if "devices_needed" in r:
            print(f"  -> +-{r['target_half_width']:g} per day needs {r['devices_needed']:,} devices")
    loose = [r["feature"] for r in rows if r["share_sd_day"] > 0.1]
    if loose:
        print(f"note: the share of devices with a value is known to worse than +-0.1 (sd) per day for {', '.join(loose)}: "
              "their estimates' errors have heavy tails, and the half-widths are the 95 % quantiles of the error "
              "(Monte Carlo of the aggregator's estimator, clipped to the bounds), not 1.96 sd (docs/analysis.md)")
    rare = [r["feature"] for r in rows if r["estimated_share_period"] < 0.95]
    if rare:
        print(f"note: per period, {', '.join(rare)} would have no estimate in more than 5 % of periods (too few "
              "reports, or an estimated share not positive); their per-period half-widths are over the periods with one")
    return 0
