"""End-to-end latency and capacity of one worker process, against the passthrough floor, a
hand-written aiokafka + scipy / NeuroKit2 service and a Quix Streams peer around the same
processing core, all in one invocation on one host.

Run:  .venv/bin/python benchmarks/latency/run.py [--short] [--workload standard] [--duration S] [--profile]
      (or ``biopriv bench latency --short``)

For each system (``pipeline`` = ``biopriv worker``; ``passthrough`` and ``handwritten`` =
``systems.py``; ``quix`` = ``quix_peer.py``, a Quix Streams application calling the worker's
:class:`~pipeline.processor.Processor`), one after another, on its own topics (prefix ``bench-<run>-<system>.``, deleted
afterwards) and consumer group:

1. start the system as a subprocess (``OMP_NUM_THREADS=1``: numpy threads would fight the broker
   and the load generator for the 2 cores) and wait until its consumer group is stable;
2. send the pre-encoded frames of the workload open-loop at their fixed due times with aiokafka
   (acks=all, no linger), stamping ``t_send_ns``; the generator's own lag behind the schedule is
   recorded, so a slow generator cannot pass for low latency;
3. read the output topic in the same event loop and account every frame through the first
   record that covers it (:mod:`attribution`): latency = read-back time - due time of the frame
   that completed the record's window; HdrHistogram per phase; warm-up and the first seconds of
   each capacity step are excluded;
4. sample the system's consumer-group lag (log end - committed offsets on the raw topics) every
   second;
5. phases: warm-up + the measured standard load (x1); then, in a fresh session, capacity steps
   (fleet x0.25 ... x4, devices join at their step) until p99 > 50 ms, the lag keeps growing or
   the generator falls behind; capacity = the largest fleet that passed. ``--short`` continues
   the standard session with one x2 step instead (about a minute per system).

Before the systems, the processing core alone (:mod:`processor_cost`) is timed on the same frames
in process. With ``--profile`` a separate pyinstrument session of the worker is summarized.
Numbers depend on everything else running on the host: the load average before and after, the
broker's and the generator's CPU and the generator's lag are recorded with the results.

Writes benchmarks/results/latest.json, latest.md, latency_cdf.png, latency_vs_load.png and prints
the Markdown summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from attribution import Attributor  # noqa: E402
from hdrh.histogram import HdrHistogram  # noqa: E402
from processor_cost import processor_cost  # noqa: E402
from workload import MODALITIES, Schedule, Workload, build_schedule, load_workload, stamp  # noqa: E402

from benchmarks.machine import cpu_model, load_average  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PY = sys.executable
P99_LIMIT_MS = 50.0
GEN_LAG_LIMIT_MS = 20.0
#: (length, hop) of the shortest window per stream of the pipeline (and of the hand-written
#: service), s: a frame whose first covering window ended more than 1 s before the end of the
#: schedule must have been read back; if not, it is recorded as missing, at least that late.
WINDOW_S = {"eeg": (2.0, 0.5), "mic": (1.0, 0.5), "ppg": (10.0, 1.0), "ecg": (10.0, 1.0), "eda": (10.0, 1.0),
            "acc": (5.0, 1.0), "temp": (10.0, 5.0), "resp": (30.0, 5.0)}


def covering_end_ns(p: Any, seq: int, passthrough: bool) -> int:
    """Relative due time of the end of the first window that covers frame ``seq`` of plan ``p``."""
    if passthrough:
        return p.due_ns(seq)
    length, hop = WINDOW_S.get(p.stream, (1.0, 1.0))
    t = (p.due_ns(seq) - p.start_ns) / 1e9
    end = length if t <= length else length + np.ceil((t - length) / hop - 1e-9) * hop
    return p.start_ns + int(end * 1e9)
SYSTEMS = ("pipeline", "passthrough", "handwritten", "quix")
#: Systems whose releases carry the worker's latency headers (``--latency-headers``).
HEADER_SYSTEMS = ("pipeline", "quix")
PCTS = (50.0, 90.0, 99.0, 99.9)


def hist() -> HdrHistogram:
    return HdrHistogram(1, 600_000_000, 3)  # 1 us .. 600 s, 3 significant digits


def pct_ms(h: HdrHistogram) -> dict[str, float | None]:
    if h.get_total_count() == 0:
        return {"p50": None, "p90": None, "p99": None, "p99.9": None, "max": None, "count": 0}
    out: dict[str, Any] = {f"p{p:g}": h.get_value_at_percentile(p) / 1000.0 for p in PCTS}
    out["max"] = h.get_max_value() / 1000.0
    out["count"] = h.get_total_count()
    return out


class EpochClock:
    """Monotonic ns anchored to the epoch once (frames need epoch times, pacing a steady clock)."""

    def __init__(self) -> None:
        self._m0, self._w0 = time.monotonic_ns(), time.time_ns()

    def __call__(self) -> int:
        return self._w0 + time.monotonic_ns() - self._m0


@dataclass
class PhaseResult:
    latency: HdrHistogram = field(default_factory=hist)
    age: HdrHistogram = field(default_factory=hist)
    gen_lag: HdrHistogram = field(default_factory=hist)
    worker_side: HdrHistogram = field(default_factory=hist)
    by_stream: dict[str, HdrHistogram] = field(default_factory=dict)  # latency per stream of the release
    frames_sent: int = 0
    frames_accounted: int = 0
    records: int = 0
    missing: int = 0
    lag: list[tuple[float, int]] = field(default_factory=list)
    busy: list[tuple[float, int, int]] = field(default_factory=list)
    cpu: list[tuple[float, float]] = field(default_factory=list)


# -- broker and topics --------------------------------------------------------------------------


def ensure_broker(bootstrap: str) -> None:
    from connectors.kafka import check_broker
    from pipeline.errors import BrokerError

    try:
        check_broker(bootstrap, timeout_s=3.0)
    except BrokerError:
        print(f"no broker at {bootstrap}: starting deploy/kafka/local.sh up", flush=True)
        subprocess.run(["bash", str(ROOT / "deploy" / "kafka" / "local.sh"), "up"], check=True,
                       env={**os.environ, **BROKER_ENV})
        check_broker(bootstrap, timeout_s=30.0)


def private_broker(port: int, action: str) -> str:
    """Start (``up``) or stop (``down``) a broker of our own with ``deploy/kafka/local.sh`` on ``port``
    (data in a temporary directory; jars copied from the repo's ``.kafka/libs`` when assembled there),
    so that other users restarting the shared broker cannot void a session. Returns its bootstrap."""
    import shutil

    kdir = Path(tempfile.gettempdir()) / f"biopriv-latency-kafka-{port}"
    env = {**os.environ, "BIOPRIV_KAFKA_DIR": str(kdir), "BIOPRIV_KAFKA_PORT": str(port)}
    shared_libs = ROOT / ".kafka" / "libs"
    if action == "up" and not (kdir / "libs").exists() and (shared_libs / ".pom.sha1").exists():
        kdir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(shared_libs, kdir / "libs")
    subprocess.run(["bash", str(ROOT / "deploy" / "kafka" / "local.sh"), action], check=True, env=env)
    if action == "down":
        shutil.rmtree(kdir / "data", ignore_errors=True)
    return f"127.0.0.1:{port}"


def group_stable(bootstrap: str, group: str, timeout_s: float) -> bool:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            try:
                info = admin.describe_groups([group]).get(group, {})
            except Exception:  # noqa: BLE001 - e.g. no coordinator yet on a fresh broker
                info = {}
            if info.get("group_state") == "Stable" and info.get("members"):
                return True
            time.sleep(0.5)
        return False
    finally:
        admin.close()


class LagSampler(threading.Thread):
    """Every second: sum over the raw topics of log-end offset minus the group's committed offset."""

    def __init__(self, bootstrap: str, group: str, topics: list[str], clock: EpochClock) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.group, self.topics, self.clock = bootstrap, group, topics, clock
        self.samples: list[tuple[int, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        # A consumer that never subscribes does not join the group; it only reads its offsets.
        cons = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group, enable_auto_commit=False)
        tps = [TopicPartition(t, p) for t in self.topics for p in (cons.partitions_for_topic(t) or ())]
        try:
            while not self.stop.wait(1.0):
                with contextlib.suppress(Exception):
                    ends = cons.end_offsets(tps)
                    committed = {tp: cons.committed(tp) for tp in tps}
                    lag = sum(max(0, ends[tp] - (committed[tp] or 0)) for tp in tps)
                    self.samples.append((self.clock(), lag))
        finally:
            cons.close()


class OutputReader(threading.Thread):
    """Reads a subprocess's merged stdout/stderr, stamping lines; keeps its stats lines."""

    BUSY = re.compile(r"frames=(\d+) .*busy=(\d+) ms")

    def __init__(self, proc: subprocess.Popen, log_path: Path, clock: EpochClock) -> None:
        super().__init__(daemon=True)
        self.proc, self.log_path, self.clock = proc, log_path, clock
        self.stats: list[tuple[int, int, int]] = []  # (t_ns, frames, busy_ns)

    def run(self) -> None:
        assert self.proc.stdout is not None
        with self.log_path.open("w") as log:
            for line in self.proc.stdout:
                log.write(line)
                t = self.clock()
                if line.startswith("{"):
                    with contextlib.suppress(ValueError, KeyError):
                        d = json.loads(line)
                        self.stats.append((t, int(d["frames"]), int(d["busy_ns"])))
                    continue
                m = self.BUSY.search(line)
                if m:
                    self.stats.append((t, int(m.group(1)), int(m.group(2)) * 1_000_000))


BROKER_ENV: dict[str, str] = {}


def broker_pid() -> int | None:
    """The local broker's pid from ``deploy/kafka/local.sh status`` (for its CPU share), if any."""
    with contextlib.suppress(Exception):
        out = subprocess.run(["bash", str(ROOT / "deploy" / "kafka" / "local.sh"), "status"], capture_output=True,
                             text=True, timeout=20, env={**os.environ, **BROKER_ENV}).stdout
        m = re.search(r"pid (\d+)", out)
        return int(m.group(1)) if m else None
    return None


BROKER_PID: list[int | None] = [None]


def cpu_mark(clock: EpochClock, pid: int) -> tuple[int, float, float, float]:
    """(now, CPU s of the system under test, of this driver process, of the broker)."""
    b = BROKER_PID[0]
    return clock(), cpu_s(pid), cpu_s(os.getpid()), cpu_s(b) if b else float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU time of a process and its children so far, s."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in f[11:15]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


# -- one system ---------------------------------------------------------------------------------


#: ``--kafka-client`` of the pipeline worker (None: the worker's default).
KAFKA_CLIENT: list[str | None] = [None]
#: ``--worker-args``: more ``biopriv worker`` options for the pipeline worker (settings A/B runs).
WORKER_ARGS: list[str] = []


def system_command(system: str, bootstrap: str, group: str, prefix: str, key_file: Path, data_dir: Path,
                   profile_out: Path | None) -> list[str]:
    from connectors.kafka import Topics

    t = Topics.with_prefix(prefix)
    if system == "pipeline":
        base = ["-m", "pipeline.cli", "worker", "--bootstrap", bootstrap, "--group", group, "--topic-prefix", prefix,
                "--partitions", "6", "--per-window", "--latency-headers", "--key-file", str(key_file), "--data-dir", str(data_dir), "--stats-interval", "1",
                "--log-level", "info"]
        if KAFKA_CLIENT[0] is not None:
            base += ["--kafka-client", KAFKA_CLIENT[0]]
        base += WORKER_ARGS
        if profile_out is not None:
            return [PY, "-m", "pyinstrument", "-r", "pyisession", "-o", str(profile_out), *base]
        return [PY, *base]
    if system == "quix":
        return [PY, str(HERE / "quix_peer.py"), system, "--bootstrap", bootstrap, "--group", group,
                "--inputs", ",".join(t.raw_all), "--output", t.private, "--key-file", str(key_file), "--stats-interval", "1"]
    return [PY, str(HERE / "systems.py"), system, "--bootstrap", bootstrap, "--group", group,
            "--inputs", ",".join(t.raw_all), "--output", t.private, "--stats-interval", "1"]


async def drive(system: str, sched: Schedule, wl: Workload, bootstrap: str, prefix: str, device_of: dict[str, str],
                clock: EpochClock, lag: LagSampler, pid: int, out_reader: OutputReader,
                stop_on_fail: bool) -> tuple[list[PhaseResult], dict[str, Any]]:
    """Send the schedule open-loop, read the output back, account frames per phase."""
    import msgpack
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from connectors.kafka import Topics

    topics = Topics.with_prefix(prefix)
    raw = [topics.raw(m) for m in MODALITIES]
    phases = wl.phases
    results = [PhaseResult() for _ in phases]
    plans = {(p.device, p.stream): p for p in sched.plans}
    start_box: list[int] = [0]

    def due(device: str, stream: str, seq: int) -> int:
        return start_box[0] + plans[(device, stream)].due_ns(seq)

    attr = Attributor(due)
    phase_edges = np.array([ph.start_s for ph in phases[1:]]) * 1e9

    def phase_of(rel_ns: int) -> int:
        return int(np.searchsorted(phase_edges, rel_ns, side="right"))

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0, max_request_size=2 * 1024 * 1024,
                                max_batch_size=256 * 1024)
    consumer = AIOKafkaConsumer(topics.private, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", fetch_min_bytes=1, fetch_max_wait_ms=100,
                                max_partition_fetch_bytes=8 * 1024 * 1024)
    await producer.start()
    await consumer.start()
    reader_stop = asyncio.Event()
    info: dict[str, Any] = {"send_errors": 0, "stopped_after_phase": None, "parse_errors": 0}

    def on_sent(fut: asyncio.Future) -> None:
        if fut.exception() is not None:
            info["send_errors"] += 1

    async def read() -> None:
        while not reader_stop.is_set():
            batches = await consumer.getmany(timeout_ms=50)
            now = clock()
            for records in batches.values():
                for r in records:
                    try:
                        if system == "passthrough":
                            o = msgpack.unpackb(r.value, raw=False)
                            dev, stream, last = o["device"], o["stream"], o["seq"]
                            worker_ns = None
                        else:
                            o = json.loads(r.value)
                            dev = device_of[o["pseudonym"]] if system in HEADER_SYSTEMS else o["device"]
                            if system in HEADER_SYSTEMS:  # opt-in headers (--latency-headers); the value holds none of it
                                h = dict(r.headers or ())
                                stream, last = o["stream"], int(h["biopriv-last-seq"])
                                worker_ns = int(h["biopriv-t-release-ns"]) - int(h["biopriv-t-frame-send-ns"])
                            else:  # the hand-written service puts them in the value
                                stream, last = o["stream"], o["last_seq"]
                                worker_ns = o["t_release_ns"] - o["t_frame_send_ns"]
                    except (ValueError, KeyError, TypeError):
                        info["parse_errors"] += 1
                        continue
                    a = attr.account(dev, stream, int(last), now)
                    if a.frames == 0:
                        continue
                    rel = a.due_ns - start_box[0]
                    k = phase_of(rel)
                    res = results[k]
                    res.records += 1
                    m_from = phases[k].measure_from_s * 1e9
                    if rel < m_from:
                        continue
                    res.frames_accounted += sum(1 for age in a.ages_ns if now - age - start_box[0] >= m_from)
                    res.latency.record_value(max(1, min(a.latency_ns // 1000, 599_000_000)), a.frames)
                    if stream not in res.by_stream:
                        res.by_stream[stream] = hist()
                    res.by_stream[stream].record_value(max(1, min(a.latency_ns // 1000, 599_000_000)), a.frames)
                    for age in a.ages_ns:
                        res.age.record_value(max(1, min(age // 1000, 599_000_000)))
                    if worker_ns is not None:
                        res.worker_side.record_value(max(1, min(worker_ns // 1000, 599_000_000)))

    def phase_fails(k: int) -> tuple[bool, str]:
        res, ph = results[k], phases[k]
        p99 = pct_ms(res.latency)["p99"]
        g99 = pct_ms(res.gen_lag)["p99"]
        fps = wl.frames_per_s(ph.multiplier)
        t_a, t_b = start_box[0] + ph.measure_from_s * 1e9, start_box[0] + ph.end_s * 1e9
        pts = [(t, n) for t, n in lag.samples if t_a <= t <= t_b]
        res.lag = [((t - start_box[0]) / 1e9, n) for t, n in pts]
        growing = False
        if len(pts) >= 3:
            x = np.array([t for t, _ in pts], dtype=np.float64) / 1e9
            y = np.array([n for _, n in pts], dtype=np.float64)
            slope = float(np.polyfit(x - x[0], y, 1)[0])
            growing = slope * (x[-1] - x[0]) > fps * 1.0 and y[-1] > fps * 1.0
        reasons = []
        if p99 is None or p99 > P99_LIMIT_MS:
            reasons.append(f"p99 {p99} ms > {P99_LIMIT_MS:g}" if p99 is not None else "no frame read back")
        if growing:
            reasons.append("consumer lag keeps growing")
        if g99 is not None and g99 > GEN_LAG_LIMIT_MS:
            reasons.append(f"load generator p99 {g99:.1f} ms behind schedule")
        return bool(reasons), "; ".join(reasons)

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.5)
    start = clock() + 300_000_000
    start_box[0] = start
    values, at, dues, pidx = sched.values, sched.stamp_at, sched.due_ns, sched.plan_idx
    mods = [sched.plans[i].modality for i in range(len(sched.plans))]
    keys = sched.keys
    cur_phase = 0
    phase_end_ns = [int(ph.end_s * 1e9) for ph in phases]
    cpu_marks: list[tuple[int, float, float, float]] = [cpu_mark(clock, pid)]
    checked: list[dict[str, Any]] = []
    n_behind = 0
    check_at: int | None = None  # relative ns at which the phase before cur_phase is judged
    stop = False
    for i in range(len(values)):
        d_rel = int(dues[i])
        if check_at is not None and d_rel >= check_at:
            # Judge the previous phase 2 s into the next one, once its last outputs had time to arrive.
            check_at = None
            fail, why = phase_fails(cur_phase - 1)
            if fail and stop_on_fail:
                info["stopped_after_phase"] = phases[cur_phase - 1].name
                break
        if d_rel >= phase_end_ns[cur_phase]:
            cpu_marks.append(cpu_mark(clock, pid))
            if cur_phase + 1 == len(phases):
                stop = True
                break
            cur_phase += 1
            check_at = phase_end_ns[cur_phase - 1] + 2_000_000_000
        target = start + d_rel
        now = clock()
        if target > now:
            await asyncio.sleep((target - now) / 1e9)
            now = clock()
            n_behind = 0
        else:
            n_behind += 1
            if n_behind % 32 == 0:
                await asyncio.sleep(0)
        p = int(pidx[i])
        fut = await producer.send(raw[mods[p]], stamp(values[i], int(at[i]), now), key=keys[p])
        fut.add_done_callback(on_sent)
        res = results[cur_phase]
        res.frames_sent += 1
        if d_rel >= phases[cur_phase].measure_from_s * 1e9:
            res.gen_lag.record_value(max(1, min((now - target) // 1000, 599_000_000)))
    if info["stopped_after_phase"] is not None:
        cur_phase -= 1  # the phase just started is not reported: it ran for 2 s only
    elif not stop:
        cpu_marks.append(cpu_mark(clock, pid))
    sent_until_rel = clock() - start
    await producer.flush()
    # Drain: 3 s, then until the system's group lag is 0 (at most 12 s).
    last_phase = cur_phase
    t_drain = clock()
    while clock() - t_drain < (12_000_000_000 if phases[-1].end_s > 60 else 6_000_000_000):
        await asyncio.sleep(0.5)
        if clock() - t_drain > 3_000_000_000 and lag.samples and lag.samples[-1][1] == 0 and lag.samples[-1][0] > t_drain:
            await asyncio.sleep(1.0)
            break
    for k in range(last_phase + 1):
        fail, why = phase_fails(k)
        checked.append({"phase": phases[k].name, "fail_at_end_of_phase": fail, "why": why})
    reader_stop.set()
    await reader
    # Frames that must have been read back by now but never were: recorded as at least this late.
    now = clock()
    for p in sched.plans:
        if p.start_ns >= sent_until_rel:
            continue
        limit = min(sent_until_rel, phase_end_ns[last_phase]) - 1_000_000_000
        seq = attr.next_seq(p.device, p.stream)
        while covering_end_ns(p, seq, system == "passthrough") <= limit:
            rel = p.due_ns(seq)
            k = phase_of(rel)
            if rel >= phases[k].measure_from_s * 1e9:
                results[k].missing += 1
                results[k].latency.record_value(max(1, min((now - start - rel) // 1000, 599_000_000)))
            seq += 1
    for k, ph in enumerate(phases):
        t_a, t_b = start + ph.measure_from_s * 1e9, start + ph.end_s * 1e9
        results[k].busy = [((t - start) / 1e9, f, b) for t, f, b in out_reader.stats if t_a - 1.5e9 <= t <= t_b + 1.5e9]
    info["cpu_marks"] = [((t - start) / 1e9, *c) for t, *c in cpu_marks]
    info["phase_checks"] = checked
    info["phases_run"] = last_phase + 1
    info["stale_records"] = attr.stale
    await consumer.stop()
    await producer.stop()
    return results, info


def run_system(system: str, sched: Schedule, wl: Workload, bootstrap: str, run_id: str, key_file: Path,
               device_of: dict[str, str], tmp: Path, stop_on_fail: bool, tag: str,
               profile_out: Path | None = None) -> dict[str, Any]:
    """One session of one system: fresh topics and group, the schedule, then stop and clean up."""
    from connectors.kafka import Topics, delete_topics, ensure_topics

    ensure_broker(bootstrap)
    BROKER_PID[0] = broker_pid()
    prefix = f"bench-{run_id}-{system}-{tag}."
    group = f"bench-{run_id}-{system}-{tag}"
    topics = Topics.with_prefix(prefix)
    ensure_topics(bootstrap, topics.specs(6))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    cmd = system_command(system, bootstrap, group, prefix, key_file, tmp / f"data-{system}-{tag}", profile_out)
    clock = EpochClock()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log_dir = Path(tempfile.gettempdir()) / f"biopriv-latency-{run_id}"
    log_dir.mkdir(parents=True, exist_ok=True)
    out_reader = OutputReader(proc, log_dir / f"{system}-{tag}.log", clock)
    out_reader.start()
    lag = LagSampler(bootstrap, group, list(topics.raw_all), clock)
    t_start = time.monotonic()
    try:
        if not group_stable(bootstrap, group, 90.0):
            raise RuntimeError(f"{system}: consumer group {group} did not become stable in 90 s (log {out_reader.log_path})")
        startup_s = time.monotonic() - t_start
        lag.start()
        phases, info = asyncio.run(drive(system, sched, wl, bootstrap, prefix, device_of, clock, lag, proc.pid,
                                         out_reader, stop_on_fail))
        info["startup_s"] = round(startup_s, 2)
    finally:
        lag.stop.set()
        proc.terminate()
        try:
            proc.wait(timeout=60 if profile_out else 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out_reader.join(timeout=5)
        if lag.is_alive():
            lag.join(timeout=5)
        with contextlib.suppress(Exception):
            from kafka import KafkaAdminClient

            admin = KafkaAdminClient(bootstrap_servers=bootstrap)
            try:  # the session's topics and Faust's own (``<group>-__assignor-__leader``...)
                names = [n for n in admin.list_topics() if n.startswith(prefix) or n.startswith(group + "-")]
            finally:
                admin.close()
            delete_topics(bootstrap, names)
    if BROKER_PID[0] is None or broker_pid() != BROKER_PID[0]:
        raise BrokerRestarted(f"{system} {tag}: the broker was restarted during the session (pid {BROKER_PID[0]} -> {broker_pid()})")
    return summarize(system, wl, phases, info, tag)


class BrokerRestarted(RuntimeError):
    """The shared local broker went away during a session (another user restarted it)."""


def run_system_retry(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """:func:`run_system`, once more if the broker was restarted under it (the session is void)."""
    try:
        return run_system(*args, **kwargs)
    except BrokerRestarted as exc:
        print(f"  {exc}: session discarded, running it again", flush=True)
        time.sleep(5)
        out = run_system(*args, **kwargs)
        out["info"]["retried_after_broker_restart"] = True
        return out


def summarize(system: str, wl: Workload, phases: list[PhaseResult], info: dict[str, Any], tag: str) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    marks = info["cpu_marks"]
    for k, (ph, r) in enumerate(zip(wl.phases, phases, strict=True)):
        if k >= info["phases_run"]:
            break
        measured_s = ph.end_s - ph.measure_from_s
        busy_us = None
        if len(r.busy) >= 2:
            (_, f0, b0), (_, f1, b1) = r.busy[0], r.busy[-1]
            busy_us = (b1 - b0) / 1e3 / (f1 - f0) if f1 > f0 else None
        cpu: dict[str, float | None] = {"system": None, "load_generator_and_reader": None, "broker": None}
        if k + 1 < len(marks) and marks[k + 1][0] > marks[k][0]:
            dt = marks[k + 1][0] - marks[k][0]
            for j, name in enumerate(cpu, start=1):
                v = 100.0 * (marks[k + 1][j] - marks[k][j]) / dt
                cpu[name] = None if v != v else round(v, 1)
        check = next((c for c in info["phase_checks"] if c["phase"] == ph.name), None)
        out.append({
            "session": tag,
            "phase": ph.name,
            "multiplier": ph.multiplier,
            "fleet": wl.fleet(ph.multiplier),
            "offered_frames_per_s": wl.frames_per_s(ph.multiplier),
            "measured_s": measured_s,
            "latency_ms": pct_ms(r.latency),
            "latency_ms_by_stream": {k: pct_ms(h) for k, h in sorted(r.by_stream.items())},
            "frame_age_ms": pct_ms(r.age),
            "send_to_release_built_ms": pct_ms(r.worker_side),
            "generator_lag_ms": pct_ms(r.gen_lag),
            "frames_sent": r.frames_sent,
            "frames_accounted": r.frames_accounted,
            "frames_missing": r.missing,
            "throughput_frames_per_s": r.frames_accounted / measured_s,
            "output_records": r.records,
            "consumer_lag_frames": {"max": max((n for _, n in r.lag), default=None),
                                    "last": r.lag[-1][1] if r.lag else None, "samples": r.lag},
            "busy_us_per_frame": busy_us,
            "cpu_percent_of_one_core": cpu["system"],
            "cpu_percent_by_process": cpu,
            "passed": None if check is None else not check["fail_at_end_of_phase"],
            "why_failed": None if check is None else check["why"],
            "_latency_hist": r.latency,
        })
    passing = [p for p in out if p["passed"]]
    cap = max(passing, key=lambda p: p["multiplier"]) if passing else None
    all_pass = bool(out) and all(p["passed"] for p in out) and info["phases_run"] == len(wl.phases)
    return {
        "system": system,
        "phases": out,
        "capacity": None if cap is None else {
            "multiplier": cap["multiplier"], "devices": cap["fleet"], "devices_total": sum(cap["fleet"].values()),
            "frames_per_s": cap["offered_frames_per_s"], "lower_bound_only": all_pass,
        },
        "info": {k: v for k, v in info.items() if k != "cpu_marks"},
    }


# -- profile ------------------------------------------------------------------------------------


#: Profile categories: (name, function-name test, path suffix). A node that matches is counted
#: with its inclusive time and not descended into; everything else is counted by self time.
PROFILE_AREAS = (
    ("processing core (Processor.process)", lambda f: f.endswith("Processor.process") or f == "process", "pipeline/processor.py"),
    ("durable-state checkpoint (StreamWorker._checkpoint_step/_write, pipeline.state)",
     lambda f: any(k in f for k in ("checkpoint", "_encode", "_write", "_begin")), "pipeline/app.py"),
    ("durable-state checkpoint (StreamWorker._checkpoint_step/_write, pipeline.state)", lambda f: True, "pipeline/state.py"),
    ("durable-state checkpoint (StreamWorker._checkpoint_step/_write, pipeline.state)", lambda f: True,
     "pipeline/durability.py"),
    ("publishing releases (StreamWorker._publish -> the port's send)", lambda f: f.endswith("_publish"), "pipeline/app.py"),
    ("Kafka fetch (aiokafka Fetcher: fetch requests and responses coded in Python)", lambda f: True, "aiokafka/consumer/fetcher.py"),
    ("idle (event loop waiting in epoll)", lambda f: "epoll" in f or f.endswith("select"), ""),
    # uvloop's loop is C: its epoll wait and scheduling show as self time of mode's Worker frame
    ("idle + uvloop's own work (C: epoll wait, scheduling)", lambda f: f == "[self]", "mode/worker.py"),
    ("start-up (imports)", lambda f: f == "<module>", ""),
)
_LINE = re.compile(r"^(?P<indent>.*?)[├└]─ (?P<t>\d+\.\d+) (?P<fn>\S.*?)\s{2,}(?P<path>\S+)\s*$|^(?P<indent0>\s*)(?P<t0>\d+\.\d+) (?P<fn0>\S.*?)\s{2,}(?P<path0>\S+)\s*$")


def trim_tree(text_tree: Path, min_s: float = 0.3) -> None:
    """Keep the header and the tree lines of at least ``min_s`` seconds (the full tree is megabytes)."""
    keep = []
    in_tree = False
    for line in text_tree.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if m is None:
            if not in_tree:
                keep.append(line)
            continue
        in_tree = True
        if float(m.group("t") or m.group("t0")) >= min_s:
            keep.append(line)
    text_tree.write_text("\n".join(keep) + "\n")


def profile_summary(text_tree: Path, top: int = 12) -> dict[str, Any]:
    """Where the worker's main thread spends its wall time, from pyinstrument's text tree
    (``--show-all``): inclusive time of the areas in :data:`PROFILE_AREAS`, the rest of the busy
    time (aiokafka, asyncio, mode: the shell) and the shell's top functions by self time."""
    nodes: list[tuple[int, float, str, str]] = []
    for line in text_tree.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        if m.group("t") is not None:
            nodes.append((len(m.group("indent")) + 1, float(m.group("t")), m.group("fn"), m.group("path")))
        else:
            nodes.append((len(m.group("indent0")), float(m.group("t0")), m.group("fn0"), m.group("path0")))
    if not nodes:
        return {}
    wall = nodes[0][1]
    # Direct children by indentation: a stack of open nodes.
    child_sum = [0.0] * len(nodes)
    stack: list[int] = []
    for i, (depth, t, _, _) in enumerate(nodes):
        while stack and nodes[stack[-1]][0] >= depth:
            stack.pop()
        if stack:
            child_sum[stack[-1]] += t
        stack.append(i)
    areas: dict[str, float] = {}
    shell_self: dict[str, float] = {}
    skip_below: int | None = None
    for i, (depth, t, fn, path) in enumerate(nodes):
        if skip_below is not None and depth > skip_below:
            continue
        skip_below = None
        path_file = path.split(":")[0]
        hit = None if i == 0 else next(
            (name for name, test, suffix in PROFILE_AREAS if path_file.endswith(suffix) and test(fn)), None)
        if hit is not None:
            areas[hit] = areas.get(hit, 0.0) + t
            skip_below = depth
            continue
        self_t = max(0.0, t - child_sum[i])
        if self_t > 0:
            key = f"{fn} ({path_file.split('site-packages/')[-1]})"
            shell_self[key] = shell_self.get(key, 0.0) + self_t
    shell = sum(shell_self.values())
    areas["rest of the shell: the Kafka port and client, asyncio, mode (by self time)"] = shell
    items = sorted(shell_self.items(), key=lambda kv: -kv[1])[:top]
    return {
        "profiler": "pyinstrument, the worker process's event-loop thread (processing, sends and checkpoints; the Kafka client's consume and delivery-report threads are not in it)",
        "wall_s": wall,
        "areas_percent_of_wall": {k: round(100 * v / wall, 1) for k, v in sorted(areas.items(), key=lambda kv: -kv[1])},
        "areas_s": {k: round(v, 2) for k, v in areas.items()},
        "shell_top_self": [{"function": k, "seconds": round(v, 3), "percent_of_wall": round(100 * v / wall, 1)} for k, v in items],
    }


# -- report -------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = cpu_model()
    mem = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = round(int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024, 1)
    import aiokafka
    import faust

    quix = {}
    with contextlib.suppress(ImportError):
        import confluent_kafka
        import quixstreams

        quix = {"quixstreams": quixstreams.__version__, "librdkafka": confluent_kafka.libversion()[0]}

    kafka_v = "unknown"
    with contextlib.suppress(Exception):
        pom = (ROOT / "deploy" / "kafka" / "pom.xml").read_text()
        m = re.search(r"<kafka\.version>([^<]+)<", pom) or re.search(r"kafka_2\.1\d</artifactId>\s*<version>([^<]+)<", pom)
        kafka_v = m.group(1) if m else kafka_v
    return {
        "cpus": os.cpu_count(), "cpu_model": cpu, "memory_gib": mem, "os": platform.platform(),
        "python": platform.python_version(), "numpy": np.__version__, "faust_streaming": faust.__version__,
        "aiokafka": aiokafka.__version__, **quix, "kafka_broker": kafka_v,
        "note": "broker, load generator + reader, and the system under test on this one host",
    }


def kafka_client_default() -> str:
    """The worker's Kafka client when ``--kafka-client`` is not given."""
    from connectors.kafka import KAFKA_CLIENT as default

    return os.environ.get("BIOPRIV_KAFKA_CLIENT") or default


def code_under_test() -> dict[str, Any]:
    """Git commit and the uncommitted files under pipeline/ and connectors/ (the worker runs from the tree)."""
    out: dict[str, Any] = {"git_head": None, "uncommitted": []}
    with contextlib.suppress(Exception):
        out["git_head"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                         text=True, timeout=10).stdout.strip() or None
        st = subprocess.run(["git", "status", "--porcelain", "--", "pipeline", "connectors"], cwd=ROOT,
                            capture_output=True, text=True, timeout=10).stdout
        out["uncommitted"] = sorted(line[3:] for line in st.splitlines() if line.strip())
    return out


def fmt(v: float | None, nd: int = 1) -> str:
    return "n/a" if v is None else f"{v:,.{nd}f}"


def fmt_x(v: float | None) -> str:
    """A ratio as ``1.23x``, or ``n/a``."""
    return "n/a" if v is None else f"{v:,.2f}x"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def peer_target(p99: float | None, peer_p99: float | None, capacity: float | None,
                peer_capacity: float | None) -> dict[str, Any]:
    """The done-when of the Quix Streams peer: the pipeline's p99 at x1 no higher, its capacity
    no lower (unknown when either system was not run or a capacity is missing)."""
    value = (f"p99 {fmt(p99, 2)} vs {fmt(peer_p99, 2)} ms; capacity {fmt(capacity, 0)} vs "
             f"{fmt(peer_capacity, 0)} frames/s")
    if None in (p99, peer_p99, capacity, peer_capacity):
        return {"value": value, "met": None}
    assert p99 is not None and peer_p99 is not None and capacity is not None and peer_capacity is not None
    return {"value": value, "met": p99 <= peer_p99 and capacity >= peer_capacity}


def write_report(doc: dict[str, Any], systems: dict[str, dict[str, Any]], profile: dict[str, Any] | None) -> str:
    RESULTS.mkdir(parents=True, exist_ok=True)
    plots(systems)
    for s in systems.values():
        for ph in s["phases"]:
            ph.pop("_latency_hist", None)
    doc["systems"] = systems
    if profile is not None:
        doc["profile"] = profile
    (RESULTS / "latest.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = markdown(doc)
    (RESULTS / "latest.md").write_text(md)
    return md


def plots(systems: dict[str, dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, s in systems.items():
        if not s["phases"]:
            continue
        h: HdrHistogram = s["phases"][0]["_latency_hist"]
        if h.get_total_count() == 0:
            continue
        xs, ys = [], []
        for it in h.get_recorded_iterator():
            xs.append(it.value_iterated_to / 1000.0)
            ys.append(it.total_count_to_this_value / h.get_total_count())
        ax.step(xs, ys, where="post", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("per-frame latency, ms (read-back minus due time; log scale)")
    ax.set_ylabel("fraction of frames")
    ax.axvline(P99_LIMIT_MS, color="grey", ls="--", lw=0.8)
    ax.set_title("Latency CDF at the standard load (same run)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "latency_cdf.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, s in systems.items():
        ramp = [p for p in s["phases"] if p["session"] == "ramp"] or s["phases"]
        pts = sorted((p["offered_frames_per_s"], p["latency_ms"]["p99"], p["latency_ms"]["p50"]) for p in ramp
                     if p["latency_ms"]["p99"] is not None)
        if not pts:
            continue
        line = ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], marker="o", label=f"{name} p99")[0]
        ax.plot([x for x, _, _ in pts], [z for _, _, z in pts], marker=".", ls=":", color=line.get_color(),
                label=f"{name} p50")
    ax.axhline(P99_LIMIT_MS, color="grey", ls="--", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("offered load, frames/s")
    ax.set_ylabel("latency, ms (log scale)")
    ax.set_title("Latency against load (one worker process)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "latency_vs_load.png", dpi=110)
    plt.close(fig)


def core_split(tree: Path) -> dict[str, float]:
    """Shares of ``Processor.process`` in the core profile (first occurrence of each function)."""
    if not tree.exists():
        return {}
    names = {"features (FeatureSet.compute)": "FeatureSet.compute", "frame decode + validation": "decode_frame",
             "privacy engine": "PrivacyEngine.privatize", "windows": "Windower.push", "release record (JSON)": "release_record"}
    text = tree.read_text(errors="replace")
    m = re.search(r"(\d+\.\d+) Processor\.process ", text)
    if not m:
        return {}
    total = float(m.group(1))
    out = {}
    for label, fn in names.items():
        mm = re.search(r"(\d+\.\d+) " + re.escape(fn) + " ", text)
        if mm:
            out[label] = round(100 * float(mm.group(1)) / total, 1)
    return out


#: The worker before the batch loop (``biopriv bench latency --profile --private-broker 19092``, run b0850c83,
#: git 875007e, 2026-11-25, same host): an ``@app.agent`` over a Faust stream.
BEFORE_BATCH_LOOP = {"p50_ms": 46.66, "p99_ms": 514.05, "capacity_frames_per_s": 390, "cpu_percent": 86,
                     "faust_per_event_percent": 48.8, "checkpoint_percent": 7.0}


def findings(doc: dict[str, Any]) -> list[str]:
    """What the numbers say, what was done about the largest items, and what is left."""
    core = doc.get("processor_core") or {}
    prof = doc.get("profile") or {}
    areas = prof.get("areas_percent_of_wall", {})
    per = core.get("per_stream", {})
    top = sorted(per.items(), key=lambda kv: -kv[1]["cpu_ms_per_s_of_load"])[:4]
    pipe = doc["systems"].get("pipeline", {}).get("phases", [])
    cpu = pipe[0]["cpu_percent_by_process"] if pipe else {}
    b = BEFORE_BATCH_LOOP
    L = ["", "## Findings, what was done about the largest items, what is left", ""]
    if pipe and core:
        L.append(
            f"- **CPU at x1:** the worker used {fmt(cpu.get('system'), 0)}% of a core, the broker {fmt(cpu.get('broker'), 0)}% "
            f"and the load generator + reader {fmt(cpu.get('load_generator_and_reader'), 0)}%, on 2 cores shared with other "
            f"users' processes (see the load averages). The processing core alone needs "
            f"{core.get('cpu_percent_of_one_core_at_this_load')}% of a core at this load ({core.get('mean_us_per_frame')} "
            "us/frame); the rest of the worker's CPU is Kafka I/O and the event loop.")
    if areas:
        L.append("- **Live profile:** " + ", ".join(f"{k} {v}%" for k, v in areas.items()) + ".")
    if top:
        split = core_split(RESULTS / "profile_core.txt")
        L.append("- **Core, by stream (CPU ms per second of load):** " + ", ".join(
            f"{k} {v['cpu_ms_per_s_of_load']}" for k, v in top) + "." + (
            " In `profile_core.txt`: " + ", ".join(f"{k} {v}%" for k, v in split.items()) + " of `Processor.process`."
            if split else ""))
    L += [
        "",
        "What was done (`pipeline/app.py`, `connectors/`, `pipeline/features/`), largest item first. Before, the "
        f"worker was a Faust agent: p50 {b['p50_ms']} ms, p99 {b['p99_ms']} ms at x1, capacity "
        f"{b['capacity_frames_per_s']} frames/s, {b['cpu_percent']}% of a core; Faust's per-event path took "
        f"{b['faust_per_event_percent']}% of the main thread and the checkpoint {b['checkpoint_percent']}% (run b0850c83, "
        "git 875007e).",
        "",
        "1. **Batches below Faust's per-event path.** The Faust app hosts one `StreamWorker` service: a fetch -> "
        "`Processor.process` -> send loop over a narrow Kafka port (`connectors/port.py`), yielding every 2 ms of "
        "processing so that releases go out during a batch.",
        "2. **The 1 s checkpoint does not stall the loop.** Device records are encoded between batches, 2 ms at a time, "
        "and written by a background task (encoding all 140 at once held the loop 35-100 ms every second).",
        "3. **librdkafka behind the port** (`connectors/confluent.py`, the default client): batch consume in a thread, "
        "idempotent producer without linger; against aiokafka behind the same port, lower p50 and p99 in alternating "
        "runs (`ab_clients.md`). Fetches return at 8 KiB or 5 ms (`--fetch-min-bytes`, `--fetch-max-wait-ms`).",
        "4. **Core per frame** (`core.md`): study reports from the window's value array, partial feature computation "
        "(what the study reads only), cheaper decode, beat detection and EEG relative powers; bitwise the same outputs "
        "(`benchmarks/core_golden.py`).",
        "5. **Shell per frame** (`shell.md`, `benchmarks/shell_bench.py`): the loop's own Python is 9-35 us per frame "
        "and the Kafka client's threads another 33-54 in per-window mode; `busy` above is the core's wall time in the "
        "live worker, inflated by the other processes on the 2 cores, not the shell's cost.",
        "",
        "Left, largest first:",
        "",
        "1. **Tail latency at moderate load:** the pipeline's p99 grows faster with load than the Quix Streams peer's "
        "on the same core, with the worker well below a full core: not CPU. It is in every stream alike (a delay of "
        "the whole loop); garbage-collector pauses were one cause (`gc.freeze()` at start, `ab_gc.md`), a batch "
        "processed in arrival order changed nothing measurable (`ab_order.md`); the rest is open.",
        "2. **Core cost:** frame decode about a quarter of the default study's core, windows a fifth, heart-rate beat "
        "detection re-filters the whole window every hop (a zero-phase filter: incremental detection would not find "
        "the same beats).",
        "3. **Scale out:** the raw topics have 6 partitions; on a bigger host, one worker process per core. On this "
        "2-core host the broker and the load generator take most of the second core.",
    ]
    return L


def by_stream_table(systems: dict[str, Any]) -> list[str]:
    """p50 / p99 ms at x1 per stream of the releases (which streams make the tail), per system."""
    rows = {n: s["phases"][0].get("latency_ms_by_stream") for n, s in systems.items() if s["phases"]}
    rows = {n: r for n, r in rows.items() if r}
    streams = sorted({k for r in rows.values() for k in r})
    if not streams:
        return []
    L = ["Latency at x1 by stream (p50 / p99 ms; a frame counts under the stream of the release that covers it):", "",
         "| system | " + " | ".join(streams) + " |", "|---|" + "---:|" * len(streams)]
    for n, r in rows.items():
        L.append(f"| {n} | " + " | ".join(
            f"{fmt(r[k]['p50'], 1)} / {fmt(r[k]['p99'], 1)}" if k in r else "n/a" for k in streams) + " |")
    return [*L, ""]


def markdown(doc: dict[str, Any]) -> str:
    m, wl, systems = doc["machine"], doc["workload"], doc["systems"]
    L = [
        "# Latency benchmark: pipeline worker vs passthrough floor vs hand-written service vs Quix Streams peer",
        "",
        f"Command: `{doc['command']}`  ",
        f"Machine: {m['cpus']} CPUs, {m['cpu_model']}, {m['memory_gib']} GiB; {m['os']}; Python {m['python']}, "
        f"faust-streaming {m['faust_streaming']}, aiokafka {m['aiokafka']}"
        + (f", quixstreams {m['quixstreams']} (librdkafka {m['librdkafka']})" if "quixstreams" in m else "")
        + f"; Kafka {m['kafka_broker']} KRaft on the same host  ",
        f"Pipeline worker's Kafka client: {doc.get('pipeline_kafka_client', 'aiokafka')}"
        + (f"; more worker options: `{doc['pipeline_worker_args']}`" if doc.get("pipeline_worker_args") else "") + "  ",
        f"Load average (1, 5, 15 min) before / after: {doc['load_average_before']} / {doc['load_average_after']}  ",
        f"Date: {doc['date']}; run {doc['run_id']}; {'short' if doc['short'] else 'full'} run; code: git "
        f"{doc['code_under_test']['git_head']}"
        + (f" plus uncommitted changes in {len(doc['code_under_test']['uncommitted'])} file(s) of pipeline/ and connectors/"
           if doc["code_under_test"]["uncommitted"] else ""),
        "",
        f"Workload `{wl['name']}`: {wl['description']}; **{fmt(wl['frames_per_s'], 0)} frames/s** at x1. "
        f"Signals: {'; '.join(f'{k}: {v}' for k, v in wl['signals'].items())}.",
        "",
        "Latency of a frame = time its output is read back by the benchmark's consumer minus the **due time** "
        "(fixed open-loop schedule) of the frame that completed the output's window; frames that complete no "
        "window are accounted through the next output that covers them, with that output's latency. "
        f"Warm-up ({doc['phases'][0]['measure_from_s']:g} s) and the first seconds of each capacity step are excluded. "
        "Workers run with `OMP_NUM_THREADS=1`.",
        "",
        "## At the standard load (x1)",
        "",
        "| system | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | frames/s | generator lag p99 ms | max lag (frames) | busy us/frame | CPU % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in systems.items():
        if not s["phases"]:
            continue
        p = s["phases"][0]
        lat = p["latency_ms"]
        L.append(
            f"| {name} | {fmt(lat['p50'], 2)} | {fmt(lat['p90'], 2)} | {fmt(lat['p99'], 2)} | {fmt(lat['p99.9'], 2)} | "
            f"{fmt(lat['max'], 1)} | {fmt(p['throughput_frames_per_s'], 0)} | {fmt(p['generator_lag_ms']['p99'], 2)} | "
            f"{p['consumer_lag_frames']['max'] if p['consumer_lag_frames']['max'] is not None else 'n/a'} | "
            f"{fmt(p['busy_us_per_frame'], 1)} | {fmt(p['cpu_percent_of_one_core'], 0)} |"
        )
    L += ["", "Frames missing (due, never read back) at x1: " + ", ".join(
        f"{n} {s['phases'][0]['frames_missing']}" for n, s in systems.items() if s["phases"]) + ".", ""]
    L += by_stream_table(systems)
    for name, label in (("pipeline", "Pipeline worker"), ("quix", "Quix Streams peer")):
        pw = systems.get(name, {}).get("phases", [])
        if not pw:
            continue
        w = pw[0]["send_to_release_built_ms"]
        a = pw[0]["frame_age_ms"]
        L += [
            f"{label} side (release header `biopriv-t-release-ns` - completing frame's `t_send_ns`, per release): "
            f"p50 {fmt(w['p50'], 2)} ms, p99 {fmt(w['p99'], 2)} ms, max {fmt(w['max'], 1)} ms. "
            f"Frame age (read-back minus the frame's *own* due time, includes waiting for the window hop): "
            f"p50 {fmt(a['p50'], 0)} ms, p99 {fmt(a['p99'], 0)} ms.",
            "",
        ]
    r = doc["ratios"]
    t = doc["targets"]
    L += [
        "## Ratios and targets",
        "",
        f"- pipeline / passthrough p99: **{fmt_x(r['p99_pipeline_over_passthrough'])}**; "
        f"pipeline / hand-written p99: **{fmt_x(r['p99_pipeline_over_handwritten'])}**",
        f"- pipeline / passthrough capacity (frames/s): **{fmt_x(r['capacity_pipeline_over_passthrough'])}**; "
        f"pipeline / hand-written capacity: **{fmt_x(r['capacity_pipeline_over_handwritten'])}**",
        f"- pipeline / Quix Streams peer p99: **{fmt_x(r.get('p99_pipeline_over_quix'))}**; "
        f"capacity: **{fmt_x(r.get('capacity_pipeline_over_quix'))}** (the same processing core in both: "
        "the difference is the shell)",
        "",
        "| target | value | met |",
        "|---|---|---|",
    ]
    for k, v in t.items():
        L.append(f"| {k} | {v['value']} | {'yes' if v['met'] else 'no' if v['met'] is not None else 'n/a'} |")
    L += [
        "",
        "## Capacity (one process; fleet scaled until p99 > 50 ms, lag keeps growing or the generator falls behind)",
        "",
        "| system | session | phase | offered frames/s | devices | p50 ms | p99 ms | max ms | gen. lag p99 ms | max lag | CPU % | passed |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, s in systems.items():
        for p in s["phases"]:
            lat = p["latency_ms"]
            L.append(
                f"| {name} | {p['session']} | {p['phase']} | {fmt(p['offered_frames_per_s'], 0)} | {sum(p['fleet'].values())} | "
                f"{fmt(lat['p50'], 2)} | {fmt(lat['p99'], 2)} | {fmt(lat['max'], 1)} | {fmt(p['generator_lag_ms']['p99'], 2)} | "
                f"{p['consumer_lag_frames']['max'] if p['consumer_lag_frames']['max'] is not None else 'n/a'} | "
                f"{fmt(p['cpu_percent_of_one_core'], 0)} | {'yes' if p['passed'] else 'no: ' + (p['why_failed'] or '')} |"
            )
    L.append("")
    for name, s in systems.items():
        c = s["capacity"]
        if c is None:
            L.append(f"- {name}: no step passed")
        else:
            L.append(f"- {name}: {'at least ' if c['lower_bound_only'] else ''}{fmt(c['frames_per_s'], 0)} frames/s "
                     f"({c['devices_total']} devices: {c['devices']})"
                     + (" (every step passed: the ramp ended first)" if c["lower_bound_only"] else ""))
    core = doc.get("processor_core")
    if core:
        L += ["", "## Where the time goes", "",
              f"**Processing core alone** (`Processor.process` on the same frames in one process, no Kafka, no Faust; first "
              f"{core['seconds_of_load']:g} s of the standard schedule, as fast as possible), in the per-window stress mode "
              f"the systems below run: **{core['mean_us_per_frame']} us per "
              f"frame, {core['cpu_percent_of_one_core_at_this_load']}% of one core** at this load"
              + (f"; with the default study (the worker's default): **{core['study']['mean_us_per_frame']} us per frame**, "
                 f"{core['study']['cpu_percent_of_one_core_at_this_load']}% of one core" if "study" in core else "")
              + (f". Host calibration (`benchmarks/machine.py`): {core['calibration']}" if "calibration" in core else "")
              + ". Per-window mode:", "",
              "| stream | frames | releases | mean us | p50 us | p99 us | max us | CPU ms per s of load |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
        L += [f"| {k} | {v['frames']} | {v['releases']} | {v['mean_us']} | {v['p50_us']} | {v['p99_us']} | {v['max_us']} | "
              f"{v['cpu_ms_per_s_of_load']} |" for k, v in core["per_stream"].items()]
    pw = systems.get("pipeline", {}).get("phases", [])
    if core and pw and pw[0]["cpu_percent_of_one_core"] is not None:
        L += ["", f"The live worker at x1 used {fmt(pw[0]['cpu_percent_of_one_core'], 0)}% of one core "
              f"(its core accounted {fmt(pw[0]['busy_us_per_frame'])} us/frame of wall time, inflated by CPU contention); "
              f"the core alone needs {core['cpu_percent_of_one_core_at_this_load']}%. CPU by process at x1: "
              f"{pw[0]['cpu_percent_by_process']} (percent of one core; the host has {m['cpus']})."]
    prof = doc.get("profile")
    if prof:
        L += ["", f"**Live worker profile** ({prof['profiler']}; {fmt(prof['wall_s'], 0)} s at x1 in a separate session, "
              "start-up included). Share of the main thread's wall time:", "", "| area | s | % of wall |", "|---|---:|---:|"]
        L += [f"| {k} | {prof['areas_s'][k]} | {v} |" for k, v in prof["areas_percent_of_wall"].items()]
        L += ["", "Top shell functions by self time:", "", "| function | s | % of wall |", "|---|---:|---:|"]
        L += [f"| `{x['function']}` | {x['seconds']} | {x['percent_of_wall']} |" for x in prof["shell_top_self"][:10]]
        ru = prof.get("run_under_profiler")
        if ru:
            L += ["", f"Under the profiler: p99 {fmt(ru['latency_ms']['p99'], 1)} ms, {fmt(ru['throughput_frames_per_s'], 0)} frames/s."]
        L += ["", "Full trees: `profile_core.txt` (core, in process) and `profile_worker.txt` (live worker)."]
    L += findings(doc)
    L += ["", "Plots: `latency_cdf.png`, `latency_vs_load.png`. Raw numbers: `latest.json`.", ""]
    return "\n".join(L)


def main() -> int:
    ap = argparse.ArgumentParser(description="End-to-end latency and capacity benchmark (see the module docstring).")
    ap.add_argument("--short", action="store_true", help="short run: one standard session with one x2 step, about a minute per system")
    ap.add_argument("--workload", default="standard", help="standard, light, heavy or a TOML path (default %(default)s)")
    ap.add_argument("--duration", type=float, default=None, help="measured seconds at the standard load (after warm-up)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of %(default)s")
    ap.add_argument("--no-ramp", action="store_true", help="standard load only, no capacity steps")
    ap.add_argument("--profile", action="store_true", help="also profile the pipeline worker (pyinstrument, separate run)")
    ap.add_argument("--bootstrap", default=os.environ.get("BIOPRIV_BOOTSTRAP", "127.0.0.1:9092"))
    ap.add_argument("--private-broker", type=int, metavar="PORT", default=None,
                    help="run on a broker of our own on PORT (started and stopped with deploy/kafka/local.sh), "
                         "isolated from restarts of the shared one by other users")
    ap.add_argument("--kafka-client", choices=["aiokafka", "confluent"], default=None,
                    help="Kafka client of the pipeline worker (biopriv worker --kafka-client; default: the worker's)")
    ap.add_argument("--worker-args", default="", metavar="'OPTIONS'",
                    help="more `biopriv worker` options for the pipeline worker, e.g. '--max-batch 50' (settings A/B runs)")
    ap.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results)")
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite latest.md from latest.json and profile_worker.txt (no measurement)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/results/ alone")
    args = ap.parse_args()
    if args.out is not None:
        global RESULTS
        RESULTS = args.out.resolve()
    if args.render_only:
        doc = json.loads((RESULTS / "latest.json").read_text())
        tree = RESULTS / "profile_worker.txt"
        if tree.exists():  # the profile categories may have changed since the run: re-derive them
            ru = (doc.get("profile") or {}).get("run_under_profiler")
            doc["profile"] = profile_summary(tree)
            doc["profile"]["profiler"] += (", re-derived from the saved tree, which keeps nodes of at least 0.3 s: "
                                           "smaller children count as their parent's self time")
            if ru:
                doc["profile"]["run_under_profiler"] = ru
        (RESULTS / "latest.json").write_text(json.dumps(doc, indent=2) + "\n")
        md = markdown(doc)
        (RESULTS / "latest.md").write_text(md)
        print(md)
        return 0

    import logging
    import signal

    # SIGTERM unwinds like Ctrl-C, so that systems, topics and a private broker are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    wl = load_workload(args.workload, args.short)
    KAFKA_CLIENT[0] = args.kafka_client
    WORKER_ARGS[:] = shlex.split(args.worker_args)
    if args.duration is not None:
        ph = wl.phases[0]
        shift = args.duration - (ph.end_s - ph.measure_from_s)
        wl.phases = [wl.phases[0].__class__(ph.name, ph.multiplier, ph.start_s, ph.end_s + shift, ph.measure_from_s)] + [
            p.__class__(p.name, p.multiplier, p.start_s + shift, p.end_s + shift, p.measure_from_s + shift)
            for p in wl.phases[1:]]
    if args.no_ramp:
        wl.ramp = []
    systems = [s for s in args.systems.split(",") if s]
    bad = set(systems) - set(SYSTEMS)
    if bad:
        ap.error(f"--systems must be among {SYSTEMS}, got {sorted(bad)}")
    t_all = time.monotonic()
    load_before = load_average()
    code_state = code_under_test()
    if args.private_broker is not None:
        args.bootstrap = private_broker(args.private_broker, "up")
        BROKER_ENV.update({"BIOPRIV_KAFKA_DIR": str(Path(tempfile.gettempdir()) / f"biopriv-latency-kafka-{args.private_broker}"),
                           "BIOPRIV_KAFKA_PORT": str(args.private_broker)})
    try:
        return measure(args, wl, systems, t_all, load_before, code_state)
    finally:
        if args.private_broker is not None:
            private_broker(args.private_broker, "down")


def measure(args: argparse.Namespace, wl: Workload, systems: list[str], t_all: float, load_before: list[float],
            code_state: dict[str, Any]) -> int:
    ensure_broker(args.bootstrap)
    BROKER_PID[0] = broker_pid()
    from pipeline.privacy import load_keys

    run_id = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="biopriv-latency-") as td:
        tmp = Path(td)
        key_file = tmp / "keys.json"
        keys = load_keys(key_file)
        t = time.monotonic()
        sched = build_schedule(wl)
        ramp_wl = wl.with_phases(wl.ramp)
        ramp_sched = build_schedule(ramp_wl) if wl.ramp else None
        build_s = time.monotonic() - t
        device_of = {keys.pseudonym(p.device): p.device for sc in (sched, ramp_sched) if sc for p in sc.plans}
        n_frames = len(sched) + (len(ramp_sched) if ramp_sched else 0)
        mb = sum(map(len, sched.values)) + (sum(map(len, ramp_sched.values)) if ramp_sched else 0)
        print(f"workload {wl.name}: {n_frames:,} frames pre-encoded in {build_s:.1f} s ({mb / 1e6:.0f} MB); "
              f"standard {wl.phases[0].end_s - wl.phases[0].measure_from_s:g} s measured after "
              f"{wl.phases[0].measure_from_s:g} s warm-up; capacity steps {[p.name for p in wl.ramp]}", flush=True)
        core_s = min(20.0 if args.short else 40.0, wl.phases[0].end_s)
        core_prof = RESULTS / "profile_core.txt" if args.profile and not args.no_write else None
        if core_prof is not None:
            RESULTS.mkdir(parents=True, exist_ok=True)
        core = processor_cost(sched, key_file, core_s, core_prof)
        print(f"[{time.monotonic() - t_all:5.0f} s] processing core alone (no Kafka): {core['mean_us_per_frame']} us/frame "
              f"per-window, {core['study']['mean_us_per_frame']} us/frame default study, "
              f"{core['cpu_percent_of_one_core_at_this_load']}% of one core (per-window) for the first {core_s:g} s of the "
              "standard load", flush=True)
        results: dict[str, dict[str, Any]] = {}
        for name in systems:
            t = time.monotonic()
            print(f"[{time.monotonic() - t_all:5.0f} s] {name}: standard load", flush=True)
            std = run_system_retry(name, sched, wl, args.bootstrap, run_id, key_file, device_of, tmp, False, "std")
            res = {"system": name, "phases": std["phases"], "capacity": std["capacity"] if len(wl.phases) > 1 else None,
                   "info": {"standard": std["info"]}}
            if ramp_sched is not None:
                print(f"[{time.monotonic() - t_all:5.0f} s] {name}: capacity steps", flush=True)
                ramp = run_system_retry(name, ramp_sched, ramp_wl, args.bootstrap, run_id, key_file, device_of, tmp, True, "ramp")
                res["phases"] += ramp["phases"]
                res["capacity"] = ramp["capacity"]
                res["info"]["ramp"] = ramp["info"]
            results[name] = res
            print(f"[{time.monotonic() - t_all:5.0f} s] {name}: done in {time.monotonic() - t:.0f} s", flush=True)
            for ph in res["phases"]:
                lat, gen = ph["latency_ms"], ph["generator_lag_ms"]
                print(f"    {ph['session']:<4} {ph['phase']:<12} {ph['offered_frames_per_s']:7,.0f} frames/s offered: p50 {fmt(lat['p50'], 2)} "
                      f"p99 {fmt(lat['p99'], 2)} max {fmt(lat['max'], 1)} ms; {ph['throughput_frames_per_s']:,.0f} frames/s "
                      f"accounted, {ph['frames_missing']} missing; generator lag p99 {fmt(gen['p99'], 2)} ms; max group lag "
                      f"{ph['consumer_lag_frames']['max']}; busy {fmt(ph['busy_us_per_frame'])} us/frame; CPU "
                      f"{ph['cpu_percent_by_process']}; {'pass' if ph['passed'] else 'FAIL ' + str(ph['why_failed'])}",
                      flush=True)
        profile = None
        if args.profile and "pipeline" in systems:
            session = tmp / "worker.pyisession"
            print(f"[{time.monotonic() - t_all:5.0f} s] profiling the worker at x1 (pyinstrument)", flush=True)
            try:
                ph0 = wl.phases[0]
                pwl = wl.with_phases([type(ph0)(ph0.name, 1.0, 0.0, ph0.measure_from_s + 25.0, ph0.measure_from_s)])
                prof = run_system("pipeline", sched, pwl, args.bootstrap, run_id, key_file, device_of, tmp, False, "prof",
                                  profile_out=session)
                prof_x1 = prof["phases"][0] if prof["phases"] else None
                if session.exists():
                    tree = (RESULTS if not args.no_write else tmp) / "profile_worker.txt"
                    tree.parent.mkdir(parents=True, exist_ok=True)
                    subprocess.run([PY, "-m", "pyinstrument", "--load", str(session), "-r", "text", "-o", str(tree),
                                    "--show-all"], check=False, cwd=ROOT)
                    profile = profile_summary(tree)
                    trim_tree(tree)
                    if prof_x1 is not None:
                        prof_x1.pop("_latency_hist", None)
                        profile["run_under_profiler"] = {k: prof_x1[k] for k in (
                            "latency_ms", "throughput_frames_per_s", "busy_us_per_frame", "cpu_percent_by_process")}
                else:
                    print("pyinstrument wrote no session (worker did not exit cleanly)", flush=True)
            except Exception as exc:  # noqa: BLE001 - the measured results must still be written
                print(f"profiling failed: {type(exc).__name__}: {exc}", flush=True)
        if args.no_write:
            for s in results.values():
                for ph in s["phases"]:
                    ph.pop("_latency_hist", None)

    def first(name: str, key: str) -> float | None:
        s = results.get(name)
        return s["phases"][0]["latency_ms"][key] if s and s["phases"] else None

    def cap(name: str) -> float | None:
        s = results.get(name)
        return s["capacity"]["frames_per_s"] if s and s["capacity"] else None

    p99 = first("pipeline", "p99")
    ratios = {
        "p99_pipeline_over_passthrough": ratio(p99, first("passthrough", "p99")),
        "p99_pipeline_over_handwritten": ratio(p99, first("handwritten", "p99")),
        "capacity_pipeline_over_passthrough": ratio(cap("pipeline"), cap("passthrough")),
        "capacity_pipeline_over_handwritten": ratio(cap("pipeline"), cap("handwritten")),
        "p99_pipeline_over_quix": ratio(p99, first("quix", "p99")),
        "capacity_pipeline_over_quix": ratio(cap("pipeline"), cap("quix")),
    }
    pcap = results.get("pipeline", {}).get("capacity")
    targets = {
        "pipeline p99 < 50 ms at the standard load (done-when)": {"value": f"{fmt(p99, 2)} ms", "met": None if p99 is None else p99 < 50},
        "pipeline p99 <= 10 ms": {"value": f"{fmt(p99, 2)} ms", "met": None if p99 is None else p99 <= 10},
        "pipeline p99 within 2x of the passthrough floor": {
            "value": f"{fmt(ratios['p99_pipeline_over_passthrough'], 2)}x",
            "met": None if ratios["p99_pipeline_over_passthrough"] is None else ratios["p99_pipeline_over_passthrough"] <= 2},
        "capacity >= 5,000 frames/s per worker process": {
            "value": "n/a" if pcap is None else f"{'>= ' if pcap['lower_bound_only'] else ''}{pcap['frames_per_s']:,.0f} frames/s",
            "met": None if pcap is None else pcap["frames_per_s"] >= 5000},
        "pipeline p99 and capacity at least as good as the Quix Streams peer's": peer_target(
            p99, first("quix", "p99"), cap("pipeline"), cap("quix")),
    }
    cmd = "biopriv bench latency " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("run.py") else " ".join(sys.argv)
    doc = {
        "benchmark": "latency",
        "command": cmd.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "run_id": run_id,
        "short": args.short,
        "pipeline_kafka_client": args.kafka_client or kafka_client_default(),
        "pipeline_worker_args": args.worker_args,
        "wall_s": round(time.monotonic() - t_all, 1),
        "machine": machine(),
        "code_under_test": code_state,
        "load_average_before": load_before,
        "broker": (f"private (deploy/kafka/local.sh on port {args.private_broker})" if args.private_broker
                   else f"shared at {args.bootstrap}"),
        "load_average_after": load_average(),
        "workload": {"name": wl.name, "file": str(wl.path.relative_to(ROOT)), "description": wl.description,
                     "devices": wl.devices, "frames_per_s": wl.frames_per_s(), "signals": sched.origin},
        "phases": [p.__dict__ for p in wl.phases],
        "method": {
            "latency": "read-back time minus due time of the frame completing the output's window, per frame",
            "p99_limit_ms": P99_LIMIT_MS, "generator_lag_limit_ms": GEN_LAG_LIMIT_MS,
            "lag_growing": "least-squares slope of the group lag over the measured part of a phase grows it by more than 1 s of frames and the last sample exceeds 1 s of frames",
            "env": "OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=MKL_NUM_THREADS=1 for every system",
            "load_generator": "aiokafka producer (acks=all, linger 0), frames pre-encoded with pipeline.frames.encode_frame, t_send_ns patched in place",
        },
        "ratios": ratios,
        "targets": targets,
        "processor_core": core,
    }
    if args.no_write:
        doc["systems"] = results
        print(json.dumps({k: doc[k] for k in ("ratios", "targets")}, indent=2))
        return 0
    md = write_report(doc, results, profile)
    print(md)
    print(f"wrote {RESULTS / 'latest.json'}, latest.md, latency_cdf.png, latency_vs_load.png in {time.monotonic() - t_all:.0f} s; "
          f"system logs in {Path(tempfile.gettempdir()) / f'biopriv-latency-{run_id}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
