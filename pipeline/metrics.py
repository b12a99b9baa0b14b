"""The worker's metrics in Prometheus text format, and its health.

Counters are read from the processor and the worker when scraped (nothing is added to the per-frame
path but one histogram observation per release). Base units (seconds), sub-millisecond buckets.
No label names a device or a pseudonym: streams, feature sets, reasons and raw partitions only.

* ``biopriv_frames_total{stream}``, ``biopriv_releases_total{feature_set}``,
  ``biopriv_suppressed_total{reason}``, ``biopriv_dead_letters_total{reason}``,
  ``biopriv_replayed_total``;
* ``biopriv_core_seconds_total`` (processing core time) and ``biopriv_frame_to_release_seconds``
  (histogram: release built minus send time of the frame that completed it);
* ``biopriv_consumer_lag{topic,partition}`` (high watermark minus consumed, per raw partition);
* ``biopriv_checkpoint_age_seconds`` (since the last checkpoint written), ``biopriv_checkpoints_total``;
* ``biopriv_epsilon_spent_total`` (lifetime epsilon summed over the fleet the worker holds),
  ``biopriv_devices``;
* ``biopriv_broker_retries_total`` (attempts, of sends, commits and reads, retried after a broker
  failure), ``biopriv_send_retries_total`` (records sent again after their send failed),
  ``biopriv_broker_outages_total``, ``biopriv_broker_outage_seconds_total`` (the current
  outage included; ``docs/operations.md``, "Broker outages");
* ``biopriv_ready`` (1 when partitions are assigned, no recovery is under way and the broker is not out).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

#: Latency buckets, seconds: 0.25 ms to 2 s.
BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.05, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0)

CONTENT_TYPE = "text/plain; version=0.0.4"


class GcPauses:
    """The garbage collector's full (generation 2) collections and their pauses, from
    ``gc.callbacks``: a pause stops the event loop, so it lands in the latency tail."""

    def __init__(self) -> None:
        self.count, self.total_s, self.max_s = 0, 0.0, 0.0  # max since the last :meth:`take_max`
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._t0 = time.perf_counter()
        elif self._t0:
            pause, self._t0 = time.perf_counter() - self._t0, 0.0
            self.count += 1
            self.total_s += pause
            self.max_s = max(self.max_s, pause)

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def take_max(self) -> float:
        """The longest pause since the last call, seconds."""
        top, self.max_s = self.max_s, 0.0
        return top


class _WorkerCollector(Collector):
    def __init__(self, worker: Any) -> None:
        self.worker = worker

    def collect(self) -> Iterator[Any]:
        w = self.worker
        s = w.processor.stats
        frames = CounterMetricFamily("biopriv_frames", "Frames processed, by stream", labels=["stream"])
        for k, v in sorted(s.frames_by_stream.items()):
            frames.add_metric([k], v)
        yield frames
        rel = CounterMetricFamily("biopriv_releases", "Releases published, by feature set", labels=["feature_set"])
        for k, v in sorted(s.releases_by_set.items()):
            rel.add_metric([k], v)
        yield rel
        sup = CounterMetricFamily("biopriv_suppressed", "Releases suppressed, by reason", labels=["reason"])
        for k, v in sorted(s.suppressed_by_reason.items()):
            sup.add_metric([k], v)
        yield sup
        dead = CounterMetricFamily("biopriv_dead_letters", "Messages dead-lettered, by reason", labels=["reason"])
        for k, v in sorted(s.by_reason.items()):
            dead.add_metric([k], v)
        yield dead
        yield CounterMetricFamily("biopriv_replayed", "Windows recognized as replays (not published again)",
                                  value=s.replayed)
        yield CounterMetricFamily("biopriv_core_seconds", "Time spent in the processing core", value=s.busy_ns / 1e9)
        lag = GaugeMetricFamily("biopriv_consumer_lag", "High watermark minus consumed offset, per raw partition",
                                labels=["topic", "partition"])
        for tp, n in sorted(w.lag().items()):
            lag.add_metric([tp[0], str(tp[1])], n)
        yield lag
        yield CounterMetricFamily("biopriv_checkpoints", "Checkpoints written", value=w.checkpoints)
        age = time.monotonic() - w.last_checkpoint if w.last_checkpoint is not None else float("nan")
        yield GaugeMetricFamily("biopriv_checkpoint_age_seconds", "Seconds since the last checkpoint was written",
                                value=age)
        engine = w.processor.engine
        devices = engine.devices()
        spent = sum(float(engine.spent(d).get("lifetime_epsilon", 0.0)) for d in devices)
        yield CounterMetricFamily("biopriv_epsilon_spent", "Lifetime epsilon spent, summed over the devices held",
                                  value=spent)
        yield GaugeMetricFamily("biopriv_devices", "Devices with a privacy ledger on this worker", value=len(devices))
        o = w.outage
        yield CounterMetricFamily("biopriv_broker_retries", "Attempts (sends, commits, reads) retried after a broker failure",
                                  value=o.retries_total)
        yield CounterMetricFamily("biopriv_send_retries", "Records sent again after their send failed",
                                  value=o.resent_total)
        yield CounterMetricFamily("biopriv_broker_outages", "Broker outages ridden out or under way", value=o.outages_total)
        yield CounterMetricFamily("biopriv_broker_outage_seconds", "Seconds spent in broker outages, the current one included",
                                  value=o.seconds_total())
        yield GaugeMetricFamily("biopriv_ready", "1 when partitions are assigned and recovered and the broker answers",
                                value=int(w.ready()))


class WorkerMetrics:
    """The registry of one worker: scrape-time counters plus the release latency histogram."""

    def __init__(self, worker: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_WorkerCollector(worker))
        self.latency = Histogram("biopriv_frame_to_release_seconds",
                                 "Release built minus send time of the frame that completed it",
                                 buckets=BUCKETS, registry=self.registry)

    def observe_release(self, last_send_ns: int, t_release_ns: int) -> None:
        if last_send_ns > 0:
            self.latency.observe(max(0.0, (t_release_ns - last_send_ns) / 1e9))

    def text(self) -> bytes:
        return generate_latest(self.registry)
