"""Options shared by the commands that talk to Kafka: where the brokers are, how to log in, and
how durable the topics they create are.

:func:`add_client_options` adds ``--bootstrap`` and ``--client-config`` to a subcommand;
:func:`client_options` turns the parsed values into the bootstrap servers and the
:class:`~connectors.security.ClientSecurity` every client factory takes. :func:`add_topic_options`
and :func:`topic_settings` do the same for :class:`~connectors.kafka.TopicSettings`. Defined once
here so ``worker``, ``replay``, ``tail``, ``kafka`` and ``demo`` read them alike.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from connectors.kafka import DEFAULT_BOOTSTRAP, TopicSettings
from connectors.security import CONFIG_ENV, ClientSecurity, load_client_config


def add_client_options(p: argparse.ArgumentParser) -> None:
    """Add ``--bootstrap HOST:PORT`` and ``--client-config FILE`` to ``p``."""
    p.add_argument(
        "--bootstrap",
        default=None,
        metavar="HOST:PORT",
        help=f"Kafka bootstrap server(s) (default: bootstrap.servers of --client-config, else $BIOPRIV_BOOTSTRAP, "
        f"else {DEFAULT_BOOTSTRAP})",
    )
    p.add_argument(
        "--client-config",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"Kafka client properties: security.protocol, sasl.mechanism, sasl.username, sasl.password, "
        f"ssl.ca.location... (default ${CONFIG_ENV}; BIOPRIV_KAFKA_* variables override single keys; "
        "without either: plaintext, no login)",
    )


def client_options(args: argparse.Namespace) -> ClientSecurity:
    """Resolve ``--client-config`` and ``--bootstrap`` of ``args``; sets ``args.bootstrap`` and returns the security.

    ``--bootstrap`` wins over ``bootstrap.servers`` of the file, which wins over the default.
    """
    config = load_client_config(args.client_config)
    args.bootstrap = args.bootstrap or config.bootstrap or DEFAULT_BOOTSTRAP
    return config.security


def client_argv(args: Any) -> list[str]:
    """The options to hand the same settings to a ``biopriv`` subprocess (after :func:`client_options`)."""
    out = ["--bootstrap", args.bootstrap]
    if args.client_config is not None:
        out += ["--client-config", str(args.client_config)]
    return out


def add_topic_options(p: argparse.ArgumentParser) -> None:
    """Add the replication and retention options of the topics a command creates."""
    env = TopicSettings.ENV
    p.add_argument("--replication-factor", type=int, default=None, metavar="N",
                   help=f"replicas of each topic it creates (default ${env['replication_factor']}, else 1; 3 on a cluster)")
    p.add_argument("--min-insync-replicas", type=int, default=None, metavar="N",
                   help=f"replicas that must have a write before it is acknowledged (default ${env['min_insync_replicas']}, "
                   "else 1; 2 with 3 replicas)")
    p.add_argument("--raw-retention-h", type=float, default=None, metavar="H",
                   help=f"hours raw frames are kept, -1 forever (default ${env['raw_retention_h']}, else 168): the longest "
                   "outage of all workers after which no frame is lost")
    p.add_argument("--deadletter-retention-h", type=float, default=None, metavar="H",
                   help=f"hours dead letters are kept, -1 forever (default ${env['deadletter_retention_h']}, else 168)")


def topic_settings(args: argparse.Namespace) -> TopicSettings:
    """The :class:`TopicSettings` of :func:`add_topic_options` values (unset ones: environment, defaults)."""
    return TopicSettings.from_env(
        replication_factor=args.replication_factor,
        min_insync_replicas=args.min_insync_replicas,
        raw_retention_h=args.raw_retention_h,
        deadletter_retention_h=args.deadletter_retention_h,
    )
