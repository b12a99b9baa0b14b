"""Analyst-side estimators: population means and category frequencies from many devices' releases.

Numeric releases are unbiased for the (clipped) true value, so the population mean is the
sample mean; its confidence interval uses the mechanism's worst-case variance over the bounds
(:func:`mechanism_variance` maximized over ``x``), which gives at least nominal coverage.
Binary and categorical releases (randomized response) are debiased per category:
``f_v = (c_v / n - q) / (p - q)`` with variance
``(q (1 - q) + f_v (p - q)(1 - p - q)) / (n (p - q)^2)``, exact for the ``n`` reporting devices
(Wang et al., USENIX Security 2017).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from pipeline.errors import PrivacyError
from pipeline.privacy import mechanisms as mech
from pipeline.validation import check_option, check_range


@dataclass(frozen=True, slots=True)
class Estimate:
    """A point estimate with its variance and a two-sided confidence interval."""

    value: float
    variance: float
    ci_low: float
    ci_high: float
    n: int
    confidence: float


def mechanism_variance(
    mechanism: str,
    epsilon: float,
    lower: float,
    upper: float,
    x: np.ndarray | float,
    grid_steps: int = 1024,
    sigma_steps: float | None = None,
) -> np.ndarray:
    """Exact variance of one numeric release of true value ``x`` (feature units^2).

    Includes the randomized rounding of ``x`` to the grid. ``sigma_steps`` is required for
    ``gaussian`` (see ``ReleasePlan.sigma_steps``) and is then an upper bound (the discrete
    Gaussian's variance is below ``sigma^2``).
    """
    check_option("mechanism", mechanism, ("laplace", "gaussian", "piecewise", "duchi"))
    g = grid_steps
    step = (upper - lower) / g
    z = (np.clip(np.asarray(x, dtype=np.float64), lower, upper) - lower) / step
    k0 = np.floor(z)
    f = z - k0

    def steps2(k: np.ndarray) -> np.ndarray:
        if mechanism == "laplace":
            return np.broadcast_to(mech.laplace_variance_steps(epsilon, g), np.shape(k))
        if mechanism == "gaussian":
            if sigma_steps is None:
                raise PrivacyError("mechanism_variance('gaussian') needs sigma_steps")
            return np.full(np.shape(k), sigma_steps**2)
        if mechanism == "piecewise":
            return mech.piecewise_variance_steps(epsilon, g, k)
        return mech.duchi_variance_steps(epsilon, g, k)

    inner = (1.0 - f) * steps2(k0) + f * steps2(np.minimum(k0 + 1.0, g))
    return step * step * (inner + f * (1.0 - f))


def worst_variance(
    mechanism: str, epsilon: float, lower: float, upper: float, grid_steps: int = 1024, sigma_steps: float | None = None
) -> float:
    """Largest :func:`mechanism_variance` over ``x`` in ``[lower, upper]`` (grid points and midpoints)."""
    xs = lower + (upper - lower) * np.linspace(0.0, 1.0, 2 * grid_steps + 1)
    return float(np.max(mechanism_variance(mechanism, epsilon, lower, upper, xs, grid_steps, sigma_steps)))


def _z(confidence: float) -> float:
    check_range("confidence", confidence, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def estimate_mean(
    values: np.ndarray,
    *,
    mechanism: str,
    epsilon: float,
    lower: float,
    upper: float,
    grid_steps: int = 1024,
    confidence: float = 0.95,
    sigma_steps: float | None = None,
) -> Estimate:
    """Unbiased population mean of a numeric feature from one release per device.

    Parameters
    ----------
    values : array
        The released values (one per device) of one feature, all made with the same
        ``mechanism`` and ``epsilon`` (``PrivateRelease.feature_epsilon``).
    confidence : float
        Two-sided level of the normal-approximation interval.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise PrivacyError("estimate_mean needs at least one release")
    var = worst_variance(mechanism, epsilon, lower, upper, grid_steps, sigma_steps) / v.size
    half = _z(confidence) * np.sqrt(var)
    m = float(v.mean())
    return Estimate(m, var, m - half, m + half, int(v.size), confidence)


def estimate_frequency(
    reports: np.ndarray, *, n_categories: int, epsilon: float, confidence: float = 0.95
) -> list[Estimate]:
    """Unbiased frequency of every category from randomized-response reports (indices).

    Returns one :class:`Estimate` per category (index order); estimates may fall outside [0, 1].
    """
    r = np.asarray(reports)
    n = r.size
    if n == 0:
        raise PrivacyError("estimate_frequency needs at least one report")
    if n_categories < 2:
        raise PrivacyError(f"n_categories must be >= 2, got {n_categories}")
    counts = np.bincount(np.asarray(r, dtype=np.int64), minlength=n_categories)
    if counts.size > n_categories:
        raise PrivacyError(f"reports contain category {counts.size - 1}, but n_categories is {n_categories}")
    p, q = (float(a) for a in mech.grr_probs(epsilon, n_categories))
    f = (counts / n - q) / (p - q)
    var = (q * (1.0 - q) + np.clip(f, 0.0, 1.0) * (p - q) * (1.0 - p - q)) / (n * (p - q) ** 2)
    z = _z(confidence)
    return [
        Estimate(float(fi), float(vi), float(fi - z * np.sqrt(vi)), float(fi + z * np.sqrt(vi)), n, confidence)
        for fi, vi in zip(f, var, strict=True)
    ]


def least_variance(noise: Mapping[str, Any], points: int = 257) -> float:
    """The least variance of one released value over the feature's bounds, for the noise
    descriptor of a release record (``mechanism``, ``epsilon``, ``lower``, ``upper``,
    ``grid_steps``, ``sigma_steps``); 0 when the descriptor is incomplete."""
    try:
        xs = np.linspace(float(noise["lower"]), float(noise["upper"]), points)
        var = mechanism_variance(str(noise["mechanism"]), float(noise["epsilon"]), float(noise["lower"]),
                                 float(noise["upper"]), xs, int(noise.get("grid_steps", 1024)),
                                 noise.get("sigma_steps"))
    except (KeyError, TypeError, ValueError, PrivacyError):
        return 0.0
    return float(np.min(var))


def _grow(partials: list[float], x: float) -> None:
    """Add ``x`` to an exact sum held as non-overlapping partials (the msum recipe behind fsum)."""
    i = 0
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]


@dataclass
class ValueStats:
    """Sufficient statistics of the released values of one numeric feature (one noise setting).

    The sums are kept exactly (Shewchuk's non-overlapping partials, as in :func:`math.fsum`), so the
    statistics do not depend on the order the values arrive in: an aggregator that reads a topic's
    partitions in another interleaving, after a restart, computes the very same bits.
    """

    n: int = 0
    #: a lower bound on one released value's variance (the mechanism's least variance over the
    #: bounds, :func:`least_variance`); 0 trusts the spread alone
    floor: float = 0.0
    _total: list[float] = field(default_factory=list)
    _total_sq: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.n += 1
        _grow(self._total, value)
        _grow(self._total_sq, value * value)

    @property
    def total(self) -> float:
        return math.fsum(self._total)

    @property
    def total_sq(self) -> float:
        return math.fsum(self._total_sq)

    def mean_and_variance(self) -> tuple[float, float]:
        """The mean of the released values and its variance, estimated from their spread.

        Each released value is unbiased for its device's true value, so the mean is unbiased for
        the reporting devices' mean; its variance is estimated by the sample variance over ``n``
        (the noise, which dominates, plus the devices' own spread: slightly conservative when
        every device of the cohort reports), and never below ``floor`` per value: with a handful of
        reports the spread can be zero (two Duchi outputs are often equal), the noise never is.
        """
        if self.n < 2:
            raise PrivacyError(f"a variance needs at least 2 reports, got {self.n}")
        m = self.total / self.n
        s2 = max(self.floor, math.fsum([*self._total_sq, -self.n * m * m]) / (self.n - 1))
        return m, s2 / self.n


@dataclass
class BitStats:
    """Randomized-response presence bits of one feature: count of reports and of ones."""

    epsilon: float
    n: int = 0
    ones: int = 0

    def add(self, bit: float) -> None:
        self.n += 1
        self.ones += int(bit >= 0.5)

    def share_and_variance(self) -> tuple[float, float]:
        """Debiased share of devices with a value, and its variance."""
        if self.n < 1:
            raise PrivacyError("no presence bits")
        p, q = (float(a) for a in mech.grr_probs(self.epsilon, 2))
        y = self.ones / self.n
        return float(debiased_share(self.ones, self.n, self.epsilon)), y * (1.0 - y) / (max(self.n - 1, 1) * (p - q) ** 2)


def debiased_share(ones: Any, n: Any, epsilon: float) -> Any:
    """Debiased share of devices with a value from ``ones`` of ``n`` presence bits at ``epsilon``
    (scalars or arrays): ``(ones / n - q) / (p - q)``. :class:`BitStats` and the planner's
    Monte Carlo (:mod:`pipeline.plan`) both use it."""
    p, q = (float(a) for a in mech.grr_probs(epsilon, 2))
    return (np.asarray(ones) / n - q) / (p - q)


def present_point(v: Any, share: Any, fallback: float, bounds: tuple[float, float] = (-math.inf, math.inf)) -> Any:
    """The point estimate of the mean over the devices with a value (scalars or arrays):
    ``(v - (1 - p) c) / p`` clipped to the feature's ``bounds``. The mean of values within the
    bounds lies within them, so clipping only ever moves the estimate toward the truth; it matters
    when the share ``p`` is poorly estimated (a small denominator sends the ratio far out).
    :func:`present_mean` and the planner's Monte Carlo (:mod:`pipeline.plan`) both use it."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = (np.asarray(v) - (1.0 - np.asarray(share)) * fallback) / share
    return np.clip(mu, bounds[0], bounds[1])


def present_mean(values: ValueStats, bits: BitStats | None, fallback: float, *, confidence: float = 0.95,
                 bounds: tuple[float, float] = (-math.inf, math.inf)) -> Estimate:
    """Mean over the devices with a value: ``(v - (1 - p) c) / p`` clipped to ``bounds``
    (:func:`present_point`), with its delta-method variance. ``bits`` None (per-window releases,
    no presence bit): the plain mean of the released values and its symmetric normal interval,
    both clipped to ``bounds`` (the truth lies within them, so clipping never uncovers it); no
    estimate when that interval lies entirely outside them.

    With presence bits the interval is Fieller's for the ratio ``(v - c) / p`` (numerator and
    denominator estimated from independent noise), intersected with ``bounds`` (the feature's
    public bounds: the mean of values within them lies within them) and closed to its hull. The
    symmetric delta-method interval is conservative when the share ``p`` is estimated from a few
    hundred bits at a small epsilon (its standard error then scales with ``1 / p^2``: 98 % coverage
    at 400 devices, ``tests/validation/test_study_coverage.py``); Fieller's keeps the nominal level.

    Raises
    ------
    PrivacyError
        If the share is not positive, or the interval is unbounded (the share is not significantly
        above zero) and ``bounds`` are infinite, or the interval does not meet ``bounds``.
    """
    v, var_v = values.mean_and_variance()
    z = _z(confidence)
    if bits is None:
        half = z * math.sqrt(var_v)
        lo, hi = bounds
        if v + half < lo or v - half > hi:  # as Fieller's below: no interval within the bounds
            raise PrivacyError("the confidence interval of the mean does not meet the bounds")
        return Estimate(min(max(v, lo), hi), var_v, max(v - half, lo), min(v + half, hi), values.n, confidence)
    share, var_p = bits.share_and_variance()
    if share <= 0.0:
        raise PrivacyError(f"the estimated share of devices with a value is not positive ({share:.3g})")
    mu = float(present_point(v, share, fallback, bounds))
    var = var_v / share**2 + (v - fallback) ** 2 * var_p / share**4
    low, high = _fieller(v - fallback, var_v, share, var_p, z, bounds[0] - fallback, bounds[1] - fallback)
    return Estimate(mu, var, fallback + low, fallback + high, values.n, confidence)


def _fieller(a: float, var_a: float, b: float, var_b: float, z: float, lo: float, hi: float) -> tuple[float, float]:
    """Hull of Fieller's confidence set of ``a / b`` within ``[lo, hi]``: the ``t`` with
    ``(a - t b)^2 <= z^2 (var_a + t^2 var_b)`` (Fieller 1954)."""
    qa, qb, qc = b * b - z * z * var_b, -2.0 * a * b, a * a - z * z * var_a
    if qa <= 0.0 and not (math.isfinite(lo) and math.isfinite(hi)):
        raise PrivacyError(f"the share of devices with a value ({b:.3g} +- {math.sqrt(var_b):.3g}) is not "
                           "significantly positive: the interval is unbounded")
    ends = [t for t in (lo, hi) if math.isfinite(t) and qa * t * t + qb * t + qc <= 0.0]
    disc = qb * qb - 4.0 * qa * qc
    if disc >= 0.0 and qa != 0.0:
        r = math.sqrt(disc)
        ends += [t for t in ((-qb - r) / (2.0 * qa), (-qb + r) / (2.0 * qa)) if lo <= t <= hi]
    if not ends:
        raise PrivacyError("the confidence set of the mean does not meet the bounds")
    return min(ends), max(ends)


def estimate_present_mean(
    records: list[dict[str, Any]], feature: str, *, confidence: float = 0.95
) -> Estimate:
    """Mean of ``feature`` over the devices that had a value, from study reports alone.

    A report carries ``feature`` (the period's mean, or the public fallback, the midpoint of the
    bounds, when the device had no valid window) and the presence bit ``<feature>.present``, each
    with its noise description (``records``: the published JSON objects; under the ``sample``
    strategy a report may carry either or both). With ``v`` the mean of the released values and
    ``p`` the debiased presence frequency, ``E[v] = p mu + (1 - p) c`` (``c`` the fallback), so
    ``mu = (v - (1 - p) c) / p``: unbiased up to the ratio's second-order term, with a
    delta-method standard error and Fieller's interval within the bounds (:func:`present_mean`).
    Ignoring the presence bit biases the mean toward ``c``.
    """
    present = f"{feature}.present"
    values, bits = ValueStats(), None
    fallback, bounds = math.nan, (-math.inf, math.inf)
    for r in records:
        got = r.get("values", {})
        if feature in got:
            values.add(float(got[feature]))
            n = r["noise"][feature]
            fallback, bounds = (n["lower"] + n["upper"]) / 2.0, (float(n["lower"]), float(n["upper"]))
        if present in got:
            if bits is None:
                bits = BitStats(float(r["noise"][present]["epsilon"]))
            bits.add(float(got[present]))
    if values.n == 0 or bits is None:
        raise PrivacyError(f"no reports of {feature!r} and {present!r} among the {len(records)} records")
    return present_mean(values, bits, fallback, confidence=confidence, bounds=bounds)
