"""``biopriv aggregate`` on a live broker: worker (study mode) + devices -> estimates per feature and
period whose intervals contain the offline truth; a kill -9 of the aggregator changes no estimate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_worker import T0, consume_all

from connectors.kafka import Topics, make_producer, read_partition
from pipeline.frames import encode_frame, make_frame

pytestmark = pytest.mark.integration
DEVICES = 24


def aggregate_cmd(bootstrap: str, topics: Topics, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "aggregate", "--bootstrap", bootstrap,
            "--topic-prefix", topics.prefix, *extra]


def aggregate(bootstrap: str, topics: Topics, *extra: str) -> str:
    """Run ``biopriv aggregate`` to its end; returns its summary line (stderr)."""
    done = subprocess.run(aggregate_cmd(bootstrap, topics, *extra), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_aggregate_estimates_contain_the_truth_and_survive_kill9(kafka_bootstrap: str, topics: Topics,
                                                                start_worker: Any, tmp_path: Path) -> None:
    study = tmp_path / "study.toml"
    study.write_text('[budget]\nepsilon_per_day = 86400\nlifetime_epsilon = 1e6\nscheduling = "budget"\n'
                     '[sets.temp]\nfeatures = ["temp_mean"]\nperiod = "20s"\nepsilon_per_day = 86400\n'
                     '[sets.temp.bounds]\ntemp_mean = [30, 40]\n')
    worker = start_worker("--study", str(study))
    rng = np.random.default_rng(3)
    levels = 33.0 + rng.uniform(-1.5, 1.5, DEVICES)
    producer = make_producer(kafka_bootstrap)
    for d in range(DEVICES):
        for k in range(65):
            f = make_frame(f"band-{d}", "temp", k, T0 + k * 10**9, 4.0, ["skin"], "degC",
                           levels[d] + 0.02 * rng.standard_normal((1, 4)))
            producer.send(topics.raw("bio"), key=f.device_id.encode(), value=encode_frame(f))
    producer.flush()
    producer.close()
    period_ns = 20 * 10**9
    closed = [p for p in range(T0 // period_ns, (T0 + 65 * 10**9) // period_ns + 1)
              if (p + 1) * period_ns + 5 * 10**9 <= T0 + 65 * 10**9]
    releases = consume_all(kafka_bootstrap, topics.private, expect=DEVICES * len(closed), timeout_s=60)
    assert len(releases) == DEVICES * len(closed), worker.log()[-3000:]

    ref = tmp_path / "ref.jsonl"
    log = aggregate(kafka_bootstrap, topics, "--until-idle", "3", "--out", str(ref), "--no-publish")
    estimates = [json.loads(x) for x in ref.read_text().splitlines()]
    periods = [e for e in estimates if e["period"]["seconds"] == 20]
    assert {e["feature"] for e in estimates} == {"temp_mean"} and len(periods) == len(closed), log
    # every device's skin temperature is its level (+-0.02 sample noise, negligible here). A report
    # carries epsilon 20 (86,400 per day over 4,320 periods of 20 s), so the 95 % interval is narrow
    # but honest: each estimate must lie within 4 standard errors of the truth (a correct estimator
    # fails this with probability 6e-5 per group) and its interval must be the estimate +- 1.96 SE.
    truth = float(np.mean(levels))
    for e in estimates:
        se = e["std_error"]
        assert abs(e["estimate"] - truth) <= 4 * se, (e, truth)
        assert e["ci95"][0] == pytest.approx(e["estimate"] - 1.96 * se, rel=1e-3, abs=1e-9)
        assert e["reports"] >= 2 and e["scheduling"] == "budget"
    # each report samples one of its two coordinates (the value or its presence bit): about half
    # of a period's DEVICES reports carry the value
    assert sum(e["reports"] for e in periods) <= len(releases)

    # a publishing aggregator killed mid-stream, then run again: the same estimates, and the topic's
    # latest record per group equals them
    victim = subprocess.Popen(aggregate_cmd(kafka_bootstrap, topics, "--until-idle", "60"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(4)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    again = tmp_path / "again.jsonl"
    log_again = aggregate(kafka_bootstrap, topics, "--until-idle", "3", "--out", str(again))
    redone = [json.loads(x) for x in again.read_text().splitlines()]
    assert redone == estimates, (log, log_again, [(a, b) for a, b in zip(estimates, redone, strict=False) if a != b])
    latest: dict[bytes, Any] = {}
    for key, value, _o in read_partition(kafka_bootstrap, topics.prefix + "aggregates", 0):
        latest[key or b""] = json.loads(value or b"null")
    assert sorted(latest.values(), key=json.dumps) == sorted(estimates, key=json.dumps)
