"""EEG features: band powers, spectral shape, Hjorth parameters, line length, alpha asymmetry.

All spectral features come from one Welch estimate per window, vectorized over channels: segments
of ``segment_s`` seconds with 50 % overlap, a Hamming taper, per-segment mean removal and the mean
of the segment periodograms, which is exactly :func:`mne.time_frequency.psd_array_welch` with
``n_fft = n_per_seg = segment_s * sfreq``, ``n_overlap = n_per_seg // 2`` (tested against it).
Everything that depends only on the channels, the rate and the window length (taper, band masks,
names, asymmetry pairs) is computed once per layout and cached.

**Incremental computation.** Given the :class:`~pipeline.windows.WindowCache` of a windower's
segment (only for windows without interpolated samples), consecutive windows share work: the
periodogram of each Welch segment is kept by its position in the segment, so with the default 1 s
segments, 50 % overlap and a 0.5 s hop each new window computes one segment FFT instead of three;
the time-domain statistics are kept per block of ``gcd(window, hop)`` samples in a ring (block mean
and sum of squared deviations, merged with Chan et al.'s pairwise formula; sums of ``dx^2``,
``ddx^2`` and ``|dx|`` inside the block, plus the three differences that straddle the boundary to
the next block once that block is known), so each new window computes one 0.5 s block. The results
equal the from-scratch computation up to floating-point summation order (tested to 1e-9 relative;
``sef95``, a bin frequency, could only differ if the cumulative power sat within rounding of the
95 % threshold). Without a cache (or for windows with interpolated samples) every window is
computed from scratch.

Per channel ``ch`` (data in uV):

* ``{band}_abs.{ch}``: absolute band power, uV^2, the PSD integrated over ``[lo, hi)`` Hz for the
  bands of :data:`BANDS`;
* ``{band}_rel.{ch}``: the same divided by the power in ``[1, 45)`` Hz, 1;
* ``sef95.{ch}``: spectral edge frequency, Hz: the lowest frequency bin at which the cumulative
  power from 1 Hz reaches 95 % of the 1-45 Hz power;
* ``spectral_entropy.{ch}``: Shannon entropy of the normalized 1-45 Hz PSD divided by the log of
  its number of bins, 1 (0: a pure tone, 1: white);
* ``hjorth_activity.{ch}`` (uV^2, the variance), ``hjorth_mobility.{ch}`` (Hz: ``sqrt(var(x') /
  var(x)) / 2 pi``, the mean frequency), ``hjorth_complexity.{ch}`` (1: mobility of ``x'`` over
  mobility of ``x``, 1 for a sine);
* ``line_length.{ch}``: mean absolute sample-to-sample change times the rate, uV/s.

Global: ``alpha_theta_ratio`` (mean alpha over mean theta absolute power across channels, 1) and,
when the 10-20 names allow it, ``frontal_alpha_asymmetry`` = ln(alpha F4) - ln(alpha F3) (or the
first available pair of :data:`FAA_PAIRS`), 1.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import scipy.signal

from pipeline.features.base import FeatureValues, to_unit
from pipeline.features.spec import FeatureSpec
from pipeline.windows import WindowCache

__all__ = ["BANDS", "EegExtractor", "FAA_PAIRS", "standard_name"]

#: Frequency bands, Hz, half-open ``[lo, hi)``.
BANDS: dict[str, tuple[float, float]] = {
    "delta": (1.0, 4.0),
    "theta": (4.0, 8.0),
    "alpha": (8.0, 13.0),
    "beta": (13.0, 30.0),
    "gamma": (30.0, 45.0),
}
#: Range over which relative power, SEF and entropy are computed, Hz.
TOTAL_RANGE = (1.0, 45.0)

#: Upper clipping bound of absolute band power per band, uV^2. Resting scalp EEG has total power
#: of the order of 10-100 uV^2; alpha in occipital channels with eyes closed reaches ~100 uV^2 and
#: delta in deep sleep a few hundred. Values above are artifacts (movement, electrode pops).
ABS_POWER_UPPER: dict[str, float] = {"delta": 500.0, "theta": 200.0, "alpha": 200.0, "beta": 100.0, "gamma": 50.0}
#: Variance bound for Hjorth activity, uV^2 (the whole-band power, same reasoning: +-100 uV swing).
ACTIVITY_UPPER = 2500.0
#: Line length bound, uV/s: 100 uV amplitude at 45 Hz is ~ 2 * 100 * 45 * 2 = 18000 uV/s.
LINE_LENGTH_UPPER = 20000.0

#: Left/right electrode pairs for frontal alpha asymmetry, in order of preference (right, left).
FAA_PAIRS: tuple[tuple[str, str], ...] = (("F4", "F3"), ("F8", "F7"), ("AF4", "AF3"), ("FC4", "FC3"))


@lru_cache(maxsize=1)
def _montage_names() -> dict[str, str]:
    """Upper-cased standard 10-05 names from MNE's montages -> canonical spelling."""
    import mne  # heavy import, only when channel layouts are first seen

    builtin = set(mne.channels.get_builtin_montages())
    # MNE 1.13 renamed standard_10xx to colin27_10xx (same names); accept both
    kinds = [k for k in ("colin27_1005", "colin27_1020") if k in builtin] or ["standard_1005", "standard_1020"]
    names: dict[str, str] = {}
    for kind in kinds:
        for ch in mne.channels.make_standard_montage(kind).ch_names:
            names.setdefault(ch.upper(), ch)
    return names


_CLEAN = re.compile(r"^(?:EEG[ _-]?)?([A-Za-z]+[0-9zZ]*)(?:[-_ ]?(?:REF|LE|A[12]|M[12]))?[.\s]*$", re.IGNORECASE)


def standard_name(channel: str) -> str | None:
    """The standard 10-05 name of ``channel`` (``"Fc5."`` -> ``"FC5"``, ``"EEG F3-REF"`` -> ``"F3"``), or None."""
    m = _CLEAN.match(channel.strip())
    if m is None:
        return None
    return _montage_names().get(m.group(1).upper())


@dataclass(frozen=True)
class _Plan:
    """Everything precomputed for one (channels, rate, window length)."""

    n_per_seg: int
    step: int
    rate: float
    taper: np.ndarray  # (n_per_seg,)
    scale: float  # density scaling incl. one-sided doubling
    one_sided: np.ndarray  # (n_freq,) 1 or 2
    freqs: np.ndarray
    band_matrix_t: np.ndarray  # (n_bands, n_freq_in_range): df in the band's bins, 0 elsewhere
    cumulate: np.ndarray  # (n_freq_in_range, n_freq_in_range) upper-triangular ones: x @ it = cumsum
    range_sl: slice
    range_scale: np.ndarray  # (n_freq_in_range,) scale * one_sided / n_segments, applied to summed power
    n_seg: int  # Welch segments per window
    names: tuple[str, ...]
    index: dict[str, int]  # name -> position in names
    faa: tuple[int, int] | None  # (right, left) channel indices
    specs: tuple[FeatureSpec, ...]


@dataclass(slots=True)
class _Memo:
    """Incremental state of one extractor configuration in one windower segment.

    Memory: the periodograms of the window's Welch segments (64 channels: 3 x 22 KiB) and the block
    ring (64 channels, 4 blocks: 10 KiB), next to the windower's own ring buffer (~340 KiB).
    """

    block: int  # block length g (gcd of window length and hop), 0 when blocks are not used
    segs: dict[int, np.ndarray] = field(default_factory=dict)  # segment start -> (n_ch, n_range) power
    # Block statistics in a ring of n // g slots (block at position p in slot (p // g) % slots), rows:
    # mean, sum of squared deviations, sums of dx^2, ddx^2, |dx|. Once the next block is known, the
    # differences straddling the boundary between them are added to the earlier block's sums
    # (``linked``), so the ring summed over its slots gives the window's sums.
    ring: np.ndarray | None = None  # (slots, 5, n_ch)
    block_pos: list[int] = field(default_factory=list)  # position of the block in each slot, -1: none
    linked: list[bool] = field(default_factory=list)  # boundary to the next block already added
    ones: np.ndarray = field(default_factory=lambda: np.ones(0))  # (g,) for row sums


class EegExtractor:
    """EEG features of one window (see the module docstring).

    Parameters
    ----------
    segment_s : float
        Welch segment length, s (frequency resolution ``1 / segment_s`` Hz). Shortened to the window
        length when the window is shorter.
    """

    #: :meth:`compute` accepts a :class:`~pipeline.windows.WindowCache` (see the module docstring).
    incremental = True

    def __init__(self, segment_s: float = 1.0) -> None:
        self.segment_s = float(segment_s)
        self._plans: dict[tuple[tuple[str, ...], float, int], _Plan] = {}

    # public -----------------------------------------------------------------
    def specs(self, channels: tuple[str, ...], sample_rate: float, n_samples: int | None = None) -> tuple[FeatureSpec, ...]:
        """Feature declarations for these channels (``n_samples`` does not change them)."""
        n = n_samples if n_samples is not None else max(8, int(round(2 * self.segment_s * sample_rate)))
        return self._plan(tuple(channels), float(sample_rate), n).specs

    def compute(
        self,
        data: np.ndarray,
        sample_rate: float,
        channels: tuple[str, ...],
        units: tuple[str, ...],
        *,
        cache: WindowCache | None = None,
        start: int = 0,
    ) -> FeatureValues:
        """Features of one window ``data`` (n_channels, n_samples) in ``units`` (converted to uV).

        ``cache`` (the windower segment's cache) and ``start`` (the window's position in the segment,
        :attr:`~pipeline.windows.Window.start_sample`) enable the incremental computation; the caller
        guarantees that ``data`` holds only received samples (``missing_fraction == 0``).
        """
        rate = float(sample_rate)
        plan = self._plan(tuple(channels), rate, data.shape[1])
        x = to_unit(np.asarray(data, dtype=np.float64), units, "uV")
        memo = self._memo(cache, plan, x.shape[1], start) if cache is not None else None
        if memo is None:
            pr = self.psd(x, plan)[:, plan.range_sl]
            var0, var1, var2, line = _time_domain(x, rate)
        else:
            pr = _psd_range_memo(x, plan, memo, start)
            var0, var1, var2, line = _time_domain_memo(x, rate, memo, start) if memo.block else _time_domain(x, rate)
        return FeatureValues(plan.names, plan.index, self._values(pr, var0, var1, var2, line, plan))

    def welch(self, data: np.ndarray, sample_rate: float) -> tuple[np.ndarray, np.ndarray]:
        """Welch PSD of ``data`` (..., n_samples) as computed for the features: (freqs Hz, psd unit^2/Hz)."""
        x = np.asarray(data, dtype=np.float64)
        plan = self._plan(tuple(f"c{i}" for i in range(x.reshape(-1, x.shape[-1]).shape[0])), float(sample_rate), x.shape[-1])
        return plan.freqs, self.psd(x.reshape(-1, x.shape[-1]), plan).reshape(*x.shape[:-1], -1)

    # internals ---------------------------------------------------------------
    @staticmethod
    def psd(x: np.ndarray, plan: _Plan) -> np.ndarray:
        """One-sided Welch PSD, (n_channels, n_freq), unit^2/Hz."""
        segs = np.lib.stride_tricks.sliding_window_view(x, plan.n_per_seg, axis=-1)[:, :: plan.step]
        segs = segs - segs.mean(axis=-1, keepdims=True)
        spec = np.fft.rfft(segs * plan.taper, axis=-1)
        power = spec.real**2 + spec.imag**2
        return power.mean(axis=1) * (plan.scale * plan.one_sided)

    def _memo(self, cache: WindowCache, plan: _Plan, n: int, start: int) -> _Memo:
        key = ("eeg", self.segment_s, n)
        memo = cache.store.get(key)
        if memo is None:
            g = math.gcd(n, cache.n_hop) if cache.n_length == n else 0
            if g < 4 or n // g > 64:  # blocks too short to pay off: time domain from scratch
                g = 0
            slots = n // g if g else 0
            memo = cache.store[key] = _Memo(g, block_pos=[-1] * slots, linked=[False] * slots, ones=np.ones(g))
        # forget the segments before this window (windows of a segment only move forward)
        segs = memo.segs
        if segs and min(segs) < start:
            for k in [k for k in segs if k < start]:
                del segs[k]
        return memo

    def _values(
        self, pr: np.ndarray, var0: np.ndarray, var1: np.ndarray, var2: np.ndarray, line: np.ndarray, plan: _Plan
    ) -> np.ndarray:
        """All features, in ``plan.names`` order, from the 1-45 Hz PSD and the time-domain statistics."""
        n_ch, n_bins = pr.shape
        nb = len(BANDS)
        out = np.empty(len(plan.names))
        rows = out[: (2 * nb + 6) * n_ch].reshape(2 * nb + 6, n_ch)  # per-channel features, feature-major
        absp = rows[:nb]
        np.matmul(plan.band_matrix_t, pr.T, out=absp)  # (n_bands, n_ch) uV^2
        total = absp.sum(axis=0)
        positive = total > 0
        every = bool(positive.all())  # the usual case: no flat channel, no NaN to place
        np.divide(absp, total if every else np.where(positive, total, np.nan), out=rows[nb : 2 * nb])  # relative
        # spectral edge and entropy over the 1-45 Hz bins
        cum = pr @ plan.cumulate  # cumulative sums along the bins (one BLAS call; np.cumsum is slower here)
        last = cum[:, -1:]
        np.take(plan.freqs[plan.range_sl], np.argmax(cum >= 0.95 * last, axis=1), out=rows[2 * nb])
        with np.errstate(divide="ignore", invalid="ignore"):
            p = pr / (last if every else np.where(last > 0, last, np.nan))
            logp = np.log(p, out=np.zeros_like(p), where=p > 0)  # p ln p := 0 at p = 0
            if n_bins > 1:
                np.divide(np.einsum("ij,ij->i", p, logp), -math.log(n_bins), out=rows[2 * nb + 1])
            else:
                rows[2 * nb + 1] = np.nan
            if not every:
                rows[2 * nb : 2 * nb + 2, ~positive] = np.nan
            # Hjorth parameters from the variances of x, x' and x''
            mob0 = np.sqrt(var1 / var0)
            mob1 = np.sqrt(var2 / var1)
            rows[2 * nb + 2] = var0
            np.multiply(mob0, plan.rate / (2 * math.pi), out=rows[2 * nb + 3])
            np.divide(mob1, mob0, out=rows[2 * nb + 4])
            ok0 = var0 > 0
            if not ok0.all():
                rows[2 * nb + 3, ~ok0] = np.nan
                rows[2 * nb + 4, ~ok0] = np.nan
            ok1 = var1 > 0
            if not ok1.all():
                rows[2 * nb + 4, ~ok1] = np.nan
        rows[2 * nb + 5] = line
        mean_theta, mean_alpha = (np.add.reduce(absp[1:3], axis=1) / n_ch).tolist()  # == absp[1].mean() ...
        out[(2 * nb + 6) * n_ch] = mean_alpha / mean_theta if mean_theta > 0 else np.nan
        if plan.faa is not None:
            r, left = float(absp[2, plan.faa[0]]), float(absp[2, plan.faa[1]])
            out[-1] = math.log(r) - math.log(left) if r > 0 and left > 0 else np.nan
        return out

    def _plan(self, channels: tuple[str, ...], rate: float, n: int) -> _Plan:
        key = (channels, rate, n)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) > 64:
                self._plans.clear()
            plan = self._plans[key] = _make_plan(channels, rate, n, self.segment_s)
        return plan


def _time_domain(x: np.ndarray, rate: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(var x, var x', var x'', line length) per channel, from scratch: the reference definitions."""
    xc = x - x.mean(axis=1, keepdims=True)
    dx = np.diff(xc, axis=1)
    ddx = np.diff(dx, axis=1)
    var0 = np.einsum("ij,ij->i", xc, xc) / xc.shape[1]
    var1 = np.einsum("ij,ij->i", dx, dx) / max(dx.shape[1], 1)
    var2 = np.einsum("ij,ij->i", ddx, ddx) / max(ddx.shape[1], 1)
    line = np.abs(dx).mean(axis=1) * rate
    return var0, var1, var2, line


def _time_domain_memo(
    x: np.ndarray, rate: float, memo: _Memo, start: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_time_domain` from per-block statistics kept in a ring (see :class:`_Memo`)."""
    n_ch, n = x.shape
    g = memo.block
    nb = n // g
    if memo.ring is None or memo.ring.shape[2] != n_ch:
        memo.ring = np.empty((nb, 5, n_ch))
        memo.block_pos[:] = [-1] * nb
    ring, pos, linked = memo.ring, memo.block_pos, memo.linked
    for j in range(nb):
        p = start + j * g
        slot = (p // g) % nb
        if pos[slot] != p:
            _block_stats(x[:, j * g : (j + 1) * g], ring[slot], memo.ones)
            pos[slot] = p
            linked[slot] = False
    for j in range(nb - 1):  # add the differences straddling the boundary q to block j's sums
        slot = ((start + j * g) // g) % nb
        if not linked[slot]:
            q = (j + 1) * g
            xq = x[:, q - 2 : q + 2]  # x[q-2], x[q-1], x[q], x[q+1]
            dq = xq[:, 1:] - xq[:, :-1]
            ddq = dq[:, 1:] - dq[:, :-1]
            mid = dq[:, 1]  # the pair (q-1, q); ddq: the triples (q-2..q), (q-1..q+1)
            row = ring[slot]
            row[2] += mid * mid
            row[3] += np.einsum("ij,ij->i", ddq, ddq)
            row[4] += np.abs(mid)
            linked[slot] = True
    sums = np.add.reduce(ring, axis=0)  # (5, n_ch)
    mean = sums[0] / nb
    dev = ring[:, 0] - mean
    m2 = sums[1] + g * np.einsum("ij,ij->j", dev, dev)  # Chan et al.: merge of block means and M2
    return m2 / n, sums[2] / max(n - 1, 1), sums[3] / max(n - 2, 1), sums[4] / (n - 1) * rate


def _block_stats(xb: np.ndarray, out: np.ndarray, ones: np.ndarray) -> None:
    """Into ``out`` (5, n_ch): mean, sum of squared deviations, sums of dx^2, ddx^2, |dx| inside ``xb``.

    Row sums are matrix-vector products with ``ones`` (length of the block): BLAS beats numpy's
    per-row reductions on these short rows.
    """
    g = xb.shape[1]
    np.divide(np.matmul(xb, ones), g, out=out[0])
    d = xb - out[0][:, None]
    np.matmul(np.multiply(d, d, out=d), ones, out=out[1])
    dx = xb[:, 1:] - xb[:, :-1]
    ddx = dx[:, 1:] - dx[:, :-1]
    np.matmul(np.multiply(ddx, ddx, out=ddx), ones[: g - 2], out=out[3])
    np.matmul(dx * dx, ones[: g - 1], out=out[2])
    np.matmul(np.abs(dx, out=dx), ones[: g - 1], out=out[4])


def _psd_range_memo(x: np.ndarray, plan: _Plan, memo: _Memo, start: int) -> np.ndarray:
    """The 1-45 Hz part of :meth:`EegExtractor.psd`, reusing segment periodograms by position."""
    segs = memo.segs
    nps, step = plan.n_per_seg, plan.step
    total = None
    for j in range(plan.n_seg):
        pos = start + j * step
        power = segs.get(pos)
        if power is None:
            seg = x[:, j * step : j * step + nps]
            y = seg - (np.add.reduce(seg, axis=1) / nps)[:, None]  # per-segment mean removal
            y *= plan.taper
            spec = np.fft.rfft(y, axis=-1)[:, plan.range_sl]
            power = segs[pos] = spec.real**2 + spec.imag**2
        if total is None:
            total = power.copy()
        else:
            total += power
    assert total is not None
    total *= plan.range_scale
    return total


def _make_plan(channels: tuple[str, ...], rate: float, n: int, segment_s: float) -> _Plan:
    n_per_seg = max(2, min(n, int(round(segment_s * rate))))
    step = max(1, n_per_seg - n_per_seg // 2)
    taper = scipy.signal.get_window("hamming", n_per_seg)
    scale = 1.0 / (rate * float((taper**2).sum()))
    n_freq = n_per_seg // 2 + 1
    freqs = np.arange(n_freq) * (rate / n_per_seg)
    one_sided = np.full(n_freq, 2.0)
    one_sided[0] = 1.0
    if n_per_seg % 2 == 0:
        one_sided[-1] = 1.0
    lo, hi = TOTAL_RANGE
    in_range = np.flatnonzero((freqs >= lo) & (freqs < hi))
    range_sl = slice(int(in_range[0]), int(in_range[-1]) + 1) if in_range.size else slice(0, 1)
    fr = freqs[range_sl]
    df = rate / n_per_seg
    band_matrix = np.stack([((fr >= b0) & (fr < b1)) * df for b0, b1 in BANDS.values()], axis=1)
    n_seg = (n - n_per_seg) // step + 1
    range_scale = scale * one_sided[range_sl] / n_seg

    specs: list[FeatureSpec] = []
    for band in BANDS:
        specs += [FeatureSpec(f"{band}_abs.{ch}", "uV^2", 0.0, ABS_POWER_UPPER[band]) for ch in channels]
    for band in BANDS:
        specs += [FeatureSpec(f"{band}_rel.{ch}", "1", 0.0, 1.0) for ch in channels]
    specs += [FeatureSpec(f"sef95.{ch}", "Hz", TOTAL_RANGE[0], TOTAL_RANGE[1]) for ch in channels]
    specs += [FeatureSpec(f"spectral_entropy.{ch}", "1", 0.0, 1.0) for ch in channels]
    specs += [FeatureSpec(f"hjorth_activity.{ch}", "uV^2", 0.0, ACTIVITY_UPPER) for ch in channels]
    specs += [FeatureSpec(f"hjorth_mobility.{ch}", "Hz", 0.0, 60.0) for ch in channels]
    specs += [FeatureSpec(f"hjorth_complexity.{ch}", "1", 1.0, 10.0) for ch in channels]
    specs += [FeatureSpec(f"line_length.{ch}", "uV/s", 0.0, LINE_LENGTH_UPPER) for ch in channels]
    specs.append(FeatureSpec("alpha_theta_ratio", "1", 0.0, 10.0))
    faa = _faa_pair(channels)
    if faa is not None:
        specs.append(FeatureSpec("frontal_alpha_asymmetry", "1", -2.0, 2.0))
    names = tuple(s.name for s in specs)
    return _Plan(
        n_per_seg=n_per_seg, step=step, taper=taper, scale=scale, one_sided=one_sided, freqs=freqs,
        band_matrix_t=np.ascontiguousarray(band_matrix.T), cumulate=np.triu(np.ones((fr.size, fr.size))),
        range_sl=range_sl, range_scale=range_scale, n_seg=n_seg, rate=rate, names=names, index={name: i for i, name in enumerate(names)}, faa=faa, specs=tuple(specs),
    )


def _faa_pair(channels: tuple[str, ...]) -> tuple[int, int] | None:
    std = {standard_name(ch): i for i, ch in reversed(list(enumerate(channels)))}
    for right, left in FAA_PAIRS:
        if right.upper() in {k.upper() for k in std if k} and left.upper() in {k.upper() for k in std if k}:
            up = {k.upper(): v for k, v in std.items() if k}
            return up[right.upper()], up[left.upper()]
    return None
