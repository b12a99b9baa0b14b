"""The worker in study mode on a live broker: reports per period instead of per-window releases,
self-describing, accounted in the sealed ledger that ``biopriv budget`` reads back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_worker import T0, consume_all, stream_frames

from connectors.kafka import Topics, make_producer
from pipeline.frames import encode_frame

pytestmark = pytest.mark.integration


def test_worker_releases_study_reports_and_budget_reads_them(kafka_bootstrap: str, topics: Topics, start_worker: Any,
                                                             tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = tmp_path / "study.toml"
    study.write_text('[budget]\nepsilon_per_day = 1.0\nscheduling = "budget"\n'
                     '[sets.temp]\nfeatures = ["temp_mean"]\nperiod = "20s"\nepsilon_per_day = 1.0\n')
    worker = start_worker("--study", str(study))
    frames = stream_frames("band-7", "temp", 4.0, 4, ["skin"], "degC", 100.0, 3, 1.0)
    frames += stream_frames("band-7", "eda", 4.0, 4, ["eda"], "uS", 100.0, 4, 1.0)  # not in the study
    producer = make_producer(kafka_bootstrap)
    for f in frames:
        producer.send(topics.raw("bio"), key=b"band-7", value=encode_frame(f))
    producer.flush()
    producer.close()
    # a period closes when a window past it arrives (10 s windows, 5 s hop): count those that did
    period_ns, last_end = 20 * 10**9, T0 + 100 * 10**9
    periods = [p for p in range(T0 // period_ns, last_end // period_ns + 1) if (p + 1) * period_ns + 5 * 10**9 <= last_end]
    records = consume_all(kafka_bootstrap, topics.private, expect=len(periods), timeout_s=60)
    docs = [json.loads(r.value) for r in records]
    assert worker.alive, worker.log()[-3000:]
    assert "study " in worker.log() and "1 epsilon per device per day" in worker.log()
    assert len(docs) == len(periods), (len(docs), periods)
    for d in docs:
        assert d["feature_set"] == "temp" and d["slot"]["seconds"] == 20
        assert d["design"]["scheduling"] == "budget" and d["design"]["period_s"] == 20
        assert set(d["values"]) <= {"temp_mean", "temp_mean.present"}
        # 1 epsilon a day over 4,320 periods of 20 s: what one report may spend, across its values
        assert sum(n["epsilon"] for n in d["noise"].values()) <= 1.0 / 4320 + 1e-12
    worker.stop()  # final checkpoint: the ledger is durable

    from pipeline.cli import main

    assert main(["budget", "--bootstrap", kafka_bootstrap, "--topic-prefix", topics.prefix,
                 "--key-file", str(tmp_path / "keys.json"), "--study", str(study), "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(rows) == 1 and rows[0]["pseudonym"] == docs[0]["pseudonym"]
    assert rows[0]["lifetime_spent"] == pytest.approx(len(docs) / 4320, abs=1e-8)
    assert rows[0]["day_remaining"] == pytest.approx(1.0 - rows[0]["day_spent"], abs=1e-9)
