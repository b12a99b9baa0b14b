"""``biopriv generate`` then ``biopriv features --json`` recovers the synthetic ground truth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import features, generate


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    features.register(sub)
    generate.register(sub)
    return p


def test_generate_then_features_recovers_truth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _parser()
    args = p.parse_args(["generate", str(tmp_path), "--seconds", "40", "--seed", "3"])
    assert args.func(args) == 0
    truth = json.loads((tmp_path / "truth.json").read_text())
    capsys.readouterr()
    args = p.parse_args(["features", str(tmp_path / "cardio.hea"), "--json"])
    assert args.func(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["stream"] for r in rows} == {"ecg", "ppg", "resp"}
    for r in rows:
        assert set(r) == {"stream", "feature_set", "window_start_s", "window_end_s", "features"}
    hr = [r["features"]["hr"] for r in rows if r["feature_set"] == "hr"]
    assert np.median(hr) == pytest.approx(truth["heart_rate_bpm"], abs=1.0)
    rr = [r["features"]["resp_rate"] for r in rows if r["stream"] == "resp"]
    assert np.median(rr) == pytest.approx(truth["breathing_rate_bpm"], abs=0.5)
    first = next(r for r in rows if r["feature_set"] == "hr")
    assert (first["window_start_s"], first["window_end_s"]) == (0.0, 10.0)
