"""``biopriv report --from-topic`` on a live broker: the latest record of each group in a fresh
prefix's compacted aggregates topic becomes the report's tables and plots."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.kafka import TopicSpec, delete_topics, ensure_topics, make_producer

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix(kafka_bootstrap: str) -> Iterator[str]:
    """A fresh topic prefix with its compacted aggregates topic (as `biopriv aggregate` creates it)."""
    p = f"r{uuid.uuid4().hex[:10]}."
    ensure_topics(kafka_bootstrap, [TopicSpec(p + "aggregates", 1, (("cleanup.policy", "compact"),))])
    yield p
    delete_topics(kafka_bootstrap, [p + "aggregates"])


def aggregate_record(start: str, estimate: float) -> dict[str, object]:
    return {"v": 1, "feature_set": "temp", "feature": "temp_mean", "period": {"start": start, "seconds": 600.0},
            "estimate": estimate, "std_error": 0.1, "ci95": [estimate - 0.196, estimate + 0.196], "reports": 40,
            "present_share": 1.0, "mechanism": "duchi", "epsilon": 0.2, "scheduling": "population"}


def report(bootstrap: str, prefix: str, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "report", "--from-topic", "--bootstrap", bootstrap,
                           "--topic-prefix", prefix, "--title", "live", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)


def test_report_from_the_aggregates_topic(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    starts = ["2026-12-01T10:00:00Z", "2026-12-01T10:10:00Z", "2026-12-01T10:20:00Z"]
    producer = make_producer(kafka_bootstrap)
    # the first group is published twice (an aggregator rerun): only its latest estimate counts
    for start, estimate in [(starts[0], 31.0), *zip(starts, (33.5, 33.25, 33.75), strict=True)]:
        key = f"temp|temp_mean|{start}|600"
        producer.send(prefix + "aggregates", key=key.encode(), value=json.dumps(aggregate_record(start, estimate)).encode())
    producer.flush()
    producer.close()

    done = report(kafka_bootstrap, prefix, tmp_path / "rep")
    assert done.returncode == 0, done.stderr
    index = Path(done.stdout.strip())
    assert index == tmp_path / "rep" / "index.html"
    assert "3 of 3 estimates" in done.stderr
    html = index.read_text()
    assert (tmp_path / "rep" / "temp.png").read_bytes().startswith(b"\x89PNG")
    assert html.count("<img ") == 1
    for start, estimate in zip(starts, ("33.5", "33.25", "33.75"), strict=True):
        assert f"<td>{start}</td><td>10 min</td><td>{estimate}</td>" in html
    assert "<td>31</td>" not in html


def test_missing_topic_is_one_line_error(kafka_bootstrap: str, tmp_path: Path) -> None:
    done = report(kafka_bootstrap, f"none{uuid.uuid4().hex[:8]}.", tmp_path / "rep")
    assert done.returncode == 2
    assert done.stderr.startswith("biopriv: error: ") and "aggregates does not exist" in done.stderr
    assert done.stderr.count("\n") == 1
