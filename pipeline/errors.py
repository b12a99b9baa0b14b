"""The one exception hierarchy of biopriv.

Every error the package raises on purpose derives from :class:`BioprivError`, so callers can
catch the package's errors without catching programming mistakes. Kafka client errors are mapped
into :class:`BrokerError` by :mod:`connectors.kafka`.
"""

from __future__ import annotations


class BioprivError(Exception):
    """Base class of every error biopriv raises on purpose."""


class ConfigError(BioprivError, ValueError):
    """A setting is missing, out of range or inconsistent; the message names the value."""


class FrameError(BioprivError, ValueError):
    """A frame failed decoding or validation; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class RecordingError(BioprivError):
    """A recording file cannot be found, read or understood."""


class BrokerError(BioprivError):
    """The Kafka broker is unreachable or refused an operation."""


class BrokerUnavailable(BrokerError):
    """The broker did not answer in time or the connection failed: a transient outage, retried."""


class PrivacyError(BioprivError):
    """The privacy engine cannot release a value (bad configuration, missing key...)."""


class BudgetExhausted(PrivacyError):
    """A device's privacy budget cannot pay for a release; the release is suppressed."""


class StateError(BioprivError):
    """Durable worker state (the state topic) is malformed or from another format version."""
