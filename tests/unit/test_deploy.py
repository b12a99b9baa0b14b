"""Deployment files, checked offline: nothing here talks to a cluster or a Docker engine.

* ``deploy/k8s/``: the core Kubernetes resources validate against the Kubernetes JSON schemas
  that ``kubernetes-validate`` ships (strict: unknown fields fail); the Strimzi and KEDA custom
  resources are checked structurally and against the code (topics as ``connectors.kafka.Topics``
  declares them, ACLs as ``connectors.acls.acl_rules``, at most one worker per partition).
* ``deploy/Dockerfile`` and ``deploy/docker-compose.yml``: pinned install, non-root user,
  health check, and worker command lines that ``biopriv worker`` accepts.
* The key file in a Kubernetes Secret volume: what ``load_keys`` sees through its symlinks.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.acls import acl_rules
from connectors.kafka import DEFAULT_PARTITIONS, Topics, TopicSettings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
#: Kubernetes version whose schemas the core resources are validated against.
K8S_VERSION = "1.33.0"
CORE_KINDS = {"Namespace", "ConfigMap", "Deployment", "Service", "Secret"}


def load_kustomization() -> list[dict[str, Any]]:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for name in kust["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


DOCS = load_kustomization()


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in DOCS if d["kind"] == kind]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in by_kind(kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert kust["namespace"] == "biopriv"
    assert {d["kind"] for d in DOCS} == CORE_KINDS | {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser",
                                                     "ScaledObject", "TriggerAuthentication"}


@pytest.mark.parametrize("doc", [d for d in DOCS if d["kind"] in CORE_KINDS],
                         ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_core_resources_validate_against_kubernetes_schemas(doc: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_schema_validation_can_fail() -> None:
    """The validator is offline and strict: a misspelt field or a wrong type is an error."""
    import kubernetes_validate

    bad = yaml.safe_load(yaml.safe_dump(one("Deployment")))
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/healthz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    bad = yaml.safe_load(yaml.safe_dump(one("Deployment")))
    bad["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


@pytest.mark.parametrize("doc", [d for d in DOCS if d["kind"] not in CORE_KINDS],
                         ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_custom_resources_are_well_formed(doc: dict[str, Any]) -> None:
    api = {"Kafka": "kafka.strimzi.io/v1beta2", "KafkaNodePool": "kafka.strimzi.io/v1beta2",
           "KafkaTopic": "kafka.strimzi.io/v1beta2", "KafkaUser": "kafka.strimzi.io/v1beta2",
           "ScaledObject": "keda.sh/v1alpha1", "TriggerAuthentication": "keda.sh/v1alpha1"}
    assert doc["apiVersion"] == api[doc["kind"]]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", doc["metadata"]["name"])
    assert isinstance(doc.get("spec"), dict)
    if doc["kind"] in ("KafkaNodePool", "KafkaTopic", "KafkaUser"):
        assert doc["metadata"]["labels"]["strimzi.io/cluster"] == "biopriv"


def test_strimzi_cluster_is_kraft_with_scram_tls_and_an_authorizer() -> None:
    kafka = one("Kafka", "biopriv")
    assert kafka["metadata"]["annotations"] == {"strimzi.io/node-pools": "enabled", "strimzi.io/kraft": "enabled"}
    assert "zookeeper" not in kafka["spec"]
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    assert listener["tls"] is True and listener["authentication"] == {"type": "scram-sha-512"}
    assert kafka["spec"]["kafka"]["authorization"] == {"type": "simple", "superUsers": ["admin"]}
    config = kafka["spec"]["kafka"]["config"]
    assert config["auto.create.topics.enable"] is False and config["allow.everyone.if.no.acl.found"] is False
    pool = one("KafkaNodePool")
    assert sorted(pool["spec"]["roles"]) == ["broker", "controller"]
    assert pool["spec"]["replicas"] >= config["default.replication.factor"] == 3
    assert config["min.insync.replicas"] == 2


def test_kafka_topics_are_the_project_topics_with_three_replicas() -> None:
    expected = Topics().specs(DEFAULT_PARTITIONS, TopicSettings(replication_factor=3, min_insync_replicas=2))
    got = {d["spec"]["topicName"]: d["spec"] for d in by_kind("KafkaTopic")}
    assert set(got) == {s.name for s in expected}
    for s in expected:
        spec = got[s.name]
        assert (spec["partitions"], spec["replicas"]) == (s.partitions, s.replication_factor), s.name
        assert {k: str(v) for k, v in spec["config"].items()} == dict(s.configs), s.name


def test_kafka_users_carry_the_acls_of_the_code() -> None:
    def strimzi(rule: Any) -> dict[str, Any]:
        return {"resource": {"type": rule.resource, "name": rule.name,
                             "patternType": "prefix" if rule.prefixed else "literal"},
                "operations": sorted(rule.operations)}

    users = {d["metadata"]["name"]: d["spec"] for d in by_kind("KafkaUser")}
    assert set(users) == {"device", "worker", "analyst", "admin"}
    for name, spec in users.items():
        assert spec["authentication"] == {"type": "scram-sha-512"}
        got = [{**a, "operations": sorted(a["operations"])} for a in spec.get("authorization", {}).get("acls", [])]
        expected = [strimzi(r) for r in acl_rules(Topics()) if r.role == name]
        assert sorted(map(str, got)) == sorted(map(str, expected)), name
    assert "authorization" not in users["admin"]  # a super user (Kafka spec), no ACLs


def worker_container() -> dict[str, Any]:
    (c,) = one("Deployment", "biopriv-worker")["spec"]["template"]["spec"]["containers"]
    return c


def test_worker_deployment_probes_security_and_resources() -> None:
    pod = one("Deployment", "biopriv-worker")["spec"]["template"]["spec"]
    c = worker_container()
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["ports"] == [{"name": "http", "containerPort": 6066}]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    for container in pod["containers"] + pod["initContainers"]:
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    requests = c["resources"]["requests"]
    assert requests["cpu"] == "500m" and "cpu" not in c["resources"]["limits"]
    env = {e["name"]: e for e in c["env"]}
    assert env["BIOPRIV_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "worker", "key": "password"}


def test_worker_client_config_is_valid_and_secured(tmp_path: Path) -> None:
    """The ConfigMap's properties file loads with connectors.security (CA file and password stand in)."""
    from connectors.security import load_client_config

    text = one("ConfigMap", "biopriv-worker-client")["data"]["worker.properties"]
    ca = Path(re.search(r"ssl.ca.location=(\S+)", text).group(1))  # type: ignore[union-attr]
    assert ca == Path("/etc/biopriv/kafka-ca/ca.crt")
    mounts = {m["mountPath"]: m["name"] for m in worker_container()["volumeMounts"]}
    assert mounts[str(ca.parent)] == "kafka-ca"
    import subprocess

    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ca",
                    "-keyout", str(tmp_path / "k"), "-out", str(tmp_path / "ca.crt")], check=True, capture_output=True)
    local = tmp_path / "worker.properties"
    local.write_text(text.replace(str(ca), str(tmp_path / "ca.crt")))
    cfg = load_client_config(local, environ={"BIOPRIV_KAFKA_SASL_PASSWORD": "from-the-secret"})
    assert cfg.bootstrap == "biopriv-kafka-bootstrap:9093"
    assert cfg.security.describe().startswith("SASL_SSL as User:worker")


def worker_parser() -> argparse.ArgumentParser:
    from pipeline.cli import build_parser

    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["worker"]


def check_worker_args(args: list[str]) -> None:
    """The worker accepts ``args`` (the health web server's ``--web-port`` included)."""
    parsed = worker_parser().parse_args(list(args))
    assert parsed.web_port == 6066


def test_worker_command_lines_parse() -> None:
    check_worker_args([str(a) for a in worker_container()["args"]])
    compose = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text())
    check_worker_args(compose["services"]["worker"]["command"])
    cmd = re.search(r"^CMD (\[.*\])$", (REPO / "deploy" / "Dockerfile").read_text(), re.M)
    assert cmd is not None
    check_worker_args(yaml.safe_load(cmd.group(1)))
    with pytest.raises(SystemExit):
        check_worker_args(["--no-such-option"])


def test_keda_scales_the_worker_group_up_to_one_worker_per_partition() -> None:
    so = one("ScaledObject", "biopriv-worker")["spec"]
    assert so["scaleTargetRef"]["name"] == "biopriv-worker"
    assert so["maxReplicaCount"] == DEFAULT_PARTITIONS == min(
        t["spec"]["partitions"] for t in by_kind("KafkaTopic") if ".raw." in t["spec"]["topicName"])
    (trigger,) = so["triggers"]
    args = worker_container()["args"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == args[args.index("--group") + 1]
    assert trigger["metadata"]["bootstrapServers"] == "biopriv-kafka-bootstrap:9093"
    auth = one("TriggerAuthentication", trigger["authenticationRef"]["name"])["spec"]["secretTargetRef"]
    assert {a["parameter"] for a in auth} == {"sasl", "tls", "username", "password", "ca"}
    settings = one("Secret", "biopriv-keda-kafka")["stringData"]
    assert settings == {"sasl": "scram_sha512", "tls": "enable", "username": "worker"}


def test_dockerfile_pins_runs_non_root_and_checks_health() -> None:
    text = (REPO / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^RUN pip install -c constraints\.txt \.$", text, re.M)
    assert "COPY pyproject.toml README.md constraints.txt ./" in text
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert re.search(r"^EXPOSE 6066$", text, re.M)
    health = re.search(r"^HEALTHCHECK .*\n\s+CMD (\[.*\])$", text, re.M)
    assert health is not None
    argv = yaml.safe_load(health.group(1))
    assert argv[:2] == ["python", "-c"] and "http://127.0.0.1:6066/healthz" in argv[2]
    compile(argv[2], "healthcheck", "exec")


def test_compose_runs_the_worker_as_the_key_files_owner() -> None:
    compose = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text())
    worker = compose["services"]["worker"]
    assert worker["user"] == "${BIOPRIV_UID:-10001}:${BIOPRIV_GID:-10001}"
    assert worker["secrets"] == ["biopriv-keys.json"]
    assert compose["secrets"]["biopriv-keys.json"] == {"file": "../.biopriv/keys.json"}
    args = worker["command"]
    assert args[args.index("--key-file") + 1] == "/run/secrets/biopriv-keys.json"



def test_compose_key_file_command_makes_a_file_the_loader_accepts(tmp_path: Path) -> None:
    """Run the documented one-time command (with this Python) and check the file's mode."""
    import subprocess
    import sys

    from pipeline.privacy import load_keys

    header = (REPO / "deploy" / "docker-compose.yml").read_text().split("services:")[0]
    setup = next(line for line in header.splitlines() if line.startswith("#   mkdir"))[1:].strip()
    assert setup.startswith("mkdir -p .biopriv && .venv/bin/python -c ")
    subprocess.run(["bash", "-c", setup.replace(".venv/bin/python", shlex.quote(sys.executable))], cwd=tmp_path,
                   check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    key_file = tmp_path / ".biopriv" / "keys.json"
    assert key_file.stat().st_mode & 0o777 == 0o600
    load_keys(key_file)


# -- the key file in a Secret volume ---------------------------------------------------------------


def secret_volume(root: Path, content: bytes, mode: int) -> Path:
    """The layout the kubelet writes for a Secret volume: keys.json -> ..data/keys.json, ..data -> ..<ts>/."""
    stamp = root / "..2026_01_01_00_00_00.000000001"
    stamp.mkdir(parents=True)
    (stamp / "keys.json").write_bytes(content)
    os.chmod(stamp / "keys.json", mode)
    (root / "..data").symlink_to(stamp.name)
    (root / "keys.json").symlink_to("..data/keys.json")
    return root / "keys.json"


def test_key_file_through_secret_volume_symlinks(tmp_path: Path) -> None:
    """load_keys checks the file behind the symlinks: 0400 passes; 0440 (what fsGroup makes of a
    Secret's 0400) is refused, hence the init container that copies the key to 0400."""
    from pipeline.errors import PrivacyError
    from pipeline.privacy import load_keys

    original = tmp_path / "keys.json"
    keys = load_keys(original)
    content = original.read_bytes()
    ok = secret_volume(tmp_path / "secret-0400", content, 0o400)
    assert ok.is_symlink() and (ok.lstat().st_mode & 0o777) == 0o777 and (ok.stat().st_mode & 0o777) == 0o400
    assert load_keys(ok).pseudonym("dev-1") == keys.pseudonym("dev-1")
    group_readable = secret_volume(tmp_path / "secret-0440", content, 0o440)
    with pytest.raises(PrivacyError, match="must not be accessible by group or others: mode is 0440"):
        load_keys(group_readable)
    volume = yaml.safe_load(yaml.safe_dump(one("Deployment", "biopriv-worker")))["spec"]["template"]["spec"]
    (init,) = volume["initContainers"]
    assert init["command"][:3] == ["install", "-m", "0400"]
    secret = next(v for v in volume["volumes"] if v["name"] == "key-secret")["secret"]
    assert secret["defaultMode"] == 0o400 and secret["secretName"] == "biopriv-keys"
