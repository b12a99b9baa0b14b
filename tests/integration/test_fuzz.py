"""Bad input at scale on the live broker: 100,000+ malformed frames among good ones.

Malformed frames are mutations of valid binary and JSON frames (bit flips, truncation, wrong
types, NaN, huge values, missing fields, wrong keys, oversize), kept only when the decoder
rejects them, so the expected dead-letter count is exact. They are interleaved with the good
frames of a few devices, one of which changes rate mid-stream and one whose clock jumps. The
worker must stay alive, dead-letter each malformed frame once with a reason header, and release
exactly the windows the offline core releases from the good frames.
"""

from __future__ import annotations

import json
import random
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from connectors.kafka import Topics, make_consumer, make_producer
from pipeline.errors import FrameError
from pipeline.frames import Frame, decode_frame, encode_frame, make_frame
from pipeline.privacy.config import PrivacyWarning

pytestmark = pytest.mark.integration

N_MALFORMED = 100_000
T0 = 1_764_000_000_000_000_000


def good_frames() -> dict[str, list[Frame]]:
    rng = np.random.default_rng(5)
    out: dict[str, list[Frame]] = {}
    for d in ("fz-eeg-1", "fz-eeg-2"):
        out[d] = [make_frame(d, "eeg", k, T0 + k * 125_000_000, 256.0, ["Fz", "Cz"], "uV", rng.normal(0, 10, (2, 32)))
                  for k in range(64)]  # 8 s
    # rate change mid-stream: 32 frames at 256 Hz, then 128 Hz (16-sample frames keep 125 ms)
    rc = [make_frame("fz-rate", "eeg", k, T0 + k * 125_000_000, 256.0, ["Oz"], "uV", rng.normal(0, 10, (1, 32)))
          for k in range(32)]
    rc += [make_frame("fz-rate", "eeg", k, T0 + k * 125_000_000, 128.0, ["Oz"], "uV", rng.normal(0, 10, (1, 16)))
           for k in range(32, 72)]
    out["fz-rate"] = rc
    # clock jump: capture time leaps forward by one hour half way (sequence numbers continue)
    cj = [make_frame("fz-clock", "eeg", k, T0 + k * 125_000_000 + (3600 * 10**9 if k >= 32 else 0), 256.0, ["Pz"],
                     "uV", rng.normal(0, 10, (1, 32))) for k in range(64)]
    out["fz-clock"] = cj
    return out


def mutations(seeds: list[tuple[str, bytes]], n: int, rng: random.Random) -> list[tuple[bytes, bytes, str]]:
    """``n`` (key, value, expected reason) that the decoder rejects."""
    json_doc = json.loads(next(v for _k, v in seeds if v[:1] == b"{"))
    out: list[tuple[bytes, bytes, str]] = []
    while len(out) < n:
        key, value = rng.choice(seeds)
        kind = rng.randrange(8)
        if kind == 0:  # bit flips
            b = bytearray(value)
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
            cand = bytes(b)
        elif kind == 1:  # truncation
            cand = value[: rng.randrange(len(value))]
        elif kind == 2:  # wrong types
            doc = dict(json_doc)
            doc[rng.choice(["seq", "rate", "channels", "samples", "device", "t_capture_ns", "v"])] = rng.choice(
                ["x", -1, None, [1, 2], {"a": 1}, 1.5, True])
            cand = json.dumps(doc).encode()
        elif kind == 3:  # NaN / infinity / huge values
            doc = dict(json_doc)
            doc["samples"] = [[rng.choice([float("nan"), float("inf"), 1e39, -1e300])] * len(json_doc["samples"][0])]
            cand = json.dumps(doc).encode()
        elif kind == 4:  # missing field
            doc = dict(json_doc)
            doc.pop(rng.choice(list(doc)))
            cand = json.dumps(doc).encode()
        elif kind == 5:  # random bytes
            cand = rng.randbytes(rng.randrange(0, 200))
        elif kind == 6:  # wrong key
            out.append((b"intruder-" + str(rng.randrange(10)).encode(), value, "key_mismatch"))
            continue
        else:  # garbage JSON / msgpack prefixes
            cand = rng.choice([b"{", b"{}", b"[]", b"\x80", b"\x81\xa1v\x01", b"null", b"  {\"v\": 1}"])
        try:
            frame = decode_frame(cand)
        except FrameError as exc:
            out.append((key, cand, exc.reason))
            continue
        if frame.device_id.encode() != key:
            out.append((key, cand, "key_mismatch"))
    return out


def test_fuzz_100k_malformed(kafka_bootstrap: str, topics: Topics, start_worker: Any, tmp_path: Path) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:  # let oversize frames (> 1 MiB) reach the worker
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topics.raw("eeg"), configs={"max.message.bytes": "3000000"})])
    finally:
        admin.close()
    worker = start_worker()
    worker.wait_for_log("checkpoints=", timeout_s=60)
    rng = random.Random(1234)
    goods = good_frames()
    seeds = [(d.encode(), encode_frame(f, enc)) for d, fs in goods.items() for f in fs[:8] for enc in ("binary", "json")]
    t0 = time.monotonic()
    bad = mutations(seeds, N_MALFORMED, rng)
    oversize = [(b"fz-eeg-1", b"{" + b" " * (1 << 20) + b"}", "oversize") for _ in range(3)]
    bad += oversize
    gen_s = time.monotonic() - t0

    # interleave: good frames in order per device, malformed ones spread between them
    queue: list[tuple[bytes, bytes]] = [(k, v) for k, v, _r in bad]
    rng.shuffle(queue)
    good_stream = [(d.encode(), encode_frame(f, "binary" if f.seq % 2 else "json")) for fs in zip(*goods.values(), strict=False) for d, f in
                   zip(goods, fs, strict=True)]
    # zip truncates to the shortest device; add the remainder in order
    shortest = min(len(fs) for fs in goods.values())
    good_stream += [(d.encode(), encode_frame(f)) for d, fs in goods.items() for f in fs[shortest:]]
    step = len(queue) // (len(good_stream) + 1)
    producer = make_producer(kafka_bootstrap, linger_ms=20, batch_size=512 * 1024, acks=1, max_request_size=3_000_000)
    t0 = time.monotonic()
    i = 0
    for k, v in good_stream:
        for bk, bv in queue[i : i + step]:
            producer.send(topics.raw("eeg"), key=bk, value=bv)
        i += step
        producer.send(topics.raw("eeg"), key=k, value=v)
    for bk, bv in queue[i:]:
        producer.send(topics.raw("eeg"), key=bk, value=bv)
    producer.flush()
    producer.close()
    send_s = time.monotonic() - t0

    # offline reference on the good frames only
    from pipeline.privacy import PrivacyConfig, PrivacyEngine, load_keys
    from pipeline.processor import Processor

    keys = load_keys(tmp_path / "keys.json")
    core = Processor(PrivacyEngine(PrivacyConfig.default(), keys), keys.pseudonym)
    expected = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        for k, v in good_stream:
            expected |= {r.release_id for r in core.process(v, k).releases}

    dead: list[Any] = []
    releases: list[Any] = []
    dl = make_consumer([topics.deadletter], kafka_bootstrap, max_partition_fetch_bytes=8 * 1024 * 1024)
    pc = make_consumer([topics.private], kafka_bootstrap)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 90 and (len(dead) < len(bad) or len({json.loads(r.value)["release_id"] for r in releases}) < len(expected)):
            for batch in dl.poll(timeout_ms=200, max_records=50_000).values():
                dead.extend(batch)
            for batch in pc.poll(timeout_ms=50).values():
                releases.extend(batch)
        drain_s = time.monotonic() - t0
        end = time.monotonic() + 1.5  # anything beyond the expected count?
        while time.monotonic() < end:
            for batch in dl.poll(timeout_ms=200).values():
                dead.extend(batch)
    finally:
        dl.close()
        pc.close()

    reasons = Counter(dict(r.headers).get("biopriv-reason", b"").decode() for r in dead)
    want = Counter(r for _k, _v, r in bad)
    got_ids = {json.loads(r.value)["release_id"] for r in releases}
    print(f"\nmalformed sent: {len(bad)} (generated in {gen_s:.1f} s), good frames: {len(good_stream)}, "
          f"sent in {send_s:.1f} s; dead letters: {len(dead)} in {drain_s:.1f} s "
          f"({len(dead) / max(drain_s, 1e-9):.0f}/s); releases: {len(got_ids)} of {len(expected)} expected")
    print(f"reasons: {dict(reasons.most_common())}")
    assert worker.alive, worker.log()[-3000:]
    assert len(dead) == len(bad), worker.log()[-3000:]
    assert reasons == want
    assert all(dict(r.headers).get("biopriv-detail") for r in dead)
    assert sum(1 for r in dead if dict(r.headers).get("biopriv-truncated")) == len(oversize)
    assert got_ids == expected
