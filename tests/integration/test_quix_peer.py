"""The latency benchmark's Quix Streams peer (``benchmarks/latency/quix_peer.py``) on the live broker.

Its output must be the worker's for the same frames, so that the benchmark compares shells and
not work done: one release per window of every feature set (the same windows as the core run
offline), the latency headers ``run.py`` reads, dead letters with their reason and source, and
the counter lines ``run.py`` parses. Noise differs from run to run (each process draws a fresh
ledger lineage per device), so values are compared by structure, windows by slot.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from test_fault_tolerance import wait_until
from test_worker import FEATURE_SET_OF, build_fleet, consume_all

from connectors.kafka import Topics, make_producer
from pipeline.frames import encode_frame

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PEER = REPO / "benchmarks" / "latency" / "quix_peer.py"


def offline_windows(frames: list[Any], key_file: Path) -> Counter[tuple[str, str, str, str]]:
    """(pseudonym, stream, feature set, slot start) of every release of the core run in process."""
    import warnings

    from pipeline.privacy import PrivacyConfig, PrivacyEngine, PrivacyWarning, load_keys
    from pipeline.processor import Processor

    keys = load_keys(key_file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)  # default w-event budget on medical features
        proc = Processor(PrivacyEngine(PrivacyConfig.default(), keys), keys.pseudonym)
        out: Counter[tuple[str, str, str, str]] = Counter()
        for f in frames:
            for r in proc.process(encode_frame(f), f.device_id.encode()).releases:
                d = json.loads(r.value)
                out[(d["pseudonym"], d["stream"], d["feature_set"], d["slot"]["start"])] += 1
    return out


def test_quix_peer_publishes_what_the_worker_would(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> None:
    from pipeline.privacy import load_keys

    key_file = tmp_path / "keys.json"
    load_keys(key_file)  # created here, read by the peer and by the offline core
    frames = [f.with_send_ns(1_800_000_000_000_000_000 + i) for i, f in enumerate(build_fleet())]
    bad = [(b"eeg-01", b"this is not a frame"), (b"mic-01", b"\x81\xa1v\x01")]
    producer = make_producer(kafka_bootstrap)
    for f in frames:
        producer.send(topics.raw(f.modality), key=f.device_id.encode(), value=encode_frame(f))
    for key, value in bad:
        producer.send(topics.raw("eeg"), key=key, value=value)
    producer.flush()
    producer.close()
    expected = offline_windows(frames, key_file)
    assert sum(expected.values()) >= 15 and {k[2] for k in expected} == set(FEATURE_SET_OF.values())

    log_path = tmp_path / "peer.log"
    cmd = [sys.executable, str(PEER), "quix", "--bootstrap", kafka_bootstrap, "--group", f"g-{topics.prefix}quix",
           "--inputs", ",".join(topics.raw_all), "--output", topics.private, "--key-file", str(key_file),
           "--stats-interval", "1"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        releases = consume_all(kafka_bootstrap, topics.private, expect=sum(expected.values()), timeout_s=120)
        dead = consume_all(kafka_bootstrap, topics.deadletter, expect=len(bad), timeout_s=30)
        total = len(frames) + len(bad)

        def counted_all() -> bool:  # a counter line (every --stats-interval) with every message
            lines = log_path.read_text(errors="replace").splitlines()
            return any(json.loads(line).get("frames") == total for line in lines if line.startswith("{"))

        wait_until(counted_all, 30, "the peer's counter line for every message",
                   lambda: log_path.read_text(errors="replace"))
    finally:
        proc.terminate()
        rc = proc.wait(timeout=60)
    log = log_path.read_text(errors="replace")
    assert rc == 0, log[-3000:]

    docs = [json.loads(r.value) for r in releases]
    got = Counter((d["pseudonym"], d["stream"], d["feature_set"], d["slot"]["start"]) for d in docs)
    assert got == expected
    assert all(r.key.decode() == d["pseudonym"] for r, d in zip(releases, docs, strict=True))
    for d in docs:
        assert set(d) == {"v", "release_id", "pseudonym", "stream", "feature_set", "slot", "values", "noise"}, set(d)
        assert d["values"] and set(d["values"]) == set(d["noise"])

    # The latency headers of ``biopriv worker --latency-headers``: the completing frame's seq and send time.
    send_ns = {(f.device_id, f.stream, f.seq): f.send_ns for f in frames}
    pseudonym = {load_keys(key_file).pseudonym(f.device_id): f.device_id for f in frames}
    for r, d in zip(releases, docs, strict=True):
        h = dict(r.headers)
        assert set(h) == {"biopriv-t-release-ns", "biopriv-t-frame-send-ns", "biopriv-last-seq"}
        assert int(h["biopriv-t-frame-send-ns"]) == send_ns[(pseudonym[d["pseudonym"]], d["stream"], int(h["biopriv-last-seq"]))]

    # Dead letters: original bytes, reason, source topic/partition/offset.
    assert sorted(r.value for r in dead) == sorted(v for _, v in bad)
    for r in dead:
        h = dict(r.headers)
        assert h["biopriv-reason"] in (b"undecodable", b"missing_field")
        assert h["biopriv-source"].decode().startswith(topics.raw("eeg") + "/")

    # The counter lines run.py reads: every message, every release, no internal error.
    stats = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert stats and stats[-1]["system"] == "quix"
    assert (stats[-1]["frames"], stats[-1]["outputs"], stats[-1]["errors"]) == (len(frames) + len(bad), len(docs), 0)
