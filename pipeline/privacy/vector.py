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

import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from pipeline.errors import ConfigError
from pipeline.features.spec import FeatureSpec
from pipeline.privacy import mechanisms as mech
from pipeline.privacy.config import PrivacyConfig, check_spec_bounds
from pipeline.privacy.noise import NoiseStream, discrete_gaussian, to_uniform

_ORDER = {m: i for i, m in enumerate(mech.MECHANISMS)}


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
        self._names_arr = np.array(self.names, dtype=object)
        self.getter: Callable[[Mapping[str, float]], Any] = operator.itemgetter(*self.names)
        self.eps = np.array([r[3] for r in rows])
        f = np.zeros(d)
        lo, hi, inv_step, shift, rand, default = (f.copy() for _ in range(6))
        offset, out_step = f.copy(), f.copy()
        for i, (_, m, s, e) in enumerate(rows):
            if s.kind == "numeric":
                lo[i], hi[i], inv_step[i], rand[i] = s.lower, s.upper, g / s.width, 1.0
                default[i] = s.lower + s.width / 2.0
                offset[i], out_step[i] = mech.output_grid(m, e, s.lower, s.upper, g)
            else:
                n_cat = len(s.categories) if s.kind == "categorical" else 2
                lo[i], hi[i], inv_step[i], shift[i], default[i] = 0.0, n_cat - 1.0, 1.0, 0.5, 0.0
                offset[i], out_step[i] = 0.0, 1.0
        self.lo, self.hi, self.inv_step, self.shift, self.rand, self.default = lo, hi, inv_step, shift, rand, default
        self.offset, self.out_step = offset, out_step
        self.groups: list[tuple[str, slice, dict[str, Any]]] = []
        mechs = [r[1] for r in rows]
        start = 0
        for m in dict.fromkeys(mechs):
            stop = start + mechs.count(m)
            e = self.eps[start:stop]
            params: dict[str, Any]
            if m == "laplace":
                params = {"log_q": mech.laplace_log_q(e, g)}
            elif m == "piecewise":
                h, p_high, _ = mech.piecewise_params(e, g)
                params = {"h": h, "p_high": p_high}
            elif m == "duchi":
                params = {"slope": mech.duchi_slope(e)}
            elif m == "gaussian":
                sigma = mech.gaussian_sigma_steps(float(e.sum()), config.delta, g, stop - start)
                params = {"sigma": np.full(stop - start, sigma)}
            else:
                kcat = np.array(
                    [len(r[2].categories) if r[2].kind == "categorical" else 2 for r in rows[start:stop]],
                    dtype=np.float64,
                )
                params = {"n_categories": kcat, "p_keep": mech.grr_probs(e, kcat)[0]}
            self.groups.append((m, slice(start, stop), params))
            start = stop
        self.epsilon = float(config.epsilon)
        self.delta = float(config.delta) if "gaussian" in mechs else 0.0
        self.feature_mechanisms: Mapping[str, str] = MappingProxyType(dict(zip(self.names, mechs, strict=True)))
        self.feature_epsilon: Mapping[str, float] = MappingProxyType(
            dict(zip(self.names, self.eps.tolist(), strict=True))
        )
        #: sigma (grid steps) of each Gaussian feature, for estimators.
        self.sigma_steps: dict[str, float] = {
            self.names[i]: float(p["sigma"][0])
            for m, sl, p in self.groups
            if m == "gaussian"
            for i in range(sl.start, sl.stop)
        }
        self.mechanism = "+".join(dict.fromkeys(mechs))
        self._names_list = list(self.names)
        self._index = {n: i for i, n in enumerate(self.names)}
        # uniform rows: 0 rounding, then what the hungriest mechanism needs, then sampling
        need = max(_UNIFORMS[m] for m in mechs)
        self._sample_row = 1 + need if strategy == "sample" else None
        self._rows = 1 + need + (strategy == "sample")

    def apply(self, values: Mapping[str, float], stream: NoiseStream) -> tuple[np.ndarray, np.ndarray | None]:
        """Privatize ``values``; returns (released values in plan order, sampled indices or None)."""
        d = self.d
        if isinstance(values, dict) and list(values) == self._names_list:
            x = np.fromiter(values.values(), dtype=np.float64, count=d)
        else:
            x = np.array(self.getter(values) if d > 1 else (values[self.names[0]],), dtype=np.float64)
        nan = np.isnan(x)
        if nan.any():
            x[nan] = self.default[nan]
        np.clip(x, self.lo, self.hi, out=x)
        z = (x - self.lo) * self.inv_step + self.shift
        k = np.floor(z)
        raw = stream.raw(self._rows * d)
        u = to_uniform(raw).reshape(self._rows, d)
        k += (u[0] < z - k) * self.rand
        j = np.empty(d)
        g = self.grid_steps
        for m, sl, p in self.groups:
            if m == "laplace":
                j[sl] = mech.laplace_kernel(k[sl], u[1, sl], u[2, sl], p["log_q"])
            elif m == "piecewise":
                j[sl] = mech.piecewise_kernel(k[sl], u[1, sl], u[2, sl], g, p["h"], p["p_high"])
            elif m == "duchi":
                j[sl] = mech.duchi_kernel(k[sl], u[1, sl], g, p["slope"])
            elif m == "gaussian":
                j[sl] = k[sl] + discrete_gaussian(p["sigma"], u[1:4, sl], stream)
            else:
                j[sl] = mech.grr_kernel(k[sl], u[1, sl], u[2, sl], p["n_categories"], p["p_keep"])
        out = self.offset + j * self.out_step
        if self._sample_row is not None:
            r = self._sample_row
            sel = (
                np.sort(np.argpartition(raw[r * d : (r + 1) * d], self.k - 1)[: self.k]) if self.k < d else np.arange(d)
            )
            return out, sel
        return out, None

    @property
    def grid_steps(self) -> int:
        return self._grid_steps

    def values(self, out: np.ndarray, sel: np.ndarray | None) -> ReleasedValues:
        """Released values keyed by feature name (only the sampled ones under ``sample``)."""
        if sel is None:
            return ReleasedValues(self.names, self._index, out)
        names = tuple(self._names_arr[sel].tolist())
        return ReleasedValues(names, {n: i for i, n in enumerate(names)}, out[sel])


#: Uniforms per feature each mechanism consumes (beyond the rounding one).
_UNIFORMS = {"laplace": 2, "piecewise": 2, "duchi": 1, "gaussian": 3, "rr": 2, "grr": 2}


class ReleasedValues(Mapping[str, float]):
    """Read-only mapping feature name -> released value, backed by one float64 array.

    Building a 320-entry dict costs more than privatizing it, so the engine returns this view;
    ``dict(values)`` or :meth:`to_dict` materializes it, :attr:`array` gives the raw vector in
    :attr:`names` order. Equal to any mapping with the same items.
    """

    __slots__ = ("_array", "_index", "_names")

    def __init__(self, names: tuple[str, ...], index: Mapping[str, int], array: np.ndarray) -> None:
        array.flags.writeable = False
        self._names, self._index, self._array = names, index, array

    def __getitem__(self, name: str) -> float:
        return float(self._array[self._index[name]])

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"ReleasedValues({self.to_dict()!r})"

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    @property
    def array(self) -> np.ndarray:
        """The released values (read-only), in :attr:`names` order."""
        return self._array

    def to_dict(self) -> dict[str, float]:
        return dict(zip(self._names, self._array.tolist(), strict=True))
