"""Processing core CPU per second of the standard load, per stream (no Kafka, no Faust).

Builds the latency benchmark's ``standard`` schedule (``benchmarks/latency/workload.py``, read-only
reuse) and feeds its first ``--seconds`` of frames, in due order, to a fresh
:class:`~pipeline.processor.Processor` as fast as possible (``benchmarks/latency/processor_cost.py``),
``--repeat`` times; reports per stream the CPU ms needed per second of load (best run per stream)
and the whole core's share of one core. Per stream it reports both the wall time of the
``process`` calls (as ``processor_cost`` in the latency benchmark does) and the thread CPU time
(``CLOCK_THREAD_CPUTIME_ID``: excludes time the thread was preempted, so it is the steadier figure
on a shared host).

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/core_bench.py --seconds 30 --repeat 3

``--profile FILE`` writes a pyinstrument tree of one extra run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "latency"))
sys.path.insert(0, str(ROOT))

from processor_cost import core_inputs, processor_cost  # noqa: E402
from workload import Schedule, build_schedule, load_workload  # noqa: E402


def core_cpu(sched: Schedule, key_file: Path, seconds: float) -> dict[str, Any]:
    """Like ``processor_cost`` (fresh processor, frames in due order, as fast as possible), timing
    each ``process`` call by wall clock and by thread CPU time."""
    import logging
    import warnings

    proc, msgs = core_inputs(sched, key_file, seconds)
    n = len(msgs)
    logging.getLogger("pipeline").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    wall: dict[str, int] = {}
    cpu: dict[str, int] = {}
    frames: dict[str, int] = {}
    releases: dict[str, int] = {}
    pc, tt = time.perf_counter_ns, time.thread_time_ns
    cpu0 = time.process_time()
    for key, value, stream in msgs:
        c0, t0 = tt(), pc()
        out = proc.process(value, key)
        t1, c1 = pc(), tt()
        wall[stream] = wall.get(stream, 0) + t1 - t0
        cpu[stream] = cpu.get(stream, 0) + c1 - c0
        frames[stream] = frames.get(stream, 0) + 1
        releases[stream] = releases.get(stream, 0) + len(out.releases)
    total = time.process_time() - cpu0
    return {
        "seconds_of_load": seconds, "frames": n, "cpu_s": round(total, 3),
        "cpu_percent_of_one_core_at_this_load": round(100.0 * total / seconds, 1),
        "per_stream": {st: {"frames": frames[st], "releases": releases[st],
                            "wall_ms_per_s_of_load": round(wall[st] / 1e6 / seconds, 1),
                            "cpu_ms_per_s_of_load": round(cpu[st] / 1e6 / seconds, 1),
                            "cpu_us_per_frame": round(cpu[st] / 1e3 / frames[st], 1)} for st in sorted(frames)},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="standard")
    ap.add_argument("--seconds", type=float, default=30.0, help="seconds of schedule fed to the core")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)

    load0 = os.getloadavg()
    wl = load_workload(args.workload, short=False)
    t = time.monotonic()
    sched = build_schedule(wl, end_s=args.seconds + 1.0)
    print(f"schedule: {len(sched):,} frames built in {time.monotonic() - t:.1f} s", flush=True)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="biopriv-core-") as td:
        key_file = Path(td) / "keys.json"
        for i in range(args.repeat):
            r = core_cpu(sched, key_file, args.seconds)
            runs.append(r)
            print(f"run {i + 1}: {r['cpu_percent_of_one_core_at_this_load']}% of one core; CPU ms/s: "
                  + ", ".join(f"{s} {v['cpu_ms_per_s_of_load']}" for s, v in r["per_stream"].items()), flush=True)
        if args.profile is not None:
            processor_cost(sched, key_file, args.seconds, args.profile)
    load1 = os.getloadavg()
    streams = sorted({s for r in runs for s in r["per_stream"]})
    best = {s: min(r["per_stream"][s]["cpu_ms_per_s_of_load"] for r in runs if s in r["per_stream"]) for s in streams}
    best_wall = {s: min(r["per_stream"][s]["wall_ms_per_s_of_load"] for r in runs if s in r["per_stream"]) for s in streams}
    best_pct = min(r["cpu_percent_of_one_core_at_this_load"] for r in runs)
    print(f"\nload average before {[round(x, 2) for x in load0]}, after {[round(x, 2) for x in load1]}")
    print(f"core: best {best_pct}% of one core (process CPU time over {args.seconds:g} s of load)")
    print("| stream | frames | releases | CPU us/frame | CPU ms per s of load | wall ms per s of load |")
    print("|---|---:|---:|---:|---:|---:|")
    for s in streams:
        v = min((r["per_stream"][s] for r in runs if s in r["per_stream"]), key=lambda v: v["cpu_ms_per_s_of_load"])
        print(f"| {s} | {v['frames']} | {v['releases']} | {v['cpu_us_per_frame']} | {best[s]} | {best_wall[s]} |")
    print(f"| total | | | | {round(sum(best.values()), 1)} | {round(sum(best_wall.values()), 1)} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"load_before": load0, "load_after": load1, "best_cpu_ms_per_s": best, "best_wall_ms_per_s": best_wall,
                                         "best_cpu_percent": best_pct, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
