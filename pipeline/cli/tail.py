"""``biopriv tail``: print privatized releases from the private features topic."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

from pipeline.validation import check_range

#: Table columns: (title, width).
COLUMNS = (
    ("SLOT_START_UTC", 24),
    ("PSEUDONYM", 16),
    ("STREAM", 6),
    ("FEATURE_SET", 12),
    ("EPSILON", 8),
    ("MECHANISM", 10),
)
#: Features shown per row before "+k more".
FEATURES_SHOWN = 4


def register(subparsers: Any) -> None:
    """Add the ``tail`` subcommand."""
    from connectors.kafka import PRIVATE_TOPIC
    from pipeline.cli.options import add_client_options

    p = subparsers.add_parser(
        "tail",
        help="print privatized feature releases as a table or JSON lines",
        description=f"Consume the private features topic ({PRIVATE_TOPIC}) and print each release: a table "
        "row with a compact feature summary, or the release as one JSON line. Reads without a consumer "
        "group, so it never disturbs other consumers. Stops on Ctrl-C, after --max releases or after "
        "--timeout seconds without a new one.",
    )
    add_client_options(p)
    p.add_argument("--stream", default=None, metavar="S", help="show only releases of this stream (eeg, mic, ecg, ppg, ...)")
    p.add_argument("--pseudonym", default=None, metavar="P", help="show only releases of this pseudonym")
    p.add_argument("--json", action="store_true", help="print each release as one JSON line instead of a table")
    p.add_argument(
        "--from-beginning",
        action="store_true",
        help="start at the oldest release kept by the topic (default: only new releases)",
    )
    p.add_argument("--max", type=int, default=None, metavar="N", help="stop after printing N releases")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="stop after S seconds without a new release (default: wait until Ctrl-C)",
    )
    p.add_argument("--topic", default=PRIVATE_TOPIC, metavar="TOPIC", help=f"topic to read (default {PRIVATE_TOPIC})")
    p.set_defaults(func=run)


def parse_release(value: bytes | None) -> dict[str, Any] | None:
    """The release in a message value, or ``None`` if it is not a JSON object."""
    if value is None:
        return None
    try:
        obj = json.loads(value)
    except (UnicodeDecodeError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def matches(release: dict[str, Any], stream: str | None = None, pseudonym: str | None = None) -> bool:
    """Whether ``release`` passes the ``--stream`` and ``--pseudonym`` filters."""
    if stream is not None and release.get("stream") != stream:
        return False
    return pseudonym is None or release.get("pseudonym") == pseudonym


def header() -> str:
    """The table header line."""
    return " ".join(f"{t:<{w}}" for t, w in COLUMNS) + " FEATURES"


def _num(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, (int, float)):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, list):
        return "[" + ",".join(_num(x) for x in v[:3]) + (",...]" if len(v) > 3 else "]")
    return str(v)


def _cell(v: Any, width: int) -> str:
    s = "?" if v is None else str(v)
    return s if len(s) <= width else s[: width - 1] + "~"


def format_row(release: dict[str, Any]) -> str:
    """One table row; missing or odd fields print as ``?`` rather than failing."""
    feats = release.get("values")
    if isinstance(feats, dict):
        items = [f"{k}={_num(v)}" for k, v in feats.items()]
        summary = " ".join(items[:FEATURES_SHOWN]) + (f" (+{len(items) - FEATURES_SHOWN} more)" if len(items) > FEATURES_SHOWN else "")
    else:
        summary = "?" if feats is None else _num(feats)
    noise = release.get("noise")
    eps = mech = None
    if isinstance(noise, dict) and all(isinstance(n, dict) for n in noise.values()):
        try:
            eps = _num(sum(float(n["epsilon"]) for n in noise.values()))
            mech = ",".join(sorted({str(n["mechanism"]) for n in noise.values()}))
        except (KeyError, TypeError, ValueError):
            pass
    slot = release.get("slot")
    values = (
        slot.get("start") if isinstance(slot, dict) else None,
        release.get("pseudonym"),
        release.get("stream"),
        release.get("feature_set"),
        eps,
        mech,
    )
    return " ".join(f"{_cell(v, w):<{w}}" for v, (_, w) in zip(values, COLUMNS, strict=True)) + " " + summary


def run(args: argparse.Namespace) -> int:
    """Consume and print releases until Ctrl-C, ``--max`` or ``--timeout``."""
    from connectors.kafka import broker_errors, check_broker, make_consumer
    from pipeline.cli.options import client_options

    if args.max is not None and args.max < 1:
        from pipeline.errors import ConfigError

        raise ConfigError(f"--max must be a positive integer, got {args.max}")
    if args.timeout is not None:
        check_range("--timeout", args.timeout, 0.0, low_inclusive=False, unit="s")
    security = client_options(args)
    check_broker(args.bootstrap, security=security)
    consumer = make_consumer(
        [args.topic], args.bootstrap, auto_offset_reset="earliest" if args.from_beginning else "latest",
        security=security,
    )
    printed = skipped = 0
    last = time.monotonic()
    if not args.json:
        print(header(), flush=True)
    try:
        with broker_errors(args.bootstrap, security, f"read {args.topic}"):
            while args.max is None or printed < args.max:
                batches = consumer.poll(timeout_ms=200)
                if not batches:
                    if args.timeout is not None and time.monotonic() - last >= args.timeout:
                        break
                    continue
                last = time.monotonic()
                for records in batches.values():
                    for msg in records:
                        release = parse_release(msg.value)
                        if release is None:
                            skipped += 1
                            continue
                        if not matches(release, args.stream, args.pseudonym):
                            continue
                        print(json.dumps(release, separators=(",", ":")) if args.json else format_row(release), flush=True)
                        printed += 1
                        if args.max is not None and printed >= args.max:
                            break
                    if args.max is not None and printed >= args.max:
                        break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    if skipped:
        print(f"biopriv tail: skipped {skipped} message(s) that are not JSON objects", file=sys.stderr)
    return 0
