"""The report renders in a real browser: headless Chromium (the Debian package) opens index.html
from disk, every <img> decodes (the page's own script counts them into <body data-rendered>), and
the console shows no uncaught error. Skipped, with the reason, only where Chromium is not installed
(``.ci/run`` installs it on CI machines)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from test_report import synthetic

from pipeline.report import write_report
from pipeline.study import Study

pytestmark = pytest.mark.browser
CHROMIUM = Path("/usr/bin/chromium")


def render(page: Path, profile: Path) -> tuple[dict[str, str], str]:
    """``page`` loaded by headless Chromium: the <body> attributes of the DOM after the load event,
    and Chromium's log (console messages included)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install the Debian package `chromium` (.ci/run does on CI)")
    done = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    body = re.search(r"<body([^>]*)>", done.stdout)
    assert body is not None, done.stdout[:2000]
    return dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1))), done.stderr


def errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if "Uncaught" in line or ":CONSOLE" in line and "rror" in line]


def test_report_renders_every_plot_without_console_errors(tmp_path: Path) -> None:
    index = write_report(synthetic(), Study.default(), tmp_path / "report", "Rendered")
    body, log = render(index, tmp_path / "profile")
    assert body.get("data-images") == "2" and body.get("data-rendered") == "2", body
    assert errors(log) == []


def test_the_check_sees_a_broken_image_and_a_script_error(tmp_path: Path) -> None:
    """The same check on a page spoiled on purpose: one image that does not decode, one throwing script."""
    index = write_report(synthetic(), Study.default(), tmp_path / "report", "Spoiled")
    text = index.read_text().replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1)
    text = text.replace("<body>", "<body>\n<script>notDefinedAnywhere();</script>", 1)
    spoiled = index.with_name("spoiled.html")
    spoiled.write_text(text)
    body, log = render(spoiled, tmp_path / "profile")
    assert body.get("data-images") == "2" and body.get("data-rendered") == "1", body
    assert any("notDefinedAnywhere" in line for line in errors(log)), log[-2000:]
