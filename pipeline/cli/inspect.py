"""``biopriv inspect``: what a recording holds and which streams replay would produce."""

from __future__ import annotations

import argparse
import json
from datetime import UTC
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``inspect`` subcommand."""
    p = subparsers.add_parser(
        "inspect",
        help="show channels, rates, duration and the streams replay would produce",
        description="Read recordings the way `biopriv replay` does and show, per file, its format and "
        "duration, the streams replay would send (rate, channels, units, frame size, frames per pass) "
        "and the channels it would skip, with the reason.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="recording(s), as for `biopriv replay`")
    p.add_argument("--channels", default=None, metavar="A,B,...", help="keep only these channels, as for replay")
    p.add_argument("--rename", action="append", default=[], metavar="OLD=NEW", help="rename a channel (repeatable)")
    p.add_argument(
        "--stream",
        action="append",
        default=[],
        metavar="CHANNEL=STREAM",
        help="force the stream of a channel or CSV column (repeatable)",
    )
    p.add_argument(
        "--frame-ms",
        action="append",
        default=[],
        metavar="[STREAM=]MS",
        help="frame duration in ms as for replay, to show frame sizes (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per file instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the description of every FILE."""
    from connectors.recordings import describe, open_recording
    from connectors.replay import frame_samples_for
    from pipeline.cli.replay import parse_frame_ms, parse_pairs

    channels = [c.strip() for c in args.channels.split(",") if c.strip()] if args.channels else None
    rename = parse_pairs(args.rename, "--rename") or None
    streams = parse_pairs(args.stream, "--stream") or None
    frame_s = parse_frame_ms(args.frame_ms)
    for f in args.files:
        rec = open_recording(f, channels=channels, rename=rename, streams=streams)
        info = describe(rec)
        for name, s in rec.streams.items():
            n = frame_samples_for(name, s.rate, frame_s)
            info["streams"][name]["frame_samples"] = n
            info["streams"][name]["frame_ms"] = n / s.rate * 1000.0
            info["streams"][name]["frames_per_pass"] = -(-s.n_samples // n)
        if args.json:
            print(json.dumps(info))
        else:
            print(format_text(info))
    return 0


def _short(names: list[str], limit: int = 8) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", ... (+{len(names) - limit})"


def format_text(info: dict[str, Any]) -> str:
    """Text rendering of an inspect description."""
    lines = [f"{info['path']}: {info['format'].upper()}, {info['duration_s']:.3f} s"]
    start = next((s["start_ns"] for s in info["streams"].values() if s["start_ns"] is not None), None)
    if start is not None:
        from datetime import datetime

        lines[0] += f", recorded {datetime.fromtimestamp(start / 1e9, tz=UTC).isoformat()}"
    lines.append("  streams replay would produce (one device per replayed file):")
    for name, s in info["streams"].items():
        lines.append(
            f"    {name:<5} ({s['modality']}) {s['rate_hz']:g} Hz, {s['n_channels']} ch [{', '.join(s['units'])}], "
            f"{s['n_samples']} samples, {s['duration_s']:.3f} s; frames of {s['frame_samples']} samples "
            f"({s['frame_ms']:.1f} ms), {s['frames_per_pass']} per pass"
        )
        lines.append(f"          channels: {_short(s['channels'])}")
        if s["filled_invalid_samples"]:
            lines.append(f"          {s['filled_invalid_samples']} invalid (NaN) samples held from the previous value")
    if info["skipped"]:
        lines.append("  skipped channels:")
        for sk in info["skipped"]:
            lines.append(f"    {sk['channel']}: {sk['reason']}")
    return "\n".join(lines)
