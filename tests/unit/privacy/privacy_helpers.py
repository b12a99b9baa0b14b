"""Helpers of the privacy tests: deterministic keys, small feature sets, requests."""

from __future__ import annotations

from pipeline.features.spec import FeatureSpec
from pipeline.privacy import KeyRing, PrivacyEngine, ReleaseRequest

SEC = 1_000_000_000


def fixed_keys(tag: bytes = b"a") -> KeyRing:
    """Keys from a fixed seed, so that tests are reproducible."""
    return KeyRing({"n1": tag * 32}, {"p1": b"p" * 32}, "n1", "p1")


#: A fixed device lineage, so that releases of a fresh engine are reproducible in tests (a real
#: ledger draws it at random).
LINEAGE = "ab" * 16


def pinned(engine: PrivacyEngine, device: str = "dev-1", lineage: str = LINEAGE) -> PrivacyEngine:
    """``engine`` with ``device``'s ledger lineage fixed (as if restored from durable state)."""
    engine.set_header(device, {"lineage": lineage, "keys": {}})
    return engine


SPECS = (
    FeatureSpec("hr", "bpm", 30.0, 220.0, medical=False),
    FeatureSpec("rmssd", "ms", 0.0, 300.0),
    FeatureSpec("speech", "1", 0.0, 1.0, kind="binary"),
    FeatureSpec("activity", "1", 0.0, 3.0, kind="categorical", categories=("rest", "walk", "run", "other")),
)


def request(
    w: int,
    values: dict[str, float] | None = None,
    *,
    device: str = "dev-1",
    stream: str = "s1",
    specs=SPECS,
    hop_s: float = 0.5,
    length_s: float = 2.0,
    t0: int = 1_700_000_000 * SEC,
) -> ReleaseRequest:
    vals = values if values is not None else {"hr": 72.0, "rmssd": 40.0, "speech": 1.0, "activity": 2.0}
    start = t0 + int(w * hop_s * SEC)
    return ReleaseRequest(device, stream, "hrv", w, hop_s, length_s, start, start + int(length_s * SEC), vals, specs)
