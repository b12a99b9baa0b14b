"""Recording readers: stream mapping, units, rates, channel selection and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from connectors.recordings import (
    Recording,
    _finite,
    describe,
    merge_recordings,
    open_recording,
    stream_for_signal,
)
from pipeline.errors import RecordingError

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def shared(rel: str) -> Path:
    """Path of a shared recording; skip the test with a clear message when it is absent."""
    p = DATA / rel
    if not p.exists() and not p.with_suffix(".hea").exists():
        pytest.skip(f"shared recording {p} is absent (real data lives in ../shared/data, see its README)")
    return p


# -- files made on the fly -----------------------------------------------------------------------


def make_fif(tmp_path: Path) -> Path:
    import mne

    rng = np.random.default_rng(0)
    names = ["Fz", "Cz", "Pz", "EOG1", "ECG", "STI 014"]
    types = ["eeg", "eeg", "eeg", "eog", "ecg", "stim"]
    info = mne.create_info(names, 200.0, types)
    data = rng.normal(0, 20e-6, (6, 1000))
    data[5] = 0
    raw = mne.io.RawArray(data, info, verbose="error")
    path = tmp_path / "tiny_raw.fif"
    raw.save(path, verbose="error")
    return path


def make_wav(tmp_path: Path, channels: int = 1, n: int = 1600) -> tuple[Path, np.ndarray]:
    from scipy.io import wavfile

    rng = np.random.default_rng(1)
    x = rng.integers(-32768, 32767, size=(n, channels), dtype=np.int16)
    x[0, 0] = -32768
    path = tmp_path / "tiny.wav"
    wavfile.write(path, 8000, x[:, 0] if channels == 1 else x)
    return path, x


def make_wfdb(tmp_path: Path) -> Path:
    import wfdb

    t = np.arange(500) / 100
    sig = np.column_stack([np.sin(t), np.cos(t), 80 + 10 * np.sin(t)])
    wfdb.wrsamp(
        "rec", fs=100, units=["mV", "mV", "mmHg"], sig_name=["MLII", "V5", "ABP"], p_signal=sig, fmt=["16"] * 3,
        write_dir=str(tmp_path),
    )
    return tmp_path / "rec.hea"


def make_wfdb_multi(tmp_path: Path) -> Path:
    import wfdb

    ecg = np.round(np.sin(np.arange(400) / 7), 3)
    ppg = np.round(np.cos(np.arange(200) / 5), 3)
    resp = np.round(np.arange(100) / 100, 3)
    rec = wfdb.Record(
        record_name="multi", fs=25, n_sig=3, sig_len=100, file_name=["multi.dat"] * 3,
        sig_name=["II", "PLETH", "RESP"], units=["mV", "NU", "Ohm"], samps_per_frame=[4, 2, 1],
        fmt=["16"] * 3, adc_gain=[1000.0] * 3, baseline=[0] * 3, e_p_signal=[ecg, ppg, resp],
        block_size=[0] * 3, byte_offset=[None] * 3, skew=[None] * 3, adc_res=[16] * 3, adc_zero=[0] * 3,
    )
    rec.set_d_features(expanded=True, do_adc=True)
    rec.wrsamp(expanded=True, write_dir=str(tmp_path))
    return tmp_path / "multi.hea"


def make_csv(tmp_path: Path, name: str = "bio.csv", rate: float = 32.0, n: int = 96, cols: str = "bio") -> Path:
    t = np.arange(n) / rate
    if cols == "bio":
        header = ["time_s", "ppg", "eda", "acc_x", "acc_y", "acc_z", "temp", "resp"]
        vals = [t, np.sin(t), 2 + 0.1 * t, 0.01 * t, -0.02 * t, 1 + 0 * t, 33 + 0.01 * t, np.cos(t)]
    else:
        header = ["time_s", cols]
        vals = [t, np.sin(3 * t)]
    path = tmp_path / name
    rows = np.column_stack(vals)
    with path.open("w") as fh:
        fh.write(",".join(header) + "\n")
        for r in rows:
            fh.write(",".join(repr(float(v)) for v in r) + "\n")
    return path


# -- mapping ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "stream"),
    [
        ("MLII", "ecg"), ("V5", "ecg"), ("II", "ecg"), ("ECG", "ecg"), ("V", "ecg"), ("ECG lead I", "ecg"),
        ("PLETH", "ppg"), ("Pleth", "ppg"), ("PPG", "ppg"), ("RESP", "resp"), ("Resp", "resp"),
        ("ABP", None), ("ART", None), ("acc_x", "acc"), ("eda", "eda"), ("temp", "temp"), ("ppg", "ppg"),
    ],
)
def test_stream_for_signal(name: str, stream: str | None) -> None:
    assert stream_for_signal(name) == stream


def test_finite_holds_previous_value() -> None:
    x = np.array([[np.nan, 1.0, np.nan, np.nan, 4.0, np.nan], [1, 2, 3, 4, 5, 6], [np.nan] * 6])
    out, n = _finite(x)
    assert n == 10
    np.testing.assert_array_equal(out[0], [1, 1, 1, 1, 4, 4])
    np.testing.assert_array_equal(out[1], [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(out[2], np.zeros(6))
    assert out.dtype == np.float32 and not out.flags.writeable


# -- readers ---------------------------------------------------------------------------------------


def test_mne_fif_eeg_in_microvolts_and_non_eeg_dropped(tmp_path: Path) -> None:
    import mne

    path = make_fif(tmp_path)
    rec = open_recording(path)
    raw = mne.io.read_raw(path, preload=True, verbose="error")
    assert rec.format == "mne"
    assert set(rec.streams) == {"eeg", "ecg"}
    eeg = rec.streams["eeg"]
    assert eeg.channels == ("Fz", "Cz", "Pz") and eeg.units == ("uV",) * 3 and eeg.rate == 200.0
    np.testing.assert_array_equal(eeg.samples, (raw.get_data(picks=[0, 1, 2]) * 1e6).astype(np.float32))
    assert rec.streams["ecg"].units == ("mV",)
    np.testing.assert_array_equal(rec.streams["ecg"].samples, (raw.get_data(picks=[4]) * 1e3).astype(np.float32))
    skipped = {s.name: s.reason for s in rec.skipped}
    assert set(skipped) == {"EOG1", "STI 014"}
    assert "eog" in skipped["EOG1"] and "stim" in skipped["STI 014"]


def test_wav_int16_to_full_scale(tmp_path: Path) -> None:
    path, x = make_wav(tmp_path)
    rec = open_recording(path)
    mic = rec.streams["mic"]
    assert (mic.name, mic.rate, mic.channels, mic.units) == ("mic", 8000.0, ("mic",), ("FS",))
    np.testing.assert_array_equal(mic.samples[0], x[:, 0].astype(np.float32) / np.float32(32768))
    assert mic.samples.min() >= -1.0 and mic.samples.max() < 1.0
    assert mic.samples[0, 0] == -1.0


def test_wav_stereo_averaged_to_mono(tmp_path: Path) -> None:
    path, x = make_wav(tmp_path, channels=2)
    rec = open_recording(path)
    expected = (x.astype(np.float64) / 32768).mean(axis=1).astype(np.float32)
    np.testing.assert_array_equal(rec.streams["mic"].samples[0], expected)
    assert rec.skipped and "mono" in rec.skipped[0].reason
    left = open_recording(path, channels=["ch1"])
    np.testing.assert_array_equal(left.streams["mic"].samples[0], x[:, 0].astype(np.float32) / np.float32(32768))


def test_wfdb_ecg_leads_one_stream_abp_skipped(tmp_path: Path) -> None:
    import wfdb

    path = make_wfdb(tmp_path)
    rec = open_recording(path)
    assert set(rec.streams) == {"ecg"}
    ecg = rec.streams["ecg"]
    assert ecg.channels == ("MLII", "V5") and ecg.units == ("mV", "mV") and ecg.rate == 100.0
    ref = wfdb.rdrecord(str(tmp_path / "rec")).p_signal[:, :2].T.astype(np.float32)
    np.testing.assert_array_equal(ecg.samples, ref)
    assert [s.name for s in rec.skipped] == ["ABP"]
    assert "no stream" in rec.skipped[0].reason
    # the record may also be named without suffix or by its .dat file
    assert open_recording(tmp_path / "rec").streams["ecg"].n_samples == 500
    assert open_recording(tmp_path / "rec.dat").streams["ecg"].n_samples == 500


def test_wfdb_multi_frequency_one_stream_per_rate(tmp_path: Path) -> None:
    rec = open_recording(make_wfdb_multi(tmp_path))
    rates = {name: (s.rate, s.n_samples) for name, s in rec.streams.items()}
    assert rates == {"ecg": (100.0, 400), "ppg": (50.0, 200), "resp": (25.0, 100)}
    np.testing.assert_array_equal(rec.streams["ecg"].samples[0], np.round(np.sin(np.arange(400) / 7), 3).astype(np.float32))
    assert {s.duration_s for s in rec.streams.values()} == {4.0}


def test_csv_biosensor_columns(tmp_path: Path) -> None:
    rec = open_recording(make_csv(tmp_path))
    assert set(rec.streams) == {"ppg", "eda", "acc", "temp", "resp"}
    acc = rec.streams["acc"]
    assert acc.channels == ("acc_x", "acc_y", "acc_z") and acc.samples.shape == (3, 96) and acc.units == ("g",) * 3
    assert rec.streams["eda"].units == ("uS",) and rec.streams["temp"].units == ("degC",)
    assert all(s.rate == 32.0 for s in rec.streams.values())
    np.testing.assert_array_equal(rec.streams["ppg"].samples[0], np.sin(np.arange(96) / 32.0).astype(np.float32))


def test_csv_stream_override_and_unknown_column(tmp_path: Path) -> None:
    path = make_csv(tmp_path, cols="pulse")
    with pytest.raises(RecordingError, match="pulse.*--stream"):
        open_recording(path)
    rec = open_recording(path, streams={"pulse": "ppg"})
    assert rec.streams["ppg"].channels == ("pulse",)
    with pytest.raises(RecordingError, match="stream 'blood' for channel 'pulse'"):
        open_recording(path, streams={"pulse": "blood"})


def test_csv_errors_name_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "notime.csv"
    bad.write_text("a,ppg\n0,1\n1,2\n")
    with pytest.raises(RecordingError, match="no time column.*time_s"):
        open_recording(bad)
    jitter = tmp_path / "jitter.csv"
    jitter.write_text("time_s,ppg\n0,1\n0.1,2\n0.3,3\n0.4,4\n")
    with pytest.raises(RecordingError, match="not uniformly sampled"):
        open_recording(jitter)
    text = tmp_path / "text.csv"
    text.write_text("time_s,ppg\n0,abc\n")
    with pytest.raises(RecordingError, match="cannot read"):
        open_recording(text)


def test_merge_csvs_at_different_rates(tmp_path: Path) -> None:
    a = open_recording(make_csv(tmp_path, "ppg.csv", rate=64.0, n=128, cols="ppg"))
    b = open_recording(make_csv(tmp_path, "eda.csv", rate=4.0, n=8, cols="eda"))
    rec = merge_recordings([a, b])
    assert {n: s.rate for n, s in rec.streams.items()} == {"ppg": 64.0, "eda": 4.0}
    with pytest.raises(RecordingError, match="stream 'ppg' appears in more than one file"):
        merge_recordings([a, a])


def test_channel_selection_and_rename(tmp_path: Path) -> None:
    path = make_wfdb(tmp_path)
    rec = open_recording(path, channels=["V5"], rename={"V5": "chest"})
    assert rec.streams["ecg"].channels == ("chest",)
    assert rec.skipped == ()
    with pytest.raises(RecordingError, match=r"channel\(s\) V9 not found; the file has: MLII, V5, ABP"):
        open_recording(path, channels=["V9"])
    with pytest.raises(RecordingError, match="cannot rename channel.*ABP"):
        open_recording(path, rename={"ABP": "bp"})
    with pytest.raises(RecordingError, match="no channel maps to a stream.*ABP"):
        open_recording(path, channels=["ABP"])


def test_missing_unsupported_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="recording not found: .*nope.edf"):
        open_recording(tmp_path / "nope.edf")
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(RecordingError, match=r"unsupported recording type '.txt'.*\.edf.*\.wav"):
        open_recording(txt)
    edf = tmp_path / "broken.edf"
    edf.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(RecordingError, match=r"cannot read .*broken.edf as MNE"):
        open_recording(edf)
    wav = tmp_path / "broken.wav"
    wav.write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(RecordingError, match="cannot read .*broken.wav as WAV"):
        open_recording(wav)
    with pytest.raises(RecordingError, match="is a directory"):
        open_recording(tmp_path)


def test_describe_is_json_friendly(tmp_path: Path) -> None:
    import json

    info = describe(open_recording(make_wfdb(tmp_path)))
    json.dumps(info)
    assert info["streams"]["ecg"]["rate_hz"] == 100.0
    assert info["skipped"] == [{"channel": "ABP", "reason": "ABP has no stream in frame format v1"}]


# -- the real recordings ---------------------------------------------------------------------------


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        ("eeg/bci2000_eegmmi_64ch.edf", {"eeg": (128.0, 64)}),
        ("eeg/openbci_cosleep_19ch.bdf", {"eeg": (125.0, 12), "ecg": (125.0, 1)}),
        ("ecg/100.hea", {"ecg": (360.0, 2)}),
        ("multi/mixedsignals.hea", {"ecg": (249.89, 3), "ppg": (124.945, 1), "resp": (62.4725, 1)}),
        ("audio/speech_2spk_16k.wav", {"mic": (16000.0, 1)}),
    ],
)
def test_shared_recordings(rel: str, expected: dict[str, tuple[float, int]]) -> None:
    rec: Recording = open_recording(shared(rel))
    got = {n: (pytest.approx(s.rate), len(s.channels)) for n, s in rec.streams.items()}
    assert got == expected
    for s in rec.streams.values():
        assert s.samples.dtype == np.float32 and np.isfinite(s.samples).all()
    if rel.endswith(".bdf"):
        assert {"EOG", "EMG", "Trigger", "acc1"} <= {s.name for s in rec.skipped}
    if rel.startswith("multi"):
        assert [s.name for s in rec.skipped] == ["ABP"]
    if rel.endswith(".edf"):
        assert rec.streams["eeg"].units == ("uV",) * 64
        assert 50 < np.abs(rec.streams["eeg"].samples).max() < 1000  # microvolts, not volts
