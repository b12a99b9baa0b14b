"""Crash safety on the live broker: kill -9, broker restart, a worker lost from a group of two.

Each test replays a small fleet at a steady pace, injures the deployment mid-replay, and then
checks the private topic against the offline core (same frames, same keys, fresh ledger):

* every expected release appears (no frame lost), and nothing else;
* copies of one ``release_id`` are bit-identical (value bytes) and equal the offline
  release (so the budget they report is the offline one);
* per device, the ``lifetime`` spent epsilon of the distinct releases, in publication order,
  strictly increases by one release's epsilon each time: never decreases, never charged twice;
* the ledger written to the state topic charges exactly distinct releases x epsilon.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_worker import stream_frames  # same directory (pytest rootdir-relative import)
from worker_state import ledgers, offline_core

from connectors.kafka import Topics, make_consumer, make_producer
from pipeline.frames import Frame, encode_frame
from pipeline.privacy import load_keys
from pipeline.privacy.config import PrivacyWarning

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EPSILON = 0.1
FLEET = [(f"eeg-{i:02d}", "eeg") for i in range(4)] + [(f"band-{i:02d}", "temp") for i in range(2)]
SECONDS = 24.0


def fleet_frames() -> dict[str, list[Frame]]:
    out: dict[str, list[Frame]] = {}
    for i, (device, stream) in enumerate(FLEET):
        if stream == "eeg":
            out[device] = stream_frames(device, "eeg", 256.0, 32, ["Fz", "Cz", "Pz", "Oz"], "uV", SECONDS, 10 + i, 12.0)
        else:
            out[device] = stream_frames(device, "temp", 4.0, 4, ["skin"], "degC", SECONDS, 10 + i, 1.0)
    return out


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "privacy.json"
    path.write_text(json.dumps({"epsilon": EPSILON, "lifetime_epsilon": 1e6}))
    return path


class Collector:
    """Reads a topic in a background thread until stopped; ``records`` grows as they arrive."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._where = (bootstrap, topic)
        self.records: list[Any] = []
        self._start()

    def _start(self) -> None:
        self._stop = threading.Event()
        self._consumer = make_consumer([self._where[1]], self._where[0])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def reopen(self) -> None:
        """Read the topic again from the beginning."""
        self.records = []
        self._start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for batch in self._consumer.poll(timeout_ms=200).values():
                self.records.extend(batch)

    def ids(self) -> set[str]:
        return {json.loads(r.value)["release_id"] for r in list(self.records)}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()


class Pacer:
    """Sends the fleet's frames round by round (one frame per device and round) in a thread."""

    def __init__(self, bootstrap: str, topics: Topics, frames: dict[str, list[Frame]], rounds_per_s: float) -> None:
        self.sent = 0
        self._args = (bootstrap, topics, frames, rounds_per_s)
        self.pause = threading.Event()  # set: flush, close the producer and wait until cleared
        self.paused = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        bootstrap, topics, frames, rate = self._args
        producer = make_producer(bootstrap, retries=50, request_timeout_ms=30000)
        # EEG sends 8 frames per second of signal, EDA 1: keep them in step in signal time
        per_round = {d: max(1, round(len(fs) / (SECONDS * 8))) for d, fs in frames.items()}
        cursors = dict.fromkeys(frames, 0)
        start = time.monotonic()
        r = 0
        while any(cursors[d] < len(frames[d]) for d in frames):
            for d, fs in frames.items():
                for f in fs[cursors[d] : cursors[d] + per_round[d]]:
                    producer.send(topics.raw(f.modality), key=d.encode(), value=encode_frame(f))
                    self.sent += 1
                cursors[d] += per_round[d]
            r += 1
            if self.pause.is_set():
                producer.flush()
                producer.close()
                self.paused.set()
                while self.pause.is_set():
                    time.sleep(0.05)
                self.paused.clear()
                producer = make_producer(bootstrap)
                start = time.monotonic() - r / rate
            time.sleep(max(0.0, start + r / rate - time.monotonic()))  # pacing the load, not synchronization
        producer.flush()
        producer.close()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout=timeout_s)
        assert not self._thread.is_alive(), "producer did not finish"


def offline_releases(frames: dict[str, list[Frame]], tmp_path: Path, config: Path, bootstrap: str,
                     topics: Topics) -> dict[str, dict[str, Any]]:
    """The releases the offline core makes of ``frames`` with the worker's keys and device headers
    (read from the state topic: release ids depend on the keys only, values on the lineages too)."""
    core = offline_core(bootstrap, topics, tmp_path / "keys.json", config)
    out: dict[str, dict[str, Any]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)  # default w-event budget on medical features (logged by the worker too)
        for d, fs in frames.items():
            for f in fs:
                for r in core.process(encode_frame(f), d.encode()).releases:
                    out[r.release_id] = json.loads(r.value)
    return out


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str, logs: Callable[[], str] = lambda: "") -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{logs()[-4000:]}")
        time.sleep(0.1)
    return time.monotonic() - t0


def check_properties(label: str, records: list[Any], expected: dict[str, dict[str, Any]], bootstrap: str,
                     topics: Topics, key_file: Path) -> dict[str, Any]:
    """Assert the crash-safety properties; return the figures (also printed)."""
    docs = [json.loads(r.value) for r in records]
    by_id: dict[str, list[bytes]] = defaultdict(list)
    for r, d in zip(records, docs, strict=True):
        by_id[d["release_id"]].append(r.value)
    missing = set(expected) - set(by_id)
    extra = set(by_id) - set(expected)
    assert not missing, f"{label}: {len(missing)} expected releases never appeared"
    assert not extra, f"{label}: {len(extra)} releases not produced by the offline core"
    dup_ids = [rid for rid, copies in by_id.items() if len(copies) > 1]
    for rid, copies in by_id.items():
        assert all(c == copies[0] for c in copies), f"{label}: copies of {rid} are not bit-identical"
        assert json.loads(copies[0]) == expected[rid], f"{label}: release {rid} differs from the offline core"
    # per device: the durable ledger charged exactly its distinct releases x epsilon
    distinct: dict[str, int] = defaultdict(int)
    for rid in by_id:
        distinct[json.loads(by_id[rid][0])["pseudonym"]] += 1
    keys = load_keys(key_file)
    ledger = {keys.pseudonym(d): v["lifetime_units"] for d, v in ledgers(bootstrap, topics, key_file).items()}
    for p, n in distinct.items():
        assert abs(ledger.get(p, 0) / 1e9 - n * EPSILON) < 1e-6, f"{label}: {p} charged {ledger.get(p)} for {n} releases"
    charged = sum(ledger.values()) / 1e9
    figures = {
        "records": len(docs), "distinct": len(by_id), "expected": len(expected), "duplicates": len(docs) - len(by_id),
        "duplicated_ids": len(dup_ids), "devices": len(distinct), "ledger_epsilon": round(charged, 6),
        "distinct_x_epsilon": round(len(by_id) * EPSILON, 6),
    }
    print(f"\n[{label}] {figures}")
    assert abs(charged - len(by_id) * EPSILON) < 1e-6, f"{label}: ledger charged {charged}, releases {len(by_id)}"
    return figures


def broker_env(bootstrap: str) -> dict[str, str]:
    """Environment for ``deploy/kafka/local.sh`` acting on the session's broker (its port, this Python)."""
    return {**os.environ, "BIOPRIV_PYTHON": sys.executable, "BIOPRIV_KAFKA_PORT": bootstrap.rsplit(":", 1)[1]}


def kill9(worker: Any) -> None:
    os.kill(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait(timeout=10)


def worker_frames(worker: Any) -> int:
    lines = [ln for ln in worker.log().splitlines() if "frames=" in ln]
    return int(lines[-1].split("frames=")[1].split()[0]) if lines else 0


def run_scenario(label: str, kafka_bootstrap: str, topics: Topics, start_worker: Any, tmp_path: Path,
                 injure: Callable[[list[Any], Collector, Any], list[Any]], n_workers: int = 1,
                 extra: tuple[str, ...] = ()) -> dict[str, Any]:
    config = write_config(tmp_path)
    args = ("--privacy-config", str(config), "--session-timeout", "6", *extra)
    frames = fleet_frames()
    workers = []
    for _ in range(n_workers):  # one after the other: the first creates the shared key file
        workers.append(start_worker(*args))
        workers[-1].wait_for_log("checkpoints=", timeout_s=60)
    # keys are created by the first worker: release ids depend on them only (values on the
    # lineages the worker writes ahead, read back at the end)
    expected = offline_releases(frames, tmp_path, config, kafka_bootstrap, topics)
    collector = Collector(kafka_bootstrap, topics.private)
    try:
        pacer = Pacer(kafka_bootstrap, topics, frames, rounds_per_s=40.0)
        wait_until(lambda: len(collector.ids()) >= 0.4 * len(expected), 90, "40% of the releases",
                   lambda: "\n".join(w.log() for w in workers))
        at = len(collector.ids())
        survivors = injure(workers, collector, pacer)
        pacer.join(120)
        took = wait_until(lambda: len(collector.ids()) >= len(expected), 120, "every release",
                          lambda: "\n".join(w.log() for w in survivors))
        # let the survivors publish anything unexpected and write a final checkpoint
        wait_until(lambda: all("checkpoints=" in w.log()[-3000:] for w in survivors), 10, "a stats line")
        end = time.monotonic() + 3
        while time.monotonic() < end:
            time.sleep(0.2)
        for w in survivors:
            assert w.alive, w.log()[-3000:]
            w.stop()
        expected = offline_releases(frames, tmp_path, config, kafka_bootstrap, topics)
        figures = check_properties(label, list(collector.records), expected, kafka_bootstrap, topics, tmp_path / "keys.json")
        figures.update({"released_before_injury": at, "recovery_s": round(took, 1), "frames_sent": pacer.sent})
        rebuilt = [ln for w in survivors for ln in w.log().splitlines() if "rebuilt " in ln]
        print(f"[{label}] released before the injury: {at}; all releases {took:.1f} s after it; "
              f"rebuild log: {rebuilt[:6]}")
        return figures
    finally:
        collector.close()


def test_kill9_mid_replay_then_restart(kafka_bootstrap: str, topics: Topics, start_worker: Any, tmp_path: Path) -> None:
    config_args = ("--privacy-config", str(tmp_path / "privacy.json"), "--session-timeout", "6")

    def injure(workers: list[Any], collector: Collector, pacer: Any) -> list[Any]:
        kill9(workers[0])
        return [start_worker(*config_args)]

    figures = run_scenario("kill -9", kafka_bootstrap, topics, start_worker, tmp_path, injure)
    assert figures["distinct"] == figures["expected"]


def assigned_numbers(worker: Any, raw_topics: list[str]) -> dict[str, set[int]]:
    """Partition numbers per raw topic in the worker's latest ``assigned N partitions: [...]`` line."""
    lines = [ln for ln in worker.log().splitlines() if "assigned " in ln and "partitions: [" in ln]
    assert lines, worker.log()[-3000:]
    names = ast.literal_eval(lines[-1].split("partitions: ", 1)[1].strip())
    out: dict[str, set[int]] = {t: set() for t in raw_topics}
    for name in names:
        topic, number = name.rsplit("/", 1)
        out[topic].add(int(number))
    return out


def test_two_workers_one_killed(kafka_bootstrap: str, topics: Topics, start_worker: Any, tmp_path: Path) -> None:
    def injure(workers: list[Any], collector: Collector, pacer: Any) -> list[Any]:
        # co-partitioned: each worker holds partition p of every raw topic, so a device (all of
        # its streams, its ledger and its state partition) lives on exactly one worker
        owned = [assigned_numbers(w, list(topics.raw_all)) for w in workers]
        print(f"\npartition numbers per worker and raw topic: {owned}")
        for by_topic in owned:
            assert len({frozenset(ps) for ps in by_topic.values()}) == 1, owned
        assert sorted(p for by_topic in owned for p in next(iter(by_topic.values()))) == [0, 1, 2], owned
        busy = [w for w in workers if worker_frames(w) > 0]
        print(f"\nframes per worker before the kill: {[worker_frames(w) for w in workers]}")
        victim = busy[0] if busy else workers[0]
        kill9(victim)
        return [w for w in workers if w is not victim]

    figures = run_scenario("2 workers, 1 killed", kafka_bootstrap, topics, start_worker, tmp_path, injure, n_workers=2)
    assert figures["distinct"] == figures["expected"]


def test_broker_restart(kafka_bootstrap: str, topics: Topics, start_worker: Any, tmp_path: Path) -> None:
    script = REPO / "deploy" / "kafka" / "local.sh"

    def injure(workers: list[Any], collector: Collector, pacer: Any) -> list[Any]:
        # the test's own clients step aside (kafka-python leaks sockets while a broker is down);
        # the worker keeps running through the restart
        pacer.pause.set()
        wait_until(pacer.paused.is_set, 30, "the producer to pause")
        collector.close()
        t0 = time.monotonic()
        env = broker_env(kafka_bootstrap)
        subprocess.run(["bash", str(script), "down"], check=True, timeout=120, capture_output=True, env=env)
        subprocess.run(["bash", str(script), "up"], check=True, timeout=300, capture_output=True, env=env)
        print(f"\nbroker down and up again in {time.monotonic() - t0:.1f} s")
        collector.reopen()
        pacer.pause.clear()
        return workers

    figures = run_scenario("broker restart", kafka_bootstrap, topics, start_worker, tmp_path, injure)
    assert figures["distinct"] == figures["expected"]
