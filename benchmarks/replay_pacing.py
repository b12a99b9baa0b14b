"""Pacing of ``biopriv replay`` at real time on a live broker.

Runs ``biopriv replay --speed 1 --duration 30`` over the shared recordings (EEG, speech, the
multi-rate WFDB record; a synthetic WAV when ../shared/data is absent) as several devices, into
benchmark-only topics, and records the pacing error the replay reports (send time minus due
time): median, p99 and max, with the machine and the exact command, in
``benchmarks/results/replay_pacing.json`` and ``.md``. Targets: median < 5 ms, p99 < 20 ms; they
are reported, not asserted.

Usage::

    .venv/bin/python benchmarks/replay_pacing.py [--bootstrap HOST:PORT] [--seconds 30] [--devices 6]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import cpu_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"
FILES = ["eeg/bci2000_eegmmi_64ch.edf", "audio/speech_2spk_16k.wav", "multi/mixedsignals.hea"]


def recordings(tmp: Path) -> list[str]:
    present = [str(DATA / f) for f in FILES if (DATA / f).exists()]
    if present:
        return present
    import numpy as np
    from scipy.io import wavfile

    wav = tmp / "tone.wav"
    wavfile.write(wav, 16000, (np.sin(np.arange(16000 * 40) / 7) * 8000).astype(np.int16))
    return [str(wav)]


def main() -> int:
    from connectors.kafka import DEFAULT_BOOTSTRAP, delete_topics

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", default=DEFAULT_BOOTSTRAP)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--devices", type=int, default=6)
    opts = ap.parse_args()
    prefix = f"bench.{uuid.uuid4().hex[:8]}."
    topics = {m: f"{prefix}raw.{m}" for m in ("eeg", "audio", "bio")}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        summary_path = tmp / "summary.json"
        files = recordings(tmp)
        cmd = [
            sys.executable, "-m", "pipeline.cli", "replay", *files,
            "--devices", str(opts.devices), "--speed", "1", "--duration", f"{opts.seconds:g}",
            "--bootstrap", opts.bootstrap, "--no-progress", "--json-summary", str(summary_path),
            *[a for m, t in topics.items() for a in ("--topic", f"{m}={t}")],
        ]
        try:
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=opts.seconds + 120)
        finally:
            try:
                delete_topics(opts.bootstrap, list(topics.values()))
            except Exception as exc:  # noqa: BLE001 - cleanup only
                print(f"note: could not delete benchmark topics: {exc}", file=sys.stderr)
        if proc.returncode != 0:
            print(proc.stdout, proc.stderr, sep="\n", file=sys.stderr)
            return proc.returncode
        summary = json.loads(summary_path.read_text())
    shown = " ".join(shlex.quote(c.replace(str(DATA), "../shared/data"))
                     for c in cmd[1:] if not c.startswith(str(Path(tempfile.gettempdir()))))
    pacing = summary["pacing_error_ms"]
    result = {
        "benchmark": "replay_pacing",
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "cpu_model": cpu_model(), "python": platform.python_version()},
        "command": f"python {shown}",
        "bootstrap": opts.bootstrap,
        "files": [str(Path(f).name) for f in files],
        "devices": opts.devices,
        "seconds": opts.seconds,
        "pacing_error_ms": pacing,
        "targets_ms": {"median": 5.0, "p99": 20.0},
        "meets_targets": bool(pacing["median"] < 5.0 and pacing["p99"] < 20.0),
        "summary": {k: v for k, v in summary.items() if k not in ("command", "files")},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "replay_pacing.json").write_text(json.dumps(result, indent=2) + "\n")
    md = f"""# Replay pacing at --speed 1

Pacing error = time a frame is handed to the Kafka producer minus its scheduled (due) time.

| metric | value | target |
|---|---|---|
| median | {pacing['median']:.3f} ms | < 5 ms |
| p99 | {pacing['p99']:.3f} ms | < 20 ms |
| max | {pacing['max']:.3f} ms | |
| mean | {pacing['mean']:.3f} ms | |
| frames | {summary['frames']} ({summary['achieved_fps']:.1f} frames/s, target {summary['target_fps']:.1f}) | |
| frames later than 20 ms | {summary['late_frames_over_20ms']} | |
| bytes | {summary['bytes']} | |

- recordings: {', '.join(result['files'])}; {opts.devices} devices; {opts.seconds:g} s at real time
- broker: {opts.bootstrap} (kafka-python, acks=all, max in flight 1, linger 0)
- machine: {result['machine']['nproc']} CPUs, {result['machine']['cpu_model']}, Python {result['machine']['python']}
- date: {result['date_utc']}
- command (from the repo root): `.venv/bin/python benchmarks/replay_pacing.py --bootstrap {opts.bootstrap} --seconds {opts.seconds:g} --devices {opts.devices}`, which runs
  `{result['command']}` (plus `--json-summary` and per-modality `--topic` overrides to benchmark-only topics)
"""
    (RESULTS / "replay_pacing.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
