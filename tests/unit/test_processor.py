"""The processing core without any broker: bytes in, releases / dead letters / events out."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from pipeline.features import DEFAULT_WINDOWS, FeatureSet
from pipeline.frames import Frame, encode_frame, make_frame
from pipeline.privacy import PrivacyConfig, PrivacyEngine, load_keys
from pipeline.processor import Processor

T0 = 1_764_000_000_000_000_000
CHANNELS = ["Fz", "Cz", "Pz"]


def eeg_frames(device: str = "eeg-1", seconds: float = 4.0, seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    n, rate = 32, 256.0
    return [
        make_frame(device, "eeg", k, T0 + int(k * n * 1e9 / rate), rate, CHANNELS, "uV",
                   rng.normal(0, 20, (len(CHANNELS), n)), send_ns=T0 + k)
        for k in range(int(seconds * rate / n))
    ]


def make_processor(tmp_path: Path, config: PrivacyConfig | None = None) -> Processor:
    keys = load_keys(tmp_path / "keys.json")
    return Processor(PrivacyEngine(config or PrivacyConfig.default(), keys), keys.pseudonym, clock=lambda: 42)


def run(proc: Processor, frames: list[Frame]) -> list[dict]:
    docs = []
    for f in frames:
        out = proc.process(encode_frame(f), f.device_id.encode())
        assert not out.dead_letters
        assert all(r.t_release_ns == 42 for r in out.releases)  # the injected clock, outside the value
        docs += [json.loads(r.value) for r in out.releases]
    return docs


def pin(proc: Processor, device: str = "eeg-1", lineage: str = "cd" * 16) -> Processor:
    """Fix the device's ledger lineage (as restored from durable state), for reproducible noise."""
    proc.engine.set_header(device, {"lineage": lineage, "keys": {}})
    return proc


def test_eeg_windows_become_releases(tmp_path: Path) -> None:
    docs = run(make_processor(tmp_path), eeg_frames(seconds=4.0))
    w = DEFAULT_WINDOWS["eeg"]
    assert len(docs) == int((4.0 - w.length_s) / w.hop_s) + 1 == 5
    slots = [d["slot"]["start"] for d in docs]
    assert slots == sorted(set(slots)) and all(d["slot"]["seconds"] == w.hop_s for d in docs)
    for d in docs:
        assert d["stream"] == "eeg" and d["feature_set"] == "eeg"
        assert d["values"] and set(d["values"]) <= set(d["noise"])
        for name in d["values"]:
            n = d["noise"][name]
            assert n["epsilon"] > 0 and n["mechanism"] and n["lower"] < n["upper"] and n["grid_steps"] == 1024
        assert "t_release_ns" not in d  # delivery metadata travels as a header
        assert "eeg-1" not in json.dumps(d)


def test_releases_contain_no_raw_values_and_differ_from_clean_features(tmp_path: Path) -> None:
    frames = eeg_frames(seconds=3.0)
    proc = make_processor(tmp_path)
    docs = run(proc, frames)
    raw = {float(v) for f in frames for v in f.samples.ravel()}
    assert not raw & {v for d in docs for v in d["values"].values()}
    # The released values are noised: they differ from the clean feature values of the window.
    fs: FeatureSet = proc._feature_sets("eeg")[0]
    from pipeline.windows import Windower

    windower = Windower(fs.window)
    clean = [fs.compute(w) for f in frames for w in windower.push(f)]
    assert len(clean) == len(docs)
    for c, d in zip(clean, docs, strict=True):
        common = set(c) & set(d["values"])
        assert common
        assert sum(c[k] != d["values"][k] for k in common) >= 0.9 * len(common)


def test_same_frames_same_keys_give_identical_releases(tmp_path: Path) -> None:
    """Same frames (binary or JSON), keys and ledger lineage: the same bytes. A new ledger (another
    lineage) or other keys: fresh noise."""
    frames = eeg_frames(seconds=3.0, seed=3)
    a_proc = pin(make_processor(tmp_path))
    a = [r.value for f in frames for r in a_proc.process(encode_frame(f), b"eeg-1").releases]
    b_proc = pin(make_processor(tmp_path))
    b = [r.value for f in frames for r in b_proc.process(encode_frame(f, "json"), b"eeg-1").releases]
    assert a and a == b
    fresh = make_processor(tmp_path)
    c = [r.value for f in frames for r in fresh.process(encode_frame(f), b"eeg-1").releases]
    other = pin(make_processor(tmp_path / "other"))
    d = [r.value for f in frames for r in other.process(encode_frame(f), b"eeg-1").releases]
    for x in (c, d):
        assert [json.loads(v)["values"] for v in x] != [json.loads(v)["values"] for v in a]


def test_bad_messages_become_dead_letters_with_original_bytes(tmp_path: Path) -> None:
    proc = make_processor(tmp_path)
    good = eeg_frames(seconds=1.0)
    cases = {
        b"garbage": "undecodable",
        b'{"v": 2}': "unknown_version",
        encode_frame(good[0]).replace(b"eeg-1", b"eeg-2"): "key_mismatch",
    }
    for value, reason in cases.items():
        out = proc.process(value, b"eeg-1")
        assert not out.releases
        assert [(d.reason, d.value, d.key) for d in out.dead_letters] == [(reason, value, b"eeg-1")]
    assert proc.stats.dead_letters == 3 and proc.stats.by_reason == {
        "undecodable": 1, "unknown_version": 1, "key_mismatch": 1}
    # good frames keep flowing afterwards
    assert run(proc, eeg_frames(seconds=2.5)) != []


def test_feature_error_is_an_event_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = make_processor(tmp_path)
    fs = proc._feature_sets("eeg")[0]

    def boom(window: object) -> dict[str, float]:
        raise RuntimeError("bug")

    monkeypatch.setattr(fs.extractor, "compute", boom)
    events = []
    for f in eeg_frames(seconds=2.5):
        out = proc.process(encode_frame(f), b"eeg-1")
        assert not out.releases and not out.dead_letters
        events += out.events
    assert [e["event"] for e in events] == ["feature_error", "feature_error"]
    assert all("eeg-1" not in json.dumps(e) for e in events)
    assert proc.stats.feature_errors == 2


def test_budget_exhaustion_suppresses_and_emits_an_event(tmp_path: Path) -> None:
    # Each release costs 0.5; the lifetime cap pays for exactly three.
    config = PrivacyConfig.from_mapping({"epsilon": 0.5, "lifetime_epsilon": 1.5, "w_event": None, "period": None})
    proc = make_processor(tmp_path, config)
    released, events = [], []
    for f in eeg_frames(seconds=5.0):
        out = proc.process(encode_frame(f), b"eeg-1")
        released += out.releases
        events += out.events
    assert len(released) == 3
    assert len(events) == 7 - 3
    assert {e["event"] for e in events} == {"release_suppressed"}
    assert all("values" not in e and "eeg-1" not in json.dumps(e) for e in events)
    assert proc.stats.suppressed == 4


def _eeg(seqs: range, rate: float, t_start_ns: int, seed: int) -> list[Frame]:
    rng = np.random.default_rng(seed)
    n = 32
    return [make_frame("eeg-idle", "eeg", k, t_start_ns + int((k - seqs.start) * n * 1e9 / rate), rate, CHANNELS, "uV",
                       rng.normal(0, 20, (len(CHANNELS), n)), send_ns=T0 + k) for k in seqs]


def test_idle_eviction_keeps_the_window_grid(tmp_path: Path) -> None:
    """A device idle past the limit loses its ring buffers but keeps its window indices: after a rate
    change (a restart: the grid is re-anchored at a later seq) and an hour of silence, the evicted
    processor releases exactly what the never-evicted one releases for windows after the silence."""
    now = [0.0]
    a = pin(make_processor(tmp_path), "eeg-idle")
    keys = load_keys(tmp_path / "keys.json")
    b = pin(Processor(PrivacyEngine(PrivacyConfig.default(), keys), keys.pseudonym, clock=lambda: 42,
                      idle_clock=lambda: now[0]), "eeg-idle")
    before = _eeg(range(0, 40), 256.0, T0, 1) + _eeg(range(40, 100), 128.0, T0 + int(5e9), 2)  # restart at seq 40
    resume_ns = T0 + int(3600e9)
    after = _eeg(range(100, 180), 128.0, resume_ns, 3)  # an hour later, same format, seq continues
    assert len(run(a, before)) == len(run(b, before)) > 0
    now[0] = 100.0
    assert b.evict_idle(600.0) == set()  # not idle long enough
    now[0] = 1000.0
    assert b.evict_idle(600.0) == {"eeg-idle"}
    assert b.devices() == set() and b.parked() == 1
    ra, rb = run(a, after), run(b, after)
    # same windows (indices, hence ids), values and noise
    resume_slot = datetime.fromtimestamp(resume_ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    after_a = [d for d in ra if d["slot"]["start"] >= resume_slot]
    assert after_a and rb == after_a
    assert b.devices() == {"eeg-idle"} and b.parked() == 0
    # a stale redelivery from before the anchored restart is dropped, not taken for a restart
    c = Processor(PrivacyEngine(PrivacyConfig.default(), keys), keys.pseudonym, clock=lambda: 42, idle_clock=lambda: now[0])
    run(c, before)
    now[0] = 5000.0
    c.evict_idle(600.0)
    assert run(c, before[:5]) == [] and c.parked() == 1


def test_idle_eviction_after_a_format_change_continues_indices(tmp_path: Path) -> None:
    now = [0.0]
    keys = load_keys(tmp_path / "keys.json")
    b = Processor(PrivacyEngine(PrivacyConfig.default(), keys), keys.pseudonym, clock=lambda: 42, idle_clock=lambda: now[0])
    first = run(b, _eeg(range(0, 60), 256.0, T0, 1))
    now[0] = 1000.0
    assert b.evict_idle(600.0) == {"eeg-idle"}
    later = run(b, _eeg(range(0, 60), 128.0, T0 + int(3600e9), 2))  # rebooted at another rate
    assert first and len(later) >= 13  # (7.5 s of frames: 2-s windows every 0.5 s) all released
    assert not {d["release_id"] for d in later} & {d["release_id"] for d in first}  # indices continued
