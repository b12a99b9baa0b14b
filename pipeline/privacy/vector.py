"""Releasing a vector of d features: epsilon split, k-of-d sampling, and the compiled plan.

Two ways to spend one release's epsilon on d features:

``split``
    Every feature gets ``eps_i`` with ``sum(eps_i) = eps``; the weights minimize the summed
    worst-case error ``sum_i V_i(eps_i)`` (Lagrangian: ``V_i'(eps_i) = -lambda``, solved by
    bisection on ``lambda`` over a log grid of epsilons). Features of one profile (kind, number of
    categories, override) share one weight.
``sample``
    k features drawn uniformly from the keystream are released with ``eps / k`` each (Wang et al.,
    ICDE 2019); each feature is then reported by a fraction ``k / d`` of devices, so its population
    error is ``(d / k) V_i(eps / k)``.

``auto`` compares ``sum_i V_i(eps_i)`` with ``min_k sum_i (d/k) V_i(eps/k)`` (population-mean
error per device) and takes the lower; :mod:`benchmarks.privacy_bench` checks the choice
empirically. A :class:`ReleasePlan` is compiled once per feature set and cached by the engine.
"""

from __future__ import annotations

import math
import operator
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from pipeline.errors import ConfigError, PrivacyError
from pipeline.features.spec import FeatureSpec
from pipeline.named import NamedValues
from pipeline.privacy import mechanisms as mech
from pipeline.privacy.config import PrivacyConfig, check_spec_bounds
from pipeline.privacy.mechanisms import Mechanism
from pipeline.privacy.noise import NoiseStream

_ORDER = {m: i for i, m in enumerate(mech.MECHANISMS)}
_sum = np.add.reduce
_LITTLE_ENDIAN = sys.byteorder == "little"


@dataclass(frozen=True, slots=True)
class Profile:
    """Features that share an error function: same kind, category count and override."""

    kind: str
    n_categories: int
    override: str | None

    def candidates(self) -> tuple[str, ...]:
        return (self.override,) if self.override else mech.AUTO_CANDIDATES[self.kind]


def _errors(profile: Profile, eps: np.ndarray, grid_steps: int, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """(min error over candidates, index of the best candidate) for each epsilon in ``eps``."""
    table = np.stack(
        [mech.normalized_error(m, eps, grid_steps, profile.n_categories, delta) for m in profile.candidates()]
    )
    return table.min(axis=0), table.argmin(axis=0)


def allocate(
    profiles: Sequence[Profile], counts: Sequence[int], epsilon: float, grid_steps: int, delta: float = 0.0
) -> np.ndarray:
    """Error-minimizing epsilon per profile, ``sum(counts * eps) == epsilon``.

    Parameters
    ----------
    profiles, counts : sequences
        Distinct profiles and how many features have each.
    epsilon : float
        Epsilon of the whole release.
    """
    n = np.asarray(counts, dtype=np.float64)
    if len(profiles) == 1:
        return np.array([epsilon / n[0]])
    grid = epsilon * np.logspace(-6.0, 0.0, 1200)
    table = np.stack([_errors(p, grid, grid_steps, delta)[0] for p in profiles])

    def spend(lam: float) -> np.ndarray:
        return grid[np.argmin(table + lam * grid[None, :], axis=1)]

    lo, hi = 1e-12, 1e12
    for _ in range(200):
        mid = np.sqrt(lo * hi)
        if float(n @ spend(mid)) > epsilon:
            lo = mid
        else:
            hi = mid
    eps = spend(hi)
    return eps * (epsilon / float(n @ eps))


def strategy_errors(
    profiles: Sequence[Profile],
    counts: Sequence[int],
    epsilon: float,
    grid_steps: int,
    delta: float,
    sample_k: int | None,
) -> tuple[float, float, int]:
    """``(split error, best sample error, its k)``: summed population-mean error per device."""
    n = np.asarray(counts, dtype=np.float64)
    d = int(n.sum())
    eps_split = allocate(profiles, counts, epsilon, grid_steps, delta)
    split = float(
        sum(
            c * _errors(p, np.array([e]), grid_steps, delta)[0][0]
            for p, c, e in zip(profiles, n, eps_split, strict=True)
        )
    )
    ks = np.array([sample_k]) if sample_k else np.arange(1, d + 1)
    ks = ks[ks <= d]
    if ks.size == 0:
        raise ConfigError(f"sample_k must be <= the number of features {d}, got {sample_k}")
    sample = np.zeros(ks.size)
    for p, c in zip(profiles, n, strict=True):
        sample += c * (d / ks) * _errors(p, epsilon / ks, grid_steps, delta)[0]
    best = int(np.argmin(sample))
    return split, float(sample[best]), int(ks[best])


class ReleasePlan:
    """Everything about releasing one feature set that does not depend on the data.

    Features are reordered so that each mechanism's features are one contiguous slice; the hot
    path :meth:`apply` then runs a handful of numpy operations per mechanism, with one keystream
    read for the whole vector.
    """

    def __init__(self, feature_set: str, specs: Sequence[FeatureSpec], config: PrivacyConfig) -> None:
        if not specs:
            raise ConfigError(f"feature set {feature_set!r} has no features")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ConfigError(f"feature set {feature_set!r}: duplicate feature names {dup}")
        g = config.grid_steps
        profiles: dict[Profile, list[FeatureSpec]] = {}
        for s in specs:
            check_spec_bounds(s.name, s.lower, s.upper)
            over = config.override_for(s.name)
            if over is not None and over not in mech.KIND_MECHANISMS[s.kind]:
                raise ConfigError(
                    f"feature {s.name!r} of kind {s.kind!r} cannot use mechanism {over!r}; allowed are {mech.KIND_MECHANISMS[s.kind]}"
                )
            k = len(s.categories) if s.kind == "categorical" else 2
            profiles.setdefault(Profile(s.kind, k, over), []).append(s)
        config.check_medical(feature_set, [s.name for s in specs if s.medical])
        plist = list(profiles)
        counts = [len(profiles[p]) for p in plist]
        has_gauss = any(p.override == "gaussian" for p in plist)
        strategy, k_sample = config.strategy, len(specs)
        if has_gauss and strategy == "sample":
            raise ConfigError(
                "strategy 'sample' cannot be combined with the gaussian mechanism (joint L2 calibration); use 'split'"
            )
        split_err, sample_err, best_k = strategy_errors(plist, counts, config.epsilon, g, config.delta, config.sample_k)
        if strategy == "auto":
            strategy = "split" if (has_gauss or split_err <= sample_err) else "sample"
        if strategy == "sample":
            k_sample = best_k
            eps_p = np.full(len(plist), config.epsilon / k_sample)
        else:
            eps_p = allocate(plist, counts, config.epsilon, g, config.delta)
        self.feature_set = feature_set
        self.strategy = strategy
        self.k = k_sample
        self.expected_error = {"split": split_err, "sample": sample_err, "sample_k": best_k}
        self.specs = specs
        self._grid_steps = g

        # one row per feature, then sorted by mechanism
        rows: list[tuple[int, str, FeatureSpec, float]] = []
        for p, e in zip(plist, eps_p, strict=True):
            m = p.override or mech.best_mechanism(p.kind, float(e), g, p.n_categories)
            rows.extend((_ORDER[m], m, s, float(e)) for s in profiles[p])
        rows.sort(key=operator.itemgetter(0))
        d = len(rows)
        self.d = d
        self.names = tuple(r[2].name for r in rows)
        self.getter: Callable[[Mapping[str, float]], Any] = operator.itemgetter(*self.names)
        self.eps = np.array([r[3] for r in rows])
        f = np.zeros(d)
        lo, hi, inv_step, shift, rand, default, n_cat = (f.copy() for _ in range(7))
        for i, (_, _m, s, _e) in enumerate(rows):
            if s.kind == "numeric":
                lo[i], hi[i], inv_step[i], rand[i] = s.lower, s.upper, _inv_step(s.width, g), 1.0
                default[i] = s.lower + s.width / 2.0
                n_cat[i] = 2.0
            else:
                n_cat[i] = len(s.categories) if s.kind == "categorical" else 2
                lo[i], hi[i], inv_step[i], shift[i], default[i] = 0.0, n_cat[i] - 1.0, 1.0, 0.5, 0.0
        self.lo, self.hi, self.inv_step, self.shift, self.rand, self.default = lo, hi, inv_step, shift, rand, default
        upper = np.array([r[2].upper if r[2].kind == "numeric" else 1.0 for r in rows])
        #: (mechanism, feature slice, operands of Mechanism.apply) per mechanism, in plan order.
        self.groups: list[tuple[Mechanism, slice, tuple[np.ndarray, ...]]] = []
        mechs = [r[1] for r in rows]
        start = 0
        offset, out_step = f.copy(), f.copy()
        for m in dict.fromkeys(mechs):
            stop = start + mechs.count(m)
            sl = slice(start, stop)
            impl = mech.get(m)
            params = impl.params(self.eps[sl], g, lo[sl], upper[sl], n_cat[sl], config.delta)
            off, step = impl.output_grid(self.eps[sl], lo[sl], upper[sl], g)
            offset[sl], out_step[sl] = off, step
            self.groups.append((impl, sl, params))
            start = stop
        #: Released value of output index j: ``offset + j * out_step`` (public, per feature).
        self.offset, self.out_step = offset, out_step
        self.epsilon = float(config.epsilon)
        self.delta = float(config.delta) if "gaussian" in mechs else 0.0
        self.feature_mechanisms: Mapping[str, str] = MappingProxyType(dict(zip(self.names, mechs, strict=True)))
        self.feature_epsilon: Mapping[str, float] = MappingProxyType(
            dict(zip(self.names, self.eps.tolist(), strict=True))
        )
        #: sigma (grid steps) of each Gaussian feature, for estimators.
        self.sigma_steps: dict[str, float] = {
            self.names[i]: float(p[0][i - sl.start])
            for impl, sl, p in self.groups
            if impl.name == "gaussian"
            for i in range(sl.start, sl.stop)
        }
        self.mechanism = "+".join(dict.fromkeys(mechs))
        self._names_list = list(self.names)
        self._index = {n: i for i, n in enumerate(self.names)}
        # uniform rows: 0 rounding, then what the hungriest mechanism needs, then sampling
        need = max(impl.uniforms for impl, _, _ in self.groups)
        self._sample_row = 1 + need if strategy == "sample" else None
        self._rows = 1 + need + (strategy == "sample")
        self._docs: dict[str, dict[str, Any]] | None = None
        self._compile_fast_path(specs)

    def _compile_fast_path(self, specs: Sequence[FeatureSpec]) -> None:
        """Precompute what :meth:`apply` needs beyond the parameters: all data-independent."""
        d, n = self.d, self._rows * self.d
        pos = {s.name: i for i, s in enumerate(specs)}
        perm = np.array([pos[name] for name in self.names], dtype=np.intp)
        self._perm = None if np.array_equal(perm, np.arange(d)) else perm
        # steps that are the identity for this plan are skipped (exactly: they would add 0.0 or
        # multiply by 1.0, and the rounding step below normalizes any signed zero)
        self._sub_lo = bool(np.any(self.lo != 0.0))
        self._mul_step = bool(np.any(self.inv_step != 1.0))
        self._add_shift = bool(np.any(self.shift != 0.0))
        self._rand_all = bool(np.all(self.rand == 1.0))
        self._rand_any = bool(np.any(self.rand != 0.0))
        # to_uniform, as full-length operands (faster than broadcasting numpy scalars)
        self._u_shift = np.full(n, 12, dtype="<u8")
        self._u_one = np.full(n, 0x3FF0000000000000, dtype="<u8")
        self._u_half = np.full(n, 1.0 - 2.0**-53)

    def apply(
        self, values: Mapping[str, float] | np.ndarray, stream: NoiseStream
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Privatize ``values``; returns (released values in plan order, sampled indices or None).

        ``values`` is a mapping feature name -> value, or a 1-D array in the order of the specs the
        plan was built from. The work is a fixed sequence of in-place numpy operations on a few
        buffers, then each mechanism's :meth:`~pipeline.privacy.mechanisms.base.Mechanism.apply` on
        its slice; steps that are the identity for this plan (e.g. the category shift when every
        feature is numeric) are skipped, which leaves every result bit-identical.
        """
        d = self.d
        x = self._gather(values)
        np.maximum(x, self.lo, out=x)
        np.minimum(x, self.hi, out=x)
        # NaN survives clipping and poisons the sum (a sum of finite values can at worst reach
        # inf - inf = NaN: a false alarm, and the mask below then finds nothing)
        if math.isnan(_sum(x)):
            np.copyto(x, self.default, where=np.isnan(x))  # the defaults lie inside the bounds
        k = self._to_grid(x)
        # one keystream read: rows of 64-bit words, mapped to uniforms in place
        n = self._rows * d
        buf = np.empty(n, dtype="<u8")
        stream.fill(buf)
        if not _LITTLE_ENDIAN:  # the in-place bit tricks below need native words
            buf = buf.astype(np.uint64)
        sel = None
        if self._sample_row is not None:
            r = self._sample_row
            sel = _smallest(buf[r * d : (r + 1) * d], self.k)
        np.right_shift(buf, self._u_shift, out=buf)
        np.bitwise_or(buf, self._u_one, out=buf)
        flat = buf.view(np.float64)
        np.subtract(flat, self._u_half, out=flat)  # == noise.to_uniform(raw words)
        u = flat.reshape(self._rows, d)
        # unbiased randomized rounding: k += [u0 < frac(z)] (numeric features only)
        up = np.less(u[0], x)
        if self._rand_all:
            np.add(k, up, out=k)
        elif self._rand_any:
            np.multiply(up, self.rand, out=x)
            np.add(k, x, out=k)
        out = np.empty(d)
        if len(self.groups) == 1:
            impl, _, p = self.groups[0]
            return impl.apply(k, u, out, x, up, p, stream), sel
        for impl, sl, p in self.groups:
            part = out[sl]
            res = impl.apply(k[sl], u[:, sl], part, x[sl], up[sl], p, stream)
            if res is not part:
                part[...] = res
        return out, sel

    def _to_grid(self, x: np.ndarray) -> np.ndarray:
        """Grid index ``floor(z)`` of clipped values ``x``, with ``x`` overwritten by ``frac(z)``:
        z = (x - lo) G / width (+ 1/2 for categories); z <= G (see _inv_step). Rows broadcast."""
        if self._sub_lo:
            np.subtract(x, self.lo, out=x)
        if self._mul_step:
            np.multiply(x, self.inv_step, out=x)
        if self._add_shift:
            np.add(x, self.shift, out=x)
        k = np.floor(x)
        np.subtract(x, k, out=x)
        return k

    def apply_many(self, values: np.ndarray, streams: Sequence[NoiseStream]) -> tuple[np.ndarray, np.ndarray | None]:
        """Privatize many devices' vectors at once: row ``i`` of ``values`` (shape ``(n, d)``,
        spec order) with ``streams[i]``, bit-identical to ``apply(values[i], streams[i])``.

        Returns the released values, shape ``(n, d)`` in plan order, and the sampled indices,
        shape ``(n, k)``, or None. The same operations as :meth:`apply` on a devices x features
        matrix (parameters broadcast over the rows); for simulations of large cohorts
        (:mod:`pipeline.evaluation`). Not for the Gaussian mechanism, whose rejection rounds read
        each device's stream further.
        """
        n = len(streams)
        buf = np.empty((n, self.words), dtype="<u8")
        for i, stream in enumerate(streams):
            stream.fill(buf[i])
        if not _LITTLE_ENDIAN:
            buf = buf.astype(np.uint64)
        return self.apply_words(values, buf, streams[0] if streams else None)

    @property
    def words(self) -> int:
        """64-bit keystream words one report reads (all mechanisms but the Gaussian)."""
        return self._rows * self.d

    def apply_words(self, values: np.ndarray, buf: np.ndarray,
                    stream: NoiseStream | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`apply_many` with the keystream words given: row ``i`` of ``buf`` (shape
        ``(n, words)``, native uint64) is what device ``i``'s stream would supply. The engine's
        path is :meth:`apply_many` (words from each report's noise identity); a simulation that
        only measures utility may pass words from a seeded generator instead
        (:meth:`pipeline.evaluation.Simulator.day_estimates_fast`): the same mechanism code on
        independent uniform words. ``buf`` is overwritten."""
        n, d = len(buf), self.d
        if values.shape != (n, d) or buf.shape != (n, self.words):
            raise PrivacyError(f"{self.feature_set!r}: privatizing {n} reports at once needs values of shape ({n}, {d}) and words of shape "
                               f"({n}, {self.words}), got {values.shape} and {buf.shape}")
        if any(impl.name == "gaussian" for impl, _, _ in self.groups):
            raise PrivacyError(f"{self.feature_set!r}: apply_many and apply_words do not support the gaussian mechanism")
        x = np.array(values if self._perm is None else values[:, self._perm], dtype=np.float64)
        np.maximum(x, self.lo, out=x)
        np.minimum(x, self.hi, out=x)
        np.copyto(x, np.broadcast_to(self.default, x.shape), where=np.isnan(x))
        k = self._to_grid(x)
        sel = None
        if self._sample_row is not None:
            r = self._sample_row
            sel = _smallest_rows(buf[:, r * d : (r + 1) * d], self.k)
        buf = (buf >> np.uint64(12)) | np.uint64(0x3FF0000000000000)
        flat = buf.view(np.float64)
        np.subtract(flat, 1.0 - 2.0**-53, out=flat)
        u = flat.reshape(n, self._rows, d).transpose(1, 0, 2)  # rows x devices x features
        up = np.less(u[0], x)
        np.add(k, up * self.rand, out=k)
        out = np.empty((n, d))
        for impl, sl, p in self.groups:
            part = out[:, sl]
            res = impl.apply(k[:, sl], u[:, :, sl], part, x[:, sl], up[:, sl], p, stream)  # type: ignore[arg-type]
            if res is not part:
                part[...] = res
        return out, sel

    def _gather(self, values: Mapping[str, float] | np.ndarray) -> np.ndarray:
        """A fresh float64 copy of ``values`` in plan order."""
        d = self.d
        if isinstance(values, np.ndarray):
            if values.shape != (d,):
                raise PrivacyError(
                    f"{self.feature_set!r}: a value array must have shape ({d},) in spec order, got {values.shape}"
                )
            if self._perm is None:
                return np.array(values, dtype=np.float64)
            return np.asarray(values, dtype=np.float64)[self._perm]
        if isinstance(values, dict) and list(values) == self._names_list:
            return np.fromiter(values.values(), dtype=np.float64, count=d)
        return np.array(self.getter(values) if d > 1 else (values[self.names[0]],), dtype=np.float64)

    @property
    def grid_steps(self) -> int:
        return self._grid_steps

    def describe(self, names: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The public description of how each of ``names`` is noised: mechanism, epsilon, and the
        bounds and grid (numeric) or the categories (binary, categorical). What an estimator
        needs; nothing about the data."""
        docs = self._docs
        if docs is None:
            docs = self._docs = {}
            by_name = {s.name: s for s in self.specs}
            for name in self.names:
                s = by_name[name]
                doc: dict[str, Any] = {"mechanism": self.feature_mechanisms[name], "epsilon": self.feature_epsilon[name]}
                if s.kind == "numeric":
                    doc.update(lower=s.lower, upper=s.upper, grid_steps=self._grid_steps, unit=s.unit)
                    if name in self.sigma_steps:
                        doc["sigma_steps"] = self.sigma_steps[name]
                else:
                    doc["categories"] = list(s.categories) if s.kind == "categorical" else ["0", "1"]
                docs[name] = doc
        return {n: docs[n] for n in names}

    def values(self, out: np.ndarray, sel: np.ndarray | None) -> ReleasedValues:
        """Released values keyed by feature name (only the sampled ones under ``sample``)."""
        if sel is None:
            return ReleasedValues(self.names, self._index, out)
        all_names = self.names
        names = tuple([all_names[i] for i in sel.tolist()])
        return ReleasedValues(names, {n: i for i, n in enumerate(names)}, out[sel])


def _inv_step(width: float, grid_steps: int) -> float:
    """``G / width``, rounded down until ``width * inv_step <= G`` in float64.

    ``(x - lower) * inv_step`` is monotone in ``x`` and ``x - lower <= width`` after clipping, so
    the grid index never exceeds ``G`` (with ``G`` not a power of two, ``width * (G / width)``
    can round to just above ``G`` and ``x = upper`` could reach index ``G + 1``).
    """
    inv = grid_steps / width
    while width * inv > grid_steps:
        inv = math.nextafter(inv, 0.0)
    return inv


def _smallest(row: np.ndarray, k: int) -> np.ndarray:
    """Sorted positions of the ``k`` smallest words of ``row`` (the sampled features).

    Same result as ``np.sort(np.argpartition(row, k - 1)[:k])``; for ``k = 1`` by ``argmin``,
    which is several times faster, unless the minimum is tied (then argpartition decides, as before).
    """
    d = row.size
    if k >= d:
        return np.arange(d)
    if k == 1:
        i = int(row.argmin())
        if np.count_nonzero(row == row[i]) == 1:
            return np.array([i])
    return np.sort(np.argpartition(row, k - 1)[:k])


def _smallest_rows(rows: np.ndarray, k: int) -> np.ndarray:
    """:func:`_smallest` of every row of ``rows`` (shape ``(n, k)``), with ``k = 1`` vectorized."""
    if k != 1 or rows.shape[1] <= 1:
        return np.stack([_smallest(row, k) for row in rows]).reshape(rows.shape[0], -1)
    idx = rows.argmin(axis=1)
    tied = np.count_nonzero(rows == rows[np.arange(rows.shape[0]), idx][:, None], axis=1) > 1
    out = idx[:, None]
    for i in np.flatnonzero(tied):  # a tied minimum: argpartition decides, as in _smallest
        out[i] = _smallest(rows[i], k)
    return out


#: The privatized values of a release (see :class:`pipeline.named.NamedValues`).
ReleasedValues = NamedValues
