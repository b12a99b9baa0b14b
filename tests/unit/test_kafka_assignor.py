"""The worker group's partition assignor keeps every raw topic's partition p on one member."""

from __future__ import annotations

import pytest
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

from connectors.kafka import Topics, copartitioned_assignor

RAW = Topics().raw_all


class _Cluster:
    def __init__(self, partitions: dict[str, int]) -> None:
        self.partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        n = self.partitions.get(topic)
        return None if n is None else set(range(n))


def _assign(assignor: type, n_members: int, partitions: dict[str, int]) -> dict[str, dict[str, list[int]]]:
    members = {f"m{i}": ConsumerProtocolMemberMetadata(0, sorted(partitions), b"") for i in range(n_members)}
    out = assignor.assign(_Cluster(partitions), members)
    return {m: dict(a.assignment) for m, a in out.items()}


def _numbers_by_topic(assignment: dict[str, list[int]]) -> dict[str, set[int]]:
    return {t: set(ps) for t, ps in assignment.items()}


@pytest.mark.parametrize("n_members", [1, 2, 3, 4, 5, 6, 7])
def test_each_member_gets_the_same_numbers_of_every_raw_topic(n_members: int) -> None:
    plan = _assign(copartitioned_assignor(), n_members, {t: 6 for t in RAW})
    seen: list[tuple[str, int]] = []
    sizes = []
    for member, assignment in plan.items():
        by_topic = _numbers_by_topic(assignment)
        numbers = set().union(*by_topic.values()) if by_topic else set()
        for t in RAW:  # the same partition numbers on every raw topic
            assert by_topic.get(t, set()) == numbers, (member, by_topic)
        seen += [(t, p) for t, ps in assignment.items() for p in ps]
        sizes.append(len(numbers))
    assert sorted(seen) == sorted((t, p) for t in RAW for p in range(6))  # each exactly once
    assert max(sizes) - min(sizes) <= 1  # balanced partition numbers


def test_topics_with_fewer_partitions_keep_their_numbers_together() -> None:
    plan = _assign(copartitioned_assignor(), 2, {RAW[0]: 6, RAW[1]: 6, RAW[2]: 3})
    for assignment in plan.values():
        by_topic = _numbers_by_topic(assignment)
        assert by_topic.get(RAW[2], set()) == by_topic[RAW[0]] & {0, 1, 2}


def test_round_robin_would_split_devices_the_case_this_guards() -> None:
    """aiokafka's default assignor deals topic-partitions one by one: with 4 members, some member
    holds partition p of one raw topic but not of another (a device's streams on two workers)."""
    plan = _assign(RoundRobinPartitionAssignor, 4, {t: 6 for t in RAW})
    assert any(len({frozenset(_numbers_by_topic(a).get(t, set())) for t in RAW}) > 1 for a in plan.values())
