"""``biopriv audit``: text and JSON output, exit codes."""

from __future__ import annotations

import argparse
import json

import pytest

from pipeline.cli import audit as cli_audit


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="biopriv")
    cli_audit.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_json_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["audit", "--mechanism", "duchi", "--epsilon", "1", "--samples", "20000", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"mechanism", "epsilon_claimed", "epsilon_lower_bound", "confidence", "samples", "passed"}
    assert out["mechanism"] == "duchi" and out["passed"] is True and out["samples"] == 20000
    assert 0.0 <= out["epsilon_lower_bound"] <= 1.0 and out["confidence"] == 0.99


def test_miscalibrated_mechanism_fails_with_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["audit", "-m", "broken-laplace", "-e", "1", "-n", "100000"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_bad_mechanism_is_an_argparse_error() -> None:
    with pytest.raises(SystemExit) as exc:
        _run(["audit", "-m", "nope", "-e", "1"])
    assert exc.value.code == 2
