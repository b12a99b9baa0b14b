"""``biopriv replay``: stream recordings into Kafka as simulated devices."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError

EPILOG = """\
examples:
  biopriv replay ../shared/data/eeg/bci2000_eegmmi_64ch.edf --devices 10
  biopriv replay ../shared/data/multi/mixedsignals.hea --devices 4 --speed 0
  biopriv replay rec.wav --loop --frame-ms mic=40 --json-summary replay.json

Device i (from 0) is <prefix>-000(i+1), replays FILE number i modulo the number of files, and
starts i*stagger seconds into it (wrapping), so every device sends every sample once per pass.
Frames go to the raw topic of their modality, keyed by device id. Capture timestamps start at
the moment the replay starts and run in recording time; each frame is due once its last sample
is captured (divided by --speed), on an absolute schedule, so a late frame never delays later
ones. Ctrl-C stops cleanly, prints the summary and exits with 130.
"""


def register(subparsers: Any) -> None:
    """Add the ``replay`` subcommand."""
    from pipeline.cli.options import add_client_options

    p = subparsers.add_parser(
        "replay",
        help="replay recordings into Kafka as simulated devices",
        description="Replay recordings (EEG via MNE, WAV, WFDB, CSV) into Kafka as N simulated devices, "
        "paced in real time or faster, with a final report of frames, bytes, rate and pacing error.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="recording(s): EDF/BDF/GDF/FIF/BrainVision .vhdr/EEGLAB .set (EEG), .wav (audio), "
        "WFDB .hea or record name (ECG, PPG, respiration), .csv with a time column (biosensors)",
    )
    p.add_argument("--devices", type=int, default=1, metavar="N", help="number of simulated devices (default 1)")
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        metavar="X",
        help="replay speed: 1 real time, 2 twice as fast, 0 as fast as possible (default 1)",
    )
    p.add_argument("--loop", action="store_true", help="repeat the recordings until interrupted with Ctrl-C")
    p.add_argument(
        "--start", type=float, default=0.0, metavar="S", help="skip the first S seconds of each recording (default 0)"
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help="replay only S seconds of each recording from --start (default: to the end)",
    )
    p.add_argument(
        "--frame-ms",
        action="append",
        default=[],
        metavar="[STREAM=]MS",
        help="frame duration in ms, for all streams (e.g. 250) or one stream (e.g. eeg=125); repeatable; "
        "defaults: eeg 125, mic 20, bio streams 1000",
    )
    p.add_argument(
        "--stagger",
        type=float,
        default=10.0,
        metavar="S",
        help="device i starts i*S seconds into its recording, wrapping (default 10)",
    )
    p.add_argument("--device-prefix", default="sim", metavar="PREFIX", help="device ids are PREFIX-0001... (default sim)")
    p.add_argument(
        "--channels", default=None, metavar="A,B,...", help="keep only these channels (names as in the file)"
    )
    p.add_argument(
        "--rename", action="append", default=[], metavar="OLD=NEW", help="rename a channel (repeatable)"
    )
    p.add_argument(
        "--stream",
        action="append",
        default=[],
        metavar="CHANNEL=STREAM",
        help="force the stream of a channel or CSV column, e.g. pulse=ppg (repeatable)",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="treat all FILEs as one recording (e.g. CSVs of one device at different rates)",
    )
    p.add_argument(
        "--encoding", choices=("binary", "json"), default="binary", help="frame encoding (default binary msgpack)"
    )
    p.add_argument(
        "--topic",
        action="append",
        default=[],
        metavar="MODALITY=TOPIC",
        help="send a modality (eeg, audio, bio) to another topic than its raw topic (repeatable)",
    )
    add_client_options(p)
    p.add_argument("--json-summary", default=None, metavar="FILE", help="also write the final report as JSON to FILE")
    p.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    p.set_defaults(func=run)


def parse_pairs(values: Sequence[str], option: str) -> dict[str, str]:
    """``["a=b", ...]`` to ``{"a": "b"}``; :class:`ConfigError` naming a malformed value."""
    out = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key.strip() or not val.strip():
            raise ConfigError(f"{option} expects KEY=VALUE, got {v!r}")
        out[key.strip()] = val.strip()
    return out


def parse_frame_ms(values: Sequence[str]) -> dict[str, float]:
    """``--frame-ms`` values to frame durations per stream in seconds."""
    from connectors.replay import DEFAULT_FRAME_S

    out: dict[str, float] = {}
    for v in values:
        stream, sep, ms = v.rpartition("=")
        try:
            seconds = float(ms) / 1000.0
        except ValueError:
            raise ConfigError(f"--frame-ms expects [STREAM=]MILLISECONDS, got {v!r}") from None
        if not sep:
            out.update(dict.fromkeys(DEFAULT_FRAME_S, seconds))
        elif stream not in DEFAULT_FRAME_S:
            raise ConfigError(f"--frame-ms stream must be one of {', '.join(sorted(DEFAULT_FRAME_S))}, got {stream!r}")
        else:
            out[stream] = seconds
    return out


def build_config(args: argparse.Namespace) -> Any:
    """The :class:`~connectors.replay.ReplayConfig` for parsed arguments."""
    from connectors.kafka import RAW_TOPICS
    from connectors.replay import ReplayConfig

    topics = dict(RAW_TOPICS)
    for modality, topic in parse_pairs(args.topic, "--topic").items():
        if modality not in RAW_TOPICS:
            raise ConfigError(f"--topic modality must be one of {', '.join(sorted(RAW_TOPICS))}, got {modality!r}")
        topics[modality] = topic
    return ReplayConfig(
        devices=args.devices,
        speed=args.speed,
        loop=args.loop,
        stagger_s=args.stagger,
        device_prefix=args.device_prefix,
        frame_s=parse_frame_ms(args.frame_ms),
        topics=topics,
        encoding=args.encoding,
    )


def load_recordings(args: argparse.Namespace) -> list[Any]:
    """Open, clip and (with ``--merge``) merge the FILE arguments."""
    from connectors.recordings import merge_recordings, open_recording
    from connectors.replay import clip_recording

    channels = [c.strip() for c in args.channels.split(",") if c.strip()] if args.channels else None
    rename = parse_pairs(args.rename, "--rename")
    streams = parse_pairs(args.stream, "--stream")
    recs = []
    for f in args.files:
        rec = open_recording(f, channels=channels, rename=rename or None, streams=streams or None)
        recs.append(clip_recording(rec, args.start, args.duration))
    return [merge_recordings(recs)] if args.merge else recs


def run(args: argparse.Namespace) -> int:
    """Run the replay; 0 when done, 130 when stopped with Ctrl-C."""
    from tqdm import tqdm

    from connectors.replay import (
        EpochClock,
        KafkaSender,
        plan_replay,
        prepare_topics,
        replay,
        target_frame_rate,
        total_frames,
    )
    from pipeline.cli.options import client_options

    security = client_options(args)
    config = build_config(args)
    if args.device_prefix and not all(c.isalnum() or c in "._:@-" for c in args.device_prefix):
        raise ConfigError(f"--device-prefix may hold only letters, digits and ._:@-, got {args.device_prefix!r}")
    recordings = load_recordings(args)
    plan = plan_replay(recordings, config)
    target = target_frame_rate(plan, config.speed)
    total = total_frames(plan)
    prepare_topics(args.bootstrap, {ds.topic for ds in plan}, security=security)
    streams = sorted({f"{ds.data.name}@{ds.data.rate:g}Hz" for ds in plan})
    print(
        f"replaying {len(recordings)} recording(s) as {config.devices} device(s): {', '.join(streams)}; "
        f"{'looping' if config.loop else f'{total} frames'}"
        + (f", target {target:.1f} frames/s" if target else ", as fast as possible"),
        file=sys.stderr,
    )
    sender = KafkaSender(args.bootstrap, security=security)
    sender.warm_up({ds.topic for ds in plan})
    stop = threading.Event()
    previous = _install_sigint(stop)
    bar = tqdm(total=total, unit="frame", disable=args.no_progress, file=sys.stderr, dynamic_ncols=True)
    clock = EpochClock()
    state = {"t0": clock(), "n": 0, "last": 0.0}

    def on_sent(_sf: Any, send_ns: int) -> None:
        state["n"] += 1
        bar.update(1)
        now = time.monotonic()
        if now - state["last"] >= 0.5:
            state["last"] = now
            elapsed = (send_ns - state["t0"]) / 1e9
            achieved = state["n"] / elapsed if elapsed > 0 else 0.0
            bar.set_postfix_str(f"{achieved:.1f}/{target:.1f} frames/s" if target else f"{achieved:.1f} frames/s")

    try:
        state["t0"] = clock()
        summary = replay(recordings, config, sender, clock=clock, sleep=stop.wait, should_stop=stop.is_set, on_sent=on_sent)
    finally:
        bar.close()
        _restore_sigint(previous)
        sender.close()
    print(summary.format())
    if args.json_summary:
        report = {
            **summary.to_dict(),
            "files": [str(f) for f in args.files],
            "bootstrap": args.bootstrap,
            "command": "biopriv replay " + " ".join(sys.argv[2:]) if len(sys.argv) > 1 else "",
        }
        try:
            Path(args.json_summary).write_text(json.dumps(report, indent=2) + "\n")
        except OSError as exc:
            raise ConfigError(f"cannot write --json-summary {args.json_summary}: {exc.strerror}") from None
    return 130 if summary.interrupted else 0


def _install_sigint(stop: threading.Event) -> Any:
    """First Ctrl-C sets ``stop``; a second one interrupts for good."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(_signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        print("\nstopping (Ctrl-C again to abort)...", file=sys.stderr)
        stop.set()

    return signal.signal(signal.SIGINT, handler)


def _restore_sigint(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGINT, previous)
