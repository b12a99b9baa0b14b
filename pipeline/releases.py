"""The output record format: what a privatized release looks like on the wire.

A release is a JSON object (schema in ``docs/frames.md``, section "Releases") keyed by the
device's pseudonym. It carries only privatized feature values and metadata: never a raw sample,
never the device id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.privacy import PrivateRelease, ReleaseRequest, Suppression
    from pipeline.windows import Window

RELEASE_SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class ReleaseRecord:
    """One release ready to publish: Kafka ``key`` (the pseudonym) and JSON ``value``."""

    key: bytes
    value: bytes
    release_id: str
    last_send_ns: int
    #: When the worker built it: delivery metadata, published as the ``biopriv-t-release-ns``
    #: header, never in ``value``, so a re-release after a crash is bit-identical.
    t_release_ns: int


def release_record(
    release: PrivateRelease,
    request: ReleaseRequest,
    pseudonym: str,
    modality: str,
    window: Window,
    now_ns: int,
) -> ReleaseRecord:
    """Build the published record of a privatized release."""
    doc: dict[str, Any] = {
        "v": RELEASE_SCHEMA_VERSION,
        "release_id": release.release_id,
        "pseudonym": pseudonym,
        "modality": modality,
        "stream": request.stream,
        "feature_set": request.feature_set,
        "window_index": request.window_index,
        "window_start_ns": request.start_ns,
        "window_end_ns": request.end_ns,
        "last_seq": window.last_seq,
        "features": release.values.to_dict(),
        "epsilon": release.epsilon,
        "mechanism": release.mechanism,
        "budget": release.budget,
        "t_frame_send_ns": window.last_send_ns,
    }
    return ReleaseRecord(
        key=pseudonym.encode(),
        value=json.dumps(doc, separators=(",", ":"), allow_nan=False).encode(),
        release_id=release.release_id,
        last_send_ns=window.last_send_ns,
        t_release_ns=now_ns,
    )


def suppression_event(result: Suppression, request: ReleaseRequest, pseudonym: str) -> dict[str, Any]:
    """The operational event published when a release is suppressed (no values in it)."""
    return {
        "event": "release_suppressed",
        "reason": result.reason,
        "release_id": result.release_id,
        "pseudonym": pseudonym,
        "stream": request.stream,
        "feature_set": request.feature_set,
        "window_index": request.window_index,
        **{k: v for k, v in result.event.items() if k not in ("device_id", "values")},
    }
