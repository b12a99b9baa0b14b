"""Client security settings (connectors/security.py), their translation to each client library,
the Kafka error mapping, the shared CLI options and the topic settings."""

from __future__ import annotations

import argparse
import logging
import ssl
import subprocess
from pathlib import Path

import pytest

from connectors.acls import ROLES, acl_rules
from connectors.kafka import DEFAULT_BOOTSTRAP, Topics, TopicSettings, broker_errors
from connectors.security import ClientSecurity, env_name, load_client_config, read_properties
from pipeline.cli.options import add_client_options, client_argv, client_options
from pipeline.errors import BrokerError, ConfigError


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate made with openssl (as deploy/kafka/local.sh does)."""
    d = tmp_path_factory.mktemp("ca")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
                    "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem")], check=True, capture_output=True)
    return d / "ca.pem"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def scram_file(tmp_path: Path, ca: Path, **extra: str) -> Path:
    lines = {"bootstrap.servers": "broker:9094", "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
             "sasl.username": "worker", "sasl.password": "s3cret", "ssl.ca.location": str(ca), **extra}
    return write(tmp_path / "c.properties", "# comment\n! other comment\n\n" + "\n".join(f"{k}={v}" for k, v in lines.items()))


def test_no_settings_means_plaintext_as_before() -> None:
    cfg = load_client_config(None, environ={})
    assert cfg.security == ClientSecurity() and cfg.bootstrap is None
    assert cfg.security.kafka_python() == cfg.security.aiokafka() == cfg.security.librdkafka() == {}


def test_file_settings_translate_to_every_client(tmp_path: Path, ca_pem: Path) -> None:
    cfg = load_client_config(scram_file(tmp_path, ca_pem), environ={})
    sec = cfg.security
    assert cfg.bootstrap == "broker:9094"
    assert (sec.protocol, sec.sasl_mechanism, sec.username, sec.password) == ("SASL_SSL", "SCRAM-SHA-512", "worker", "s3cret")
    assert sec.principal == "User:worker" and "s3cret" not in repr(sec)
    kp = sec.kafka_python()
    assert isinstance(kp.pop("ssl_context"), ssl.SSLContext)
    assert kp == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "worker",
                  "sasl_plain_password": "s3cret", "ssl_check_hostname": True}
    ak = sec.aiokafka()
    ctx = ak.pop("ssl_context")
    assert isinstance(ctx, ssl.SSLContext) and ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ak == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "worker",
                  "sasl_plain_password": "s3cret"}
    assert sec.librdkafka() == {"security.protocol": "sasl_ssl", "sasl.mechanisms": "SCRAM-SHA-512",
                                "sasl.username": "worker", "sasl.password": "s3cret", "ssl.ca.location": str(ca_pem),
                                "ssl.endpoint.identification.algorithm": "https"}


def test_environment_overrides_the_file_key_by_key(tmp_path: Path, ca_pem: Path) -> None:
    path = scram_file(tmp_path, ca_pem)
    env = {"BIOPRIV_CLIENT_CONFIG": str(path), env_name("sasl.password"): "from-env",
           "BIOPRIV_KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": "none"}
    sec = load_client_config(None, environ=env).security
    assert sec.password == "from-env" and sec.username == "worker" and not sec.check_hostname
    assert "$BIOPRIV_KAFKA_SASL_PASSWORD" in sec.source and str(path) in sec.source
    assert sec.librdkafka()["ssl.endpoint.identification.algorithm"] == "none"
    only_env = load_client_config(None, environ={"BIOPRIV_KAFKA_SECURITY_PROTOCOL": "ssl",
                                                 "BIOPRIV_KAFKA_SSL_CA_LOCATION": str(ca_pem)}).security
    assert only_env.protocol == "SSL" and only_env.principal == "User:ANONYMOUS"
    assert only_env.kafka_python()["security_protocol"] == "SSL" and "sasl_mechanism" not in only_env.kafka_python()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"security.protocol": "SASL-SSL"}, "security.protocol (from {file}) must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL, got 'SASL-SSL'"),
        ({"sasl.mechanism": "GSSAPI"}, "sasl.mechanism (from {file}) must be one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 with security.protocol=SASL_SSL, got 'GSSAPI'"),
        ({"sasl.password": ""}, "sasl.password (from {file}) is required with security.protocol=SASL_SSL"),
        ({"security.protocol": "SSL"}, "sasl.mechanism (from {file}) is set but security.protocol is SSL; use SASL_SSL (or SASL_PLAINTEXT) to log in"),
        ({"ssl.ca.location": "/nonexistent/ca.pem"}, "ssl.ca.location (from {file}) must be a readable file, got '/nonexistent/ca.pem'"),
        ({"ssl.endpoint.identification.algorithm": "dns"}, "ssl.endpoint.identification.algorithm (from {file}) must be one of https, none, got 'dns'"),
        ({"sasl.usernme": "x"}, "unknown setting 'sasl.usernme' in client config '{file}'; allowed: bootstrap.servers, security.protocol"),
    ],
)
def test_bad_settings_name_the_setting_and_the_allowed_values(tmp_path: Path, ca_pem: Path, extra: dict[str, str],
                                                              message: str) -> None:
    path = scram_file(tmp_path, ca_pem, **extra)
    with pytest.raises(ConfigError) as exc:
        load_client_config(path, environ={})
    assert message.format(file=path) in str(exc.value)
    assert "\n" not in str(exc.value)


def test_more_bad_settings(tmp_path: Path, ca_pem: Path) -> None:
    with pytest.raises(ConfigError, match="ssl.ca.location .* is set but security.protocol is SASL_PLAINTEXT"):
        load_client_config(scram_file(tmp_path, ca_pem, **{"security.protocol": "SASL_PLAINTEXT"}), environ={})
    with pytest.raises(ConfigError, match="ssl.certificate.location and ssl.key.location .* go together"):
        load_client_config(scram_file(tmp_path, ca_pem, **{"ssl.certificate.location": str(ca_pem)}), environ={})
    not_pem = write(tmp_path / "ca.txt", "not a certificate")
    with pytest.raises(ConfigError, match="is not a usable PEM file"):
        load_client_config(scram_file(tmp_path, not_pem), environ={})
    with pytest.raises(ConfigError, match="line 1: expected key=value, got 'security.protocol'"):
        read_properties(write(tmp_path / "bad.properties", "security.protocol\n"))
    with pytest.raises(ConfigError, match="cannot be read"):
        load_client_config(None, environ={"BIOPRIV_CLIENT_CONFIG": str(tmp_path / "missing.properties")})


def test_librdkafka_spellings_and_colon_separator(tmp_path: Path, ca_pem: Path) -> None:
    path = write(tmp_path / "r.properties", f"security.protocol: sasl_ssl\nsasl.mechanisms = scram-sha-256\n"
                                            f"sasl.username=a\nsasl.password=p=q\nssl.ca.location={ca_pem}\n")
    sec = load_client_config(path, environ={}).security
    assert (sec.protocol, sec.sasl_mechanism, sec.password) == ("SASL_SSL", "SCRAM-SHA-256", "p=q")


# -- error mapping ---------------------------------------------------------------------------------


def test_broker_errors_name_the_principal_and_what_to_check(tmp_path: Path, ca_pem: Path) -> None:
    from kafka.errors import (
        GroupAuthorizationFailedError,
        KafkaTimeoutError,
        SaslAuthenticationFailedError,
        TopicAuthorizationFailedError,
    )

    sec = load_client_config(scram_file(tmp_path, ca_pem), environ={}).security
    with pytest.raises(BrokerError) as exc, broker_errors("b:1", sec, "read t.raw.eeg"):
        raise TopicAuthorizationFailedError("t.raw.eeg")
    assert str(exc.value).startswith("Kafka at b:1 denied User:worker (read t.raw.eeg): ")
    assert "t.raw.eeg" in str(exc.value) and "ACLs" in str(exc.value)
    with pytest.raises(BrokerError, match="denied User:worker: .*GroupAuthorizationFailedError: g"), broker_errors("b:1", sec):
        raise GroupAuthorizationFailedError("g")
    with pytest.raises(BrokerError, match="refused the SCRAM-SHA-512 login of User:worker .*check sasl.username and sasl.password"):
        with broker_errors("b:1", sec, "list topics"):
            raise SaslAuthenticationFailedError("invalid credentials")
    # kafka-python logs the refused login and then only raises a bootstrap timeout
    with pytest.raises(BrokerError, match=r"refused the SCRAM-SHA-512 login of User:worker \(list topics\): .*invalid credentials"):
        with broker_errors("b:1", sec, "list topics"):
            logging.getLogger("kafka.net.manager").error("Connection failed: %s", SaslAuthenticationFailedError("invalid credentials"))
            raise KafkaTimeoutError("Unable to bootstrap from b:1")
    with pytest.raises(BrokerError, match="no Kafka broker answers at 127.0.0.1:9 .*biopriv kafka up"):
        with broker_errors("127.0.0.1:9", ClientSecurity()):
            raise KafkaTimeoutError("Unable to bootstrap")


# -- CLI ---------------------------------------------------------------------------------------------


def test_client_options_precedence(tmp_path: Path, ca_pem: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BIOPRIV_CLIENT_CONFIG", raising=False)
    p = argparse.ArgumentParser()
    add_client_options(p)
    args = p.parse_args([])
    assert client_options(args) == ClientSecurity() and args.bootstrap == DEFAULT_BOOTSTRAP
    path = scram_file(tmp_path, ca_pem)
    args = p.parse_args(["--client-config", str(path)])
    assert client_options(args).username == "worker" and args.bootstrap == "broker:9094"
    assert client_argv(args) == ["--bootstrap", "broker:9094", "--client-config", str(path)]
    args = p.parse_args(["--client-config", str(path), "--bootstrap", "other:1"])
    client_options(args)
    assert args.bootstrap == "other:1"


@pytest.mark.parametrize("command", ["worker", "replay", "tail", "demo"])
def test_every_kafka_command_takes_client_config(command: str) -> None:
    from pipeline.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    options = {o for a in sub._actions for o in a.option_strings}
    assert {"--client-config", "--bootstrap"} <= options


# -- topics and ACLs --------------------------------------------------------------------------------


def test_topic_defaults_are_the_single_node_ones() -> None:
    specs = {s.name: s for s in Topics().specs(6, TopicSettings())}
    assert {s.replication_factor for s in specs.values()} == {1}
    assert dict(specs["biopriv.raw.eeg"].configs) == {"retention.ms": str(7 * 24 * 3600 * 1000), "min.insync.replicas": "1"}
    assert dict(specs["biopriv.state"].configs) == {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000",
                                                    "min.insync.replicas": "1"}
    assert "retention.ms" not in dict(specs["biopriv.state"].configs)  # compaction only: never deleted by time


def test_topic_settings_from_environment_and_options() -> None:
    env = {"BIOPRIV_REPLICATION_FACTOR": "3", "BIOPRIV_MIN_INSYNC_REPLICAS": "2", "BIOPRIV_RAW_RETENTION_H": "-1"}
    s = TopicSettings.from_env(env, deadletter_retention_h=48)
    specs = {x.name: x for x in Topics().specs(6, s)}
    assert specs["biopriv.private.features"].replication_factor == 3
    assert dict(specs["biopriv.raw.bio"].configs) == {"retention.ms": "-1", "min.insync.replicas": "2"}
    assert dict(specs["biopriv.deadletter"].configs)["retention.ms"] == str(48 * 3600 * 1000)
    with pytest.raises(ConfigError, match=r"min.insync.replicas must be a whole number in \[1, 1\] .*got 2"):
        TopicSettings(min_insync_replicas=2)
    with pytest.raises(ConfigError, match=r"raw_retention \(hours, or -1 for forever\) must be in \[1, inf\) h, got 0.5"):
        TopicSettings(raw_retention_h=0.5)
    with pytest.raises(ConfigError, match="BIOPRIV_REPLICATION_FACTOR must be a number, got 'three'"):
        TopicSettings.from_env({"BIOPRIV_REPLICATION_FACTOR": "three"})


def test_acl_rules_keep_raw_deadletter_and_state_from_analysts_and_devices() -> None:
    t = Topics.with_prefix("x.")
    rules = acl_rules(t)
    assert {r.role for r in rules} == set(ROLES) - {"admin"}

    def readable(role: str) -> set[str]:
        names = {s.name for s in t.specs()}
        out = set()
        for r in rules:
            if r.role == role and r.resource == "topic" and "Read" in r.operations:
                out |= {n for n in names if (n.startswith(r.name) if r.prefixed else n == r.name)}
        return out

    assert readable("analyst") == {t.private}
    assert readable("device") == set()
    assert readable("worker") == {*t.raw_all, t.state}
    writes = {r.name for r in rules if r.role == "worker" and "Write" in r.operations}
    assert writes == {t.private, t.events, t.deadletter, t.state}
