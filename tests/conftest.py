"""Fixtures shared by every test directory."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Real public recordings beside the project root (never copied into it).
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared recordings folder; skips the test with a clear message when it is absent."""
    if not (SHARED_DATA / "README.md").exists():
        pytest.skip(f"shared recordings not found at {SHARED_DATA} (they live beside the project root)")
    return SHARED_DATA


@pytest.fixture
def seeded_lineages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ledger lineages drawn from a fixed generator instead of the system's randomness, so that a
    statistical test of the engine's output gives the same result on every run (the noise identity
    binds the device's lineage, ``pipeline.privacy.engine``)."""
    import random
    import types

    from pipeline.privacy import accountant

    generator = random.Random(20261202)
    monkeypatch.setattr(accountant, "secrets", types.SimpleNamespace(token_hex=lambda n: generator.randbytes(n).hex()))
