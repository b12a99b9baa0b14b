"""What every local randomizer provides, and the one rule they share: integer grid in, fixed grid out.

A numeric feature is clipped to its public bounds ``[lower, upper]`` and mapped to an integer grid
index ``k`` in ``{0, ..., G}`` by unbiased randomized rounding (:class:`~pipeline.privacy.vector.ReleasePlan`);
a binary or categorical feature is its category index ``k``. A :class:`Mechanism` maps ``k`` and a
few uniforms to a released value ``offset + j * out_step`` on a grid fixed by (mechanism, epsilon,
bounds), never by the input (Mironov 2012).

Each mechanism has exactly one implementation of its randomizer, :meth:`Mechanism.apply`: a fixed
sequence of in-place numpy operations over a slice of features, the code the worker runs. The
audit (:mod:`pipeline.privacy.audit`) samples and enumerates that same method.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.privacy.noise import NoiseStream

#: Operands of :meth:`Mechanism.apply`, each a float64 array with one entry per feature of the slice.
Params = tuple[np.ndarray, ...]


class Mechanism:
    """A local randomizer on the declared grid (subclasses: one module per mechanism).

    Attributes
    ----------
    name : str
        Registry name (``"laplace"``, ``"piecewise"``...).
    kinds : tuple of str
        Feature kinds it accepts (``numeric``, ``binary``, ``categorical``).
    uniforms : int
        Uniforms per feature it reads, from row 1 of the plan's uniform block (row 0 is rounding).
    """

    name: str = ""
    kinds: tuple[str, ...] = ()
    uniforms: int = 1

    def params(
        self,
        epsilon: np.ndarray,
        grid_steps: int,
        lower: np.ndarray,
        upper: np.ndarray,
        n_categories: np.ndarray,
        delta: float,
    ) -> Params:
        """The operands :meth:`apply` needs, one entry per feature (everything data-independent).

        ``epsilon`` is the per-feature epsilon; for the joint Gaussian it is the slice's share.
        """
        raise NotImplementedError

    def apply(
        self, k: np.ndarray, u: np.ndarray, out: np.ndarray, t: np.ndarray, b: np.ndarray, p: Params, stream: NoiseStream
    ) -> np.ndarray:
        """Released values for grid indices ``k`` and uniform rows ``u`` (``u[0]`` is rounding's).

        ``out`` receives the result (returned; Duchi returns a new array); ``k``, ``t`` (float) and
        ``b`` (bool) are scratch and are clobbered. ``stream`` supplies further uniforms to
        mechanisms that may need more than :attr:`uniforms` (the Gaussian's rejection rounds).
        """
        raise NotImplementedError

    def output_grid(self, epsilon: Any, lower: Any, upper: Any, grid_steps: int) -> tuple[Any, Any]:
        """``(offset, out_step)``: a release is ``offset + j * out_step`` (numbers or arrays)."""
        step = (np.asarray(upper, dtype=np.float64) - lower) / grid_steps
        return lower, step

    def output_range(self, epsilon: float, lower: float, upper: float, grid_steps: int, n_categories: int = 2) -> tuple[float, float]:
        """Smallest and largest value the mechanism can release (+-inf for additive noise)."""
        raise NotImplementedError

    def normalized_error(self, epsilon: np.ndarray, grid_steps: int, n_categories: int = 2, delta: float = 0.0) -> np.ndarray:
        """Worst-case variance of one report, in units of ``width^2`` (numeric) or of a frequency.

        Includes grid rounding (``1 / (4 G^2)``) for numeric mechanisms; used to choose mechanisms
        and to split epsilon.
        """
        raise NotImplementedError

    def variance_steps(self, epsilon: Any, grid_steps: int, k: Any, sigma_steps: float | None = None) -> np.ndarray:
        """Variance (steps^2) of one debiased numeric release for grid index ``k``."""
        raise NotImplementedError(f"{self.name} releases categories, not numbers")

    def __repr__(self) -> str:
        return f"<mechanism {self.name}>"


def full(n: int, value: Any) -> np.ndarray:
    """``value`` broadcast to ``n`` float64 entries (a fresh array)."""
    return np.array(np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)))


def rounding_variance(grid_steps: int) -> float:
    """Worst-case variance of unbiased randomized rounding, in units of ``width^2``."""
    g = float(grid_steps)
    return 0.25 / (g * g)
