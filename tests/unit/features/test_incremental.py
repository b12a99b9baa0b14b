"""The incremental (per-windower cache) feature path equals the from-scratch computation.

Windows of a :class:`~pipeline.windows.Windower` carry the segment's cache; ``FeatureSet.compute``
uses it for windows without interpolated samples. Every released window is recomputed here without
the cache and compared (1e-9 relative, NaN in the same places), under gaps, duplicates,
reordering, restarts and a state round trip.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import scipy.signal
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.features import FeatureSet, FeatureValues, eeg, feature_sets
from pipeline.features.cardiac import _filt, _sos
from pipeline.features.eeg import EegExtractor
from pipeline.frames import Frame, make_frame
from pipeline.windows import Window, Windower, WindowSpec

RATE = 128.0
N = 16  # samples per frame
CHANNELS = ("Fp1", "F3", "F4", "O1", "flat", "zero")
RTOL = 1e-9


def signal(n_samples: int, seed: int = 7, offset: float = 0.0) -> np.ndarray:
    """EEG-like test data: alpha + noise + drift, a flat channel and an all-zero channel (uV)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / RATE
    x = rng.normal(size=(len(CHANNELS), n_samples)) * 5.0
    x[:4] += 20.0 * np.sin(2 * np.pi * 10.0 * t) + 3.0 * t + offset
    x[4] = 12.25
    x[5] = 0.0
    return x.astype(np.float32)


def frames(x: np.ndarray, seqs: list[int], *, n: int = N, rate: float = RATE, base_ns: int = 0) -> list[Frame]:
    out = []
    for s in seqs:
        cap = base_ns + int(round(s * n * 1e9 / rate))
        out.append(make_frame("dev", "eeg", s, cap, rate, CHANNELS, "uV", x[:, s * n : (s + 1) * n]))
    return out


def eeg_set(spec: WindowSpec) -> FeatureSet:
    (fs,) = feature_sets("eeg", {"eeg": spec})
    return fs


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    np.testing.assert_array_equal(nan_a, nan_b)
    np.testing.assert_allclose(a[~nan_a], b[~nan_b], rtol=RTOL, atol=0.0)


def check_stream(fs: FeatureSet, windower: Windower, fr: list[Frame], *, flush: bool = True) -> list[Window]:
    """Push ``fr``; every released window: cached result == from-scratch result. Returns the windows."""
    wins: list[Window] = []
    for f in fr:
        wins += windower.push(f)
    if flush:
        wins += windower.flush()
    for w in wins:
        got = fs.compute(w)
        ref = fs.extractor.compute(w.data, w.sample_rate, w.channels, w.units)
        assert isinstance(got, FeatureValues) and list(got) == list(ref)
        assert_same(got.array, np.asarray(list(ref.values()), dtype=np.float64))
    return wins


@pytest.mark.parametrize(
    "spec",
    [
        WindowSpec(2.0, 0.5),  # the default: one new Welch segment and one new block per window
        WindowSpec(2.0, 0.25),  # hop shorter than the Welch step: segments reused every other window
        WindowSpec(3.0, 1.0),
        WindowSpec(2.0, 2.0),  # no overlap between windows
        WindowSpec(2.0, 0.3),  # gcd(window, hop) too small for blocks: time domain from scratch
        WindowSpec(0.5, 0.25),  # window shorter than the Welch segment
    ],
)
@pytest.mark.parametrize("offset", [0.0, 3e5])  # 3e5 uV: DC-coupled amplifiers (BioSemi: +-262 mV)
def test_clean_stream_equals_from_scratch(spec: WindowSpec, offset: float) -> None:
    fs = eeg_set(spec)
    x = signal(100 * N, offset=offset)
    w = Windower(spec)
    wins = check_stream(fs, w, frames(x, list(range(100))))
    assert len(wins) >= 5 and all(win.missing_fraction == 0.0 for win in wins)
    assert wins[0].cache is not None and wins[0].cache.store  # the cache was used
    # the cache holds only what later windows can use: nothing before the last window's start
    (memo,) = wins[-1].cache.store.values()
    assert min(memo.segs) >= wins[-1].start_sample


def test_cache_is_actually_reused() -> None:
    spec = WindowSpec(2.0, 0.5)
    fs = eeg_set(spec)
    x = signal(48 * N)
    w = Windower(spec)
    wins = check_stream(fs, w, frames(x, list(range(40))), flush=False)
    (memo,) = wins[0].cache.store.values()  # type: ignore[union-attr]
    seg_arrays = {k: id(v) for k, v in memo.segs.items()}
    ring = memo.ring.copy()
    positions = list(memo.block_pos)
    (nxt,) = [win for f in frames(x, [40, 41, 42, 43]) for win in w.push(f)]  # 64 samples = one hop
    fs.compute(nxt)
    kept = [k for k in seg_arrays if k >= nxt.start_sample]
    assert len(kept) == 2 and all(id(memo.segs[k]) == seg_arrays[k] for k in kept)  # reused, not recomputed
    # one new block per window (with the terms straddling its boundary with the last old block);
    # every other slot keeps its statistics unchanged
    changed = [i for i, p in enumerate(memo.block_pos) if p != positions[i]]
    assert len(changed) == 1 and max(memo.block_pos) == nxt.start_sample + 3 * 64
    same = [i for i in range(4) if i not in changed]
    assert len(same) == 3 and all(np.array_equal(memo.ring[i], ring[i]) for i in same)


def test_gaps_duplicates_reordering_and_interpolated_windows() -> None:
    spec = WindowSpec(2.0, 0.5, max_missing=0.2, reorder_frames=2)
    fs = eeg_set(spec)
    x = signal(120 * N)
    order = list(range(120))
    del order[30]  # a one-frame gap: interpolated windows, computed without the cache
    del order[70:80]  # a long gap: windows lost, then the stream resumes
    order[10], order[11] = order[11], order[10]  # reordering within tolerance
    order.insert(50, 45)  # a duplicate
    w = Windower(spec)
    wins = check_stream(fs, w, frames(x, order))
    assert any(win.missing_fraction > 0 for win in wins)
    assert w.stats.incomplete > 0 and w.stats.duplicates == 1
    # complete windows after the gaps equal those of a gap-free stream (received samples never change)
    clean = Windower(spec)
    ref = {win.index: win for f in frames(x, list(range(120))) for win in clean.push(f)}
    after = [win for win in wins if win.missing_fraction == 0.0 and win.start_sample > 80 * N]
    assert after
    for win in after:
        assert_same(fs.compute(win).array, fs.compute(ref[win.index]).array)


def test_restarts_start_a_fresh_cache() -> None:
    spec = WindowSpec(2.0, 0.5)
    fs = eeg_set(spec)
    x = signal(200 * N)
    w = Windower(spec)
    first = check_stream(fs, w, frames(x, list(range(40))), flush=False)
    # device reboot: seq numbers start again at 0 with later capture times and different data
    y = signal(200 * N, seed=99)
    second = check_stream(fs, w, frames(y, list(range(40)), base_ns=10**12), flush=False)
    # frame-length change: a new segment again
    third = check_stream(fs, w, frames(x, list(range(40, 80)), n=2 * N, base_ns=2 * 10**12), flush=False)
    assert w.stats.restarts == 2
    caches = {id(win.cache) for win in first}, {id(win.cache) for win in second}, {id(win.cache) for win in third}
    assert all(len(c) == 1 for c in caches) and len(set.union(*caches)) == 3


def test_state_round_trip_starts_cold_and_stays_equal() -> None:
    spec = WindowSpec(2.0, 0.5)
    fs = eeg_set(spec)
    x = signal(80 * N)
    w = Windower(spec)
    check_stream(fs, w, frames(x, list(range(30))), flush=False)
    clone = Windower.from_state(spec, w.state())
    a = check_stream(fs, w, frames(x, list(range(30, 80))))
    b = check_stream(fs, clone, frames(x, list(range(30, 80))))
    assert [win.index for win in a] == [win.index for win in b]
    for wa, wb in zip(a, b, strict=True):
        assert_same(fs.compute(wa).array, fs.compute(wb).array)


@st.composite
def arrivals(draw: st.DrawFn) -> list[int]:
    """Sequence numbers with drops, duplicates and local swaps (within 2 frames)."""
    n = draw(st.integers(30, 90))
    seqs = [s for s in range(n) if draw(st.integers(0, 15)) > 0]
    for i in range(len(seqs) - 1):
        if draw(st.integers(0, 5)) == 0 and abs(seqs[i] - seqs[i + 1]) <= 2:
            seqs[i], seqs[i + 1] = seqs[i + 1], seqs[i]
    for d in draw(st.lists(st.sampled_from(seqs), max_size=4)) if seqs else []:
        seqs.insert(seqs.index(d) + 1, d)
    return seqs


@settings(max_examples=25, deadline=None)
@given(arrivals(), st.sampled_from([WindowSpec(2.0, 0.5, max_missing=0.3), WindowSpec(1.0, 0.25, max_missing=0.3)]))
def test_any_arrival_order_equals_from_scratch(order: list[int], spec: WindowSpec) -> None:
    check_stream(eeg_set(spec), Windower(spec), frames(signal(100 * N), order))


def test_windows_computed_out_of_order_with_one_cache_equal_from_scratch() -> None:
    # a block first computed as a window's first block (no samples before it, no boundary terms)
    # is recomputed when an earlier window needs it further in; the cache serves any order
    spec = WindowSpec(2.0, 0.5)
    fs = eeg_set(spec)
    w = Windower(spec)
    wins = [win for f in frames(signal(60 * N), list(range(60))) for win in w.push(f)]
    for win in wins[::-1] + wins[::3] + wins[1::3] + wins:
        assert_same(fs.compute(win).array, fs.extractor.compute(win.data, RATE, CHANNELS, win.units).array)


def test_threads_sharing_an_extractor_get_their_own_scratch_arrays() -> None:
    spec = WindowSpec(2.0, 0.5)
    fs = eeg_set(spec)
    streams = []
    for seed in range(4):
        w = Windower(spec)
        streams.append([win for f in frames(signal(60 * N, seed=seed), list(range(60))) for win in w.push(f)])
    ref = [[fs.extractor.compute(win.data, RATE, CHANNELS, win.units).array for win in wins] for wins in streams]
    got: list[list[np.ndarray]] = [[] for _ in streams]

    def run(i: int) -> None:
        got[i] = [fs.compute(win).array for win in streams[i]]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(streams))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for a, b in zip(got, ref, strict=True):
        assert len(a) == len(b) > 0
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)


@pytest.mark.parametrize("n", [256, 255, 128, 2, 3])
def test_rfft_is_bitwise_numpy_rfft(n: int) -> None:
    y = np.random.default_rng(n).normal(size=(5, n)) * 30.0 + 1e5
    out = np.empty((5, n // 2 + 1), dtype=np.complex128)
    np.testing.assert_array_equal(eeg._rfft(y, out), np.fft.rfft(y, axis=-1))


@pytest.mark.parametrize("shape", [(64, 256), (6, 130), (1, 3)])
def test_subtract_rows_is_bitwise_numpy(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[1])
    a = rng.normal(size=shape) * 40.0 + 3e5
    m = a.mean(axis=1)
    ref = a - m[:, None]
    eeg._subtract_rows(a, m, np.ones(shape[1]))
    np.testing.assert_array_equal(a, ref)


def test_entropy_of_a_spectrum_with_zero_bins_and_flat_channels() -> None:
    ext = EegExtractor()
    channels = ("A", "B", "C")
    plan = ext._plan(channels, RATE, 256)
    rng = np.random.default_rng(3)
    pr = rng.random((3, plan.range_freqs.size))
    pr[0, ::3] = 0.0  # zero bins in a live channel: p ln p := 0 there
    pr[2] = 0.0  # no power at all: relative powers, edge and entropy undefined
    out = np.empty(len(plan.names))
    rows = out[: eeg._N_ROWS * 3].reshape(eeg._N_ROWS, 3)
    rows[eeg._TD] = [[4.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.0, 0.0], [7.0, 0.0, 0.0]]  # B, C: flat
    ext._values(pr, out, plan)
    p = pr[:2] / pr[:2].sum(axis=1, keepdims=True)
    ent = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(axis=1) / np.log(p.shape[1])
    np.testing.assert_allclose(rows[11, :2], ent, rtol=1e-12)
    assert np.isnan(rows[5:12, 2]).all() and np.isfinite(rows[5:12, :2]).all()
    assert np.isfinite(rows[13:15, 0]).all() and np.isnan(rows[13:15, 1:]).all()  # mobility, complexity
    assert np.isnan(rows[12, 1]) and rows[15, 0] == 7.0  # log activity of a flat channel: undefined; line length as given


def test_cache_is_ignored_for_windows_with_interpolated_samples() -> None:
    spec = WindowSpec(2.0, 0.5, max_missing=0.2)
    fs = eeg_set(spec)
    x = signal(40 * N)
    w = Windower(spec)
    wins = [win for f in frames(x, [s for s in range(40) if s != 20]) for win in w.push(f)]
    gap = [win for win in wins if win.missing_fraction > 0]
    assert gap
    store = gap[0].cache.store  # type: ignore[union-attr]

    def snapshot() -> dict[object, tuple[dict[int, int], list[int], bytes]]:
        return {k: ({p: id(a) for p, a in v.segs.items()}, list(v.block_pos), v.ring.tobytes()) for k, v in store.items()}

    before = snapshot()
    fs.compute(gap[0])
    assert snapshot() == before


# ----------------------------------------------------------------------------- result container
def test_feature_values_is_a_read_only_mapping_of_floats() -> None:
    ext = EegExtractor()
    x = signal(256).astype(np.float64)
    out = ext.compute(x, RATE, CHANNELS, ("uV",) * len(CHANNELS))
    specs = ext.specs(CHANNELS, RATE)
    assert isinstance(out, FeatureValues)
    assert list(out) == [s.name for s in specs] == list(out.names) and len(out) == len(specs)
    d = out.to_dict()
    np.testing.assert_equal(dict(out), d)  # NaN-aware
    live = ext.compute(x[:4], RATE, CHANNELS[:4], ("uV",) * 4)  # no NaN: plain equality with a dict
    assert live == live.to_dict() and live != {**live.to_dict(), "alpha_log.F3": -1.0}
    assert all(isinstance(out[k], float) for k in out)
    assert "alpha_log.F3" in out and "nope" not in out
    with pytest.raises(KeyError):
        out["nope"]
    with pytest.raises(ValueError):
        out.array[0] = 1.0
    assert math.isnan(out["hjorth_mobility.zero"])  # a flat channel: undefined
    assert out.names is ext.compute(x, RATE, CHANNELS, ("uV",) * len(CHANNELS)).names  # shared per layout


# ----------------------------------------------------------------------------- cached filters
@pytest.mark.parametrize(("n", "rate", "lo", "hi"), [(80, 8.0, 0.0, 1.0), (160, 32.0, 0.5, 3.0), (2500, 250.0, 5.0, 20.0),
                                                     (3, 8.0, 0.0, 1.0), (2, 250.0, 0.5, 40.0), (1, 8.0, 0.0, 1.0)])
def test_cached_filter_is_bitwise_sosfiltfilt(n: int, rate: float, lo: float, hi: float) -> None:
    x = np.random.default_rng(n).normal(size=n)
    ref = scipy.signal.sosfiltfilt(_sos(lo, hi, rate), x, padlen=max(min(n - 1, 3 * int(rate)), 0))
    np.testing.assert_array_equal(_filt(x, lo, hi, rate), ref)
    np.testing.assert_array_equal(_filt(x, lo, hi, rate), ref)  # second call: cached state unchanged


# ----------------------------------------------------------------------------- the definitions
def reference_features(x: np.ndarray, rate: float) -> np.ndarray:
    """The EEG per-channel features and alpha/theta ratio exactly as first defined (plain numpy)."""
    nps = int(round(rate))
    step = nps - nps // 2
    taper = scipy.signal.get_window("hamming", nps)
    segs = np.lib.stride_tricks.sliding_window_view(x, nps, axis=-1)[:, ::step]
    segs = segs - segs.mean(axis=-1, keepdims=True)
    power = np.abs(np.fft.rfft(segs * taper, axis=-1)) ** 2
    one_sided = np.full(power.shape[-1], 2.0)
    one_sided[0] = one_sided[-1] = 1.0
    psd = power.mean(axis=1) * one_sided / (rate * (taper**2).sum())
    freqs = np.arange(psd.shape[1]) * rate / nps
    sel = (freqs >= 1.0) & (freqs < 45.0)
    pr, fr = psd[:, sel], freqs[sel]
    bands = [(1, 4), (4, 8), (8, 13), (13, 30), (30, 45)]
    absp = np.stack([pr[:, (fr >= lo) & (fr < hi)].sum(axis=1) * (rate / nps) for lo, hi in bands], axis=1)
    total = absp.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = absp / np.where(total > 0, total, np.nan)[:, None]
        cum = np.cumsum(pr, axis=1)
        sef = np.where(total > 0, fr[np.argmax(cum >= 0.95 * cum[:, -1:], axis=1)], np.nan)
        p = pr / cum[:, -1:]
        ent = np.where(total > 0, -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1) / np.log(pr.shape[1]), np.nan)
        xc = x - x.mean(axis=1, keepdims=True)
        dx, ddx = np.diff(xc, axis=1), np.diff(xc, n=2, axis=1)
        v0, v1, v2 = (xc**2).mean(axis=1), (dx**2).mean(axis=1), (ddx**2).mean(axis=1)
        mob = np.where(v0 > 0, np.sqrt(v1 / v0) * rate / (2 * np.pi), np.nan)
        comp = np.where((v0 > 0) & (v1 > 0), np.sqrt(v2 / v1) / np.sqrt(v1 / v0), np.nan)
    line = np.abs(dx).mean(axis=1) * rate
    with np.errstate(divide="ignore"):  # released on a log scale, undefined (NaN) where not positive
        log_absp = np.where(absp > 0, np.log10(np.where(absp > 0, absp, 1.0)), np.nan)
        log_v0 = np.where(v0 > 0, np.log10(np.where(v0 > 0, v0, 1.0)), np.nan)
    per_channel = np.concatenate([log_absp.T, rel.T, np.stack([sef, ent, log_v0, mob, comp, line])])
    theta = absp[:, 1].mean()
    return np.concatenate([per_channel.ravel(), [absp[:, 2].mean() / theta if theta > 0 else np.nan]])


@pytest.mark.parametrize("offset", [0.0, 3e5])  # 3e5 uV: DC-coupled amplifiers (BioSemi: +-262 mV)
def test_incremental_and_from_scratch_equal_the_reference_definitions(offset: float) -> None:
    spec = WindowSpec(2.0, 0.5)
    fs = eeg_set(spec)
    x = signal(40 * N, offset=offset)
    x[3, : 12 * N] = 0.0  # a channel flat for a while, then live
    w = Windower(spec)
    wins = check_stream(fs, w, frames(x, list(range(40))))
    d = len(fs.specs(CHANNELS, RATE))
    for win in wins:
        ref = reference_features(win.data.astype(np.float64), RATE)
        got = fs.compute(win).array  # incremental path
        assert_same(got[: ref.size], ref)
        assert d == ref.size + 1  # + frontal_alpha_asymmetry: ln alpha(F4) - ln alpha(F3)
        n_ch = len(CHANNELS)
        # alpha rows hold log10 powers: ln a - ln b = (log10 a - log10 b) ln 10
        assert got[-1] == pytest.approx((ref[2 * n_ch + 2] - ref[2 * n_ch + 1]) * math.log(10.0), rel=0, abs=1e-9)


@pytest.mark.parametrize("spec", [WindowSpec(2.0, 0.5), WindowSpec(2.0, 0.3), WindowSpec(0.5, 0.25, max_missing=0.3)])
def test_relative_powers_alone_are_bitwise_the_full_computation(spec: WindowSpec) -> None:
    """``only`` with relative band powers alone (the default study's EEG features) skips the time
    domain, spectral edge, entropy and logarithms: the relative powers keep their bits (with the
    cache, warm or not, and without; a flat channel, an all-zero one, a window with a NaN
    channel), every other value is NaN."""
    fs = eeg_set(spec)
    only = frozenset({"alpha_rel", "theta_rel", "beta_rel"})
    x = signal(80 * N)
    order = list(range(80))
    del order[30]  # interpolated windows: computed without the cache
    full_w, part_w = Windower(spec), Windower(spec)
    pairs = [(a, b) for f in frames(x, order) for a, b in zip(full_w.push(f), part_w.push(f), strict=True)]
    assert pairs and any(a.missing_fraction > 0 for a, _ in pairs) and pairs[-1][1].cache is not None
    odd = x[:, : pairs[0][0].data.shape[1]].astype(np.float64)
    odd[2] = np.nan  # a channel without one finite sample stays NaN in a window
    names = fs.extractor.specs(CHANNELS, RATE)
    rel = np.array([s.name.split(".")[0].endswith("_rel") for s in names])  # all five: one product
    ext = fs.extractor
    cases = [(fs.compute(a).array, fs.compute(b, only).array) for a, b in pairs]
    cases.append((ext.compute(odd, RATE, CHANNELS, ("uV",) * len(CHANNELS)).array,
                  ext.compute(odd, RATE, CHANNELS, ("uV",) * len(CHANNELS), only=only).array))
    for full, part in cases:
        assert np.array_equal(full[rel], part[rel], equal_nan=True)
        assert np.isnan(part[~rel]).all()
    assert np.isfinite(cases[0][1][rel]).any() and np.isnan(cases[-1][1][rel]).any()
    # other features asked for: the full computation
    both = frozenset({"alpha_rel", "sef95"})
    assert np.array_equal(ext.compute(odd, RATE, CHANNELS, ("uV",) * len(CHANNELS), only=both).array,
                          cases[-1][0], equal_nan=True)


def test_relative_powers_alone_fall_back_to_the_full_computation_when_bins_are_narrower_than_1_hz() -> None:
    """With bins under 1 Hz (2-s Welch segments) a product df * power could underflow, so a zero
    band-power sum would not prove the relative powers NaN: the full computation runs."""
    ext = EegExtractor(segment_s=2.0)
    x = signal(4 * 128).astype(np.float64)
    full = ext.compute(x, RATE, CHANNELS, ("uV",) * len(CHANNELS)).array
    part = ext.compute(x, RATE, CHANNELS, ("uV",) * len(CHANNELS), only=frozenset({"alpha_rel"})).array
    assert np.array_equal(full, part, equal_nan=True)
