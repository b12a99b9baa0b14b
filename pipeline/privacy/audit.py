"""Privacy audits: statistical (after Ding et al., CCS 2018), exact, and of the real release path.

Three audits, from the kernel to what the worker publishes:

* :func:`audit_mechanism`: one mechanism's kernel, sampled at the ends of the bounds (below);
* :func:`exact_loss` / :func:`audit_plan_exact`: the exact privacy loss of the kernels *with the
  parameters a release plan gives them* (what :meth:`ReleasePlan.apply` runs), computed from the
  output distribution itself: each uniform row the kernel reads is split into the intervals on
  which the output is constant (probed on a fine grid, edges bisected to float precision), so every
  output's probability is a sum of interval widths. It catches any excess loss, however small
  (an off-by-one in Piecewise adds ``ln(1 + e^-eps)``), where sampling would need billions of draws;
* :func:`audit_release`: ``PrivacyEngine.privatize`` itself, end to end (clipping, randomized
  rounding, 1-of-d sampling, keystreams), with the configuration users get, at edge or interior
  neighbouring inputs, sampled and bounded as below; plus the exact loss of its plan.

The Gaussian's guarantee is (epsilon, delta): :func:`audit_gaussian` computes ``delta(epsilon)``
exactly between the two discrete Gaussians the plan's sigma defines, and checks the sampler draws
that distribution (chi-square goodness of fit).

Statistical audit, as follows.

For the worst-case neighbouring inputs ``x = lower`` and ``x' = upper`` (categories 0 and 1), draw
``samples`` outputs of each with independent keystreams. The first half of each sample chooses
an event ``E`` (an output threshold ``{o >= t}`` / ``{o <= t}``, or a single output when the
support is small) and a direction maximizing a conservative estimate of
``ln P[M(x) in E] / P[M(x') in E]``. The second half, independent of that choice, gives
one-sided Clopper-Pearson bounds ``p_lo`` (on the numerator) and ``q_hi`` (denominator), each at
level ``1 - alpha/2``; then with probability at least ``1 - alpha`` (the stated confidence)

``epsilon_lower_bound = ln((p_lo - delta) / q_hi) <= true privacy loss``.

The audit fails when ``epsilon_lower_bound > epsilon_claimed``: a correct mechanism fails with
probability at most ``alpha``.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipeline.privacy import mechanisms as mech
from pipeline.privacy.noise import NoiseStream, release_key
from pipeline.validation import check_option, check_range

#: Mechanisms the audit knows; ``broken-laplace`` is calibrated for 2 x epsilon on purpose.
AUDITABLE = (*mech.MECHANISMS, "broken-laplace")


@dataclass(frozen=True, slots=True)
class AuditResult:
    """Outcome of :func:`audit_mechanism` (field names are the CLI's JSON keys)."""

    mechanism: str
    epsilon_claimed: float
    epsilon_lower_bound: float
    confidence: float
    samples: int
    passed: bool
    #: ``mechanism`` (one kernel) or ``release`` (``PrivacyEngine.privatize`` with a plan).
    path: str = "mechanism"
    feature_set: str | None = None
    #: Neighbouring inputs: ``edge`` (the ends of the bounds) or ``interior``.
    pair: str | None = None
    #: Exact privacy loss of the plan's kernels (None where not computed: Laplace, Gaussian).
    epsilon_exact: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The CLI's JSON: the six fields of a mechanism audit, plus where the release path was
        audited (``path``, ``feature_set``, ``pair``, ``epsilon_exact``) for ``--path release``."""
        d = asdict(self)
        if self.path == "mechanism":
            for k in ("path", "feature_set", "pair", "epsilon_exact"):
                del d[k]
        return d


def sample_outputs(
    mechanism: str,
    epsilon: float,
    k: int,
    n: int,
    key: bytes,
    *,
    grid_steps: int = 1024,
    n_categories: int = 4,
    delta: float = 1e-6,
    calibration: float = 1.0,
) -> np.ndarray:
    """``n`` independent output indices ``j`` of ``mechanism`` for grid index ``k``.

    The same kernels as the engine, with uniforms from one ChaCha20 keystream under ``key``.
    ``calibration`` scales the epsilon used for the noise (2.0 = deliberately mis-calibrated).
    """
    stream = NoiseStream(release_key(key, b"biopriv-audit"))
    rows = 4
    u = stream.uniform(rows * n).reshape(rows, n)
    e = epsilon * calibration * (2.0 if mechanism == "broken-laplace" else 1.0)
    impl = mech.get("laplace" if mechanism == "broken-laplace" else mechanism)
    n_cat = 2 if mechanism == "rr" else n_categories
    eps = np.full(n, e)
    lower, upper = np.zeros(n), np.full(n, float(grid_steps))
    cats = np.full(n, float(n_cat))
    if impl.name == "gaussian":  # one feature at epsilon e (the joint calibration of one feature)
        p = tuple(a[:1].repeat(n) for a in impl.params(eps[:1], grid_steps, lower[:1], upper[:1], cats[:1], delta))
    else:
        p = impl.params(eps, grid_steps, lower, upper, cats, delta)
    out = impl.apply(np.full(n, float(k)), u, np.empty(n), np.empty(n), np.empty(n, dtype=bool), p, stream)
    offset, out_step = impl.output_grid(e, 0.0, float(grid_steps), grid_steps)
    return np.rint((out - offset) / out_step)


def neighbours(mechanism: str, grid_steps: int = 1024) -> tuple[int, int]:
    """Worst-case neighbouring grid indices: the ends of the bounds, or categories 0 and 1."""
    return (0, 1) if mechanism in ("rr", "grr") else (0, grid_steps)


def _cp_lower(c: np.ndarray, n: int, alpha: float) -> np.ndarray:
    from scipy.stats import beta

    return np.where(c > 0, beta.ppf(alpha, np.maximum(c, 1), n - c + 1), 0.0)


def _cp_upper(c: np.ndarray, n: int, alpha: float) -> np.ndarray:
    from scipy.stats import beta

    return np.where(c < n, beta.ppf(1.0 - alpha, c + 1, np.maximum(n - c, 1)), 1.0)


def _event_counts(sample: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Counts of ``{o >= t}``, ``{o <= t}`` and ``{o == t}`` per threshold, stacked (3, T)."""
    s = np.sort(sample)
    left = np.searchsorted(s, thresholds, side="left")
    right = np.searchsorted(s, thresholds, side="right")
    return np.stack([s.size - left, right, right - left])


def epsilon_lower_bound(a: np.ndarray, b: np.ndarray, confidence: float = 0.99, delta: float = 0.0) -> float:
    """Lower confidence bound of the privacy loss between output samples ``a`` and ``b``.

    Both samples are split in halves: the first chooses the event, the second bounds it.
    """
    alpha = 1.0 - confidence
    ha, hb = a.size // 2, b.size // 2
    pooled = np.concatenate([a[:ha], b[:hb]])
    uniq = np.unique(pooled)
    thresholds = (
        uniq if uniq.size <= 2048 else np.unique(np.quantile(pooled, np.linspace(0.0, 1.0, 2049), method="nearest"))
    )
    ca, cb = _event_counts(a[:ha], thresholds), _event_counts(b[:hb], thresholds)
    # selection score: the bound the second half would give if it saw the same frequencies, at a
    # level shared among the candidate events (Bonferroni), so that among thousands of rare single
    # outputs a lucky one does not win over a well-populated event
    sel = alpha / (2.0 * ca.size)
    lo_a, hi_a = _cp_lower(ca, ha, sel), _cp_upper(ca, ha, sel)
    lo_b, hi_b = _cp_lower(cb, hb, sel), _cp_upper(cb, hb, sel)
    with np.errstate(divide="ignore"):
        score = np.stack([np.log(np.maximum(lo_a - delta, 0.0) / hi_b), np.log(np.maximum(lo_b - delta, 0.0) / hi_a)])
    # single outputs count even on a large support: an output one input can never give (an
    # off-by-one in a kernel) is the sharpest event there is, and the score is a conservative bound
    direction, kind, idx = np.unravel_index(int(np.argmax(score)), score.shape)
    na, nb = a.size - ha, b.size - hb
    ta, tb = (
        _event_counts(a[ha:], thresholds[idx : idx + 1])[kind],
        _event_counts(b[hb:], thresholds[idx : idx + 1])[kind],
    )
    (num, n_num), (den, n_den) = ((ta, na), (tb, nb)) if direction == 0 else ((tb, nb), (ta, na))
    p_lo = float(_cp_lower(num, n_num, alpha / 2.0)[0])
    q_hi = float(_cp_upper(den, n_den, alpha / 2.0)[0])
    if p_lo - delta <= q_hi:
        return 0.0
    return float(np.log((p_lo - delta) / q_hi))


def audit_mechanism(
    mechanism: str,
    epsilon: float,
    samples: int = 200_000,
    *,
    confidence: float = 0.99,
    grid_steps: int = 1024,
    n_categories: int = 4,
    delta: float = 1e-6,
    seed: bytes | None = None,
    calibration: float = 1.0,
) -> AuditResult:
    """Audit ``mechanism`` at ``epsilon`` with ``samples`` outputs per neighbouring input.

    Parameters
    ----------
    seed : bytes or None
        Key material for the two keystreams; None draws it from ``os.urandom`` (independent
        audits). Tests pass a fixed seed so that their outcome is reproducible.
    calibration : float
        Noise calibrated for ``calibration * epsilon`` (1.0 for the real mechanism).
    """
    check_option("mechanism", mechanism, AUDITABLE)
    check_range("epsilon", epsilon, 0.0, None, low_inclusive=False)
    check_range("confidence", confidence, 0.5, 1.0, high_inclusive=False)
    if samples < 1000:
        check_range("samples", samples, 1000, None)
    seed = os.urandom(32) if seed is None else seed
    x0, x1 = neighbours(mechanism, grid_steps)
    kw = {"grid_steps": grid_steps, "n_categories": n_categories, "delta": delta, "calibration": calibration}
    a = sample_outputs(mechanism, epsilon, x0, samples, seed + b"\x00lower", **kw)  # type: ignore[arg-type]
    b = sample_outputs(mechanism, epsilon, x1, samples, seed + b"\x00upper", **kw)  # type: ignore[arg-type]
    d = delta if mechanism == "gaussian" else 0.0
    lb = epsilon_lower_bound(a, b, confidence, d)
    return AuditResult(mechanism, float(epsilon), lb, confidence, int(samples), bool(lb <= epsilon))


# --------------------------------------------------------------------------- exact audit

#: Probes per uniform row when splitting it into constant-output intervals. Every kernel's
#: intervals are at least ``1 / (G + h)`` wide (``G`` = 1024 grid steps), far above ``1 / PROBES``.
PROBES = 1 << 18

#: Kernels whose output is a function of their uniform rows only, each row read as "branch, then
#: position": a row's interval edges do not depend on the rows after it. Laplace (unbounded
#: geometric tails) and the Gaussian (rejection rounds from the keystream) are audited otherwise.
EXACT = ("duchi", "piecewise", "rr", "grr")


def _intervals(f: Any) -> tuple[np.ndarray, np.ndarray]:
    """Widths and midpoints of the intervals of (0, 1) on which the step function ``f`` is constant."""
    x = (np.arange(PROBES) + 0.5) / PROBES
    y = f(x)
    change = np.flatnonzero(y[1:] != y[:-1])
    lo, hi, y_lo = x[change], x[change + 1], y[change]
    for _ in range(64):  # bisect every edge at once, down to adjacent floats
        mid = 0.5 * (lo + hi)
        same = f(mid) == y_lo
        lo, hi = np.where(same, mid, lo), np.where(same, hi, mid)
    edges = np.concatenate([[0.0], hi, [1.0]])
    return np.diff(edges), 0.5 * (edges[:-1] + edges[1:])


def output_distribution(impl: Any, params_one: tuple[float, ...], k: float) -> dict[float, float]:
    """Exact distribution of ``impl``'s released value for grid index (or category) ``k``.

    ``params_one``: the kernel's parameters for one feature (as a plan holds them). Returns
    released value -> probability (summing to 1 up to float rounding).
    """
    rows = impl.uniforms

    def run(fixed: dict[int, Any], n: int) -> np.ndarray:
        u = np.full((rows + 1, n), 0.5)
        for r, v in fixed.items():
            u[r] = v
        p = tuple(np.full(n, v) for v in params_one)
        out = impl.apply(np.full(n, float(k)), u, np.empty(n), np.empty(n), np.empty(n, dtype=bool), p, None)
        return np.asarray(out, dtype=np.float64).copy()

    regions: list[tuple[dict[int, Any], float]] = [({}, 1.0)]
    for r in range(1, rows + 1):
        nxt: list[tuple[dict[int, Any], float]] = []
        for fixed, w in regions:
            widths, mids = _intervals(lambda ur, fixed=fixed, r=r: run({**fixed, r: ur}, ur.size))
            nxt.extend(({**fixed, r: m}, w * wd) for wd, m in zip(widths.tolist(), mids.tolist(), strict=True))
        regions = nxt
    final = run({r: np.array([f[r] for f, _ in regions]) for r in range(1, rows + 1)}, len(regions))
    dist: dict[float, float] = {}
    for v, (_, w) in zip(final.tolist(), regions, strict=True):
        dist[v] = dist.get(v, 0.0) + w
    return dist


def exact_loss(impl: Any, params_one: tuple[float, ...], ks: Any) -> float:
    """Largest ``|ln P[M(k) = o] / P[M(k') = o]|`` over outputs ``o`` and inputs ``k, k'`` in ``ks``
    (``inf`` when some output is possible from one input and not another)."""
    dists = [output_distribution(impl, params_one, k) for k in ks]
    outputs = set().union(*dists)
    worst = 0.0
    for o in outputs:
        ps = [d.get(o, 0.0) for d in dists]
        if min(ps) <= 0.0:
            return math.inf
        worst = max(worst, math.log(max(ps) / min(ps)))
    return worst


def _neighbour_ks(impl: Any, grid_steps: int, n_categories: int, pair: str) -> tuple[float, ...]:
    if impl.name in ("rr", "grr"):
        return (0.0, 1.0) if pair == "edge" else tuple(float(c) for c in range(min(n_categories, 3)))
    g = grid_steps
    return (0.0, float(g)) if pair == "edge" else (float(g // 4), float(g // 2), float(g // 2 + 1), float(3 * g // 4))


def audit_plan_exact(plan: Any, pair: str = "edge") -> dict[str, tuple[float, float]]:
    """Exact loss of every feature of ``plan`` (a :class:`~pipeline.privacy.vector.ReleasePlan`)
    under its own kernel parameters: feature -> (exact loss, claimed epsilon). Kernels outside
    :data:`EXACT` are skipped."""
    check_option("pair", pair, ("edge", "interior"))
    out: dict[str, tuple[float, float]] = {}
    desc = plan.describe(plan.names)
    for impl, sl, params in plan.groups:
        if impl.name not in EXACT:
            continue
        seen: dict[tuple[float, ...], float] = {}
        for i in range(sl.start, sl.stop):
            name = plan.names[i]
            one = tuple(float(np.asarray(p)[i - sl.start]) for p in params)
            n_cat = len(desc[name].get("categories", ())) or 2
            key = (*one, float(n_cat))
            if key not in seen:
                seen[key] = exact_loss(impl, one, _neighbour_ks(impl, int(desc[name].get("grid_steps", 1024)), n_cat, pair))
            out[name] = (seen[key], float(desc[name]["epsilon"]))
    return out


# --------------------------------------------------------------------------- the release path


def release_plan(feature_set: str = "hr", stream: str = "ppg", config: Any = None) -> tuple[Any, Any]:
    """The specs and plan the worker uses for ``feature_set`` of ``stream`` under ``config``
    (default: the built-in configuration users get)."""
    from pipeline.features import feature_sets
    from pipeline.privacy import PrivacyConfig
    from pipeline.privacy.vector import ReleasePlan

    channels = {"eeg": ("Fz", "Cz"), "acc": ("x", "y", "z")}.get(stream, (stream,))
    rates = {"eeg": 256.0, "mic": 16000.0, "ppg": 64.0, "ecg": 250.0, "acc": 32.0, "resp": 25.0}
    matches = [fs for fs in feature_sets(stream) if fs.name == feature_set]
    if not matches:
        from pipeline.errors import ConfigError

        raise ConfigError(f"stream {stream!r} has no feature set {feature_set!r}")
    specs = matches[0].specs(channels, rates.get(stream, 4.0))
    cfg = config if config is not None else PrivacyConfig.default()
    return specs, ReleasePlan(feature_set, specs, cfg)


def sample_release(specs: Any, config: Any, x: dict[str, float], n: int, key: bytes) -> np.ndarray:
    """``n`` releases of ``x`` through ``PrivacyEngine.privatize`` (one device, distinct windows,
    no budget limit), each encoded as one number: ``feature index * 2^32 + rank of its value``."""
    from pipeline.privacy import KeyRing, PrivacyEngine, PrivateRelease, ReleaseRequest

    keys = KeyRing({"n1": key[:32].ljust(32, b"\0")}, {"p1": bytes(32)}, "n1", "p1")
    engine = PrivacyEngine(config, keys)
    names = [s.name for s in specs]
    codes = np.empty(n)
    vals: list[float] = []
    feats: list[int] = []
    for w in range(n):
        start = w * 10**9
        r = engine.privatize(ReleaseRequest("audit", "s", "f", w, 1.0, 1.0, start, start + 10**9, x, specs))
        if not isinstance(r, PrivateRelease):
            raise RuntimeError(f"the audit release was suppressed: {r.reason}")
        name, v = next(iter(r.values.items()))  # the first released feature (post-processing)
        feats.append(names.index(name))
        vals.append(v)
    fa, va = np.array(feats), np.array(vals)
    for f in np.unique(fa):
        m = fa == f
        codes[m] = f * 2.0**32 + np.unique(va[m], return_inverse=True)[1]
    return codes


def audit_release(
    feature_set: str = "hr",
    stream: str = "ppg",
    epsilon: float | None = None,
    samples: int = 200_000,
    *,
    pair: str = "edge",
    confidence: float = 0.99,
    seed: bytes | None = None,
    config: Any = None,
) -> AuditResult:
    """Audit what the worker publishes for ``feature_set``: ``samples`` releases through
    ``PrivacyEngine.privatize`` at each of two neighbouring inputs (every feature at its lower and
    upper bound, or at 1/4 and 3/4 of its range), the statistical lower bound from the samples,
    and the exact loss of the plan's kernels. ``epsilon`` overrides the configuration's; budgets
    are lifted so that no release is suppressed. Passes when neither bound exceeds the release's
    epsilon."""
    import dataclasses

    from pipeline.privacy import PrivacyConfig

    check_option("pair", pair, ("edge", "interior"))
    base = config if config is not None else PrivacyConfig.default()
    changes: dict[str, Any] = {"w_event": None, "lifetime_epsilon": None, "retention_s": 1.0}
    if epsilon is not None:
        changes["epsilon"] = float(epsilon)
    cfg = dataclasses.replace(base, **{k: v for k, v in changes.items() if hasattr(base, k)})
    specs, plan = release_plan(feature_set, stream, cfg)
    lo_frac, hi_frac = (0.0, 1.0) if pair == "edge" else (0.25, 0.75)

    def at(frac: float) -> dict[str, float]:
        out = {}
        for s in specs:
            if s.kind == "numeric":
                out[s.name] = s.lower + frac * (s.upper - s.lower)
            else:
                out[s.name] = 0.0 if frac < 0.5 else 1.0
        return out

    seed = os.urandom(32) if seed is None else seed
    a = sample_release(specs, cfg, at(lo_frac), samples, (seed + b"lo" * 16)[:32] if len(seed) < 32 else seed[:30] + b"lo")
    b = sample_release(specs, cfg, at(hi_frac), samples, (seed + b"hi" * 16)[:32] if len(seed) < 32 else seed[:30] + b"hi")
    lb = epsilon_lower_bound(a, b, confidence)
    exact = audit_plan_exact(plan, pair)
    worst = max((loss - claim for loss, claim in exact.values()), default=-math.inf)
    exact_eps = max((loss for loss, _ in exact.values()), default=None)
    ok = lb <= plan.epsilon and worst <= 1e-9 * max(1.0, plan.epsilon)
    mech_names = "+".join(sorted({impl.name for impl, _, _ in plan.groups}))
    return AuditResult(mech_names, plan.epsilon, lb, confidence, int(samples), bool(ok), "release", feature_set, pair,
                       exact_eps)


# --------------------------------------------------------------------------- the Gaussian


@dataclass(frozen=True, slots=True)
class GaussianAudit:
    """Outcome of :func:`audit_gaussian`."""

    epsilon_claimed: float
    delta_claimed: float
    sigma_steps: float
    #: ``delta(epsilon_claimed)`` between the discrete Gaussians at the two ends of the bounds.
    delta_exact: float
    #: Smallest epsilon whose ``delta(epsilon)`` is at most ``delta_claimed``.
    epsilon_exact: float
    #: Goodness of fit of the sampler's draws to the discrete Gaussian of ``sigma_steps``.
    sampler_p_value: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _hockey_stick(sigma: float, shift: int, epsilon: float) -> float:
    """``sum_z max(0, P(z) - e^eps P(z - shift))`` for the discrete Gaussian of ``sigma``."""
    half = int(math.ceil(40.0 * sigma)) + shift + 1
    z = np.arange(-half, half + 1, dtype=np.float64)
    logp = -(z * z) / (2.0 * sigma * sigma)
    norm = np.logaddexp.reduce(logp)
    p = np.exp(logp - norm)
    q = np.exp(-((z - shift) ** 2) / (2.0 * sigma * sigma) - norm)
    return float(np.maximum(p - math.exp(epsilon) * q, 0.0).sum())


def audit_gaussian(epsilon: float, delta: float = 1e-6, samples: int = 200_000, *, grid_steps: int = 1024,
                   seed: bytes | None = None, sigma_scale: float = 1.0) -> GaussianAudit:
    """(epsilon, delta) audit of the Gaussian path for one feature: sigma as the plan computes it,
    ``delta(epsilon)`` exact between the outputs at the two ends of the bounds, and the sampler's
    draws (through the kernel the plan runs) against the discrete Gaussian of that sigma.
    ``sigma_scale`` draws with a mis-scaled sigma (mutation tests)."""
    from scipy.stats import chi2

    impl = mech.get("gaussian")
    eps = np.array([float(epsilon)])
    params = impl.params(eps, grid_steps, np.zeros(1), np.full(1, float(grid_steps)), np.full(1, 2.0), delta)
    sigma = float(params[0][0])
    d_exact = _hockey_stick(sigma, grid_steps, epsilon)
    lo, hi = 0.0, 64.0 * epsilon
    for _ in range(60):  # smallest epsilon with delta(epsilon) <= delta
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if _hockey_stick(sigma, grid_steps, mid) <= delta else (mid, hi)
    # the sampler, through the kernel the plan runs: draws minus k are the noise
    seed = os.urandom(32) if seed is None else seed
    stream = NoiseStream(release_key(seed, b"biopriv-audit-gaussian"))
    n = samples
    u = stream.uniform(4 * n).reshape(4, n)
    p = (np.full(n, sigma * sigma_scale), np.zeros(n), np.ones(n))
    z = impl.apply(np.zeros(n), u, np.empty(n), np.empty(n), np.empty(n, dtype=bool), p, stream)
    # chi-square over 50 equiprobable bins of the claimed discrete Gaussian
    half = int(math.ceil(12.0 * sigma))
    grid = np.arange(-half, half + 1, dtype=np.float64)
    pmf = np.exp(-(grid * grid) / (2.0 * sigma * sigma))
    pmf /= pmf.sum()
    cdf = np.cumsum(pmf)
    cuts = np.unique(np.searchsorted(cdf, np.linspace(0, 1, 51)[1:-1]))
    edges = grid[cuts] + 0.5
    expected = np.diff(np.concatenate([[0.0], cdf[cuts], [1.0]])) * n
    observed = np.bincount(np.searchsorted(edges, z), minlength=edges.size + 1)
    stat = float(((observed - expected) ** 2 / expected).sum())
    p_value = float(chi2.sf(stat, edges.size))
    passed = d_exact <= delta * (1 + 1e-9) and p_value > 1e-3
    return GaussianAudit(float(epsilon), float(delta), sigma, d_exact, hi, p_value, bool(passed))
