"""``deploy/kafka/local.sh``: a second broker in its own directory and port, up twice, down once.

Uses the jars the session broker already assembled (same pom), so no extra download.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.kafka import Topics, check_broker
from pipeline.errors import BrokerError

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "kafka" / "local.sh"


def sh(action: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), action], env=env, capture_output=True, text=True, timeout=300)


def test_up_is_idempotent_and_down_stops_only_its_own(kafka_bootstrap: str, tmp_path: Path) -> None:
    session_dir = Path(os.environ.get("BIOPRIV_KAFKA_DIR", REPO / ".kafka"))
    data = tmp_path / "kafka"
    if (session_dir / "libs" / ".pom.sha1").exists():  # reuse the assembled jars
        shutil.copytree(session_dir / "libs", data / "libs")
    port = 19292
    env = {**os.environ, "BIOPRIV_KAFKA_DIR": str(data), "BIOPRIV_KAFKA_PORT": str(port),
           "BIOPRIV_PYTHON": sys.executable, "BIOPRIV_PARTITIONS": "2"}
    bootstrap = f"127.0.0.1:{port}"
    try:
        first = sh("up", env)
        assert first.returncode == 0, first.stderr + first.stdout
        assert "ready on" in first.stdout and (data / "broker.pid").exists()
        pid = (data / "broker.pid").read_text().strip()
        check_broker(bootstrap)

        second = sh("up", env)
        assert second.returncode == 0 and f"already running (pid {pid})" in second.stdout
        assert "topics created: none needed" in second.stdout

        status = sh("status", env)
        assert status.returncode == 0 and "answering" in status.stdout

        # 'down' with another directory does not touch this broker.
        other = sh("down", {**env, "BIOPRIV_KAFKA_DIR": str(tmp_path / "elsewhere")})
        assert other.returncode == 0 and "not started by this script" in other.stdout
        check_broker(bootstrap)
    finally:
        down = sh("down", env)
    assert down.returncode == 0 and f"stopped pid {pid}" in down.stdout
    assert not (data / "broker.pid").exists()
    assert sh("status", env).returncode == 3
    with pytest.raises(BrokerError, match="no Kafka broker answers"):
        check_broker(bootstrap, timeout_s=2)
    # the session broker is untouched
    check_broker(kafka_bootstrap)
    assert Topics().raw("eeg") == "biopriv.raw.eeg"
