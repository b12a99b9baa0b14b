"""Who may do what on the project's topics: the ACLs of the four principals, in one place.

The table below is the access model of ``docs/operations.md`` ("Security"). The secured local
broker (``deploy/kafka/local.sh up --secure``) creates it with :func:`apply_acls`; the Strimzi
``KafkaUser`` resources under ``deploy/k8s/`` carry the same rules (a test compares them).

========  ===========================================  ==========================================
role      topics                                       groups
========  ===========================================  ==========================================
device    ``<prefix>raw.*``: Write, Describe           none
worker    ``<prefix>raw.*``: Read, Describe;           its consumer group: Read
          ``private.features``, ``events``,
          ``deadletter``: Write, Describe;
          ``state``: Read, Write, Describe
analyst   ``private.features``, ``aggregates``:         ``biopriv-analyst*``: Read
          Read, Describe
admin     everything (a super user of the broker)      everything
========  ===========================================  ==========================================

Raw frames, dead letters (which carry raw bytes) and the state topic (device ids, ledgers) are
readable by the workers only; analysts read releases and aggregates and nothing else. Devices
can write raw frames and read nothing. Producers are idempotent (kafka-python's default): since
Kafka 3.0, Write on a topic also allows the idempotent producer, so no cluster ACL is needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from connectors.kafka import Topics, admin_client, broker_errors, resolve_security
from connectors.security import ClientSecurity
from pipeline.errors import BrokerError
from pipeline.validation import check_option

__all__ = ["ROLES", "AclRule", "acl_rules", "apply_acls"]

#: The principals of a deployment; ``admin`` is a super user and has no ACLs of its own.
ROLES = ("device", "worker", "analyst", "admin")
#: The default consumer group of ``biopriv worker``.
WORKER_GROUP = "biopriv-worker"
#: Analysts' consumer groups start with this (prefixed ACL).
ANALYST_GROUP_PREFIX = "biopriv-analyst"
#: Topic of aggregate releases, ``<prefix>aggregates``, readable by analysts.
AGGREGATES_SUFFIX = "aggregates"


@dataclass(frozen=True)
class AclRule:
    """One allow rule: operations of a role on a topic or group, by literal name or name prefix.

    Operation names are Kafka's (``Read``, ``Write``, ``Describe``), as in Strimzi's ``KafkaUser``.
    """

    role: str
    resource: str  # "topic" or "group"
    name: str
    prefixed: bool
    operations: tuple[str, ...]


def acl_rules(topics: Topics, *, worker_group: str = WORKER_GROUP, worker_group_prefixed: bool = False,
              analyst_group_prefix: str = ANALYST_GROUP_PREFIX) -> list[AclRule]:
    """The allow rules of device, worker and analyst for the topics of ``topics`` (by its prefix)."""
    raw = topics.prefix + "raw."
    rw, wd, rd = ("Read", "Write", "Describe"), ("Write", "Describe"), ("Read", "Describe")
    return [
        AclRule("device", "topic", raw, True, wd),
        AclRule("worker", "topic", raw, True, rd),
        AclRule("worker", "topic", topics.private, False, wd),
        AclRule("worker", "topic", topics.events, False, wd),
        AclRule("worker", "topic", topics.deadletter, False, wd),
        AclRule("worker", "topic", topics.state, False, rw),
        AclRule("worker", "group", worker_group, worker_group_prefixed, ("Read",)),
        AclRule("analyst", "topic", topics.private, False, rd),
        AclRule("analyst", "topic", topics.prefix + AGGREGATES_SUFFIX, False, rd),
        AclRule("analyst", "group", analyst_group_prefix, True, ("Read",)),
    ]


def _bindings(rules: list[AclRule], users: Mapping[str, str]) -> list[Any]:
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType

    out = []
    for r in rules:
        check_option("ACL role", r.role, ROLES)
        pattern = ResourcePattern(ResourceType.TOPIC if r.resource == "topic" else ResourceType.GROUP, r.name,
                                  ACLResourcePatternType.PREFIXED if r.prefixed else ACLResourcePatternType.LITERAL)
        for op in r.operations:
            out.append(ACL(f"User:{users.get(r.role, r.role)}", "*", ACLOperation[op.upper()],
                           ACLPermissionType.ALLOW, pattern))
    return out


def apply_acls(bootstrap: str, topics: Topics, *, security: ClientSecurity | None = None,
               users: Mapping[str, str] | None = None, **rule_options: Any) -> int:
    """Create the ACLs of :func:`acl_rules` (as a principal allowed to, e.g. admin); returns their number.

    ``users`` maps a role to its SASL user name (default: the role's name, as on the local broker).
    Creating an ACL that exists already is not an error.
    """
    security = resolve_security(security)
    acls = _bindings(acl_rules(topics, **rule_options), users or {})
    with broker_errors(bootstrap, security, "create ACLs"):
        admin = admin_client(bootstrap, security)
        try:
            result = admin.create_acls(acls)
        finally:
            admin.close()
    failed = result.get("failed", [])
    if failed:
        acl, exc = failed[0]
        raise BrokerError(f"Kafka at {bootstrap} refused {len(failed)} ACL(s) to {security.describe()}, first "
                          f"{acl.principal} {acl.operation.name} on {acl.resource_pattern.resource_name}: {exc}")
    return len(acls)
