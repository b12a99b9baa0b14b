"""The worker shell's CPU per frame: the real worker loop on the in-memory port (or on a broker).

Runs the loop ``biopriv worker`` runs (:class:`~pipeline.app.StreamWorker`: fetch -> process ->
publish -> settle -> checkpoint, over the :class:`~connectors.port.KafkaPort` interface) on
:class:`~connectors.memory.MemoryPort`, with a processor built as the worker builds it
(``benchmarks/latency/processor_cost.py``: ``--per-window`` stress mode or the default study).
The first ``--seconds`` of the latency benchmark's standard schedule (``benchmarks/latency/workload.py``,
as ``benchmarks/core_bench.py`` builds it) are written to the in-memory raw topics beforehand
(keyed by device, so a device's streams share a partition number), then one worker is assigned
every raw partition and runs until its output for all of them is acknowledged. The worker runs with the
default :class:`~pipeline.app.WorkerSettings` (``max_batch`` 500, a checkpoint every second):
the loop is saturated, as the live worker was at the standard load (``benchmarks/results/latest.md``).
It runs faster than real time, so what the worker does per second of wall time (checkpoints)
weighs less per frame than in a live worker at 1,560 frames/s.

Measured, per frame, over the run (from the assignment until the output of every message is
acknowledged; the periodic checkpoints within it are counted, the final one at stop is not; on a
broker, after a warm-up, see below):

* ``loop``: thread CPU time of the event loop's thread (``CLOCK_THREAD_CPUTIME_ID``), i.e.
  everything the worker does on its one thread;
* ``core``: thread CPU time inside :meth:`~pipeline.processor.Processor.process` calls (timed in
  place by wrapping the processor's method), the processing core. The probe itself costs 1-2 us
  of thread CPU per frame on a VM (two clock reads; printed as ``probe``), split between ``core``
  and ``shell``;
* ``shell``: their difference: batch bookkeeping, publishing, acknowledgements, resume
  tracking, checkpoints, metrics, and the in-memory port;
* ``process``: process CPU time over the same span (every thread), and per thread by name
  (``/proc``, 10 ms ticks; the loop's thread is ``MainThread``).

``--bootstrap HOST:PORT`` runs the same on a broker, with the worker's production port
(:class:`~connectors.confluent.ConfluentPort`, librdkafka) on fresh topics (deleted after): the
first :data:`WARMUP_S` of the schedule are written first and consumed (the worker joins the group
and recovers every partition: start-up, not counted), then another process writes the rest while
the worker consumes it (about 1 s of writing for several of consuming); ``process`` then includes
librdkafka's threads and the port's own (consume, commit, poll), so ``process - loop`` is the
Kafka client's CPU outside the event loop's thread (the broker is another process, not counted).

**What the in-memory run does not measure.** The in-memory port's own cost (a list slice per fetch, a
``call_soon`` and a list append per record sent) is *not* the Kafka client's: librdkafka's
``produce()`` and delivery reports, the consume thread's hand-over and the network are absent,
and counted in their place is the port's cheaper Python. The figures are the shell's Python cost
above the port, for A/B comparisons of the worker's own code; ``--bootstrap`` adds the Kafka
client's, and the live worker's CPU comes from the latency benchmark.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/shell_bench.py --seconds 20 --repeat 3

``--profile FILE`` writes a pyinstrument tree of one extra run per mode, ``--cprofile FILE`` a
cProfile listing (by own time; the raw stats beside it, suffix ``.pstats``) instead (``FILE``
with the mode before the suffix when both). Results: ``benchmarks/results/shell.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "latency"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from machine import announce, calibration, interleaved, mode_path  # noqa: E402
from processor_cost import MODES, core_inputs  # noqa: E402
from workload import MODALITIES, Schedule, timed_schedule  # noqa: E402

from connectors.kafka import DEFAULT_PARTITIONS, Topics  # noqa: E402
from connectors.memory import MemoryBroker, MemoryPort  # noqa: E402
from connectors.port import Partition  # noqa: E402

#: A guard against a loop that never finishes, not a timing: a run takes seconds.
HANG_S = 600.0


def _broker(sched: Schedule, msgs: list[tuple[bytes, bytes, str]], topics: Topics) -> MemoryBroker:
    """An in-memory broker holding ``msgs`` on the raw topic of their stream's modality."""
    broker = MemoryBroker()
    broker.create([*topics.raw_all, topics.private, topics.deadletter, topics.state], DEFAULT_PARTITIONS)
    broker.create([topics.events], 1)
    topic_of = {p.stream: topics.raw(MODALITIES[p.modality]) for p in sched.plans}
    for key, value, stream in msgs:
        broker.append(topic_of[stream], value, key)
    return broker


def _profiler(kind: str | None) -> Any:
    if kind == "pyinstrument":
        from pyinstrument import Profiler

        return Profiler(interval=0.0005)
    if kind == "cprofile":
        import cProfile

        return cProfile.Profile()
    return None


def _write_profile(profiler: Any, kind: str, path: Path) -> None:
    if kind == "pyinstrument":
        path.write_text(profiler.output_text(unicode=False, color=False, show_all=False))
        return
    import io
    import pstats

    profiler.dump_stats(path.with_suffix(".pstats"))  # for pstats / snakeviz
    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(60)
    path.write_text(buf.getvalue())


#: Seconds of schedule written before the measured part on a broker: the worker joins the group and
#: recovers every partition (kafka-python reads of the state topic) on them, outside the figures.
WARMUP_S = 2.0


def _produce(bootstrap: str, records: list[tuple[str, bytes, bytes]], ends: Any = None) -> dict[Partition, int]:
    """Write ``(topic, key, value)`` records; return (and put on ``ends``, from a child process)
    the end offset of every partition written to."""
    from confluent_kafka import Producer

    got: dict[Partition, int] = {}

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            raise RuntimeError(f"writing the schedule failed: {err}")
        tp = (msg.topic(), msg.partition())
        got[tp] = max(got.get(tp, 0), msg.offset() + 1)

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
    for topic, key, value in records:
        while True:
            try:
                producer.produce(topic, value, key=key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(60.0):
        raise RuntimeError("the schedule was not written within 60 s")
    if ends is not None:
        ends.put(got)
    return got


def threads_cpu() -> dict[str, float]:
    """CPU seconds so far of each thread of this process, by name (Linux ``/proc``; {} elsewhere):
    Python threads by their ``threading`` name, the others (librdkafka's ``rdk:*``) by their
    system name. Threads of the same name are summed."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: dict[str, float] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:  # the thread ended
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        name = names.get(int(tid), comm)
        if name.startswith("rdk:broker"):  # one per broker connection: rdk:broker1, rdk:broker-1...
            name = "rdk:broker*"
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


def shell_run(sched: Schedule, key_file: Path, seconds: float, mode: str, max_batch: int = 500,
              profile: tuple[str, Path] | None = None, bootstrap: str | None = None) -> dict[str, Any]:
    """One run of the worker loop over the first ``seconds`` of the schedule; CPU per frame.

    ``bootstrap``: on the broker there with the worker's production port (confluent-kafka) on fresh
    topics, instead of the in-memory port."""
    from pipeline.app import StreamWorker, WorkerSettings

    proc, msgs = core_inputs(sched, key_file, seconds, mode)
    broker: MemoryBroker | None = None
    rest: list[tuple[str, bytes, bytes]] = []
    if bootstrap is None:
        topics = Topics()
        broker = _broker(sched, msgs, topics)
        ends = {(t, p): len(part) for t in topics.raw_all for p, part in enumerate(broker.topics[t])}
    else:
        import uuid

        from connectors.kafka import ensure_topics

        topics = Topics.with_prefix(f"shellbench-{uuid.uuid4().hex[:8]}.")
        ensure_topics(bootstrap, topics.specs(DEFAULT_PARTITIONS))
        topic_of = {p.stream: topics.raw(MODALITIES[p.modality]) for p in sched.plans}
        records = [(topic_of[stream], key, value) for key, value, stream in msgs]
        warm = int(np.searchsorted(sched.due_ns, int(WARMUP_S * 1e9)))
        ends, rest = _produce(bootstrap, records[:warm]), records[warm:]
    target = {tp: n for tp, n in ends.items() if n}
    settings = WorkerSettings(key_file=key_file, per_window=mode == "per-window", topics=topics,
                              partitions=DEFAULT_PARTITIONS, max_batch=max_batch,
                              bootstrap=bootstrap or "127.0.0.1:9", group=f"{topics.prefix}bench")
    core_ns = [0]
    proc.process = _probe(proc.process, core_ns)  # type: ignore[method-assign]  # on this instance only
    tt = time.thread_time_ns
    profiler = _profiler(profile[0] if profile else None)

    async def run() -> dict[str, Any]:
        port = MemoryPort(broker, group="bench") if broker is not None else None
        worker = StreamWorker(settings, proc, port=port)
        deadline = time.monotonic() + HANG_S

        async def until(done: Any) -> None:
            while not done():
                if time.monotonic() > deadline:
                    raise TimeoutError("the worker did not consume the schedule")
                await asyncio.sleep(0.05 if port is not None else 0.005)

        await worker.start()
        if port is not None:
            await port.rebalance(set(ends))
        else:  # joining the group and recovering every partition (kafka-python reads) is start-up, not per frame
            await until(lambda: worker.consumed == target)
        writer = None
        if rest:  # the rest of the schedule, written by another process: its CPU is not the worker's
            import multiprocessing

            ctx = multiprocessing.get_context("spawn")
            queue = ctx.Queue()
            writer = ctx.Process(target=_produce, args=(bootstrap, rest, queue), daemon=True)
        if profiler is not None:
            profiler.enable() if profile and profile[0] == "cprofile" else profiler.start()
        th0 = threads_cpu()
        c0, p0, w0, f0, k0 = tt(), time.process_time_ns(), time.perf_counter_ns(), proc.stats.frames, core_ns[0]
        if writer is not None:
            writer.start()
            more = await asyncio.get_running_loop().run_in_executor(None, queue.get, True, HANG_S)
            writer.join()
            target.update(more)
        await until(lambda: worker.consumed == target)  # every batch processed and its output acknowledged
        c1, p1, w1, f1, k1 = tt(), time.process_time_ns(), time.perf_counter_ns(), proc.stats.frames, core_ns[0]
        th1 = threads_cpu()
        threads = {k: round(v - th0.get(k, 0.0), 2) for k, v in sorted(th1.items()) if v - th0.get(k, 0.0) > 0}
        if profiler is not None:
            profiler.disable() if profile and profile[0] == "cprofile" else profiler.stop()
        await worker.stop()
        return {"loop_ns": c1 - c0, "process_ns": p1 - p0, "wall_ns": w1 - w0, "core_ns": k1 - k0,
                "frames": f1 - f0, "checkpoints": worker.checkpoints, "releases": worker.processor.stats.releases,
                "threads": threads}

    logging.getLogger("biopriv").setLevel(logging.WARNING)
    logging.getLogger("pipeline").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PrivacyWarning per feature set: the worker logs them
        try:
            got = asyncio.run(run())
        finally:
            if bootstrap is not None:
                from connectors.kafka import delete_topics

                delete_topics(bootstrap, [t.name for t in topics.specs(DEFAULT_PARTITIONS)])
    if profiler is not None and profile is not None:
        _write_profile(profiler, profile[0], profile[1])
    n = got["frames"]
    loop_us, core_us = got["loop_ns"] / 1e3 / n, got["core_ns"] / 1e3 / n
    return {
        "mode": mode, "seconds_of_load": seconds, "frames": n, "max_batch": max_batch,
        "port": "memory" if bootstrap is None else "confluent", "releases": got["releases"],
        "checkpoints": got["checkpoints"], "wall_s": round(got["wall_ns"] / 1e9, 2),
        "loop_us_per_frame": round(loop_us, 1), "core_us_per_frame": round(core_us, 1),
        "shell_us_per_frame": round(loop_us - core_us, 1),
        "process_us_per_frame": round(got["process_ns"] / 1e3 / n, 1),
        # per thread (10 ms ticks): which of the process's threads spent the CPU beside the loop's
        "threads_us_per_frame": {k: round(v * 1e6 / n, 1) for k, v in got["threads"].items()},
    }


def _probe(process: Callable[[bytes, bytes | None], Any], acc: list[int]) -> Callable[..., Any]:
    """``process`` wrapped to add its thread CPU ns to ``acc[0]``: the ``core`` probe of a run, and
    the one :func:`probe_us` prices."""
    tt = time.thread_time_ns

    def timed(value: bytes, key: bytes | None = None) -> Any:
        c0 = tt()
        try:
            return process(value, key)
        finally:
            acc[0] += tt() - c0

    return timed


def probe_us(n: int = 100_000) -> float:
    """Thread CPU us the ``core`` probe adds per call (the wrapper and its two clock reads, about
    1 us each on a VM): part of it lands in ``core``, part in ``shell``."""
    tt = time.thread_time_ns

    def bare(value: bytes, key: bytes | None = None) -> None:
        return None

    timed = _probe(bare, [0])

    def per_call(fn: Any) -> float:
        t0 = tt()
        for _ in range(n):
            fn(b"", None)
        return (tt() - t0) / 1e3 / n

    return round(min(per_call(timed) for _ in range(3)) - min(per_call(bare) for _ in range(3)), 2)


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and best (least) of each per-frame figure over the runs."""
    import statistics

    out: dict[str, Any] = {"runs": len(runs), "frames": runs[0]["frames"], "releases": runs[0]["releases"]}
    for k in ("loop_us_per_frame", "core_us_per_frame", "shell_us_per_frame", "process_us_per_frame"):
        vals = [r[k] for r in runs]
        out[k] = {"median": round(statistics.median(vals), 1), "best": min(vals)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="standard")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of schedule fed to the worker")
    ap.add_argument("--repeat", type=int, default=3, help="runs per mode")
    ap.add_argument("--mode", choices=(*MODES, "both"), default="both",
                    help="per-window: the stress mode; study: the default study; both (default, interleaved)")
    ap.add_argument("--max-batch", type=int, default=500, help="the worker's --max-batch (messages per fetch)")
    ap.add_argument("--bootstrap", default=None, metavar="HOST:PORT",
                    help="run on this broker with the production port (confluent-kafka) instead of the in-memory one")
    prof = ap.add_mutually_exclusive_group()
    prof.add_argument("--profile", type=Path, default=None, help="pyinstrument tree of one extra run per mode")
    prof.add_argument("--cprofile", type=Path, default=None, help="cProfile listing of one extra run per mode")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    modes = MODES if args.mode == "both" else (args.mode,)

    load0, cal0 = announce()
    sched = timed_schedule(args.workload, args.seconds)
    with tempfile.TemporaryDirectory(prefix="biopriv-shell-") as td:
        key_file = Path(td) / "keys.json"
        runs = interleaved(
            modes, args.repeat,
            lambda mode: shell_run(sched, key_file, args.seconds, mode, args.max_batch, bootstrap=args.bootstrap),
            lambda mode, i, r: f"{mode} run {i} ({r['port']} port): {r['frames']} frames, {r['releases']} releases, "
            f"{r['checkpoints']} checkpoints, {r['wall_s']} s; CPU us/frame: loop {r['loop_us_per_frame']}, core "
            f"{r['core_us_per_frame']}, shell {r['shell_us_per_frame']}, process {r['process_us_per_frame']}; by thread "
            f"{r['threads_us_per_frame']}")
        kind, path = ("pyinstrument", args.profile) if args.profile else ("cprofile", args.cprofile)
        if path is not None:
            for mode in modes:
                out = mode_path(path, mode, modes)
                shell_run(sched, key_file, args.seconds, mode, args.max_batch, profile=(kind, out), bootstrap=args.bootstrap)
                print(f"{kind} profile of the {mode} mode: {out}")
    load1, cal1, probe = os.getloadavg(), calibration(), probe_us()
    print(f"\nload average before {[round(x, 2) for x in load0]}, after {[round(x, 2) for x in load1]}; "
          f"calibration before {cal0}, after {cal1}; the core probe costs {probe} us per frame")
    print("\n| mode | frames | releases | loop us/frame | core us/frame | shell us/frame | process us/frame |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    results = {m: summary(runs[m]) for m in modes}
    for m, s in results.items():
        print(f"| {m} | {s['frames']} | {s['releases']} | " + " | ".join(
            f"{s[k]['median']} (best {s[k]['best']})" for k in
            ("loop_us_per_frame", "core_us_per_frame", "shell_us_per_frame", "process_us_per_frame")) + " |")
    print("(median of the runs, best in brackets; shell = loop - core; the in-memory port's cost is in shell, "
          "the Kafka client's is not)")
    if args.json is not None:
        args.json.write_text(json.dumps({"load_before": load0, "load_after": load1, "calibration_before": cal0,
                                         "calibration_after": cal1, "probe_us_per_frame": probe, "modes": results,
                                         "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
