"""The ``biopriv`` command line: one entry point, one module per subcommand.

Each module in :data:`SUBCOMMANDS` defines ``register(subparsers)``, which adds its parser and
sets ``func`` to a callable ``(args) -> int`` (the exit code). Modules import heavy libraries
inside ``func`` so that ``biopriv --help`` stays fast. Errors derived from
:class:`~pipeline.errors.BioprivError` are printed as one line, ``biopriv: error: ...``, with a
non-zero exit, never as a traceback; so are operating-system errors (a folder that cannot be
created, a disk full: exit 1), a closed output pipe (``biopriv features ... | head -1``: exit 141,
as a shell reports SIGPIPE) and Ctrl-C (exit 130).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from pipeline import __version__
from pipeline.errors import BioprivError

#: Subcommand modules, in the order ``--help`` lists them.
SUBCOMMANDS = (
    "demo",
    "kafka",
    "worker",
    "replay",
    "tail",
    "inspect",
    "features",
    "generate",
    "audit",
    "study",
    "plan",
    "aggregate",
    "report",
    "budget",
    "keys",
    "bench",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (all subcommands registered)."""
    parser = argparse.ArgumentParser(
        prog="biopriv",
        description="Streaming local differential privacy for biosignals on Apache Kafka.",
    )
    parser.add_argument("--version", action="version", version=f"biopriv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"pipeline.cli.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BioprivError as exc:
        print(f"biopriv: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("biopriv: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _silence_stdout()
        print("biopriv: output closed early (broken pipe)", file=sys.stderr)
        return 141
    except OSError as exc:
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"biopriv: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # pragma: no cover - stdout without a file descriptor
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
