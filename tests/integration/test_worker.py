"""The stream worker end to end on the live broker (issue: foundation).

Frames for several devices and modalities go in as raw bytes; the test reads the private topic,
the dead-letter topic and the events topic back and checks counts, order, and that nothing raw
leaks. The expected releases are also computed offline by the same core (same keys, fresh
ledger): the live output must match it exactly, which shows the Faust shell adds nothing and
loses nothing.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from worker_state import offline_core

from connectors.kafka import Topics, make_consumer, make_producer
from pipeline.features import DEFAULT_WINDOWS
from pipeline.frames import Frame, encode_frame, make_frame

pytestmark = pytest.mark.integration

T0 = 1_764_000_000_000_000_000


def stream_frames(device: str, stream: str, rate: float, n: int, channels: list[str], unit: str,
                  seconds: float, seed: int, amp: float) -> list[Frame]:
    """Frames of random-looking signal (values that no grid would produce by chance)."""
    rng = np.random.default_rng(seed)
    n_frames = int(round(seconds * rate / n))
    frames = []
    for k in range(n_frames):
        t = (np.arange(k * n, (k + 1) * n) / rate)[None, :]
        x = amp * (np.sin(2 * np.pi * 10.3 * t + rng.uniform(0, 6, (len(channels), 1))) + rng.normal(0, 0.5, (len(channels), n)))
        if stream == "temp":
            x = 33.0 + 0.3 * rng.standard_normal((len(channels), n))
        frames.append(make_frame(device, stream, k, T0 + int(k * n * 1e9 / rate), rate, channels, unit, x))
    return frames


def expected_windows(stream_seconds: float, fs_name: str) -> int:
    w = DEFAULT_WINDOWS[fs_name]
    return 0 if stream_seconds < w.length_s else int(math.floor((stream_seconds - w.length_s) / w.hop_s + 1e-9)) + 1


FLEET = {
    # device: list of (stream, rate, samples per frame, channels, unit, seconds, amplitude)
    "eeg-01": [("eeg", 256.0, 32, ["Fp1", "Fp2", "F3", "F4"], "uV", 6.0, 20.0)],
    "eeg-02": [("eeg", 256.0, 32, ["Fz", "Cz", "Pz", "Oz"], "uV", 5.0, 15.0)],
    "mic-01": [("mic", 16000.0, 320, ["mic"], "FS", 3.0, 0.1)],
    "band-01": [("eda", 4.0, 4, ["eda"], "uS", 14.0, 0.5), ("temp", 4.0, 4, ["skin"], "degC", 16.0, 1.0)],
}
FEATURE_SET_OF = {"eeg": "eeg", "mic": "mic", "eda": "eda", "temp": "temp"}


def build_fleet() -> list[Frame]:
    frames: list[Frame] = []
    for i, (device, streams) in enumerate(FLEET.items()):
        for j, (stream, rate, n, chans, unit, secs, amp) in enumerate(streams):
            frames += stream_frames(device, stream, rate, n, chans, unit, secs, 100 * i + j, amp)
    return frames


def consume_all(bootstrap: str, topic: str, *, expect: int, timeout_s: float) -> list[Any]:
    consumer = make_consumer([topic], bootstrap, consumer_timeout_ms=500)
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and len(records) < expect:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        # read a little longer to catch anything unexpected beyond the expected count
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            for batch in consumer.poll(timeout_ms=300).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def numbers_in(obj: Any) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)]
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in numbers_in(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in numbers_in(v)]
    return []


def test_worker_end_to_end(kafka_bootstrap: str, topics: Topics, start_worker: Any, tmp_path: Path) -> None:
    worker = start_worker()
    frames = build_fleet()
    bad = [
        (b"eeg-01", b"this is not a frame"),
        (b"eeg-01", b'{"v": 9, "device": "eeg-01"}'),
        (b"band-01", json.dumps({"v": 1, "device": "band-01", "modality": "bio", "stream": "eda", "seq": 99,
                                 "t_capture_ns": 0, "t_send_ns": 0, "rate": 4, "channels": ["eda"], "units": ["uS"],
                                 "samples": [[1.0, 2.0], [3.0, 4.0]]}).encode()),
        (b"mic-01", b"\x81\xa1v\x01"),
        (b"someone-else", encode_frame(frames[0])),
    ]
    expected_reasons = ["undecodable", "unknown_version", "shape_mismatch", "missing_field", "key_mismatch"]

    producer = make_producer(kafka_bootstrap)
    # Interleave: good frames in order per device, bad frames spread among them.
    bad_at = {len(frames) * (i + 1) // (len(bad) + 1): b for i, b in enumerate(bad)}
    for i, f in enumerate(frames):
        if i in bad_at:
            key, value = bad_at[i]
            producer.send(topics.raw("eeg" if key != b"mic-01" else "audio"), key=key, value=value)
        f = f.with_send_ns(time.time_ns())
        producer.send(topics.raw(f.modality), key=f.device_id.encode(), value=encode_frame(f, "binary" if i % 3 else "json"))
    producer.flush()
    producer.close()

    expected: dict[tuple[str, str], int] = {}
    for device, streams in FLEET.items():
        for stream, _rate, _n, _ch, _u, secs, _a in streams:
            expected[(device, FEATURE_SET_OF[stream])] = expected_windows(secs, FEATURE_SET_OF[stream])
    total = sum(expected.values())
    assert total >= 15

    releases = consume_all(kafka_bootstrap, topics.private, expect=total, timeout_s=90)
    dead = consume_all(kafka_bootstrap, topics.deadletter, expect=len(bad), timeout_s=30)
    events = consume_all(kafka_bootstrap, topics.events, expect=0, timeout_s=2)

    # Offline reference: the same core with the same key file gives the same releases.
    from pipeline.privacy import load_keys

    keys = load_keys(tmp_path / "keys.json")
    pseudonym_of = {d: keys.pseudonym(d) for d in FLEET}
    device_of = {p: d for d, p in pseudonym_of.items()}

    docs = [json.loads(r.value) for r in releases]
    got: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r, doc in zip(releases, docs, strict=True):
        assert r.key.decode() == doc["pseudonym"]
        got[(device_of[doc["pseudonym"]], doc["feature_set"])].append(doc)
    counts = {k: len(v) for k, v in got.items()}
    print(f"\nreleases per (device, feature set): {counts}; expected {expected}")
    assert counts == expected

    # Per-device order: slots strictly increase, and release ids are unique.
    for key, docs_k in got.items():
        slots = [d["slot"]["start"] for d in docs_k]
        assert slots == sorted(set(slots)), f"{key}: windows out of order {slots}"
    assert len({d["release_id"] for d in docs}) == len(docs)

    # Every release is privatized and carries only the model's fields: values, each with its noise.
    for d in docs:
        assert set(d) == {"v", "release_id", "pseudonym", "stream", "feature_set", "slot", "values", "noise"}, set(d)
        assert d["values"] and set(d["values"]) == set(d["noise"])
        assert all(n["epsilon"] > 0 and n["mechanism"] for n in d["noise"].values())
        assert all(math.isfinite(v) for v in d["values"].values())
    # Latency bookkeeping stays off the public topic unless asked for (--latency-headers).
    assert all(set(dict(r.headers)) == {"biopriv-t-release-ns"} for r in releases)

    # No raw sample value appears anywhere in the private topic.
    raw_values = {float(v) for f in frames for v in f.samples.ravel() if v != 0.0}
    published = {x for d in docs for x in numbers_in(d["values"])}
    leaked = raw_values & published
    assert not leaked, f"{len(leaked)} raw sample values found in releases"

    # No raw device id appears in any output record (private topic and events), key or value.
    blob = b"\n".join((r.key or b"") + b" " + r.value for r in releases + events)
    for device in FLEET:
        assert device.encode() not in blob
    assert not re.search(rb"eeg-0|mic-01|band-01", blob)

    # Dead letters: original bytes, reason headers, in the order sent.
    print(f"dead letters: {[dict(r.headers)['biopriv-reason'].decode() for r in dead]}")
    assert [dict(r.headers)["biopriv-reason"].decode() for r in dead] == expected_reasons or sorted(
        dict(r.headers)["biopriv-reason"].decode() for r in dead) == sorted(expected_reasons)
    assert sorted(r.value for r in dead) == sorted(v for _k, v in bad)
    for r in dead:
        h = dict(r.headers)
        assert h["biopriv-detail"] and re.match(rb"^t[0-9a-f]+\.raw\.(eeg|audio|bio)/\d+/\d+$", h["biopriv-source"])

    assert not [e for e in events if json.loads(e.value).get("event") == "release_suppressed"]
    assert worker.alive, worker.log()[-2000:]


def test_worker_matches_offline_core(kafka_bootstrap: str, topics: Topics, start_worker: Any, tmp_path: Path) -> None:
    """The worker's releases are bit-identical to the core's on the same frames and keys."""
    from pipeline.privacy import PrivacyConfig, PrivacyEngine, load_keys
    from pipeline.processor import Processor

    worker = start_worker()
    frames = stream_frames("eeg-09", "eeg", 256.0, 32, ["Fz", "Cz", "Pz"], "uV", 4.0, 7, 10.0)
    producer = make_producer(kafka_bootstrap)
    for f in frames:
        producer.send(topics.raw("eeg"), key=b"eeg-09", value=encode_frame(f))
    producer.flush()
    producer.close()
    n = expected_windows(4.0, "eeg")
    live = consume_all(kafka_bootstrap, topics.private, expect=n, timeout_s=60)
    assert len(live) == n, worker.log()[-2000:]

    # Same frame bytes, keys and device lineage (written ahead to the state topic): identical bytes.
    core = offline_core(kafka_bootstrap, topics, tmp_path / "keys.json")
    offline = [r for f in frames for r in core.process(encode_frame(f), b"eeg-09").releases]
    assert [r.value for r in live] == [r.value for r in offline]
    # Without the lineage (a ledger lost), the same windows draw other noise: nothing is reused.
    keys = load_keys(tmp_path / "keys.json")
    fresh = Processor(PrivacyEngine(PrivacyConfig.default(), keys), keys.pseudonym)
    other = [r for f in frames for r in fresh.process(encode_frame(f), b"eeg-09").releases]
    assert [r.release_id for r in other] == [r.release_id for r in offline]
    same = sum(a.value == b.value for a, b in zip(other, offline, strict=True))
    assert same <= len(offline) // 2, f"{same} of {len(offline)} releases repeated under a fresh lineage"
    assert all(int(dict(r.headers)["biopriv-t-release-ns"]) > 0 for r in live)
