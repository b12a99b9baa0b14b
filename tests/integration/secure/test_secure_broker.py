"""The secured local broker (``local.sh up --secure``) end to end, each principal under its own login.

A device produces raw frames; a worker subprocess (``--client-config worker.properties``) releases
them; the analyst reads the releases and is refused, with an authorization error, on the raw,
dead-letter and state topics. The full read matrix checks every principal against the ACL table
(``connectors/acls.py``). Clients without TLS, with a wrong password, or in plaintext on the
SASL_SSL listener are refused with a message that says which setting is wrong.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka.errors import KafkaError

from connectors.kafka import make_consumer, make_producer, read_partition
from pipeline.errors import BrokerError
from pipeline.features import DEFAULT_WINDOWS
from pipeline.frames import encode_frame, make_frame

pytestmark = pytest.mark.integration

T0 = 1_764_000_000_000_000_000
DEVICES = ("eeg-s1", "eeg-s2")
SECONDS = 4.0  # of EEG per device: 256 Hz, frames of 32 samples


def eeg_frames(device: str, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    rate, n, channels = 256.0, 32, ["Fz", "Cz", "Pz"]
    out = []
    for k in range(int(SECONDS * rate / n)):
        x = 10.0 * rng.standard_normal((len(channels), n))
        out.append(encode_frame(make_frame(device, "eeg", k, T0 + int(k * n * 1e9 / rate), rate, channels, "uV", x)))
    return out


def expected_releases() -> int:
    w = DEFAULT_WINDOWS["eeg"]
    return len(DEVICES) * (int((SECONDS - w.length_s) / w.hop_s + 1e-9) + 1)


def start_worker(broker: Any, st: Any, tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """``biopriv worker`` under the worker principal; the bootstrap comes from its properties file."""
    log_path = tmp_path / "worker.log"
    cmd = [sys.executable, "-m", "pipeline.cli", "worker", "--client-config", str(broker.client_config("worker")),
           "--group", st.group, "--topic-prefix", st.topics.prefix, "--partitions", "3", "--per-window",
           "--key-file", str(tmp_path / "keys.json"), "--data-dir", str(tmp_path / "worker"), "--stats-interval", "1"]
    with open(log_path, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=tmp_path)
    return proc, log_path


def test_device_worker_analyst_each_under_its_principal(secure_broker: Any, secure_topics: Any,
                                                        tmp_path: Path) -> None:
    b, t = secure_broker.bootstrap, secure_topics.topics
    worker, log_path = start_worker(secure_broker, secure_topics, tmp_path)
    try:
        producer = make_producer(b, security=secure_broker.security("device"))
        for i, device in enumerate(DEVICES):
            for value in eeg_frames(device, i):
                producer.send(t.raw("eeg"), key=device.encode(), value=value)
        producer.send(t.raw("eeg"), key=b"eeg-s1", value=b"not a frame")  # one dead letter
        producer.flush()
        producer.close()

        analyst = make_consumer([t.private], b, security=secure_broker.security("analyst"))
        releases: list[dict[str, object]] = []
        deadline = time.monotonic() + 90
        try:
            while len(releases) < expected_releases() and time.monotonic() < deadline and worker.poll() is None:
                for batch in analyst.poll(timeout_ms=500).values():
                    releases.extend(json.loads(r.value) for r in batch)
        finally:
            analyst.close()
        log = log_path.read_text(errors="replace")
        assert worker.poll() is None, f"worker exited:\n{log[-3000:]}"
        assert len(releases) == expected_releases(), log[-3000:]
        assert {r["stream"] for r in releases} == {"eeg"}
        assert len({r["pseudonym"] for r in releases}) == len(DEVICES)
        assert not any(d.encode() in json.dumps(r).encode() for r in releases for d in DEVICES)
        # The worker wrote the dead letter and its state under its own principal; admin can see both.
        admin = secure_broker.security("admin")
        dead = [v for p in range(3) for _k, v, _o in read_partition(b, t.deadletter, p, security=admin)]
        assert dead == [b"not a frame"]
        deadline = time.monotonic() + 30
        while not any(read_partition(b, t.state, p, security=admin) for p in range(3)):
            assert time.monotonic() < deadline, f"no checkpoint in the state topic:\n{log[-3000:]}"
            time.sleep(0.5)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    assert "checkpoint failed" not in log_path.read_text(errors="replace")


#: Which principal may read which topic (the ACL table of docs/operations.md, Security).
READABLE = {
    "device": set(),
    "worker": {"raw.eeg", "raw.audio", "raw.bio", "state"},
    "analyst": {"private.features"},
    "admin": {"raw.eeg", "raw.audio", "raw.bio", "private.features", "deadletter", "events", "state"},
}


def test_read_access_follows_the_acl_table(secure_broker: Any, secure_topics: Any) -> None:
    """Each principal reads exactly its topics; on the others it gets an authorization error naming the topic."""
    b, t = secure_broker.bootstrap, secure_topics.topics
    topics = {suffix: t.prefix + suffix for suffix in READABLE["admin"]}
    producer = make_producer(b, security=secure_broker.security("admin"))
    for topic in topics.values():  # a record in each, so that reading means fetching
        producer.send(topic, key=b"k", value=b"v", partition=0)
    producer.flush()
    producer.close()
    readable: dict[str, set[str]] = {}
    for role in READABLE:
        sec = secure_broker.security(role)
        readable[role] = set()
        for suffix, topic in topics.items():
            try:
                assert [v for _k, v, _o in read_partition(b, topic, 0, security=sec)] == [b"v"]
                readable[role].add(suffix)
            except BrokerError as exc:
                msg = str(exc)
                assert f"denied User:{role}" in msg and "TopicAuthorizationFailedError" in msg and topic in msg, msg
    assert readable == READABLE


def test_analyst_and_device_cannot_write_releases(secure_broker: Any, secure_topics: Any) -> None:
    """The device may write raw frames only; the analyst may write nothing, so even its idempotent
    producer's id (granted with Write on some topic, KIP-679) is refused."""
    t = secure_topics.topics
    for role, error in (("device", "TopicAuthorizationFailedError"), ("analyst", "ClusterAuthorizationFailedError")):
        producer = make_producer(secure_broker.bootstrap, security=secure_broker.security(role), max_block_ms=10000)
        try:
            with pytest.raises(KafkaError) as exc:
                producer.send(t.private, key=b"k", value=b"{}").get(timeout=20)
            assert error in repr(exc.value), f"{role}: {exc.value!r}"
        finally:
            producer.close(timeout=2)


#: Run in a subprocess: kafka-python leaves the sockets of a failed bootstrap open for a while.
REFUSED_SCRIPT = """
import dataclasses, json, sys
from connectors.kafka import check_broker
from connectors.security import load_client_config
from pipeline.errors import BrokerError
bootstrap, config = sys.argv[1], sys.argv[2]
analyst = load_client_config(config).security
cases = {
    "wrong password": dataclasses.replace(analyst, password="not-the-password"),
    "no TLS": dataclasses.replace(analyst, protocol="SASL_PLAINTEXT", ca_file=None),
    "CA not trusted": dataclasses.replace(analyst, ca_file=None),
    "plaintext": None,
}
out = {}
for name, security in cases.items():
    try:
        check_broker(bootstrap, timeout_s=3, security=security)
        out[name] = "accepted"
    except BrokerError as exc:
        out[name] = str(exc)
print(json.dumps(out))
"""


def test_refused_clients_say_which_setting_is_wrong(secure_broker: Any) -> None:
    proc = subprocess.run([sys.executable, "-c", REFUSED_SCRIPT, secure_broker.bootstrap,
                           str(secure_broker.client_config("analyst"))], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.splitlines()[-1])
    expected = {
        "wrong password": ["refused the SCRAM-SHA-512 login of User:analyst", "check sasl.username and sasl.password"],
        "no TLS": ["no answer to SASL_PLAINTEXT as User:analyst", "expects TLS"],
        "CA not trusted": ["TLS handshake failed", "self-signed certificate", "check ssl.ca.location"],
        "plaintext": ["did not answer Kafka requests in PLAINTEXT", "--client-config"],
    }
    assert set(got) == set(expected)
    for name, needles in expected.items():
        for needle in needles:
            assert needle in got[name], f"{name}: {got[name]}"


def test_cli_with_wrong_password_fails_in_one_line(secure_broker: Any, tmp_path: Path) -> None:
    text = secure_broker.client_config("analyst").read_text()
    bad = tmp_path / "analyst-bad.properties"
    bad.write_text("\n".join("sasl.password=wrong" if line.startswith("sasl.password=") else line
                             for line in text.splitlines()))
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "tail", "--client-config", str(bad), "--max", "1"],
                          capture_output=True, text=True, timeout=120)
    err = [line for line in proc.stderr.splitlines() if line.startswith("biopriv:")]
    assert proc.returncode == 2, proc.stderr
    assert len(err) == 1 and "refused the SCRAM-SHA-512 login of User:analyst" in err[0], proc.stderr
