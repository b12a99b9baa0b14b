"""Engine: replay safety, idempotent charging, suppression, NaN, strategies, ledger restore."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from privacy_helpers import SPECS, fixed_keys, pinned, request

from pipeline.errors import PrivacyError
from pipeline.features.spec import FeatureSpec
from pipeline.privacy import PrivacyConfig, PrivacyEngine, PrivateRelease, Suppression, WEventRule
from pipeline.privacy.mechanisms import output_grid


def _release(engine: PrivacyEngine, w: int, **kw: object) -> PrivateRelease:
    out = engine.privatize(request(w, **kw))  # type: ignore[arg-type]
    assert isinstance(out, PrivateRelease), out
    return out


def test_same_identity_and_key_give_bit_identical_release(keys) -> None:
    cfg = PrivacyConfig(epsilon=1.0, strategy="split", w_event=None)
    a = _release(pinned(PrivacyEngine(cfg, keys)), 5)
    b = _release(pinned(PrivacyEngine(cfg, fixed_keys())), 5)
    assert a == b
    assert np.array_equal(a.values.array.view(np.uint64), b.values.array.view(np.uint64))
    assert len(a.release_id) == 32 and a.device == fixed_keys().pseudonym("dev-1")


def test_other_key_or_window_gives_other_noise() -> None:
    cfg = PrivacyConfig(epsilon=8.0, strategy="split", w_event=None, mechanisms={"f*": "laplace"})
    specs = tuple(FeatureSpec(f"f{i}", "1", 0.0, 1.0) for i in range(200))
    vals = {s.name: 0.5 for s in specs}
    base = PrivacyEngine(cfg, fixed_keys(b"a")).privatize(request(1, vals, specs=specs))
    other_key = PrivacyEngine(cfg, fixed_keys(b"b")).privatize(request(1, vals, specs=specs))
    other_win = PrivacyEngine(cfg, fixed_keys(b"a")).privatize(request(2, vals, specs=specs))
    for o in (other_key, other_win):
        assert isinstance(o, PrivateRelease) and isinstance(base, PrivateRelease)
        x, y = base.values.array, o.values.array
        assert np.mean(x == y) < 0.01  # Laplace of scale 25600 steps: ties are rare
        assert abs(np.corrcoef(x, y)[0, 1]) < 0.25


def test_replay_is_identical_and_charged_once(engine: PrivacyEngine) -> None:
    first = _release(engine, 0)
    _release(engine, 1)
    ledger = json.dumps(engine.ledger_state(), sort_keys=True)
    again = engine.privatize(request(0))
    assert again == first
    assert json.dumps(engine.ledger_state(), sort_keys=True) == ledger
    assert engine.stats == {"released": 2, "suppressed": 0, "replayed": 1}


def test_replay_after_restart_from_ledger(keys) -> None:
    cfg = PrivacyConfig(epsilon=1.0, strategy="split", w_event=WEventRule(3.0, 1.0))
    e1 = PrivacyEngine(cfg, keys)
    rels = [e1.privatize(request(w)) for w in range(4)]
    state = json.loads(json.dumps(e1.ledger_state()))
    e2 = PrivacyEngine(cfg, fixed_keys(), ledger_state=state)
    assert [e2.privatize(request(w)) for w in range(4)] == rels
    assert e2.ledger_state() == state


def test_replay_with_different_values_is_suppressed(keys) -> None:
    """Same noise on other data would publish the difference; an identical output would be harmless."""
    engine = PrivacyEngine(
        PrivacyConfig(epsilon=1.0, strategy="split", w_event=None, mechanisms={"hr": "laplace"}), keys
    )
    _release(engine, 0)
    out = engine.privatize(request(0, {"hr": 150.0, "rmssd": 40.0, "speech": 1.0, "activity": 2.0}))
    assert isinstance(out, Suppression) and out.reason == "replay_mismatch"


def test_unknown_old_window_is_suppressed(engine: PrivacyEngine) -> None:
    _release(engine, 5)
    out = engine.privatize(request(3))
    assert isinstance(out, Suppression) and out.reason == "replay_unknown"


def test_key_rotation_keeps_replays_and_changes_new_noise(keys) -> None:
    """A rotation takes effect at the device's next UTC day: its windows of the current day keep
    the day's key, so a window re-processed after a crash is never noised under another key."""
    cfg = PrivacyConfig(epsilon=1.0, strategy="split", w_event=None)
    e = PrivacyEngine(cfg, keys)
    r0 = _release(e, 0)
    state = e.ledger_state()
    rotated = keys.rotated("noise")
    e2 = PrivacyEngine(cfg, rotated, ledger_state=state)
    assert e2.privatize(request(0)) == r0
    assert _release(e2, 1).key_id == "n1"  # same day
    assert _release(e2, 2, t0=(1_700_000_000 + 86_400) * 1_000_000_000).key_id == "n2"  # the next day
    retired = PrivacyEngine(cfg, keys.rotated("noise", retire_old=True), ledger_state=state)
    out = retired.privatize(request(0))
    assert isinstance(out, Suppression) and out.reason == "replay_key_retired"


def test_budget_exhaustion_suppresses_with_event_and_no_raw_values(keys) -> None:
    cfg = PrivacyConfig(epsilon=1.0, strategy="split", w_event=WEventRule(2.0, 1.0))
    e = PrivacyEngine(cfg, keys)
    outs = [e.privatize(request(w)) for w in range(6)]  # hop 0.5 s, length 2 s: 2 fit
    kinds = [type(o).__name__ for o in outs]
    assert kinds[:2] == ["PrivateRelease", "PrivateRelease"] and kinds[2] == "Suppression"
    sup = outs[2]
    assert isinstance(sup, Suppression) and sup.reason == "budget_exhausted"
    assert sup.event["type"] == "budget_exhausted" and sup.event["rule"] == "w_event"
    assert sup.event["epsilon_needed"] == 1.0 and sup.event["epsilon_remaining"] == 0.0
    text = json.dumps(sup.event)
    assert "dev-1" not in text and "72.0" not in text
    assert e.privatize(request(2)) == sup  # replay of a suppressed window: same suppression
    assert outs[0].budget == {"w_event": {"epsilon": 2.0, "spent": 1.0, "remaining": 1.0}}  # type: ignore[union-attr]


def test_nan_is_replaced_by_a_public_default_and_noised(keys) -> None:
    cfg = PrivacyConfig(epsilon=2.0, strategy="split", w_event=None)
    e = PrivacyEngine(cfg, keys)
    vals = {"hr": math.nan, "rmssd": math.nan, "speech": math.nan, "activity": math.nan}
    outs = [_release(e, w, values=vals) for w in range(300)]
    hr = np.array([o.values["hr"] for o in outs])
    assert np.all(np.isfinite(hr))
    assert set(np.unique(hr)) == {
        *output_grid("duchi", outs[0].feature_epsilon["hr"], 30.0, 220.0, 1024)[:1],
        sum(output_grid("duchi", outs[0].feature_epsilon["hr"], 30.0, 220.0, 1024)),
    }
    assert abs(hr.mean() - 125.0) < 5 * hr.std() / math.sqrt(hr.size)
    assert all(o.values["activity"] in (0.0, 1.0, 2.0, 3.0) for o in outs)


def test_values_are_on_the_grid(keys) -> None:
    cfg = PrivacyConfig(epsilon=2.0, strategy="split", w_event=None)
    r = _release(PrivacyEngine(cfg, keys), 0)
    for spec in SPECS:
        v = r.values[spec.name]
        if spec.kind == "numeric":
            offset, step = output_grid(
                r.feature_mechanisms[spec.name], r.feature_epsilon[spec.name], spec.lower, spec.upper, 1024
            )
            assert (v - offset) / step == pytest.approx(round((v - offset) / step), abs=1e-6)
        else:
            assert v == int(v)
    assert sum(r.feature_epsilon.values()) == pytest.approx(2.0)
    assert r.to_dict()["values"] == dict(r.values)


def test_sample_strategy_releases_k_features(keys) -> None:
    specs = tuple(FeatureSpec(f"bp{i}", "uV^2/Hz", 0.0, 50.0) for i in range(320))
    vals = {s.name: 10.0 for s in specs}
    e = PrivacyEngine(PrivacyConfig(epsilon=0.5, w_event=None), keys)  # auto
    r = e.privatize(request(0, vals, specs=specs))
    assert isinstance(r, PrivateRelease)
    assert r.strategy == "sample" and len(r.values) == 1
    assert r.feature_epsilon[next(iter(r.values))] == pytest.approx(0.5)
    seen = {next(iter(_release(e, w, values=vals, specs=specs).values)) for w in range(1, 400)}
    assert len(seen) > 200  # the sampled feature varies across windows


def test_bad_requests_raise(engine: PrivacyEngine) -> None:
    with pytest.raises(PrivacyError, match="unexpected \\['x'\\]"):
        engine.privatize(request(0, {"hr": 1.0, "rmssd": 1.0, "speech": 0.0, "activity": 1.0, "x": 1.0}))
    with pytest.raises(PrivacyError, match="lack feature 'activity'"):
        engine.privatize(request(0, {"hr": 1.0, "rmssd": 1.0, "speech": 0.0, "x": 1.0}))
    with pytest.raises(PrivacyError, match="window_index"):
        engine.privatize(request(-1))
    with pytest.raises(PrivacyError, match="hop_s"):
        engine.privatize(request(0, hop_s=0.0))


def test_ledger_state_of_some_devices_is_their_slice_of_the_whole(tmp_path) -> None:
    """A checkpoint of the changed devices only carries exactly their part of the full ledger."""
    import numpy as np

    from pipeline.features.spec import FeatureSpec
    from pipeline.privacy import PrivacyConfig, PrivacyEngine, ReleaseRequest, load_keys

    engine = PrivacyEngine(PrivacyConfig.default(), load_keys(tmp_path / "k.json"))
    specs = (FeatureSpec("x", "1", 0.0, 1.0),)
    for i, dev in enumerate(["a", "b", "c"]):
        engine.privatize(ReleaseRequest(dev, "eeg", "eeg", i, 0.5, 2.0, 0, 2_000_000_000, {"x": 0.5}, specs))
    full = engine.ledger_state()
    part = engine.ledger_state(["a", "c", "zz"])
    assert set(part["devices"]) == {"a", "c"}
    assert part["devices"] == {d: full["devices"][d] for d in ("a", "c")}
    assert {k: v for k, v in part.items() if k != "devices"} == {k: v for k, v in full.items() if k != "devices"}
    assert np.isfinite(full["devices"]["b"]["lifetime_units"])
