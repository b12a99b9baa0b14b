"""Kafka client security in one place: TLS and SASL settings, read, checked and translated.

Every Kafka client of biopriv (worker, replay, tail, the admin helpers) gets its security from
:class:`ClientSecurity`. The settings come from a Kafka-style client properties file (the
librdkafka names, which confluent-kafka and most tools share) and/or environment variables, the
environment winning key by key::

    # worker.properties
    bootstrap.servers=broker-1:9094
    security.protocol=SASL_SSL
    sasl.mechanism=SCRAM-SHA-512
    sasl.username=worker
    sasl.password=...
    ssl.ca.location=/etc/biopriv/ca.pem

* the file: ``--client-config FILE`` on the command line, else ``$BIOPRIV_CLIENT_CONFIG``;
* each key also as ``BIOPRIV_KAFKA_<KEY>`` with dots as underscores, upper case
  (``BIOPRIV_KAFKA_SASL_PASSWORD``, ``BIOPRIV_KAFKA_SECURITY_PROTOCOL``...): the password can
  come from a secret store's environment variable while the rest sits in a file.

Without either, clients connect in plaintext without authentication, as before. Settings are
checked when read: an unknown key, a protocol or mechanism outside the allowed ones, SASL
credentials without a SASL protocol (or the reverse), or a certificate file that cannot be read
raise :class:`~pipeline.errors.ConfigError` naming the setting, where it came from and the allowed
values. The same settings are then given to kafka-python (:meth:`ClientSecurity.kafka_python`),
aiokafka (:meth:`ClientSecurity.aiokafka`) and librdkafka/confluent-kafka
(:meth:`ClientSecurity.librdkafka`).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "PROPERTIES",
    "PROTOCOLS",
    "SASL_MECHANISMS",
    "ClientConfig",
    "ClientSecurity",
    "env_name",
    "load_client_config",
    "read_properties",
]

#: Environment variable naming the client properties file.
CONFIG_ENV = "BIOPRIV_CLIENT_CONFIG"
#: Prefix of the per-key environment variables (``BIOPRIV_KAFKA_SASL_USERNAME``...).
ENV_PREFIX = "BIOPRIV_KAFKA_"

#: ``security.protocol`` values (Kafka's names).
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
#: ``sasl.mechanism`` values every biopriv client supports.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: ``ssl.endpoint.identification.algorithm`` values: ``https`` checks the broker's host name
#: against its certificate (Kafka's default), ``none`` does not.
ENDPOINT_CHECKS = ("https", "none")

#: The keys a client properties file may hold, with what each means.
PROPERTIES: dict[str, str] = {
    "bootstrap.servers": "host:port[,host:port...] of the brokers (used when --bootstrap is not given)",
    "security.protocol": "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
    "sasl.mechanism": "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
    "sasl.username": "SASL user name (the Kafka principal User:<name>)",
    "sasl.password": "SASL password",
    "ssl.ca.location": "PEM file of the CA(s) that signed the broker certificate (default: system CAs)",
    "ssl.certificate.location": "PEM client certificate, for brokers that require TLS client authentication",
    "ssl.key.location": "PEM private key of the client certificate",
    "ssl.key.password": "password of an encrypted ssl.key.location",
    "ssl.endpoint.identification.algorithm": "https (check the broker host name, default) or none",
}
#: librdkafka spellings accepted as well.
ALIASES = {"sasl.mechanisms": "sasl.mechanism", "sasl.user": "sasl.username"}


def env_name(key: str) -> str:
    """The environment variable of a property: ``sasl.password`` -> ``BIOPRIV_KAFKA_SASL_PASSWORD``."""
    return ENV_PREFIX + key.upper().replace(".", "_")


def read_properties(path: str | Path) -> dict[str, str]:
    """``key=value`` (or ``key: value``) lines of a Java-style properties file; ``#``/``!`` comments.

    Raises :class:`ConfigError` when the file cannot be read or a line has no separator.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"client config {str(p)!r} cannot be read: {exc.strerror or exc}") from None
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        cut = min((i for i in (line.find("="), line.find(":")) if i > 0), default=-1)
        if cut < 0:
            raise ConfigError(f"client config {str(p)!r} line {n}: expected key=value, got {line!r}")
        out[line[:cut].strip()] = line[cut + 1 :].strip()
    return out


def _readable(key: str, value: str, source: str) -> Path:
    p = Path(value).expanduser()
    if not p.is_file() or not os.access(p, os.R_OK):
        raise ConfigError(f"{key} ({source}) must be a readable file, got {value!r}")
    return p


@dataclass(frozen=True)
class ClientSecurity:
    """How a client proves who it is and protects the connection (validated on construction).

    Parameters
    ----------
    protocol
        ``security.protocol``: one of :data:`PROTOCOLS`.
    sasl_mechanism, username, password
        SASL login, required with (and only with) the ``SASL_*`` protocols.
    ca_file
        CA certificates (PEM) trusted for the broker certificate; ``None``: the system's CAs.
    cert_file, key_file, key_password
        Client certificate and key for brokers that require TLS client authentication.
    check_hostname
        Check the broker host name against its certificate (``ssl.endpoint.identification.algorithm``).
    source
        Where the settings came from, for error messages (file path and/or environment).
    """

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password: str | None = field(default=None, repr=False)
    check_hostname: bool = True
    source: str = "defaults"

    def __post_init__(self) -> None:
        src = self.source
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"security.protocol ({src}) must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.sasl:
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ConfigError(f"sasl.mechanism ({src}) must be one of {', '.join(SASL_MECHANISMS)} with "
                                  f"security.protocol={self.protocol}, got {self.sasl_mechanism!r}")
            for key, value in (("sasl.username", self.username), ("sasl.password", self.password)):
                if not value:
                    raise ConfigError(f"{key} ({src}) is required with security.protocol={self.protocol}")
        else:
            given = [k for k, v in (("sasl.mechanism", self.sasl_mechanism), ("sasl.username", self.username),
                                    ("sasl.password", self.password)) if v]
            if given:
                raise ConfigError(f"{given[0]} ({src}) is set but security.protocol is {self.protocol}; "
                                  "use SASL_SSL (or SASL_PLAINTEXT) to log in")
        if not self.tls:
            given = [k for k, v in (("ssl.ca.location", self.ca_file), ("ssl.certificate.location", self.cert_file),
                                    ("ssl.key.location", self.key_file)) if v]
            if given:
                raise ConfigError(f"{given[0]} ({src}) is set but security.protocol is {self.protocol}; "
                                  "use SSL or SASL_SSL for TLS")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError(f"ssl.certificate.location and ssl.key.location ({src}) go together; only one is set")
        if self.tls:
            self.ssl_context()  # a CA or key file that is not PEM fails here, not at the first connection

    @property
    def tls(self) -> bool:
        """Whether connections are encrypted (``SSL``, ``SASL_SSL``)."""
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        """Whether the client logs in (``SASL_PLAINTEXT``, ``SASL_SSL``)."""
        return self.protocol.startswith("SASL_")

    @property
    def principal(self) -> str:
        """The Kafka principal the broker will see: ``User:<name>``, or ``ANONYMOUS``-like without SASL."""
        if self.sasl:
            return f"User:{self.username}"
        return "the TLS certificate's principal" if self.cert_file else "User:ANONYMOUS"

    def describe(self) -> str:
        """One line for messages: ``SASL_SSL as User:worker (from worker.properties)``."""
        return f"{self.protocol} as {self.principal} ({self.source})"

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context: ``ca_file`` (or the system CAs), optional client certificate."""
        try:
            ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
            if self.cert_file is not None:
                ctx.load_cert_chain(str(self.cert_file), str(self.key_file), self.key_password)
        except ssl.SSLError as exc:
            raise ConfigError(f"ssl.ca.location/ssl.certificate.location ({self.source}) is not a usable PEM "
                              f"file: {exc.reason or exc}") from None
        ctx.check_hostname = self.check_hostname
        return ctx

    def kafka_python(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's ``KafkaProducer``/``KafkaConsumer``/``KafkaAdminClient``."""
        if self.protocol == "PLAINTEXT":
            return {}
        kw: dict[str, Any] = {"security_protocol": self.protocol}
        if self.sasl:
            kw.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.username,
                      sasl_plain_password=self.password)
        if self.tls:
            kw.update(ssl_context=self.ssl_context(), ssl_check_hostname=self.check_hostname)
        return kw

    def aiokafka(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's ``AIOKafkaProducer``/``AIOKafkaConsumer``."""
        if self.protocol == "PLAINTEXT":
            return {}
        kw: dict[str, Any] = {"security_protocol": self.protocol}
        if self.sasl:
            kw.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.username,
                      sasl_plain_password=self.password)
        if self.tls:
            kw["ssl_context"] = self.ssl_context()
        return kw

    def librdkafka(self) -> dict[str, str]:
        """The librdkafka configuration (confluent-kafka ``Producer``/``Consumer`` dict)."""
        if self.protocol == "PLAINTEXT":
            return {}
        conf = {"security.protocol": self.protocol.lower()}
        if self.sasl:
            conf.update({"sasl.mechanisms": str(self.sasl_mechanism), "sasl.username": str(self.username),
                         "sasl.password": str(self.password)})
        if self.tls:
            conf["ssl.endpoint.identification.algorithm"] = "https" if self.check_hostname else "none"
            for key, value in (("ssl.ca.location", self.ca_file), ("ssl.certificate.location", self.cert_file),
                               ("ssl.key.location", self.key_file), ("ssl.key.password", self.key_password)):
                if value is not None:
                    conf[key] = str(value)
        return conf


@dataclass(frozen=True)
class ClientConfig:
    """What a client properties file and the environment say: the security, and maybe the brokers."""

    security: ClientSecurity = field(default_factory=ClientSecurity)
    #: ``bootstrap.servers`` when given (the command line's ``--bootstrap`` wins over it).
    bootstrap: str | None = None


def load_client_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> ClientConfig:
    """Read the client settings: the properties file ``path`` (default ``$BIOPRIV_CLIENT_CONFIG``),
    then the ``BIOPRIV_KAFKA_*`` variables of ``environ`` (default ``os.environ``) over it.

    Returns the plaintext default when neither says anything. Raises :class:`ConfigError` naming
    the bad setting, where it came from, and the allowed values.
    """
    env = os.environ if environ is None else environ
    file = path if path is not None else env.get(CONFIG_ENV) or None
    values: dict[str, str] = {}
    origin: dict[str, str] = {}
    if file is not None:
        for key, value in read_properties(file).items():
            name = ALIASES.get(key, key)
            if name not in PROPERTIES:
                raise ConfigError(f"unknown setting {key!r} in client config {str(file)!r}; allowed: {', '.join(PROPERTIES)}")
            values[name] = value
            origin[name] = f"from {file}"
    for key in PROPERTIES:
        var = env_name(key)
        if env.get(var):
            values[key] = env[var]
            origin[key] = f"from ${var}"
    if not values:
        return ClientConfig()
    sources = sorted(set(origin.values()))
    source = ", ".join(sources)

    def path_of(key: str) -> Path | None:
        return _readable(key, values[key], origin[key]) if key in values else None

    check = values.get("ssl.endpoint.identification.algorithm", "https").lower() or "none"
    if check not in ENDPOINT_CHECKS:
        raise ConfigError(f"ssl.endpoint.identification.algorithm ({origin['ssl.endpoint.identification.algorithm']}) "
                          f"must be one of {', '.join(ENDPOINT_CHECKS)}, got {values['ssl.endpoint.identification.algorithm']!r}")
    protocol = values.get("security.protocol", "PLAINTEXT")
    mechanism = values.get("sasl.mechanism")
    security = ClientSecurity(
        protocol=protocol.upper() if protocol.upper() in PROTOCOLS else protocol,  # librdkafka writes sasl_ssl
        sasl_mechanism=mechanism.upper() if mechanism and mechanism.upper() in SASL_MECHANISMS else mechanism,
        username=values.get("sasl.username"),
        password=values.get("sasl.password"),
        ca_file=path_of("ssl.ca.location"),
        cert_file=path_of("ssl.certificate.location"),
        key_file=path_of("ssl.key.location"),
        key_password=values.get("ssl.key.password"),
        check_hostname=check == "https",
        source=source,
    )
    return ClientConfig(security, values.get("bootstrap.servers") or None)
