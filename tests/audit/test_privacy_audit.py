"""Statistical privacy audits (Ding et al., CCS 2018) of every mechanism, at 99 % confidence.

Each audit draws 400 000 outputs per neighbouring input (the ends of the bounds); a correct
mechanism fails with probability <= 1 %. Seeds are fixed so the outcome is reproducible; the
CLI draws fresh ``os.urandom`` seeds instead.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from pipeline.features.spec import FeatureSpec
from pipeline.privacy import KeyRing, PrivacyConfig, PrivacyEngine, PrivateRelease, ReleaseRequest, audit_mechanism
from pipeline.privacy.audit import epsilon_lower_bound

pytestmark = pytest.mark.audit
N = 400_000
TIGHT = ("laplace", "piecewise", "duchi", "rr", "grr")


@pytest.mark.parametrize("eps", [0.25, 1.0, 3.0])
@pytest.mark.parametrize("mechanism", [*TIGHT, "gaussian"])
def test_claimed_epsilon_holds(mechanism: str, eps: float) -> None:
    res = audit_mechanism(mechanism, eps, N, seed=f"{mechanism}/{eps}".encode(), confidence=0.99)
    assert res.passed, res
    if mechanism in TIGHT:  # the audit is sharp: it finds most of the claimed loss
        assert res.epsilon_lower_bound >= 0.85 * eps, res


@pytest.mark.parametrize("eps", [0.25, 1.0, 3.0])
@pytest.mark.parametrize("mechanism", ["laplace", "piecewise", "duchi", "grr"])
def test_mechanism_calibrated_for_twice_epsilon_fails(mechanism: str, eps: float) -> None:
    res = audit_mechanism(mechanism, eps, N, seed=f"broken/{mechanism}/{eps}".encode(), calibration=2.0)
    assert not res.passed, res
    assert res.epsilon_lower_bound > 1.5 * eps


def test_broken_laplace_fails() -> None:
    res = audit_mechanism("broken-laplace", 1.0, N, seed=b"broken")
    assert not res.passed and res.epsilon_lower_bound > 1.5


def test_engine_end_to_end_audit() -> None:
    """Through PrivacyEngine.privatize: one feature, distinct windows, fresh os.urandom keys."""
    spec = (FeatureSpec("x", "1", 0.0, 1.0),)
    cfg = PrivacyConfig(epsilon=1.0, strategy="split", w_event=None, mechanisms={"x": "laplace"}, retention_s=1.0)
    samples = {}
    for x in (0.0, 1.0):
        keys = KeyRing({"n1": os.urandom(32)}, {"p1": os.urandom(32)}, "n1", "p1")
        eng = PrivacyEngine(cfg, keys)
        out = []
        for w in range(30_000):
            r = eng.privatize(ReleaseRequest("d", "s", "f", w, 1.0, 1.0, w * 10**9, w * 10**9 + 10**9, {"x": x}, spec))
            assert isinstance(r, PrivateRelease)
            out.append(r.values.array[0])
        samples[x] = np.array(out)
    lb = epsilon_lower_bound(samples[0.0], samples[1.0], 0.99)
    assert lb <= 1.0
    assert lb >= 0.6  # 30 000 samples still see most of the loss
