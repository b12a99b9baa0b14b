"""Reference randomizers, written plainly (not in place), for tests only.

The worker runs one implementation per mechanism (:mod:`pipeline.privacy.mechanisms`), fused and
in place. These are the same mathematical operations in their textbook form; tests compare the two
bit for bit, so a change of the optimized code that alters a released bit is caught.
"""

from __future__ import annotations

import numpy as np

from pipeline.privacy.noise import discrete_laplace


def laplace_kernel(k: np.ndarray, u1: np.ndarray, u2: np.ndarray, log_q) -> np.ndarray:
    """``j = k + Z``, ``Z`` discrete Laplace with ``ln q = log_q``."""
    return k + discrete_laplace(u1, u2, log_q)


def piecewise_kernel(k: np.ndarray, u1: np.ndarray, u2: np.ndarray, grid_steps: int, h, p_high) -> np.ndarray:
    """Discrete Piecewise: uniform on ``{k..k+h-1}`` w.p. ``p_high``, else uniform on the other ``G``."""
    j_in = k + np.minimum(np.floor(u2 * h), h - 1.0)
    j_out = np.minimum(np.floor(u2 * grid_steps), grid_steps - 1.0)
    j_out += h * (j_out >= k)
    return np.where(u1 < p_high, j_in, j_out)


def duchi_kernel(k: np.ndarray, u1: np.ndarray, grid_steps: int, slope) -> np.ndarray:
    """``j = 1`` with probability ``1/2 + (k/G - 1/2) slope``, else 0."""
    return (u1 < 0.5 + (k / grid_steps - 0.5) * slope).astype(np.float64)


def grr_kernel(k: np.ndarray, u1: np.ndarray, u2: np.ndarray, n_categories, p_keep) -> np.ndarray:
    """Generalized randomized response: keep ``k`` w.p. ``p_keep``, else a uniform other category."""
    other = np.minimum(np.floor(u2 * (n_categories - 1)), n_categories - 2.0)
    other += other >= k
    return np.where(u1 < p_keep, k, other)
