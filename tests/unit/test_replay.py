"""Replay core without Kafka: framing, fan-out, absolute-schedule pacing, summary, and the CLIs."""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from connectors.recordings import Recording, StreamData
from connectors.replay import (
    MemorySender,
    ReplayConfig,
    ScheduledFrame,
    clip_recording,
    pacing_stats,
    plan_replay,
    replay,
    schedule,
    send_loop,
    target_frame_rate,
    total_frames,
)
from pipeline.errors import ConfigError
from pipeline.frames import decode_frame

T0 = 1_700_000_000_000_000_000


def rec_of(**streams: tuple[float, int, int]) -> Recording:
    """A recording with ``name=(rate, n_channels, n_samples)`` streams of distinct ramp values."""
    out = {}
    for i, (name, (rate, n_ch, n)) in enumerate(streams.items()):
        data = (np.arange(n_ch * n, dtype=np.float32).reshape(n_ch, n) + 1000 * i) / 7
        data.flags.writeable = False
        out[name] = StreamData(name, data, rate, tuple(f"c{k}" for k in range(n_ch)), ("NU",) * n_ch)
    return Recording(Path("mem"), "test", out)


class FakeClock:
    """A clock that only moves when told (``sleep`` advances it)."""

    def __init__(self, t: int = T0) -> None:
        self.t = t
        self.sleeps: list[float] = []

    def __call__(self) -> int:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += int(round(seconds * 1e9))


class SlowSender(MemorySender):
    """Advances the fake clock by ``delay_ns`` when frame number ``slow_at`` is sent."""

    def __init__(self, clock: FakeClock, slow_at: int, delay_ns: int) -> None:
        super().__init__()
        self.clock, self.slow_at, self.delay_ns = clock, slow_at, delay_ns

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        super().send(topic, key, value)
        if len(self.messages) - 1 == self.slow_at:
            self.clock.t += self.delay_ns


def recording_helpers() -> Any:
    """The tiny-file makers of ``test_recordings.py`` (loaded by path: tests are not a package)."""
    spec = importlib.util.spec_from_file_location("_recording_helpers", Path(__file__).with_name("test_recordings.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def decoded(sender: MemorySender) -> list:
    return [decode_frame(v) for _, _, v in sender.messages]


# -- plan and framing ------------------------------------------------------------------------------


def test_devices_ids_offsets_and_round_robin() -> None:
    a, b = rec_of(ecg=(100.0, 2, 1000)), rec_of(ppg=(50.0, 1, 300))
    plan = plan_replay([a, b], ReplayConfig(devices=4, stagger_s=3.0, device_prefix="dev", speed=0))
    assert [(ds.device_id, ds.data.name, ds.offset) for ds in plan] == [
        ("dev-0001", "ecg", 0),
        ("dev-0002", "ppg", 150),
        ("dev-0003", "ecg", 600),
        ("dev-0004", "ppg", 450 % 300),
    ]
    assert [ds.frame_samples for ds in plan] == [100, 50, 100, 50]
    assert all(ds.topic == "biopriv.raw.bio" for ds in plan)


def test_every_sample_once_per_device_in_order_rotated_by_stagger() -> None:
    rec = rec_of(ecg=(100.0, 2, 1050), ppg=(25.0, 1, 262))
    sender = MemorySender()
    cfg = ReplayConfig(devices=3, stagger_s=4.0, speed=0)
    summary = replay([rec], cfg, sender)
    frames = decoded(sender)
    assert summary.frames == len(frames) == total_frames(plan_replay([rec], cfg)) == 3 * (11 + 11)
    for i, dev in enumerate(["sim-0001", "sim-0002", "sim-0003"]):
        for name, s in rec.streams.items():
            fs = [f for f in frames if f.device_id == dev and f.stream == name]
            assert [f.seq for f in fs] == list(range(len(fs)))
            assert all(f.n_samples == fs[0].n_samples for f in fs[:-1])
            got = np.concatenate([f.samples for f in fs], axis=1)
            offset = int(round(i * 4.0 * s.rate)) % s.n_samples
            np.testing.assert_array_equal(got, np.roll(s.samples, -offset, axis=1))
            assert fs[0].channels == s.channels and fs[0].sample_rate == s.rate
    # the partial last frame: 1050 = 10 * 100 + 50
    assert [f.n_samples for f in frames if f.device_id == "sim-0001" and f.stream == "ecg"][-1] == 50


def test_loop_keeps_full_frames_across_the_wrap() -> None:
    rec = rec_of(ppg=(10.0, 1, 25))
    plan = plan_replay([rec], ReplayConfig(loop=True, frame_s={"ppg": 1.0}, speed=1))
    assert plan[0].n_frames is None and total_frames(plan) is None
    frames = [sf.frame for sf in itertools.islice(schedule(plan, T0, 1.0), 7)]
    assert [f.seq for f in frames] == list(range(7)) and {f.n_samples for f in frames} == {10}
    got = np.concatenate([f.samples for f in frames], axis=1)[0]
    np.testing.assert_array_equal(got, np.tile(rec.streams["ppg"].samples[0], 3)[:70])


def test_schedule_merges_rates_by_due_time_and_stamps_capture() -> None:
    rec = rec_of(ecg=(100.0, 1, 400), resp=(10.0, 1, 40))
    plan = plan_replay([rec], ReplayConfig(frame_s={"ecg": 0.5, "resp": 2.0}, speed=2.0))
    items = list(schedule(plan, T0, 2.0))
    dues = [sf.due_ns for sf in items]
    assert dues == sorted(dues)
    ecg = [sf for sf in items if sf.frame.stream == "ecg"]
    resp = [sf for sf in items if sf.frame.stream == "resp"]
    # due = t0 + end-of-frame recording time / speed; capture = t0 + start in recording time
    assert [sf.due_ns - T0 for sf in ecg] == [k * 250_000_000 for k in range(1, 9)]
    assert [sf.due_ns - T0 for sf in resp] == [1_000_000_000, 2_000_000_000]
    assert [sf.frame.capture_ns - T0 for sf in resp] == [0, 2_000_000_000]
    assert target_frame_rate(plan, 2.0) == pytest.approx(2 * (2 + 0.5))


# -- pacing ----------------------------------------------------------------------------------------


def ten_frames(period_ns: int = 100_000_000) -> list[ScheduledFrame]:
    plan = plan_replay([rec_of(ppg=(10.0, 1, 10 * 1))], ReplayConfig(frame_s={"ppg": 0.1}))
    items = list(schedule(plan, T0, 1.0))
    assert [sf.due_ns - T0 for sf in items] == [(k + 1) * period_ns for k in range(10)]
    return items


def test_slow_send_does_not_shift_later_frames() -> None:
    clock = FakeClock()
    sender = SlowSender(clock, slow_at=2, delay_ns=350_000_000)  # frame 2 takes 350 ms to send
    summary = send_loop(ten_frames(), sender, speed=1.0, clock=clock, sleep=clock.sleep, start_ns=T0)
    sends = [f.send_ns - T0 for f in decoded(sender)]
    ms = 1_000_000
    # frames 0-2 on time; 3-5 were due during the slow send and go out at once; 6+ back on schedule
    assert sends == [100 * ms, 200 * ms, 300 * ms, 650 * ms, 650 * ms, 650 * ms, 700 * ms, 800 * ms, 900 * ms, 1000 * ms]
    assert summary.pacing_ms["max"] == pytest.approx(250.0)
    assert summary.pacing_ms["median"] == 0.0
    assert summary.late_frames == 3  # 250, 150 and 50 ms late
    assert summary.elapsed_s == pytest.approx(1.0)


def test_no_drift_with_a_slow_sender_every_frame() -> None:
    """A constant 30 ms send cost delays nothing beyond its own frame: no accumulation."""
    clock = FakeClock()

    class Costly(MemorySender):
        def send(self, topic: str, key: bytes, value: bytes) -> None:
            super().send(topic, key, value)
            clock.t += 30_000_000

    sender = Costly()
    summary = send_loop(ten_frames(), sender, speed=1.0, clock=clock, sleep=clock.sleep)
    assert [f.send_ns - T0 for f in decoded(sender)] == [(k + 1) * 100_000_000 for k in range(10)]
    assert clock.sleeps == pytest.approx([0.1] + [0.07] * 9)
    assert summary.pacing_ms["max"] == 0.0


def test_early_wakeups_are_waited_out() -> None:
    clock = FakeClock()

    def half_sleeps(seconds: float) -> None:  # wakes up half way (at least 1 ns later)
        clock.sleeps.append(seconds)
        clock.t += max(1, int(seconds * 1e9 / 2))
    sender = MemorySender()
    send_loop(ten_frames()[:3], sender, speed=1.0, clock=clock, sleep=half_sleeps)
    assert [f.send_ns - T0 for f in decoded(sender)][0] >= 100_000_000
    assert all(0 <= f.send_ns - sf.due_ns < 2 for f, sf in zip(decoded(sender), ten_frames()[:3], strict=True))


def test_speed_zero_never_sleeps_and_reports_no_pacing() -> None:
    clock = FakeClock()
    summary = send_loop(ten_frames(), MemorySender(), speed=0.0, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == [] and summary.frames == 10
    assert summary.pacing_ms["median"] is None
    assert "n/a" in summary.format()


def test_stop_interrupts_cleanly() -> None:
    clock = FakeClock()
    sender = MemorySender()
    summary = send_loop(
        ten_frames(), sender, speed=1.0, clock=clock, sleep=clock.sleep, should_stop=lambda: len(sender.messages) >= 4
    )
    assert summary.interrupted and summary.frames == 4
    assert "interrupted" in summary.format()


def test_json_encoding_and_summary_dict() -> None:
    sender = MemorySender()
    summary = replay([rec_of(eeg=(256.0, 4, 100))], ReplayConfig(speed=0, encoding="json"), sender)
    assert all(v.startswith(b"{") for _, _, v in sender.messages)
    assert [f.n_samples for f in decoded(sender)] == [32, 32, 32, 4]
    d = json.loads(json.dumps(summary.to_dict()))
    assert d["frames"] == 4 and d["samples"] == 100 and d["frames_per_stream"] == {"eeg": 4}
    assert d["bytes"] == sum(len(v) for _, _, v in sender.messages)
    assert sender.messages[0][0] == "biopriv.raw.eeg" and sender.messages[0][1] == b"sim-0001"


def test_pacing_stats() -> None:
    s = pacing_stats(list(range(0, 101_000_000, 1_000_000)))  # 0..100 ms
    assert s == {"median": 50.0, "p99": 99.0, "max": 100.0, "mean": 50.0}


# -- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"devices": 0}, r"devices must be an integer in \[1, 9999\], got 0"),
        ({"speed": -1}, r"speed must be in \[0, 1000\], got -1"),
        ({"encoding": "xml"}, r"encoding must be one of 'binary', 'json', got 'xml'"),
        ({"frame_s": {"eeg": 0}}, r"frame duration of eeg must be in \(0, 60\] s, got 0"),
        ({"frame_s": {"abp": 1}}, r"frame duration stream must be one of .* got 'abp'"),
    ],
)
def test_config_errors_name_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ReplayConfig(**kwargs)


def test_clip_recording() -> None:
    rec = rec_of(ecg=(100.0, 1, 1000), resp=(10.0, 1, 100))
    clipped = clip_recording(rec, 2.0, 3.0)
    np.testing.assert_array_equal(clipped.streams["ecg"].samples, rec.streams["ecg"].samples[:, 200:500])
    assert clipped.streams["resp"].n_samples == 30
    assert clip_recording(rec, 9.5).streams["ecg"].n_samples == 50
    with pytest.raises(ConfigError, match="start 10 s is beyond the end"):
        clip_recording(rec, 10.0)
    with pytest.raises(ConfigError, match=r"duration must be in \(0, inf\) s, got 0"):
        clip_recording(rec, 0.0, 0.0)


def test_too_many_samples_per_frame() -> None:
    with pytest.raises(ConfigError, match="gives 960000 samples per frame"):
        plan_replay([rec_of(mic=(16000.0, 1, 100))], ReplayConfig(frame_s={"mic": 60.0}))


# -- command line ----------------------------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch):
    """``pipeline.cli.main`` restricted to the subcommands of this issue."""
    import pipeline.cli as cli_mod

    monkeypatch.setattr(cli_mod, "SUBCOMMANDS", ("replay", "tail", "inspect"))
    return cli_mod


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("replay", ["--devices", "--speed", "--loop", "--start", "--duration", "--frame-ms", "--stagger",
                    "--device-prefix", "--channels", "--rename", "--stream", "--merge", "--encoding", "--topic",
                    "--bootstrap", "--json-summary", "--no-progress", "FILE"]),
        ("tail", ["--bootstrap", "--stream", "--pseudonym", "--json", "--from-beginning", "--max", "--timeout",
                  "--topic"]),
        ("inspect", ["--channels", "--rename", "--stream", "--frame-ms", "--json", "FILE"]),
    ],
)
def test_help_lists_every_option(cli, capsys: pytest.CaptureFixture[str], command: str, options: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"
    for opt in options:
        assert opt in out


def test_cli_bad_path_one_line(cli, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["replay", str(tmp_path / "missing.edf"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"biopriv: error: recording not found: {tmp_path / 'missing.edf'}"]
    assert cli.main(["inspect", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_cli_bad_option_values_one_line(cli, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    make_wav = recording_helpers().make_wav

    wav, _ = make_wav(tmp_path)
    assert cli.main(["replay", str(wav), "--frame-ms", "abc"]) == 2
    assert capsys.readouterr().err.strip() == "biopriv: error: --frame-ms expects [STREAM=]MILLISECONDS, got 'abc'"
    assert cli.main(["replay", str(wav), "--speed", "-2"]) == 2
    assert "speed must be in [0, 1000], got -2" in capsys.readouterr().err
    assert cli.main(["replay", str(wav), "--topic", "bio"]) == 2
    assert "--topic expects KEY=VALUE, got 'bio'" in capsys.readouterr().err


def test_cli_unreachable_broker_one_line(tmp_path: Path) -> None:
    """Run in a subprocess: the real entry point, and kafka-python's leaked sockets stay there."""
    import subprocess
    import sys

    wav, _ = recording_helpers().make_wav(tmp_path)
    repo = Path(__file__).resolve().parents[2]
    for argv in (
        ["replay", str(wav), "--bootstrap", "127.0.0.1:9", "--no-progress", "--speed", "0"],
        ["tail", "--bootstrap", "127.0.0.1:9", "--max", "1"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", *argv], cwd=repo, capture_output=True, text=True, timeout=120
        )
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, proc.stderr
        assert len(err) == 1 and err[0].startswith("biopriv: error: no Kafka broker answers at 127.0.0.1:9"), err


def test_cli_inspect_text_and_json(cli, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    make_wfdb_multi = recording_helpers().make_wfdb_multi

    hea = make_wfdb_multi(tmp_path)
    assert cli.main(["inspect", str(hea)]) == 0
    out = capsys.readouterr().out
    assert "ecg" in out and "100 Hz" in out and "ppg" in out and "50 Hz" in out and "resp" in out
    assert cli.main(["inspect", "--json", "--frame-ms", "500", str(hea)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["streams"]["ecg"]["frame_samples"] == 50 and info["streams"]["resp"]["frames_per_pass"] == 8


def test_tail_formatting_is_robust() -> None:
    from pipeline.cli.tail import format_row, header, matches, parse_release

    rel = {
        "v": 2, "release_id": "ab" * 16, "pseudonym": "p-3f9a", "stream": "ppg", "feature_set": "hrv",
        "slot": {"start": "2023-11-14T22:13:20Z", "seconds": 10},
        "values": {"hr": 71.234567, "sdnn": 40.0, "rmssd": 31.5, "pnn50": 0.1, "lf_hf": 1.2},
        "noise": {k: {"mechanism": "laplace", "epsilon": 0.1} for k in ("hr", "sdnn", "rmssd", "pnn50", "lf_hf")},
    }
    row = format_row(rel)
    assert "p-3f9a" in row and "hr=71.23" in row and "(+1 more)" in row and "2023-11-14T22:13:20Z" in row
    assert " 0.5 " in row and "laplace" in row
    assert len(header().split()) == 7
    assert "?" in format_row({"values": None})
    assert matches(rel, "ppg", "p-3f9a") and not matches(rel, "eeg") and not matches(rel, None, "other")
    assert parse_release(b"not json") is None and parse_release(b"[1]") is None
    assert parse_release(json.dumps(rel).encode()) == rel
