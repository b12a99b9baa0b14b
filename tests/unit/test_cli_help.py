"""Every ``--help`` page renders (argparse %-formats help strings: a stray ``%`` crashed
``biopriv --help``) and shows no doubled ``%%`` (descriptions are not %-formatted)."""

from __future__ import annotations

import argparse

import pytest

from pipeline.cli import SUBCOMMANDS, build_parser


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:  # argparse offers no public walk of subparsers
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _parsers(sub, (*path, name))
    return found


def test_every_help_page_renders_without_doubled_percent() -> None:
    pages = _parsers(build_parser())
    assert {p[0] for p, _ in pages if p} >= set(SUBCOMMANDS)
    for path, parser in pages:
        text = parser.format_help()
        assert "%%" not in text, f"biopriv {' '.join(path)} --help shows '%%'"


@pytest.mark.parametrize("argv", [["--help"], ["aggregate", "--help"], ["plan", "--help"]])
def test_help_exits_cleanly(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 0
    assert "usage: biopriv" in capsys.readouterr().out
