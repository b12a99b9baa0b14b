"""Discrete Laplace: ``j = k + Z``, ``P(Z = z) = (1 - q)/(1 + q) q^|z|``, ``q = e^(-eps/G)``.

Sensitivity ``G`` steps, so ``eps``-DP; the release ``lower + j step`` is unbiased. ``Z`` is the
difference of two geometric draws by inversion of two uniforms (:mod:`pipeline.privacy.noise`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.privacy.mechanisms.base import Mechanism, Params, full, rounding_variance
from pipeline.privacy.noise import NoiseStream


def laplace_log_q(epsilon: Any, grid_steps: int) -> Any:
    """``ln q = -eps / G``: discrete Laplace of scale ``G / eps`` steps (sensitivity ``G`` steps)."""
    return -np.asarray(epsilon, dtype=np.float64) / grid_steps


def laplace_variance_steps(epsilon: Any, grid_steps: int) -> np.ndarray:
    """Variance of discrete Laplace noise in steps^2: ``2 q / (1 - q)^2``."""
    q = np.exp(laplace_log_q(epsilon, grid_steps))
    return 2.0 * q / (1.0 - q) ** 2


class Laplace(Mechanism):
    name = "laplace"
    kinds = ("numeric",)
    uniforms = 2

    def params(self, epsilon, grid_steps, lower, upper, n_categories, delta) -> Params:  # type: ignore[no-untyped-def]
        offset, step = self.output_grid(epsilon, lower, upper, grid_steps)
        n = epsilon.size
        return full(n, laplace_log_q(epsilon, grid_steps)), full(n, offset), full(n, step)

    def apply(self, k, u, out, t, b, p, stream: NoiseStream):  # type: ignore[no-untyped-def]
        log_q, offset, out_step = p
        np.log(u[1], out=out)
        np.divide(out, log_q, out=out)
        np.floor(out, out=out)
        np.log(u[2], out=t)
        np.divide(t, log_q, out=t)
        np.floor(t, out=t)
        np.subtract(out, t, out=out)
        np.add(k, out, out=out)
        np.multiply(out, out_step, out=out)
        np.add(out, offset, out=out)
        return out

    def output_range(self, epsilon, lower, upper, grid_steps, n_categories=2):  # type: ignore[no-untyped-def]
        return -np.inf, np.inf

    def normalized_error(self, epsilon, grid_steps, n_categories=2, delta=0.0):  # type: ignore[no-untyped-def]
        g = float(grid_steps)
        return laplace_variance_steps(epsilon, grid_steps) / (g * g) + rounding_variance(grid_steps)

    def variance_steps(self, epsilon, grid_steps, k, sigma_steps=None):  # type: ignore[no-untyped-def]
        return np.broadcast_to(laplace_variance_steps(epsilon, grid_steps), np.shape(k))


LAPLACE = Laplace()
