"""``biopriv keys``: init, rotate, retire, show-fingerprint, and the unsafe cases it refuses."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.privacy import load_keys


def fingerprints(capsys: pytest.CaptureFixture[str], *paths: Path) -> dict[str, str]:
    capsys.readouterr()  # what came before
    assert main(["keys", "show-fingerprint", *map(str, paths), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_init_rotate_retire_and_fingerprints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys" / "keys.json"
    assert main(["keys", "init", str(path)]) == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    first = fingerprints(capsys, path)
    assert set(first) == {"noise:n1", "pseudonym:p1", "state:s1"}
    pseudonym = load_keys(path).pseudonym("dev-1")

    assert main(["keys", "rotate", str(path), "--kind", "noise", "--retire-after", "0"]) == 0
    rotated = fingerprints(capsys, path)
    assert set(rotated) == {"noise:n1", "noise:n2", "pseudonym:p1", "state:s1"}
    assert rotated["noise:n1"] == first["noise:n1"]  # the old key is kept until it is retired
    assert load_keys(path).pseudonym("dev-1") == pseudonym  # a noise rotation keeps pseudonyms

    capsys.readouterr()
    assert main(["keys", "retire", str(path)]) == 0
    assert "retired noise:n1" in capsys.readouterr().out
    assert set(fingerprints(capsys, path)) == {"noise:n2", "pseudonym:p1", "state:s1"}


def test_init_with_the_pseudonym_key_apart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    noise, pseudo = tmp_path / "noise.json", tmp_path / "pseudonym.json"
    assert main(["keys", "init", str(noise), "--pseudonym-file", str(pseudo)]) == 0
    assert set(json.loads(noise.read_text())) == {"format", "noise"}
    assert set(json.loads(pseudo.read_text())) == {"format", "pseudonym", "state"}
    assert set(fingerprints(capsys, noise, pseudo)) == {"noise:n1", "pseudonym:p1", "state:s1"}
    assert main(["keys", "show-fingerprint", str(noise)]) == 2  # one half alone is refused
    assert "no key file holds the 'pseudonym' section" in capsys.readouterr().err


def test_unsafe_cases_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.json"
    assert main(["keys", "init", str(path)]) == 0
    capsys.readouterr()
    assert main(["keys", "init", str(path)]) == 2  # never overwritten
    assert "refusing to overwrite" in capsys.readouterr().err
    os.chmod(path, 0o644)
    assert main(["keys", "show-fingerprint", str(path)]) == 2  # readable by others
    assert "must not be accessible by group or others" in capsys.readouterr().err
    open_dir = tmp_path / "shared"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    assert main(["keys", "init", str(open_dir / "keys.json")]) == 2
    err = capsys.readouterr().err
    assert "writable by group or others" in err and err.count("\n") == 1
    assert not (open_dir / "keys.json").exists()
