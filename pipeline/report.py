"""The analyst's report: aggregate records in, one self-contained HTML page and its plots out.

:func:`write_report` takes aggregate records (schema in :mod:`pipeline.aggregate`; from
:func:`~pipeline.aggregate.read_aggregates` or the ``<prefix>aggregates`` topic) and the study
the releases were made under, and writes to a folder:

* one PNG per feature set (``<feature set>.png``; a set of more than :data:`PANELS_PER_PNG`
  features continues in ``<feature set>-part2.png`` and so on, so no image grows past what a
  browser or matplotlib renders): per feature, the estimate of every report
  period with its 95 % interval as a shaded band, the UTC day estimates as dashed lines over the
  periods of their day with their own band, and a small panel of the reports behind each estimate;
* ``index.html``: the same PNGs embedded as ``data:`` URIs (the page needs no other file), a
  table per feature (period, estimate, interval, reports, present share), the study's budget
  model in one paragraph, and a plain warning when intervals are too wide to be useful (the
  planner's cohort size, :func:`pipeline.plan.too_wide_note`).

Everything here is pure (files only, no Kafka); ``biopriv report`` is the command.
"""

from __future__ import annotations

import base64
import html
import re
import statistics
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline.aggregate import DAY_S
from pipeline.errors import ConfigError
from pipeline.plan import USEFUL_SHARE, too_wide_note
from pipeline.study import Study

__all__ = ["budget_paragraph", "select_features", "write_report"]

#: Marks ``<body>`` with how many images decoded (``data-rendered``) of how many (``data-images``):
#: what a headless browser test reads back from the rendered page.
_RENDER_CHECK = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-images", String(imgs.length));
  document.body.setAttribute("data-rendered", String(ok.length));
});
</script>"""

_STYLE = """<style>
body { font-family: system-ui, sans-serif; max-width: 64rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #ddd; padding: 0.2rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.wide td { color: #8a5a00; }
p.warning { background: #fff4d6; border-left: 4px solid #e0a000; padding: 0.4rem 0.8rem; }
img { max-width: 100%; height: auto; }
</style>"""


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(UTC)


def _fmt(v: Any) -> str:
    """A number as shown in the tables (4 significant digits); n/a for a missing one."""
    if v is None:
        return "n/a"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _duration(seconds: float) -> str:
    if seconds >= DAY_S and seconds % DAY_S == 0:
        return f"{seconds / DAY_S:g} day"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _plain(text: str) -> str:
    """``text`` for a matplotlib label: a ``$`` is a dollar sign, never the start of mathtext."""
    return text.replace("$", r"\$")


def _half_width(e: dict[str, Any]) -> float:
    return (float(e["ci95"][1]) - float(e["ci95"][0])) / 2.0


def select_features(aggregates: Sequence[dict[str, Any]], names: Iterable[str] | None) -> list[dict[str, Any]]:
    """The records of the features ``names`` (all when None or empty); ConfigError for an unknown name."""
    wanted = list(names or ())
    if not wanted:
        return list(aggregates)
    known = sorted({e["feature"] for e in aggregates})
    for n in wanted:
        if n not in known:
            raise ConfigError(f"no aggregates of feature {n!r}; the aggregates have: {', '.join(known) or 'none'}")
    return [e for e in aggregates if e["feature"] in wanted]


def _group(aggregates: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """feature set -> feature -> records sorted by period start, then length."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for e in aggregates:
        out.setdefault(e["feature_set"], {}).setdefault(e["feature"], []).append(e)
    for feats in out.values():
        for rows in feats.values():
            rows.sort(key=lambda e: (_when(e["period"]["start"]), float(e["period"]["seconds"])))
    return {fs: dict(sorted(feats.items())) for fs, feats in sorted(out.items())}


# --------------------------------------------------------------------------- budget model


def _set_sentence(study: Study, name: str) -> str:
    s = study.sets[name]
    feats = ", ".join(f.name for f in s.features)
    head = (f"{name} reports {feats} once per {_duration(s.period_s)} period with "
            f"epsilon {s.epsilon_per_day:g} per device per day")
    if s.scheduling == "population":
        return (head + f": each device reports in {s.reports_per_day} of the day's {s.periods_per_day} periods, "
                f"chosen from its key and never from its data, each report spending epsilon {s.epsilon_per_report:.3g}")
    return head + f": every device reports every period, each report spending epsilon {s.epsilon_per_report:.3g}"


def budget_paragraph(study: Study, aggregates: Sequence[dict[str, Any]]) -> str:
    """The budget model of ``study`` in one plain paragraph, for the feature sets in ``aggregates``
    (all of the study's when none of them is in it), with the mechanisms the records name."""
    summary = study.summary()
    sets = [n for n in sorted({e["feature_set"] for e in aggregates}) if n in study.sets] or list(study.sets)
    mechanisms = sorted({f"{e['mechanism']} (epsilon {e['epsilon']:.3g} per value)" for e in aggregates
                         if e.get("mechanism") is not None and isinstance(e.get("epsilon"), (int, float))})
    designs = sorted({str(e.get("scheduling")) for e in aggregates})
    text = (
        f"Study: {study.source}. Every value is noised before it is published (local differential privacy), "
        f"and a device may spend at most epsilon {study.epsilon_per_day:g} per UTC day across all its feature sets "
        f"and epsilon {study.lifetime_epsilon:g} over its lifetime; this study spends {summary['spend_per_day']:g} "
        f"per day, so a device reaches its lifetime cap after {summary['days_until_lifetime_cap']} days and then "
        f"releases nothing more. Scheduling: {study.scheduling} division. "
        + ". ".join(_set_sentence(study, n) for n in sets) + ". "
        + (f"Mechanism{'s' if len(mechanisms) > 1 else ''} in these aggregates: {', '.join(mechanisms)}. "
           if mechanisms else "")
        + "Each interval is a 95 % interval of the mean over the devices that had a value in the period."
    )
    if designs == ["None"]:
        text += (" These aggregates come from per-window releases (the records carry no study design), "
                 "so the study's budget model does not describe them.")
    elif any(d not in ("None", study.scheduling) for d in designs):
        text += (f" Note: these aggregates were released under {', '.join(d for d in designs if d != 'None')} "
                 f"scheduling, not this study's {study.scheduling}: pass the study the worker used (--study).")
    return text


# --------------------------------------------------------------------------- plots


def _plot_feature(ax: Any, counts: Any, rows: list[dict[str, Any]]) -> None:
    days = [e for e in rows if float(e["period"]["seconds"]) >= DAY_S]
    periods = [e for e in rows if float(e["period"]["seconds"]) < DAY_S] or days
    mid = [_when(e["period"]["start"]) + timedelta(seconds=float(e["period"]["seconds"]) / 2) for e in periods]
    lo = [float(e["ci95"][0]) for e in periods]
    hi = [float(e["ci95"][1]) for e in periods]
    ax.fill_between(mid, lo, hi, color="tab:blue", alpha=0.25, linewidth=0, label="95 % interval")
    ax.plot(mid, [float(e["estimate"]) for e in periods], "o-", color="tab:blue", markersize=3,
            label="estimate per " + _duration(float(periods[0]["period"]["seconds"])))
    if periods is not days and days:
        starts = [_when(e["period"]["start"]) for e in periods]
        ends = [s + timedelta(seconds=float(e["period"]["seconds"])) for s, e in zip(starts, periods, strict=True)]
        for i, d in enumerate(days):
            d0 = _when(d["period"]["start"])
            inside = [(s, t) for s, t in zip(starts, ends, strict=True) if d0 <= s < d0 + timedelta(days=1)]
            if not inside:
                continue
            x = [min(s for s, _ in inside), max(t for _, t in inside)]
            ax.fill_between(x, [d["ci95"][0]] * 2, [d["ci95"][1]] * 2, color="tab:orange", alpha=0.15, linewidth=0)
            ax.plot(x, [d["estimate"]] * 2, "--", color="tab:orange", label="day estimate" if i == 0 else None)
    ax.set_ylabel(_plain(rows[0]["feature"]))
    ax.legend(loc="upper right", fontsize="small")
    ax.grid(alpha=0.3)
    widths = [float(e["period"]["seconds"]) / DAY_S for e in periods]  # date axis unit: days
    starts_num = [_when(e["period"]["start"]) for e in periods]
    counts.bar(starts_num, [e["reports"] for e in periods], width=widths, align="edge", color="grey", alpha=0.6, edgecolor="white", linewidth=0.5)
    counts.set_ylabel("reports", fontsize="small")
    counts.grid(alpha=0.3)


#: Features plotted in one PNG at most (3.6 inches each at 100 dpi: 2,880 pixels high).
PANELS_PER_PNG = 8


def plot_feature_set(name: str, features: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """One PNG at ``path``: per feature an estimate panel over a small report-count panel."""
    from matplotlib import dates as mdates
    from matplotlib.figure import Figure

    n = len(features)
    fig = Figure(figsize=(9.0, 3.6 * n), layout="constrained")
    grid = fig.add_gridspec(2 * n, 1, height_ratios=[3, 1] * n)
    for i, rows in enumerate(features.values()):
        ax = fig.add_subplot(grid[2 * i])
        counts = fig.add_subplot(grid[2 * i + 1], sharex=ax)
        _plot_feature(ax, counts, rows)
        locator = mdates.AutoDateLocator()
        counts.xaxis.set_major_locator(locator)
        counts.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.tick_params(labelbottom=False)
    fig.suptitle(f"{_plain(name)}: estimates with 95 % intervals (UTC)")
    fig.savefig(path, dpi=100, format="png")


# --------------------------------------------------------------------------- HTML


def _warning(study: Study, feature: str, rows: list[dict[str, Any]]) -> tuple[str, set[int]]:
    """The warning paragraph for ``feature`` ('' when its intervals are useful) and the rows too wide."""
    median = statistics.median(float(e["estimate"]) for e in rows)
    wide = {i for i, e in enumerate(rows) if too_wide_note(study, feature, _half_width(e), median) is not None}
    if not wide:
        return "", wide
    note = too_wide_note(study, feature, max(_half_width(rows[i]) for i in wide), median)
    return (f'<p class="warning">Warning: {len(wide)} of {len(rows)} intervals {"is" if len(wide) == 1 else "are"} too wide to be useful '
            f"(half-width over {USEFUL_SHARE:.0%} of the feature's range): {html.escape(str(note))}.</p>"), wide


def _table(rows: list[dict[str, Any]], wide: set[int]) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("period start (UTC)", "length", "estimate", "95 % interval",
                                                 "reports", "present share"))
    body = []
    for i, e in enumerate(rows):
        cells = (e["period"]["start"], _duration(float(e["period"]["seconds"])), _fmt(float(e["estimate"])),
                 f"[{_fmt(float(e['ci95'][0]))}, {_fmt(float(e['ci95'][1]))}]", _fmt(int(e["reports"])),
                 _fmt(e.get("present_share")))
        cls = ' class="wide"' if i in wide else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


def _file_name(feature_set: str, taken: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", feature_set).lstrip(".") or "set"
    name, k = f"{stem}.png", 1
    while name in taken:
        k += 1
        name = f"{stem}-{k}.png"
    taken.add(name)
    return name


def write_report(aggregates: Sequence[dict[str, Any]], study: Study, out_dir: Path,
                 title: str = "biopriv report") -> Path:
    """Write ``index.html`` and one PNG per feature set into ``out_dir`` (created); returns the HTML path.

    Raises ConfigError when ``aggregates`` is empty (there is nothing to report).
    """
    if not aggregates:
        raise ConfigError("no aggregate records to report (run `biopriv aggregate` first, or check --feature)")
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = _group(aggregates)
    starts = sorted(_when(e["period"]["start"]) for e in aggregates)
    t = html.escape(title)
    parts = [
        f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{t}</title>\n{_STYLE}\n</head>',
        f"<body>\n<h1>{t}</h1>",
        f"<p>{_count(len(aggregates), 'estimate')} of {_count(sum(len(f) for f in groups.values()), 'feature')} in "
        f"{_count(len(groups), 'feature set')}, periods starting {starts[0]:%Y-%m-%d %H:%M:%S} to {starts[-1]:%Y-%m-%d %H:%M:%S} "
        "UTC. The plots are also beside this page as PNG files.</p>",
        f"<h2>Budget model</h2>\n<p>{html.escape(budget_paragraph(study, aggregates))}</p>",
    ]
    taken: set[str] = set()
    for fs, features in groups.items():
        parts.append(f"<h2>{html.escape(fs)}</h2>")
        names = list(features)
        for k, i in enumerate(range(0, len(names), PANELS_PER_PNG), start=1):
            png = out_dir / _file_name(fs if k == 1 else f"{fs}-part{k}", taken)
            plot_feature_set(fs, {n: features[n] for n in names[i:i + PANELS_PER_PNG]}, png)
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            parts.append("<figure>\n"
                         f'<img src="data:image/png;base64,{data}" alt="{html.escape(fs)}: estimates with 95 % intervals">'
                         f"\n<figcaption>{html.escape(png.name)}</figcaption>\n</figure>")
        for feature, rows in features.items():
            warning, wide = _warning(study, feature, rows)
            parts.append(f"<h3>{html.escape(feature)}</h3>\n{warning}\n{_table(rows, wide)}")
    parts.append(f"{_RENDER_CHECK}\n</body>\n</html>\n")
    index = out_dir / "index.html"
    index.write_text("\n".join(parts), encoding="utf-8")
    return index
