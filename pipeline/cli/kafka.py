"""``biopriv kafka up|down|status|logs``: the local broker, through ``deploy/kafka/local.sh``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from pipeline.errors import ConfigError

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "local.sh"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "kafka",
        help="start, stop or check the local Kafka broker",
        description=(
            "Manage the local single-node Apache Kafka broker (KRaft, 127.0.0.1) that "
            "deploy/kafka/local.sh assembles from Maven Central. 'up' is idempotent and creates "
            "the project's topics; 'down' stops only the broker 'up' started. Environment: "
            "BIOPRIV_KAFKA_DIR (jars, data, pid, log; default <repo>/.kafka), BIOPRIV_KAFKA_PORT "
            "(default 9092), BIOPRIV_KAFKA_HEAP (default 512m)."
        ),
    )
    p.add_argument("action", choices=["up", "down", "status", "logs"], help="what to do")
    p.add_argument("--dir", type=Path, default=None, help="broker directory (sets BIOPRIV_KAFKA_DIR)")
    p.add_argument("--port", type=int, default=None, help="client port (sets BIOPRIV_KAFKA_PORT)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_script(args.action, directory=args.dir, port=args.port)


def run_script(action: str, *, directory: Path | None = None, port: int | None = None) -> int:
    """Run ``local.sh ACTION`` with the given overrides; returns its exit code."""
    if not SCRIPT.exists():
        raise ConfigError(f"{SCRIPT} not found: 'biopriv kafka' needs the biopriv source tree")
    env = dict(os.environ)
    if directory is not None:
        env["BIOPRIV_KAFKA_DIR"] = str(directory.resolve())
    if port is not None:
        env["BIOPRIV_KAFKA_PORT"] = str(port)
    env.setdefault("BIOPRIV_PYTHON", sys.executable)
    return subprocess.call(["bash", str(SCRIPT), action], env=env)
