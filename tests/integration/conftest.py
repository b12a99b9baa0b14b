"""Live-broker fixtures: a real Kafka broker for the session, and per-test topics and workers.

The broker is the project's own (``deploy/kafka/local.sh``): if nothing answers on
``BIOPRIV_BOOTSTRAP`` (default 127.0.0.1:9092) the session starts one and stops it at the end.
Every test gets its own topic prefix and consumer group, so tests never see each other's records.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from connectors.kafka import DEFAULT_BOOTSTRAP, Topics, delete_topics, ensure_topics

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "kafka" / "local.sh"


def _answers(bootstrap: str) -> bool:
    host, port = bootstrap.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``host:port`` of a live broker, started for the session when none runs."""
    bootstrap = os.environ.get("BIOPRIV_BOOTSTRAP", DEFAULT_BOOTSTRAP)
    started = False
    if not _answers(bootstrap):
        env = {**os.environ, "BIOPRIV_PYTHON": sys.executable, "BIOPRIV_KAFKA_PORT": bootstrap.rsplit(":", 1)[1]}
        subprocess.run(["bash", str(SCRIPT), "up"], check=True, env=env, timeout=600)
        started = True
    yield bootstrap
    if started:
        subprocess.run(["bash", str(SCRIPT), "down"], check=False, timeout=60)


@pytest.fixture
def topics(kafka_bootstrap: str) -> Iterator[Topics]:
    """A fresh set of project topics (3 partitions each) under a unique prefix; deleted after."""
    t = Topics.with_prefix(f"t{uuid.uuid4().hex[:10]}.")
    ensure_topics(kafka_bootstrap, t.specs(partitions=3))
    yield t
    delete_topics(kafka_bootstrap, [s.name for s in t.specs()])


class WorkerProcess:
    """A ``biopriv worker`` subprocess with its log captured to a file."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in self.log():
                return
            if not self.alive:
                raise AssertionError(f"worker exited ({self.proc.returncode}) before {needle!r}:\n{self.log()[-3000:]}")
            time.sleep(0.2)
        raise AssertionError(f"worker did not log {needle!r} within {timeout_s} s:\n{self.log()[-3000:]}")

    def stop(self) -> int:
        if self.alive:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


@pytest.fixture
def start_worker(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: start a worker on the test's topics; every worker is stopped after the test."""
    workers: list[WorkerProcess] = []
    group = f"g-{topics.prefix.rstrip('.')}"

    def start(*extra: str) -> WorkerProcess:
        n = len(workers)
        log_path = tmp_path / f"worker{n}.log"
        cmd = [
            sys.executable, "-m", "pipeline.cli", "worker",
            "--bootstrap", kafka_bootstrap,
            "--group", group,
            "--topic-prefix", topics.prefix,
            "--partitions", "3",
            "--key-file", str(tmp_path / "keys.json"),
            "--data-dir", str(tmp_path / f"worker{n}"),
            "--stats-interval", "1",
            # the crash and flood tests count per-window releases; study mode has its own tests
            *(() if "--study" in extra else ("--per-window",)),
            *extra,
        ]
        with open(log_path, "wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=tmp_path)
        w = WorkerProcess(proc, log_path)
        workers.append(w)
        return w

    yield start
    for w in workers:
        w.stop()
