"""Duchi et al.'s mechanism for one bounded value: two outputs, ``mid -/+ (width / 2) B``.

``j = 1`` with probability ``1/2 + (k/G - 1/2) t``, ``t = tanh(eps / 2) = (e^eps - 1)/(e^eps + 1)``,
so the ratio of any output's probability between two inputs is at most ``(1 + t)/(1 - t) = e^eps``.
The release ``lower + width/2 - (width/2) B + j width B``, ``B = 1/t``, is unbiased.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.privacy.mechanisms.base import Mechanism, Params, full, rounding_variance
from pipeline.privacy.noise import NoiseStream


def duchi_slope(epsilon: Any) -> np.ndarray:
    """``(e^eps - 1) / (e^eps + 1) = 1 / B``: how strongly P(+) follows the input."""
    return np.tanh(np.asarray(epsilon, dtype=np.float64) / 2.0)


def duchi_variance_steps(epsilon: Any, grid_steps: int, k: Any) -> np.ndarray:
    """Variance (steps^2) of Duchi's output for grid index ``k``: ``(G/2)^2 (B^2 - t^2)``."""
    b = 1.0 / duchi_slope(epsilon)
    t = 2.0 * np.asarray(k, dtype=np.float64) / grid_steps - 1.0
    return (grid_steps / 2.0) ** 2 * (b * b - t * t)


class Duchi(Mechanism):
    name = "duchi"
    kinds = ("numeric",)
    uniforms = 1

    def params(self, epsilon, grid_steps, lower, upper, n_categories, delta) -> Params:  # type: ignore[no-untyped-def]
        n = epsilon.size
        offset, out_step = self.output_grid(epsilon, lower, upper, grid_steps)
        offset, out_step = full(n, offset), full(n, out_step)
        # the two released values, offset + j out_step for j in {0, 1}
        return full(n, float(grid_steps)), full(n, 0.5), full(n, duchi_slope(epsilon)), offset + 1.0 * out_step, offset + 0.0 * out_step

    def apply(self, k, u, out, t, b, p, stream: NoiseStream):  # type: ignore[no-untyped-def]
        g, half, slope, high, low = p
        np.divide(k, g, out=t)
        np.subtract(t, half, out=t)
        np.multiply(t, slope, out=t)
        np.add(half, t, out=t)
        np.less(u[1], t, out=b)
        return np.where(b, high, low)

    def output_grid(self, epsilon, lower, upper, grid_steps):  # type: ignore[no-untyped-def]
        b = 1.0 / duchi_slope(epsilon)
        half = (np.asarray(upper, dtype=np.float64) - lower) / 2.0
        offset, out_step = lower + half - half * b, 2.0 * half * b
        if np.ndim(offset) == 0:
            return float(offset), float(out_step)
        return offset, out_step

    def output_range(self, epsilon, lower, upper, grid_steps, n_categories=2):  # type: ignore[no-untyped-def]
        offset, out_step = self.output_grid(epsilon, lower, upper, grid_steps)
        return offset, offset + out_step

    def normalized_error(self, epsilon, grid_steps, n_categories=2, delta=0.0):  # type: ignore[no-untyped-def]
        g = float(grid_steps)
        return duchi_variance_steps(epsilon, grid_steps, g / 2.0) / (g * g) + rounding_variance(grid_steps)

    def variance_steps(self, epsilon, grid_steps, k, sigma_steps=None):  # type: ignore[no-untyped-def]
        return duchi_variance_steps(epsilon, grid_steps, k)


DUCHI = Duchi()
