"""Kafka client errors reach the worker only as the project's :class:`~pipeline.errors.BrokerError`
(:class:`~pipeline.errors.BrokerUnavailable` when transient), through the port
(:class:`connectors.port.AiokafkaPort`) and :func:`connectors.kafka.async_error`."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import aiokafka.errors as ak
import pytest

from connectors.kafka import async_error
from connectors.port import AiokafkaPort
from pipeline.errors import BrokerError, BrokerUnavailable


def kafka_error_classes() -> list[type[BaseException]]:
    """Every error class aiokafka defines (but the abstract BrokerResponseError, which has no errno)."""
    return [c for _n, c in inspect.getmembers(ak, inspect.isclass)
            if issubclass(c, ak.KafkaError) and c is not ak.BrokerResponseError]


def test_every_aiokafka_error_maps_into_broker_error_naming_the_action() -> None:
    classes = kafka_error_classes()
    assert len(classes) > 50
    for cls in classes:
        try:
            exc = cls()
        except TypeError:  # a few need arguments
            continue
        mapped = async_error(exc, "fetch")
        assert isinstance(mapped, BrokerError), cls
        assert str(mapped).startswith(f"fetch: {cls.__name__}"), (cls, str(mapped))
        assert isinstance(mapped, BrokerUnavailable) == bool(
            isinstance(exc, ak.KafkaTimeoutError | ak.KafkaConnectionError) or getattr(exc, "retriable", False)), cls


class Consumer:
    """A stand-in aiokafka consumer whose calls raise ``error`` (or never answer)."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    async def getmany(self, **_: Any) -> dict[Any, Any]:
        assert self.error is not None
        raise self.error

    async def commit(self, offsets: Any) -> None:
        if self.error is not None:
            raise self.error
        await asyncio.Event().wait()  # the group coordinator never answers


def port_with(error: BaseException | None) -> AiokafkaPort:
    port = AiokafkaPort("127.0.0.1:1", "g", ["t.raw.eeg"])
    port.consumer = Consumer(error)
    return port


@pytest.mark.parametrize(("error", "kind"), [
    (ak.KafkaConnectionError("refused"), BrokerUnavailable),
    (ak.RequestTimedOutError(), BrokerUnavailable),
    (ak.TopicAuthorizationFailedError("t.raw.eeg"), BrokerError),
])
def test_the_port_maps_fetch_errors(error: BaseException, kind: type[BrokerError]) -> None:
    with pytest.raises(kind, match=f"^fetch: {type(error).__name__}") as got:
        asyncio.run(port_with(error).fetch(10, 5))
    assert (kind is BrokerError) == (not isinstance(got.value, BrokerUnavailable))


def test_a_stopped_consumer_ends_the_fetches_and_a_silent_coordinator_is_an_outage() -> None:
    assert asyncio.run(port_with(ak.ConsumerStoppedError()).fetch(10, 5)) is None
    with pytest.raises(BrokerUnavailable, match="commit to the group coordinator: no answer within the request timeout"):
        asyncio.run(port_with(None).commit({("t.raw.eeg", 0): 3}, timeout_s=0.01))
    with pytest.raises(BrokerError, match="CommitFailedError"):
        asyncio.run(port_with(ak.CommitFailedError("rebalanced")).commit({("t.raw.eeg", 0): 3}, timeout_s=1.0))


def test_the_pure_core_imports_no_kafka_client() -> None:
    """``pipeline/`` reaches Kafka only through ``connectors/`` (the worker through its port)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "pipeline"
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(root.parent)}: {n}" for n in names if n.split(".")[0] in ("aiokafka", "kafka")]
    assert offenders == []
