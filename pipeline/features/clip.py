"""How often a feature's values fall outside its public bounds (the clip rate).

The privacy engine clips every value into ``[lower, upper]`` before adding noise; a value outside
is biased toward the bound, silently. :class:`ClipCounter` counts, per feature, the windows where
the feature was defined (finite) and how many of those lay below or above its bounds, so that
bounds can be checked on real recordings (``biopriv features FILE --clip-report``, the table in
docs/features.md and the validation tests). The bounds are never changed from what is counted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pipeline.features.spec import FeatureSpec

__all__ = ["ClipCounter", "ClipRate", "format_clip_report"]


@dataclass(frozen=True)
class ClipRate:
    """Clip counts of one feature over a recording.

    Attributes
    ----------
    name, unit : str
        The feature and its unit.
    lower, upper : float
        Its public bounds.
    windows : int
        Windows seen.
    defined : int
        Windows where the value was finite (the feature applies).
    below, above : int
        Finite values below ``lower`` / above ``upper``.
    """

    name: str
    unit: str
    lower: float
    upper: float
    windows: int
    defined: int
    below: int
    above: int

    @property
    def rate(self) -> float:
        """Fraction of the defined windows clipped (NaN when the feature was never defined)."""
        return (self.below + self.above) / self.defined if self.defined else math.nan


class ClipCounter:
    """Accumulates clip counts per feature, window by window."""

    def __init__(self) -> None:
        self._specs: dict[str, FeatureSpec] = {}
        self._counts: dict[str, list[int]] = {}  # name -> [windows, defined, below, above]

    def add(self, specs: Iterable[FeatureSpec], values: Mapping[str, float]) -> None:
        """Count one window's ``values`` against ``specs`` (features missing from ``values`` count as undefined)."""
        for spec in specs:
            c = self._counts.get(spec.name)
            if c is None:
                self._specs[spec.name] = spec
                c = self._counts[spec.name] = [0, 0, 0, 0]
            c[0] += 1
            v = values.get(spec.name, math.nan)
            if v is None or not math.isfinite(v):
                continue
            c[1] += 1
            if v < spec.lower:
                c[2] += 1
            elif v > spec.upper:
                c[3] += 1

    def by_family(self) -> list[tuple[ClipRate, float]]:
        """Per-channel features pooled by family (``alpha_abs.Fz`` -> ``alpha_abs``), in order first
        seen, each with the highest clip rate of one of its channels (NaN when never defined)."""
        pooled: dict[str, list[ClipRate]] = {}
        for r in self.rates():
            pooled.setdefault(r.name.split(".", 1)[0], []).append(r)
        out = []
        for fam, rs in pooled.items():
            first = rs[0]
            total = ClipRate(fam, first.unit, first.lower, first.upper, sum(r.windows for r in rs),
                             sum(r.defined for r in rs), sum(r.below for r in rs), sum(r.above for r in rs))
            worst = max((r.rate for r in rs if r.defined), default=math.nan)
            out.append((total, worst))
        return out

    def rates(self) -> list[ClipRate]:
        """One :class:`ClipRate` per feature, in the order first seen."""
        out = []
        for name, (windows, defined, below, above) in self._counts.items():
            s = self._specs[name]
            out.append(ClipRate(name, s.unit, s.lower, s.upper, windows, defined, below, above))
        return out


def format_clip_report(rates: Iterable[ClipRate], title: str = "") -> str:
    """Text table: feature, bounds, windows defined, % below, % above, % clipped."""
    lines = [title] if title else []
    lines.append(f"  {'feature':<28} {'bounds':>24} {'defined':>9} {'below %':>8} {'above %':>8} {'clipped %':>9}")
    for r in rates:
        bounds = f"[{r.lower:g}, {r.upper:g}] {r.unit}"
        if r.defined:
            pct = (100.0 * r.below / r.defined, 100.0 * r.above / r.defined, 100.0 * r.rate)
            tail = f"{pct[0]:8.1f} {pct[1]:8.1f} {pct[2]:9.1f}"
        else:
            tail = f"{'-':>8} {'-':>8} {'-':>9}"
        lines.append(f"  {r.name:<28} {bounds:>24} {r.defined:>4}/{r.windows:<4} {tail}")
    return "\n".join(lines)
