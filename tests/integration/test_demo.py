"""``biopriv demo`` on the live broker, short: releases from every modality, then the analyst's
commands run as a user would (``biopriv aggregate`` -> estimates file, ``biopriv report`` -> HTML),
and each summary feature's private day estimate beside its non-private value."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli.demo import SUMMARY_FEATURES

pytestmark = pytest.mark.integration


def test_demo_ends_with_the_analyst_commands_and_their_output(kafka_bootstrap: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "demo", "--bootstrap", kafka_bootstrap, "--quiet",
                           "--devices", "1", "--seconds", "15", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    out = done.stdout
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "$ biopriv aggregate" in out and "$ biopriv report" in out
    estimates = [json.loads(line) for line in (tmp_path / "estimates.jsonl").read_text().splitlines()]
    days = {e["feature"]: e for e in estimates if e["period"]["seconds"] == 86_400}
    # one device: a day estimate is often absent (a share of devices with a value estimated at or
    # below zero, or an interval that misses the bounds), and then the demo says so. Each summary
    # feature is checked on whichever side it fell
    assert "non-private" in out
    for name in SUMMARY_FEATURES:
        if name in days:
            assert days[name]["reports"] > 0
            # the aggregate command's day table shows the estimate written to the file
            row = next(line for line in out.splitlines() if re.match(rf"\s+{name}\s+\d{{4}}-\d\d-\d\d\s", line))
            assert f"{days[name]['estimate']:.4g}" in row
            assert re.search(rf"^\s+{name}\s+\S+ \[\S+, \S+\]\s+\S+\s+\d+$", out, re.M), name
            assert (tmp_path / "report" / f"{days[name]['feature_set']}.png").exists(), name
        elif re.search(rf"^\s+{name}\s", out, re.M):  # a feature the demo's recordings have
            assert re.search(rf"^\s+{name}\s+no estimate from these releases\s+\S+$", out, re.M), name
    assert "hr" in days or re.search(r"^\s+hr\s+no estimate", out, re.M)  # ECG is in every demo
    index = tmp_path / "report" / "index.html"
    assert index.exists() and ("<img" in index.read_text()) == bool(estimates)
