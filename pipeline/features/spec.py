"""What a feature declares about itself: name, unit, kind and public clipping bounds.

The privacy engine needs bounds that are public constants (chosen from physiology or from the
signal's physics), never derived from the data being privatized: it clips each value into
``[lower, upper]`` and calibrates its noise to that range.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.errors import ConfigError


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """Declaration of one released feature.

    Attributes
    ----------
    name : str
        Unique within its feature set, e.g. ``"alpha_rel.Fz"`` or ``"hr"``.
    unit : str
        Physical unit (``"bpm"``, ``"ms"``, ``"uV^2/Hz"``, ``"dBFS"``, ``"1"`` for ratios...).
    lower, upper : float
        Public clipping bounds, ``lower < upper``, in ``unit``.
    kind : str
        ``"numeric"`` (bounded real), ``"binary"`` (0 or 1) or ``"categorical"`` (an index into
        ``categories``).
    categories : tuple of str
        Category labels of a categorical feature (empty otherwise).
    medical : bool
        True when the value is health data in the clinical sense (heart rate, HRV...): the
        configuration warns above epsilon 1 for such features.
    """

    name: str
    unit: str
    lower: float
    upper: float
    kind: str = "numeric"
    categories: tuple[str, ...] = field(default=())
    medical: bool = False

    def __post_init__(self) -> None:
        if not self.lower < self.upper:
            raise ConfigError(f"feature {self.name!r}: bounds must satisfy lower < upper, got [{self.lower}, {self.upper}]")
        if self.kind not in ("numeric", "binary", "categorical"):
            raise ConfigError(f"feature {self.name!r}: kind must be numeric, binary or categorical, got {self.kind!r}")
        if self.kind == "categorical" and len(self.categories) < 2:
            raise ConfigError(f"feature {self.name!r}: a categorical feature needs at least 2 categories")

    @property
    def width(self) -> float:
        """``upper - lower``: the sensitivity of one clipped value."""
        return self.upper - self.lower
