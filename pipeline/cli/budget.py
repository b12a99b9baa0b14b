"""``biopriv budget``: epsilon spent and remaining per device, from the worker's durable ledger."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``budget`` subcommand."""
    from connectors.kafka import DEFAULT_PREFIX
    from pipeline.cli.options import add_client_options

    p = subparsers.add_parser(
        "budget",
        help="epsilon spent and remaining per pseudonym (operators: reads the sealed ledger)",
        description="Read the state topic with the worker's key file, open the ledgers and print per pseudonym "
        "the epsilon spent and remaining on its latest day of data (UTC day rule) and in its lifetime. The ledger is as "
        "private as the raw data: this needs the key file and read access to <prefix>state.",
    )
    add_client_options(p)
    p.add_argument("--topic-prefix", default=DEFAULT_PREFIX, help="prefix of every topic name (default %(default)r)")
    p.add_argument("--key-file", type=Path, default=Path(".biopriv/keys.json"), help="the workers' key file (default %(default)s)")
    p.add_argument("--extra-key-file", type=Path, action="append", default=[], metavar="PATH", help="further key files (repeatable)")
    p.add_argument("--study", type=Path, default=None, metavar="FILE", help="the workers' study (default: built-in)")
    p.add_argument("--json", action="store_true", help="one JSON object per pseudonym")
    p.set_defaults(func=run)


def budget_rows(ledgers: dict[str, dict[str, Any]], keys: Any, study: Any, now_ns: int) -> list[dict[str, Any]]:
    """Per device (by pseudonym): spent and remaining on its latest UTC day of capture time (the
    day rule) and in its lifetime, from ledger slices."""
    from pipeline.privacy import PrivacyEngine
    from pipeline.privacy.accountant import LEDGER_FORMAT, UNITS_PER_EPSILON

    engine = PrivacyEngine(study.privacy_config(), keys,
                           ledger_state={"format": LEDGER_FORMAT, "units_per_epsilon": UNITS_PER_EPSILON, "devices": ledgers})
    from datetime import UTC, datetime

    rows = []
    for device in sorted(ledgers):
        spent = engine.spent(device)
        periods = {int(k): float(v) for k, v in spent.get("periods", {}).items()}
        latest = max(periods, default=now_ns // (86_400 * 10**9))  # the device's latest UTC day (capture time)
        day = periods.get(latest, 0.0)
        life = float(spent.get("lifetime_epsilon", 0.0))
        rows.append({
            "pseudonym": keys.pseudonym(device),
            "day": datetime.fromtimestamp(latest * 86_400, UTC).strftime("%Y-%m-%d"),
            "day_spent": round(day, 9), "day_remaining": round(max(0.0, study.epsilon_per_day - day), 9),
            "lifetime_spent": round(life, 9),
            "lifetime_remaining": round(max(0.0, study.lifetime_epsilon - life), 9),
        })
    return sorted(rows, key=lambda r: r["pseudonym"])


def run(args: argparse.Namespace) -> int:
    from connectors.kafka import Topics, broker_errors, make_consumer, read_partition
    from pipeline.cli.options import client_options
    from pipeline.privacy import load_keys
    from pipeline.state import StateCipher, load_partition
    from pipeline.study import load_study

    study = load_study(args.study)
    keys = load_keys(args.key_file, *args.extra_key_file)
    security = client_options(args)
    topic = Topics.with_prefix(args.topic_prefix).state
    with broker_errors(args.bootstrap, security, f"read {topic}"):
        consumer = make_consumer([], args.bootstrap, security=security)
        try:
            parts = sorted(consumer.partitions_for_topic(topic) or ())
        finally:
            consumer.close()
    cipher = StateCipher(keys)
    ledgers: dict[str, dict[str, Any]] = {}
    for p in parts:
        records = read_partition(args.bootstrap, topic, p, security=security)
        ledgers.update(load_partition(((k, v) for k, v, _o in records), cipher).devices)
    rows = budget_rows(ledgers, keys, study, time.time_ns())
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print(f"{'PSEUDONYM':<34} {'DAY':<10} {'DAY SPENT':>11} {'REMAINING':>10} {'LIFETIME SPENT':>14} {'REMAINING':>10}")
    for r in rows:
        print(f"{r['pseudonym']:<34} {r['day']:<10} {r['day_spent']:>11.4g} {r['day_remaining']:>10.4g} {r['lifetime_spent']:>14.4g} "
              f"{r['lifetime_remaining']:>10.4g}")
    print(f"{len(rows)} devices; daily cap {study.epsilon_per_day:g}, lifetime cap {study.lifetime_epsilon:g}")
    return 0
