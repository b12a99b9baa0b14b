"""``biopriv features FILE``: the features the pipeline would privatize, per window, before noise.

For checking a recording or a window configuration offline; the values are raw (no noise) and must
never be published. ``--clip-report`` prints, instead of the values, how often each feature fell
outside its public bounds.
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
            "(EDF/BDF and other MNE formats, WAV, WFDB, CSV, BioSPPy text: every format replay reads). Values "
            "are before noise: use them to check a recording or a window configuration, never publish them. "
            "Times are in seconds from the start of the recording. Channel selection, renaming and stream "
            "mapping work as for `biopriv replay`."
        ),
    )
    p.add_argument("file", metavar="FILE", help="recording file (for WFDB, the .hea file or the record name)")
    p.add_argument("--channels", default=None, metavar="A,B,...", help="keep only these channels (names as in the file)")
    p.add_argument("--rename", action="append", default=[], metavar="OLD=NEW", help="rename a channel (repeatable)")
    p.add_argument(
        "--stream", "-s", action="append", default=[], metavar="CHANNEL=STREAM | STREAM",
        help="CHANNEL=STREAM forces the stream of a channel or CSV column, as for replay (e.g. pulse=ppg); "
        f"a bare stream name ({', '.join(STREAMS)}) computes only that stream; repeatable. Default: every stream",
    )
    p.add_argument(
        "--frame-ms", action="append", default=[], metavar="[STREAM=]MS",
        help="frame duration in ms as for replay (default: 125 ms frames)",
    )
    p.add_argument("--json", action="store_true",
                   help='one JSON object per window: {"stream", "feature_set", "window_start_s", "window_end_s", "features"}')
    p.add_argument("--clip-report", action="store_true",
                   help="print, per feature, the share of windows outside its public bounds instead of the values "
                   "(per-channel EEG features pooled by family, with the worst channel)")
    p.add_argument("--no-progress", action="store_true", help="do not show the progress bar (shown on a terminal only)")
    p.set_defaults(func=run)


def _fmt(v: float) -> str:
    return "nan" if math.isnan(v) else f"{v:.4g}"


def split_stream_options(values: list[str]) -> tuple[list[str], list[str]]:
    """``--stream`` values into (stream names to compute, ``CHANNEL=STREAM`` mappings)."""
    from pipeline.errors import ConfigError

    wanted, pairs = [], []
    for v in values:
        if "=" in v:
            pairs.append(v)
        elif v in STREAMS:
            wanted.append(v)
        else:
            raise ConfigError(f"--stream must be CHANNEL=STREAM or one of {', '.join(STREAMS)}, got {v!r}")
    return wanted, pairs


def run(args: argparse.Namespace) -> int:
    """Compute and print the features (or their clip report); returns the exit code."""
    from connectors.recordings import open_recording
    from connectors.replay import frame_samples_for
    from pipeline.cli.replay import parse_frame_ms, parse_pairs
    from pipeline.errors import RecordingError
    from pipeline.features import feature_sets
    from pipeline.features.clip import ClipCounter, format_clip_report
    from pipeline.features.offline import iter_features

    wanted, pairs = split_stream_options(args.stream)
    channels = [c.strip() for c in args.channels.split(",") if c.strip()] if args.channels else None
    rename = parse_pairs(args.rename, "--rename") or None
    mapping = parse_pairs(pairs, "--stream") or None
    frame_ms = parse_frame_ms(args.frame_ms)
    rec = open_recording(args.file, channels=channels, rename=rename, streams=mapping)
    wanted = wanted or list(rec.streams)
    missing = [s for s in wanted if s not in rec.streams]
    if missing:
        raise RecordingError(f"{args.file}: no stream {missing}; it has {sorted(rec.streams)}")
    for name in wanted:
        sd = rec.streams[name]
        if sd.n_filled:  # as `biopriv inspect` reports them; stderr keeps --json output clean
            print(f"{name}: {sd.n_filled} invalid (NaN) samples held from the previous value", file=sys.stderr)
    out = sys.stdout
    show = not args.no_progress and sys.stderr.isatty()
    for name in wanted:
        sd = rec.streams[name]
        frame_s = frame_samples_for(name, sd.rate, frame_ms) / sd.rate if frame_ms else None
        for fset in feature_sets(name):
            counter = ClipCounter()
            specs = fset.specs(tuple(sd.channels), sd.rate)
            kwargs = {"frame_s": frame_s} if frame_s else {}
            rows = iter_features(fset, sd.samples, sd.rate, tuple(sd.channels), tuple(sd.units), **kwargs)
            if show:
                from tqdm import tqdm

                total = max(1, int((sd.duration_s - fset.window.length_s) / fset.window.hop_s) + 1)
                rows = tqdm(rows, total=total, desc=f"{name}/{fset.name}", unit="win", file=sys.stderr, leave=False)
            for wf in rows:
                if args.clip_report:
                    counter.add(specs, wf.features)
                elif args.json:
                    feats = {k: (None if math.isnan(v) else v) for k, v in wf.features.items()}
                    out.write(json.dumps({"stream": wf.stream, "feature_set": wf.feature_set,
                                          "window_start_s": round(wf.window_start_s, 6),
                                          "window_end_s": round(wf.window_end_s, 6), "features": feats}) + "\n")
                else:
                    shown = list(wf.features.items())
                    text = "  ".join(f"{k}={_fmt(v)}" for k, v in shown[:8])
                    more = f"  (+{len(shown) - 8} more)" if len(shown) > 8 else ""
                    out.write(f"{wf.stream:5} {wf.feature_set:4} {wf.window_start_s:9.2f}-{wf.window_end_s:<9.2f} {text}{more}\n")
            if args.clip_report:
                out.write(_clip_report(name, fset.name, counter, args.json, format_clip_report) + "\n")
    return 0


def _clip_report(stream: str, fset: str, counter: Any, as_json: bool, fmt: Any) -> str:
    fams = counter.by_family()
    if as_json:
        return json.dumps({
            "stream": stream, "feature_set": fset,
            "clip": [{"feature": r.name, "unit": r.unit, "lower": r.lower, "upper": r.upper, "windows": r.windows,
                      "defined": r.defined, "below": r.below, "above": r.above,
                      "rate": None if math.isnan(r.rate) else r.rate,
                      "worst_channel_rate": None if math.isnan(w) else w} for r, w in fams],
        })
    text = fmt([r for r, _ in fams], f"{stream} {fset}: clip rate per feature (windows outside the public bounds)")
    worst = [(r.name, w) for r, w in fams if r.name != r.name.split(".")[0] or (not math.isnan(w) and w != r.rate)]
    if worst:
        text += "\n  worst channel: " + ", ".join(f"{n} {100 * w:.1f} %" for n, w in worst)
    return text
