"""EEG features: band powers, spectral shape, Hjorth parameters, line length, alpha asymmetry.

All spectral features come from one Welch estimate per window, vectorized over channels: segments
of ``segment_s`` seconds with 50 % overlap, a Hamming taper, per-segment mean removal and the mean
of the segment periodograms, which is exactly :func:`mne.time_frequency.psd_array_welch` with
``n_fft = n_per_seg = segment_s * sfreq``, ``n_overlap = n_per_seg // 2`` (tested against it).
Everything that depends only on the channels, the rate and the window length (taper, band masks,
names, asymmetry pairs) is computed once per layout and cached.

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
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft
import scipy.signal

from pipeline.features.base import to_unit
from pipeline.features.spec import FeatureSpec

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
    taper: np.ndarray  # (n_per_seg,)
    scale: float  # density scaling incl. one-sided doubling
    one_sided: np.ndarray  # (n_freq,) 1 or 2
    freqs: np.ndarray
    band_matrix: np.ndarray  # (n_freq_in_range, n_bands) of df
    range_sl: slice
    names: tuple[str, ...]
    faa: tuple[int, int] | None  # (right, left) channel indices
    specs: tuple[FeatureSpec, ...]


class EegExtractor:
    """EEG features of one window (see the module docstring).

    Parameters
    ----------
    segment_s : float
        Welch segment length, s (frequency resolution ``1 / segment_s`` Hz). Shortened to the window
        length when the window is shorter.
    """

    def __init__(self, segment_s: float = 1.0) -> None:
        self.segment_s = float(segment_s)
        self._plans: dict[tuple[tuple[str, ...], float, int], _Plan] = {}

    # public -----------------------------------------------------------------
    def specs(self, channels: tuple[str, ...], sample_rate: float, n_samples: int | None = None) -> tuple[FeatureSpec, ...]:
        """Feature declarations for these channels (``n_samples`` does not change them)."""
        n = n_samples if n_samples is not None else max(8, int(round(2 * self.segment_s * sample_rate)))
        return self._plan(tuple(channels), float(sample_rate), n).specs

    def compute(
        self, data: np.ndarray, sample_rate: float, channels: tuple[str, ...], units: tuple[str, ...]
    ) -> dict[str, float]:
        """Features of one window ``data`` (n_channels, n_samples) in ``units`` (converted to uV)."""
        plan = self._plan(tuple(channels), float(sample_rate), data.shape[1])
        x = to_unit(np.asarray(data, dtype=np.float64), units, "uV")
        psd = self.psd(x, plan)
        values = self._values(x, psd, plan, sample_rate)
        return dict(zip(plan.names, values.tolist(), strict=True))

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
        spec = scipy.fft.rfft(segs * plan.taper, axis=-1)
        power = spec.real**2 + spec.imag**2
        return power.mean(axis=1) * (plan.scale * plan.one_sided)

    def _values(self, x: np.ndarray, psd: np.ndarray, plan: _Plan, rate: float) -> np.ndarray:
        n_ch = x.shape[0]
        nb = len(BANDS)
        pr = psd[:, plan.range_sl]
        absp = pr @ plan.band_matrix  # (n_ch, n_bands) uV^2
        total = absp.sum(axis=1)
        safe_total = np.where(total > 0, total, np.nan)
        rel = absp / safe_total[:, None]
        # spectral edge and entropy over the 1-45 Hz bins
        cum = np.cumsum(pr, axis=1)
        edge_idx = np.argmax(cum >= 0.95 * cum[:, -1:], axis=1)
        fr = plan.freqs[plan.range_sl]
        sef = np.where(total > 0, fr[edge_idx], np.nan)
        p = pr / np.where(cum[:, -1:] > 0, cum[:, -1:], np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            plogp = np.where(p > 0, p * np.log(p), 0.0)
        entropy = -plogp.sum(axis=1) / math.log(pr.shape[1]) if pr.shape[1] > 1 else np.full(n_ch, np.nan)
        entropy = np.where(total > 0, entropy, np.nan)
        # Hjorth and line length in the time domain
        xc = x - x.mean(axis=1, keepdims=True)
        dx = np.diff(xc, axis=1)
        ddx = np.diff(dx, axis=1)
        var0 = np.einsum("ij,ij->i", xc, xc) / xc.shape[1]
        var1 = np.einsum("ij,ij->i", dx, dx) / max(dx.shape[1], 1)
        var2 = np.einsum("ij,ij->i", ddx, ddx) / max(ddx.shape[1], 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            mob0 = np.sqrt(var1 / var0)
            mob1 = np.sqrt(var2 / var1)
            complexity = np.where((var0 > 0) & (var1 > 0), mob1 / mob0, np.nan)
            mobility = np.where(var0 > 0, mob0 * rate / (2 * math.pi), np.nan)
        line = np.abs(dx).mean(axis=1) * rate
        per_channel = np.concatenate(
            [absp.T, rel.T, sef[None], entropy[None], var0[None], mobility[None], complexity[None], line[None]]
        )  # (n_feat, n_ch), feature-major like the names
        mean_theta = absp[:, 1].mean()
        ratio = absp[:, 2].mean() / mean_theta if mean_theta > 0 else np.nan
        glob = [ratio]
        if plan.faa is not None:
            r, left = absp[plan.faa[0], 2], absp[plan.faa[1], 2]
            glob.append(math.log(r) - math.log(left) if r > 0 and left > 0 else np.nan)
        assert per_channel.shape[0] == 2 * nb + 6
        return np.concatenate([per_channel.ravel(), np.asarray(glob, dtype=np.float64)])

    def _plan(self, channels: tuple[str, ...], rate: float, n: int) -> _Plan:
        key = (channels, rate, n)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) > 64:
                self._plans.clear()
            plan = self._plans[key] = _make_plan(channels, rate, n, self.segment_s)
        return plan


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
    return _Plan(
        n_per_seg=n_per_seg, step=step, taper=taper, scale=scale, one_sided=one_sided, freqs=freqs,
        band_matrix=band_matrix, range_sl=range_sl, names=tuple(s.name for s in specs), faa=faa,
        specs=tuple(specs),
    )


def _faa_pair(channels: tuple[str, ...]) -> tuple[int, int] | None:
    std = {standard_name(ch): i for i, ch in reversed(list(enumerate(channels)))}
    for right, left in FAA_PAIRS:
        if right.upper() in {k.upper() for k in std if k} and left.upper() in {k.upper() for k in std if k}:
            up = {k.upper(): v for k, v in std.items() if k}
            return up[right.upper()], up[left.upper()]
    return None
