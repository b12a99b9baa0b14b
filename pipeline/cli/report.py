"""``biopriv report``: a self-contained HTML report with plots from aggregate records."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``report`` subcommand."""
    from connectors.kafka import DEFAULT_PREFIX
    from pipeline.cli.options import add_client_options

    p = subparsers.add_parser(
        "report",
        help="an HTML report with plots from aggregate estimates (a file or the aggregates topic)",
        description="Write OUT/index.html, a self-contained page (plots embedded), and one PNG per feature set "
        "beside it: per feature the estimate of every period with its 95 % interval band, the UTC day "
        "estimates, the reports behind each, a table of the values, the study's budget model in one paragraph, "
        "and a warning when intervals are too wide to be useful. Reads the records `biopriv aggregate --out` "
        "wrote (--aggregates FILE, CSV or JSON lines) or the latest record of every group in the compacted "
        "<prefix>aggregates topic (--from-topic). See docs/analysis.md.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--aggregates", type=Path, default=None, metavar="FILE",
                     help="aggregates file written by `biopriv aggregate --out` (.csv or .jsonl)")
    src.add_argument("--from-topic", action="store_true", help="read the <prefix>aggregates topic instead")
    p.add_argument("--study", type=Path, default=None, metavar="FILE",
                   help="the study the releases were made under, for the budget model (default: built-in)")
    p.add_argument("--feature", nargs="+", default=None, metavar="NAME", help="report only these features")
    p.add_argument("--title", default="biopriv report", help="the report's title (default %(default)r)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for index.html and the PNGs")
    add_client_options(p)
    p.add_argument("--topic-prefix", default=DEFAULT_PREFIX,
                   help="prefix of every topic name, with --from-topic (default %(default)r)")
    p.set_defaults(func=run)


def from_topic(args: argparse.Namespace) -> tuple[list[dict[str, Any]], str]:
    """The latest aggregate record of every group in ``<prefix>aggregates``, and the topic's name."""
    from connectors.kafka import Topics, check_broker, read_latest
    from pipeline.aggregate import check_record
    from pipeline.cli.options import client_options

    security = client_options(args)
    check_broker(args.bootstrap, security=security)
    topic = Topics.with_prefix(args.topic_prefix).prefix + "aggregates"
    records = []
    for key, value in sorted(read_latest(args.bootstrap, topic, security=security).items(), key=lambda kv: kv[0] or b""):
        if value is None:
            continue  # a deleted group
        try:
            doc = json.loads(value)
        except ValueError:
            doc = None
        records.append(check_record(doc, f"{topic} key {key!r}"))
    return records, topic


def run(args: argparse.Namespace) -> int:
    from pipeline.aggregate import read_aggregates
    from pipeline.report import select_features, write_report
    from pipeline.study import load_study

    study = load_study(args.study)
    if args.from_topic:
        records, source = from_topic(args)
    else:
        records, source = read_aggregates(args.aggregates), str(args.aggregates)
    if not records:
        from pipeline.errors import ConfigError

        raise ConfigError(f"{source} holds no aggregate records (run `biopriv aggregate` first)")
    chosen = select_features(records, args.feature)
    print(f"report: {len(chosen)} of {len(records)} estimates from {source}", file=sys.stderr)
    index = write_report(chosen, study, args.out, args.title)
    sets = len({e["feature_set"] for e in chosen})
    print(f"report: wrote {index} and {sets} plot(s) beside it", file=sys.stderr)
    print(index)
    return 0
