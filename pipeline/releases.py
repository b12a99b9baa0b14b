"""The output record format: what a privatized release looks like on the wire.

A release is a JSON object (schema in ``docs/frames.md``, section "Releases") keyed by the
device's pseudonym. It carries exactly what the privacy model allows (``docs/privacy.md``, threat
model): the pseudonym, stream and feature set, a coarse time slot, the noised values and the
public description of how each was noised. Never a raw sample, the device id, the device's
capture clock, sequence numbers, window indices or budget state. What operations and the latency
benchmark need besides travels in Kafka headers the worker adds only when asked
(``--latency-headers``).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.privacy import PrivateRelease, ReleaseRequest, Suppression
    from pipeline.windows import Window

RELEASE_SCHEMA_VERSION = 2


@dataclass(frozen=True, slots=True)
class ReleaseRecord:
    """One release ready to publish: Kafka ``key`` (the pseudonym) and JSON ``value``.

    The other fields are the worker's, never part of ``value``: ``device_id`` (whose durable
    header must be written before the release is sent), and the latency bookkeeping published
    only as opt-in headers.
    """

    key: bytes
    value: bytes
    release_id: str
    device_id: str
    #: ``send_ns`` and ``seq`` of the frame whose arrival completed the window.
    last_send_ns: int
    last_seq: int
    #: When the worker built it (header ``biopriv-t-release-ns``; a re-release stays bit-identical).
    t_release_ns: int


def slot(start_ns: int, seconds: float) -> dict[str, Any]:
    """The public time slot of a window starting at ``start_ns``: UTC, rounded down to ``seconds``."""
    return {"start": _slot_start(start_ns, seconds), "seconds": seconds}


@functools.lru_cache(maxsize=4096)
def _slot_start(start_ns: int, seconds: float) -> str:
    step = max(1, int(round(seconds * 1e9)))
    t = (start_ns // step) * step
    stamp = datetime.fromtimestamp(t // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if step % 1_000_000_000:  # sub-second cadence: a fixed number of decimals, so slots sort as text
        stamp += f".{t % 1_000_000_000:09d}"[: 1 + max(3, len(f"{step:09d}".rstrip("0")) - (len(str(step)) - 9))]
    return stamp + "Z"


def release_document(
    release_id: str,
    pseudonym: str,
    stream: str,
    feature_set: str,
    start_ns: int,
    hop_s: float,
    values: dict[str, float],
    noise: dict[str, dict[str, Any]],
    design: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON object of a release (``value`` of :class:`ReleaseRecord`, before encoding)."""
    doc: dict[str, Any] = {
        "v": RELEASE_SCHEMA_VERSION,
        "release_id": release_id,
        "pseudonym": pseudonym,
        "stream": stream,
        "feature_set": feature_set,
        "slot": slot(start_ns, hop_s),
        "values": values,
        "noise": noise,
    }
    if design is not None:
        doc["design"] = design
    return doc


def release_record(
    release: PrivateRelease,
    request: ReleaseRequest,
    pseudonym: str,
    window: Window,
    now_ns: int,
    design: dict[str, Any] | None = None,
) -> ReleaseRecord:
    """Build the published record of a privatized release (``design``: a study report's
    scheduling design, published with it)."""
    values = release.values.to_dict()
    assert release.plan is not None
    doc = release_document(release.release_id, pseudonym, request.stream, request.feature_set, request.start_ns,
                           request.hop_s, values, release.plan.describe(values), design)
    assert all(math.isfinite(v) for v in values.values())
    return ReleaseRecord(
        key=pseudonym.encode(),
        value=json.dumps(doc, separators=(",", ":"), allow_nan=False).encode(),
        release_id=release.release_id,
        device_id=request.device_id,
        last_send_ns=window.last_send_ns,
        last_seq=window.last_seq,
        t_release_ns=now_ns,
    )


def suppression_event(result: Suppression, request: ReleaseRequest, pseudonym: str) -> dict[str, Any]:
    """The operational event published when a release is suppressed (events topic, operators only;
    no values in it)."""
    return {
        "event": "release_suppressed",
        "reason": result.reason,
        "release_id": result.release_id,
        "pseudonym": pseudonym,
        "stream": request.stream,
        "feature_set": request.feature_set,
        "window_index": request.window_index,
        **{k: v for k, v in result.event.items() if k not in ("device_id", "values", "device", "type")},
    }
