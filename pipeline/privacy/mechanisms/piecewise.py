"""Discrete Piecewise Mechanism (after Wang et al., ICDE 2019).

Outputs ``j`` in ``{0, ..., G + h - 1}`` with ``h = max(1, round(G e^(-eps/2)))``: the ``h`` indices
``{k, ..., k + h - 1}`` each have probability ``p_h = e^eps / (h e^eps + G)``, the ``G`` others
``p_l = 1 / (h e^eps + G)``. Any output's probability ratio between two inputs is at most
``p_h / p_l = e^eps``, and ``E[j - (G + h - 1)/2] = c (k - G/2)`` with ``c = (p_h - p_l) h``, so the
affine map of :meth:`Piecewise.output_grid` is unbiased.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.privacy.mechanisms.base import Mechanism, Params, full, rounding_variance
from pipeline.privacy.noise import NoiseStream


def piecewise_params(epsilon: Any, grid_steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(h, p_high, c)``: band width, probability of the band, and the output's slope ``c``."""
    eps = np.asarray(epsilon, dtype=np.float64)
    g = float(grid_steps)
    h = np.maximum(1.0, np.rint(g * np.exp(-eps / 2.0)))
    e = np.exp(eps)
    p_l = 1.0 / (h * e + g)
    p_high = h * e * p_l
    c = (e - 1.0) * p_l * h
    return h, p_high, c


def piecewise_variance_steps(epsilon: Any, grid_steps: int, k: Any) -> np.ndarray:
    """Exact variance (steps^2) of the debiased Piecewise output for grid index ``k``."""
    g = float(grid_steps)
    h, _, c = piecewise_params(epsilon, grid_steps)
    e = np.exp(np.asarray(epsilon, dtype=np.float64))
    p_l = 1.0 / (h * e + g)
    m = g + h
    mu = np.asarray(k, dtype=np.float64) - g / 2.0
    second = p_l * m * (m * m - 1.0) / 12.0 + (e - 1.0) * p_l * (h * mu * mu + h * (h * h - 1.0) / 12.0)
    return (second - (c * mu) ** 2) / (c * c)


class Piecewise(Mechanism):
    name = "piecewise"
    kinds = ("numeric",)
    uniforms = 2

    def params(self, epsilon, grid_steps, lower, upper, n_categories, delta) -> Params:  # type: ignore[no-untyped-def]
        n = epsilon.size
        h, p_high, _ = piecewise_params(epsilon, grid_steps)
        offset, step = self.output_grid(epsilon, lower, upper, grid_steps)
        return full(n, h), full(n, float(grid_steps)), full(n, p_high), full(n, offset), full(n, step)

    def apply(self, k, u, out, t, b, p, stream: NoiseStream):  # type: ignore[no-untyped-def]
        # Uniform on {k..k+h-1} with probability p_high (u[1] < p_high), else uniform on the G other
        # indices: j_out = floor(u2 G) + h [floor(u2 G) >= k]. With u <= 1 - 2^-53, fl((1 - 2^-53) c)
        # < c for any float c > 0, so floor(u c) <= c - 1 for integer c: no clamp is needed.
        h, g, p_high, offset, out_step = p
        u2 = u[2]
        np.multiply(u2, h, out=t)  # j_in = k + floor(u2 h)
        np.floor(t, out=t)
        np.add(k, t, out=t)
        np.multiply(u2, g, out=out)  # j_out
        np.floor(out, out=out)
        np.greater_equal(out, k, out=b)
        np.multiply(h, b, out=k)
        np.add(out, k, out=out)
        np.less(u[1], p_high, out=b)
        np.copyto(out, t, where=b)
        np.multiply(out, out_step, out=out)
        np.add(out, offset, out=out)
        return out

    def output_grid(self, epsilon, lower, upper, grid_steps):  # type: ignore[no-untyped-def]
        step = (np.asarray(upper, dtype=np.float64) - lower) / grid_steps
        h, _, c = piecewise_params(epsilon, grid_steps)
        m = grid_steps + h
        offset = lower + step * (grid_steps / 2.0 - (m - 1.0) / (2.0 * c))
        out_step = step / c
        if np.ndim(offset) == 0:
            return float(offset), float(out_step)
        return offset, out_step

    def output_range(self, epsilon, lower, upper, grid_steps, n_categories=2):  # type: ignore[no-untyped-def]
        offset, out_step = self.output_grid(epsilon, lower, upper, grid_steps)
        h, _, _ = piecewise_params(epsilon, grid_steps)
        return offset, offset + (grid_steps + float(h) - 1.0) * out_step

    def normalized_error(self, epsilon, grid_steps, n_categories=2, delta=0.0):  # type: ignore[no-untyped-def]
        g = float(grid_steps)
        return piecewise_variance_steps(epsilon, grid_steps, 0.0) / (g * g) + rounding_variance(grid_steps)

    def variance_steps(self, epsilon, grid_steps, k, sigma_steps=None):  # type: ignore[no-untyped-def]
        return piecewise_variance_steps(epsilon, grid_steps, k)


PIECEWISE = Piecewise()
