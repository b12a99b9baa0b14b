"""The fast paths of the feature extractors and the frame decoder equal their reference forms."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import scipy.signal

from pipeline.errors import FrameError
from pipeline.features import audio, cardiac
from pipeline.frames import decode_frame, encode_frame, make_frame


@pytest.mark.parametrize(("n", "low", "high", "rate"), [
    (640, 0.5, 8.0, 64.0), (40, 0.0, 1.0, 4.0), (160, 0.5, 3.0, 32.0), (2500, 5.0, 20.0, 250.0),
    (3, 0.0, 1.0, 4.0), (1, 0.0, 1.0, 4.0), (2, 0.5, 8.0, 64.0),
])
def test_filt_is_bitwise_sosfiltfilt(n: int, low: float, high: float, rate: float) -> None:
    x = np.random.default_rng(n).standard_normal(n).cumsum()
    keep = x.copy()
    ref = scipy.signal.sosfiltfilt(cardiac._sos(low, high, rate), x, padlen=max(min(n - 1, 3 * int(rate)), 0))
    y = cardiac._filt(x, low, high, rate)
    assert np.array_equal(y, ref)
    assert np.array_equal(x, keep)  # input untouched
    assert not np.shares_memory(y, x)


def _refine_loop(sig: np.ndarray, idx: np.ndarray, half: int) -> np.ndarray:
    n = sig.size
    out = np.empty(idx.size)
    for j, i in enumerate(idx):
        a, b = max(0, i - half), min(n, i + half + 1)
        k = a + int(np.argmax(sig[a:b]))
        if 0 < k < n - 1:
            y0, y1, y2 = sig[k - 1], sig[k], sig[k + 1]
            den = y0 - 2 * y1 + y2
            out[j] = k + (0.5 * (y0 - y2) / den if den < 0 else 0.0)
        else:
            out[j] = k
    return out


def test_run_edges_of_constant_masks() -> None:
    for n in (0, 1, 5):
        assert cardiac._run_edges(np.zeros(n, dtype=bool)).tolist() == []
        assert cardiac._run_edges(np.ones(n, dtype=bool)).tolist() == ([0, n] if n else [])


def test_refine_and_block_argmax_equal_loops() -> None:
    rng = np.random.default_rng(0)
    for trial in range(500):
        n = int(rng.integers(3, 200))
        sig = rng.standard_normal(n)
        if trial % 3 == 0:
            sig = np.round(sig, 1)  # ties: the first maximum wins
        half = int(rng.integers(1, 8))
        idx = np.sort(rng.choice(n, size=int(rng.integers(0, min(n, 15))), replace=False))
        assert np.array_equal(cardiac._refine(sig, idx, half), _refine_loop(sig, idx, half))
        above = rng.random(n) < 0.5
        edges = np.flatnonzero(np.diff(np.concatenate(([0], above.view(np.int8), [0]))))
        assert np.array_equal(cardiac._run_edges(above), edges)
        st, en = edges[::2], edges[1::2]
        ref = np.array([a + int(np.argmax(sig[a:b])) for a, b in zip(st, en, strict=True)], dtype=int)
        assert np.array_equal(cardiac._block_argmax(sig, st, en), ref)


def test_vad_block_decisions_do_not_depend_on_earlier_audio() -> None:
    """A fresh WebRTC detector per block: the same block gives the same decisions whatever precedes it
    (a restored windower, computing cold, must reproduce the warm windower's bits)."""
    from connectors.synth import speech_signal

    x, _ = speech_signal(16000.0, 2.0, f0_hz=140.0, seed=1)
    block = x[8000:16000]
    alone = audio.vad_decisions(block, 16000.0)
    assert alone.size == 25
    noisy_prefix = np.concatenate([np.random.default_rng(0).standard_normal(8000) * 0.3, block])
    assert np.array_equal(audio.vad_decisions(noisy_prefix[8000:], 16000.0), alone)


def test_decode_memo_keeps_decisions() -> None:
    ok = make_frame("dev-1", "acc", 0, 1, 32.0, ["x", "y", "z"], "g", np.zeros((3, 4), np.float32))
    for _ in range(2):  # second time through the memo
        f = decode_frame(encode_frame(ok))
        assert f.channels == ("x", "y", "z") and f.device_id == "dev-1"
    for chans, dev in ((["x", "y", "bad\x01"], "dev-1"), (["x", "y", "z"], "dev 1"), (["x", "y", ""], "dev-1")):
        bad = encode_frame(ok)
        obj = msgpack.unpackb(bad, raw=False)
        obj["channels"], obj["device"] = chans, dev
        with pytest.raises(FrameError) as ei:
            decode_frame(msgpack.packb(obj, use_bin_type=True))
        assert ei.value.reason == "bad_field"


def _speechlike(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000.0
    f0 = 120.0 + 40.0 * np.sin(2 * np.pi * 0.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000.0
    voiced = 0.3 * np.sin(phase) + sum(np.sin(h * phase) for h in range(2, 16))
    env = (np.sin(2 * np.pi * 1.7 * t) > -0.2).astype(float)
    return (0.02 * voiced * env + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


def test_audio_cache_matches_from_scratch() -> None:
    """Windows through the segment cache: every feature equal to the window computed alone except
    the MFCCs (the mel projection is a matrix product whose rounding depends on the number of rows),
    within 1e-9 relative; and the same bits as a cold cache (restored windower)."""
    from pipeline.windows import WindowCache

    x = _speechlike(12.0, 0)[None, :]
    warm = audio.AudioExtractor()
    cache = WindowCache(16000, 8000)
    n_speech = 0
    for k in range((x.shape[1] - 16000) // 8000 + 1):
        win = x[:, k * 8000 : k * 8000 + 16000]
        got = warm.compute(win, 16000.0, ("mic",), ("FS",), cache=cache, start=k * 8000)
        ref = audio.AudioExtractor().compute(win, 16000.0, ("mic",), ("FS",))
        cold = audio.AudioExtractor().compute(win, 16000.0, ("mic",), ("FS",), cache=WindowCache(16000, 8000), start=k * 8000)
        assert got.keys() == ref.keys()
        for name, v in ref.items():
            assert got[name] == cold[name] or (np.isnan(got[name]) and np.isnan(cold[name]))
            if name.startswith("mfcc_"):
                assert got[name] == pytest.approx(v, rel=1e-9, abs=1e-9)
            else:
                assert got[name] == v or (np.isnan(got[name]) and np.isnan(v)), name
        n_speech += bool(np.isfinite(got["f0_median"]))
        assert len(cache.store[("mic", 16000.0)]) <= 2  # blocks before the window are evicted
    assert n_speech > 5


@pytest.mark.parametrize("rate", [16000.0, 22050.0])
def test_audio_speech_ratio_alone_is_bitwise_the_full_computation(rate: float) -> None:
    """``only={"speech_ratio"}`` (the default study's mic feature) runs the VAD alone: through a
    warm cache, a cold one and without one (interpolated windows, other layouts) its speech ratio,
    level and zero-crossing rate are the full computation's bits; the features it skips are NaN."""
    from pipeline.windows import WindowCache

    n_len, n_hop = int(rate), int(rate) // 2
    x = _speechlike(8.0 * rate / 16000.0, 1)[None, :]
    only = frozenset({"speech_ratio"})
    warm_full, warm_only = WindowCache(n_len, n_hop), WindowCache(n_len, n_hop)
    ratios = set()
    for k in range((x.shape[1] - n_len) // n_hop + 1):
        win = x[:, k * n_hop : k * n_hop + n_len]
        for full, part in (
            (audio.AudioExtractor().compute(win, rate, ("mic",), ("FS",), cache=warm_full, start=k * n_hop),
             audio.AudioExtractor().compute(win, rate, ("mic",), ("FS",), cache=warm_only, start=k * n_hop, only=only)),
            (audio.AudioExtractor().compute(win, rate, ("mic",), ("FS",), cache=WindowCache(n_len, n_hop), start=k * n_hop),
             audio.AudioExtractor().compute(win, rate, ("mic",), ("FS",), cache=WindowCache(n_len, n_hop), start=k * n_hop,
                                            only=only)),
            (audio.AudioExtractor().compute(win, rate, ("mic",), ("FS",)),
             audio.AudioExtractor().compute(win, rate, ("mic",), ("FS",), only=only)),
        ):
            assert part.keys() == full.keys()
            for name in ("speech_ratio", "rms_dbfs", "zcr"):
                assert part[name] == full[name], name
            assert all(np.isnan(v) for n, v in part.items() if n not in ("speech_ratio", "rms_dbfs", "zcr"))
        ratios.add(full["speech_ratio"])
        # 16 kHz: whole 25-ms sub-frames per hop, blocks cached (and evicted before the window);
        # 22.05 kHz: not, every window from scratch
        assert len(warm_only.store.get(("mic-vad", rate), {})) == (0 if rate % 40 else 2)
    assert len(ratios) > 3  # speech and pauses: the ratio varies
    # a feature that needs the spectra: the full computation
    assert not np.isnan(audio.AudioExtractor().compute(x[:, :n_len], rate, ("mic",), ("FS",),
                                                       only=frozenset({"speech_ratio", "f0_median"}))["spectral_centroid"])


def test_eda_scl_alone_is_the_full_computation() -> None:
    """``only={"scl"}`` (the default study's EDA feature) skips the SCR search; ``scl`` keeps its bits."""
    from pipeline.features.eda import EdaExtractor

    rng = np.random.default_rng(3)
    t = np.arange(0, 60, 0.25)
    x = 5.0 + 0.3 * np.sin(2 * np.pi * t / 20) + 0.5 * (np.mod(t, 7) < 1.5) + 0.01 * rng.standard_normal(t.size)
    counts = 0.0
    for k in range(0, t.size - 40, 4):
        win = x[None, k : k + 40]
        full = EdaExtractor().compute(win, 4.0, ("eda",), ("uS",))
        part = EdaExtractor().compute(win, 4.0, ("eda",), ("uS",), only=frozenset({"scl"}))
        assert part["scl"] == full["scl"] and np.isnan(part["scr_count"]) and np.isnan(part["scr_amplitude"])
        counts += full["scr_count"]
    assert counts > 0  # the full computation found SCRs that the partial one skipped
    assert EdaExtractor().compute(x[None, :40], 4.0, ("eda",), ("uS",), only=frozenset({"scl", "scr_count"})) == \
        EdaExtractor().compute(x[None, :40], 4.0, ("eda",), ("uS",))


def test_acc_activity_alone_is_the_full_computation() -> None:
    """``only={"activity"}`` (the default study's acc feature) skips the cadence spectrum; ``enmo``
    and ``activity`` keep their bits."""
    from connectors.synth import acc_signal
    from pipeline.features.motion import MotionExtractor

    x, _ = acc_signal(32.0, 60.0)
    walking = 0
    for k in range(0, x.shape[1] - 160, 32):
        win = x[:, k : k + 160]
        full = MotionExtractor().compute(win, 32.0, ("x", "y", "z"), ("g",) * 3)
        part = MotionExtractor().compute(win, 32.0, ("x", "y", "z"), ("g",) * 3, only=frozenset({"activity"}))
        assert part["activity"] == full["activity"] and part["enmo"] == full["enmo"] and np.isnan(part["cadence"])
        walking += full["cadence"] > 0
    assert walking > 0  # the full computation found a cadence that the partial one skipped
    win = x[:, 800:960]
    assert MotionExtractor().compute(win, 32.0, ("x", "y", "z"), ("g",) * 3, only=frozenset({"activity", "cadence"})) == \
        MotionExtractor().compute(win, 32.0, ("x", "y", "z"), ("g",) * 3)


@pytest.mark.parametrize("n", [1, 2, 3, 40, 41, 640])
def test_median_is_np_median(n: int) -> None:
    rng = np.random.default_rng(n)
    for trial in range(50):
        v = rng.standard_normal(n)
        if trial % 5 == 1:
            v = np.round(v, 1)  # ties
        if trial % 5 == 2:
            v[rng.integers(n)] = np.nan
        ref = float(np.median(v))
        got = cardiac._median(v)
        assert (np.isnan(got) and np.isnan(ref)) if np.isnan(ref) else got == ref


@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 127, 128, 129, 640, 4097])
def test_mean1d_is_bitwise_ndarray_mean(n: int) -> None:
    from pipeline.features.base import mean1d

    rng = np.random.default_rng(n)
    for scale in (1e-300, 1.0, 1e5, 1e300):
        v = rng.standard_normal(2 * n) * scale
        for a in (v[:n], v[::2]):  # contiguous and strided
            assert mean1d(a) == float(a.mean())
