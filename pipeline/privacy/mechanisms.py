"""Local randomizers on a declared grid: discrete Laplace, discrete Gaussian, Piecewise, Duchi, (G)RR.

Every numeric feature is first clipped to its public bounds ``[lower, upper]`` and mapped to an
integer grid index ``k`` in ``{0, ..., G}`` (``G`` = ``grid_steps``, step ``(upper - lower) / G``)
by unbiased randomized rounding. Binary and categorical features are an index ``k`` in
``{0, ..., K - 1}``. A mechanism maps ``k`` to an integer output index ``j``; the released value is
``offset + j * out_step``, a fixed grid that never depends on the input (Mironov 2012).

========== ============================== =========================================== ==========
name       output index j                 released value                              privacy
========== ============================== =========================================== ==========
laplace    k + DLap(q), q = e^(-eps/G)     lower + j step (unbiased)                    eps-DP
gaussian   k + DGauss(sigma)               lower + j step (unbiased)                    rho-zCDP
piecewise  discrete Piecewise (j < G + h)  unbiased affine map of j                     eps-DP
duchi      {0, 1}                          mid -/+ (width / 2) B, B = (e^eps+1)/(e^eps-1) eps-DP
rr, grr    {0, ..., K - 1}                 the reported category index (debias with     eps-DP
                                           :func:`~pipeline.privacy.estimators.estimate_frequency`)
========== ============================== =========================================== ==========

The discrete Piecewise Mechanism (after Wang et al., ICDE 2019) outputs ``j`` in
``{0, ..., G + h - 1}`` with ``h = max(1, round(G e^(-eps/2)))``: the ``h`` indices
``{k, ..., k + h - 1}`` each have probability ``p_h = e^eps / (h e^eps + G)``, the ``G`` others
``p_l = 1 / (h e^eps + G)``. The ratio of any output's probability under two inputs is at most
``p_h / p_l = e^eps``, and ``E[j - (G + h - 1)/2] = c (k - G/2)`` with ``c = (p_h - p_l) h``.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.privacy.noise import discrete_laplace

MECHANISMS = ("laplace", "gaussian", "piecewise", "duchi", "rr", "grr")
#: Mechanisms each feature kind accepts.
KIND_MECHANISMS: dict[str, tuple[str, ...]] = {
    "numeric": ("laplace", "gaussian", "piecewise", "duchi"),
    "binary": ("rr", "grr"),
    "categorical": ("grr",),
}
#: Candidates of the automatic, lowest-error selection (Gaussian needs delta: override only).
AUTO_CANDIDATES: dict[str, tuple[str, ...]] = {
    "numeric": ("laplace", "piecewise", "duchi"),
    "binary": ("rr",),
    "categorical": ("grr",),
}


# --------------------------------------------------------------------------- parameters
def laplace_log_q(epsilon: np.ndarray | float, grid_steps: int) -> np.ndarray | float:
    """``ln q = -eps / G``: discrete Laplace of scale ``G / eps`` steps (sensitivity ``G`` steps)."""
    return -np.asarray(epsilon, dtype=np.float64) / grid_steps


def laplace_variance_steps(epsilon: np.ndarray | float, grid_steps: int) -> np.ndarray:
    """Variance of discrete Laplace noise in steps^2: ``2 q / (1 - q)^2``."""
    q = np.exp(laplace_log_q(epsilon, grid_steps))
    return 2.0 * q / (1.0 - q) ** 2


def gaussian_rho(epsilon: float, delta: float) -> float:
    """Largest rho with ``rho + 2 sqrt(rho ln(1/delta)) <= eps`` (zCDP -> (eps, delta), Bun-Steinke)."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    big_l = math.log(1.0 / delta)
    return (math.sqrt(big_l + epsilon) - math.sqrt(big_l)) ** 2


def gaussian_sigma_steps(epsilon: float, delta: float, grid_steps: int, n_features: int) -> float:
    """sigma (steps) of the joint discrete Gaussian on ``n_features`` features.

    L2 sensitivity ``G sqrt(n)``; ``rho = G^2 n / (2 sigma^2)`` (Canonne, Kamath, Steinke 2020).
    """
    rho = gaussian_rho(epsilon, delta)
    return grid_steps * math.sqrt(n_features / (2.0 * rho))


def piecewise_params(epsilon: np.ndarray | float, grid_steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(h, p_high, c)`` of the discrete Piecewise Mechanism (see module docstring)."""
    eps = np.asarray(epsilon, dtype=np.float64)
    g = float(grid_steps)
    h = np.maximum(1.0, np.rint(g * np.exp(-eps / 2.0)))
    e = np.exp(eps)
    p_l = 1.0 / (h * e + g)
    p_high = h * e * p_l
    c = (e - 1.0) * p_l * h
    return h, p_high, c


def piecewise_variance_steps(epsilon: np.ndarray | float, grid_steps: int, k: np.ndarray | float) -> np.ndarray:
    """Exact variance (steps^2) of the debiased Piecewise output for grid index ``k``."""
    g = float(grid_steps)
    h, _, c = piecewise_params(epsilon, grid_steps)
    e = np.exp(np.asarray(epsilon, dtype=np.float64))
    p_l = 1.0 / (h * e + g)
    m = g + h
    mu = np.asarray(k, dtype=np.float64) - g / 2.0
    second = p_l * m * (m * m - 1.0) / 12.0 + (e - 1.0) * p_l * (h * mu * mu + h * (h * h - 1.0) / 12.0)
    return (second - (c * mu) ** 2) / (c * c)


def duchi_slope(epsilon: np.ndarray | float) -> np.ndarray:
    """``(e^eps - 1) / (e^eps + 1) = 1 / B``: how strongly P(+) follows the input."""
    return np.tanh(np.asarray(epsilon, dtype=np.float64) / 2.0)


def duchi_variance_steps(epsilon: np.ndarray | float, grid_steps: int, k: np.ndarray | float) -> np.ndarray:
    """Variance (steps^2) of Duchi's output for grid index ``k``: ``(G/2)^2 (B^2 - t^2)``."""
    b = 1.0 / duchi_slope(epsilon)
    t = 2.0 * np.asarray(k, dtype=np.float64) / grid_steps - 1.0
    return (grid_steps / 2.0) ** 2 * (b * b - t * t)


def grr_probs(epsilon: np.ndarray | float, n_categories: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(p, q)``: probability of reporting the true category, and each other one."""
    e = np.exp(np.asarray(epsilon, dtype=np.float64))
    denom = e + np.asarray(n_categories, dtype=np.float64) - 1.0
    return e / denom, 1.0 / denom


def grr_frequency_variance(
    epsilon: np.ndarray | float, n_categories: int | np.ndarray, frequency: np.ndarray | float
) -> np.ndarray:
    """Per-report variance of the debiased frequency of a category of true frequency ``f``.

    ``(f p (1 - p) + (1 - f) q (1 - q)) / (p - q)^2`` for a fixed population in which a fraction
    ``f`` holds the category (Wang et al., USENIX Security 2017).
    """
    p, q = grr_probs(epsilon, n_categories)
    f = np.asarray(frequency)
    return (f * p * (1.0 - p) + (1.0 - f) * q * (1.0 - q)) / (p - q) ** 2


def normalized_error(
    mechanism: str, epsilon: np.ndarray | float, grid_steps: int, n_categories: int = 2, delta: float = 0.0
) -> np.ndarray:
    """Worst-case variance of one report in units of ``width^2`` (numeric) or of a frequency.

    Used to select mechanisms and to split epsilon; includes grid rounding (``1 / (4 G^2)``).
    """
    eps = np.asarray(epsilon, dtype=np.float64)
    g = float(grid_steps)
    rounding = 0.25 / (g * g)
    if mechanism == "laplace":
        return laplace_variance_steps(eps, grid_steps) / (g * g) + rounding
    if mechanism == "piecewise":
        return piecewise_variance_steps(eps, grid_steps, 0.0) / (g * g) + rounding
    if mechanism == "duchi":
        return duchi_variance_steps(eps, grid_steps, g / 2.0) / (g * g) + rounding
    if mechanism == "gaussian":
        rho = np.array([gaussian_rho(float(e), delta) for e in np.atleast_1d(eps)]).reshape(eps.shape)
        return 1.0 / (2.0 * rho) + rounding
    if mechanism in ("rr", "grr"):
        return grr_frequency_variance(eps, n_categories, 1.0 / n_categories)
    raise ValueError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}")


def best_mechanism(kind: str, epsilon: float, grid_steps: int, n_categories: int = 2) -> str:
    """The candidate of lowest worst-case error for a feature of ``kind`` at ``epsilon``."""
    cands = AUTO_CANDIDATES[kind]
    errs = [float(normalized_error(m, epsilon, grid_steps, n_categories)) for m in cands]
    return cands[int(np.argmin(errs))]


# --------------------------------------------------------------------------- kernels
# Each kernel maps grid indices k (float64 array of integers) and uniforms to output indices j.
def laplace_kernel(k: np.ndarray, u1: np.ndarray, u2: np.ndarray, log_q: np.ndarray | float) -> np.ndarray:
    """``j = k + Z``, ``Z`` discrete Laplace with ``ln q = log_q``."""
    return k + discrete_laplace(u1, u2, log_q)


def piecewise_kernel(
    k: np.ndarray, u1: np.ndarray, u2: np.ndarray, grid_steps: int, h: np.ndarray, p_high: np.ndarray
) -> np.ndarray:
    """Discrete Piecewise: uniform on ``{k..k+h-1}`` w.p. ``p_high``, else uniform on the other ``G``."""
    j_in = k + np.minimum(np.floor(u2 * h), h - 1.0)
    j_out = np.minimum(np.floor(u2 * grid_steps), grid_steps - 1.0)
    j_out += h * (j_out >= k)
    return np.where(u1 < p_high, j_in, j_out)


def duchi_kernel(k: np.ndarray, u1: np.ndarray, grid_steps: int, slope: np.ndarray | float) -> np.ndarray:
    """``j = 1`` with probability ``1/2 + (k/G - 1/2) slope``, else 0."""
    return (u1 < 0.5 + (k / grid_steps - 0.5) * slope).astype(np.float64)


def grr_kernel(
    k: np.ndarray, u1: np.ndarray, u2: np.ndarray, n_categories: np.ndarray | int, p_keep: np.ndarray | float
) -> np.ndarray:
    """Generalized randomized response: keep ``k`` w.p. ``p_keep``, else a uniform other category."""
    other = np.minimum(np.floor(u2 * (n_categories - 1)), n_categories - 2.0)
    other += other >= k
    return np.where(u1 < p_keep, k, other)


def output_grid(mechanism: str, epsilon: float, lower: float, upper: float, grid_steps: int) -> tuple[float, float]:
    """``(offset, out_step)`` so that a numeric release is ``offset + j * out_step``."""
    step = (upper - lower) / grid_steps
    if mechanism in ("laplace", "gaussian"):
        return lower, step
    if mechanism == "piecewise":
        h, _, c = piecewise_params(epsilon, grid_steps)
        m = grid_steps + float(h)
        return lower + step * (grid_steps / 2.0 - (m - 1.0) / (2.0 * float(c))), step / float(c)
    if mechanism == "duchi":
        b = 1.0 / float(duchi_slope(epsilon))
        half = (upper - lower) / 2.0
        return lower + half - half * b, 2.0 * half * b
    if mechanism in ("rr", "grr"):
        return 0.0, 1.0
    raise ValueError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}")


def output_range(
    mechanism: str, epsilon: float, lower: float, upper: float, grid_steps: int, n_categories: int = 2
) -> tuple[float, float]:
    """Smallest and largest value the mechanism can release (+-inf for additive noise)."""
    offset, out_step = output_grid(mechanism, epsilon, lower, upper, grid_steps)
    if mechanism in ("laplace", "gaussian"):
        return -math.inf, math.inf
    if mechanism == "piecewise":
        h, _, _ = piecewise_params(epsilon, grid_steps)
        return offset, offset + (grid_steps + float(h) - 1.0) * out_step
    if mechanism == "duchi":
        return offset, offset + out_step
    return 0.0, float(n_categories - 1)
