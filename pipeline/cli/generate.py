"""``biopriv generate OUTDIR``: write synthetic recordings with known ground truth."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``generate`` subcommand."""
    p = subparsers.add_parser(
        "generate",
        help="write synthetic recordings (EDF, WAV, WFDB, CSV) with a ground-truth JSON",
        description=(
            "Write synthetic recordings for tests and the demo into OUTDIR: eeg.edf (1/f background plus "
            "alpha bursts), speech.wav (speech-like audio, no words), cardio.hea/.dat (WFDB: ECG, PPG, "
            "respiration), wearable.csv (PPG, EDA, accelerometer, temperature, time_s column) and "
            "truth.json (heart rate, breathing rate, bursts, speech turns...)."
        ),
    )
    p.add_argument("outdir", metavar="OUTDIR", type=Path, help="output folder (created if needed)")
    p.add_argument("--seconds", type=float, default=120.0, help="duration of each recording, s (default 120)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the recordings; returns the exit code."""
    from connectors.synth import write_recordings
    from pipeline.validation import check_range

    check_range("--seconds", args.seconds, 10.0, 86400.0, unit="s")
    truth = write_recordings(args.outdir, seconds=args.seconds, seed=args.seed)
    print(f"wrote {', '.join(truth['files'])} and truth.json to {args.outdir}")
    return 0
