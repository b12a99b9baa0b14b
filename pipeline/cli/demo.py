"""``biopriv demo``: the whole pipeline on this machine, in one command.

Generates synthetic recordings (EEG as EDF, speech-like audio as WAV, wearable signals as CSV),
starts the local broker (unless one answers), starts a worker, replays the recordings as several
devices in real time, prints the privatized releases as they come back with their per-frame
latency, then a summary with the population estimates (also written as the analyst's HTML report
with plots, ``<workdir>/report/index.html``), and shuts everything down.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.cli.options import add_client_options, client_argv, client_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run broker, worker and a replay of generated recordings; print releases and latency",
        description=(
            "End-to-end demo: generate synthetic recordings, start the local Kafka broker (unless one "
            "answers on --bootstrap), start a worker, replay the recordings for several devices per "
            "modality in real time, and print every privatized release with its per-frame latency "
            "(frame send time to the release being read back). Ends with a latency summary and the population "
            "estimates (also written as an HTML report with plots, WORKDIR/report/index.html) and shuts "
            "down what it started. Topics are private to the run and deleted afterwards."
        ),
    )
    p.add_argument("--devices", type=int, default=2, help="simulated devices per modality (default %(default)s)")
    p.add_argument("--seconds", type=float, default=30.0, help="seconds of recording to replay (default %(default)s)")
    p.add_argument("--speed", type=float, default=1.0, help="replay speed, 1 = real time (default %(default)s)")
    add_client_options(p)
    p.add_argument("--workdir", type=Path, default=Path(".biopriv/demo"), help="recordings, keys and logs (default %(default)s)")
    p.add_argument("--keep-broker", action="store_true", help="leave the broker running if the demo started it")
    p.add_argument("--quiet", action="store_true", help="print only the summary, not every release")
    p.set_defaults(func=run)


def _percentile(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    i = min(len(sorted_ms) - 1, max(0, int(round(q / 100 * (len(sorted_ms) - 1)))))
    return sorted_ms[i]


def _feature_summary(features: dict[str, float], limit: int = 3) -> str:
    items = list(features.items())
    shown = ", ".join(f"{k}={v:.3g}" for k, v in items[:limit])
    return shown + (f", ... ({len(items)} values)" if len(items) > limit else "")


def run(args: argparse.Namespace) -> int:
    from connectors.kafka import Topics, check_broker, delete_topics, ensure_topics, make_consumer
    from connectors.recordings import open_recording
    from connectors.replay import KafkaSender, ReplayConfig, replay
    from connectors.synth import write_recordings
    from pipeline.cli.kafka import run_script
    from pipeline.errors import BrokerError

    security = client_options(args)
    workdir: Path = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"biopriv demo: {args.devices} devices per modality, {args.seconds:g} s at speed {args.speed:g}")
    from pipeline.study import Study

    study = Study.default()
    print(f"  a default worker releases the built-in study: {len(study.sets)} feature sets, one report per set and "
          f"device per day, {study.daily_spend():g} epsilon per device per day (biopriv study check).\n"
          "  This demo runs the worker in its per-window stress mode (--per-window) so that releases appear within "
          "seconds and their latency shows.")

    # 1. Recordings the project generates itself (never the shared real data).
    rec_dir = workdir / "recordings"
    if not (rec_dir / "truth.json").exists():
        write_recordings(rec_dir, seconds=max(args.seconds, 60.0), seed=7)
    paths = [rec_dir / "eeg.edf", rec_dir / "speech.wav", rec_dir / "wearable.csv"]
    print(f"  recordings: {', '.join(p.name for p in paths)} in {rec_dir}")

    # 2. Broker.
    started_broker = False
    try:
        check_broker(args.bootstrap, timeout_s=2, security=security)
        print(f"  broker: using the one answering on {args.bootstrap}")
    except BrokerError:
        if security.protocol != "PLAINTEXT":  # a secured broker is never replaced by the local plain one
            raise
        print("  broker: starting the local broker (first run assembles it from Maven Central)")
        if run_script("up") != 0:
            print("biopriv: error: the broker did not start (see deploy/kafka/local.sh logs)", file=sys.stderr)
            return 1
        started_broker = True

    run_id = uuid.uuid4().hex[:8]
    topics = Topics.with_prefix(f"demo-{run_id}.")
    ensure_topics(args.bootstrap, topics.specs(partitions=3), security=security)
    worker_log = workdir / "worker.log"
    worker = None
    try:
        # 3. Worker.
        with open(worker_log, "wb") as fh:
            worker = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "worker", *client_argv(args),
                 "--group", f"demo-{run_id}", "--topic-prefix", topics.prefix, "--partitions", "3",
                 "--per-window", "--latency-headers", "--key-file", str(workdir / "keys.json"), "--data-dir", str(workdir / "worker"),
                 "--stats-interval", "5"],
                stdout=fh, stderr=subprocess.STDOUT,
            )
        _wait_ready(worker, worker_log)
        print(f"  worker: pid {worker.pid}, log {worker_log}")

        # 4. Consumer of releases, then replay in a thread.
        consumer = make_consumer([topics.private], args.bootstrap, security=security)
        consumer.poll(timeout_ms=1000)  # join and get assignments before frames flow
        recordings = [open_recording(p) for p in paths]
        n_devices = args.devices * len(recordings)
        config = ReplayConfig(devices=n_devices, speed=args.speed, stagger_s=3.0, device_prefix="demo",
                              topics={m: topics.raw(m) for m in ("eeg", "audio", "bio")})
        clipped = [_clip(r, args.seconds) for r in recordings]
        result: dict[str, Any] = {}

        def do_replay() -> None:
            sender = KafkaSender(args.bootstrap, security=security)
            try:
                result["summary"] = replay(clipped, config, sender)
            except Exception as exc:  # noqa: BLE001 - reported below
                result["error"] = exc
            finally:
                sender.close()

        thread = threading.Thread(target=do_replay, name="replay", daemon=True)
        thread.start()

        latencies: list[float] = []
        per_modality: Counter[str] = Counter()
        pseudonyms: set[str] = set()
        last = time.monotonic()
        while thread.is_alive() or time.monotonic() - last < 3.0:
            for batch in consumer.poll(timeout_ms=200).values():
                now = time.time_ns()
                for rec in batch:
                    doc = json.loads(rec.value)
                    sent = dict(rec.headers or ()).get("biopriv-t-frame-send-ns")  # --latency-headers
                    ms = (now - int(sent)) / 1e6 if sent else float("nan")
                    latencies.append(ms)
                    per_modality[doc["stream"]] += 1
                    pseudonyms.add(doc["pseudonym"])
                    last = time.monotonic()
                    if not args.quiet:
                        print(
                            f"{doc['pseudonym'][:10]} {doc['stream']:>5}/{doc['feature_set']:<4} "
                            f"{doc['slot']['start']}  eps {sum(n['epsilon'] for n in doc['noise'].values()):.3g}  "
                            f"latency {ms:6.1f} ms  {_feature_summary(doc['values'])}"
                        )
        consumer.close()
        if "error" in result:
            raise result["error"]

        # 5. Summary.
        lat = sorted(x for x in latencies if x == x)
        print()
        print("summary")
        summary = result.get("summary")
        if summary is not None:
            print(f"  replay: {summary.format()}")
        print(f"  releases: {len(lat)} from {len(pseudonyms)} pseudonymous devices; by stream: {dict(per_modality)}")
        if lat:
            print(
                f"  per-frame latency (frame sent -> release read back), ms: p50 {_percentile(lat, 50):.1f}  "
                f"p90 {_percentile(lat, 90):.1f}  p99 {_percentile(lat, 99):.1f}  max {lat[-1]:.1f}"
            )
        print(
            "  each value is one local-DP release: noisy on its own by design (default epsilon 0.1 per release);\n"
            "  what an analyst reads is the population estimate with its interval:"
        )
        estimates = _analyst_commands(args, topics.prefix, workdir)
        _print_estimates(estimates, clipped)
        ok = len(pseudonyms) >= 3 and len(per_modality) >= 3
        if not ok:
            print(f"biopriv: error: expected releases from 3+ devices in 3 modalities; worker log: {worker_log}", file=sys.stderr)
        return 0 if ok else 1
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        try:
            delete_topics(args.bootstrap, [s.name for s in topics.specs()], security=security)
        except BrokerError:
            pass
        if started_broker and not args.keep_broker:
            run_script("down")


#: Features the demo summarizes (those of the default study that the generated recordings carry).
SUMMARY_FEATURES = ("hr", "rmssd", "scl", "activity", "temp_mean", "resp_rate", "speech_ratio")


def _analyst_commands(args: argparse.Namespace, prefix: str, workdir: Path) -> list[dict[str, Any]]:
    """Run ``biopriv aggregate`` and ``biopriv report`` on the demo's private topic, as an analyst
    would, showing each command and its output; returns the estimates ``aggregate`` wrote."""
    from pipeline.aggregate import read_aggregates

    out, report = workdir / "estimates.jsonl", workdir / "report"
    _run_shown(["aggregate", "--topic-prefix", prefix, "--until-idle", "2", "--no-publish", "--feature",
                *SUMMARY_FEATURES, "--out", str(out)], client_argv(args))
    estimates = read_aggregates(out)
    present = [f for f in SUMMARY_FEATURES if any(e["feature"] == f for e in estimates)]
    if present:
        _run_shown(["report", "--aggregates", str(out), "--feature", *present, "--title",
                    "biopriv demo: private estimates", "--out", str(report)], [])
    return estimates


def _run_shown(argv: list[str], hidden: list[str]) -> None:
    """Run ``biopriv ARGV`` (plus ``hidden`` client options) showing the command line and its output."""
    print(f"\n  $ biopriv {shlex.join(argv)}")
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", *argv, *hidden], capture_output=True, text=True)
    for line in (done.stdout + done.stderr).splitlines():
        print(f"  {line}")
    if done.returncode != 0:
        raise SystemExit(f"biopriv: error: biopriv {argv[0]} failed (exit {done.returncode})")


def _print_estimates(estimates: list[dict[str, Any]], recordings: list[Any]) -> None:
    """Each summary feature's private estimate and 95 % interval over the demo's releases (the UTC
    day's, from ``biopriv aggregate``) beside the non-private mean of the same windows, and the
    planner's cohort size when the interval is too wide to use."""
    from pipeline.aggregate import DAY_S
    from pipeline.features import feature_sets
    from pipeline.features.offline import iter_features
    from pipeline.plan import too_wide_note
    from pipeline.study import Study

    truth: dict[str, list[float]] = {}
    for rec in recordings:
        for data in rec.streams.values():
            for fs in feature_sets(data.name):
                if not any(f in SUMMARY_FEATURES for f in (s.name for s in fs.specs(data.channels, data.rate))):
                    continue
                for wf in iter_features(fs, data.samples, data.rate, data.channels, data.units):
                    for name, v in wf.features.items():
                        if name in SUMMARY_FEATURES and v == v:
                            truth.setdefault(name, []).append(float(v))
    print("\n  the same day estimates beside the non-private mean of the same windows:")
    study = Study.default()
    by_feature: dict[str, dict[str, Any]] = {}
    for day in estimates:  # the day with the most reports (the demo may straddle midnight UTC)
        if day["period"]["seconds"] == DAY_S and day["reports"] > by_feature.get(day["feature"], {}).get("reports", 0):
            by_feature[day["feature"]] = day
    print(f"  {'feature':<14} {'private estimate [95 % interval]':<40} {'non-private':>11}  reports")
    for name in SUMMARY_FEATURES:
        e, t = by_feature.get(name), truth.get(name)
        if not t:
            continue
        mean = sum(t) / len(t)
        if e is None:  # too few reports, or an interval that does not meet the bounds
            print(f"  {name:<14} {'no estimate from these releases':<42}{mean:>11.4g}")
            note = too_wide_note(study, name, math.inf, mean)
            if note is not None:
                print(f"  {'':<14} {note}")
            continue
        lo, hi = e["ci95"]
        line = f"  {name:<14} {e['estimate']:>10.4g} [{lo:.4g}, {hi:.4g}]".ljust(57) + f"{mean:>11.4g}  {e['reports']}"
        print(line)
        note = too_wide_note(study, name, (hi - lo) / 2, mean)
        if note is not None:
            print(f"  {'':<14} {note}")


def _clip(recording: Any, seconds: float) -> Any:
    from connectors.replay import clip_recording

    return clip_recording(recording, 0.0, seconds)


def _wait_ready(worker: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 60.0) -> None:
    """Wait until the Faust worker says it is ready (partitions assigned)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        if "Ready" in text:
            return
        if worker.poll() is not None:
            raise SystemExit(f"biopriv: error: the worker exited during start-up:\n{text[-2000:]}")
        time.sleep(0.2)
    raise SystemExit(f"biopriv: error: the worker was not ready within {timeout_s:g} s (log: {log_path})")

