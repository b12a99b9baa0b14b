"""Privacy-utility evaluation of the default study on a real-recording cohort, and attacks on it.

Cohort: segments of the shared real recordings (``../shared/data``) as devices; a device's report
value is the mean of a block of consecutive windows computed by the pipeline's own feature code
(``connectors.cohort``). Each simulated day is privatized through the study's release plan (the
utility grid on generator words, below; the attacks under the engine's noise identities) and
aggregated from the published records alone
(``pipeline.evaluation``, ``pipeline.aggregate``); the truth is the non-private mean of the same
values. The default study is rescaled to each daily epsilon (every set keeps its share).

* **utility**: daily epsilon 0.5, 1, 2, 4, 8 x cohorts of 100, 1,000, 10,000 devices; per feature
  the RMSE of the day estimate over the runs, the coverage of the 95 % intervals, and the
  planner's predicted half-width (``pipeline.plan``) beside the measured one: the 95 % quantile of
  |estimate - truth|, with its order-statistic CI. The runs privatize through the release plan's
  mechanism code with words from a seeded generator and run the aggregator's estimator on the
  day's sums (``Simulator.day_estimates_fast``: thousands of runs of 10,000 devices in minutes).
* **attacks** (``pipeline.attacks``): membership (cohort with the target vs with another device
  in its place) and linkage (rank of the target's pseudonym) for an attacker holding the
  target's true values, per daily epsilon, beside the epsilon-DP bounds, and the same attack on
  the raw values (no privacy).

Writes ``utility.json``, ``utility.md`` and PNG plots to ``--out`` (``benchmarks/results``).

    python benchmarks/utility.py [--quick] [--out DIR] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_model, load_average  # noqa: E402
from connectors.cohort import block_means, cohort, window_values  # noqa: E402
from pipeline.attacks import attack_summary, attack_trials  # noqa: E402
from pipeline.evaluation import Simulator, truth_mean  # noqa: E402
from pipeline.plan import MC_SEED, predict  # noqa: E402
from pipeline.privacy import KeyRing  # noqa: E402
from pipeline.study import DEFAULT_STUDY, Study, from_mapping  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0)
#: cohort size -> runs (full, --quick)
RUNS = {100: (4000, 200), 1000: (4000, 100), 10_000: (2000, 0)}
#: extra seeds of the planner's Monte Carlo: its own sampling error (relative sd) per row
PLANNER_SEEDS = 4
#: the measured half-width: this quantile of |estimate - truth| over the runs with an estimate
QUANTILE = 0.95
ATTACK_DEVICES, ATTACK_TRIALS = 100, (300, 60)


def study_at(epsilon_per_day: float) -> Study:
    """The default study with every set's daily epsilon scaled to a total of ``epsilon_per_day``."""
    data = json.loads(json.dumps(DEFAULT_STUDY))
    scale = epsilon_per_day / data["budget"]["epsilon_per_day"]
    data["budget"]["epsilon_per_day"] = epsilon_per_day
    data["budget"]["lifetime_epsilon"] = max(data["budget"]["lifetime_epsilon"], epsilon_per_day)
    for s in data["sets"].values():
        s["epsilon_per_day"] *= scale
    return from_mapping(data, f"default study at {epsilon_per_day:g} epsilon per day")


def quantile_ci(abs_err: np.ndarray, q: float = QUANTILE, confidence: float = 0.95) -> tuple[float, float, float]:
    """The ``q`` quantile of ``abs_err`` and a distribution-free ``confidence`` interval for it
    from order statistics (binomial: the rank of the true quantile among ``m`` draws)."""
    a = np.sort(abs_err)
    m = a.size
    if m == 0:
        return math.nan, math.nan, math.nan
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    spread = z * math.sqrt(m * q * (1 - q))
    lo, hi = int(math.floor(m * q - spread)), int(math.ceil(m * q + spread))
    return (float(np.quantile(a, q)), float(a[max(lo, 1) - 1]) if lo >= 1 else 0.0,
            float(a[hi - 1]) if hi <= m else math.inf)


def utility(sources: dict[str, list[np.ndarray]], sizes: dict[int, int], seed: int) -> list[dict[str, Any]]:
    """One row per (feature, daily epsilon, cohort size): measured error and coverage, planner."""
    rng = np.random.default_rng(seed)
    keys = KeyRing({"n1": rng.bytes(32)}, {"p1": rng.bytes(32)}, "n1", "p1")
    studies = {e: study_at(e) for e in EPSILONS}
    sims = {e: Simulator(studies[e], keys) for e in EPSILONS}
    base = studies[EPSILONS[0]]
    names = [n for n in base.sets if sources[n]]
    blocks = {name: block_means(base.sets[name], sources[name]) for name in names}
    expected: dict[str, float] = {}
    spread: dict[str, float] = {}
    for name in names:  # the population's mean and sd per feature, from a cohort of 20,000
        big = cohort(base.sets[name], sources[name], 20_000, rng, periods=1, blocks=blocks[name])[:, 0]
        feats = [f.name for f in base.sets[name].features]
        expected.update(zip(feats, truth_mean(big).tolist(), strict=True))
        spread.update(zip(feats, np.nanstd(big, axis=0).tolist(), strict=True))
    plans = {(e, n): {p["feature"]: p for p in predict(studies[e], n, expected, spread)}
             for e in EPSILONS for n in sizes}
    # the same prediction under other seeds: the Monte Carlo's own relative sd
    reseeded: dict[tuple[float, int, str], list[float]] = {}
    for e in EPSILONS:
        for n in sizes:
            for k in range(1, PLANNER_SEEDS + 1):
                for p in predict(studies[e], n, expected, spread, seed=MC_SEED + 1000 * k):
                    reseeded.setdefault((e, n, p["feature"]), []).append(p["half_width_day"])
    bar = tqdm(total=sum(n * r for n, r in sizes.items()) * len(names), desc="utility", unit="device-day",
               file=sys.stderr, dynamic_ncols=True)
    rows = []
    for name in names:
        s = base.sets[name]
        for n, runs in sizes.items():
            err = {e: np.full((runs, len(s.features)), np.nan) for e in EPSILONS}
            cov = {e: np.zeros(len(s.features)) for e in EPSILONS}
            half = {e: np.full((runs, len(s.features)), np.nan) for e in EPSILONS}
            for r in range(runs):
                truth = cohort(s, sources[name], n, rng, periods=1, blocks=blocks[name])[:, 0]
                target = truth_mean(truth)
                for e in EPSILONS:  # the same cohort at every epsilon: paired comparisons
                    est = sims[e].day_estimates_fast(name, truth, rng)
                    for i, f in enumerate(s.features):
                        got = est.get(f.name)
                        if got is None:
                            continue
                        err[e][r, i] = got["estimate"] - target[i]
                        half[e][r, i] = (got["ci95"][1] - got["ci95"][0]) / 2
                        cov[e][i] += got["ci95"][0] <= target[i] <= got["ci95"][1]
                if r % 10 == 9 or r == runs - 1:
                    bar.update(n * (10 if r % 10 == 9 else r % 10 + 1))
            for e in EPSILONS:
                plan = plans[(e, n)]
                for i, f in enumerate(s.features):
                    ok = np.isfinite(err[e][:, i])
                    rmse = float(np.sqrt(np.mean(err[e][ok, i] ** 2))) if ok.any() else math.nan
                    predicted = plan[f.name]["half_width_day"]
                    seeds = np.array([predicted, *reseeded[(e, n, f.name)]])
                    measured, m_lo, m_hi = quantile_ci(np.abs(err[e][ok, i]))
                    rows.append({
                        "feature_set": name, "feature": f.name, "epsilon_per_day": e, "devices": n, "runs": runs,
                        "estimated": int(ok.sum()), "planner_estimated_share": plan[f.name]["estimated_share_day"],
                        "epsilon_per_report": studies[e].sets[name].epsilon_per_report,
                        "mechanism": plan[f.name]["mechanism"], "bounds": [f.spec.lower, f.spec.upper],
                        "truth_mean": expected[f.name], "truth_sd": spread[f.name], "rmse": rmse, "bias": float(np.mean(err[e][ok, i])) if ok.any() else math.nan,
                        "coverage": float(cov[e][i] / runs), "reported_half_width": float(np.nanmean(half[e][:, i])),
                        "measured_half_width": measured, "measured_half_width_ci95": [m_lo, m_hi],
                        "planner_half_width": predicted, "delta_half_width": plan[f.name]["delta_half_width_day"],
                        "ratio": predicted / measured if measured > 0 else math.nan,
                        "ratio_ci95": [predicted / m_hi if m_hi > 0 else math.nan, predicted / m_lo if m_lo > 0 else math.inf],
                        "share_sd": plan[f.name]["share_sd_day"],
                        "planner_mc_rsd": float(seeds.std(ddof=1) / seeds.mean()),
                    })
    bar.close()
    return rows


def attacks(sources: dict[str, list[np.ndarray]], trials: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed + 1)
    keys = KeyRing({"n1": rng.bytes(32)}, {"p1": rng.bytes(32)}, "n1", "p1")
    base = study_at(EPSILONS[0])
    names = [n for n in base.sets if sources[n]]
    blocks = {n: block_means(base.sets[n], sources[n]) for n in names}

    def draw(name: str, n: int) -> np.ndarray:
        return cohort(base.sets[name], sources[name], n, rng, periods=1, blocks=blocks[name])[:, 0]

    population: dict[str, np.ndarray] = {}
    for n in names:
        sample = draw(n, 400)
        for i, f in enumerate(base.sets[n].features):
            col = sample[:, i]
            population[f.name] = np.where(np.isfinite(col), col, (f.spec.lower + f.spec.upper) / 2)
            population[f"{f.name}.present"] = np.isfinite(col).astype(np.float64)
    out: dict[str, Any] = {"devices": ATTACK_DEVICES, "sets": names, "by_epsilon": {}}
    bar = tqdm(total=trials * len(EPSILONS), desc="attacks", unit="trial", file=sys.stderr, dynamic_ncols=True)
    for e in EPSILONS:
        study = study_at(e)
        sub = from_mapping({"budget": {"epsilon_per_day": e, "lifetime_epsilon": max(60.0, e)},
                            "sets": {n: _set_mapping(study, n) for n in names}}, study.source)
        res = attack_trials(sub, keys, draw, ATTACK_DEVICES, trials, population, rng, bar.update)
        # what the target spends: the sets with data (temperature has no recording)
        spent = sum(sub.sets[n].epsilon_per_day for n in names)
        out["by_epsilon"][str(e)] = attack_summary(res, spent, ATTACK_DEVICES) | {"epsilon_spent": spent}
        if "no_privacy" not in out:
            out["no_privacy"] = attack_summary(res, math.inf, ATTACK_DEVICES, prefix="raw_")
    bar.close()
    return out


def _set_mapping(study: Study, name: str) -> dict[str, Any]:
    s = study.sets[name]
    return {"features": [f.name for f in s.features], "period": s.period_s, "epsilon_per_day": s.epsilon_per_day,
            "bounds": {f.name: [f.spec.lower, f.spec.upper] for f in s.features}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="cohorts of 100 and 1,000 devices, fewer runs and trials (~2 min)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--skip-attacks", action="store_true", help="the utility grid only")
    args = ap.parse_args(argv)
    if not DATA.exists():
        print(f"utility: the shared recordings are not at {DATA}", file=sys.stderr)
        return 2
    t0 = time.time()
    sources = window_values(Study.default(), DATA)
    sizes = {n: r[1 if args.quick else 0] for n, r in RUNS.items() if r[1 if args.quick else 0]}
    results: dict[str, Any] = {"seed": args.seed, "quick": args.quick, "epsilons": EPSILONS, "runs": sizes}
    results["utility"] = utility(sources, sizes, args.seed)
    if not args.skip_attacks:
        results["attacks"] = attacks(sources, ATTACK_TRIALS[1 if args.quick else 0], args.seed)
    results["machine"] = {"cpu": cpu_model(), "cores": os.cpu_count(), "loadavg_1_5_15": load_average()}
    results["command"] = "biopriv bench utility " + " ".join(argv if argv is not None else sys.argv[1:])
    results["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    results["seconds"] = round(time.time() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "utility.json").write_text(json.dumps(results, indent=1))
    from benchmarks.utility_report import plots, report_md

    plots(results, args.out)
    (args.out / "utility.md").write_text(report_md(results))
    print(f"wrote {args.out / 'utility.md'} in {results['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
