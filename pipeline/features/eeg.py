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
``ddx^2`` and ``|dx|`` including the differences that straddle the block's left boundary, which
the window's first block gives back), so each new window computes one 0.5 s block. The results
equal the from-scratch computation up to floating-point summation order (tested to 1e-9 relative;
``sef95``, a bin frequency, could only differ if the cumulative power sat within rounding of the
95 % threshold). Without a cache (or for windows with interpolated samples) every window is
computed from scratch.

**Cost.** At 64 channels the arrays are small and the cost of a window is mostly the number of
numpy calls (about a microsecond each) and the one FFT of the new segment, so the code works on
all channels at once and favours single calls: sums as matrix products with precomputed 0/1
weights, one flat 1-D difference over a block whose channel rows run back to back, the window's
time-domain statistics as one product of a weight matrix with the block ring, relative powers,
spectral edge and entropy from one normalized spectrum, and the NaN rules for flat channels only
when a non-finite value shows they are needed.

Per channel ``ch`` (data in uV):

* ``{band}_log.{ch}``: absolute band power, released as its decimal logarithm, log10(uV^2): the
  PSD integrated over ``[lo, hi)`` Hz for the bands of :data:`BANDS`. Absolute power spans four
  decades between people, montages and sleep stages, so linear bounds either clip most windows
  or drown the value in noise; on a log scale one public range covers them (:data:`LOG_POWER_RANGE`);
* ``{band}_rel.{ch}``: the same divided by the power in ``[1, 45)`` Hz, 1;
* ``sef95.{ch}``: spectral edge frequency, Hz: the lowest frequency bin at which the cumulative
  power from 1 Hz reaches 95 % of the 1-45 Hz power;
* ``spectral_entropy.{ch}``: Shannon entropy of the normalized 1-45 Hz PSD divided by the log of
  its number of bins, 1 (0: a pure tone, 1: white);
* ``hjorth_log_activity.{ch}`` (log10(uV^2): the variance, on a log scale for the same reason),
  ``hjorth_mobility.{ch}`` (Hz: ``sqrt(var(x') /
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
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

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
#: Fraction of the 1-45 Hz power below the spectral edge frequency (``sef95``).
SEF_FRACTION = 0.95

#: Public range of the log10 band powers, log10(uV^2): 0.01 to 10^5 uV^2. Scalp EEG band powers run
#: from ~1 uV^2 (gamma and beta at rest) to ~10^3-10^4 uV^2 (delta in slow-wave sleep, frontal delta
#: with eye movements, DC drift of unfiltered recordings): the 64-channel BCI2000 recording of the
#: shared data has median delta power 10^3.1 uV^2 (its 99th percentile 10^4.7, maximum 10^5.04) and
#: was above the former linear bound of 500 uV^2 in 76 % of windows. Two decades below cover quiet
#: channels and low-passed amplifiers (the OpenBCI recording, 125 Hz, has one channel with gamma
#: below 0.1 uV^2 in 4 % of windows); a flat channel's log power is undefined (NaN).
LOG_POWER_RANGE = (-2.0, 5.0)
#: Public range of log10 Hjorth activity (the variance), log10(uV^2): 1 to 10^6 uV^2 (the whole band,
#: drift included: the BCI2000 recording reaches 10^5.03).
LOG_ACTIVITY_RANGE = (0.0, 6.0)
#: Upper bound of Hjorth complexity, 1.
COMPLEXITY_UPPER = 25.0
#: Public range of log10 Hjorth activity (the variance), log10(uV^2): 0.1 to 10^5 uV^2 (+-300 uV swings).
LOG_ACTIVITY_RANGE = (-1.0, 5.0)
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
    range_freqs: np.ndarray  # freqs[range_sl]
    band_matrix_t: np.ndarray  # (n_bands + 1, n_freq_in_range): df in the band's bins, 0 elsewhere; ones
    cumulate: np.ndarray  # (n_freq_in_range, n_freq_in_range) upper-triangular ones: x @ it = cumsum
    range_sl: slice
    range_scale: np.ndarray  # (n_ch, n_freq_in_range) scale * one_sided / n_segments, per segment periodogram
    n_seg: int  # Welch segments per window
    seg_mean: np.ndarray  # (n_per_seg,) all 1 / n_per_seg: segments @ it = their means
    seg_ones: np.ndarray  # (n_per_seg,) ones, for _subtract_rows
    taper_rows: np.ndarray  # (n_ch, n_per_seg) the taper in every row
    band_select_t: np.ndarray  # (n_bands, n_freq_in_range): 1 in the band's bins, 0 elsewhere
    names: tuple[str, ...]
    index: dict[str, int]  # name -> position in names
    faa: tuple[int, int] | None  # (right, left) channel indices
    specs: tuple[FeatureSpec, ...]
    # the bands cover every 1-45 Hz bin and the bin width is at least 1 Hz: a channel's band powers
    # then sum to 0 only if all its 1-45 Hz bins are 0 (no product df * power underflows), which
    # already makes its relative powers NaN (0 / 0): they need no other feature's NaN rules
    relative_alone: bool = False


#: Rows of one block's statistics in :attr:`_Memo.ring`: the even rows 0, 2, 4, 6 hold the block's
#: sum of squared deviations from its mean and its sums of dx^2, ddx^2 and |dx|, including the terms
#: that straddle the block's left boundary ("full"); the odd rows 1, 3, 5, 7 hold those boundary
#: terms alone ("lead"; the squared deviations have none: row 1 is 0); row 8 the block mean.
_FULL = slice(0, 8, 2)
_LEAD = slice(1, 8, 2)
_MEAN = 8
_ROWS = 9


@dataclass(slots=True)
class _Memo:
    """Incremental state of one extractor configuration in one windower segment.

    Memory: the periodograms of the window's Welch segments (64 channels: 3 x 22 KiB) and the block
    ring (64 channels, 4 blocks: 18 KiB), next to the windower's own ring buffer (~340 KiB).
    """

    block: int  # block length g (gcd of window length and hop), 0 when blocks are not used
    segs: dict[int, np.ndarray] = field(default_factory=dict)  # segment start -> (n_ch, n_range) power
    # Block statistics in a ring of n // g slots (block at position p in slot (p // g) % slots), rows
    # as described at _FULL. The differences that straddle the boundary between two blocks (one
    # dx^2 and |dx| term, two ddx^2 terms) count in the later block's full sums, so a window's sums
    # are the full sums of its blocks minus the lead terms of its first block. A block computed as
    # the first of a window has no earlier samples and no lead terms (``lead`` False): it is
    # recomputed should a later window need it in another place.
    ring: np.ndarray | None = None  # (slots, _ROWS, n_ch)
    block_pos: list[int] = field(default_factory=list)  # position of the block in each slot, -1: none
    lead: list[bool] = field(default_factory=list)  # the full sums include the boundary terms
    masks: tuple[np.ndarray, np.ndarray, np.ndarray] = field(default_factory=lambda: _block_masks(0))  # see _block_masks


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
    #: :meth:`compute` accepts ``only`` (the features the caller reads; the others may be NaN).
    partial = True

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
        only: frozenset[str] | None = None,
    ) -> FeatureValues:
        """Features of one window ``data`` (n_channels, n_samples) in ``units`` (converted to uV).

        ``cache`` (the windower segment's cache) and ``start`` (the window's position in the segment,
        :attr:`~pipeline.windows.Window.start_sample`) enable the incremental computation; the caller
        guarantees that ``data`` holds only received samples (``missing_fraction == 0``). ``only``:
        the base feature names the caller reads; when they are all relative band powers (the
        default study reads ``alpha_rel``, ``theta_rel`` and ``beta_rel``), only the spectrum and the
        relative powers are computed (bitwise those of the full computation) and every other value is
        NaN: no time-domain statistics, spectral edge, entropy or logarithms.
        """
        rate = float(sample_rate)
        plan = self._plan(tuple(channels), rate, data.shape[1])
        x = to_unit(np.asarray(data, dtype=np.float64), units, "uV")
        n_ch = x.shape[0]
        relative_only = only is not None and plan.relative_alone and only <= _RELATIVE
        out = np.full(len(plan.names), np.nan) if relative_only else np.empty(len(plan.names))
        # per-channel features, feature-major; rows _TD hold var x, var x', var x'', line length
        rows = out[: _N_ROWS * n_ch].reshape(_N_ROWS, n_ch)
        memo = self._memo(cache, plan, x.shape[1], start) if cache is not None else None
        if memo is None:
            pr = self.psd(x, plan)[:, plan.range_sl]
            if not relative_only:
                _time_domain(x, rate, rows[_TD])
        else:
            pr = _psd_range_memo(x, plan, memo, start)
            if not relative_only:
                if memo.block:
                    _time_domain_memo(x, rate, memo, start, rows[_TD])
                else:
                    _time_domain(x, rate, rows[_TD])
        if relative_only:
            _relative(pr, rows, plan)
            rows[: len(BANDS)] = np.nan  # the absolute powers, still linear: not released
        else:
            self._values(pr, out, plan)
        return FeatureValues(plan.names, plan.index, out)

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
            memo = cache.store[key] = _Memo(g, block_pos=[-1] * slots, lead=[False] * slots, masks=_block_masks(g))
        # forget the segments before this window (windows of a segment only move forward)
        segs = memo.segs
        if segs and min(segs) < start:
            for k in [k for k in segs if k < start]:
                del segs[k]
        return memo

    def _values(self, pr: np.ndarray, out: np.ndarray, plan: _Plan) -> None:
        """Fill ``out`` (``plan.names`` order) from the 1-45 Hz PSD ``pr`` and, already in rows
        ``_TD`` of its per-channel part, the time-domain statistics (var x, var x', var x'', line length).

        Each step is one numpy call over all channels: at 64 channels the cost is the number of
        calls, not the arithmetic. Relative powers, spectral edge and entropy all come from the
        normalized spectrum ``p = pr / sum(pr)``; undefined values (a flat channel, a zero bin in
        the entropy) show as NaN or inf somewhere, and only then :func:`_undefined` places them.
        """
        n_ch, n_bins = pr.shape
        nb = len(BANDS)
        rows = out[: _N_ROWS * n_ch].reshape(_N_ROWS, n_ch)
        absp = rows[:nb]
        p = _relative(pr, rows, plan)
        with np.errstate(divide="ignore", invalid="ignore"):
            # spectral edge: the first bin where the cumulative sum of p reaches 0.95
            above = np.greater_equal(p @ plan.cumulate, SEF_FRACTION)
            plan.range_freqs.take(above.argmax(axis=1), out=rows[2 * nb])
            # spectral entropy, normalized by its maximum ln(n_bins)
            np.multiply(np.vecdot(p, np.log(p)), -1.0 / math.log(n_bins) if n_bins > 1 else np.nan, out=rows[2 * nb + 1])
            # Hjorth parameters from the variances of x, x' and x'' (rows _TD: var0, var1, var2, line)
            td = rows[_TD]
            mob = np.sqrt(td[1:3] / td[0:2])  # sqrt(var1 / var0), sqrt(var2 / var1)
            np.divide(mob[1], mob[0], out=td[2])  # complexity (replaces var2)
            np.multiply(mob[0], plan.rate / (2 * math.pi), out=td[1])  # mobility (replaces var1)
            if not math.isfinite(float(np.add.reduce(rows, axis=None))):
                _undefined(p, rows, n_bins)
        sum_theta, sum_alpha = np.add.reduce(absp[1:3], axis=1).tolist()
        out[_N_ROWS * n_ch] = sum_alpha / sum_theta if sum_theta > 0 else np.nan  # mean alpha / mean theta
        if plan.faa is not None:
            r, left = float(absp[2, plan.faa[0]]), float(absp[2, plan.faa[1]])
            out[-1] = math.log(r) - math.log(left) if r > 0 and left > 0 else np.nan
        # released on a log scale: absolute band powers and Hjorth activity (NaN where not positive)
        _log10_rows(rows[:nb])
        _log10_rows(rows[_TD.start : _TD.start + 1])

    def _plan(self, channels: tuple[str, ...], rate: float, n: int) -> _Plan:
        key = (channels, rate, n)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) > 64:
                self._plans.clear()
            plan = self._plans[key] = _make_plan(channels, rate, n, self.segment_s)
        return plan


#: Base names of the relative band powers (:meth:`EegExtractor.compute`'s ``only`` may skip the rest).
_RELATIVE = frozenset(f"{band}_rel" for band in BANDS)


def _relative(pr: np.ndarray, rows: np.ndarray, plan: _Plan) -> np.ndarray:
    """Absolute band powers (uV^2, linear) into ``rows[:nb]`` and relative ones into
    ``rows[nb:2 nb]`` from the 1-45 Hz PSD ``pr``; returns the normalized spectrum ``p``.

    Where a channel has no power in 1-45 Hz, ``p`` and its relative powers are NaN already. With
    :attr:`_Plan.relative_alone` that is the only case in which :func:`_undefined` would set them
    to NaN, so they are final here, whatever the other features hold.
    """
    nb = len(BANDS)
    # absolute band powers and, in the first relative row for now, the sum over the bins
    np.matmul(plan.band_matrix_t, pr.T, out=rows[: nb + 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        p = pr / rows[nb][:, None]
        np.matmul(plan.band_select_t, p.T, out=rows[nb : 2 * nb])  # relative: sum of p in the band
    return p


#: Per-channel feature rows of the output (5 absolute, 5 relative band powers, sef95, entropy,
#: Hjorth activity, mobility, complexity, line length), and the four rows that the time-domain
#: functions fill with (var x, var x', var x'', line length) before the Hjorth step rewrites the
#: middle two into mobility and complexity.
_N_ROWS = 2 * len(BANDS) + 6
_TD = slice(2 * len(BANDS) + 2, 2 * len(BANDS) + 6)


def _log10_rows(a: np.ndarray) -> None:
    """``a = log10(a)`` in place; NaN where ``a`` is not positive (a flat channel has no log power)."""
    pos = a > 0
    np.log10(a, out=a, where=pos)
    if not pos.all():
        a[~pos] = np.nan


def _undefined(p: np.ndarray, rows: np.ndarray, n_bins: int) -> None:
    """NaN where :meth:`EegExtractor._values`' features are undefined; ``p ln p := 0`` at ``p == 0``.

    Relative powers, spectral edge and entropy need power in 1-45 Hz; Hjorth mobility needs var x > 0
    and complexity also var x' > 0 (that is, mobility > 0).
    """
    nb = len(BANDS)
    if n_bins > 1:
        xlogx = np.log(p, out=np.zeros_like(p), where=p > 0)
        np.multiply(np.vecdot(p, xlogx), -1.0 / math.log(n_bins), out=rows[2 * nb + 1])
    rows[nb : 2 * nb + 2, ~(np.add.reduce(rows[:nb], axis=0) > 0)] = np.nan
    td = rows[_TD]
    td[1:3, ~(td[0] > 0)] = np.nan
    td[2, ~(td[1] > 0)] = np.nan


def _time_domain(x: np.ndarray, rate: float, out: np.ndarray) -> None:
    """Into ``out`` (4, n_ch): var x, var x', var x'', line length per channel, from scratch (the
    reference definitions)."""
    xc = x - x.mean(axis=1, keepdims=True)
    dx = np.diff(xc, axis=1)
    ddx = np.diff(dx, axis=1)
    out[0] = np.einsum("ij,ij->i", xc, xc) / xc.shape[1]
    out[1] = np.einsum("ij,ij->i", dx, dx) / max(dx.shape[1], 1)
    out[2] = np.einsum("ij,ij->i", ddx, ddx) / max(ddx.shape[1], 1)
    out[3] = np.abs(dx).mean(axis=1) * rate


def _time_domain_memo(x: np.ndarray, rate: float, memo: _Memo, start: int, out: np.ndarray) -> None:
    """:func:`_time_domain` from per-block statistics kept in a ring (see :class:`_Memo`): blocks
    not in the ring are computed (one per window in the steady state), the window's statistics are
    one product of :func:`_combine_weights` with the ring, plus the merge term of the block means."""
    n_ch, n = x.shape
    g = memo.block
    nb = n // g
    if memo.ring is None or memo.ring.shape[2] != n_ch:
        memo.ring = np.empty((nb, _ROWS, n_ch))
        memo.block_pos[:] = [-1] * nb
    ring, pos, lead = memo.ring, memo.block_pos, memo.lead
    first = (start // g) % nb
    for j in range(nb):
        p = start + j * g
        slot = (p // g) % nb
        if pos[slot] != p or (j and not lead[slot]):
            _block_stats(x, j * g, g, ring[slot], memo)
            pos[slot] = p
            lead[slot] = j > 0
    weights, center = _combine_weights(nb, g, rate, first if lead[first] else -1)
    np.matmul(weights, ring.reshape(nb * _ROWS, n_ch), out=out)  # sums of the blocks / divisors
    # sqrt(g / n) (block mean - window mean), (n_ch, nb); relative to the first block's mean first:
    # exact zeros for a constant channel (flat: var x == 0, as from scratch), no DC offset in the product
    dev = (center @ (ring[:, _MEAN] - ring[first, _MEAN])).T
    out[0] += np.vecdot(dev, dev)  # Chan et al.: merge of block means and M2


@lru_cache(maxsize=256)
def _combine_weights(nb: int, g: int, rate: float, first: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights from the block ring of :class:`_Memo` (``nb`` blocks of ``g`` samples, the window's
    first block in slot ``first``, -1 if its lead terms are not in its sums) to the window:
    (4, nb * _ROWS) with ``weights @ ring`` = (sum of squared deviations within blocks / n, sum dx^2 /
    (n - 1), sum ddx^2 / (n - 2), sum |dx| * rate / (n - 1)), and the (nb, nb) centering matrix
    ``sqrt(g / n) (I - 1 / nb)`` for the block means (Chan's merge term)."""
    n = nb * g
    w = np.zeros((4, nb, _ROWS))
    w[:, :, _FULL] = np.diag([1.0 / n, 1.0 / max(n - 1, 1), 1.0 / max(n - 2, 1), rate / max(n - 1, 1)])[:, None, :]
    if first >= 0:
        w[:, first, _LEAD] = -w[:, first, _FULL]  # the terms before the window
    weights = w.reshape(4, nb * _ROWS)
    center = math.sqrt(g / n) * (np.eye(nb) - 1.0 / nb)
    weights.flags.writeable = center.flags.writeable = False
    return weights, center


def _block_masks(g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """0/1 weights over the ``g + 2`` columns of :func:`_block_stats`' planes (column ``i`` of a
    channel's row is sample ``q - 2 + i``): (3, 2, g + 2) for the squared deviations (the block's
    own samples, and nothing), dx^2 and ddx^2 (full sums and lead terms, see _FULL); (g,) 1 / g for
    the block mean; (g + 2,) ones for :func:`_subtract_rows`."""
    L = g + 2
    masks = np.zeros((3, 2, L))
    masks[0, 0, 2:] = 1.0  # samples q .. q + g - 1
    masks[1, 0, 1 : L - 1] = 1.0  # dx column i: x[q - 1 + i] - x[q - 2 + i]; i = 1 straddles the boundary
    masks[1, 1, 1] = 1.0
    masks[2, 0, : L - 2] = 1.0  # ddx column i: x[q - 2 + i .. q + i]; i = 0, 1 straddle the boundary
    masks[2, 1, :2] = 1.0
    return masks, np.full(g, 1.0 / max(g, 1)), np.ones(L)


def _block_stats(x: np.ndarray, q: int, g: int, out: np.ndarray, memo: _Memo) -> None:
    """Into ``out`` (_ROWS, n_ch): the statistics of the block ``x[:, q : q + g]`` (rows: see _FULL).

    The block and its two earlier samples, minus the block mean, go into one buffer whose channel
    rows run back to back, so dx and ddx are single 1-D differences over the whole buffer (numpy
    loops once per row of a 2-D operand, which costs more than the arithmetic on rows this short);
    the columns where a difference spans two rows get weight 0 in the sums, which are matrix
    products with the 0/1 weights of :func:`_block_masks`. With ``q == 0`` there are no earlier
    samples and no lead terms.
    """
    n_ch = x.shape[0]
    L = g + 2
    masks, mean, ones = memo.masks
    buf = np.empty((3, n_ch * L))  # x - mean, dx, ddx; channel rows of L columns back to back
    xc = buf[0].reshape(n_ch, L)
    np.matmul(x[:, q : q + g], mean, out=out[_MEAN])
    if q >= 2:
        np.copyto(xc, x[:, q - 2 : q + g])
    else:
        np.copyto(xc[:, 2:], x[:, q : q + g])
        xc[:, :2] = xc[:, 2:3]
    _subtract_rows(xc, out[_MEAN], ones)
    buf[1:, -1] = 0.0  # past the last row (weight 0, but must not be NaN)
    np.subtract(buf[0, 1:], buf[0, :-1], out=buf[1, :-1])
    np.subtract(buf[1, 1:], buf[1, :-1], out=buf[2, :-1])
    if q < 2:
        buf[2].reshape(n_ch, L)[:, :2] = 0.0  # not x[q - 2 .. q], x[q - 1 .. q + 1]: no lead terms
    planes = buf.reshape(3, n_ch, L).transpose(0, 2, 1)  # (3, L, n_ch) views
    np.matmul(masks[1], np.abs(buf[1]).reshape(n_ch, L).T, out=out[6:8])  # sums of |dx|
    np.multiply(buf, buf, out=buf)
    np.matmul(masks, planes, out=out[:6].reshape(3, 2, n_ch))


def _psd_range_memo(x: np.ndarray, plan: _Plan, memo: _Memo, start: int) -> np.ndarray:
    """The 1-45 Hz part of :meth:`EegExtractor.psd`, reusing segment periodograms by position.

    The periodograms are kept already scaled (density, one-sided, divided by the number of
    segments), so the window's PSD is their sum. The mean removal, taper and FFT write into
    scratch arrays that stay the same from window to window (:func:`_scratch`).
    """
    segs = memo.segs
    nps, step = plan.n_per_seg, plan.step
    powers = []
    for j in range(plan.n_seg):
        pos = start + j * step
        power = segs.get(pos)
        if power is None:
            seg = x[:, j * step : j * step + nps]
            y = _scratch(seg.shape, np.float64)
            np.copyto(y, seg)
            _subtract_rows(y, seg @ plan.seg_mean, plan.seg_ones)  # per-segment mean removal
            y *= plan.taper_rows  # (same shape: one flat loop, not one per row)
            spec = _rfft(y, _scratch((seg.shape[0], nps // 2 + 1), np.complex128))[:, plan.range_sl]
            power = np.abs(spec)
            power *= power
            power *= plan.range_scale
            segs[pos] = power
        powers.append(power)
    if len(powers) == 1:
        return powers[0].copy()
    total = np.add(powers[0], powers[1])
    for power in powers[2:]:
        total += power
    return total


def _subtract_rows(a: np.ndarray, m: np.ndarray, ones: np.ndarray) -> None:
    """``a -= m[:, None]`` in place for a C-contiguous 2-D ``a``, bitwise (tested).

    As the rank-1 update ``a.T += -1 * ones m^T`` (BLAS ``dger``): numpy's broadcast subtraction
    loops once per row (~10 us for a 64 x 256 segment, 3 for this).
    """
    if _DGER is None or not a.flags.c_contiguous:  # pragma: no cover - scipy without BLAS wrappers
        np.subtract(a, m[:, None], out=a)
        return
    _DGER(-1.0, ones, m, a=a.T, overwrite_a=1)


def _dger() -> Any:
    try:
        from scipy.linalg.blas import dger
    except ImportError:  # pragma: no cover
        return None
    return dger


_DGER = _dger()


_THREAD = threading.local()


def _scratch(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """A scratch array of this shape and dtype, the same one for every call in this thread.

    For temporaries of 100+ KiB that live within one call: reusing them keeps them in cache and
    spares the allocator's page faults (a 64-channel segment is 128 KiB, its spectrum 132 KiB).
    """
    arrays: dict[tuple[tuple[int, ...], type], np.ndarray] | None = getattr(_THREAD, "arrays", None)
    if arrays is None:
        arrays = _THREAD.arrays = {}
    key = (shape, dtype)
    a = arrays.get(key)
    if a is None:
        if len(arrays) >= 16:
            arrays.clear()
        a = arrays[key] = np.empty(shape, dtype)
    return a


def _rfft(y: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``np.fft.rfft(y, axis=-1)`` into ``out``, bitwise (tested).

    For an even length, the gufunc behind ``np.fft.rfft`` is called directly: the public
    function's argument handling costs more than the 1-45 Hz power computed from its result.
    """
    if _RFFT_EVEN is not None and y.shape[-1] % 2 == 0:
        return _RFFT_EVEN(y, 1.0, axes=[(-1,), (), (-1,)], out=out)  # type: ignore[no-any-return]
    return np.fft.rfft(y, axis=-1, out=out)


def _rfft_even_kernel() -> Any:
    """numpy's private even-length rfft gufunc, if present and bitwise equal to ``np.fft.rfft`` on
    a probe; otherwise None (the public function is used). A private kernel can change its calling
    convention in any numpy release, so a kernel that raises or differs is never used."""
    try:
        from numpy.fft import _pocketfft_umath  # type: ignore[attr-defined]

        kernel = _pocketfft_umath.rfft_n_even
        probe = np.random.default_rng(0).normal(size=(3, 16))
        got = kernel(probe, 1.0, axes=[(-1,), (), (-1,)], out=np.empty((3, 9), complex))
        if not np.array_equal(got, np.fft.rfft(probe, axis=-1)):  # pragma: no cover
            return None
    except Exception:  # noqa: BLE001  # pragma: no cover - moved, renamed or re-signed: use the public function
        return None
    return kernel


_RFFT_EVEN = _rfft_even_kernel()


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
    range_scale = np.tile(scale * one_sided[range_sl] / n_seg, (len(channels), 1))
    cumulate = np.triu(np.ones((fr.size, fr.size)))

    specs: list[FeatureSpec] = []
    for band in BANDS:
        specs += [FeatureSpec(f"{band}_log.{ch}", "log10(uV^2)", *LOG_POWER_RANGE) for ch in channels]
    for band in BANDS:
        specs += [FeatureSpec(f"{band}_rel.{ch}", "1", 0.0, 1.0) for ch in channels]
    specs += [FeatureSpec(f"sef95.{ch}", "Hz", TOTAL_RANGE[0], TOTAL_RANGE[1]) for ch in channels]
    specs += [FeatureSpec(f"spectral_entropy.{ch}", "1", 0.0, 1.0) for ch in channels]
    specs += [FeatureSpec(f"hjorth_log_activity.{ch}", "log10(uV^2)", *LOG_ACTIVITY_RANGE) for ch in channels]
    specs += [FeatureSpec(f"hjorth_mobility.{ch}", "Hz", 0.0, 60.0) for ch in channels]
    # complexity is 1 for a sine and ~2-4 for waking EEG; slow waves under fast activity (sleep, drift
    # with muscle noise) reach 15-25: the shared OpenBCI sleep recording's frontal channels had 12-14 %
    # of windows above the former bound 10, and their 99th percentile is 22
    specs += [FeatureSpec(f"hjorth_complexity.{ch}", "1", 1.0, COMPLEXITY_UPPER) for ch in channels]
    specs += [FeatureSpec(f"line_length.{ch}", "uV/s", 0.0, LINE_LENGTH_UPPER) for ch in channels]
    specs.append(FeatureSpec("alpha_theta_ratio", "1", 0.0, 10.0))
    faa = _faa_pair(channels)
    if faa is not None:
        specs.append(FeatureSpec("frontal_alpha_asymmetry", "1", -2.0, 2.0))
    names = tuple(s.name for s in specs)
    return _Plan(
        n_per_seg=n_per_seg, step=step, taper=taper, scale=scale, one_sided=one_sided, freqs=freqs, range_freqs=fr,
        band_matrix_t=np.vstack([band_matrix.T, np.ones(fr.size)]), cumulate=cumulate, range_sl=range_sl,
        range_scale=range_scale, n_seg=n_seg, seg_mean=np.full(n_per_seg, 1.0 / n_per_seg), seg_ones=np.ones(n_per_seg),
        taper_rows=np.tile(taper, (len(channels), 1)), band_select_t=np.ascontiguousarray(band_matrix.T / df),
        rate=rate, names=names, index={name: i for i, name in enumerate(names)}, faa=faa, specs=tuple(specs),
        relative_alone=bool(in_range.size) and df >= 1.0 and bool(band_matrix.any(axis=1).all()),
    )


def _faa_pair(channels: tuple[str, ...]) -> tuple[int, int] | None:
    std = {standard_name(ch): i for i, ch in reversed(list(enumerate(channels)))}
    for right, left in FAA_PAIRS:
        if right.upper() in {k.upper() for k in std if k} and left.upper() in {k.upper() for k in std if k}:
            up = {k.upper(): v for k, v in std.items() if k}
            return up[right.upper()], up[left.upper()]
    return None
