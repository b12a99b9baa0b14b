"""``biopriv worker``: run a stream worker (a faust-streaming app, batched Kafka I/O through confluent-kafka or aiokafka) against the broker."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from connectors.kafka import DEFAULT_PARTITIONS, DEFAULT_PREFIX, KAFKA_CLIENT, KAFKA_CLIENTS
from pipeline.cli.options import add_client_options, add_topic_options, client_options, topic_settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="run a stream worker: raw frames in, privatized releases out",
        description=(
            "Consume <prefix>raw.eeg, <prefix>raw.audio and <prefix>raw.bio; keep sliding windows per "
            "device and stream; compute features; privatize every value against the device's "
            "budget; publish releases to <prefix>private.features, bad frames to "
            "<prefix>deadletter and operational events to <prefix>events. Several workers with the "
            "same --group share the partitions. Stops cleanly on Ctrl-C / SIGTERM."
        ),
    )
    add_client_options(p)
    p.add_argument("--group", default="biopriv-worker", help="consumer group and Faust app id (default %(default)s)")
    p.add_argument("--topic-prefix", default=DEFAULT_PREFIX, help="prefix of every topic name (default %(default)r)")
    p.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS, help="partitions of topics the worker declares (default %(default)s)")
    add_topic_options(p)
    p.add_argument("--study", type=Path, default=None, metavar="FILE", help="study file: which features are released, per report period, under which daily and lifetime budget (default: the built-in study, biopriv study check)")
    p.add_argument("--per-window", action="store_true", help="release every window of every feature set instead of a study's reports (stress mode for latency benchmarks and crash tests; spends thousands of epsilon per device per day)")
    p.add_argument("--privacy-config", type=Path, default=None, help="privacy configuration (TOML or JSON): mechanisms, grid, strategy; with --per-window also epsilon and rules. Default: built-in, see docs/privacy.md")
    p.add_argument("--key-file", type=Path, default=Path(".biopriv/keys.json"), help="secret key file (created with mode 0600 if absent; default %(default)s)")
    p.add_argument("--extra-key-file", type=Path, action="append", default=[], metavar="PATH", help="another key file holding other sections, e.g. the pseudonym key kept apart from the noise keys (repeatable; biopriv keys init --kinds)")
    p.add_argument("--latency-headers", action="store_true", help="add biopriv-t-frame-send-ns and biopriv-last-seq headers to releases (latency benchmark); off by default: device metadata outside the privacy model")
    p.add_argument("--ledger-loss-guard", type=float, default=600.0, help="when a partition's state was lost, suppress a device's windows for this many seconds of capture time after the first one seen (default %(default)s)")
    p.add_argument("--web-port", type=int, default=0, help="serve /metrics (Prometheus), /healthz and /readyz on this port (default 0: off; the container and Kubernetes use 6066)")
    p.add_argument("--web-host", default="0.0.0.0", help="address the web server binds (default %(default)s)")
    p.add_argument("--stats-interval", type=float, default=10.0, help="seconds between statistics log lines (default %(default)s)")
    p.add_argument("--data-dir", type=Path, default=Path(".biopriv/worker"), help="worker data directory (default %(default)s)")
    p.add_argument("--checkpoint-interval", type=float, default=1.0, help="seconds between state checkpoints (ledger + resume offsets) to <prefix>state (default %(default)s)")
    p.add_argument("--session-timeout", type=float, default=10.0, help="consumer group session timeout, s: how fast a dead worker's partitions move (default %(default)s)")
    p.add_argument("--request-timeout", type=float, default=None, metavar="S", help="request timeout of the worker's producer and consumer, s: a send not acknowledged within it has failed and is retried with backoff (default: 15 for the producer; the consumer's client default, 60 for confluent-kafka's socket timeout, 40 for aiokafka)")
    p.add_argument("--device-idle", type=float, default=600.0, help="evict the window buffers of a device without a frame for this many seconds; its window grid and budget are kept (default %(default)s)")
    p.add_argument("--max-batch", type=int, default=500, help="most messages processed per fetched batch (default %(default)s): bounds memory and how long a flooding partition delays the others")
    p.add_argument("--fetch-bytes", type=int, default=64 * 1024, help="bytes fetched per partition and request (default %(default)s); larger favours throughput of tiny messages over fairness")
    p.add_argument("--fetch-min-bytes", type=int, default=8192, help="a fetch returns once this many bytes are ready (default %(default)s); 1 answers every frame at once, for more worker CPU")
    p.add_argument("--fetch-max-wait-ms", type=int, default=5, help="... or after this many ms (default %(default)s): the most a frame waits at a quiet broker")
    p.add_argument("--event-loop", default="uvloop", choices=["uvloop", "asyncio"], help="event loop of the worker (default %(default)s: libuv, less CPU per message than asyncio's own)")
    p.add_argument("--kafka-client", default=os.environ.get("BIOPRIV_KAFKA_CLIENT") or KAFKA_CLIENT, choices=list(KAFKA_CLIENTS), help=f"Kafka client of the worker's fetch and send loop: confluent (librdkafka) or aiokafka (default $BIOPRIV_KAFKA_CLIENT, else {KAFKA_CLIENT}; every worker of a group uses the same one)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log level (default %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from connectors.kafka import Topics, check_broker, ensure_topics
    from pipeline.app import WorkerSettings, run_worker
    from pipeline.study import load_study
    from pipeline.validation import check_range

    if not args.per_window:
        load_study(args.study)  # a bad study file fails here, before anything connects
    logging.basicConfig(level=args.log_level.upper(), format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    if args.request_timeout is not None:
        check_range("--request-timeout", args.request_timeout, 0.5, 600.0, unit="s")
    security = client_options(args)
    check_broker(args.bootstrap, security=security)
    topics = Topics.with_prefix(args.topic_prefix)
    ensure_topics(args.bootstrap, topics.specs(args.partitions, topic_settings(args)), security=security)
    settings = WorkerSettings(
        bootstrap=args.bootstrap,
        security=security,
        group=args.group,
        topics=topics,
        partitions=args.partitions,
        privacy_config=args.privacy_config,
        study=args.study,
        per_window=args.per_window,
        key_file=args.key_file,
        more_key_files=tuple(args.extra_key_file),
        latency_headers=args.latency_headers,
        ledger_loss_guard_s=args.ledger_loss_guard,
        stats_interval_s=args.stats_interval,
        data_dir=args.data_dir,
        checkpoint_interval_s=args.checkpoint_interval,
        session_timeout_s=args.session_timeout,
        request_timeout_s=args.request_timeout,
        device_idle_s=args.device_idle,
        max_batch=args.max_batch,
        fetch_bytes_per_partition=args.fetch_bytes,
        fetch_min_bytes=args.fetch_min_bytes,
        fetch_max_wait_ms=args.fetch_max_wait_ms,
        event_loop=args.event_loop,
        kafka_client=args.kafka_client,
        web_port=args.web_port,
        web_host=args.web_host,
    )
    run_worker(settings, loglevel=args.log_level)
    return 0
