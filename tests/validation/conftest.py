"""Fixtures for the checks against the real recordings in ``../shared/data``."""

from __future__ import annotations

from pathlib import Path

import pytest

#: The shared recordings, relative to the repository root (never copied into the repo).
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared-data folder; skips the test with a clear message when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared recordings not found at {SHARED_DATA} (see the project README: ../shared/data)")
    return SHARED_DATA


def need(path: Path) -> Path:
    """``path`` if it exists, else skip naming the missing file."""
    if not path.exists():
        pytest.skip(f"shared recording {path} is missing")
    return path
