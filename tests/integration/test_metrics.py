"""The worker's web server on a live broker: /metrics counts what was sent, /healthz and /readyz."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from test_worker import consume_all, expected_windows, stream_frames

from connectors.kafka import Topics, make_producer
from pipeline.frames import encode_frame

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def metric(text: str, name: str, **labels: str) -> float:
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{want} not in /metrics:\n{text[:3000]}")


def test_metrics_count_what_was_sent_and_ready_follows_assignment(kafka_bootstrap: str, topics: Topics,
                                                                 start_worker: Any, tmp_path: Path) -> None:
    port = free_port()
    worker = start_worker("--web-port", str(port), "--web-host", "127.0.0.1")
    statuses = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            status, body = get(port, "/readyz")
        except OSError:  # the server is not up yet
            time.sleep(0.1)
            continue
        statuses.append(status)
        if status == 200:
            break
        time.sleep(0.1)
    assert statuses and statuses[-1] == 200, (statuses, worker.log()[-3000:])
    ready = json.loads(body)
    assert ready["assigned"] > 0 and ready["recovering"] == 0
    assert get(port, "/healthz")[0] == 200

    frames = stream_frames("eeg-m", "eeg", 256.0, 32, ["Fz", "Cz"], "uV", 4.0, 11, 10.0)
    frames += stream_frames("band-m", "temp", 4.0, 4, ["skin"], "degC", 20.0, 12, 1.0)
    bad = [b"not a frame", b"\x00\x01"]
    producer = make_producer(kafka_bootstrap)
    for f in frames:
        producer.send(topics.raw(f.modality), key=f.device_id.encode(), value=encode_frame(f.with_send_ns(time.time_ns())))
    for b in bad:
        producer.send(topics.raw("bio"), key=b"band-m", value=b)
    producer.flush()
    producer.close()
    n_eeg, n_temp = expected_windows(4.0, "eeg"), expected_windows(20.0, "temp")
    releases = consume_all(kafka_bootstrap, topics.private, expect=n_eeg + n_temp, timeout_s=60)
    assert len(releases) == n_eeg + n_temp

    deadline = time.monotonic() + 30
    while True:  # counters are read at scrape time: wait for the last batch to be counted
        status, raw = get(port, "/metrics")
        text = raw.decode()
        assert status == 200
        if metric(text, "biopriv_frames_total", stream="temp") == 20 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert metric(text, "biopriv_frames_total", stream="eeg") == sum(f.stream == "eeg" for f in frames)
    assert metric(text, "biopriv_frames_total", stream="temp") == sum(f.stream == "temp" for f in frames)
    assert metric(text, "biopriv_releases_total", feature_set="eeg") == n_eeg
    assert metric(text, "biopriv_releases_total", feature_set="temp") == n_temp
    assert metric(text, "biopriv_dead_letters_total", reason="undecodable") == len(bad)
    assert metric(text, "biopriv_frame_to_release_seconds_count") == n_eeg + n_temp
    assert metric(text, "biopriv_ready") == 1.0
    assert metric(text, "biopriv_epsilon_spent_total") == pytest.approx(0.1 * (n_eeg + n_temp), abs=1e-6)
    assert "eeg-m" not in text and "band-m" not in text  # no device label
    lag = [ln for ln in text.splitlines() if ln.startswith("biopriv_consumer_lag{")]
    assert lag and all(float(ln.split()[-1]) >= 0 for ln in lag)
