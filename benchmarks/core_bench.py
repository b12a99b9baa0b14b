"""Processing core CPU per second of the standard load, per stream (no Kafka, no Faust).

Builds the latency benchmark's ``standard`` schedule (``benchmarks/latency/workload.py``, read-only
reuse) and feeds its first ``--seconds`` of frames, in due order, to a fresh
:class:`~pipeline.processor.Processor` as fast as possible (``benchmarks/latency/processor_cost.py``),
``--repeat`` times per mode; reports per stream the CPU us per frame and ms needed per second of
load (best run per stream) and the whole core's share of one core. ``--mode``: ``study`` (the
worker's default study: windows accumulate into report periods), ``per-window`` (the latency
benchmark's stress mode: every window privatized and released) or ``both`` (default; runs
interleaved). A machine calibration (``benchmarks/machine.py``, ``calibration``: a fixed tiny
Python and numpy timing) is printed before and after, to compare figures across hosts. Per stream it reports both the wall time of the
``process`` calls (as ``processor_cost`` in the latency benchmark does) and the thread CPU time
(``CLOCK_THREAD_CPUTIME_ID``: excludes time the thread was preempted, so it is the steadier figure
on a shared host).

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/core_bench.py --seconds 40 --repeat 2

``--profile FILE`` writes a pyinstrument tree of one extra run per mode (``FILE`` with the mode
before the suffix when both).
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
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from machine import announce, calibration, interleaved, mode_path  # noqa: E402
from processor_cost import MODES, core_inputs, mode_cost  # noqa: E402
from workload import Schedule, timed_schedule  # noqa: E402


def core_cpu(sched: Schedule, key_file: Path, seconds: float, mode: str) -> dict[str, Any]:
    """Like ``processor_cost`` (fresh processor, frames in due order, as fast as possible), timing
    each ``process`` call by wall clock and by thread CPU time."""
    import logging
    import warnings

    proc, msgs = core_inputs(sched, key_file, seconds, mode)
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
        "mode": mode, "seconds_of_load": seconds, "frames": n, "cpu_s": round(total, 3),
        "cpu_us_per_frame": round(sum(cpu.values()) / 1e3 / max(1, n), 1),
        "cpu_percent_of_one_core_at_this_load": round(100.0 * total / seconds, 1),
        "per_stream": {st: {"frames": frames[st], "releases": releases[st],
                            "wall_ms_per_s_of_load": round(wall[st] / 1e6 / seconds, 1),
                            "cpu_ms_per_s_of_load": round(cpu[st] / 1e6 / seconds, 1),
                            "cpu_us_per_frame": round(cpu[st] / 1e3 / frames[st], 1)} for st in sorted(frames)},
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Best run per stream (least CPU), and the best whole-core figures."""
    streams = sorted({s for r in runs for s in r["per_stream"]})
    per_stream = {}
    for s in streams:
        v = min((r["per_stream"][s] for r in runs if s in r["per_stream"]), key=lambda v: v["cpu_ms_per_s_of_load"])
        per_stream[s] = {**v, "best_wall_ms_per_s_of_load": min(r["per_stream"][s]["wall_ms_per_s_of_load"]
                                                               for r in runs if s in r["per_stream"])}
    frames = sum(v["frames"] for v in per_stream.values())
    cpu_ms = sum(v["cpu_ms_per_s_of_load"] for v in per_stream.values())
    return {
        "per_stream": per_stream,
        "best_cpu_percent": min(r["cpu_percent_of_one_core_at_this_load"] for r in runs),
        "best_cpu_us_per_frame": min(r["cpu_us_per_frame"] for r in runs),
        # sum of the per-stream bests over all frames: the figure the per-stream table adds up to
        "cpu_us_per_frame_of_stream_bests": round(cpu_ms * runs[0]["seconds_of_load"] * 1e3 / max(1, frames), 1),
        "cpu_ms_per_s_of_stream_bests": round(cpu_ms, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="standard")
    ap.add_argument("--seconds", type=float, default=30.0, help="seconds of schedule fed to the core")
    ap.add_argument("--repeat", type=int, default=3, help="runs per mode")
    ap.add_argument("--mode", choices=(*MODES, "both"), default="both",
                    help="study: the default study (the worker's default); per-window: the stress mode; both (default)")
    ap.add_argument("--profile", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    modes = MODES if args.mode == "both" else (args.mode,)

    load0, cal0 = announce()
    sched = timed_schedule(args.workload, args.seconds)
    with tempfile.TemporaryDirectory(prefix="biopriv-core-") as td:
        key_file = Path(td) / "keys.json"
        runs = interleaved(
            modes, args.repeat, lambda mode: core_cpu(sched, key_file, args.seconds, mode),
            lambda mode, i, r: f"{mode} run {i}: {r['cpu_us_per_frame']} us/frame, "
            f"{r['cpu_percent_of_one_core_at_this_load']}% of one core; CPU us/frame: "
            + ", ".join(f"{s} {v['cpu_us_per_frame']}" for s, v in r["per_stream"].items()))
        if args.profile is not None:
            for mode in modes:
                prof = mode_path(args.profile, mode, modes)
                mode_cost(sched, key_file, args.seconds, mode, prof)
                print(f"profile of the {mode} mode: {prof}")
    load1 = os.getloadavg()
    cal1 = calibration()
    print(f"\nload average before {[round(x, 2) for x in load0]}, after {[round(x, 2) for x in load1]}; "
          f"calibration before {cal0}, after {cal1}")
    results: dict[str, Any] = {}
    for mode in modes:
        sm = results[mode] = summary(runs[mode])
        print(f"\n{mode}: best run {sm['best_cpu_us_per_frame']} us/frame of thread CPU ({sm['best_cpu_percent']}% of one "
              f"core, process CPU over {args.seconds:g} s of load); best per stream summed: "
              f"{sm['cpu_us_per_frame_of_stream_bests']} us/frame")
        print("| stream | frames | releases | CPU us/frame | CPU ms per s of load | wall ms per s of load |")
        print("|---|---:|---:|---:|---:|---:|")
        for s, v in sm["per_stream"].items():
            print(f"| {s} | {v['frames']} | {v['releases']} | {v['cpu_us_per_frame']} | {v['cpu_ms_per_s_of_load']} | "
                  f"{v['best_wall_ms_per_s_of_load']} |")
        print(f"| total | | | {sm['cpu_us_per_frame_of_stream_bests']} | {sm['cpu_ms_per_s_of_stream_bests']} | |")
    if args.json is not None:
        args.json.write_text(json.dumps({"load_before": load0, "load_after": load1, "calibration_before": cal0,
                                         "calibration_after": cal1, "modes": results, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
