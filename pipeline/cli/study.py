"""``biopriv study check``: validate a study file and show what each device will spend."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``study`` subcommand."""
    p = subparsers.add_parser(
        "study",
        help="validate a study file and show what each device releases and spends",
        description="A study (TOML) says which features each stream releases, their public bounds, the report "
        "period of each feature set and the per-device budgets (docs/privacy.md, 'Studies'). 'check' "
        "validates it without connecting to anything and prints, per feature set, the reports per day and "
        "the epsilon per report and per day, then the daily total and the lifetime cap.",
    )
    sub = p.add_subparsers(dest="study_command", metavar="ACTION")
    sub.required = True
    c = sub.add_parser("check", help="validate and summarize a study (default: the built-in one)")
    c.add_argument("file", nargs="?", type=Path, default=None, metavar="FILE", help="study file (default: built-in)")
    c.add_argument("--json", action="store_true", help="print the resolved study as one JSON object")
    c.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from pipeline.study import load_study

    summary = load_study(args.file).summary()
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"study: {summary['source']} ({summary['scheduling']} division)")
    print(f"{'FEATURE SET':<12} {'FEATURES':<44} {'PERIOD':>7} {'REPORTS/DAY':>11} {'EPS/REPORT':>10} {'EPS/DAY':>8}")
    for name, s in summary["sets"].items():
        feats = ", ".join(f"{f} [{lo:g}, {hi:g}]" for f, (lo, hi) in s["bounds"].items())
        print(f"{name:<12} {feats[:44]:<44} {_period(s['period_s']):>7} {s['reports_per_day']:>11} "
              f"{s['epsilon_per_report']:>10.4g} {s['epsilon_per_day']:>8.4g}")
    print(f"per device: {summary['spend_per_day']:g} epsilon per day (cap {summary['epsilon_per_day']:g}), "
          f"lifetime cap {summary['lifetime_epsilon']:g} (reached after {summary['days_until_lifetime_cap']} days)")
    return 0


def _period(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return f"{seconds // 60}min" if seconds % 60 == 0 else f"{seconds}s"
