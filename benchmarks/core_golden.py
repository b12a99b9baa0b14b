"""Golden dump of the processing core's outputs, to prove an optimization changed no output.

Feeds the first ``--seconds`` of the latency benchmark's ``standard`` schedule (the frames
``core_bench.py`` times), with a fixed send-time stamp and a fixed release clock, through three
fresh processors built from one key file:

* ``per-window``: ``PrivacyConfig.default()``, every window released (the stress mode);
* ``study``: the default study (what ``biopriv worker`` runs); its report periods (10 min, 1 h)
  do not close within seconds, so the dump also holds every open period's accumulated sums and
  counts (bitwise) at the end;
* ``study-10s``: the default study's features with 10-s periods and ``budget`` scheduling, so that
  reports close, are privatized and published within the run.

Every few hundred messages it also feeds a broken message (truncated value, wrong key, not a
frame) to exercise the dead-letter path. Each message's outcome (release records with their
exact bytes, dead letters, events, frame reference, replays, header devices) is one JSON line;
``--out`` writes the dump, ``--against`` compares with an earlier one and names the first line
that differs. With the same key file the dump is reproducible: noise is keyed by the key file and
the device's ledger lineage, which is drawn here from a fixed generator.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/core_golden.py --key-file /tmp/golden-keys.json \\
        --out /tmp/golden-before.jsonl
    ... change the core ...
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/core_golden.py --key-file /tmp/golden-keys.json \\
        --against /tmp/golden-before.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "latency"))
sys.path.insert(0, str(ROOT))

from workload import Schedule, build_schedule, load_workload, stamp  # noqa: E402

#: Fixed send-time base and release clock: the dump must not depend on when it runs.
SEND_BASE_NS = 1_700_000_000_000_000_000
RELEASE_NS = 1_700_000_100_000_000_000
MODES = ("per-window", "study", "study-10s")


def processor(mode: str, key_file: Path) -> Any:
    from pipeline.privacy import PrivacyConfig, PrivacyEngine, load_keys
    from pipeline.processor import Processor
    from pipeline.study import DEFAULT_STUDY, Study, from_mapping

    keys = load_keys(key_file)

    def clock() -> int:
        return RELEASE_NS

    if mode == "per-window":
        return Processor(PrivacyEngine(PrivacyConfig.default(), keys), keys.pseudonym, clock=clock, idle_clock=lambda: 0.0)
    if mode == "study":
        study = Study.default()
    else:
        data = json.loads(json.dumps(DEFAULT_STUDY))
        data["budget"].update(scheduling="budget", epsilon_per_day=1e6, lifetime_epsilon=1e7)
        for s in data["sets"].values():
            s["period"] = "10s"
        study = from_mapping(data, "golden 10-s study")
    return Processor(PrivacyEngine(study.privacy_config(), keys), keys.pseudonym, clock=clock, idle_clock=lambda: 0.0,
                     study=study)


def messages(sched: Schedule, seconds: float) -> Iterator[tuple[bytes | None, bytes]]:
    n = int(np.searchsorted(sched.due_ns, int(seconds * 1e9)))
    for i in range(n):
        key = sched.keys[int(sched.plan_idx[i])]
        value = stamp(sched.values[i], int(sched.stamp_at[i]), SEND_BASE_NS + int(sched.due_ns[i]))
        yield key, value
        if i % 397 == 0:
            yield key, value[: len(value) // 2]
        elif i % 397 == 131:
            yield b"not-" + key, value
        elif i % 397 == 263:
            yield key, b'{"v": 1, "device_id": "x"}'


def outcome_line(out: Any) -> dict[str, Any]:
    return {
        "releases": [[r.key.decode(), r.value.decode(), r.release_id, r.device_id, r.last_send_ns, r.last_seq, r.t_release_ns]
                     for r in out.releases],
        "dead": [[d.reason, d.detail, None if d.key is None else d.key.hex(), hashlib.sha256(d.value).hexdigest()]
                 for d in out.dead_letters],
        "events": out.events,
        "frame": None if out.frame is None else [out.frame.device_id, out.frame.stream, out.frame.seq, out.frame.n_samples,
                                                 out.frame.sample_rate, out.frame.capture_ns],
        "replayed": out.replayed,
        "headers": sorted(out.headers),
    }


def final_state(proc: Any) -> dict[str, Any]:
    """What the run left behind: counters, open report periods (bitwise), window counters, headers."""
    st = proc.stats
    state: dict[str, Any] = {
        "stats": {k: getattr(st, k) for k in ("frames", "dead_letters", "releases", "suppressed", "feature_errors", "replayed",
                                               "by_reason", "frames_by_stream", "releases_by_set", "suppressed_by_reason")},
        "windows": proc.window_stats(),
        "dirty": sorted(proc.dirty_devices),
        "headers": proc.header_records(set(proc.devices())),
    }
    if proc.reports is not None:
        state["open_periods"] = {
            "|".join(k): [p.index, p.windows, p.last_window, p.sums.tobytes().hex(), p.counts.tolist()]
            for k, p in sorted(proc.reports._open.items())
        }
    return state


def seed_lineages() -> None:
    """Ledger lineages from a fixed generator instead of the system's randomness (as the tests'
    ``seeded_lineages`` fixture does): the noise binds the device's lineage."""
    import random
    import types

    from pipeline.privacy import accountant

    generator = random.Random(20261202)
    accountant.secrets = types.SimpleNamespace(token_hex=lambda n: generator.randbytes(n).hex())  # type: ignore[attr-defined]


def dump(sched: Schedule, key_file: Path, seconds: float) -> list[str]:
    logging.getLogger("pipeline").setLevel(logging.ERROR)
    seed_lineages()
    warnings.simplefilter("ignore")
    lines: list[str] = []
    for mode in MODES:
        proc = processor(mode, key_file)
        for i, (key, value) in enumerate(messages(sched, seconds)):
            lines.append(json.dumps({"mode": mode, "i": i, **outcome_line(proc.process(value, key))}, sort_keys=True))
        lines.append(json.dumps({"mode": mode, "final": final_state(proc)}, sort_keys=True, default=str))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of the standard schedule")
    ap.add_argument("--key-file", type=Path, required=True, help="created with fresh keys when absent; keep it between runs")
    ap.add_argument("--out", type=Path, default=None, help="write the dump here (JSON lines)")
    ap.add_argument("--against", type=Path, default=None, help="compare with this earlier dump; exit 1 when they differ")
    args = ap.parse_args(argv)
    sched = build_schedule(load_workload("standard", short=False), end_s=args.seconds + 1.0)
    lines = dump(sched, args.key_file, args.seconds)
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    counts = {m: sum(len(json.loads(ln).get("releases", [])) for ln in lines if f'"mode": "{m}"' in ln) for m in MODES}
    print(f"{len(lines):,} lines, releases per mode {counts}, sha256 {digest}")
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")
    if args.against is not None:
        ref = args.against.read_text().splitlines()
        for n, (a, b) in enumerate(zip(ref, lines, strict=False)):
            if a != b:
                print(f"DIFFERS at line {n + 1}:\n  before {a[:2000]}\n  after  {b[:2000]}")
                return 1
        if len(ref) != len(lines):
            print(f"DIFFERS: {len(ref)} lines before, {len(lines)} now")
            return 1
        print(f"identical to {args.against}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
