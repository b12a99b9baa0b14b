"""Discrete Gaussian: ``j = k + Z``, ``P(Z = z) ∝ exp(-z^2 / (2 sigma^2))``, rho-zCDP.

The features released with it in one release are calibrated jointly: L2 sensitivity ``G sqrt(n)``
for ``n`` features, ``rho = G^2 n / (2 sigma^2)`` (Canonne, Kamath, Steinke 2020), and
``rho + 2 sqrt(rho ln(1/delta)) = eps`` (Bun and Steinke 2016) gives (eps, delta)-DP. The sampler is
rejection from a discrete Laplace (:func:`pipeline.privacy.noise.discrete_gaussian`); its
acceptance test is evaluated in float64, so each probability is exact to a relative error of
order ``2^-50`` (``docs/privacy.md`` states the slack).
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.privacy.mechanisms.base import Mechanism, Params, full, rounding_variance
from pipeline.privacy.noise import NoiseStream, discrete_gaussian


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


class Gaussian(Mechanism):
    name = "gaussian"
    kinds = ("numeric",)
    uniforms = 3

    def params(self, epsilon, grid_steps, lower, upper, n_categories, delta) -> Params:  # type: ignore[no-untyped-def]
        n = epsilon.size
        sigma = gaussian_sigma_steps(float(epsilon.sum()), delta, grid_steps, n)
        offset, step = self.output_grid(epsilon, lower, upper, grid_steps)
        return full(n, sigma), full(n, offset), full(n, step)

    def apply(self, k, u, out, t, b, p, stream: NoiseStream):  # type: ignore[no-untyped-def]
        sigma, offset, out_step = p
        np.add(k, discrete_gaussian(sigma, u[1:4], stream), out=out)
        np.multiply(out, out_step, out=out)
        np.add(out, offset, out=out)
        return out

    def output_range(self, epsilon, lower, upper, grid_steps, n_categories=2):  # type: ignore[no-untyped-def]
        return -np.inf, np.inf

    def normalized_error(self, epsilon, grid_steps, n_categories=2, delta=0.0):  # type: ignore[no-untyped-def]
        eps = np.asarray(epsilon, dtype=np.float64)
        rho = np.array([gaussian_rho(float(e), delta) for e in np.atleast_1d(eps)]).reshape(eps.shape)
        return 1.0 / (2.0 * rho) + rounding_variance(grid_steps)

    def variance_steps(self, epsilon, grid_steps, k, sigma_steps=None):  # type: ignore[no-untyped-def]
        if sigma_steps is None:
            from pipeline.errors import PrivacyError

            raise PrivacyError("the gaussian variance needs sigma_steps (ReleasePlan.sigma_steps)")
        return np.broadcast_to(float(sigma_steps) ** 2, np.shape(k))


GAUSSIAN = Gaussian()


