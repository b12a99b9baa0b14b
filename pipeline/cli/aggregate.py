"""``biopriv aggregate``: population estimates with intervals from the private topic."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.validation import check_range


def register(subparsers: Any) -> None:
    """Add the ``aggregate`` subcommand."""
    from connectors.kafka import DEFAULT_PREFIX
    from pipeline.cli.options import add_client_options

    p = subparsers.add_parser(
        "aggregate",
        help="estimates with 95 %% intervals per feature and period, from the private topic",
        description="Read the private features topic from its beginning (no consumer group: nothing to lose on a "
        "crash, the topic is the state), deduplicate by release_id, and keep per feature and report period (and "
        "per UTC day) the unbiased estimate of the mean over devices with a value, its standard error and 95 % "
        "interval. Publishes each changed group's estimate to <prefix>aggregates (--no-publish to skip) and "
        "writes all estimates to --out (CSV or JSON lines, by extension) when it stops: after --until-idle "
        "seconds without a new release, or on Ctrl-C. Schema: docs/analysis.md.",
    )
    add_client_options(p)
    p.add_argument("--topic-prefix", default=DEFAULT_PREFIX, help="prefix of every topic name (default %(default)r)")
    p.add_argument("--until-idle", type=float, default=None, metavar="S",
                   help="stop after S seconds without a new release (a batch job); default: follow until Ctrl-C")
    p.add_argument("--out", type=Path, default=None, metavar="FILE", help="write the estimates here (.csv or .jsonl)")
    p.add_argument("--no-publish", action="store_true", help="do not write to <prefix>aggregates")
    p.add_argument("--feature", nargs="+", default=None, metavar="NAME",
                   help="estimate only these features (default: every feature in the releases)")
    p.set_defaults(func=run)


def print_days(estimates: list[dict[str, Any]]) -> None:
    """The UTC-day estimates as a table on stdout (the per-period ones go to ``--out``)."""
    from pipeline.aggregate import DAY_S

    days = sorted((e for e in estimates if e["period"]["seconds"] == DAY_S),
                  key=lambda e: (e["period"]["start"], e["feature_set"], e["feature"]))
    if not days:
        return
    print(f"{'FEATURE':<22} {'UTC DAY':<10} {'ESTIMATE':>10}  {'95 % INTERVAL':<24} {'REPORTS':>8}")
    for e in days:
        low, high = e["ci95"]
        print(f"{e['feature']:<22} {e['period']['start'][:10]:<10} {e['estimate']:>10.4g}  "
              f"{f'[{low:.4g}, {high:.4g}]':<24} {e['reports']:>8,}")


def run(args: argparse.Namespace) -> int:
    from connectors.kafka import (
        Topics,
        TopicSpec,
        broker_errors,
        check_broker,
        ensure_topics,
        make_consumer,
        make_producer,
    )
    from pipeline.aggregate import Aggregator, write_aggregates
    from pipeline.cli.options import client_options

    if args.until_idle is not None:
        check_range("--until-idle", args.until_idle, 0.0, None, low_inclusive=False, unit="s")
    security = client_options(args)
    check_broker(args.bootstrap, security=security)
    topics = Topics.with_prefix(args.topic_prefix)
    out_topic = topics.prefix + "aggregates"
    agg = Aggregator(features=args.feature)
    producer = None
    if not args.no_publish:
        # compacted on the group key: the latest estimate of every feature and period
        ensure_topics(args.bootstrap, [TopicSpec(out_topic, 1, (("cleanup.policy", "compact"),))], security=security)
        producer = make_producer(args.bootstrap, security=security)
    published = 0
    with broker_errors(args.bootstrap, security, f"read {topics.private}"):
        consumer = make_consumer([topics.private], args.bootstrap, security=security, auto_offset_reset="earliest")
        last = time.monotonic()
        try:
            while args.until_idle is None or time.monotonic() - last < args.until_idle:
                changed: set[Any] = set()
                for batch in consumer.poll(timeout_ms=200).values():
                    for rec in batch:
                        try:
                            doc = json.loads(rec.value)
                        except (TypeError, ValueError):
                            agg.rejected += 1
                            continue
                        changed |= agg.add(doc)
                    last = time.monotonic()
                if producer is not None:
                    for e in agg.estimates(changed):
                        key = f"{e['feature_set']}|{e['feature']}|{e['period']['start']}|{e['period']['seconds']:g}"
                        producer.send(out_topic, key=key.encode(), value=json.dumps(e).encode())
                        published += 1
        except KeyboardInterrupt:
            pass
        finally:
            consumer.close()
            if producer is not None:
                producer.flush()
                producer.close()
    estimates = agg.estimates()
    if args.out is not None:
        write_aggregates(args.out, estimates)
    print_days(estimates)
    print(f"aggregate: {agg.releases} releases ({agg.duplicates} duplicates, {agg.rejected} not releases), "
          f"{len(estimates)} estimates" + (f", {published} published to {out_topic}" if producer is not None else "")
          + (f", written to {args.out}" if args.out else ""), file=sys.stderr)
    return 0
