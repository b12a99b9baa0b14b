"""The worker's durability bookkeeping, without Kafka: what a checkpoint holds, in which order it
is written, and how a partition's state is installed and its windows rebuilt.

Pure: functions over a :class:`~pipeline.processor.Processor`, a
:class:`~pipeline.state.ResumeTracker` and plain data; the worker (:mod:`pipeline.app`) does the
I/O through its port (:mod:`connectors.port`) in the order given here
(``docs/operations.md``, "Durable state"):

1. commit the consumed offsets (:attr:`Checkpoint.commits`): every output of the messages before
   them was acknowledged already (a batch's offsets count only once its output is);
2. write the device records (ledger slices, grid anchors: :func:`encode`) and wait for their
   acknowledgement;
3. write the layout and key records of new state partitions, then the resume offsets
   (:func:`final_records`), which rely on the ledgers of step 2.

A device's header (lineage, day keys) is written ahead of any release that depends on it, outside
checkpoints (:meth:`~pipeline.processor.Processor.header_records`).

Recovery of a raw partition: :func:`install` puts a state partition's ledgers, headers and grid
anchors into the processor, then :func:`rebuild` re-feeds ``[resume, first fetched offset)``
to the processor with its output discarded.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.processor import Outcome, Processor
from pipeline.state import (
    PartitionState,
    ResumeTracker,
    StateCipher,
    device_record,
    merge_ledger,
    resume_record,
    split_ledger,
)

#: A raw topic partition: ``(topic, partition number)``.
Partition = tuple[str, int]
#: A state record to write: key, value, state partition number.
StateRecord = tuple[bytes, bytes, int]


@dataclass
class Checkpoint:
    """One checkpoint: begun between two batches (:func:`begin`), device records encoded a slice
    at a time (:func:`encode`).

    ``resume`` and ``commits`` are taken when it begins; each device's ledger slice when its
    record is encoded, later. A ledger slice at least as recent as the resume offsets is what a
    rebuild needs (the windows it does not re-feed are in the ledger); a more recent one is fine.
    """

    dirty: set[str]
    todo: list[str]
    resume: dict[Partition, int]
    commits: dict[Partition, int]
    records: list[StateRecord] = field(default_factory=list)


def begin(processor: Processor, tracker: ResumeTracker, recovered: Iterable[Partition],
          consumed: dict[Partition, int], partitions: set[int] | None) -> Checkpoint:
    """Start a checkpoint of ``partitions`` (all owned if None): take the dirty devices on them
    (the others stay dirty), the resume offsets of the recovered raw partitions and the offsets
    consumed."""
    dirty = processor.dirty_devices
    processor.dirty_devices = set()
    if partitions is not None:
        keep = {d for d in dirty if tracker.partition_of(d) not in partitions}
        processor.dirty_devices |= keep
        dirty -= keep
    owned = [tp for tp in recovered if partitions is None or tp[1] in partitions]
    commits = {tp: o for tp, o in consumed.items() if partitions is None or tp[1] in partitions}
    return Checkpoint(dirty=dirty, todo=sorted(dirty), resume=tracker.resume_offsets(owned), commits=commits)


def encode(cp: Checkpoint, processor: Processor, tracker: ResumeTracker, cipher: StateCipher,
           budget_s: float | None) -> bool:
    """Encode device records for at most ``budget_s`` (all if None); True when none are left.

    A record holds the device's current ledger slice and grid anchors, sealed with ``cipher``, for
    the state partition of the device's raw partition.
    """
    deadline = None if budget_s is None else time.perf_counter() + budget_s
    while cp.todo:
        device = cp.todo.pop()
        p = tracker.partition_of(device)
        ledger = split_ledger(processor.engine.ledger_state((device,)), (device,)).get(device)
        windows = processor.anchors(device)
        if p is not None and (ledger is not None or windows):
            key, value = device_record(device, ledger, windows or None, cipher)
            cp.records.append((key, value, p))
        if deadline is not None and time.perf_counter() >= deadline:
            break
    return not cp.todo


def final_records(cp: Checkpoint, meta: list[tuple[bytes, bytes]], meta_partitions: Iterable[int]) -> list[StateRecord]:
    """What is written once the device records are acknowledged: the ``meta`` records (layout,
    key fingerprints) on each of ``meta_partitions``, then the checkpoint's resume offsets."""
    out = [(key, value, p) for p in sorted(meta_partitions) for key, value in meta]
    for (topic, partition), offset in cp.resume.items():
        key, value = resume_record(topic, partition, offset)
        out.append((key, value, partition))
    return out


def swap_ledger(processor: Processor, slices: dict[str, Any], drop: set[str]) -> None:
    """Replace the ledgers of ``drop`` by ``slices`` in the processor's privacy engine."""
    engine = processor.engine
    processor.engine = engine.with_ledger(merge_ledger(engine.ledger_state(), slices, drop=drop))


def drop(processor: Processor, tracker: ResumeTracker, partitions: set[int]) -> set[str]:
    """Forget the windows, ledgers and resume tracks of the devices on ``partitions``; return them."""
    devices = tracker.devices_on(partitions)
    processor.forget_devices(devices)
    if devices:
        swap_ledger(processor, {}, devices)
    tracker.forget(partitions)
    return devices


def install(processor: Processor, ps: PartitionState) -> set[str]:
    """Put a state partition into the processor: grid anchors of restarted streams (before the
    rebuild), ledgers, then headers (written ahead, so at least as new as the ledgers' copies).
    Returns the devices that had a ledger or a header."""
    processor.forget_devices(set(ps.devices) | set(ps.windows))
    for device, anchors in ps.windows.items():
        processor.park(device, anchors)
    swap_ledger(processor, ps.devices, set(ps.devices))
    for device, header in ps.headers.items():
        processor.engine.set_header(device, header)
    return set(ps.devices) | set(ps.headers)


@dataclass
class Rebuilt:
    """What re-feeding a partition's frames did: headers to write ahead, windows recharged and replayed."""

    headers: set[str]
    frames: int
    recharged: int
    replayed: int


def rebuild(processor: Processor, tracker: ResumeTracker, tp: Partition,
            frames: Iterable[tuple[bytes | None, bytes | None, int]]) -> Rebuilt:
    """Re-feed ``(key, value, offset)`` frames of raw partition ``tp`` with their output discarded
    (it was published before the crash); a frame that fails was dead-lettered when first seen."""
    before = (processor.stats.releases, processor.stats.replayed)
    headers: set[str] = set()
    n = 0
    for key, value, offset in frames:
        try:
            outcome = processor.process(value or b"", key)
        except Exception:  # noqa: BLE001 - it was dead-lettered when first seen
            outcome = Outcome()
        headers |= outcome.headers
        tracker.observe(tp, offset, outcome.frame)
        n += 1
    return Rebuilt(headers, n, processor.stats.releases - before[0], processor.stats.replayed - before[1])
