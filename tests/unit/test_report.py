"""``pipeline.report`` and ``biopriv report``: plots, tables, budget model, escaping, errors."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from pipeline.aggregate import read_aggregates, write_aggregates
from pipeline.errors import ConfigError
from pipeline.plan import devices_for
from pipeline.report import PANELS_PER_PNG, budget_paragraph, write_report
from pipeline.study import Study, from_mapping

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def record(fs: str, feature: str, start: str, seconds: float, estimate: float, half: float, reports: int,
           share: float | None = 0.9) -> dict[str, Any]:
    return {"v": 1, "feature_set": fs, "feature": feature, "period": {"start": start, "seconds": seconds},
            "estimate": estimate, "std_error": half / 1.96, "ci95": [estimate - half, estimate + half],
            "reports": reports, "present_share": share, "mechanism": "duchi", "epsilon": 0.4,
            "scheduling": "population"}


def synthetic() -> list[dict[str, Any]]:
    """Two feature sets: hr (narrow intervals: useful) and eeg with two features, one too wide."""
    out = []
    for k in range(6):
        start = f"2026-12-01T{k:02d}:00:00Z"
        out.append(record("hr", "hr", start, 3600.0, 70.25 + k, 1.5, 300 + k))
        out.append(record("eeg", "alpha_rel@frontal", start, 3600.0, 0.3125 + k / 1000, 0.004, 200 + k))
        out.append(record("eeg", "theta_rel@frontal", start, 3600.0, 0.25, 0.2, 20 + k, share=None))
    out.append(record("hr", "hr", "2026-12-01T00:00:00Z", 86400.0, 72.75, 0.5, 1815))
    return out


class _Tables(HTMLParser):
    """Cell texts of each table, keyed by the <h3> before it; the <img> sources; every text."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.imgs: list[str] = []
        self.warnings: list[str] = []
        self._h3: str | None = None
        self._tag: str | None = None
        self._row: list[str] | None = None
        self._warning = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag = tag
        if tag == "img":
            self.imgs.append(dict(attrs)["src"] or "")
        elif tag == "tr":
            self._row = []
        elif tag == "p" and ("class", "warning") in attrs:
            self._warning = True
            self.warnings.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._row and self._h3 is not None and self._tag != "th":
            self.tables.setdefault(self._h3, []).append(self._row)
        if tag == "p":
            self._warning = False
        self._tag = None

    def handle_data(self, data: str) -> None:
        if self._tag == "h3":
            self._h3 = data
        elif self._tag == "td" and self._row is not None:
            self._row.append(data)
        if self._warning:
            self.warnings[-1] += data


def parse(index: Path) -> _Tables:
    p = _Tables()
    p.feed(index.read_text())
    return p


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(synthetic(), Study.default(), tmp_path_factory.mktemp("report"), "Cohort A")


def test_one_valid_png_per_feature_set_written_and_embedded(report: Path) -> None:
    from matplotlib import image

    pngs = sorted(report.parent.glob("*.png"))
    assert [p.name for p in pngs] == ["eeg.png", "hr.png"]
    page = parse(report)
    assert len(page.imgs) == 2
    for png, src in zip(pngs, page.imgs, strict=True):  # sections in feature-set order, as the files
        data = png.read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        pixels = image.imread(png)
        assert pixels.shape[0] > 300 and pixels.shape[1] > 600
        assert pixels.std() > 0.01  # not a blank canvas
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == data


def test_a_set_of_many_features_is_split_into_pngs_of_bounded_height(tmp_path: Path) -> None:
    """64-channel EEG releases hundreds of features: one PNG per set would be 3.6 inches per
    feature (past matplotlib's and browsers' image limits); the set continues in part files."""
    from matplotlib import image

    n = 2 * PANELS_PER_PNG + 3
    rows = [record("eeg", f"alpha_rel@ch{c:02d}", "2026-12-01T00:00:00Z", 3600.0, 0.3, 0.01, 200) for c in range(n)]
    index = write_report(rows, Study.default(), tmp_path, "many")
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["eeg-part2.png", "eeg-part3.png", "eeg.png"]
    heights = {p: image.imread(tmp_path / p).shape[0] for p in pngs}
    assert max(heights.values()) <= PANELS_PER_PNG * 360 + 100, heights
    assert heights["eeg-part3.png"] < heights["eeg.png"]  # 3 features against 8
    assert len(parse(index).imgs) == 3 and len(parse(index).tables) == n


def test_table_values_match_the_input(report: Path) -> None:
    page = parse(report)
    assert set(page.tables) == {"hr", "alpha_rel@frontal", "theta_rel@frontal"}
    for e in synthetic():
        rows = page.tables[e["feature"]]
        length = "1 day" if e["period"]["seconds"] == 86400 else "1 h"
        (row,) = [r for r in rows if r[0] == e["period"]["start"] and r[1] == length]
        lo, hi = e["ci95"]
        share = "n/a" if e["present_share"] is None else f"{e['present_share']:.4g}"
        assert row[2:] == [f"{e['estimate']:.4g}", f"[{lo:.4g}, {hi:.4g}]", str(e["reports"]), share]
    # the day row follows the hour that starts it; rows are in time order
    assert [r[1] for r in page.tables["hr"]][:2] == ["1 h", "1 day"]


def test_warning_only_for_too_wide_intervals_with_the_planners_cohort(report: Path) -> None:
    page = parse(report)
    (warning,) = page.warnings  # theta: +-0.2 on bounds [0, 1]; hr +-1.5 on [40, 180] and alpha +-0.004 are useful
    need = devices_for(Study.default(), "theta_rel@frontal", 0.05, expected={"theta_rel@frontal": 0.25})
    assert "6 of 6 intervals" in warning and f"needs about {need:,} devices" in warning
    assert 'class="wide"' in report.read_text()


def test_budget_paragraph_states_the_study() -> None:
    study = from_mapping({"budget": {"epsilon_per_day": 1.5, "lifetime_epsilon": 30.0, "scheduling": "population"},
                          "sets": {"hr": {"features": ["hr"], "period": "1h", "epsilon_per_day": 1.2,
                                          "reports_per_day": 3}}}, "cohort.toml")
    text = budget_paragraph(study, synthetic())
    assert "Study: cohort.toml" in text
    assert "epsilon 1.5 per UTC day" in text and "epsilon 30 over its lifetime" in text
    assert "spends 1.2 per day" in text and "after 25 days" in text
    assert "3 of the day's 24 periods" in text and "each report spending epsilon 0.4" in text
    assert "duchi (epsilon 0.4 per value)" in text
    budget = from_mapping({"budget": {"scheduling": "budget"}, "sets": {"hr": {"features": ["hr"]}}}, "b.toml")
    assert "released under population scheduling, not this study's budget" in budget_paragraph(budget, synthetic())


def test_hostile_strings_are_escaped(tmp_path: Path) -> None:
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)> $x^{$'
    rows = [record("hr", evil, "2026-12-01T00:00:00Z", 600.0, 70.0, 1.0, 9),
            record("hr", evil, "2026-12-01T00:10:00Z", 600.0, 71.0, 1.0, 9)]
    rows[0]["feature_set"] = rows[1]["feature_set"] = evil
    index = write_report(rows, Study.default(), tmp_path, title=evil + " & co")
    text = index.read_text()
    assert evil not in text and "<script>alert" not in text
    assert text.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") >= 4  # title, h1, h2, h3 (at least)
    assert len(parse(index).imgs) == 1
    (png,) = tmp_path.glob("*.png")  # a name with nothing a shell or a URL would read
    assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*\.png", png.name), png.name


def test_files_round_trip_and_errors(tmp_path: Path) -> None:
    records = synthetic()
    for name in ("a.csv", "a.jsonl"):
        write_aggregates(tmp_path / name, records)
        assert read_aggregates(tmp_path / name) == records
    with pytest.raises(ConfigError, match="no aggregate records"):
        write_report([], Study.default(), tmp_path / "out")
    with pytest.raises(ConfigError, match=r"cannot read aggregates file .*missing\.csv"):
        read_aggregates(tmp_path / "missing.csv")
    (tmp_path / "bad.jsonl").write_text('{"v": 1, "feature": "hr"}\n')
    with pytest.raises(ConfigError, match=r"bad\.jsonl:1: not an aggregate record"):
        read_aggregates(tmp_path / "bad.jsonl")
    (tmp_path / "bad.csv").write_text("feature,estimate\nhr,1\n")
    with pytest.raises(ConfigError, match="missing column"):
        read_aggregates(tmp_path / "bad.csv")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    write_aggregates(tmp_path / "a.csv", synthetic())
    out = tmp_path / "rep"
    assert main(["report", "--aggregates", str(tmp_path / "a.csv"), "--feature", "hr", "--title", "T",
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out / "index.html")
    assert "7 of 19 estimates" in captured.err
    assert [p.name for p in out.glob("*.png")] == ["hr.png"] and set(parse(out / "index.html").tables) == {"hr"}

    (tmp_path / "empty.jsonl").write_text("")
    for argv, message in (
        (["--aggregates", str(tmp_path / "nope.csv")], "cannot read aggregates file"),
        (["--aggregates", str(tmp_path / "empty.jsonl")], "holds no aggregate records"),
        (["--aggregates", str(tmp_path / "a.csv"), "--feature", "heart"], "no aggregates of feature 'heart'"),
    ):
        assert main(["report", *argv, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("biopriv: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_report_is_deterministic(tmp_path: Path, report: Path) -> None:
    again = write_report(synthetic(), Study.default(), tmp_path, "Cohort A")
    assert again.read_text() == report.read_text()
    assert re.search(r"<title>Cohort A</title>", again.read_text())
