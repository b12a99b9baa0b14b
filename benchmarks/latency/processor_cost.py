"""The processing core's own cost on the benchmark's frames, in process, without Kafka or Faust.

Feeds the first ``seconds`` of a pre-encoded schedule, in due order, to a
:class:`~pipeline.processor.Processor` built like the worker's (default privacy configuration, the
run's key file) as fast as possible, timing every ``process`` call. The CPU needed per second of
load, compared with the live worker's CPU, separates the core's cost from the Faust / aiokafka
shell's. Optionally profiled with pyinstrument (in process, the core only).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from workload import Schedule, stamp


def core_inputs(sched: Schedule, key_file: Path, seconds: float) -> tuple[Any, list[tuple[bytes, bytes, str]]]:
    """A fresh processor (default privacy config) and the first ``seconds`` of the schedule as
    ``(key, stamped value, stream)`` messages in due order."""
    from pipeline.privacy import PrivacyConfig, PrivacyEngine, load_keys
    from pipeline.processor import Processor

    keys = load_keys(key_file)
    proc = Processor(PrivacyEngine(PrivacyConfig.default(), keys), keys.pseudonym)
    n = int(np.searchsorted(sched.due_ns, int(seconds * 1e9)))
    base = time.time_ns()
    msgs = [(sched.keys[int(sched.plan_idx[i])], stamp(sched.values[i], int(sched.stamp_at[i]), base + int(sched.due_ns[i])),
             sched.plans[int(sched.plan_idx[i])].stream) for i in range(n)]
    return proc, msgs


def processor_cost(sched: Schedule, key_file: Path, seconds: float, profile_path: Path | None = None) -> dict[str, Any]:
    proc, msgs = core_inputs(sched, key_file, seconds)
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
        "seconds_of_load": seconds,
        "frames": n,
        "cpu_s": round(cpu, 3),
        "cpu_percent_of_one_core_at_this_load": round(100.0 * cpu / seconds, 1),
        "mean_us_per_frame": round(1e6 * cpu / max(1, n), 1),
        "dead_letters": proc.stats.dead_letters,
        "per_stream": streams,
        "profiled": profile_path is not None,
    }
