"""``biopriv kafka up|down|status|logs``: the local broker, through ``deploy/kafka/local.sh``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from pipeline.cli.options import add_topic_options, topic_settings
from pipeline.errors import ConfigError

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "local.sh"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "kafka",
        help="start, stop or check the local Kafka broker",
        description=(
            "Manage the local single-node Apache Kafka broker (KRaft, 127.0.0.1) that "
            "deploy/kafka/local.sh assembles from Maven Central. 'up' is idempotent and creates "
            "the project's topics; 'down' stops only the broker 'up' started. With --secure, the "
            "secured profile: a SASL_SSL listener (CA and certificate made on the spot, SCRAM-SHA-512 "
            "users), the StandardAuthorizer and the ACLs of the device, worker, analyst and admin "
            "principals, whose client properties files it writes to <dir>/clients/. Environment: "
            "BIOPRIV_KAFKA_DIR (jars, data, pid, log; default <repo>/.kafka, secure: <repo>/.kafka-secure), "
            "BIOPRIV_KAFKA_PORT (default 9092, secure: 9094), BIOPRIV_KAFKA_HEAP (default 512m)."
        ),
    )
    p.add_argument("action", choices=["up", "down", "status", "logs"], help="what to do")
    p.add_argument("--dir", type=Path, default=None, help="broker directory (sets BIOPRIV_KAFKA_DIR)")
    p.add_argument("--port", type=int, default=None, help="client port (sets BIOPRIV_KAFKA_PORT)")
    p.add_argument("--secure", action="store_true", help="the secured profile: TLS, SASL/SCRAM logins and ACLs (see above)")
    add_topic_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = topic_settings(args)  # checked here, handed to local.sh's topic creation
    env = {var: str(getattr(settings, name)) for name, var in settings.ENV.items()}
    return run_script(args.action, directory=args.dir, port=args.port, secure=args.secure, env=env)


def run_script(action: str, *, directory: Path | None = None, port: int | None = None, secure: bool = False,
               env: dict[str, str] | None = None) -> int:
    """Run ``local.sh ACTION [--secure]`` with the given overrides; returns its exit code."""
    if not SCRIPT.exists():
        raise ConfigError(f"{SCRIPT} not found: 'biopriv kafka' needs the biopriv source tree")
    env = {**os.environ, **(env or {})}
    if directory is not None:
        env["BIOPRIV_KAFKA_DIR"] = str(directory.resolve())
    if port is not None:
        env["BIOPRIV_KAFKA_PORT"] = str(port)
    env.setdefault("BIOPRIV_PYTHON", sys.executable)
    return subprocess.call(["bash", str(SCRIPT), action, *(["--secure"] if secure else [])], env=env)
