""":class:`connectors.confluent.ConfluentPort` on the live broker: its rebalance callbacks leave
librdkafka's consumer able to serve the next callback of the same ``consume()``.

CI once saw a worker abort after a rebalance (``CallState_get: Assertion `cs != NULL' failed``):
the assignment callback read topic metadata through the consumer itself, which clears the
consumer's per-thread call state, and the next callback served in the same ``consume()`` (a log
line, an error) found none. With librdkafka's debug logs on, log lines follow every assignment, so
the old code aborts here on every run; the process runs in a subprocess so an abort is a failure,
not the end of the test session.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from connectors.kafka import Topics

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from connectors.confluent import ConfluentPort

    async def main(bootstrap, topic):
        assigned = []

        async def on_assign(parts):
            assigned.append(set(parts))

        async def on_revoke(parts):
            pass

        port = ConfluentPort(bootstrap, topic + ".group", [topic],
                             consumer_options={"extra": {"debug": "cgrp,topic,metadata"}})
        await port.start(on_assign, on_revoke)
        for _ in range(40):  # the assignment comes within the first fetches; its log lines with it
            await port.fetch(100, 10)
            if assigned and sum(port.partition_count(t) for t in [topic]) == 3:
                break
        for _ in range(10):  # the lines served after the callback
            await port.fetch(100, 10)
        await port.stop()
        print("assigned", sorted(assigned[0]) if assigned else None, "partitions", port.partition_count(topic))

    asyncio.run(main(sys.argv[1], sys.argv[2]))
""")


def test_the_assignment_callback_leaves_the_consumer_serving_callbacks(kafka_bootstrap: str, topics: Topics) -> None:
    topic = topics.raw("bio")
    done = subprocess.run([sys.executable, "-c", SCRIPT, kafka_bootstrap, topic], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert f"assigned [('{topic}', 0), ('{topic}', 1), ('{topic}', 2)] partitions 3" in done.stdout, done.stdout
