"""The secured local broker for the session: ``deploy/kafka/local.sh up --secure`` on its own
directory and ports (SASL_SSL, SCRAM-SHA-512, StandardAuthorizer), stopped at the end.

Each test gets its own topic prefix, created by the admin principal, with the ACLs of
:func:`connectors.acls.acl_rules` for that prefix and the test's worker group.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from connectors.acls import apply_acls
from connectors.kafka import Topics, delete_topics, ensure_topics
from connectors.security import ClientSecurity, load_client_config

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "deploy" / "kafka" / "local.sh"
#: First client port tried; the controller takes the next one.
FIRST_PORT = 19392


def _free_port_pair(start: int) -> int:
    for port in range(start, start + 200, 2):
        try:
            for p in (port, port + 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no two free ports in [{start}, {start + 200})")


@dataclass(frozen=True)
class SecureBroker:
    """The running secured broker: its address and the client settings files of its principals."""

    bootstrap: str
    directory: Path

    def client_config(self, role: str) -> Path:
        """``<dir>/clients/<role>.properties`` (admin, device, worker, analyst)."""
        return self.directory / "clients" / f"{role}.properties"

    def security(self, role: str) -> ClientSecurity:
        return load_client_config(self.client_config(role)).security


@pytest.fixture(scope="session")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    directory = tmp_path_factory.mktemp("kafka-secure")
    port = _free_port_pair(FIRST_PORT)
    env = {**os.environ, "BIOPRIV_PYTHON": sys.executable, "BIOPRIV_KAFKA_DIR": str(directory),
           "BIOPRIV_KAFKA_PORT": str(port), "BIOPRIV_PARTITIONS": "3"}
    subprocess.run(["bash", str(SCRIPT), "up", "--secure"], check=True, env=env, timeout=600)
    try:
        yield SecureBroker(f"127.0.0.1:{port}", directory)
    finally:
        subprocess.run(["bash", str(SCRIPT), "down", "--secure"], check=False, env=env, timeout=60)


@dataclass(frozen=True)
class SecureTopics:
    """A test's topics on the secured broker and the worker group its ACLs allow."""

    topics: Topics
    group: str


@pytest.fixture
def secure_topics(secure_broker: SecureBroker) -> Iterator[SecureTopics]:
    """Fresh topics (3 partitions) under a unique prefix, created by admin, with the prefix's ACLs."""
    admin = secure_broker.security("admin")
    t = Topics.with_prefix(f"s{uuid.uuid4().hex[:10]}.")
    group = f"g-{t.prefix.rstrip('.')}"
    ensure_topics(secure_broker.bootstrap, t.specs(partitions=3), security=admin)
    apply_acls(secure_broker.bootstrap, t, security=admin, worker_group=group)
    yield SecureTopics(t, group)
    delete_topics(secure_broker.bootstrap, [s.name for s in t.specs()], security=admin)
