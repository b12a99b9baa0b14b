"""Recording readers: a file on disk becomes the streams of one device.

:func:`open_recording` reads a recording and returns a :class:`Recording`, one
:class:`StreamData` per stream name of frame format v1 (``eeg``, ``mic``, ``ecg``, ``ppg``,
``resp``, ``eda``, ``acc``, ``temp``), each with its own sample rate. The reader is chosen by the
file name:

========================  =====================================================================
EEG (MNE-Python)          ``.edf .bdf .gdf .fif .fif.gz .vhdr .set .cnt .mff .nxe .lay``: EEG
                          channels become the ``eeg`` stream in uV, ECG channels the ``ecg``
                          stream in mV; EOG, EMG, stimulus, accelerometer... channels are dropped
                          and listed in :attr:`Recording.skipped`.
WAV (scipy)               ``.wav``: the ``mic`` stream, one channel (multi-channel files are
                          averaged to mono), float full scale: int16 / 32768 in [-1, 1), unit FS.
WFDB (wfdb)               ``.hea`` (or ``.dat``, or the record name without suffix): ECG leads
                          become ``ecg``, PLETH/PPG ``ppg``, RESP ``resp``; signals without a v1
                          stream (ABP...) are skipped. Multi-frequency records keep each signal's
                          own rate, so streams of one device may run at different rates.
CSV (pandas)              ``.csv``: a time column in seconds (``time_s``, ``time``, ``t``...) plus
                          columns named by stream (``ppg``, ``eda``, ``temp``, ``resp``, ``ecg``)
                          or ``<stream>_<channel>`` (``acc_x``, ``acc_y``, ``acc_z`` become a
                          3-channel ``acc`` stream). Read with ``pandas.read_csv``: quoted
                          headers, blank cells and ``NA``/``NaN`` are accepted (missing values are
                          filled as below); text in a value column is an error naming the column.
BioSPPy text              ``.txt`` whose first line is ``# Simple Text Format`` (BioSPPy's example
                          files): ``# Sampling Rate (Hz):= R``, ``# Labels:= A<TAB>B``, optional
                          ``# Units:= U``, then one sample per line, channels tab-separated.
                          Labels map to streams as CSV columns do; without units the samples keep
                          their raw unit (``ADC`` counts), except EDA, converted to uS with the
                          BITalino EDA transfer function (BioSPPy's examples are BITalino data).
========================  =====================================================================

Each stream's rate must lie within :data:`STREAM_RATE_LIMITS_HZ` (e.g. audio at 8 kHz or more:
below that a mel bank and the voice band no longer fit).

Invalid samples (NaN, e.g. WFDB gaps) are filled by holding the previous valid value (the first
valid value before it at the start), because frames must carry finite numbers; the count is kept
in :attr:`StreamData.n_filled`. Everything that goes wrong raises
:class:`~pipeline.errors.RecordingError` naming the file and the problem.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import RecordingError
from pipeline.frames import MAX_SAMPLE_RATE_HZ, MIN_SAMPLE_RATE_HZ, MODALITY_OF

__all__ = [
    "MNE_SUFFIXES",
    "Recording",
    "SkippedChannel",
    "StreamData",
    "describe",
    "merge_recordings",
    "open_recording",
    "stream_for_signal",
]

#: File suffixes read through ``mne.io.read_raw``.
MNE_SUFFIXES = (".edf", ".bdf", ".gdf", ".fif", ".fif.gz", ".vhdr", ".set", ".cnt", ".mff", ".nxe", ".lay")
#: Column names recognised as the CSV time column (seconds), in order of preference.
CSV_TIME_COLUMNS = ("time_s", "time", "t", "timestamp", "seconds", "t_s")
#: Plausible sample rates per stream, Hz (inclusive). Outside them a recording is refused: audio below
#: 8 kHz has no voice band (telephone speech is 8 kHz) and gives MFCCs of a squeezed mel bank; EEG
#: below 90 Hz cannot hold the 30-45 Hz gamma band; ECG below 50 Hz cannot place R peaks; a
#: temperature at 10 kHz is a mislabelled column. Upper limits are well above any real device.
STREAM_RATE_LIMITS_HZ: dict[str, tuple[float, float]] = {
    "mic": (8000.0, 192000.0),
    "eeg": (90.0, 20000.0),
    "ecg": (50.0, 20000.0),
    "ppg": (10.0, 10000.0),
    "resp": (1.0, 10000.0),
    "eda": (1.0, 10000.0),
    "acc": (8.0, 10000.0),
    "temp": (0.01, 1000.0),
}
#: Units given to CSV streams, which carry no units of their own.
CSV_DEFAULT_UNITS = {
    "eeg": "uV",
    "ecg": "mV",
    "ppg": "NU",
    "resp": "NU",
    "eda": "uS",
    "acc": "g",
    "temp": "degC",
    "mic": "FS",
}
#: Unit each stream is normalised to, with the factor from the other units it may arrive in.
_UNIT_FACTORS: dict[str, tuple[str, dict[str, float]]] = {
    "eeg": ("uV", {"V": 1e6, "mV": 1e3, "uV": 1.0, "µV": 1.0, "nV": 1e-3}),
    "ecg": ("mV", {"V": 1e3, "mV": 1.0, "uV": 1e-3, "µV": 1e-3}),
}

_ECG_NAMES = re.compile(r"^(ECG|EKG)\b|^(ML)?(I|II|III)$|^A?V[RLF]$|^V[1-6]?$|^D[1-3]$|^MLII?I?$", re.IGNORECASE)
_PPG_NAMES = re.compile(r"^(PLETH|PPG|SPO2 ?PLETH|PLETH\w*)$|^PPG", re.IGNORECASE)
_RESP_NAMES = re.compile(r"^(RESP|RESPIRATION)\b|^RESP", re.IGNORECASE)
#: Names of channels that MNE may type as EEG but that are not (EDF/BDF carry no types).
_NOT_EEG = re.compile(r"(EOG|EMG|ECG|EKG|ACC|TRIG|STATUS|STI\b|STIM|PHOTIC|RESP|PLETH|SPO2|MARK)", re.IGNORECASE)


@dataclass(frozen=True)
class StreamData:
    """The samples of one stream of a recording.

    Attributes
    ----------
    name : str
        Stream name of frame format v1 (``eeg``, ``mic``, ``ecg``, ``ppg``...).
    samples : numpy.ndarray
        float32, shape ``(n_channels, n_samples)``, finite, read-only, in ``units``.
    rate : float
        Sample rate, Hz.
    channels : tuple of str
        Channel names, one per row of ``samples``.
    units : tuple of str
        Physical unit of each channel (``uV`` for EEG, ``mV`` for ECG, ``FS`` for audio...).
    start_ns : int or None
        Recording start from the file header, ns since the Unix epoch, if the file has one.
    n_filled : int
        Number of invalid (NaN) samples replaced by the previous valid value.
    """

    name: str
    samples: np.ndarray
    rate: float
    channels: tuple[str, ...]
    units: tuple[str, ...]
    start_ns: int | None = None
    n_filled: int = 0

    @property
    def modality(self) -> str:
        """Modality of the stream (``eeg``, ``audio`` or ``bio``)."""
        return MODALITY_OF[self.name]

    @property
    def n_samples(self) -> int:
        """Samples per channel."""
        return int(self.samples.shape[1])

    @property
    def duration_s(self) -> float:
        """Duration covered by the samples, s."""
        return self.n_samples / self.rate


@dataclass(frozen=True)
class SkippedChannel:
    """A channel of the file that no stream carries, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class Recording:
    """The streams read from one recording: what one simulated device sends.

    Attributes
    ----------
    path : pathlib.Path
        The file read (for WFDB, the header file).
    format : str
        ``mne``, ``wav``, ``wfdb`` or ``csv`` (``merged`` for :func:`merge_recordings`).
    streams : dict of str to StreamData
        One entry per stream name, in file order.
    skipped : tuple of SkippedChannel
        Channels of the file that are not replayed.
    """

    path: Path
    format: str
    streams: dict[str, StreamData]
    skipped: tuple[SkippedChannel, ...] = field(default=())

    @property
    def duration_s(self) -> float:
        """Duration of the longest stream, s."""
        return max(s.duration_s for s in self.streams.values())


def stream_for_signal(name: str) -> str | None:
    """The v1 stream a WFDB signal or CSV column name belongs to, or ``None``.

    ECG leads (``MLII``, ``V5``, ``II``, ``ECG``...) map to ``ecg``; ``PLETH``/``PPG`` to
    ``ppg``; ``RESP`` to ``resp``; a stream name itself or ``<stream>_<suffix>`` (``acc_x``) to
    that stream. Anything else (``ABP``...) has no stream in frame format v1.
    """
    n = name.strip()
    low = n.lower()
    if low in MODALITY_OF:
        return low
    prefix = re.split(r"[_\s.-]", low, maxsplit=1)[0]
    if prefix in MODALITY_OF and prefix != low:
        return prefix
    if _ECG_NAMES.search(n):
        return "ecg"
    if _PPG_NAMES.search(n):
        return "ppg"
    if _RESP_NAMES.search(n):
        return "resp"
    return None


def open_recording(
    path: str | Path,
    *,
    channels: Sequence[str] | None = None,
    rename: Mapping[str, str] | None = None,
    streams: Mapping[str, str] | None = None,
) -> Recording:
    """Read a recording file into the streams of one device.

    Parameters
    ----------
    path : str or pathlib.Path
        The file. Its suffix chooses the reader (see the module docstring); a WFDB record may
        also be given by name without suffix.
    channels : sequence of str, optional
        Keep only these channels (names as in the file, before renaming). Every name must
        exist in the file.
    rename : mapping of str to str, optional
        New channel names, ``{old: new}``, applied after selection.
    streams : mapping of str to str, optional
        Force the stream of a channel, ``{channel: stream}`` (names as in the file), overriding
        the name-based mapping of WFDB signals and CSV columns, e.g. ``{"pulse": "ppg"}``.

    Returns
    -------
    Recording

    Raises
    ------
    RecordingError
        The file is missing, unreadable, of an unsupported type, has no replayable channel,
        or a requested channel does not exist.
    """
    p = Path(path)
    kind, target = _detect(p)
    overrides = dict(streams or {})
    for ch, s in overrides.items():
        if s not in MODALITY_OF:
            raise RecordingError(f"stream {s!r} for channel {ch!r} is not one of {sorted(MODALITY_OF)}")
    try:
        if kind == "mne":
            rec = _read_mne(target, channels, overrides)
        elif kind == "wav":
            rec = _read_wav(target, channels)
        elif kind == "wfdb":
            rec = _read_wfdb(target, channels, overrides)
        elif kind == "biosppy":
            rec = _read_biosppy(target, channels, overrides)
        else:
            rec = _read_csv(target, channels, overrides)
    except RecordingError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is an unreadable file
        raise RecordingError(f"cannot read {p} as {kind.upper()}: {type(exc).__name__}: {exc}") from None
    if rename:
        rec = _rename(rec, rename)
    if not rec.streams:
        skipped = ", ".join(f"{s.name} ({s.reason})" for s in rec.skipped) or "none"
        raise RecordingError(f"{p}: no channel maps to a stream of frame format v1 (skipped: {skipped})")
    return rec


def merge_recordings(recordings: Sequence[Recording]) -> Recording:
    """Combine the streams of several recordings into one device (e.g. CSVs at different rates).

    Raises
    ------
    RecordingError
        Two recordings carry the same stream.
    """
    if not recordings:
        raise RecordingError("no recording to merge")
    out: dict[str, StreamData] = {}
    skipped: list[SkippedChannel] = []
    for rec in recordings:
        for name, s in rec.streams.items():
            if name in out:
                raise RecordingError(f"cannot merge: stream {name!r} appears in more than one file ({rec.path})")
            out[name] = s
        skipped.extend(rec.skipped)
    return Recording(recordings[0].path, "merged", out, tuple(skipped))


# -- dispatch -------------------------------------------------------------------------------------


def _detect(p: Path) -> tuple[str, Path]:
    name = p.name.lower()
    if name.endswith(".hea") or name.endswith(".dat") and p.with_suffix(".hea").exists():
        target = p.with_suffix(".hea")
        if not target.is_file():
            raise RecordingError(f"recording not found: {target}")
        return "wfdb", target
    if p.suffix == "" and p.with_name(p.name + ".hea").is_file():
        return "wfdb", p.with_name(p.name + ".hea")
    if not p.exists():
        raise RecordingError(f"recording not found: {p}")
    if p.is_dir() and not name.endswith(".mff"):
        raise RecordingError(f"{p} is a directory, not a recording file")
    if name.endswith(".wav"):
        return "wav", p
    if name.endswith(".csv"):
        return "csv", p
    if name.endswith(".txt") and _is_biosppy_text(p):
        return "biosppy", p
    if any(name.endswith(s) for s in MNE_SUFFIXES):
        return "mne", p
    supported = " ".join((*MNE_SUFFIXES, ".wav", ".hea", ".csv", ".txt (BioSPPy)"))
    raise RecordingError(f"unsupported recording type {p.suffix or p.name!r} for {p} (supported: {supported})")


def _select(file: Path, names: Sequence[str], channels: Sequence[str] | None) -> list[int]:
    """Indices of ``channels`` in ``names`` (all when ``None``); error names the missing ones."""
    if channels is None:
        return list(range(len(names)))
    missing = [c for c in channels if c not in names]
    if missing:
        raise RecordingError(f"{file}: channel(s) {', '.join(missing)} not found; the file has: {', '.join(names)}")
    return [names.index(c) for c in channels]


def _finite(x: np.ndarray) -> tuple[np.ndarray, int]:
    """float32 copy of ``x`` (channels x samples) with NaN/inf held from the previous valid sample."""
    out = np.asarray(x, dtype=np.float64)
    bad = ~np.isfinite(out)
    n_bad = int(bad.sum())
    if n_bad:
        out = out.copy()
        for row, mask in zip(out, bad, strict=True):
            if not mask.any():
                continue
            valid = np.flatnonzero(~mask)
            if valid.size == 0:
                row[:] = 0.0
                continue
            # index of the last valid sample at or before each position (first valid one before it)
            idx = np.where(~mask, np.arange(row.size), 0)
            np.maximum.accumulate(idx, out=idx)
            idx[: valid[0]] = valid[0]
            row[:] = row[idx]
    res = np.ascontiguousarray(out, dtype=np.float32)
    res.flags.writeable = False
    return res, n_bad


def _check_rate(file: Path, what: str, rate: float) -> float:
    if not math.isfinite(rate) or not MIN_SAMPLE_RATE_HZ <= rate <= MAX_SAMPLE_RATE_HZ:
        raise RecordingError(
            f"{file}: {what} sample rate {rate!r} Hz is outside [{MIN_SAMPLE_RATE_HZ:g}, {MAX_SAMPLE_RATE_HZ:g}]"
        )
    lo, hi = STREAM_RATE_LIMITS_HZ.get(what, (MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ))
    if not lo <= rate <= hi:
        raise RecordingError(
            f"{file}: {what} sample rate {rate:g} Hz is implausible for a {what} stream; allowed [{lo:g}, {hi:g}] Hz"
        )
    return float(rate)


def _normalise(stream: str, data: np.ndarray, units: list[str]) -> tuple[np.ndarray, list[str]]:
    """Scale rows to the stream's canonical unit (EEG uV, ECG mV) where the unit is known."""
    if stream not in _UNIT_FACTORS:
        return data, units
    target, factors = _UNIT_FACTORS[stream]
    out_units = []
    scale = np.ones(len(units))
    for i, u in enumerate(units):
        if u in factors:
            scale[i] = factors[u]
            out_units.append(target)
        else:
            out_units.append(u)
    if np.any(scale != 1.0):
        data = data * scale[:, np.newaxis]
    return data, out_units


def _rename(rec: Recording, rename: Mapping[str, str]) -> Recording:
    known = {c for s in rec.streams.values() for c in s.channels}
    unknown = [k for k in rename if k not in known]
    if unknown:
        raise RecordingError(
            f"{rec.path}: cannot rename channel(s) {', '.join(unknown)}: not replayed; replayed: {', '.join(sorted(known))}"
        )
    streams = {
        name: StreamData(
            s.name, s.samples, s.rate, tuple(rename.get(c, c) for c in s.channels), s.units, s.start_ns, s.n_filled
        )
        for name, s in rec.streams.items()
    }
    return Recording(rec.path, rec.format, streams, rec.skipped)


def _group(
    file: Path,
    entries: list[tuple[str, str, float, np.ndarray, str]],
    start_ns: int | None,
) -> dict[str, StreamData]:
    """Group ``(channel, stream, rate, samples_1d, unit)`` entries into streams."""
    by_stream: dict[str, list[tuple[str, str, float, np.ndarray, str]]] = {}
    for e in entries:
        by_stream.setdefault(e[1], []).append(e)
    out: dict[str, StreamData] = {}
    for stream, items in by_stream.items():
        rates = {e[2] for e in items}
        lengths = {e[3].size for e in items}
        if len(rates) > 1 or len(lengths) > 1:
            detail = ", ".join(f"{e[0]} {e[2]:g} Hz x {e[3].size}" for e in items)
            raise RecordingError(
                f"{file}: channels of stream {stream!r} differ in rate or length ({detail}); "
                "select channels with one rate (--channels) or map them to other streams (--stream)"
            )
        rate = _check_rate(file, stream, items[0][2])
        data = np.vstack([e[3] for e in items]).astype(np.float64, copy=False)
        data, units = _normalise(stream, data, [e[4] for e in items])
        samples, n_filled = _finite(data)
        if samples.shape[1] == 0:
            raise RecordingError(f"{file}: stream {stream!r} has no samples")
        out[stream] = StreamData(stream, samples, rate, tuple(e[0] for e in items), tuple(units), start_ns, n_filled)
    return out


# -- readers --------------------------------------------------------------------------------------


def _read_mne(file: Path, channels: Sequence[str] | None, overrides: Mapping[str, str]) -> Recording:
    import mne

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = mne.io.read_raw(file, preload=False, verbose="error")
    names = list(raw.ch_names)
    types = raw.get_channel_types()
    orig_units: dict[str, str] = getattr(raw, "_orig_units", None) or {}
    keep = _select(file, names, channels)
    rate = float(raw.info["sfreq"])
    meas = raw.info.get("meas_date")
    start_ns = int(meas.timestamp() * 1e9) if isinstance(meas, datetime) else None
    entries: list[tuple[int, str]] = []
    skipped: list[SkippedChannel] = []
    for i in keep:
        name, kind = names[i], types[i]
        unit = orig_units.get(name)
        not_eeg = _NOT_EEG.search(name)
        if name in overrides:
            stream = overrides[name]
        elif kind == "ecg" or (kind == "eeg" and re.search(r"ECG|EKG", name, re.IGNORECASE)):
            stream = "ecg"
        elif kind == "eeg" and not not_eeg and unit not in ("n/a", ""):
            stream = "eeg"
        else:
            if kind != "eeg":
                reason = f"not EEG (MNE type {kind})"
            elif not_eeg:
                reason = f"not EEG ({not_eeg.group(1).upper()} by name)"
            else:
                reason = f"not EEG (no physical unit, {unit!r})"
            skipped.append(SkippedChannel(name, reason))
            continue
        entries.append((i, stream))
    if not entries:
        return Recording(file, "mne", {}, tuple(skipped))
    data = raw.get_data(picks=[i for i, _ in entries])  # volts for EEG/ECG
    grouped = [
        (names[i], stream, rate, data[k], "V" if types[i] in ("eeg", "ecg", "eog", "emg") else "NU")
        for k, (i, stream) in enumerate(entries)
    ]
    return Recording(file, "mne", _group(file, grouped, start_ns), tuple(skipped))


def _read_wav(file: Path, channels: Sequence[str] | None) -> Recording:
    from scipy.io import wavfile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # WavFileWarning for unknown chunks
        rate, data = wavfile.read(file)
    data = np.asarray(data)
    if data.ndim == 1:
        data = data[:, np.newaxis]
    if data.dtype == np.int16:
        x = data.astype(np.float64) / 32768.0
    elif data.dtype == np.int32:
        x = data.astype(np.float64) / 2147483648.0
    elif data.dtype == np.uint8:
        x = (data.astype(np.float64) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.floating):
        x = data.astype(np.float64)
    else:
        raise RecordingError(f"{file}: unsupported WAV sample type {data.dtype}")
    names = ["mic"] if x.shape[1] == 1 else [f"ch{i + 1}" for i in range(x.shape[1])]
    keep = _select(file, names, channels)
    mono = x[:, keep].mean(axis=1) if len(keep) > 1 else x[:, keep[0]]
    skipped = (
        (SkippedChannel(",".join(names[k] for k in keep), f"{len(keep)} channels averaged to mono"),)
        if len(keep) > 1
        else ()
    )
    streams = _group(file, [("mic", "mic", float(rate), mono, "FS")], None)
    return Recording(file, "wav", streams, skipped)


def _read_wfdb(hea: Path, channels: Sequence[str] | None, overrides: Mapping[str, str]) -> Recording:
    import wfdb

    record_name = str(hea.with_suffix(""))
    header = wfdb.rdheader(record_name)
    names = list(header.sig_name or [])
    keep = _select(hea, names, channels)
    multi = any(s != 1 for s in (header.samps_per_frame or [1]))
    rec = wfdb.rdrecord(record_name, smooth_frames=not multi)
    start_ns = None
    if rec.base_date is not None and rec.base_time is not None:
        start = datetime.combine(rec.base_date, rec.base_time, tzinfo=UTC)
        start_ns = int(start.timestamp() * 1e9)
    entries: list[tuple[str, str, float, np.ndarray, str]] = []
    skipped: list[SkippedChannel] = []
    for i in keep:
        name = names[i]
        stream = overrides.get(name) or stream_for_signal(name)
        if stream is None:
            skipped.append(SkippedChannel(name, f"{name} has no stream in frame format v1"))
            continue
        if multi:
            sig = np.asarray(rec.e_p_signal[i])
            rate = float(rec.fs) * int(rec.samps_per_frame[i])
        else:
            sig = np.asarray(rec.p_signal[:, i])
            rate = float(rec.fs)
        entries.append((name, stream, rate, sig, str(rec.units[i])))
    return Recording(hea, "wfdb", _group(hea, entries, start_ns), tuple(skipped))


def _read_csv(file: Path, channels: Sequence[str] | None, overrides: Mapping[str, str]) -> Recording:
    import pandas as pd

    try:
        df = pd.read_csv(file, skipinitialspace=True, na_values=["NA", "N/A", "NaN", "nan", "null", ""])
    except pd.errors.EmptyDataError:
        raise RecordingError(f"{file}: empty CSV file") from None
    header = [str(h).strip() for h in df.columns]
    if not header:
        raise RecordingError(f"{file}: empty CSV file")
    lower = [h.lower() for h in header]
    time_idx = next((lower.index(c) for c in CSV_TIME_COLUMNS if c in lower), None)
    if time_idx is None:
        raise RecordingError(
            f"{file}: no time column; expected one of {', '.join(CSV_TIME_COLUMNS)} (seconds), got columns {', '.join(header)}"
        )
    cols = []
    for h, col in zip(header, df.columns, strict=True):
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.isnan(v) & df[col].notna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise RecordingError(
                f"cannot read {file} as CSV: column {h!r} has a non-numeric value {df[col].iloc[row]!r} (data row {row + 1})"
            )
        cols.append(v)
    data = np.column_stack(cols) if cols else np.empty((0, 0))
    if data.shape[0] < 2:
        raise RecordingError(f"{file}: need at least 2 rows to know the sample rate, got {data.shape[0]}")
    t = data[:, time_idx]
    if not np.isfinite(t).all():
        raise RecordingError(f"{file}: time column {header[time_idx]!r} has blank or NA cells (data row {int(np.flatnonzero(~np.isfinite(t))[0]) + 1})")
    dt = np.diff(t)
    period = float(np.median(dt))
    if not period > 0 or np.max(np.abs(dt - period)) > 0.01 * period:
        raise RecordingError(
            f"{file}: time column {header[time_idx]!r} is not uniformly sampled "
            f"(steps from {dt.min():g} to {dt.max():g} s); resample to a constant rate first"
        )
    rate = (t.size - 1) / float(t[-1] - t[0])
    rate = round(rate, 6)
    start_ns = int(round(t[0] * 1e9)) if t[0] > 1e8 else None  # absolute epoch seconds
    value_cols = [h for i, h in enumerate(header) if i != time_idx]
    keep = _select(file, value_cols, channels)
    entries: list[tuple[str, str, float, np.ndarray, str]] = []
    skipped: list[SkippedChannel] = []
    for k in keep:
        name = value_cols[k]
        col = header.index(name)
        stream = overrides.get(name) or stream_for_signal(name)
        if stream is None:
            skipped.append(SkippedChannel(name, "column name maps to no v1 stream (use --stream COLUMN=STREAM)"))
            continue
        entries.append((name, stream, rate, data[:, col], CSV_DEFAULT_UNITS.get(stream, "NU")))
    return Recording(file, "csv", _group(file, entries, start_ns), tuple(skipped))


_BIOSPPY_MAGIC = "# Simple Text Format"
#: Supply voltage of the BITalino sensors in the EDA transfer function, V.
BITALINO_VCC = 3.3


def _is_biosppy_text(p: Path) -> bool:
    with p.open(encoding="utf-8", errors="replace") as fh:
        return fh.readline().strip() == _BIOSPPY_MAGIC


def _read_biosppy(file: Path, channels: Sequence[str] | None, overrides: Mapping[str, str]) -> Recording:
    """BioSPPy "Simple Text Format": ``# Key:= value`` header lines, then samples (tab-separated)."""
    meta: dict[str, str] = {}
    n_header = 0
    with file.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.startswith("#"):
                break
            n_header += 1
            if ":=" in line:
                key, value = line[1:].split(":=", 1)
                meta[key.strip().lower()] = value.strip()
    if "sampling rate (hz)" not in meta:
        raise RecordingError(f"{file}: BioSPPy text header has no '# Sampling Rate (Hz):=' line")
    rate = float(meta["sampling rate (hz)"])
    data = np.loadtxt(file, comments="#", ndmin=2, dtype=np.float64)
    labels = meta.get("labels", "").split("\t") if meta.get("labels") else [f"ch{i + 1}" for i in range(data.shape[1])]
    labels = [lab.strip() for lab in labels]
    if len(labels) != data.shape[1]:
        raise RecordingError(f"{file}: {len(labels)} labels ({', '.join(labels)}) for {data.shape[1]} columns")
    unit = meta.get("units") or "ADC"
    resolution = int(float(meta.get("resolution", "0") or 0))
    keep = _select(file, labels, channels)
    entries: list[tuple[str, str, float, np.ndarray, str]] = []
    skipped: list[SkippedChannel] = []
    for k in keep:
        name = labels[k]
        stream = overrides.get(name) or stream_for_signal(name)
        if stream is None:
            skipped.append(SkippedChannel(name, "label maps to no v1 stream (use --stream LABEL=STREAM)"))
            continue
        column, col_unit = data[:, k], unit
        if stream == "eda" and unit == "ADC" and resolution > 0:
            # BioSPPy's examples come from BITalino (PLUX) sensors; the BITalino (r)evolution EDA
            # transfer function: EDA (uS) = ADC / 2^n * VCC / 0.132, VCC = 3.3 V
            column, col_unit = column / 2.0**resolution * BITALINO_VCC / 0.132, "uS"
        entries.append((name, stream, rate, column, col_unit))
    return Recording(file, "biosppy", _group(file, entries, None), tuple(skipped))


def describe(rec: Recording) -> dict[str, Any]:
    """A JSON-friendly summary of a recording (what ``biopriv inspect --json`` prints)."""
    return {
        "path": str(rec.path),
        "format": rec.format,
        "duration_s": rec.duration_s if rec.streams else 0.0,
        "streams": {
            name: {
                "modality": s.modality,
                "rate_hz": s.rate,
                "n_channels": len(s.channels),
                "channels": list(s.channels),
                "units": sorted(set(s.units)),
                "n_samples": s.n_samples,
                "duration_s": s.duration_s,
                "start_ns": s.start_ns,
                "filled_invalid_samples": s.n_filled,
            }
            for name, s in rec.streams.items()
        },
        "skipped": [{"channel": s.name, "reason": s.reason} for s in rec.skipped],
    }
