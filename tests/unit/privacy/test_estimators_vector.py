"""Estimators (unbiased, variance formulas, CI coverage) and the epsilon split / sampling choice."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.privacy import estimate_frequency, estimate_mean
from pipeline.privacy import mechanisms as mech
from pipeline.privacy.audit import sample_outputs
from pipeline.privacy.estimators import mechanism_variance, worst_variance
from pipeline.privacy.noise import NoiseStream
from pipeline.privacy.vector import Profile, allocate, strategy_errors


@settings(max_examples=25, deadline=None)
@given(
    mechanism=st.sampled_from(["laplace", "piecewise", "duchi"]),
    eps=st.floats(0.2, 5.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_population_mean_is_unbiased_and_ci_covers(mechanism: str, eps: float, seed: int) -> None:
    """One release per device, 20000 devices with true values on [0, 10]; 99.9 % interval."""
    g, n = 256, 20_000
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, g + 1, n)
    stream = NoiseStream(seed.to_bytes(8, "little") * 4)
    u = stream.uniform(2 * n).reshape(2, n)
    k = truth.astype(float)
    if mechanism == "laplace":
        j = ref.laplace_kernel(k, u[0], u[1], mech.laplace_log_q(eps, g))
    elif mechanism == "piecewise":
        h, p_high, _ = mech.piecewise_params(eps, g)
        j = ref.piecewise_kernel(k, u[0], u[1], g, h, p_high)
    else:
        j = ref.duchi_kernel(k, u[0], g, mech.duchi_slope(eps))
    offset, step = mech.output_grid(mechanism, eps, 0.0, 10.0, g)
    est = estimate_mean(
        offset + j * step, mechanism=mechanism, epsilon=eps, lower=0.0, upper=10.0, grid_steps=g, confidence=0.999
    )
    x = truth * 10.0 / g
    assert est.ci_low <= x.mean() <= est.ci_high
    exact = float(np.mean(mechanism_variance(mechanism, eps, 0.0, 10.0, x, g))) / n
    assert exact <= est.variance * (1 + 1e-12)  # the interval uses the worst case


def test_worst_variance_is_attained_at_the_ends_for_piecewise_and_middle_for_duchi() -> None:
    assert worst_variance("piecewise", 1.0, 0, 1, 64) == pytest.approx(
        float(mechanism_variance("piecewise", 1.0, 0, 1, 0.0, 64))
    )
    assert worst_variance("duchi", 1.0, 0, 1, 64) == pytest.approx(
        float(mechanism_variance("duchi", 1.0, 0, 1, 0.5, 64))
    )


@pytest.mark.parametrize(("eps", "kc"), [(0.5, 2), (1.0, 4), (3.0, 6)])
def test_frequency_estimator_unbiased_with_exact_variance(eps: float, kc: int) -> None:
    """500 repetitions of 2000 reports: mean within 4.5 SE, variance within 20 % (chi2, p < 1e-4)."""
    freqs = np.linspace(1, kc, kc) / np.linspace(1, kc, kc).sum()
    n, reps = 2000, 500
    truth = np.repeat(np.arange(kc), np.round(freqs * n).astype(int))[:n]
    f_true = np.bincount(truth, minlength=kc) / truth.size
    ests = []
    for r in range(reps):
        stream = NoiseStream(bytes([r % 256, r // 256]) * 16)
        u = stream.uniform(2 * truth.size).reshape(2, -1)
        j = ref.grr_kernel(truth.astype(float), u[0], u[1], kc, mech.grr_probs(eps, kc)[0])
        ests.append([e.value for e in estimate_frequency(j, n_categories=kc, epsilon=eps)])
    ests_arr = np.array(ests)
    p, q = (float(a) for a in mech.grr_probs(eps, kc))
    var = (f_true * p * (1 - p) + (1 - f_true) * q * (1 - q)) / (truth.size * (p - q) ** 2)
    assert np.all(np.abs(ests_arr.mean(axis=0) - f_true) < 4.5 * np.sqrt(var / reps))
    assert np.allclose(ests_arr.var(axis=0), var, rtol=0.2)


def test_allocation_spends_exactly_epsilon_and_favours_costly_features() -> None:
    profiles = [Profile("numeric", 2, None), Profile("binary", 2, None)]
    eps = allocate(profiles, [10, 5], 4.0, 1024)
    assert float(np.dot([10, 5], eps)) == pytest.approx(4.0, rel=1e-12)
    assert eps[0] > eps[1] > 0  # numeric error falls faster with epsilon here
    single = allocate([Profile("numeric", 2, None)], [8], 4.0, 1024)
    assert single.tolist() == [0.5]


@pytest.mark.parametrize(("d", "eps", "best_k"), [(320, 1.0, 1), (1, 1.0, 1), (64, 0.1, 1), (8, 400.0, 8)])
def test_strategy_choice(d: int, eps: float, best_k: int) -> None:
    """Sampling k = d is the equal split, so the best k never loses to it for one profile."""
    split, sample, k = strategy_errors([Profile("numeric", 2, None)], [d], eps, 1024, 0.0, None)
    assert sample <= split * (1 + 1e-9)
    assert k == best_k


def test_laplace_variance_formula() -> None:
    q = math.exp(-1.0 / 64)
    assert float(mech.laplace_variance_steps(1.0, 64)) == pytest.approx(2 * q / (1 - q) ** 2)
    j = sample_outputs("laplace", 1.0, 0, 100_000, b"v")
    assert j.var() == pytest.approx(float(mech.laplace_variance_steps(1.0, 1024)), rel=0.03)


def test_present_mean_interval_is_fieller_within_the_bounds() -> None:
    """A share known exactly gives the symmetric interval; a noisy share an asymmetric one that
    still contains the estimate; a share not significantly positive gives the bounds (or no
    interval without bounds)."""
    from pipeline.errors import PrivacyError
    from pipeline.privacy.estimators import BitStats, ValueStats, present_mean

    values = ValueStats()
    for v in (60.0, 80.0, 70.0, 90.0):
        values.add(v)
    exact = BitStats(50.0)  # randomized response at epsilon 50: the bits are the truth
    for _ in range(100):
        exact.add(1.0)
    e = present_mean(values, exact, 110.0, bounds=(40.0, 180.0))
    half = 1.959963984540054 * math.sqrt(e.variance)
    assert e.ci_low == pytest.approx(e.value - half) and e.ci_high == pytest.approx(e.value + half)

    noisy = BitStats(0.5)
    for i in range(400):
        noisy.add(float(i % 3 != 0))
    e = present_mean(values, noisy, 110.0, bounds=(40.0, 180.0))
    assert e.ci_low < e.value < e.ci_high and e.ci_high - e.value != pytest.approx(e.value - e.ci_low, rel=1e-3)

    weak = BitStats(0.1)
    for i in range(40):
        weak.add(float(i % 2))
    share, var = weak.share_and_variance()
    assert 0 < share < 1.96 * math.sqrt(var)  # positive, not significantly
    e = present_mean(values, weak, 110.0, bounds=(40.0, 180.0))
    assert (e.ci_low, e.ci_high) == (40.0, 180.0)
    with pytest.raises(PrivacyError, match="unbounded"):
        present_mean(values, weak, 110.0)
