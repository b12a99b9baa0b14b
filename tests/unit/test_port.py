"""The helpers the Kafka ports share (:mod:`connectors.port`)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from connectors.port import Message, PendingCommit
from pipeline.errors import BrokerUnavailable


def test_a_commit_not_answered_in_time_is_waited_for_again_then_the_next_one_begins() -> None:
    async def run() -> list[str]:
        loop = asyncio.get_running_loop()
        begun: list[asyncio.Future[Any]] = []
        names: list[str] = []

        def begin(name: str) -> Any:
            def start() -> asyncio.Future[Any]:
                names.append(name)
                begun.append(loop.create_future())
                return begun[-1]
            return start

        commit = PendingCommit()
        with pytest.raises(BrokerUnavailable, match="no answer within the request timeout"):
            await commit.wait(begin("first"), timeout_s=0.01)
        assert not begun[0].cancelled()  # the commit is not abandoned
        loop.call_later(0.01, begun[0].set_result, "answer to first")
        assert await commit.wait(begin("second"), timeout_s=5.0) == "answer to first"  # the same commit
        fut = asyncio.ensure_future(commit.wait(begin("third"), timeout_s=5.0))
        await asyncio.sleep(0)
        begun[-1].set_exception(ValueError("refused"))
        with pytest.raises(ValueError, match="refused"):  # the commit's own error, for the port to map
            await fut
        return names

    assert asyncio.run(run()) == ["first", "third"]


def test_a_message_is_built_positionally_and_read_by_name() -> None:
    m = Message("t.raw.eeg", 2, 7, b"k", b"v")
    assert (m.topic, m.partition, m.offset, m.key, m.value) == ("t.raw.eeg", 2, 7, b"k", b"v")
    assert m == Message(topic="t.raw.eeg", partition=2, offset=7, key=b"k", value=b"v")
