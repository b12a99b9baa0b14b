"""Frame format v1: round trips in both encodings and every validation failure."""

from __future__ import annotations

import json

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline.errors import FrameError
from pipeline.frames import (
    MAX_FRAME_BYTES,
    REASONS,
    STREAMS,
    Frame,
    decode_frame,
    encode_binary,
    encode_frame,
    encode_json,
    make_frame,
    sniff_encoding,
)


def eeg_frame(seq: int = 3, n: int = 32, n_ch: int = 4, seed: int = 0) -> Frame:
    rng = np.random.default_rng(seed)
    return make_frame(
        "dev-01", "eeg", seq, 1_700_000_000_000_000_000 + seq, 256.0,
        [f"C{i}" for i in range(n_ch)], "uV", rng.normal(0, 20, (n_ch, n)), send_ns=1_700_000_000_100_000_000,
    )


def assert_same(a: Frame, b: Frame) -> None:
    assert (a.device_id, a.modality, a.stream, a.seq, a.capture_ns, a.send_ns, a.sample_rate, a.channels, a.units) == (
        b.device_id, b.modality, b.stream, b.seq, b.capture_ns, b.send_ns, b.sample_rate, b.channels, b.units)
    assert a.samples.dtype == b.samples.dtype == np.dtype("<f4")
    assert a.samples.tobytes() == b.samples.tobytes()  # bit-exact float32


@pytest.mark.parametrize("encoding", ["binary", "json"])
def test_round_trip_is_bit_exact(encoding: str) -> None:
    f = eeg_frame()
    data = encode_frame(f, encoding)
    assert sniff_encoding(data) == encoding
    assert_same(decode_frame(data), f)


@settings(max_examples=60, deadline=None)
@given(
    samples=hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40),
                       elements=st.floats(width=32, allow_nan=False, allow_infinity=False)),
    seq=st.integers(0, 2**62),
    rate=st.floats(1.0, 48_000.0),
    encoding=st.sampled_from(["binary", "json"]),
)
def test_round_trip_property(samples: np.ndarray, seq: int, rate: float, encoding: str) -> None:
    f = make_frame("d", "ppg", seq, 5, rate, [f"c{i}" for i in range(samples.shape[0])], "au", samples)
    assert_same(decode_frame(encode_frame(f, encoding)), f)


def test_binary_is_compact() -> None:
    f = eeg_frame(n=32, n_ch=64)
    assert len(encode_binary(f)) < 64 * 32 * 4 + 1024
    assert len(encode_json(f)) > len(encode_binary(f))


@pytest.mark.parametrize("encoding", ["binary", "json"])
def test_decoded_samples_are_read_only(encoding: str) -> None:
    s = decode_frame(encode_frame(eeg_frame(), encoding)).samples
    with pytest.raises(ValueError):
        s[0, 0] = 1.0


def test_made_frame_samples_are_read_only() -> None:
    s = make_frame("d", "ppg", 0, 0, 64.0, ["ppg"], "au", np.zeros((1, 8), dtype="<f4")).samples
    with pytest.raises(ValueError):
        s[0, 0] = 1.0


def _binary_fields(**changes: object) -> bytes:
    obj = msgpack.unpackb(encode_binary(eeg_frame()), raw=False)
    for k, v in changes.items():
        if v is ...:
            del obj[k]
        else:
            obj[k] = v
    return msgpack.packb(obj, use_bin_type=True)


def _json_fields(**changes: object) -> bytes:
    obj = json.loads(encode_json(eeg_frame()))
    for k, v in changes.items():
        if v is ...:
            del obj[k]
        else:
            obj[k] = v
    return json.dumps(obj).encode()


NAN32 = np.array([np.nan], "<f4").tobytes()
BAD = {
    "oversize": [b"{" + b" " * MAX_FRAME_BYTES + b"}"],
    "undecodable": [b"", b"\x00\x01", b"{not json", b"\x81\xa1v", _json_fields()[:-5], b"[1,2]"],
    "unknown_version": [_binary_fields(v=2), _json_fields(v=0), _json_fields(v="1"), _binary_fields(v=True)],
    "missing_field": [_binary_fields(v=...), _binary_fields(rate=...), _json_fields(samples=...), _json_fields(device=...)],
    "bad_field": [
        _binary_fields(seq=-1), _binary_fields(seq=1.5), _json_fields(t_capture_ns="now"), _binary_fields(device=""),
        _binary_fields(device="a b"), _json_fields(channels="Fz"), _json_fields(units=[1, 2, 3, 4]),
        _binary_fields(samples=[1, 2]), _json_fields(samples=[[1, "x"]] * 4), _json_fields(samples=[1, 2, 3, 4]),
        _binary_fields(channels=[]),
    ],
    "unknown_modality": [_binary_fields(modality="ecg"), _json_fields(modality=None)],
    "unknown_stream": [_binary_fields(stream="mic"), _json_fields(stream="xyz")],
    "bad_rate": [_binary_fields(rate=0), _binary_fields(rate=-256.0), _json_fields(rate=1e9), _binary_fields(rate=float("nan")),
                 _binary_fields(rate=True), _json_fields(rate="256")],
    "shape_mismatch": [
        _binary_fields(samples=b"\x00" * 7), _binary_fields(samples=b"\x00" * 12), _binary_fields(n=31),
        _json_fields(samples=[[1.0, 2.0]] * 3), _json_fields(samples=[[1.0, 2.0], [1.0], [1.0, 2.0], [1.0, 2.0]]),
        _binary_fields(units=["uV"]), _binary_fields(samples=b""),
    ],
}


def test_every_reason_is_exercised() -> None:
    assert set(BAD) == set(REASONS)


#: Frames with NaN or infinite samples: accepted, the samples counted as missing (docs/privacy.md).
NON_FINITE = [
    _binary_fields(samples=NAN32 * 4, n=1),
    _binary_fields(samples=np.array([np.inf] * 4, "<f4").tobytes(), n=1),
    b'{"v":1,"device":"d","modality":"eeg","stream":"eeg","seq":0,"t_capture_ns":0,"t_send_ns":0,"rate":256,'
    b'"channels":["a","b","c","d"],"units":["uV","uV","uV","uV"],"samples":[[1.0],[NaN],[2.0],[3.0]]}',
    _json_fields(samples=[[1e39]] * 4),
]


@pytest.mark.parametrize("data", NON_FINITE)
def test_non_finite_samples_are_accepted_and_counted(data: bytes) -> None:
    frame = decode_frame(data)
    assert frame.nonfinite == int((~np.isfinite(frame.samples)).sum()) >= 1


@pytest.mark.parametrize(("reason", "data"), [(r, d) for r, ds in BAD.items() for d in ds])
def test_validation_failure_reason(reason: str, data: bytes) -> None:
    with pytest.raises(FrameError) as info:
        decode_frame(data)
    assert info.value.reason == reason, str(info.value)
    assert info.value.detail  # the message says what was wrong


def test_error_message_names_the_value() -> None:
    with pytest.raises(FrameError, match=r"sample rate must be in .* got -256\.0"):
        decode_frame(_binary_fields(rate=-256.0))


def test_make_frame_rejects_what_the_decoder_rejects() -> None:
    with pytest.raises(FrameError) as info:
        make_frame("d", "eeg", 0, 0, 256.0, ["a", "b"], "uV", np.zeros((3, 4)))
    assert info.value.reason == "shape_mismatch"
    assert make_frame("d", "eeg", 0, 0, 256.0, ["a"], "uV", np.array([[1.0, np.nan]])).nonfinite == 1


def test_streams_cover_the_documented_names() -> None:
    assert STREAMS["bio"] >= {"ppg", "ecg", "eda", "acc", "temp", "resp"}
    assert STREAMS["eeg"] == {"eeg"} and STREAMS["audio"] == {"mic"}


def test_json_accepts_integer_samples_and_whitespace() -> None:
    data = b' {"v":1,"device":"d","modality":"bio","stream":"temp","seq":0,"t_capture_ns":0,"t_send_ns":0,"rate":4,' \
           b'"channels":["skin"],"units":["degC"],"samples":[[33,34,35,36]]}'
    f = decode_frame(data)
    assert f.samples.tolist() == [[33.0, 34.0, 35.0, 36.0]] and f.sample_rate == 4.0
