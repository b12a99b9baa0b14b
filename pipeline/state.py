"""Durable worker state: what survives a crash or a rebalance, and how windows are rebuilt.

The worker keeps two kinds of state per device, and treats them differently:

* the **privacy ledger** (small: charges, last window per stream, recent release digests) is
  written to a compacted *state topic* (``<prefix>state``) as one record per device, keyed
  ``d:<device id>`` and sent to the partition number of the device's raw topics, so the worker
  that owns a device's raw partitions owns its ledger record;
* the **windows** (large: an EEG window is 64 channels x 512 samples) are never written, only the
  *grid anchor* of a stream whose window grid restarted (rate change, reboot: ``base_seq``, index
  offset, format; in the device record, key ``windows``), so that the rebuild re-indexes its
  windows as before. They are
  rebuilt from the raw log: per raw partition the state topic holds a *resume offset* (key
  ``r:<raw topic>``), the oldest offset whose frame some pending window may still need. On
  assignment the worker re-feeds ``[resume, committed)`` to the processor, discarding the output
  (it was published before the offsets were committed), then continues from the committed offset.

Windows are a function of the sequence numbers, and noise a function of (device key, release
identity, ledger lineage, window content), so the rebuilt windows and releases equal the lost ones;
the ledger makes a window already charged a replay (answered without charging, not published again).

Besides, per device a *header* record (key ``h:<device id>``: the ledger's random lineage and the
noise key of each UTC day) is written *ahead* of the device's releases: a release is never
published before the header it depends on is durable, so a re-release after a crash draws the same
noise. Per state partition, ``m:layout`` records the raw topics' partition count (a worker refuses
to load a partition written under another count: repartitioning would move devices away from
their ledgers) and ``m:keys`` the fingerprints of the key file (a worker refuses state written
with other keys).

**Confidentiality.** Device and header records are sealed with ChaCha20-Poly1305 under the key
file's state key (:class:`StateCipher`; the record key is the associated data, so a record cannot
be moved to another device). A reader of the state topic sees device ids, record sizes and write
times, never a ledger entry, digest, lineage or anything that links a device to its releases.

This module is pure: :class:`ResumeTracker` computes resume offsets, the ``*_record`` and
:func:`load_partition` functions encode and decode the state topic, :func:`merge_ledger` and
:func:`split_ledger` move device slices between ledger states. The Kafka I/O is in
:mod:`pipeline.app` and :mod:`connectors.kafka`.
"""

from __future__ import annotations

import base64
import json
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import StateError
from pipeline.privacy.accountant import LEDGER_FORMAT

__all__ = [
    "PartitionState",
    "ResumeTracker",
    "StateCipher",
    "check_fingerprints",
    "check_layout",
    "device_record",
    "header_record",
    "keys_record",
    "layout_record",
    "load_partition",
    "merge_ledger",
    "resume_record",
    "split_ledger",
]

STATE_FORMAT = 2

TP = tuple[str, int]


@dataclass(slots=True)
class _Track:
    entries: deque[tuple[int, int]] = field(default_factory=deque)  # (offset, seq), arrival order
    last_seq: int = -1
    last_capture_ns: int = 0
    touched: float = 0.0


class ResumeTracker:
    """Per raw partition, the oldest offset a rebuild must re-read to restore every pending window.

    For each (partition, device, stream) it remembers the offsets of the frames within
    ``history_frames(frame)`` sequence numbers of the newest one: enough for the longest window
    of the stream plus its hop and reorder tolerance. The resume offset of a partition is the
    oldest such offset, or the next offset to read when no frame is remembered.

    Parameters
    ----------
    history_frames : callable
        ``FrameRef -> int``: how many frames back a pending window of that stream may reach.
    idle_s : float
        A (device, stream) silent for longer than this (wall clock, s) stops pinning the resume
        offset; its pending window, if the device ever resumes, is not rebuilt after a crash.
    clock : callable
        ``() -> seconds`` (monotonic).
    """

    def __init__(
        self,
        history_frames: Callable[[Any], int],
        *,
        idle_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._history = history_frames
        self._idle_s = idle_s
        self._clock = clock
        self._tracks: dict[TP, dict[tuple[str, str], _Track]] = {}
        self._next: dict[TP, int] = {}
        self._partition_of: dict[str, int] = {}

    def observe(self, tp: TP, offset: int, frame: Any | None) -> None:
        """Record that the message at ``offset`` was processed (``frame``: its FrameRef, if any)."""
        # once per message: attributes read once, no max() calls, no setdefault's default dict
        nxt = self._next
        if offset >= nxt.get(tp, 0):
            nxt[tp] = offset + 1
        if frame is None:
            return
        device, seq, capture_ns = frame.device_id, frame.seq, frame.capture_ns
        self._partition_of[device] = tp[1]
        tracks = self._tracks.get(tp)
        if tracks is None:
            tracks = self._tracks[tp] = {}
        key = (device, frame.stream)
        tr = tracks.get(key)
        if tr is None:
            tr = tracks[key] = _Track()
        keep = max(1, int(self._history(frame)))
        entries, last = tr.entries, tr.last_seq
        if last >= 0 and seq < last - keep and capture_ns > tr.last_capture_ns:
            entries.clear()  # the device rebooted (sequence numbers restart): older frames are not needed
            last = -1
        entries.append((offset, seq))
        if seq > last:
            last = seq
        tr.last_seq = last
        if capture_ns > tr.last_capture_ns:
            tr.last_capture_ns = capture_ns
        tr.touched = self._clock()
        floor = last - keep
        while entries and entries[0][1] < floor:
            entries.popleft()

    def resume_offsets(self, tps: Iterable[TP] | None = None) -> dict[TP, int]:
        """Resume offset per partition seen (or per ``tps``); expires idle (device, stream) entries."""
        now = self._clock()
        out: dict[TP, int] = {}
        for tp in list(self._next) if tps is None else tps:
            if tp not in self._next:
                continue
            tracks = self._tracks.get(tp, {})
            for key in [k for k, tr in tracks.items() if now - tr.touched > self._idle_s or not tr.entries]:
                del tracks[key]
            out[tp] = min([self._next[tp], *(min(o for o, _ in tr.entries) for tr in tracks.values())])
        return out

    def partition_of(self, device_id: str) -> int | None:
        """Partition number on which the device's frames arrive (None if never seen)."""
        return self._partition_of.get(device_id)

    def devices_on(self, partitions: set[int]) -> set[str]:
        """Devices seen on those partition numbers."""
        return {d for d, p in self._partition_of.items() if p in partitions}

    def forget(self, partitions: set[int]) -> None:
        """Drop everything about those partition numbers (revoked)."""
        for tp in [tp for tp in self._next if tp[1] in partitions]:
            self._next.pop(tp, None)
            self._tracks.pop(tp, None)
        self._partition_of = {d: p for d, p in self._partition_of.items() if p not in partitions}


# ---------------------------------------------------------------------- state topic records


class StateCipher:
    """Seals and opens state records with the key file's state keys (ChaCha20-Poly1305).

    Parameters
    ----------
    keys : object with ``state_key()`` and ``state_key_version(key_id)``
        A :class:`~pipeline.privacy.keys.KeyRing` (or a KMS client with the same two methods).
    """

    def __init__(self, keys: Any) -> None:
        self._keys = keys

    def seal(self, record_key: bytes, doc: dict[str, Any]) -> dict[str, Any]:
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        kid, key = self._keys.state_key()
        nonce = os.urandom(12)
        box = ChaCha20Poly1305(key).encrypt(nonce, json.dumps(doc, separators=(",", ":")).encode(), record_key)
        return {"key_id": kid, "nonce": base64.b64encode(nonce).decode(), "box": base64.b64encode(box).decode()}

    def open(self, record_key: bytes, sealed: dict[str, Any]) -> Any:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        kid = str(sealed.get("key_id"))
        key = self._keys.state_key_version(kid)
        if key is None:
            raise StateError(
                f"state record {record_key[:80]!r} is sealed with state key {kid!r}, which the key file does not hold: "
                "the worker was started with another key file than the one that wrote the state"
            )
        try:
            plain = ChaCha20Poly1305(key).decrypt(
                base64.b64decode(sealed["nonce"]), base64.b64decode(sealed["box"]), record_key
            )
        except (InvalidTag, KeyError, ValueError, TypeError):
            raise StateError(
                f"state record {record_key[:80]!r} does not open with state key {kid!r}: another key file, or a "
                "corrupted record"
            ) from None
        return json.loads(plain)


def _doc(kind: str, record_key: bytes, body: dict[str, Any], cipher: StateCipher | None) -> bytes:
    doc: dict[str, Any] = {"v": STATE_FORMAT, "kind": kind, "t_ns": time.time_ns()}
    if cipher is None:  # tests and tools only: the worker always seals
        doc["body"] = body
    else:
        doc["sealed"] = cipher.seal(record_key, body)
    return json.dumps(doc, separators=(",", ":")).encode()


def device_record(
    device_id: str,
    ledger: dict[str, Any] | None,
    windows: dict[str, Any] | None = None,
    cipher: StateCipher | None = None,
) -> tuple[bytes, bytes]:
    """Key and value of a device's record: ``ledger`` (its slice of a ledger state, None when it
    has no charges) and ``windows``, the grid anchors of its restarted streams
    (:meth:`pipeline.processor.Processor.anchors`) that the window rebuild needs. Sealed with
    ``cipher`` (the worker always passes one)."""
    key = b"d:" + device_id.encode()
    body: dict[str, Any] = {"device": device_id, "ledger": ledger}
    if windows:
        body["windows"] = windows
    return key, _doc("device", key, body, cipher)


def header_record(device_id: str, header: dict[str, Any], cipher: StateCipher | None = None) -> tuple[bytes, bytes]:
    """Key and value of a device's header (lineage, day keys), written ahead of its releases."""
    key = b"h:" + device_id.encode()
    return key, _doc("header", key, {"device": device_id, "header": header}, cipher)


def resume_record(topic: str, partition: int, offset: int) -> tuple[bytes, bytes]:
    """Key and value of a raw partition's resume offset record."""
    doc = {"v": STATE_FORMAT, "kind": "resume", "topic": topic, "partition": partition, "offset": int(offset)}
    return b"r:" + topic.encode(), json.dumps(doc, separators=(",", ":")).encode()


def layout_record(raw_partitions: dict[str, int]) -> tuple[bytes, bytes]:
    """Key and value of the layout record: the partition count of each raw topic."""
    doc = {"v": STATE_FORMAT, "kind": "layout", "raw_partitions": dict(sorted(raw_partitions.items()))}
    return b"m:layout", json.dumps(doc, separators=(",", ":")).encode()


def keys_record(fingerprints: dict[str, str]) -> tuple[bytes, bytes]:
    """Key and value of the key-fingerprint record (public fingerprints, no secret)."""
    doc = {"v": STATE_FORMAT, "kind": "keys", "fingerprints": dict(sorted(fingerprints.items()))}
    return b"m:keys", json.dumps(doc, separators=(",", ":")).encode()


@dataclass
class PartitionState:
    """What one partition of the state topic holds."""

    devices: dict[str, dict[str, Any]] = field(default_factory=dict)  # device -> ledger slice
    headers: dict[str, dict[str, Any]] = field(default_factory=dict)  # device -> header written ahead
    resume: dict[str, int] = field(default_factory=dict)
    windows: dict[str, dict[str, Any]] = field(default_factory=dict)  # device -> grid anchors
    layout: dict[str, int] | None = None
    fingerprints: dict[str, str] | None = None
    records: int = 0


def load_partition(
    records: Iterable[tuple[bytes | None, bytes | None]], cipher: StateCipher | None = None
) -> PartitionState:
    """Fold ``(key, value)`` records of one state partition, oldest first (latest per key wins)."""
    ps = PartitionState()
    for key, value in records:
        ps.records += 1
        if key is None or value is None:
            continue
        try:
            doc = json.loads(value)
        except ValueError as exc:
            raise StateError(f"state record {key[:80]!r} is not JSON: {exc}") from None
        version = doc.get("v") if isinstance(doc, dict) else doc
        if version != STATE_FORMAT:
            raise StateError(
                f"state record {key[:80]!r} has format {version!r}, expected {STATE_FORMAT} (state written by an older "
                "biopriv: start on a fresh state topic)"
            )
        kind = doc.get("kind")
        if kind in ("device", "header"):
            if "sealed" in doc:
                if cipher is None:
                    raise StateError(f"state record {key[:80]!r} is sealed and no state key was given")
                body = cipher.open(key, doc["sealed"])
            else:
                body = doc.get("body")
            if not isinstance(body, dict) or "device" not in body:
                raise StateError(f"state record {key[:80]!r} has no device body")
            device = str(body["device"])
            if kind == "header":
                ps.headers[device] = body["header"]
                continue
            ps.devices.pop(device, None)
            ps.windows.pop(device, None)
            if body.get("ledger") is not None:
                ps.devices[device] = body["ledger"]
            if body.get("windows"):
                ps.windows[device] = body["windows"]
        elif kind == "resume":
            ps.resume[str(doc["topic"])] = int(doc["offset"])
        elif kind == "layout":
            ps.layout = {str(t): int(n) for t, n in doc["raw_partitions"].items()}
        elif kind == "keys":
            ps.fingerprints = {str(k): str(v) for k, v in doc["fingerprints"].items()}
        else:
            raise StateError(
                f"state record {key[:80]!r} has kind {kind!r}; allowed: 'device', 'header', 'resume', 'layout', 'keys'"
            )
    return ps


def check_layout(recorded: dict[str, int] | None, current: dict[str, int]) -> None:
    """Refuse a state partition written when the raw topics had another partition count.

    Kafka maps a device to ``hash(device id) mod partitions``: after repartitioning, a device's
    frames arrive on another partition than its ledger record, and its new owner would start a
    fresh ledger (fresh noise: a double charge of its budget). Migrate or recreate instead.
    """
    if recorded is None:
        return
    changed = {t: (n, current[t]) for t, n in recorded.items() if t in current and current[t] != n}
    if changed:
        desc = ", ".join(f"{t}: {a} -> {b}" for t, (a, b) in sorted(changed.items()))
        raise StateError(
            f"raw topics were repartitioned since the state was written ({desc}): devices would lose their privacy "
            "ledgers. Restore the partition count, or start on fresh topics (docs/operations.md, 'Repartitioning')"
        )


def check_fingerprints(recorded: dict[str, str] | None, ours: dict[str, str]) -> None:
    """Refuse state written with another key file: a key id both hold must have the same fingerprint."""
    if not recorded:
        return
    differ = sorted(k for k in set(recorded) & set(ours) if recorded[k] != ours[k])
    if differ:
        raise StateError(
            f"this worker's key file differs from the one that wrote the state (keys {', '.join(differ)} have other "
            "fingerprints): every worker of a group must use the same key file (biopriv keys show-fingerprint)"
        )
    if not set(recorded) & set(ours):
        raise StateError(
            "this worker's key file shares no key with the one that wrote the state: every worker of a group must use "
            "the same key file (biopriv keys show-fingerprint)"
        )


def split_ledger(state: dict[str, Any], devices: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The slices of ``devices`` in a ledger state (devices absent from it are skipped)."""
    all_devices = state["devices"]
    return {d: all_devices[d] for d in devices if d in all_devices}


def merge_ledger(
    state: dict[str, Any], slices: dict[str, dict[str, Any]], *, drop: Iterable[str] = ()
) -> dict[str, Any]:
    """A ledger state with ``drop`` removed and ``slices`` put in (replacing the same devices)."""
    if state.get("format") != LEDGER_FORMAT:
        raise StateError(f"ledger state has format {state.get('format')!r}, expected {LEDGER_FORMAT!r}")
    dropped = set(drop)
    devices = {d: v for d, v in state["devices"].items() if d not in dropped}
    devices.update(slices)
    return {**state, "devices": devices}


def history_frames(length_s: float, hop_s: float, reorder_frames: int, sample_rate: float, n_samples: int) -> int:
    """Frames a pending window may reach back: longest window + hop, plus reorder slack and a margin."""
    frame_s = n_samples / sample_rate
    return int(math.ceil((length_s + hop_s) / frame_s)) + reorder_frames + 3
