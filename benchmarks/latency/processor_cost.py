"""The processing core's own cost on the benchmark's frames, in process, without Kafka or Faust.

Feeds the first ``seconds`` of a pre-encoded schedule, in due order, to a fresh
:class:`~pipeline.processor.Processor` built like the worker's as fast as possible, timing every
``process`` call, in two modes (:data:`MODES`):

* ``per-window``: the stress mode the latency benchmark's worker runs (``--per-window``: default
  privacy configuration, every window released), so per-frame latency stays measurable;
* ``study``: the worker's default (:func:`pipeline.app.build_processor` with the default study):
  windows accumulate into report periods (10 min, 1 h) that seldom close within the measured
  seconds, so this is mostly the cost of windows, features and report accumulation.

The CPU needed per second of load, compared with the live worker's CPU, separates the core's cost
from the Faust / aiokafka shell's. Optionally profiled with pyinstrument (in process, the core only).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from workload import Schedule, stamp

#: The processor modes measured: the latency benchmark's stress mode and the worker's default study.
MODES = ("per-window", "study")


def build_core(key_file: Path, mode: str = "per-window") -> Any:
    """A fresh processor as the worker builds it: ``--per-window`` or the default study."""
    from pipeline.app import WorkerSettings, build_processor

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return build_processor(WorkerSettings(key_file=key_file, per_window=mode == "per-window"))


def core_inputs(sched: Schedule, key_file: Path, seconds: float,
                mode: str = "per-window") -> tuple[Any, list[tuple[bytes, bytes, str]]]:
    """A fresh processor (:func:`build_core`) and the first ``seconds`` of the schedule as
    ``(key, stamped value, stream)`` messages in due order."""
    proc = build_core(key_file, mode)
    n = int(np.searchsorted(sched.due_ns, int(seconds * 1e9)))
    base = time.time_ns()
    msgs = [(sched.keys[int(sched.plan_idx[i])], stamp(sched.values[i], int(sched.stamp_at[i]), base + int(sched.due_ns[i])),
             sched.plans[int(sched.plan_idx[i])].stream) for i in range(n)]
    return proc, msgs


def processor_cost(sched: Schedule, key_file: Path, seconds: float, profile_path: Path | None = None,
                   study: bool = True) -> dict[str, Any]:
    """The per-window (stress) mode's figures; with ``study``, the default study's under ``"study"``;
    the host's ``calibration`` (:func:`benchmarks.machine.calibration`) under ``"calibration"``.

    ``profile_path`` profiles the per-window run; the study run's profile goes beside it
    (``<stem>_study<suffix>``).
    """
    from benchmarks.machine import calibration

    out = mode_cost(sched, key_file, seconds, "per-window", profile_path)
    out["calibration"] = calibration()
    if study:
        prof = None if profile_path is None else profile_path.with_name(f"{profile_path.stem}_study{profile_path.suffix}")
        out["study"] = mode_cost(sched, key_file, seconds, "study", prof)
    return out


def mode_cost(sched: Schedule, key_file: Path, seconds: float, mode: str,
              profile_path: Path | None = None) -> dict[str, Any]:
    """One mode's cost: per stream, wall time of the ``process`` calls; overall, process CPU time."""
    proc, msgs = core_inputs(sched, key_file, seconds, mode)
    n = len(msgs)
    per_stream: dict[str, list[int]] = {}
    releases: dict[str, int] = {}
    profiler = None
    if profile_path is not None:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
        profiler.start()
    import logging
    import warnings

    logging.getLogger("pipeline").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")  # PrivacyWarning per feature set: the worker logs them, the figures do not need them
    cpu0 = time.process_time()
    for key, value, stream in msgs:
        t0 = time.perf_counter_ns()
        out = proc.process(value, key)
        per_stream.setdefault(stream, []).append(time.perf_counter_ns() - t0)
        if out.releases:
            releases[stream] = releases.get(stream, 0) + len(out.releases)
    cpu = time.process_time() - cpu0
    if profiler is not None:
        profiler.stop()
        profile_path.write_text(profiler.output_text(unicode=False, color=False, show_all=False))
    streams = {}
    for st, ts in sorted(per_stream.items()):
        a = np.asarray(ts, dtype=np.float64) / 1e3
        streams[st] = {
            "frames": int(a.size), "releases": releases.get(st, 0),
            "mean_us": round(float(a.mean()), 1), "p50_us": round(float(np.median(a)), 1),
            "p99_us": round(float(np.percentile(a, 99)), 1), "max_us": round(float(a.max()), 1),
            "cpu_ms_per_s_of_load": round(float(a.sum()) / 1e3 / seconds, 1),
        }
    return {
        "mode": mode,
        "seconds_of_load": seconds,
        "frames": n,
        "cpu_s": round(cpu, 3),
        "cpu_percent_of_one_core_at_this_load": round(100.0 * cpu / seconds, 1),
        "mean_us_per_frame": round(1e6 * cpu / max(1, n), 1),
        "dead_letters": proc.stats.dead_letters,
        "per_stream": streams,
        "profiled": profile_path is not None,
    }
