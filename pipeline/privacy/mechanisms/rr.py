"""(Generalized) randomized response for binary and categorical features.

Keep the true category ``k`` with probability ``p = e^eps / (e^eps + K - 1)``, else report one of
the ``K - 1`` others uniformly (``q = 1 / (e^eps + K - 1)`` each): ``p / q = e^eps``. The release is
the reported category index; :func:`~pipeline.privacy.estimators.estimate_frequency` debiases
counts (Wang et al., USENIX Security 2017). ``rr`` is the same randomizer for ``K = 2``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.privacy.mechanisms.base import Mechanism, Params, full
from pipeline.privacy.noise import NoiseStream


def grr_probs(epsilon: Any, n_categories: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(p, q)``: probability of reporting the true category, and each other one."""
    e = np.exp(np.asarray(epsilon, dtype=np.float64))
    denom = e + np.asarray(n_categories, dtype=np.float64) - 1.0
    return e / denom, 1.0 / denom


def grr_frequency_variance(epsilon: Any, n_categories: Any, frequency: Any) -> np.ndarray:
    """Per-report variance of the debiased frequency of a category of true frequency ``f``.

    ``(f p (1 - p) + (1 - f) q (1 - q)) / (p - q)^2`` for a fixed population in which a fraction
    ``f`` holds the category (Wang et al., USENIX Security 2017).
    """
    p, q = grr_probs(epsilon, n_categories)
    f = np.asarray(frequency)
    return (f * p * (1.0 - p) + (1.0 - f) * q * (1.0 - q)) / (p - q) ** 2


class RandomizedResponse(Mechanism):
    kinds: tuple[str, ...] = ("binary", "categorical")
    uniforms = 2

    def __init__(self, name: str, kinds: tuple[str, ...]) -> None:
        self.name = name
        self.kinds = kinds

    def params(self, epsilon, grid_steps, lower, upper, n_categories, delta) -> Params:  # type: ignore[no-untyped-def]
        n = epsilon.size
        kc = full(n, n_categories)
        return kc, kc - 1.0, kc - 2.0, full(n, grr_probs(epsilon, kc)[0])

    def apply(self, k, u, out, t, b, p, stream: NoiseStream):  # type: ignore[no-untyped-def]
        _, others, last_other, p_keep = p
        np.multiply(u[2], others, out=t)  # a uniform other category: floor(u2 (K - 1)), skipping k
        np.floor(t, out=t)
        np.minimum(t, last_other, out=t)
        np.greater_equal(t, k, out=b)
        np.add(t, b, out=t)
        np.less(u[1], p_keep, out=b)
        np.copyto(t, k, where=b)
        out[...] = t
        return out

    def output_grid(self, epsilon, lower, upper, grid_steps):  # type: ignore[no-untyped-def]
        return 0.0, 1.0

    def output_range(self, epsilon, lower, upper, grid_steps, n_categories=2):  # type: ignore[no-untyped-def]
        return 0.0, float(n_categories - 1)

    def normalized_error(self, epsilon, grid_steps, n_categories=2, delta=0.0):  # type: ignore[no-untyped-def]
        return grr_frequency_variance(epsilon, n_categories, 1.0 / n_categories)


RR = RandomizedResponse("rr", ("binary",))
GRR = RandomizedResponse("grr", ("binary", "categorical"))
