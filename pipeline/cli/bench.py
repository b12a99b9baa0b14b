"""``biopriv bench NAME``: run one of the benchmarks in ``benchmarks/`` and print its summary."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

from pipeline.errors import ConfigError

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"

#: name -> (script, what it measures)
BENCHMARKS = {
    "features": ("features_bench.py", "amortized feature cost per frame per modality vs naive scipy / NeuroKit2"),
    "privacy": ("privacy_bench.py", "privatizing a 320-feature release; error of each mechanism vs epsilon"),
    "pacing": ("replay_pacing.py", "replay pacing error at --speed 1 on the live broker"),
    "study": ("study_utility.py", "default study on a real-recording cohort: population vs budget division, error per feature"),
    "utility": ("utility.py", "privacy-utility grid (daily epsilon x cohort size) on a real-recording cohort, planner vs measured, membership/linkage attacks (--quick)"),
    "latency": ("latency/run.py", "end-to-end p99 and capacity of one worker vs passthrough, hand-written and Quix Streams (--short: ~3 min)"),
}


def register(sub: argparse._SubParsersAction) -> None:
    lines = "\n".join(f"  {k:<9} {v[1]}" for k, v in BENCHMARKS.items())
    p = sub.add_parser(
        "bench",
        help="run a benchmark from benchmarks/ and print its summary",
        description=f"Run a benchmark; results go to benchmarks/results/.\n\nbenchmarks:\n{lines}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark script")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    script = BENCH_DIR / BENCHMARKS[args.name][0]
    if not script.exists():
        raise ConfigError(f"{script} not found: 'biopriv bench' needs the biopriv source tree")
    saved = sys.argv
    sys.argv = [str(script), *args.args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    finally:
        sys.argv = saved
    return 0
