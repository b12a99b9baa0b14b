"""Fixtures of the privacy unit tests."""

from __future__ import annotations

import pytest
from privacy_helpers import fixed_keys

from pipeline.privacy import KeyRing, PrivacyConfig, PrivacyEngine


@pytest.fixture
def keys() -> KeyRing:
    return fixed_keys()


@pytest.fixture
def engine(keys: KeyRing) -> PrivacyEngine:
    return PrivacyEngine(PrivacyConfig(epsilon=1.0, strategy="split", w_event=None), keys)
