"""Configuration validation and warnings; key files, pseudonyms, rotation."""

from __future__ import annotations

import json
import os
import stat

import pytest
from privacy_helpers import request

from pipeline.errors import ConfigError, PrivacyError
from pipeline.features.spec import FeatureSpec
from pipeline.privacy import KeyRing, PrivacyConfig, PrivacyEngine, PrivacyWarning, load_keys, rotate_keys


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"epsilon": 0}, r"epsilon must be in \(0, inf\), got 0"),
        ({"epsilon": -1.0}, "got -1.0"),
        ({"epsilon": "x"}, "epsilon must be a number, got 'x'"),
        ({"delta": 1e-3, "n_devices": 1000}, "delta must be far below 1/n_devices"),
        ({"strategy": "best"}, "strategy must be one of 'auto', 'sample', 'split', got 'best'"),
        ({"mechanisms": {"hr": "laplase"}}, "mechanisms\\['hr'\\] must be one of"),
        ({"mechanisms": {"hr": "gaussian"}}, "needs delta > 0"),
        ({"w_event": {"epsilon": 1.0}}, "w_event needs horizon_s, or w and hop_s"),
        ({"grid_steps": 1023}, "grid_steps must be an even integer"),
        ({"epsilom": 1.0}, "unknown privacy setting"),
    ],
)
def test_invalid_settings_are_rejected_with_the_value(data: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PrivacyConfig.from_mapping(data)


def test_missing_or_infinite_bounds_are_rejected(engine: PrivacyEngine) -> None:
    specs = (FeatureSpec("hr", "bpm", 30.0, float("inf")),)
    with pytest.raises(ConfigError, match="bounds must be finite"):
        engine.privatize(request(0, {"hr": 1.0}, specs=specs))


def test_loud_warnings_for_weak_protection() -> None:
    with pytest.warns(PrivacyWarning, match="epsilon = 12 exceeds 10"):
        PrivacyConfig(epsilon=12.0, w_event=None)
    with pytest.warns(PrivacyWarning, match="exceeds 1 for medical data"):
        PrivacyConfig(epsilon=2.0, w_event=None, medical=True)
    engine = PrivacyEngine(PrivacyConfig(epsilon=2.0, w_event=None), KeyRing.generate())
    specs = (FeatureSpec("hr", "bpm", 30.0, 220.0, medical=True),)
    with pytest.warns(PrivacyWarning, match="medical features of 'hrv' \\(hr\\)"):
        engine.privatize(request(0, {"hr": 70.0}, specs=specs))


def test_default_config_is_quiet_and_valid() -> None:
    cfg = PrivacyConfig.default()
    assert cfg.epsilon == 0.1 and cfg.w_event is not None and cfg.w_event.epsilon == 8.0
    assert PrivacyConfig.from_mapping(cfg.to_mapping()) == cfg


def test_from_file_toml_and_json(tmp_path) -> None:
    toml = tmp_path / "p.toml"
    toml.write_text(
        '[privacy]\nepsilon = 0.5\nmechanisms = {"hr" = "laplace"}\n[privacy.w_event]\nepsilon = 5.0\nw = 10\nhop_s = 0.5\n[privacy.period]\nepsilon = 9.0\nperiod = "day"\n'
    )
    with pytest.warns(PrivacyWarning, match="period.epsilon = 9 exceeds 8"):  # daily totals are checked too
        cfg = PrivacyConfig.from_file(toml)
    assert (
        cfg.w_event is not None
        and cfg.w_event.horizon_s == 5.0
        and cfg.period is not None
        and cfg.period.period_s == 86400.0
    )
    js = tmp_path / "p.json"
    js.write_text(json.dumps(cfg.to_mapping()))
    with pytest.warns(PrivacyWarning):
        assert PrivacyConfig.from_file(js) == cfg
    with pytest.raises(ConfigError, match="cannot read privacy configuration"):
        PrivacyConfig.from_file(tmp_path / "missing.toml")


def test_key_file_is_created_0600_and_stable(tmp_path) -> None:
    path = tmp_path / "k" / "keys.json"
    a = load_keys(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    b = load_keys(path)
    assert a.pseudonym("dev-1") == b.pseudonym("dev-1") and len(a.pseudonym("dev-1")) == 32
    assert a.pseudonym("dev-1") != a.pseudonym("dev-2")
    assert a.noise_key("dev-1") == b.noise_key("dev-1")
    secret = json.loads(path.read_text())["noise"]["keys"]["n1"]
    assert secret not in repr(a) and "n1" in repr(a)


def test_key_file_open_to_others_is_refused(tmp_path) -> None:
    path = tmp_path / "keys.json"
    load_keys(path)
    os.chmod(path, 0o644)
    with pytest.raises(PrivacyError, match="mode is 0644, expected 0600"):
        load_keys(path)


def test_rotation(tmp_path) -> None:
    path = tmp_path / "keys.json"
    a = load_keys(path)
    b = rotate_keys(path, "noise")
    assert b.noise_key("d")[0] == "n2" and b.noise_key_version("d", "n1") == a.noise_key("d")[1]
    assert b.pseudonym("d") == a.pseudonym("d")
    c = rotate_keys(path, "pseudonym")
    assert c.pseudonym("d") != a.pseudonym("d")
    assert load_keys(path).pseudonym("d") == c.pseudonym("d")
