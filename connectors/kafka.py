"""Kafka in one place: topic names, client factories with the project's settings, error mapping.

Everything that talks to Kafka goes through these factories: kafka-python clients for the
command line, replay, tail and state reads; aiokafka clients (:func:`async_consumer`,
:func:`async_producer`, with the group's :func:`copartitioned_assignor`) for the stream worker's
aiokafka port (:class:`connectors.port.AiokafkaPort`). The worker's default port, on
confluent-kafka, keeps its librdkafka settings and error mapping in :mod:`connectors.confluent`
(:data:`KAFKA_CLIENTS`). Settings such as ``acks=all`` or "no producer linger" are decided
once. Client errors are mapped to :class:`~pipeline.errors.BrokerError` with one clear line, so the
command line never prints a traceback for an unreachable broker, a refused login or a denied topic.

Every factory takes ``security`` (:class:`~connectors.security.ClientSecurity`: TLS, SASL); when
it is ``None`` the environment decides (``$BIOPRIV_CLIENT_CONFIG``, ``BIOPRIV_KAFKA_*``), and
without those clients connect in plaintext as before. Topic replication, ``min.insync.replicas``
and retention come from :class:`TopicSettings` (defaults for the single local node).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from connectors.security import CONFIG_ENV, ClientSecurity, load_client_config
from pipeline.errors import BrokerError, BrokerUnavailable, ConfigError

DEFAULT_BOOTSTRAP = os.environ.get("BIOPRIV_BOOTSTRAP", "127.0.0.1:9092")

#: Input topics, one per modality. Key = device id, so a device's frames stay on one partition.
RAW_TOPICS = {"eeg": "biopriv.raw.eeg", "audio": "biopriv.raw.audio", "bio": "biopriv.raw.bio"}
#: Privatized releases: the only topic downstream consumers should read.
PRIVATE_TOPIC = "biopriv.private.features"
#: Frames that failed validation, with the reason and the original bytes (access-restricted).
DEADLETTER_TOPIC = "biopriv.deadletter"
#: Operational events without raw data (budget exhausted, windows dropped...).
EVENTS_TOPIC = "biopriv.events"

#: Durable worker state (privacy ledger per device, resume offsets per raw partition); compacted,
#: co-partitioned with the raw topics. Holds device ids: restrict access like the raw topics.
STATE_TOPIC = "biopriv.state"

#: Partitions of every project topic; bounds the number of workers that share the work.
DEFAULT_PARTITIONS = 6
DEFAULT_PREFIX = "biopriv."


@dataclass(frozen=True)
class TopicSpec:
    """A topic the project needs: name, partitions, replication factor and topic-level configs."""

    name: str
    partitions: int = DEFAULT_PARTITIONS
    configs: tuple[tuple[str, str], ...] = ()
    replication_factor: int = 1


_HOUR_MS = 3600 * 1000


@dataclass(frozen=True)
class TopicSettings:
    """Durability and retention of the project's topics (``docs/operations.md``, "Topics").

    The defaults suit the single local node. A cluster of three or more brokers wants
    ``replication_factor=3, min_insync_replicas=2``: with the producers' ``acks=all`` a write is
    then on two brokers before it is acknowledged, and one broker can be lost.

    Parameters
    ----------
    replication_factor
        Copies of every partition, >= 1 and at most the number of brokers.
    min_insync_replicas
        Replicas that must have a write before ``acks=all`` succeeds, in [1, replication_factor].
    raw_retention_h
        How long raw frames are kept, hours (-1: forever). Bounds the longest outage of all
        workers after which every frame is still processed, and the reach of a replay from the
        log; a worker's recovery itself re-reads only a few windows back.
    deadletter_retention_h
        How long dead letters (original bytes of bad frames) are kept, hours (-1: forever).
    state_compaction_lag_ms
        ``min.compaction.lag.ms`` of the compacted state topic. The state topic is never
        deleted by time: compaction keeps every device's latest ledger record forever.
    """

    replication_factor: int = 1
    min_insync_replicas: int = 1
    raw_retention_h: float = 7 * 24
    deadletter_retention_h: float = 7 * 24
    state_compaction_lag_ms: int = 60_000

    #: Environment variables read by :meth:`from_env`, per field.
    ENV = {
        "replication_factor": "BIOPRIV_REPLICATION_FACTOR",
        "min_insync_replicas": "BIOPRIV_MIN_INSYNC_REPLICAS",
        "raw_retention_h": "BIOPRIV_RAW_RETENTION_H",
        "deadletter_retention_h": "BIOPRIV_DEADLETTER_RETENTION_H",
    }

    def __post_init__(self) -> None:
        from pipeline.validation import check_range

        check_range("replication factor", self.replication_factor, 1, 32)
        if int(self.replication_factor) != self.replication_factor:
            raise ConfigError(f"replication factor must be a whole number, got {self.replication_factor!r}")
        if not 1 <= self.min_insync_replicas <= self.replication_factor or int(self.min_insync_replicas) != self.min_insync_replicas:
            raise ConfigError(f"min.insync.replicas must be a whole number in [1, {self.replication_factor}] "
                              f"(the replication factor), got {self.min_insync_replicas!r}")
        for name in ("raw_retention_h", "deadletter_retention_h"):
            value = getattr(self, name)
            if value != -1:
                check_range(f"{name.replace('_h', '')} (hours, or -1 for forever)", value, 1.0, unit="h")
        check_range("state min.compaction.lag.ms", self.state_compaction_lag_ms, 0)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> TopicSettings:
        """Defaults, then the ``BIOPRIV_*`` variables of :attr:`ENV`, then ``overrides`` that are not None."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, var in cls.ENV.items():
            if env.get(var):
                try:
                    values[name] = float(env[var]) if name.endswith("_h") else int(env[var])
                except ValueError:
                    raise ConfigError(f"{var} must be a number, got {env[var]!r}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def retention_ms(self, hours: float) -> str:
        return "-1" if hours == -1 else str(int(hours * _HOUR_MS))


@dataclass(frozen=True)
class Topics:
    """The names of the topics one deployment uses, all sharing a prefix.

    The default prefix gives the names above; tests and parallel deployments pass their own
    (``Topics.with_prefix("t-1234.")``) so they never see each other's records.
    """

    prefix: str = DEFAULT_PREFIX

    @classmethod
    def with_prefix(cls, prefix: str) -> Topics:
        return cls(prefix)

    def raw(self, modality: str) -> str:
        """Input topic of a modality (``eeg``, ``audio``, ``bio``)."""
        return f"{self.prefix}raw.{modality}"

    @property
    def raw_all(self) -> tuple[str, ...]:
        return tuple(self.raw(m) for m in RAW_TOPICS)

    @property
    def private(self) -> str:
        return f"{self.prefix}private.features"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}deadletter"

    @property
    def events(self) -> str:
        return f"{self.prefix}events"

    @property
    def state(self) -> str:
        """Compacted worker state topic (see :mod:`pipeline.state`)."""
        return f"{self.prefix}state"

    def specs(self, partitions: int = DEFAULT_PARTITIONS, settings: TopicSettings | None = None) -> list[TopicSpec]:
        """The topics to create for this deployment (``settings``: :meth:`TopicSettings.from_env`)."""
        s = settings if settings is not None else TopicSettings.from_env()
        rf = s.replication_factor
        isr = (("min.insync.replicas", str(s.min_insync_replicas)),)
        raw = (("retention.ms", s.retention_ms(s.raw_retention_h)), *isr)
        dead = (("retention.ms", s.retention_ms(s.deadletter_retention_h)), *isr)
        state = (("cleanup.policy", "compact"), ("min.compaction.lag.ms", str(s.state_compaction_lag_ms)), *isr)
        return [
            *(TopicSpec(t, partitions, raw, rf) for t in self.raw_all),
            TopicSpec(self.private, partitions, isr, rf),
            TopicSpec(self.deadletter, partitions, dead, rf),
            TopicSpec(self.events, 1, isr, rf),
            TopicSpec(self.state, partitions, state, rf),
        ]

log = logging.getLogger(__name__)

#: The Kafka clients the stream worker's port runs on (``biopriv worker --kafka-client``):
#: :class:`connectors.confluent.ConfluentPort` and :class:`connectors.port.AiokafkaPort`.
KAFKA_CLIENTS = ("confluent", "aiokafka")
#: The worker's default client: librdkafka, chosen by the A/B in benchmarks/results/ab_clients.md.
KAFKA_CLIENT = "confluent"


def project_topics(partitions: int = DEFAULT_PARTITIONS, settings: TopicSettings | None = None) -> list[TopicSpec]:
    """The topics ``biopriv kafka up`` creates (default prefix)."""
    return Topics().specs(partitions, settings)


def resolve_security(security: ClientSecurity | None) -> ClientSecurity:
    """``security``, or else the environment's (``$BIOPRIV_CLIENT_CONFIG``, ``BIOPRIV_KAFKA_*``; plaintext if unset)."""
    return security if security is not None else load_client_config().security


#: Producer settings: durable and ordered (acks=all, one request in flight so retries cannot
#: reorder), tuned for latency (no linger: a frame is sent as soon as it is handed over).
PRODUCER_SETTINGS: dict[str, Any] = {
    "acks": "all",
    "linger_ms": 0,
    "retries": 5,
    "max_in_flight_requests_per_connection": 1,
    "request_timeout_ms": 15000,
    "max_request_size": 2 * 1024 * 1024,
}

#: Consumer settings tuned for latency: the broker answers a fetch as soon as one byte is there,
#: and waits at most 10 ms otherwise.
CONSUMER_SETTINGS: dict[str, Any] = {
    "fetch_min_bytes": 1,
    "fetch_max_wait_ms": 10,
    "auto_offset_reset": "earliest",
}


#: The stream worker's aiokafka producer: the same guarantees as :data:`PRODUCER_SETTINGS`
#: (aiokafka keeps one batch per partition in flight, so retries cannot reorder a partition).
ASYNC_PRODUCER_SETTINGS: dict[str, Any] = {
    "acks": "all",
    "linger_ms": 0,
    "request_timeout_ms": 15000,
    "max_request_size": 2 * 1024 * 1024,
}


@functools.cache
def copartitioned_assignor() -> Any:
    """The worker group's partition assignor (an aiokafka assignor class, see below)."""
    from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata

    class CopartitionedAssignor(AbstractPartitionAssignor):  # type: ignore[misc]  # aiokafka ships no type hints
        """Partition *numbers* go round-robin over the members (sorted by member id), each member
        taking that number of every subscribed topic. All raw topics of a device share its key, so
        they share its partition number: one worker holds every stream of a device (the privacy
        unit: one ledger) and the matching ``<prefix>state`` partition. aiokafka's round-robin
        assignor deals topic-partitions one by one, which splits a device over workers as soon as
        the partition count is not a multiple of the member count.
        """

        name = "biopriv-copartitioned"
        version = 0

        @classmethod
        def assign(cls, cluster: Any, members: Any) -> dict[str, Any]:
            numbers: set[int] = set()
            topics = sorted({t for m in members.values() for t in m.subscription})
            parts = {t: set(cluster.partitions_for_topic(t) or ()) for t in topics}
            for ps in parts.values():
                numbers |= ps
            order = sorted(members)
            plan: dict[str, dict[str, list[int]]] = {m: {} for m in order}
            for i, number in enumerate(sorted(numbers)):
                member = order[i % len(order)]
                for t in topics:
                    if number in parts[t] and t in members[member].subscription:
                        plan[member].setdefault(t, []).append(number)
            return {m: ConsumerProtocolMemberAssignment(cls.version, sorted(plan[m].items()), b"") for m in order}

        @classmethod
        def metadata(cls, topics: Any) -> Any:
            return ConsumerProtocolMemberMetadata(cls.version, list(topics), b"")

        @classmethod
        def on_assignment(cls, assignment: Any) -> None:
            pass

    return CopartitionedAssignor


def async_consumer(topics: Sequence[str], bootstrap: str, *, group_id: str, listener: Any = None,
                   security: ClientSecurity | None = None, **overrides: Any) -> Any:
    """An ``aiokafka.AIOKafkaConsumer`` in ``group_id`` with :data:`CONSUMER_SETTINGS`, subscribed
    to ``topics`` (with the rebalance ``listener``), partitions assigned by
    :func:`copartitioned_assignor`, offsets committed by the caller, TLS/SASL from ``security``.
    Not started.
    """
    from aiokafka import AIOKafkaConsumer

    settings = {**CONSUMER_SETTINGS, "enable_auto_commit": False,
                "partition_assignment_strategy": (copartitioned_assignor(),), **overrides}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, client_id="biopriv-worker",
                                **resolve_security(security).aiokafka(), **settings)
    consumer.subscribe(list(topics), listener=listener)
    return consumer


def async_producer(bootstrap: str, *, security: ClientSecurity | None = None, **overrides: Any) -> Any:
    """An ``aiokafka.AIOKafkaProducer`` with :data:`ASYNC_PRODUCER_SETTINGS`, TLS/SASL from ``security``. Not started."""
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(bootstrap_servers=bootstrap, client_id="biopriv-worker",
                            **resolve_security(security).aiokafka(), **{**ASYNC_PRODUCER_SETTINGS, **overrides})


@dataclass(frozen=True)
class OutRecord:
    """One record the worker produces: computed once, so a re-send after a failure has the same bytes."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: int | None = None


def async_error(exc: BaseException, action: str) -> BrokerError:
    """An aiokafka error as :class:`~pipeline.errors.BrokerUnavailable` when it is transient (no
    answer in time, connection lost, a retriable broker error), else as :class:`BrokerError`."""
    from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

    transient = isinstance(exc, KafkaTimeoutError | KafkaConnectionError | TimeoutError) or getattr(exc, "retriable", False)
    cls = BrokerUnavailable if transient else BrokerError
    detail = str(exc) or ("no answer within the request timeout" if isinstance(exc, TimeoutError) else "")
    return cls(f"{action}: {type(exc).__name__}: {detail}" if detail else f"{action}: {type(exc).__name__}")


@contextlib.contextmanager
def async_errors(action: str) -> Iterator[None]:
    """Map aiokafka errors (and timeouts) raised inside the block with :func:`async_error`."""
    from aiokafka.errors import KafkaError

    try:
        yield
    except (KafkaError, TimeoutError) as exc:
        raise async_error(exc, action) from exc


def delivery_error(exc: BaseException) -> BrokerError | None:
    """The failure of a record's acknowledgement as a :class:`~pipeline.errors.BrokerError`
    (:func:`async_error`); None for an exception that is not the client's."""
    from aiokafka.errors import KafkaError

    return async_error(exc, "send") if isinstance(exc, KafkaError | TimeoutError) else None


def async_sender(producer: Any) -> Callable[[OutRecord], Awaitable[Any]]:
    """``send(record)``: enqueue ``record`` on the aiokafka ``producer``; return the future of its
    acknowledgement (failed with an aiokafka error when the broker did not confirm the write within
    the request timeout, the producer's own retries included; :func:`delivery_error` maps it).

    Enqueueing raises :class:`~pipeline.errors.BrokerError` (:func:`async_error`) when the producer
    cannot take the record within its request timeout.
    """

    async def send(r: OutRecord) -> Any:
        with async_errors(f"send to {r.topic}"):
            return await producer.send(r.topic, r.value, key=r.key, headers=list(r.headers), partition=r.partition)

    return send


class ClientLogMute(logging.Filter):
    """Quiets aiokafka's logs: drops its records below CRITICAL while ``active()`` (a broker outage,
    which the worker logs once when it begins and once when it ends), and otherwise lets each kind
    of warning or error (same logger and message template) through at most once per ``every_s``:
    an unreachable broker makes the clients log about 60 lines a second before the outage is
    detected. ``dropped`` counts what was dropped."""

    def __init__(self, active: Callable[[], bool], every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__("aiokafka")
        self.active, self.every_s, self.clock = active, every_s, clock
        self.dropped = 0
        self._last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.CRITICAL:
            return True
        if self.active():
            self.dropped += 1
            return False
        if record.levelno < logging.WARNING:
            return True
        kind, now = (record.name, record.msg), self.clock()
        if now - self._last.get(kind, -math.inf) < self.every_s:
            self.dropped += 1
            return False
        self._last[kind] = now
        return True


def mute_client_logs(active: Callable[[], bool], loggers: Sequence[str] | None = None, **options: Any) -> ClientLogMute:
    """Install a :class:`ClientLogMute` on the named ``loggers`` (default: every aiokafka logger;
    a logger's filter does not apply to its children, so each module's logger gets it); return it."""
    mute = ClientLogMute(active, **options)
    if loggers is None:
        import aiokafka  # noqa: F401 - its modules create their loggers on import

        loggers = [n for n in list(logging.Logger.manager.loggerDict) if n == "aiokafka" or n.startswith("aiokafka.")]
    for name in loggers:
        logging.getLogger(name).addFilter(mute)
    return mute


def _diagnose(bootstrap: str, security: ClientSecurity) -> str:
    """Why a secured client got no answer: the TLS handshake's own error, or what to check."""
    if not security.tls:
        return (f"no answer to {security.describe()}; if the listener expects TLS (SSL/SASL_SSL), "
                "set security.protocol accordingly")
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5) as sock:
                with security.ssl_context().wrap_socket(sock, server_hostname=host or "127.0.0.1"):
                    pass
        except ssl.SSLCertVerificationError as exc:
            return (f"the TLS handshake failed: {exc.verify_message}; check ssl.ca.location "
                    f"({security.source}) names the CA that signed the broker certificate")
        except ssl.SSLError as exc:
            return f"the TLS handshake failed ({exc.reason or exc}): is it a TLS listener?"
        except (OSError, ValueError):
            continue
        return (f"TLS works but the broker did not accept {security.describe()}: check sasl.username, "
                "sasl.password, and that security.protocol and sasl.mechanism match the listener")
    return f"no TLS connection could be opened to {bootstrap}"


@contextlib.contextmanager
def broker_errors(bootstrap: str, security: ClientSecurity | None = None, action: str = "") -> Iterator[None]:
    """Map kafka-python errors raised inside the block to :class:`BrokerError`.

    The message names the broker, the principal (``security``), what was being done (``action``)
    and, for a refused login, denied resource or failed TLS handshake, the setting to check.
    """
    from kafka.errors import (
        AuthorizationError,
        KafkaConnectionError,
        KafkaError,
        KafkaTimeoutError,
        SaslAuthenticationFailedError,
    )

    sec = resolve_security(security)
    doing = f" ({action})" if action else ""
    kafka_log = logging.getLogger("kafka")
    if _REFUSED not in kafka_log.handlers:
        kafka_log.addHandler(_REFUSED)
    seen = _REFUSED.count
    try:
        yield
    except SaslAuthenticationFailedError as exc:
        raise BrokerError(
            f"Kafka at {bootstrap} refused the {sec.sasl_mechanism} login of {sec.principal}{doing}: {exc}; "
            f"check sasl.username and sasl.password ({sec.source})"
        ) from None
    except AuthorizationError as exc:
        detail = str(exc) if len(str(exc)) <= 200 else str(exc)[:200] + "..."
        raise BrokerError(
            f"Kafka at {bootstrap} denied {sec.principal}{doing}: {detail}; "
            "an admin grants access with ACLs (docs/operations.md, Security)"
        ) from None
    except ssl.SSLError as exc:
        raise BrokerError(f"Kafka at {bootstrap}: TLS failed for {sec.describe()}{doing}: {exc}") from None
    except (KafkaTimeoutError, KafkaConnectionError) as exc:
        why = _diagnose(bootstrap, sec) if sec.protocol != "PLAINTEXT" and _REFUSED.count == seen else ""
        if why.startswith("TLS works") and sec.sasl:
            _retry_login(bootstrap, sec)  # a slow login may have lost the race against the bootstrap timeout
        if _REFUSED.count > seen:  # kafka-python logs the refused login and reports a timeout
            raise BrokerError(
                f"Kafka at {bootstrap} refused the {sec.sasl_mechanism} login of {sec.principal}{doing}: "
                f"{_REFUSED.last}; check sasl.username and sasl.password ({sec.source})"
            ) from None
        if why:
            raise BrokerError(f"Kafka at {bootstrap}{doing}: {why} ({exc})") from None
        if _tcp_reachable(bootstrap, 1.0):
            raise BrokerError(
                f"Kafka at {bootstrap}{doing}: a server listens but did not answer Kafka requests in PLAINTEXT "
                f"({exc}); if it is a TLS/SASL listener, pass --client-config FILE (or set ${CONFIG_ENV})"
            ) from None
        raise BrokerError(
            f"no Kafka broker answers at {bootstrap} ({exc}); start one with `biopriv kafka up`"
        ) from None
    except KafkaError as exc:
        raise BrokerError(f"Kafka at {bootstrap}{doing}: {type(exc).__name__}: {exc}") from None


class _RefusedLogins(logging.Handler):
    """Counts the refused SASL logins that kafka-python logs (it then raises only a bootstrap timeout)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0
        self.last: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        from kafka.errors import SaslAuthenticationFailedError

        for arg in record.args if isinstance(record.args, tuple) else ():
            if isinstance(arg, SaslAuthenticationFailedError):
                self.count += 1
                self.last = arg


_REFUSED = _RefusedLogins()


def _retry_login(bootstrap: str, security: ClientSecurity, timeout_s: float = 15.0) -> None:
    """Log in once more with a longer timeout, so that a refused login is recorded by :data:`_REFUSED`."""
    from kafka.errors import KafkaError

    try:
        admin_client(bootstrap, security, bootstrap_timeout_ms=int(timeout_s * 1000)).close()
    except KafkaError:
        pass


def make_producer(bootstrap: str = DEFAULT_BOOTSTRAP, *, security: ClientSecurity | None = None, **overrides: Any) -> Any:
    """A ``kafka.KafkaProducer`` with :data:`PRODUCER_SETTINGS` (bytes keys and values), TLS/SASL from ``security``."""
    from kafka import KafkaProducer

    sec = resolve_security(security)
    settings = {**PRODUCER_SETTINGS, **overrides}
    with broker_errors(bootstrap, sec, "connect a producer"):
        return KafkaProducer(bootstrap_servers=bootstrap, client_id="biopriv", **sec.kafka_python(), **settings)


def make_consumer(
    topics: Sequence[str],
    bootstrap: str = DEFAULT_BOOTSTRAP,
    *,
    group_id: str | None = None,
    security: ClientSecurity | None = None,
    **overrides: Any,
) -> Any:
    """A ``kafka.KafkaConsumer`` subscribed to ``topics`` with :data:`CONSUMER_SETTINGS`, TLS/SASL from ``security``.

    ``group_id=None`` reads without committing offsets (tail, tests).
    """
    from kafka import KafkaConsumer

    sec = resolve_security(security)
    settings = {**CONSUMER_SETTINGS, **overrides}
    if group_id is None:
        settings.setdefault("enable_auto_commit", False)
    with broker_errors(bootstrap, sec, "connect a consumer"):
        return KafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=group_id, **sec.kafka_python(), **settings)


def admin_client(bootstrap: str, security: ClientSecurity | None = None, **overrides: Any) -> Any:
    """A ``kafka.KafkaAdminClient`` (topics, ACLs), TLS/SASL from ``security``; the caller closes it."""
    from kafka import KafkaAdminClient

    sec = resolve_security(security)
    settings = {"client_id": "biopriv-admin", "bootstrap_timeout_ms": 10000, **overrides}
    return KafkaAdminClient(bootstrap_servers=bootstrap, **sec.kafka_python(), **settings)


def _tcp_reachable(bootstrap: str, timeout_s: float) -> bool:
    """True when a TCP connection to some ``host:port`` of ``bootstrap`` succeeds."""
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
                return True
        except (OSError, ValueError):
            continue
    return False


def check_broker(bootstrap: str = DEFAULT_BOOTSTRAP, timeout_s: float = 5.0, *,
                 security: ClientSecurity | None = None) -> None:
    """Raise :class:`BrokerError` unless a broker answers at ``bootstrap`` within ``timeout_s``
    and accepts ``security`` (TLS handshake, SASL login).

    A plain TCP probe comes first: when nothing listens, the error is immediate, and no Kafka
    client is built (kafka-python leaves sockets open when its bootstrap fails).
    """
    if not _tcp_reachable(bootstrap, min(timeout_s, 2.0)):
        raise BrokerError(f"no Kafka broker answers at {bootstrap} (connection refused); start one with `biopriv kafka up`")
    sec = resolve_security(security)
    with broker_errors(bootstrap, sec, "list topics"):
        admin = admin_client(bootstrap, sec, request_timeout_ms=int(timeout_s * 1000),
                             bootstrap_timeout_ms=int(timeout_s * 1000))
        try:
            admin.list_topics()
        finally:
            admin.close()


def ensure_topics(bootstrap: str = DEFAULT_BOOTSTRAP, topics: Sequence[TopicSpec] | None = None, *,
                  security: ClientSecurity | None = None) -> list[str]:
    """Create the missing ``topics`` (default: :func:`project_topics`); return the names created.

    Topics the principal cannot see count as missing: creating them then needs the Create ACL
    (the admin's; workers and devices use topics an admin created).
    """
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    sec = resolve_security(security)
    specs = list(topics) if topics is not None else project_topics()
    with broker_errors(bootstrap, sec, "create topics"):
        admin = admin_client(bootstrap, sec)
        try:
            existing = set(admin.list_topics())
            new = [
                NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor,
                         topic_configs=dict(s.configs))
                for s in specs
                if s.name not in existing
            ]
            if new:
                with broker_errors(bootstrap, sec, "create " + ", ".join(t.name for t in new)):
                    try:
                        admin.create_topics(new)
                    except TopicAlreadyExistsError:
                        pass
            return [t.name for t in new]
        finally:
            admin.close()


def delete_topics(bootstrap: str, names: Sequence[str], *, security: ClientSecurity | None = None) -> None:
    """Delete topics (tests use their own topics and clean up)."""
    sec = resolve_security(security)
    with broker_errors(bootstrap, sec, "delete topics"):
        admin = admin_client(bootstrap, sec)
        try:
            admin.delete_topics(list(names))
        finally:
            admin.close()


def read_partition(
    bootstrap: str,
    topic: str,
    partition: int,
    start: int | None = None,
    end: int | None = None,
    *,
    timeout_s: float = 60.0,
    security: ClientSecurity | None = None,
) -> list[tuple[bytes | None, bytes | None, int]]:
    """``(key, value, offset)`` of one partition from ``start`` (default: the beginning) up to
    ``end`` exclusive (default: the end offset when called). Used on partition assignment to read
    the state topic and to re-read raw frames for a window rebuild.
    """
    import time as _time

    from kafka import TopicPartition

    tp = TopicPartition(topic, partition)
    sec = resolve_security(security)
    with broker_errors(bootstrap, sec, f"read {topic}/{partition}"):
        consumer = make_consumer([], bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100,
                                 max_partition_fetch_bytes=4 * 1024 * 1024, security=sec)
        try:
            consumer.assign([tp])
            first = consumer.beginning_offsets([tp])[tp]
            last = consumer.end_offsets([tp])[tp]
            stop = last if end is None else min(end, last)
            begin = first if start is None else max(start, first)
            out: list[tuple[bytes | None, bytes | None, int]] = []
            if begin >= stop:
                return out
            consumer.seek(tp, begin)
            deadline = _time.monotonic() + timeout_s
            while consumer.position(tp) < stop:
                if _time.monotonic() > deadline:
                    raise BrokerError(f"reading {topic}/{partition} [{begin}, {stop}) timed out after {timeout_s} s")
                for records in consumer.poll(timeout_ms=200).values():
                    out.extend((r.key, r.value, r.offset) for r in records if r.offset < stop)
            return out
        finally:
            consumer.close()


def read_latest(bootstrap: str, topic: str, *, timeout_s: float = 60.0,
                security: ClientSecurity | None = None) -> dict[bytes | None, bytes | None]:
    """The latest value of every key of ``topic`` up to its end offsets when called (what a
    compacted topic keeps, whether or not the broker has compacted it yet). A missing topic is a
    :class:`BrokerError` naming it."""
    sec = resolve_security(security)
    with broker_errors(bootstrap, sec, f"read {topic}"):
        consumer = make_consumer([], bootstrap, security=sec)
        try:
            partitions = consumer.partitions_for_topic(topic) if topic in consumer.topics() else None
        finally:
            consumer.close()
    if not partitions:
        raise BrokerError(f"topic {topic} does not exist at {bootstrap}")
    latest: dict[bytes | None, bytes | None] = {}
    for p in sorted(partitions):
        for key, value, _ in read_partition(bootstrap, topic, p, timeout_s=timeout_s, security=sec):
            latest[key] = value
    return latest
