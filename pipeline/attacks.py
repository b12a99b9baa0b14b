"""Membership and linkage attacks on published study reports: what the guarantee is measured against.

The attacker holds a target device's raw recording, hence its true report values ``x`` for the
day, and the public release records. For every pseudonym of the records it computes the
log-likelihood ratio of that pseudonym's released values under ``x`` against under the population
(the mechanism's exact output distribution, from the noise descriptor published with each value:
:func:`likelihood`; the population's is the average over a sample of population values). Then

* **membership**: score = the largest ratio over pseudonyms (is the target among them?);
* **linkage**: the pseudonyms ranked by the ratio (which one is the target?).

Under epsilon-DP for the target's whole day of releases, any membership test satisfies
``TPR <= e^eps FPR`` and the top-1 linkage accuracy is at most ``e^eps / (e^eps + N - 1)`` among
``N`` pseudonyms (the posterior of a uniform prior). :func:`roc` gives the measured rates and AUC.
Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from statistics import NormalDist
from typing import Any

import numpy as np

from pipeline.evaluation import Simulator
from pipeline.privacy import mechanisms as mech
from pipeline.privacy.keys import KeyProvider
from pipeline.study import Study

__all__ = ["attack_summary", "attack_trials", "auc_ci", "by_pseudonym", "likelihood", "llr_scores", "roc", "tpr_at", "wilson"]


def likelihood(noise: Mapping[str, Any], released: float, x: np.ndarray) -> np.ndarray:
    """Probability of the released value under each true value in ``x`` (same noise descriptor).

    Numeric features: randomized rounding to the grid, then Duchi's two outputs or Piecewise's
    high/low bands; presence bits (``rr``): kept with probability ``p``. Other mechanisms are not
    used by studies and raise ``ValueError``.
    """
    m, eps = noise["mechanism"], float(noise["epsilon"])
    x = np.asarray(x, dtype=np.float64)
    if m == "rr":
        p = float(mech.grr_probs(eps, 2)[0])
        return np.where(np.round(x) == round(released), p, 1.0 - p)
    lo, hi, g = float(noise["lower"]), float(noise["upper"]), int(noise.get("grid_steps", 1024))
    impl = mech.get(m)
    offset, out_step = impl.output_grid(eps, lo, hi, g)
    j = round((released - offset) / out_step)
    z = (np.clip(x, lo, hi) - lo) / ((hi - lo) / g)
    k0 = np.floor(z)
    f = z - k0
    k1 = np.minimum(k0 + 1.0, g)
    if m == "duchi":
        slope = float(mech.duchi_slope(eps))
        def prob(k: np.ndarray) -> np.ndarray:
            high = 0.5 + slope * (k / g - 0.5)
            return high if j == 1 else 1.0 - high
    elif m == "piecewise":
        h, p_high, _ = mech.piecewise_params(eps, g)
        def prob(k: np.ndarray) -> np.ndarray:
            inside = (k <= j) & (j <= k + h - 1)
            return np.where(inside, p_high / h, (1.0 - p_high) / g)
    else:
        raise ValueError(f"no likelihood for mechanism {m!r}; allowed are 'duchi', 'piecewise', 'rr'")
    return (1.0 - f) * prob(k0) + f * prob(k1)


def by_pseudonym(records: Iterable[Mapping[str, Any]]) -> dict[str, list[tuple[str, float, Mapping[str, Any]]]]:
    """Released (name, value, noise descriptor) per pseudonym, over all its records."""
    out: dict[str, list[tuple[str, float, Mapping[str, Any]]]] = {}
    for r in records:
        vals, noise = r["values"], r["noise"]
        out.setdefault(r["pseudonym"], []).extend((k, float(v), noise[k]) for k, v in vals.items())
    return out


def llr_scores(released: Mapping[str, list[tuple[str, float, Mapping[str, Any]]]], target: Mapping[str, float],
               population: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per pseudonym: log P(its values | target's values) - log P(its values | population).

    ``target`` and ``population`` are keyed by released name (feature or ``<feature>.present``);
    ``population[name]`` is a sample of population values whose likelihoods are averaged.
    """
    out = {}
    cache: dict[tuple[str, float], float] = {}
    for pseud, items in released.items():
        s = 0.0
        for name, v, noise in items:
            if name not in target:
                continue
            llr = cache.get((name, v))
            if llr is None:
                pop = float(np.mean(likelihood(noise, v, population[name])))
                own = float(likelihood(noise, v, np.array([target[name]]))[0])
                llr = cache[(name, v)] = math.log(own) - math.log(pop)
            s += llr
        out[pseud] = s
    return out


def roc(positives: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(FPR, TPR, AUC) of the test "score >= threshold" over every threshold (ties count half in the AUC)."""
    pos, neg = np.asarray(positives, dtype=np.float64), np.asarray(negatives, dtype=np.float64)
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    tpr = np.array([0.0, *[(pos >= t).mean() for t in thresholds]])
    fpr = np.array([0.0, *[(neg >= t).mean() for t in thresholds]])
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return fpr, tpr, float(greater + 0.5 * ties)


def tpr_at(fpr: np.ndarray, tpr: np.ndarray, target_fpr: float) -> float:
    """The largest TPR of a threshold whose FPR is at most ``target_fpr``."""
    ok = fpr <= target_fpr + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n``."""
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def auc_ci(auc: float, n_pos: int, n_neg: int, confidence: float = 0.95) -> tuple[float, float]:
    """Hanley-McNeil (1982) confidence interval of an AUC from ``n_pos`` and ``n_neg`` scores."""
    q1, q2 = auc / (2.0 - auc), 2.0 * auc * auc / (1.0 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    half = NormalDist().inv_cdf(0.5 + confidence / 2.0) * math.sqrt(max(var, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)


def _target_values(study: Study, truth: dict[str, np.ndarray]) -> dict[str, float]:
    """The attacker's knowledge of one device: its true report values (and presence), by released name."""
    out = {}
    for name, row in truth.items():
        for f, v in zip(study.sets[name].features, row, strict=True):
            present = math.isfinite(v)
            out[f.name] = v if present else (f.spec.lower + f.spec.upper) / 2
            out[f"{f.name}.present"] = float(present)
    return out


def attack_trials(study: Study, keys: KeyProvider, draw: Callable[[str, int], np.ndarray], devices: int, trials: int,
                  population: Mapping[str, np.ndarray], rng: np.random.Generator,
                  step: Callable[[], object] | None = None) -> dict[str, np.ndarray]:
    """Membership scores (the target in the cohort / another device in its place), the target's
    linkage rank (pseudonyms scoring higher), and the same three on the raw values (``raw_*``).

    ``draw(set_name, n)``: ``n`` devices' true report values of the set (devices x features, NaN
    = missing); device 0 of each cohort is the target's place; ``population``: samples of the
    population's values by released name (:func:`llr_scores`). ``step`` is called after each trial.
    """
    sim = Simulator(study, keys)
    ids = [f"dev-{i}" for i in range(devices)]
    target_pseud = keys.pseudonym(ids[0])
    out: dict[str, list[float]] = {"in": [], "out": [], "rank": [], "raw_in": [], "raw_out": [], "raw_rank": []}
    for _ in range(trials):
        cohort_truth = {name: draw(name, devices) for name in study.sets}
        target = {name: draw(name, 1)[0] for name in study.sets}
        x = _target_values(study, target)
        for world in ("in", "out"):
            truth = {n: np.vstack([target[n][None, :], t[1:]]) if world == "in" else t for n, t in cohort_truth.items()}
            records = [doc for n, t in truth.items() for doc in sim.day(n, t, rng, ids)]
            scores = llr_scores(by_pseudonym(records), x, population)
            out[world].append(max(scores.values()))
            raw = _raw_scores(study, truth, x)  # the same attack without privacy: exact values published
            out[f"raw_{world}"].append(float(raw.max()))
            if world == "in":
                llr = np.array(list(scores.values()))
                out["rank"].append(_rank(llr, scores[target_pseud], rng))
                out["raw_rank"].append(_rank(raw, float(raw[0]), rng))
        if step is not None:
            step()
    return {k: np.array(v) for k, v in out.items()}


def _rank(scores: np.ndarray, own: float, rng: np.random.Generator) -> float:
    """The target's rank (0 = first) among ``scores`` (its own included), ties broken at random:
    Duchi's two outputs make many pseudonyms score alike."""
    ties = int(np.sum(scores == own)) - 1
    return float(np.sum(scores > own) + rng.integers(0, ties + 1))


def _raw_scores(study: Study, truth: dict[str, np.ndarray], x: dict[str, float]) -> np.ndarray:
    """Per device: minus the summed distance (in bounds' widths) of its raw values to the target's."""
    score = np.zeros(len(next(iter(truth.values()))))
    for name, t in truth.items():
        for i, f in enumerate(study.sets[name].features):
            v = np.where(np.isfinite(t[:, i]), t[:, i], (f.spec.lower + f.spec.upper) / 2)
            score -= np.abs(v - x[f.name]) / f.spec.width + (np.isfinite(t[:, i]) != bool(x[f"{f.name}.present"]))
    return score


def attack_summary(res: dict[str, np.ndarray], epsilon: float, devices: int, prefix: str = "") -> dict[str, Any]:
    """TPR at 1 % and 10 % FPR, AUC with its Hanley-McNeil interval, linkage accuracies, DP bounds."""
    pos, neg, rank = res[f"{prefix}in"], res[f"{prefix}out"], res[f"{prefix}rank"]
    fpr, tpr, auc = roc(pos, neg)
    e = math.exp(epsilon) if math.isfinite(epsilon) else math.inf
    return {
        "trials": int(pos.size), "auc": auc, "auc_ci95": auc_ci(auc, pos.size, neg.size),
        "tpr_at_1pct": tpr_at(fpr, tpr, 0.01), "tpr_at_10pct": tpr_at(fpr, tpr, 0.10),
        "tpr_at_10pct_ci95": wilson(round(tpr_at(fpr, tpr, 0.10) * pos.size), pos.size),
        "bound_at_1pct": min(1.0, e * 0.01), "bound_at_10pct": min(1.0, e * 0.10),
        "top1": float(np.mean(rank < 1)), "top10": float(np.mean(rank < 10)),
        "chance_top1": 1 / devices, "chance_top10": min(1.0, 10 / devices),
        "bound_top1": e / (e + devices - 1) if math.isfinite(e) else 1.0,
    }
