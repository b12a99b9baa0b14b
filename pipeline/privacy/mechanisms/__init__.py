"""Local randomizers on a declared grid, one module each, and the registry that names them.

========== ============================== =========================================== ==========
name       output index j                 released value                              privacy
========== ============================== =========================================== ==========
laplace    k + DLap(q), q = e^(-eps/G)     lower + j step (unbiased)                    eps-DP
gaussian   k + DGauss(sigma)               lower + j step (unbiased)                    rho-zCDP
piecewise  discrete Piecewise (j < G + h)  unbiased affine map of j                     eps-DP
duchi      {0, 1}                          mid -/+ (width / 2) B, B = (e^eps+1)/(e^eps-1) eps-DP
rr, grr    {0, ..., K - 1}                 the reported category index                  eps-DP
========== ============================== =========================================== ==========

:func:`get` returns the :class:`~pipeline.privacy.mechanisms.base.Mechanism` of a name; the rest of
the package asks it, never a string switch, for parameters, errors, output grids and the
randomizer itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.privacy.mechanisms.base import Mechanism
from pipeline.privacy.mechanisms.duchi import DUCHI, duchi_slope, duchi_variance_steps
from pipeline.privacy.mechanisms.gaussian import GAUSSIAN, gaussian_rho, gaussian_sigma_steps
from pipeline.privacy.mechanisms.laplace import LAPLACE, laplace_log_q, laplace_variance_steps
from pipeline.privacy.mechanisms.piecewise import PIECEWISE, piecewise_params, piecewise_variance_steps
from pipeline.privacy.mechanisms.rr import GRR, RR, grr_frequency_variance, grr_probs

__all__ = [
    "AUTO_CANDIDATES",
    "KIND_MECHANISMS",
    "MECHANISMS",
    "Mechanism",
    "best_mechanism",
    "duchi_slope",
    "duchi_variance_steps",
    "gaussian_rho",
    "gaussian_sigma_steps",
    "get",
    "grr_frequency_variance",
    "grr_probs",
    "laplace_log_q",
    "laplace_variance_steps",
    "normalized_error",
    "output_grid",
    "output_range",
    "piecewise_params",
    "piecewise_variance_steps",
]

_REGISTRY: dict[str, Mechanism] = {m.name: m for m in (LAPLACE, GAUSSIAN, PIECEWISE, DUCHI, RR, GRR)}
MECHANISMS: tuple[str, ...] = tuple(_REGISTRY)
#: Mechanisms each feature kind accepts.
KIND_MECHANISMS: dict[str, tuple[str, ...]] = {
    kind: tuple(m.name for m in _REGISTRY.values() if kind in m.kinds) for kind in ("numeric", "binary", "categorical")
}
KIND_MECHANISMS["categorical"] = ("grr",)
#: Candidates of the automatic, lowest-error selection (Gaussian needs delta: override only).
AUTO_CANDIDATES: dict[str, tuple[str, ...]] = {
    "numeric": ("laplace", "piecewise", "duchi"),
    "binary": ("rr",),
    "categorical": ("grr",),
}


def get(name: str) -> Mechanism:
    """The mechanism registered as ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"mechanism must be one of {MECHANISMS}, got {name!r}") from None


def normalized_error(
    mechanism: str, epsilon: Any, grid_steps: int, n_categories: int = 2, delta: float = 0.0
) -> np.ndarray:
    """Worst-case variance of one report in units of ``width^2`` (numeric) or of a frequency."""
    return get(mechanism).normalized_error(np.asarray(epsilon, dtype=np.float64), grid_steps, n_categories, delta)


def best_mechanism(kind: str, epsilon: float, grid_steps: int, n_categories: int = 2) -> str:
    """The candidate of lowest worst-case error for a feature of ``kind`` at ``epsilon``."""
    cands = AUTO_CANDIDATES[kind]
    errs = [float(normalized_error(m, epsilon, grid_steps, n_categories)) for m in cands]
    return cands[int(np.argmin(errs))]


def output_grid(mechanism: str, epsilon: float, lower: float, upper: float, grid_steps: int) -> tuple[float, float]:
    """``(offset, out_step)`` so that a release is ``offset + j * out_step``."""
    offset, step = get(mechanism).output_grid(epsilon, lower, upper, grid_steps)
    return float(offset), float(step)


def output_range(
    mechanism: str, epsilon: float, lower: float, upper: float, grid_steps: int, n_categories: int = 2
) -> tuple[float, float]:
    """Smallest and largest value the mechanism can release (+-inf for additive noise)."""
    lo, hi = get(mechanism).output_range(epsilon, lower, upper, grid_steps, n_categories)
    return float(lo), float(hi)
