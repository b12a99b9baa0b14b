"""Markdown tables and PNG plots of ``benchmarks/utility.py``'s results (``utility.json``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pipeline.plan import MC_RUNS

#: the planner's prediction is flagged when it is off by more than this share of the measured half-width
TOLERANCE = 0.10


def _f(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def plots(r: dict[str, Any], out: Path) -> None:
    """``utility_error.png`` (measured and predicted half-width vs daily epsilon, per cohort size,
    one panel per feature) and ``utility_coverage.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = r["utility"]
    feats = list(dict.fromkeys(x["feature"] for x in rows))
    sizes = sorted({x["devices"] for x in rows})
    cols = 4
    nrows = math.ceil(len(feats) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.2 * nrows), squeeze=False)
    for ax, feat in zip(axes.flat, feats, strict=False):
        for n in sizes:
            sel = sorted((x for x in rows if x["feature"] == feat and x["devices"] == n), key=lambda x: x["epsilon_per_day"])
            eps = [x["epsilon_per_day"] for x in sel]
            line = ax.plot(eps, [x["measured_half_width"] for x in sel], "o-", label=f"{n:,} measured")[0]
            ax.plot(eps, [x["planner_half_width"] for x in sel], "x--", color=line.get_color(), label=f"{n:,} planner")
        ax.set(xscale="log", yscale="log", title=feat, xlabel="daily epsilon", ylabel="95 % half-width")
        ax.set_xticks(list(r["epsilons"]), [f"{e:g}" for e in r["epsilons"]], minor=False)
        ax.set_xticks([], minor=True)
    for ax in list(axes.flat)[len(feats):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Day-mean 95 % half-width: measured (95 % quantile of |error|) and planner's prediction")
    fig.tight_layout()
    fig.savefig(out / "utility_error.png", dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for n in sizes:
        sel = [x for x in rows if x["devices"] == n]
        ax.scatter([x["epsilon_per_day"] * (1 + 0.05 * sizes.index(n)) for x in sel], [x["coverage"] for x in sel],
                   label=f"{n:,} devices", s=14)
    ax.axhline(0.95, color="k", lw=0.8)
    ax.axhspan(0.93, 0.97, color="0.9")
    ax.set(xscale="log", xlabel="daily epsilon", ylabel="coverage of the 95 % interval",
           title="Interval coverage, every feature (no estimate = not covered)")
    ax.set_xticks(list(r["epsilons"]), [f"{e:g}" for e in r["epsilons"]], minor=False)
    ax.set_xticks([], minor=True)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "utility_coverage.png", dpi=90)
    plt.close(fig)


def _mc_sd(row: dict[str, Any]) -> str:
    rsd = row.get("planner_mc_rsd")
    return "n/a" if rsd is None or not math.isfinite(rsd) else f"{100 * rsd:.1f} %"


def _mc_summary(rows: list[dict[str, Any]]) -> str:
    """One sentence on the planner's own Monte Carlo error (rows of results without it: nothing)."""
    rsd = sorted((x["planner_mc_rsd"], x["feature"], x["epsilon_per_day"], x["devices"]) for x in rows
                 if math.isfinite(x.get("planner_mc_rsd", math.nan)))
    if not rsd:
        return ""
    med, (top, f, e, n) = rsd[len(rsd) // 2][0], rsd[-1]
    return (f" The planner's own Monte Carlo error (relative sd of its half-width over 5 seeds): median "
            f"{100 * med:.2f} %, largest {100 * top:.2f} % ({f}, {e:g} eps/day, {n:,} devices).")


def report_md(r: dict[str, Any]) -> str:
    m = r["machine"]
    rows = r["utility"]
    runs = ", ".join(f"{int(n):,} devices x {k} runs" for n, k in r["runs"].items())
    lines = [
        "# Privacy-utility evaluation and attacks (default study, real-recording cohort)",
        "",
        f"`{r['command']}` on {m.get('cpu', '?')} ({m.get('cores', '?')} cores, load {m.get('loadavg_1_5_15')}), "
        f"{r['date']}, {r['seconds']} s. Cohort: segments of the shared real recordings as devices (each report: "
        "the mean of a block of real windows, `connectors.cohort`), one report per device per set and day (population "
        "division), privatized by the study's release plan (the utility grid: the plan's mechanism code on words from a "
        "seeded generator, `Simulator.day_estimates_fast`, which a KS test in `tests/unit/test_plan.py` matches to the "
        "engine's path; the attacks: under the engine's noise identities) and aggregated from the published records alone (`pipeline.evaluation`, `pipeline.aggregate`). Truth: the non-private mean of the same "
        f"values. The default study is rescaled to each daily epsilon (each set keeps its share). Runs: {runs}. "
        "Skin temperature has no shared recording.",
        "",
        "![error](utility_error.png)",
        "",
        "![coverage](utility_coverage.png)",
        "",
        "## Utility: day-mean error, coverage, planner",
        "",
        "Measured +- = the 95 % quantile of |estimate - truth| over the runs with an estimate: the half-width a 95 % "
        "interval centred on the estimate needs (1.96 x RMSE when the error is normal; the estimate is clipped to the "
        "bounds, `present_point`), with its distribution-free 95 % CI from order statistics. Planner +- = "
        "`pipeline.plan.predict` at the population's mean and sd (`spread`; the same quantile by a seeded Monte Carlo of the "
        f"aggregator's estimator, {MC_RUNS:,} simulated days; MC sd = its own relative sd over 5 seeds, not in the CI). "
        f"Ratio = planner / measured with the CI that the measurement's CI gives; **flag** when the ratio is off by "
        f"more than {TOLERANCE:.0%}. Estimated/runs: the runs with an estimate (the aggregator gives none while the "
        "estimated presence share is not positive), the planner's predicted share in brackets. share sd = the "
        "planner's standard deviation of the estimated share of devices with a value: above about 0.1 the estimate "
        "is a ratio with a noisy denominator and its error has heavy tails (RMSE far above the quantile; the "
        "delta method's 1.96 sd, `delta +-`, is then far off, the Monte Carlo is not). Coverage counts a run "
        "without an estimate as not covered. Reported +- is half the aggregator's interval (Fieller's within the "
        "bounds: asymmetric, cut at a bound).",
        "",
        "| feature | bounds | eps/day | eps/report | mechanism | devices | estimated/runs (planner) | RMSE | bias | coverage | "
        "reported +- | measured +- (95 % CI) | planner +- | MC sd | delta +- | ratio (95 % CI) | share sd |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    within = verified = off = 0
    logs: list[float] = []
    for x in rows:
        ratio, (r_lo, r_hi) = x["ratio"], x["ratio_ci95"]
        ok = math.isfinite(ratio) and abs(ratio - 1) <= TOLERANCE
        flag = not ok
        within += ok
        verified += 1 - TOLERANCE <= r_lo and r_hi <= 1 + TOLERANCE
        off += r_lo > 1 + TOLERANCE or r_hi < 1 - TOLERANCE
        if math.isfinite(ratio) and ratio > 0:
            logs.append(math.log(ratio))
        m_lo, m_hi = x["measured_half_width_ci95"]
        lines.append(
            f"| {x['feature']} | {x['bounds'][0]:g}..{x['bounds'][1]:g} | {x['epsilon_per_day']:g} | "
            f"{x['epsilon_per_report']:.3g} | {x['mechanism']} | {x['devices']:,} | {x['estimated']}/{x['runs']} "
            f"({x['planner_estimated_share']:.2f}) | {_f(x['rmse'])} | {_f(x['bias'], 2)} | {x['coverage']:.3f} | "
            f"{_f(x['reported_half_width'])} | {_f(x['measured_half_width'])} ({_f(m_lo)}-{_f(m_hi)}) | "
            f"{_f(x['planner_half_width'])} | {_mc_sd(x)} | {_f(x['delta_half_width'])} | {'**' if flag else ''}{_f(ratio)}"
            f"{'**' if flag else ''} ({_f(r_lo)}-{_f(r_hi)}) | {x['share_sd']:.2f} |"
        )
    pooled = math.exp(sum(logs) / len(logs)) if logs else math.nan
    ratios = sorted((x["ratio"], x["feature"], x["epsilon_per_day"], x["devices"]) for x in rows if math.isfinite(x["ratio"]))
    worst = ", ".join(f"{r:.3f} ({f}, {e:g} eps/day, {n:,} devices)" for r, f, e, n in [*ratios[:2], *ratios[-2:]])
    lines += ["", f"{within} of {len(rows)} rows have the planner within {TOLERANCE:.0%} of the measured half-width; "
              f"in {verified} the ratio's 95 % CI lies inside {1 - TOLERANCE:g}-{1 + TOLERANCE:g} (verified), in {off} it "
              f"lies entirely outside (significantly off). Lowest and highest ratios: {worst}. Geometric mean of the "
              f"ratios: {_f(pooled)}.{_mc_summary(rows)}", ""]
    if "attacks" in r:
        a = r["attacks"]
        lines += [
            "## Membership and linkage attacks",
            "",
            f"Attacker: holds a target device's true report values for the day (its raw recording) and every published "
            f"record of a cohort of {a['devices']} devices; scores each pseudonym by the log-likelihood ratio of its released "
            "values under the target's values vs under the population (exact output distributions from the published noise "
            "descriptors, `pipeline.attacks`). Membership: the cohort holds the target, or another device in its place; "
            "score = the largest ratio. Linkage: rank of the target's pseudonym. Bounds from epsilon-DP for the target's "
            "day of releases (epsilon spent = the sets with data): TPR <= e^eps x FPR, top-1 <= e^eps / (e^eps + N - 1).",
            "",
            "| daily epsilon | eps spent | trials | TPR @1% FPR | bound | TPR @10% FPR | bound | AUC (95% CI) | top-1 | chance | bound | top-10 | chance |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for e, s in [*a["by_epsilon"].items(), ("no privacy", a["no_privacy"])]:
            spent = _f(s.get("epsilon_spent", math.inf))
            lines.append(
                f"| {e} | {spent} | {s['trials']} | {s['tpr_at_1pct']:.3f} | {s['bound_at_1pct']:.3f} | {s['tpr_at_10pct']:.3f} | "
                f"{s['bound_at_10pct']:.3f} | {s['auc']:.3f} ({s['auc_ci95'][0]:.3f}-{s['auc_ci95'][1]:.3f}) | {s['top1']:.3f} | "
                f"{s['chance_top1']:.3f} | {s['bound_top1']:.3f} | {s['top10']:.3f} | {s['chance_top10']:.3f} |"
            )
        lines += ["", "The no-privacy row is the same attacker on the raw period values (nearest device to the "
                  "target's values): the attack works when nothing is noised. With the noise it stays at chance up to "
                  "8 epsilon a day (AUC within its interval of 0.5 except where noted): each report carries one of its "
                  "two coordinates (the value or its presence bit, 1-of-2 sampling), the per-report epsilon is at most "
                  "1.6, and the population's spread is small beside the public bounds (eda's sd is 0.5 on 0-50), so one "
                  "day of reports says little about which device is which. `tests/unit/test_attacks.py` shows the same "
                  "attacker separating the worlds (AUC about 0.69) when values spread over the bounds at 8 epsilon.", ""]
    return "\n".join(lines)
