"""``biopriv features FILE``: the features the pipeline would privatize, per window, before noise.

For checking a recording or a window configuration offline; the values are raw (no noise) and must
never be published.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

STREAMS = ("eeg", "mic", "ppg", "ecg", "eda", "acc", "temp", "resp")


def register(subparsers: Any) -> None:
    """Add the ``features`` subcommand."""
    p = subparsers.add_parser(
        "features",
        help="compute per-window features of a recording offline (before noise; never publish them)",
        description=(
            "Compute, offline, the features the pipeline would privatize for each window of a recording "
            "(EDF/BDF and other MNE formats, WAV, WFDB, CSV: every format replay reads). Values are before "
            "noise: use them to check a recording or a window configuration, never publish them. Times are "
            "in seconds from the start of the recording."
        ),
    )
    p.add_argument("file", metavar="FILE", help="recording file (for WFDB, the .hea file or the record name)")
    p.add_argument("--stream", "-s", choices=STREAMS, action="append",
                   help="only this stream (repeatable); default: every stream of the recording")
    p.add_argument("--json", action="store_true",
                   help='one JSON object per window: {"stream", "feature_set", "window_start_s", "window_end_s", "features"}')
    p.set_defaults(func=run)


def _fmt(v: float) -> str:
    return "nan" if math.isnan(v) else f"{v:.4g}"


def run(args: argparse.Namespace) -> int:
    """Compute and print the features; returns the exit code."""
    from connectors.recordings import open_recording
    from pipeline.errors import RecordingError
    from pipeline.features import feature_sets
    from pipeline.features.offline import iter_features

    rec = open_recording(args.file)
    wanted = args.stream or list(rec.streams)
    missing = [s for s in wanted if s not in rec.streams]
    if missing:
        raise RecordingError(f"{args.file}: no stream {missing}; it has {sorted(rec.streams)}")
    out = sys.stdout
    for name in wanted:
        sd = rec.streams[name]
        for fset in feature_sets(name):
            for wf in iter_features(fset, sd.samples, sd.rate, tuple(sd.channels), tuple(sd.units)):
                if args.json:
                    feats = {k: (None if math.isnan(v) else v) for k, v in wf.features.items()}
                    out.write(json.dumps({"stream": wf.stream, "feature_set": wf.feature_set,
                                          "window_start_s": round(wf.window_start_s, 6),
                                          "window_end_s": round(wf.window_end_s, 6), "features": feats}) + "\n")
                else:
                    shown = list(wf.features.items())
                    text = "  ".join(f"{k}={_fmt(v)}" for k, v in shown[:8])
                    more = f"  (+{len(shown) - 8} more)" if len(shown) > 8 else ""
                    out.write(f"{wf.stream:5} {wf.feature_set:4} {wf.window_start_s:9.2f}-{wf.window_end_s:<9.2f} {text}{more}\n")
    return 0
