"""The privacy breaks and weaknesses found by review, each reproduced on the processing core.

Every test here failed on the code before the fix (git 93b9188) for the reason its docstring
gives, and passes after it. They drive the public path the worker runs: frame bytes into a
:class:`~pipeline.processor.Processor`, releases and ledger records out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.frames import Frame, encode_frame, encode_json, make_frame
from pipeline.privacy import KeyRing, PrivacyConfig, PrivacyEngine, ReleaseRequest, Suppression
from pipeline.privacy import engine as engine_mod
from pipeline.privacy import mechanisms as mech
from pipeline.privacy.config import PeriodRule
from pipeline.privacy.noise import NoiseStream
from pipeline.privacy.vector import ReleasePlan
from pipeline.processor import Processor
from pipeline.state import device_record, split_ledger

pytestmark = pytest.mark.filterwarnings("ignore::pipeline.privacy.config.PrivacyWarning")

SEC = 1_000_000_000
T0 = 1_764_000_000 * SEC  # 2025-11-24T16:00:00Z


def keyring(tag: bytes = b"k") -> KeyRing:
    return KeyRing({"n1": tag * 32}, {"p1": b"p" * 32}, "n1", "p1")


def processor(keys: KeyRing | None = None, config: PrivacyConfig | None = None, **kw: Any) -> Processor:
    keys = keys or keyring()
    return Processor(PrivacyEngine(config or PrivacyConfig.default(), keys), keys.pseudonym, clock=lambda: 42, **kw)


# Streams as devices send them: (rate Hz, samples per frame, channels, unit).
LAYOUT: dict[str, tuple[float, int, tuple[str, ...], str]] = {
    "eeg": (128.0, 16, ("Fz", "Cz", "Pz", "Oz"), "uV"),
    "mic": (16000.0, 800, ("mic",), "FS"),
    "ppg": (64.0, 16, ("ppg",), "NU"),
    "eda": (16.0, 4, ("eda",), "uS"),
    "acc": (32.0, 8, ("x", "y", "z"), "g"),
    "temp": (4.0, 1, ("skin",), "degC"),
    "resp": (25.0, 5, ("resp",), "NU"),
}


def signal(stream: str, n: int, rate: float, t0_s: float, rng: np.random.Generator, shift: float = 0.0) -> np.ndarray:
    """Plausible samples of ``stream`` (channels x n), starting at ``t0_s`` seconds."""
    t = t0_s + np.arange(n) / rate
    ch = len(LAYOUT[stream][2])
    if stream == "eeg":
        return 20 * np.sin(2 * np.pi * 10 * t) + rng.normal(0, 5, (ch, n))
    if stream == "mic":
        return (0.1 + shift) * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 0.5 * t) > 0) + rng.normal(0, 0.01, (1, n))
    if stream == "ppg":
        return np.sin(2 * np.pi * 1.2 * t) ** 15 + rng.normal(0, 0.02, (1, n))
    if stream == "eda":
        return 4.0 + shift + 0.1 * np.sin(2 * np.pi * 0.05 * t) + rng.normal(0, 0.01, (1, n))
    if stream == "acc":
        return np.vstack([np.sin(2 * np.pi * 1.8 * t), np.cos(2 * np.pi * 1.8 * t), 1 + 0 * t]) * (1 + shift) + rng.normal(0, 0.05, (3, n))
    if stream == "temp":
        return 32.5 + shift + 0.01 * t[None, :] + rng.normal(0, 0.01, (1, n))
    return np.sin(2 * np.pi * 0.25 * t) + rng.normal(0, 0.05, (1, n))


def frames(
    device: str, stream: str, seqs: range, t0_ns: int, *, seed: int = 0, shift: float = 0.0, jitter_ns: int = 0,
    channels: tuple[str, ...] | None = None,
) -> list[Frame]:
    rate, n, chans, unit = LAYOUT[stream]
    rng = np.random.default_rng(seed)
    out = []
    for i, seq in enumerate(seqs):
        t_s = i * n / rate
        cap = t0_ns + int(round(t_s * SEC)) + (int(rng.integers(-jitter_ns, jitter_ns + 1)) if jitter_ns else 0)
        out.append(make_frame(device, stream, seq, cap, rate, channels or chans, unit,
                              signal(stream, n, rate, t_s, rng, shift), send_ns=t0_ns + i))
    return out


def feed(proc: Processor, fs: list[Frame], encoder=encode_frame) -> tuple[list[dict], list[dict], int]:
    """Releases (parsed), events and dead letters of ``fs``, in order."""
    docs: list[dict] = []
    events: list[dict] = []
    dead = 0
    for f in fs:
        out = proc.process(encoder(f), f.device_id.encode())
        docs += [json.loads(r.value) for r in out.releases]
        events += out.events
        dead += len(out.dead_letters)
    return docs, events, dead


class _Recorder:
    """Records, for every privatized vector, the keystream key it was noised with."""

    def __init__(self) -> None:
        self.uses: dict[bytes, list[np.ndarray]] = {}

    def reused_on_other_data(self) -> int:
        """Keystream keys that noised two different input vectors (same noise, different data)."""
        bad = 0
        for vectors in self.uses.values():
            first = vectors[0]
            if any(not np.array_equal(first, v, equal_nan=True) for v in vectors[1:]):
                bad += 1
        return bad


@pytest.fixture
def noise_uses(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Recorder]:
    rec = _Recorder()

    class Recording(NoiseStream):
        __slots__ = ("key",)

        def __init__(self, key: bytes) -> None:
            super().__init__(key)
            self.key = key

    real_apply = ReleasePlan.apply

    def apply(self: ReleasePlan, values: Any, stream: Any) -> Any:
        arr = np.array(values if isinstance(values, np.ndarray) else [values[n] for n in self.names], dtype=np.float64)
        rec.uses.setdefault(getattr(stream, "key", b""), []).append(arr)
        return real_apply(self, values, stream)

    monkeypatch.setattr(engine_mod, "NoiseStream", Recording)
    monkeypatch.setattr(ReleasePlan, "apply", apply)
    yield rec


WEARABLE = ("ppg", "eda", "acc", "temp", "resp")


# --------------------------------------------------------------------------------------- 1
@pytest.mark.parametrize("mechanism", [None, "laplace", "piecewise", "duchi"])
def test_ledger_loss_after_a_reboot_never_reuses_noise_on_other_data(noise_uses: _Recorder, mechanism) -> None:
    """Break 1, reboot: a device restarts its sequence numbers at 0 an hour later, with other data,
    and a worker without its ledger processes it. Before: noise depended only on (device, stream,
    feature set, window index), so window k of the new boot reused window k's noise of the old boot
    and the difference of two releases was the difference of the true values. Every feature set of
    a wearable and an EEG headset, every numeric mechanism."""
    config = PrivacyConfig(mechanisms={"*": mechanism}, strategy="split") if mechanism else PrivacyConfig()
    keys = keyring()
    a, b = processor(keys, config), processor(keys, config)
    released = 0
    for stream in (*WEARABLE, "eeg", "mic"):
        seconds = 75 if stream != "mic" else 6
        n_frames = int(seconds * LAYOUT[stream][0] / LAYOUT[stream][1])
        dev = f"dev-{stream}"
        before = frames(dev, stream, range(n_frames), T0, seed=1)
        after = frames(dev, stream, range(n_frames), T0 + 3600 * SEC, seed=2, shift=1.0)  # rebooted
        released += len(feed(a, before)[0]) + len(feed(b, after)[0])
    assert released > 100
    assert noise_uses.reused_on_other_data() == 0


def test_ledger_loss_on_repartition_never_reuses_noise_on_other_data(noise_uses: _Recorder) -> None:
    """Break 1, repartition: a device rebooted (its window grid restarted, kept as a grid anchor in
    its ledger record), then its partition moved to a worker without its ledger. Before: the new
    owner indexed windows from sequence number 0 again, the indices of the first boot's windows, and
    reused their noise on the second boot's data."""
    keys = keyring()
    a, b = processor(keys), processor(keys)
    released = 0
    for stream in ("eeg", *WEARABLE):
        rate, n, _, _ = LAYOUT[stream]
        count = int(75 * rate / n)
        dev = f"mv-{stream}"
        boot1 = frames(dev, stream, range(count), T0, seed=3)
        boot2 = frames(dev, stream, range(2 * count), T0 + 3600 * SEC, seed=4, shift=1.0)
        released += len(feed(a, boot1 + boot2[:count])[0])
        released += len(feed(b, boot2[count:])[0])  # after the move: the new owner, no ledger
    assert released > 100
    assert noise_uses.reused_on_other_data() == 0


# --------------------------------------------------------------------------------------- 2
def _hex_strings(doc: Any) -> Iterator[str]:
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _hex_strings(k)
            yield from _hex_strings(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _hex_strings(v)
    elif isinstance(doc, str) and re.fullmatch(r"[0-9a-f]{16,64}", doc):
        yield doc


def test_state_record_gives_no_unreleased_value_and_no_link_to_releases() -> None:
    """Break 2: a reader of the state topic brute-forces the ledger digest of a microphone release
    (21 features, Duchi, 1 released): every feature has two possible outputs, so 2^21 candidates.
    Before: the digest was an unkeyed blake2b over all 21 noised values and recovered the 20 never
    published; the record also paired each public release id with the raw device id."""
    proc = processor()
    docs, _, _ = feed(proc, frames("mic-7", "mic", range(60), T0, seed=4))
    assert docs
    record = device_record("mic-7", split_ledger(proc.engine.ledger_state(("mic-7",)), ("mic-7",))["mic-7"])[1]
    text = record.decode()
    for d in docs:  # nothing in state links a public release to the device id
        assert d["release_id"] not in text
        assert d["pseudonym"] not in text
    # the attacker knows the public plan: each feature's two Duchi outputs, in plan order
    specs = proc._specs_for(proc._feature_sets("mic")[0], _a_window(proc))
    plan = proc.engine.plan("mic", specs)
    by_name = {s.name: s for s in specs}
    lows, highs = [], []
    for name in plan.names:
        s = by_name[name]
        off, step = mech.output_grid(plan.feature_mechanisms[name], plan.feature_epsilon[name], s.lower, s.upper, plan.grid_steps)
        lows.append(off)
        highs.append(off + step)
    lows_a, highs_a = np.array(lows), np.array(highs)
    d = len(lows)
    targets = set(_hex_strings(json.loads(record)))
    assert targets, "the ledger keeps some digest to check replays against"
    sampled = [plan.names.index(n) for n in docs[0]["values"]]
    tails = [b"", np.array(sampled).astype("<i8").tobytes()]
    assert _brute_force(lows_a, highs_a, targets, tails) == 0


def _brute_force(lows: np.ndarray, highs: np.ndarray, targets: set[str], tails: list[bytes]) -> int:
    """Hash every vector of per-feature low/high outputs (2^d of them) as the old digest did;
    count the targets recovered."""
    import hashlib

    d = lows.size
    sizes = {len(h) // 2 for h in targets}
    found = 0
    chunk = 1 << 15
    bits = (np.arange(chunk)[:, None] >> np.arange(d)[None, :]) & 1
    for tail in tails:
        width = 8 * d + len(tail)
        for hi_bits in range(max(1, (1 << d) // chunk)):
            mask = bits if d <= 15 else np.concatenate(
                [bits[:, :15], ((hi_bits >> np.arange(d - 15)) & 1)[None, :].repeat(chunk, 0)], axis=1)
            cand = np.where(mask.astype(bool), highs, lows)
            rows = np.frombuffer(cand.astype("<f8").tobytes(), dtype=np.uint8).reshape(chunk, 8 * d)
            if tail:
                rows = np.concatenate([rows, np.frombuffer(tail, dtype=np.uint8)[None, :].repeat(chunk, 0)], axis=1)
            mv = memoryview(np.ascontiguousarray(rows).tobytes())
            for size in sizes:
                for i in range(chunk):
                    if hashlib.blake2b(mv[i * width : (i + 1) * width], digest_size=size).hexdigest() in targets:
                        found += 1
    return found


def _a_window(proc: Processor):
    from pipeline.windows import Window

    rate, n, chans, _ = LAYOUT["mic"]
    return Window(0, T0, T0 + SEC, rate, chans, ("FS",), np.zeros((1, int(rate))), 0, 0, 0.0)


# --------------------------------------------------------------------------------------- 3
@pytest.mark.parametrize("encoder", [encode_frame, encode_json])
def test_non_finite_samples_do_not_change_what_is_released(encoder) -> None:
    """Weakness 3: one NaN sample (binary frames) or one number beyond float32 (JSON frames) made
    the whole frame a dead letter, and the windows that needed it vanished from the release topic.
    Whether a window is released must not depend on sample values."""
    clean = frames("eeg-n", "eeg", range(64), T0, seed=5)
    dirty = list(clean)
    bad = clean[20].samples.astype(np.float64).copy()
    bad[1, 3] = np.nan if encoder is encode_frame else 1e39
    f = clean[20]
    if encoder is encode_frame:
        dirty[20] = make_frame(f.device_id, f.stream, f.seq, f.capture_ns, f.sample_rate, f.channels, f.units[0], bad, send_ns=f.send_ns)
        payloads = [encode_frame(x) for x in dirty]
    else:
        payloads = [encode_json(x) for x in dirty]
        doc = json.loads(payloads[20])
        doc["samples"][1][3] = 1e39
        payloads[20] = json.dumps(doc).encode()
    ref, _, _ = feed(processor(), clean, encoder)
    proc = processor()
    got: list[dict] = []
    for p in payloads:
        out = proc.process(p, b"eeg-n")
        assert not out.dead_letters
        got += [json.loads(r.value) for r in out.releases]
    assert [d["release_id"] for d in got] == [d["release_id"] for d in ref]


# --------------------------------------------------------------------------------------- 4
PUBLIC_FIELDS = {"v", "release_id", "pseudonym", "stream", "feature_set", "slot", "values", "noise"}


def test_public_release_carries_only_the_model_fields() -> None:
    """Weakness 4: releases carried capture-clock start/end (ns), last_seq, window_index,
    t_frame_send_ns, a budget revealing the device's other streams, and raw channel names as
    feature names ("patient-4711 left ear")."""
    chans = ("patient-4711 left ear", "Fz", "EEG Cz-REF", "x y")
    docs, _, _ = feed(processor(), frames("eeg-m", "eeg", range(40), T0, seed=6, channels=chans))
    assert docs
    for d in docs:
        assert set(d) <= PUBLIC_FIELDS, sorted(set(d) - PUBLIC_FIELDS)
        text = json.dumps(d)
        for raw in ("patient", "4711", "left ear", "EEG Cz-REF", "x y"):
            assert raw not in text
        names = set(d["values"])
        assert names <= set(d["noise"])  # every released value says how it was noised
        for n in names:
            channel = n.rsplit(".", 1)[-1] if "." in n else None
            assert channel is None or channel in {"Fz", "Cz", "ch0", "ch3"}, n


# --------------------------------------------------------------------------------------- 5
def test_key_rotation_then_crash_never_renoises_a_released_window() -> None:
    """Weakness 5: a window released after the last checkpoint, then a noise-key rotation, then a
    crash. Before: the restarted worker released the window again under the new key, with fresh
    noise (two different noisy copies of one window)."""
    keys = keyring()
    fs = frames("wear-r", "temp", range(160), T0, seed=7)
    a = processor(keys)
    first, _, _ = feed(a, fs[:80])
    checkpoint = a.engine.ledger_state()
    second, _, _ = feed(a, fs[80:])
    assert first and second
    rotated = keys.rotated("noise")
    b = Processor(PrivacyEngine(PrivacyConfig.default(), rotated, ledger_state=checkpoint), rotated.pseudonym, clock=lambda: 42)
    # rebuild of the window state from the resume point, output discarded, then the redelivery
    feed(b, fs[60:80])
    again, _, _ = feed(b, fs[80:])
    by_id = {d["release_id"]: d for d in second}
    assert again
    for d in again:
        assert d["release_id"] in by_id and d == by_id[d["release_id"]]


def test_old_noise_keys_are_retired_after_the_replay_horizon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Weakness 5: old noise keys were kept forever, so a leaked key file exposed the whole history.
    A rotated-out key must be dropped once no replay can need it."""
    import time as time_mod

    from pipeline.privacy import load_keys, rotate_keys

    path = tmp_path / "keys.json"
    load_keys(path)
    rotate_keys(path, "noise")
    now = time_mod.time()
    monkeypatch.setattr(time_mod, "time", lambda: now + 30 * 86400)
    ring = load_keys(path)
    assert ring.noise_key_version("dev", "n1") is None
    assert ring.noise_key_version("dev", "n2") is not None


# --------------------------------------------------------------------------------------- 6
def _req(device: str, stream: str, w: int, start_s: float, end_s: float, values: Any, specs: Any) -> ReleaseRequest:
    return ReleaseRequest(device, stream, "fs", w, 1.0, end_s - start_s, T0 + int(start_s * SEC), T0 + int(end_s * SEC), values, specs)


SPEC1 = (__import__("pipeline.features.spec", fromlist=["FeatureSpec"]).FeatureSpec("x", "1", 0.0, 10.0),)


def test_a_window_straddling_a_period_boundary_is_charged_to_both_periods() -> None:
    """Weakness 6: a window over a period boundary was charged only to the later period, so the
    earlier period's data could be released beyond its budget."""
    period_s = 10.0
    start_of_period = (T0 // SEC // 10 + 1) * 10 - T0 // SEC  # seconds after T0 of a boundary
    cfg = PrivacyConfig(epsilon=0.6, w_event=None, period=PeriodRule(0.9, period_s))
    eng = PrivacyEngine(cfg, keyring())
    b = start_of_period
    first = eng.privatize(_req("d", "s1", 0, b - 3, b + 3, {"x": 1.0}, SPEC1))  # straddles
    assert not isinstance(first, Suppression)
    second = eng.privatize(_req("d", "s2", 0, b - 9, b - 5, {"x": 1.0}, SPEC1))  # earlier period only
    assert isinstance(second, Suppression) and second.reason == "budget_exhausted"


def test_delta_is_capped() -> None:
    """Weakness 6: delta was summed per device but never capped (Gaussian releases went on forever)."""
    cfg = PrivacyConfig(delta=1e-7, n_devices=1000, mechanisms={"*": "gaussian"}, strategy="split", w_event=None)
    eng = PrivacyEngine(cfg, keyring())
    outcomes = [eng.privatize(_req("d", "s", w, w, w + 1, {"x": 1.0}, SPEC1)) for w in range(101)]
    assert not any(isinstance(o, Suppression) for o in outcomes[:100])
    assert isinstance(outcomes[100], Suppression) and outcomes[100].reason == "budget_exhausted"


class _Script:
    """A keystream that returns chosen 64-bit words (to drive the plan deterministically)."""

    def __init__(self, words: np.ndarray) -> None:
        self.words = words

    def fill(self, out: np.ndarray) -> None:
        out[:] = np.resize(self.words, out.size)

    def uniform(self, n: int) -> np.ndarray:  # pragma: no cover - not reached by these plans
        raise AssertionError("unexpected extra uniforms")


def _over_one(g: float) -> tuple[float, float]:
    """Bounds whose width times (G / width) rounds above G in float64 (found by search; none
    exist for a power-of-two G, many for G = 1000)."""
    for i in range(1, 200_000):
        width = 1.0 + i * 1e-3
        if width * (g / width) > g:
            return 0.0, width
    raise AssertionError("no such width found")


def test_the_upper_bound_never_maps_past_the_grid() -> None:
    """Weakness 6: x = upper could map to grid index G + 1 (a value outside the declared grid)."""
    from pipeline.features.spec import FeatureSpec

    lo, hi = _over_one(1000.0)
    spec = (FeatureSpec("x", "1", lo, hi),)
    cfg = PrivacyConfig(mechanisms={"*": "laplace"}, strategy="split", w_event=None, epsilon=1.0, grid_steps=1000)
    plan = PrivacyEngine(cfg, keyring()).plan("x", spec)
    # u0 smallest (round up whenever frac > 0), both geometric draws equal (noise 0)
    words = np.array([0, 1 << 63, 1 << 63, 1 << 63], dtype=np.uint64)
    out, _ = plan.apply(np.array([hi]), _Script(words))
    step = (hi - lo) / plan.grid_steps
    assert round((float(out[0]) - lo) / step) <= plan.grid_steps


# --------------------------------------------------------------------------------------- 7, 8
def test_hrv_windows_are_not_suppressed_as_late() -> None:
    """Bug 7: HRV windows (60 s) as long as retention_s (60 s) were suppressed as late whenever the
    device had another stream, and half of them on a lone PPG stream with 2 ms capture jitter."""
    proc = processor()
    _, ev_lone, _ = feed(proc, frames("ppg-lone", "ppg", range(int(150 * 4)), T0, seed=8, jitter_ns=2_000_000))
    both = frames("ppg-two", "ppg", range(int(150 * 4)), T0, seed=9) + frames("ppg-two", "temp", range(150 * 4), T0, seed=9)
    both.sort(key=lambda f: f.capture_ns)
    _, ev_two, _ = feed(proc, both)
    late = [e for e in ev_lone + ev_two if e.get("reason") == "late"]
    assert late == []


def test_a_device_rebooting_after_idle_eviction_is_released() -> None:
    """Bug 8: after idle eviction, a device that rebooted (seq from 0 again, an hour later) continued
    the stored grid anchor, and every window was dropped as a replay of the first boot."""
    now = [0.0]
    proc = processor(idle_clock=lambda: now[0])
    first, _, _ = feed(proc, frames("eeg-b", "eeg", range(200), T0, seed=10))
    now[0] = 1000.0
    assert proc.evict_idle(600.0) == {"eeg-b"}
    second, _, _ = feed(proc, frames("eeg-b", "eeg", range(200), T0 + 3600 * SEC, seed=11))
    assert first and len(second) >= len(first) - 1
