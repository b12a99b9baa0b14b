"""``biopriv keys``: create, rotate and retire the key file; show its public fingerprints."""

from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError


def register(subparsers: Any) -> None:
    """Add the ``keys`` subcommand."""
    p = subparsers.add_parser(
        "keys",
        help="create, rotate and retire the secret key file; show its fingerprints",
        description="The key file holds the noise, pseudonym and state secrets (docs/privacy.md, 'Keys'): mode "
        "0600 or 0400, in a directory only its owner can write. Every worker of a group must hold the same "
        "keys: compare 'show-fingerprint' (public, no secret in it).",
    )
    sub = p.add_subparsers(dest="keys_command", metavar="ACTION")
    sub.required = True
    init = sub.add_parser("init", help="create a new key file (refuses to overwrite one)")
    init.add_argument("path", type=Path, metavar="PATH")
    init.add_argument("--pseudonym-file", type=Path, default=None, metavar="PATH2",
                      help="write the pseudonym and state keys to this second file instead (workers then take "
                           "--key-file PATH --extra-key-file PATH2)")
    init.set_defaults(func=run_init)
    rot = sub.add_parser("rotate", help="add a new active key of one kind")
    rot.add_argument("path", type=Path, metavar="PATH")
    rot.add_argument("--kind", choices=("noise", "pseudonym", "state"), default="noise", help="default %(default)s")
    rot.add_argument("--retire-after", type=float, default=None, metavar="S",
                     help="noise: keep the old key usable this many seconds (default 2 days: longer than any replay)")
    rot.add_argument("--retire-old", action="store_true", help="drop the old key at once (pseudonyms then change)")
    rot.set_defaults(func=run_rotate)
    ret = sub.add_parser("retire", help="remove noise keys past their retirement time from the file")
    ret.add_argument("path", type=Path, metavar="PATH")
    ret.set_defaults(func=run_retire)
    fp = sub.add_parser("show-fingerprint", help="public fingerprints of every key (compare across workers)")
    fp.add_argument("paths", type=Path, nargs="+", metavar="PATH")
    fp.add_argument("--json", action="store_true")
    fp.set_defaults(func=run_fingerprint)


def _safe_dir(path: Path) -> None:
    d = path.resolve().parent
    if not d.exists():
        d.mkdir(parents=True, mode=0o700)
    mode = d.stat().st_mode
    if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
        raise ConfigError(f"refusing to write a key file into {d}: the directory is writable by group or others "
                          f"(mode {stat.S_IMODE(mode):04o})")


def _kinds_of(path: Path) -> list[str]:
    from pipeline.privacy.keys import KINDS, _read_key_file

    data = _read_key_file(path)
    return [k for k in KINDS if k in data]


def run_init(args: argparse.Namespace) -> int:
    from pipeline.privacy.keys import KeyRing, save_keys

    paths = [args.path] + ([args.pseudonym_file] if args.pseudonym_file else [])
    for p in paths:
        if p.exists():
            raise ConfigError(f"{p} exists: refusing to overwrite a key file (rotate it, or remove it yourself)")
        _safe_dir(p)
    ring = KeyRing.generate(args.path)
    if args.pseudonym_file:
        save_keys(ring, args.path, ["noise"])
        save_keys(ring, args.pseudonym_file, ["pseudonym", "state"])
        print(f"created {args.path} (noise keys) and {args.pseudonym_file} (pseudonym and state keys), mode 0600")
    else:
        save_keys(ring, args.path)
        print(f"created {args.path} (mode 0600)")
    return 0


def run_rotate(args: argparse.Namespace) -> int:
    from pipeline.privacy.keys import NOISE_RETIRE_AFTER_S, rotate_keys

    after = NOISE_RETIRE_AFTER_S if args.retire_after is None else args.retire_after
    if after < 0:
        raise ConfigError(f"--retire-after must be >= 0, got {after:g}")
    ring = rotate_keys(args.path, args.kind, retire_old=args.retire_old, retire_after_s=after)
    print(f"{args.path}: new active {args.kind} key {ring.active_ids()[args.kind]}")
    return 0


def run_retire(args: argparse.Namespace) -> int:
    from pipeline.privacy.keys import load_keys, save_keys

    kinds = _kinds_of(args.path)
    if "noise" not in kinds:
        raise ConfigError(f"{args.path} holds no noise keys")
    ring = load_keys(args.path) if {"noise", "pseudonym"} <= set(kinds) else None
    if ring is None:
        raise ConfigError(f"{args.path} holds only {kinds}: retire with the whole key file")
    before = set(ring.fingerprints())
    new = ring.retired()
    save_keys(new, args.path, kinds)
    gone = sorted(before - set(new.fingerprints()))
    print(f"{args.path}: retired {', '.join(gone) if gone else 'nothing (no noise key is past its retirement)'}")
    return 0


def run_fingerprint(args: argparse.Namespace) -> int:
    from pipeline.privacy.keys import load_keys

    for p in args.paths:
        if not p.exists():
            raise ConfigError(f"key file {p} does not exist")
    fps = load_keys(args.paths[0], *args.paths[1:]).fingerprints()
    if args.json:
        print(json.dumps(fps))
    else:
        for k, v in sorted(fps.items()):
            print(f"{k:<16} {v}")
    return 0
