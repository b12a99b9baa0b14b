"""Which Python Kafka client keeps up as the latency benchmark's load generator?

Run:  .venv/bin/python benchmarks/latency/loadgen_check.py [--seconds 10] [--bootstrap 127.0.0.1:9092]

Sends the first ``--seconds`` of the standard schedule (pre-encoded frames, send time patched in
place, as ``run.py`` does) paced at the due times to a scratch topic, once with aiokafka and once
with kafka-python (acks=all, no linger for both), and reports the generator's lag behind the
schedule and the CPU it used. Writes benchmarks/results/loadgen_check.json. Nothing consumes the
frames: this measures the sender only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

import numpy as np  # noqa: E402
from workload import build_schedule, load_workload, stamp  # noqa: E402


def _stats(lag_ns: list[int], cpu_s: float, seconds: float, n: int) -> dict[str, float]:
    a = np.asarray(lag_ns, dtype=np.float64) / 1e6
    return {"frames": n, "lag_p50_ms": round(float(np.median(a)), 3), "lag_p99_ms": round(float(np.percentile(a, 99)), 3),
            "lag_max_ms": round(float(a.max()), 3), "cpu_percent_of_one_core": round(100 * cpu_s / seconds, 1),
            "cpu_us_per_frame": round(1e6 * cpu_s / n, 1)}


async def with_aiokafka(sched, n: int, topic: str, bootstrap: str) -> tuple[list[int], float]:
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0, max_request_size=2 * 1024 * 1024)
    await p.start()
    lags = []
    cpu0 = time.process_time()
    start = time.time_ns() + 200_000_000
    for i in range(n):
        target = start + int(sched.due_ns[i])
        now = time.time_ns()
        if target > now:
            await asyncio.sleep((target - now) / 1e9)
            now = time.time_ns()
        await p.send(topic, stamp(sched.values[i], int(sched.stamp_at[i]), now), key=sched.keys[int(sched.plan_idx[i])])
        lags.append(now - target)
    await p.flush()
    cpu = time.process_time() - cpu0
    await p.stop()
    return lags, cpu


def with_kafka_python(sched, n: int, topic: str, bootstrap: str) -> tuple[list[int], float]:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0, max_request_size=2 * 1024 * 1024)
    lags = []
    cpu0 = time.process_time()
    start = time.time_ns() + 200_000_000
    for i in range(n):
        target = start + int(sched.due_ns[i])
        now = time.time_ns()
        if target > now:
            time.sleep((target - now) / 1e9)
            now = time.time_ns()
        p.send(topic, stamp(sched.values[i], int(sched.stamp_at[i]), now), key=sched.keys[int(sched.plan_idx[i])])
        lags.append(now - target)
    p.flush()
    cpu = time.process_time() - cpu0  # includes kafka-python's I/O thread
    p.close()
    return lags, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    args = ap.parse_args()
    from connectors.kafka import TopicSpec, delete_topics, ensure_topics

    wl = load_workload("standard", short=True)
    sched = build_schedule(wl, end_s=args.seconds)
    n = len(sched)
    topic = f"bench-loadgen-{uuid.uuid4().hex[:8]}"
    ensure_topics(args.bootstrap, [TopicSpec(topic, 6)])
    out = {"seconds": args.seconds, "frames_per_s": wl.frames_per_s(), "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    try:
        lags, cpu = asyncio.run(with_aiokafka(sched, n, topic, args.bootstrap))
        out["aiokafka"] = _stats(lags, cpu, args.seconds, n)
        lags, cpu = with_kafka_python(sched, n, topic, args.bootstrap)
        out["kafka_python"] = _stats(lags, cpu, args.seconds, n)
    finally:
        delete_topics(args.bootstrap, [topic])
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    res = HERE.parents[0] / "results" / "loadgen_check.json"
    res.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
