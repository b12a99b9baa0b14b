"""Issue 15 reader and command-line cases: pandas CSV, implausible rates, BioSPPy text, the
``features`` options, one-line errors with exit codes, and the progress bar only on a terminal."""

from __future__ import annotations

import errno
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from connectors.recordings import STREAM_RATE_LIMITS_HZ, open_recording
from pipeline import cli
from pipeline.errors import RecordingError

# -- CSV through pandas ------------------------------------------------------------------------------


def _pandas_csv(tmp_path: Path, rate: float = 32.0, n: int = 64 * 12) -> tuple[Path, np.ndarray]:
    import pandas as pd

    t = np.arange(n) / rate
    ppg = np.sin(2 * np.pi * 1.2 * t)
    df = pd.DataFrame({"time_s": t, "ppg": ppg, "eda": 2.0 + 0.01 * t})
    df.loc[5, "ppg"] = np.nan  # written as a blank cell
    df.loc[7:9, "eda"] = np.nan
    path = tmp_path / "pandas.csv"
    df.to_csv(path, index=False)
    return path, ppg


def test_csv_written_by_pandas_with_blank_cells(tmp_path: Path) -> None:
    path, ppg = _pandas_csv(tmp_path)
    assert ",," in path.read_text() or ",\n" in path.read_text()  # really blank cells
    rec = open_recording(path)
    assert rec.streams["ppg"].n_filled == 1 and rec.streams["eda"].n_filled == 3
    got = rec.streams["ppg"].samples[0]
    assert got[5] == got[4]  # held from the previous value
    np.testing.assert_allclose(got[:5], ppg[:5], rtol=1e-6)
    assert rec.streams["ppg"].rate == pytest.approx(32.0)


def test_csv_na_cells_and_quoted_headers(tmp_path: Path) -> None:
    path = tmp_path / "quoted.csv"
    rows = "\n".join(f"{i / 25:.2f},{'NA' if i == 3 else math.sin(i / 5):.6g}" if i != 3 else f"{i / 25:.2f},NA"
                     for i in range(250))
    path.write_text('"time_s", "resp"\n' + rows + "\n")
    rec = open_recording(path)
    assert rec.streams["resp"].channels == ("resp",)
    assert rec.streams["resp"].n_filled == 1


def test_csv_text_cell_names_the_column(tmp_path: Path) -> None:
    path = tmp_path / "text.csv"
    path.write_text("time_s,ppg,eda\n0,1,2\n0.1,abc,2\n0.2,1,2\n")
    with pytest.raises(RecordingError, match=r"cannot read .*column 'ppg' has a non-numeric value 'abc'"):
        open_recording(path)


def test_csv_blank_time_cell_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("time_s,ppg\n0,1\n,2\n0.2,1\n")
    with pytest.raises(RecordingError, match="time column 'time_s' has blank or NA cells"):
        open_recording(path)


# -- implausible rates -------------------------------------------------------------------------------


def test_audio_below_8khz_is_refused(tmp_path: Path) -> None:
    from scipy.io import wavfile

    path = tmp_path / "low.wav"
    wavfile.write(path, 100, (np.sin(np.arange(1000)) * 1000).astype(np.int16))
    with pytest.raises(RecordingError, match=r"mic sample rate 100 Hz is implausible.*\[8000, 192000\] Hz"):
        open_recording(path)


@pytest.mark.parametrize(("stream", "rate"), [("eeg", 20.0), ("ecg", 10.0), ("temp", 5000.0), ("acc", 2.0)])
def test_absurd_rates_per_stream_are_refused(tmp_path: Path, stream: str, rate: float) -> None:
    lo, hi = STREAM_RATE_LIMITS_HZ[stream]
    assert not lo <= rate <= hi
    t = np.arange(64) / rate
    path = tmp_path / f"{stream}.csv"
    path.write_text(f"time_s,{stream}\n" + "".join(f"{float(x)!r},{1.0 + 0.1 * math.sin(i)!r}\n" for i, x in enumerate(t)))
    with pytest.raises(RecordingError, match=f"{stream} sample rate .* is implausible"):
        open_recording(path)


# -- BioSPPy text ------------------------------------------------------------------------------------


def test_biosppy_text_format(tmp_path: Path) -> None:
    path = tmp_path / "acc.txt"
    rows = "".join(f"{0.1 * i:.3f}\t{-0.9:.3f}\t{0.2:.3f}\n" for i in range(300))
    path.write_text("# Simple Text Format\n# Sampling Rate (Hz):= 100.00\n# Resolution:= 0\n"
                    "# Units:= g\n# Labels:= acc_x\tacc_y\tacc_z\n" + rows)
    rec = open_recording(path)
    acc = rec.streams["acc"]
    assert (acc.rate, acc.channels, acc.units, acc.n_samples) == (100.0, ("acc_x", "acc_y", "acc_z"), ("g",) * 3, 300)
    assert acc.samples[0, 10] == pytest.approx(1.0)
    plain = tmp_path / "notes.txt"
    plain.write_text("hello\n")
    with pytest.raises(RecordingError, match="unsupported recording type"):
        open_recording(plain)


# -- the features command ----------------------------------------------------------------------------


def test_features_takes_the_stream_and_channel_options_of_replay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "dev.csv"
    t = np.arange(32 * 40) / 32.0
    path.write_text("time_s,pulse,skin\n" + "".join(
        f"{float(x)!r},{math.sin(2 * math.pi * 1.2 * x)!r},{2.0 + 0.01 * float(x)!r}\n" for x in t))
    rc = cli.main(["features", str(path), "--stream", "pulse=ppg", "--stream", "ppg", "--channels", "pulse",
                   "--rename", "pulse=finger", "--json", "--no-progress"])
    assert rc == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows and {r["stream"] for r in rows} == {"ppg"}
    hr = [r["features"]["hr"] for r in rows if r["feature_set"] == "hr"]
    assert np.nanmedian(np.array(hr, dtype=float)) == pytest.approx(72.0, abs=2.0)


def test_features_reports_filled_samples_and_clip_rates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = _pandas_csv(tmp_path)
    assert cli.main(["features", str(path), "--stream", "eda", "--clip-report", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "eda: 3 invalid (NaN) samples held from the previous value" in err
    assert "eda eda: clip rate per feature" in out
    line = next(x for x in out.splitlines() if x.strip().startswith("scl"))
    assert line.split()[-1] == "0.0"  # 2 uS is well inside [0, 50]


def test_features_bare_stream_must_be_known(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["features", "x.csv", "--stream", "blood"]) == 2
    assert "--stream must be CHANNEL=STREAM or one of" in capsys.readouterr().err


def test_progress_bar_only_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = _pandas_csv(tmp_path)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    monkeypatch.setattr("sys.stderr", tty)
    assert cli.main(["features", str(path), "--stream", "eda"]) == 0
    assert "eda/eda" in tty.getvalue()  # tqdm's description
    tty2 = Tty()
    monkeypatch.setattr("sys.stderr", tty2)
    assert cli.main(["features", str(path), "--stream", "eda", "--no-progress"]) == 0
    assert "eda/eda" not in tty2.getvalue()
    piped = io.StringIO()  # not a terminal: no bar
    monkeypatch.setattr("sys.stderr", piped)
    assert cli.main(["features", str(path), "--stream", "eda"]) == 0
    assert "eda/eda" not in piped.getvalue()


# -- one-line errors and exit codes -----------------------------------------------------------------


def test_generate_into_an_impossible_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc = cli.main(["generate", str(blocker / "sub"), "--seconds", "10"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("biopriv: error: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("exc", "code", "text"),
    [
        (BrokenPipeError(errno.EPIPE, "Broken pipe"), 141, "broken pipe"),
        (KeyboardInterrupt(), 130, "interrupted"),
        (PermissionError(errno.EACCES, "Permission denied", "/root/x"), 1, "Permission denied: /root/x"),
        (OSError(errno.ENOSPC, "No space left on device"), 1, "No space left on device"),
    ],
)
def test_every_command_maps_os_errors_to_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                  exc: BaseException, code: int, text: str) -> None:
    from pipeline.cli import generate

    def boom(args: object) -> int:
        raise exc

    monkeypatch.setattr(generate, "run", boom)
    monkeypatch.setattr("pipeline.cli._silence_stdout", lambda: None)  # keep pytest's stdout
    rc = cli.main(["generate", "somewhere"])
    err = capsys.readouterr().err
    assert rc == code
    assert text in err and err.count("\n") == 1
