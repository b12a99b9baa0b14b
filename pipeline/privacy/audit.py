"""Statistical privacy audit of a mechanism (after Ding et al., CCS 2018).

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    small = uniq.size <= 256
    thresholds = (
        uniq if uniq.size <= 2048 else np.unique(np.quantile(pooled, np.linspace(0.0, 1.0, 2049), method="nearest"))
    )
    ca, cb = _event_counts(a[:ha], thresholds), _event_counts(b[:hb], thresholds)
    # selection score: the bound the second half would give if it saw the same frequencies
    lo_a, hi_a = _cp_lower(ca, ha, alpha / 2.0), _cp_upper(ca, ha, alpha / 2.0)
    lo_b, hi_b = _cp_lower(cb, hb, alpha / 2.0), _cp_upper(cb, hb, alpha / 2.0)
    with np.errstate(divide="ignore"):
        score = np.stack([np.log(np.maximum(lo_a - delta, 0.0) / hi_b), np.log(np.maximum(lo_b - delta, 0.0) / hi_a)])
    if not small:  # single outputs of a large support are too rare to bound well
        score[:, 2, :] = -np.inf
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
