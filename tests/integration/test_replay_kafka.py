"""Replay into the live broker and read it back: every sample once per device, in order, bit-exact."""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from connectors.kafka import Topics, make_consumer
from connectors.recordings import Recording, open_recording
from connectors.replay import KafkaSender, ReplayConfig, plan_replay, replay, total_frames
from pipeline.frames import Frame, decode_frame

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SHARED = [
    "eeg/bci2000_eegmmi_64ch.edf",
    "eeg/openbci_cosleep_19ch.bdf",
    "ecg/100.hea",
    "multi/mixedsignals.hea",
    "audio/speech_2spk_16k.wav",
]


def topic_map(topics: Topics) -> dict[str, str]:
    return {m: topics.raw(m) for m in ("eeg", "audio", "bio")}


def read_back(bootstrap: str, topic_names: list[str], expected: int, timeout_s: float = 40.0) -> list[tuple[Any, Frame]]:
    """Consume ``expected`` messages (failing on timeout); return ``(message, frame)`` in partition order."""
    consumer = make_consumer(topic_names, bootstrap, group_id=f"g-{uuid.uuid4().hex[:10]}", auto_offset_reset="earliest")
    out: list[tuple[Any, Frame]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                out.extend((m, decode_frame(m.value)) for m in records)
        # anything beyond the expected count would be a duplicate
        extra_deadline = time.monotonic() + 1.0
        while time.monotonic() < extra_deadline:
            for records in consumer.poll(timeout_ms=200).values():
                out.extend((m, decode_frame(m.value)) for m in records)
    finally:
        consumer.close()
    assert len(out) == expected, f"read {len(out)} frames back, expected {expected}"
    return out


def check_every_sample(rec: Recording, config: ReplayConfig, got: list[tuple[Any, Frame]]) -> None:
    by_stream: dict[tuple[str, str], list[tuple[Any, Frame]]] = defaultdict(list)
    for msg, frame in got:
        assert msg.key == frame.device_id.encode()
        assert msg.topic == config.topics[frame.modality]
        by_stream[(frame.device_id, frame.stream)].append((msg, frame))
    plan = plan_replay([rec], config)
    assert set(by_stream) == {(ds.device_id, ds.data.name) for ds in plan}
    for ds in plan:
        items = by_stream[(ds.device_id, ds.data.name)]
        assert len({(m.topic, m.partition) for m, _ in items}) == 1, "a device stream must stay on one partition"
        frames = [f for _, f in sorted(items, key=lambda mf: mf[0].offset)]
        assert [f.seq for f in frames] == list(range(len(frames))), "frames out of order or duplicated"
        assert all(f.sample_rate == ds.data.rate for f in frames)
        assert all(f.channels == ds.data.channels and f.units == ds.data.units for f in frames)
        samples = np.concatenate([f.samples for f in frames], axis=1)
        assert samples.dtype == np.dtype("<f4")
        expected = np.roll(ds.data.samples, -ds.offset, axis=1)
        assert samples.shape == expected.shape
        assert samples.tobytes() == np.ascontiguousarray(expected, dtype="<f4").tobytes(), "samples not bit-exact"
        captures = [f.capture_ns for f in frames]
        assert captures == sorted(captures) and all(f.send_ns > 0 for f in frames)


@pytest.mark.shared_data
@pytest.mark.parametrize("rel", SHARED)
def test_replay_shared_recording_roundtrip(kafka_bootstrap: str, topics: Topics, rel: str) -> None:
    path = DATA / rel
    if not path.exists():
        pytest.skip(f"shared recording {path} is absent (real data lives in ../shared/data, see its README)")
    rec = open_recording(path)
    config = ReplayConfig(devices=2, speed=0, stagger_s=7.5, topics=topic_map(topics), device_prefix="it")
    expected = total_frames(plan_replay([rec], config))
    assert expected is not None
    sender = KafkaSender(kafka_bootstrap)
    try:
        summary = replay([rec], config, sender)
    finally:
        sender.close()
    assert summary.frames == expected and not summary.interrupted
    got = read_back(kafka_bootstrap, list(topics.raw_all), expected)
    check_every_sample(rec, config, got)
    if rel.startswith("multi/"):
        assert {(f.stream, f.sample_rate) for _, f in got} == {("ecg", 249.89), ("ppg", 124.945), ("resp", 62.4725)}


def test_cli_replay_small_wav(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> None:
    """The command line end to end, at real time for one second, with the JSON summary."""
    from scipy.io import wavfile

    from pipeline.cli import main

    x = (np.sin(np.arange(16000) / 5) * 20000).astype(np.int16)
    wav = tmp_path / "tone.wav"
    wavfile.write(wav, 8000, x)
    summary_path = tmp_path / "summary.json"
    code = main([
        "replay", str(wav), "--devices", "3", "--speed", "1", "--duration", "1", "--no-progress",
        "--topic", f"audio={topics.raw('audio')}", "--bootstrap", kafka_bootstrap, "--json-summary", str(summary_path),
    ])
    assert code == 0
    summary = json.loads(summary_path.read_text())
    assert summary["frames"] == 3 * 50 and summary["devices"] == 3
    assert set(summary["pacing_error_ms"]) == {"median", "p99", "max", "mean"}
    assert summary["pacing_error_ms"]["median"] is not None
    got = read_back(kafka_bootstrap, [topics.raw("audio")], 150)
    rec = open_recording(wav, channels=None)
    from connectors.replay import clip_recording

    check_every_sample(
        clip_recording(rec, 0.0, 1.0), ReplayConfig(devices=3, topics=topic_map(topics)), got
    )


def test_generic_client_json_frame(kafka_bootstrap: str, topics: Topics) -> None:
    """A frame written by hand as JSON and produced with a plain client decodes like ours."""
    from kafka import KafkaProducer

    text = (
        '{"v":1,"device":"kcat-1","modality":"bio","stream":"ppg","seq":0,'
        '"t_capture_ns":1700000000000000000,"t_send_ns":1700000000100000000,"rate":64,'
        '"channels":["ppg"],"units":["NU"],"samples":[[0.1,0.25,-1.5,3]]}'
    )
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        producer.send(topics.raw("bio"), key=b"kcat-1", value=text.encode()).get(timeout=30)
    finally:
        producer.close()
    (msg, frame), = read_back(kafka_bootstrap, [topics.raw("bio")], 1)
    assert msg.key == b"kcat-1"
    assert (frame.device_id, frame.modality, frame.stream, frame.seq, frame.sample_rate) == ("kcat-1", "bio", "ppg", 0, 64.0)
    assert frame.capture_ns == 1_700_000_000_000_000_000 and frame.channels == ("ppg",)
    np.testing.assert_array_equal(frame.samples, np.array([[0.1, 0.25, -1.5, 3]], dtype=np.float32))


def test_tail_prints_releases(kafka_bootstrap: str, topics: Topics, capsys: pytest.CaptureFixture[str]) -> None:
    from kafka import KafkaProducer

    from pipeline.cli import main

    releases = [
        {"v": 2, "release_id": f"{i:032x}", "pseudonym": f"p{i}", "stream": "ppg" if i % 2 else "eeg",
         "feature_set": "x", "slot": {"start": "2023-11-14T22:13:20Z", "seconds": 1.0},
         "values": {"a": i}, "noise": {"a": {"mechanism": "laplace", "epsilon": 1.0}}}
        for i in range(4)
    ]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        for r in releases:
            producer.send(topics.private, value=json.dumps(r).encode())
        producer.send(topics.private, value=b"garbage")
        producer.flush(timeout=30)
    finally:
        producer.close()
    args = ["tail", "--bootstrap", kafka_bootstrap, "--topic", topics.private, "--from-beginning", "--timeout", "3"]
    assert main([*args, "--json", "--stream", "ppg"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert sorted(r["pseudonym"] for r in lines) == ["p1", "p3"]
    assert main([*args, "--pseudonym", "p2", "--max", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("SLOT_START_UTC") and len(out) == 2 and "p2" in out[1] and "a=2" in out[1]
