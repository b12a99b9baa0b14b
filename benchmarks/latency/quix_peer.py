"""The Quix Streams peer of the latency benchmark: the shell a user would pick instead of the worker's,
around the same processing core, so that the comparison isolates the shell.

A Quix Streams 3 ``Application`` (librdkafka through confluent-kafka) in the benchmark's consumer
group reads the raw topics from the earliest offset. Every message goes through the **same**
:class:`~pipeline.processor.Processor` as ``biopriv worker --per-window`` builds
(:func:`pipeline.app.build_processor`, per-window stress mode, the same key file), and what it
returns is published as the worker publishes it (:func:`pipeline.app.outgoing`): releases to
``<prefix>private.features`` with the ``biopriv-t-release-ns``, ``biopriv-t-frame-send-ns`` and
``biopriv-last-seq`` headers of ``--latency-headers`` (``run.py`` measures both systems from
them), dead letters to ``<prefix>deadletter``, events to ``<prefix>events``.

**Which API, and why.** The StreamingDataFrame API, one dataframe per raw topic (three
dataframes, not ``concat``: a concatenated dataframe makes Quix buffer messages to align
timestamps across topics, which would add latency the worker does not have):

* the input topics deserialize values as raw ``bytes``: the processor decodes frames itself;
* ``.apply(process, expand=True, metadata=True)`` turns one message into zero or more output
  records ``(topic, key, value, headers)`` (the message key, the device id, is needed);
* ``.set_headers`` takes each record's headers, ``.to_topic`` picks its topic with a callable
  and its key with ``key=``; the output topics' value serializer takes the record's ``value``
  bytes (a record is not JSON for Quix to encode: the release bytes are final).

Settings: producer ``acks=all``, ``linger.ms=0`` (as the worker and the other systems); the
consumer keeps librdkafka's defaults (``fetch.min.bytes=1``: a fetch returns as soon as one
frame is there; librdkafka prefetches in its own thread); offsets committed every second
(``commit_interval=1.0``, the worker's checkpoint interval; Quix's default is 5 s), which also
lets ``run.py``'s lag sampler see progress at the same cadence for every system. Quix commits
after flushing its producer (at-least-once).

What it does not do that the worker does (in the peer's favour): no durable state (the privacy
ledger lives in memory only, no checkpoints to ``<prefix>state``, no device headers written
ahead of releases, no rebuild on rebalance), no per-partition fairness limit, no metrics.

Run by ``run.py`` as a subprocess, like ``systems.py``:
``python quix_peer.py quix --bootstrap B --group G --inputs T1,T2,T3 --output <prefix>private.features
--key-file K``. Prints the same JSON counter lines as ``systems.py`` (:class:`systems.Stats`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from systems import Stats, arguments  # noqa: E402

PRIVATE_SUFFIX = "private.features"


def run(args: argparse.Namespace) -> None:
    # quixstreams imports authlib's httpx client (schema registry), deprecated in authlib 1.9;
    # authlib forces its warnings on ("always"), so a filter would not hold: record them instead.
    with warnings.catch_warnings(record=True):
        from quixstreams import Application, message_context
    from quixstreams.models.serializers import Serializer

    from connectors.kafka import OutRecord, Topics
    from pipeline.app import WorkerSettings, build_processor, outgoing
    from pipeline.processor import DeadLetter, Outcome

    topics = Topics.with_prefix(args.output.removesuffix(PRIVATE_SUFFIX))
    processor = build_processor(WorkerSettings(per_window=True, key_file=args.key_file))
    stats = Stats(args.system)

    def process(value: bytes | None, key: bytes | None, timestamp: int, headers: Any) -> list[OutRecord]:
        """One raw message -> the records the worker would publish for it."""
        value = value if value is not None else b""
        t0 = time.perf_counter_ns()
        try:
            outcome = processor.process(value, key)
        except Exception as exc:  # noqa: BLE001 - as the worker: keep going, dead-letter the message
            stats.errors += 1
            outcome = Outcome(dead_letters=[DeadLetter("internal_error", repr(exc)[:500], key, value)])
        stats.busy_ns += time.perf_counter_ns() - t0
        stats.frames += 1
        stats.outputs += len(outcome.releases)
        source = ""
        if outcome.dead_letters:
            ctx = message_context()
            source = f"{ctx.topic}/{ctx.partition}/{ctx.offset}"
        return outgoing(outcome, topics, source, latency_headers=True)

    class RecordValue(Serializer):
        """An output record's value bytes, as they are."""

        def __call__(self, value: OutRecord, ctx: Any) -> bytes:
            return value.value

    with tempfile.TemporaryDirectory(prefix="biopriv-quix-") as state_dir:
        app = Application(
            broker_address=args.bootstrap,
            consumer_group=args.group,
            auto_offset_reset="earliest",
            commit_interval=1.0,
            producer_extra_config={"acks": "all", "linger.ms": 0},
            state_dir=state_dir,
            use_changelog_topics=False,
            auto_create_topics=False,  # run.py created them, as for the other systems
            loglevel="WARNING",
        )
        out = {name: app.topic(name, key_serializer="bytes", value_serializer=RecordValue())
               for name in (topics.private, topics.deadletter, topics.events)}
        for name in args.inputs.split(","):
            sdf = app.dataframe(app.topic(name, key_deserializer="bytes", value_deserializer="bytes"))
            sdf = sdf.apply(process, expand=True, metadata=True)
            sdf = sdf.set_headers(lambda rec, key, ts, headers: list(rec.headers))
            sdf.to_topic(lambda rec, key, ts, headers: out[rec.topic], key=lambda rec: rec.key)
        stop = stats.report_every(args.stats_interval)
        try:
            app.run()  # until SIGTERM / SIGINT: Quix stops, commits and returns
        finally:
            stop.set()
            stats.report()


def main() -> int:
    ap = arguments(__doc__.split("\n\n")[0], ["quix"])
    ap.add_argument("--key-file", type=Path, required=True, help="key file (pseudonyms and noise keys), as the worker's")
    args = ap.parse_args()
    if not args.output.endswith(PRIVATE_SUFFIX):
        ap.error(f"--output must be a <prefix>{PRIVATE_SUFFIX} topic (dead letters and events go beside it), "
                 f"got {args.output!r}")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
