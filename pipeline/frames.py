"""Frame format v1: the unit a device sends, its two encodings, and its validation.

A frame is a short block of samples from one stream of one device (see ``docs/frames.md``). Two
encodings carry the same fields:

* **binary**: a msgpack map whose ``samples`` entry holds the raw little-endian float32 bytes,
  channels x samples in row-major (C) order. Compact and cheap to decode.
* **JSON**: a UTF-8 JSON object whose ``samples`` entry is a list of channels, each a list of
  numbers, so generic Kafka tools (kcat, kafka-console-producer) can produce frames.

:func:`decode_frame` tells them apart by the first byte (``{`` is JSON; a msgpack map starts with
``0x80``-``0x8f``, ``0xde`` or ``0xdf``) and validates everything; any problem raises
:class:`~pipeline.errors.FrameError` with a short ``reason`` code, which the worker puts into the
dead-letter record together with the original bytes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, fields
from typing import Any

import msgpack
import numpy as np

from pipeline.errors import FrameError

SCHEMA_VERSION = 1

#: Which streams each modality may carry.
STREAMS: dict[str, frozenset[str]] = {
    "eeg": frozenset({"eeg"}),
    "audio": frozenset({"mic"}),
    "bio": frozenset({"ppg", "ecg", "eda", "acc", "temp", "resp"}),
}
#: The modality of each stream name.
MODALITY_OF: dict[str, str] = {s: m for m, streams in STREAMS.items() for s in streams}

#: Validation limits. A frame outside them is rejected, never clipped.
MAX_FRAME_BYTES = 1 << 20  #: 1 MiB encoded
MAX_CHANNELS = 512
MAX_SAMPLES_PER_FRAME = 1 << 16
MIN_SAMPLE_RATE_HZ = 0.01
MAX_SAMPLE_RATE_HZ = 192_000.0
MAX_ID_LENGTH = 128
_ID_RE = re.compile(r"^[A-Za-z0-9._:@-]+$")
_NAME_RE = re.compile(r"^[^\x00-\x1f]{1,64}$")
_F32 = np.dtype("<f4")  #: the samples' type: little-endian float32

#: Reason codes a :class:`FrameError` may carry.
REASONS = (
    "oversize",
    "undecodable",
    "unknown_version",
    "missing_field",
    "bad_field",
    "unknown_modality",
    "unknown_stream",
    "bad_rate",
    "shape_mismatch",
)

_REQUIRED = (
    "v",
    "device",
    "modality",
    "stream",
    "seq",
    "t_capture_ns",
    "t_send_ns",
    "rate",
    "channels",
    "units",
    "samples",
)

_REQUIRED_SET = frozenset(_REQUIRED)


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """One validated frame.

    Attributes
    ----------
    device_id : str
        The device's id (the Kafka key). Never leaves the worker: releases carry a pseudonym.
    modality : str
        ``eeg``, ``audio`` or ``bio``.
    stream : str
        Stream name, one of :data:`STREAMS` of the modality.
    seq : int
        Per-stream frame sequence number, from 0, one per frame. With a constant frame length the
        index of the first sample in the stream is ``seq * n_samples``, which is what makes window
        boundaries a deterministic function of the sequence numbers.
    capture_ns : int
        Capture time of the first sample, ns since the Unix epoch (device clock).
    send_ns : int
        Time the frame was handed to Kafka, ns since the Unix epoch (sender clock).
    sample_rate : float
        Samples per second per channel, Hz.
    channels : tuple of str
        Channel names, one per row of ``samples``.
    units : tuple of str
        Physical unit of each channel (``uV``, ``mV``, ``uS``, ``g``, ``degC``, ``FS``...).
    samples : numpy.ndarray
        float32 array, shape ``(n_channels, n_samples)``; read-only. May hold NaN or infinity (a
        sensor glitch, or a JSON number beyond float32): such samples are *missing samples of an
        accepted frame*. The windower fills them like the samples of a lost frame, but they never
        decide whether a window is released (that must not depend on sample values).
    nonfinite : int
        Number of NaN or infinite samples (0 for a clean frame).
    """

    device_id: str
    modality: str
    stream: str
    seq: int
    capture_ns: int
    send_ns: int
    sample_rate: float
    channels: tuple[str, ...]
    units: tuple[str, ...]
    samples: np.ndarray
    version: int = SCHEMA_VERSION
    nonfinite: int = 0

    @property
    def n_samples(self) -> int:
        """Number of samples per channel in this frame."""
        return int(self.samples.shape[1])

    @property
    def duration_ns(self) -> int:
        """Time the frame covers, ns."""
        return int(round(self.n_samples * 1e9 / self.sample_rate))

    def with_send_ns(self, send_ns: int) -> Frame:
        """A copy of this frame stamped with another send time."""
        return Frame(
            self.device_id, self.modality, self.stream, self.seq, self.capture_ns, send_ns,
            self.sample_rate, self.channels, self.units, self.samples, self.version, self.nonfinite,
        )


#: The field order of :class:`Frame`, which :func:`_frame` sets (checked at import).
_FRAME_FIELDS = ("device_id", "modality", "stream", "seq", "capture_ns", "send_ns", "sample_rate", "channels", "units",
                 "samples", "version", "nonfinite")
if tuple(f.name for f in fields(Frame)) != _FRAME_FIELDS:  # pragma: no cover - a new field must be set by _frame too
    raise AssertionError("Frame's fields changed: update _FRAME_FIELDS and _frame")
(_set_device_id, _set_modality, _set_stream, _set_seq, _set_capture_ns, _set_send_ns, _set_sample_rate, _set_channels,
 _set_units, _set_samples, _set_version, _set_nonfinite) = (Frame.__dict__[f].__set__ for f in _FRAME_FIELDS)
_new = object.__new__


def _frame(device_id: str, modality: str, stream: str, seq: int, capture_ns: int, send_ns: int, sample_rate: float,
           channels: tuple[str, ...], units: tuple[str, ...], samples: np.ndarray, nonfinite: int) -> Frame:
    """``Frame(...)`` of validated fields, built by setting its slots directly: the frozen
    dataclass's ``__init__`` goes through ``object.__setattr__`` once per field, which costs more
    than the rest of a small frame's validation. The result is the same frozen :class:`Frame`."""
    f = _new(Frame)
    _set_device_id(f, device_id)
    _set_modality(f, modality)
    _set_stream(f, stream)
    _set_seq(f, seq)
    _set_capture_ns(f, capture_ns)
    _set_send_ns(f, send_ns)
    _set_sample_rate(f, sample_rate)
    _set_channels(f, channels)
    _set_units(f, units)
    _set_samples(f, samples)
    _set_version(f, SCHEMA_VERSION)
    _set_nonfinite(f, nonfinite)
    return f


def make_frame(
    device_id: str,
    stream: str,
    seq: int,
    capture_ns: int,
    sample_rate: float,
    channels: list[str] | tuple[str, ...],
    units: list[str] | tuple[str, ...] | str,
    samples: np.ndarray,
    *,
    send_ns: int = 0,
    modality: str | None = None,
) -> Frame:
    """Build and validate a frame from Python values (the producer side).

    ``units`` may be one string for all channels. Raises :class:`FrameError` like the decoder,
    so a producer cannot build a frame the worker would reject.
    """
    chans = tuple(channels)
    unit_t = (units,) * len(chans) if isinstance(units, str) else tuple(units)
    fields = {
        "v": SCHEMA_VERSION,
        "device": device_id,
        "modality": modality if modality is not None else MODALITY_OF.get(stream, ""),
        "stream": stream,
        "seq": seq,
        "t_capture_ns": capture_ns,
        "t_send_ns": send_ns,
        "rate": sample_rate,
        "channels": list(chans),
        "units": list(unit_t),
    }
    arr = np.asarray(samples)
    if arr.ndim == 1:
        arr = arr[np.newaxis, :]
    return _build(fields, _as_float32(arr))


def _header(frame: Frame) -> dict[str, Any]:
    """The fields both encodings share (everything but the samples)."""
    return {
        "v": frame.version,
        "device": frame.device_id,
        "modality": frame.modality,
        "stream": frame.stream,
        "seq": frame.seq,
        "t_capture_ns": frame.capture_ns,
        "t_send_ns": frame.send_ns,
        "rate": frame.sample_rate,
        "channels": list(frame.channels),
        "units": list(frame.units),
    }


def encode_binary(frame: Frame) -> bytes:
    """Encode a frame as msgpack with raw little-endian float32 samples."""
    data = np.ascontiguousarray(frame.samples, dtype="<f4").tobytes()
    return msgpack.packb({**_header(frame), "n": frame.n_samples, "samples": data}, use_bin_type=True)


def encode_json(frame: Frame) -> bytes:
    """Encode a frame as JSON (samples as nested lists of float32 values)."""
    doc = {**_header(frame), "samples": frame.samples.astype(np.float64).tolist()}
    return json.dumps(doc, separators=(",", ":")).encode()


def encode_frame(frame: Frame, encoding: str = "binary") -> bytes:
    """Encode with ``encoding`` ``"binary"`` (msgpack) or ``"json"``."""
    if encoding == "binary":
        return encode_binary(frame)
    if encoding == "json":
        return encode_json(frame)
    raise ValueError(f"encoding must be 'binary' or 'json', got {encoding!r}")


def sniff_encoding(data: bytes) -> str:
    """Return ``"json"`` or ``"binary"`` from the first byte, or raise ``FrameError``."""
    if not data:
        raise FrameError("undecodable", "empty message")
    b = data[0]
    if b in (0x7B, 0x20, 0x0A, 0x0D, 0x09):  # '{' or leading whitespace
        return "json"
    if 0x80 <= b <= 0x8F or b in (0xDE, 0xDF):
        return "binary"
    raise FrameError("undecodable", f"first byte 0x{b:02x} is neither a JSON object nor a msgpack map")


def decode_frame(data: bytes, *, max_bytes: int = MAX_FRAME_BYTES) -> Frame:
    """Decode and validate one Kafka message value.

    Raises
    ------
    FrameError
        With ``reason`` one of :data:`REASONS` and a detail naming the offending value.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FrameError("undecodable", f"message value must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise FrameError("oversize", f"frame is {len(data)} bytes, limit {max_bytes}")
    data = bytes(data)
    encoding = sniff_encoding(data)
    try:
        if encoding == "json":
            obj = json.loads(data)
        else:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad frame
        raise FrameError("undecodable", f"{encoding} decoding failed: {exc}") from None
    if not isinstance(obj, dict):
        raise FrameError("undecodable", f"top level must be a map, got {type(obj).__name__}")
    if "v" not in obj:
        raise FrameError("missing_field", "field 'v' (schema version) is missing")
    if obj["v"] != SCHEMA_VERSION or isinstance(obj["v"], bool):
        raise FrameError("unknown_version", f"schema version {obj['v']!r} is not supported (known: {SCHEMA_VERSION})")
    if not _REQUIRED_SET <= obj.keys():
        missing = [k for k in _REQUIRED if k not in obj]
        raise FrameError("missing_field", f"missing field(s): {', '.join(missing)}")
    samples = _samples_from(obj, encoding)
    return _build(obj, samples)


def _samples_from(obj: dict[str, Any], encoding: str) -> np.ndarray:
    channels = obj["channels"]
    if not isinstance(channels, list) or not channels:
        raise FrameError("bad_field", f"'channels' must be a non-empty list, got {channels!r:.80}")
    n_ch = len(channels)
    raw = obj["samples"]
    if encoding == "binary":
        if not isinstance(raw, (bytes, bytearray)):
            raise FrameError("bad_field", f"binary 'samples' must be bytes, got {type(raw).__name__}")
        if len(raw) % 4:
            raise FrameError("shape_mismatch", f"'samples' holds {len(raw)} bytes, not a whole number of float32")
        total = len(raw) // 4
        if total % n_ch:
            raise FrameError("shape_mismatch", f"{total} float32 values do not split into {n_ch} channels")
        n = total // n_ch
        if "n" in obj and obj["n"] != n:
            raise FrameError("shape_mismatch", f"'n' says {obj['n']!r} samples per channel, data holds {n}")
        # read-only: a view of the message's immutable bytes (a bytearray is copied first)
        return np.frombuffer(raw if type(raw) is bytes else bytes(raw), _F32).reshape(n_ch, n)
    if not isinstance(raw, list) or len(raw) != n_ch:
        got = len(raw) if isinstance(raw, list) else type(raw).__name__
        raise FrameError("shape_mismatch", f"'samples' must be a list of {n_ch} channel lists, got {got}")
    lengths = {len(row) if isinstance(row, list) else -1 for row in raw}
    if -1 in lengths:
        raise FrameError("bad_field", "each entry of 'samples' must be a list of numbers")
    if len(lengths) != 1:
        raise FrameError("shape_mismatch", f"channels have different lengths: {sorted(lengths)}")
    try:
        arr = np.array(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise FrameError("bad_field", "'samples' must hold only numbers") from None
    if arr.ndim != 2:
        raise FrameError("bad_field", "'samples' must hold only numbers")
    return _as_float32(arr)  # numbers beyond float32 become infinite: missing samples, see Frame


def _as_float32(arr: np.ndarray) -> np.ndarray:
    """``arr`` as a read-only C-contiguous little-endian float32 array (a copy unless it is one)."""
    if arr.ndim != 2:
        raise FrameError("shape_mismatch", f"samples must be 2-D (channels x samples), got {arr.ndim}-D")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise FrameError("bad_field", f"samples must be real numbers, got dtype {arr.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(arr, dtype=_F32)
    out.flags.writeable = False
    return out


_I63 = 1 << 63


def _int_field(obj: dict[str, Any], key: str, low: int = 0) -> int:
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < low or v >= 1 << 63:
        raise FrameError("bad_field", f"'{key}' must be an integer >= {low}, got {v!r:.40}")
    return v


#: Channel/unit lists and device ids already found valid (validity depends on the strings only, so
#: a hit skips the per-string checks; bounded so that junk cannot grow it). A list maps to the first
#: equal tuple seen, which the frame then carries: the frames of a stream share one tuple, so the
#: windower's and the processor's layout checks and lookups find it by identity.
_VALID_LISTS: dict[tuple[str, ...], tuple[str, ...]] = {}
_VALID_IDS: set[str] = set()
_MAX_MEMO = 4096


def _str_list(obj: dict[str, Any], key: str) -> tuple[str, ...]:
    v = obj[key]
    if type(v) is list:
        t = tuple(v)
        try:
            known = _VALID_LISTS.get(t)
        except TypeError:  # unhashable entries: the full check below rejects them
            known = None
        if known is not None:
            return known
    if not isinstance(v, list) or not all(isinstance(s, str) and _NAME_RE.match(s) for s in v):
        raise FrameError("bad_field", f"'{key}' must be a list of 1-64 character strings, got {v!r:.80}")
    t = tuple(v)
    if len(_VALID_LISTS) < _MAX_MEMO and all(type(s) is str for s in t):
        _VALID_LISTS[t] = t
    return t


def _valid_device(device: Any) -> bool:
    if type(device) is str and device in _VALID_IDS:
        return True
    ok = isinstance(device, str) and bool(device) and len(device) <= MAX_ID_LENGTH and bool(_ID_RE.match(device))
    if ok and type(device) is str and len(_VALID_IDS) < _MAX_MEMO:
        _VALID_IDS.add(device)
    return ok


def _build(obj: dict[str, Any], samples: np.ndarray) -> Frame:
    device = obj["device"]
    if not _valid_device(device):
        raise FrameError(
            "bad_field",
            f"'device' must be 1-{MAX_ID_LENGTH} characters of [A-Za-z0-9._:@-], got {device!r:.80}",
        )
    modality = obj["modality"]
    if modality not in STREAMS:
        raise FrameError("unknown_modality", f"modality {modality!r:.40} is not one of {sorted(STREAMS)}")
    stream = obj["stream"]
    if stream not in STREAMS[modality]:
        raise FrameError(
            "unknown_stream", f"stream {stream!r:.40} is not one of {sorted(STREAMS[modality])} for modality {modality!r}"
        )
    # fast paths: exact ints in range and finite floats in range (NaN and inf fail the comparison);
    # anything else takes the full check, which raises or accepts exactly as before
    seq = obj["seq"]
    if type(seq) is not int or not 0 <= seq < _I63:
        seq = _int_field(obj, "seq")
    capture_ns = obj["t_capture_ns"]
    if type(capture_ns) is not int or not 0 <= capture_ns < _I63:
        capture_ns = _int_field(obj, "t_capture_ns")
    send_ns = obj["t_send_ns"]
    if type(send_ns) is not int or not 0 <= send_ns < _I63:
        send_ns = _int_field(obj, "t_send_ns")
    rate = obj["rate"]
    if not (type(rate) is float and MIN_SAMPLE_RATE_HZ <= rate <= MAX_SAMPLE_RATE_HZ) and (
        isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or not (
            MIN_SAMPLE_RATE_HZ <= rate <= MAX_SAMPLE_RATE_HZ
        )
    ):
        raise FrameError(
            "bad_rate", f"sample rate must be in [{MIN_SAMPLE_RATE_HZ:g}, {MAX_SAMPLE_RATE_HZ:g}] Hz, got {rate!r:.40}"
        )
    channels = _str_list(obj, "channels")
    units = _str_list(obj, "units")
    if len(channels) > MAX_CHANNELS:
        raise FrameError("shape_mismatch", f"{len(channels)} channels, limit {MAX_CHANNELS}")
    if len(units) != len(channels):
        raise FrameError("shape_mismatch", f"{len(units)} units for {len(channels)} channels")
    if samples.shape[0] != len(channels):
        raise FrameError("shape_mismatch", f"samples have {samples.shape[0]} rows for {len(channels)} channels")
    n = samples.shape[1]
    if not 1 <= n <= MAX_SAMPLES_PER_FRAME:
        raise FrameError("shape_mismatch", f"{n} samples per channel, allowed 1-{MAX_SAMPLES_PER_FRAME}")
    # samples are read-only here (_samples_from, _as_float32): a frame's samples never change
    nonfinite = int(samples.size - np.count_nonzero(np.isfinite(samples)))  # one C count, no .all() wrapper
    return _frame(device, modality, stream, seq, capture_ns, send_ns, float(rate), channels, units, samples, nonfinite)
