"""Feature extractors against scipy references and signals with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal

from pipeline.errors import ConfigError
from pipeline.features import DEFAULT_WINDOWS, FEATURE_SETS, feature_sets
from pipeline.features.cardiac import detect_beats, heart_rate, hrv
from pipeline.features.eeg import BANDS, EegExtractor, standard_name
from pipeline.windows import Window, WindowSpec

RNG_SEED = 20240601


def window(data: np.ndarray, rate: float, channels: tuple[str, ...], units: str) -> Window:
    return Window(0, 0, 0, rate, channels, (units,) * len(channels), np.atleast_2d(data).astype(float), 0, 0, 0.0)


def test_registry_defaults_and_overrides() -> None:
    assert [f.name for f in feature_sets("ppg")] == ["hr", "hrv"]
    hrv_set = feature_sets("ecg", {"hrv": WindowSpec(120.0, 10.0)})[1]
    assert hrv_set.window.length_s == 120.0 and feature_sets("ecg")[0].window == DEFAULT_WINDOWS["hr"]
    with pytest.raises(ConfigError, match="stream must be one of"):
        feature_sets("xyz")
    with pytest.raises(ConfigError, match="unknown feature set"):
        feature_sets("eeg", {"nope": WindowSpec(1.0, 1.0)})


RATES = {"eeg": 256.0, "mic": 16000.0, "ppg": 64.0, "ecg": 250.0, "eda": 8.0, "acc": 32.0, "temp": 4.0, "resp": 25.0}
CHANNELS = {"eeg": ("Fp1", "F3", "F4", "O1"), "acc": ("x", "y", "z")}


@pytest.mark.parametrize("stream", sorted(FEATURE_SETS))
@pytest.mark.parametrize("signal", ["noise", "zeros", "constant"])
def test_keys_match_specs_and_values_stay_finite_or_nan(stream: str, signal: str) -> None:
    rng = np.random.default_rng(RNG_SEED)
    rate = RATES[stream]
    chans = CHANNELS.get(stream, ("c0",))
    for fs in feature_sets(stream):
        n = fs.window.n_length(rate)
        data = {"noise": rng.normal(size=(len(chans), n)) * 0.1, "zeros": np.zeros((len(chans), n)),
                "constant": np.full((len(chans), n), 0.5)}[signal]
        specs = fs.specs(chans, rate)
        out = fs.compute(window(data, rate, chans, "a.u."))
        assert list(out) == [s.name for s in specs]
        for s in specs:
            assert s.lower < s.upper and s.unit
            v = out[s.name]
            assert isinstance(v, float) and not math.isinf(v)


def test_eeg_psd_equals_scipy_welch() -> None:
    rng = np.random.default_rng(RNG_SEED)
    x = rng.normal(size=(3, 512)) * 10 + 50  # with a DC offset, removed per segment as scipy does
    f, ours = EegExtractor().welch(x, 256.0)
    fr, ref = scipy.signal.welch(x, 256.0, window="hamming", nperseg=256, noverlap=128, detrend="constant")
    np.testing.assert_allclose(f, fr)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_eeg_alpha_sine_and_hjorth() -> None:
    rate = 256.0
    t = np.arange(512) / rate
    x = 20 * np.sin(2 * np.pi * 10 * t)
    chans = ("F3", "F4")
    out = EegExtractor().compute(np.vstack([x, 2 * x]), rate, chans, ("uV", "uV"))
    assert out["alpha_rel.F3"] > 0.95
    # a sine of amplitude A has power A^2 / 2 (Hamming leakage stays inside the 8-13 Hz band)
    assert out["alpha_log.F3"] == pytest.approx(math.log10(200.0), abs=0.009)
    assert out["hjorth_log_activity.F3"] == pytest.approx(math.log10(200.0), abs=0.005)
    assert out["hjorth_mobility.F3"] == pytest.approx(10.0, rel=0.01)
    assert out["hjorth_complexity.F3"] == pytest.approx(1.0, abs=0.01)
    assert out["sef95.F3"] == pytest.approx(10.0, abs=1.0)
    assert out["spectral_entropy.F3"] < 0.3
    assert out["line_length.F3"] == pytest.approx(4 * 20 * 10, rel=0.02)  # 4 A f for a sine
    assert out["frontal_alpha_asymmetry"] == pytest.approx(math.log(4.0), abs=1e-9)
    assert math.isnan(out["alpha_theta_ratio"]) or out["alpha_theta_ratio"] > 10


def test_eeg_units_are_converted_to_microvolts() -> None:
    rng = np.random.default_rng(RNG_SEED)
    x = rng.normal(size=(1, 512)) * 10
    a = EegExtractor().compute(x, 256.0, ("Cz",), ("uV",))
    b = EegExtractor().compute(x * 1e-6, 256.0, ("Cz",), ("V",))
    assert b["alpha_log.Cz"] == pytest.approx(a["alpha_log.Cz"], rel=1e-9)


def test_band_edges_are_contiguous() -> None:
    edges = list(BANDS.values())
    assert all(a[1] == b[0] for a, b in zip(edges, edges[1:], strict=False))


@pytest.mark.parametrize(("name", "std"), [("Fc5.", "FC5"), ("EEG F3-REF", "F3"), ("Oz", "Oz"), ("X1", None)])
def test_standard_names(name: str, std: str | None) -> None:
    assert standard_name(name) == std


def _synthetic_ecg(rate: float, hr: float, seconds: float, seed: int = RNG_SEED) -> tuple[np.ndarray, np.ndarray]:
    from connectors.synth import ecg_signal

    return ecg_signal(rate, seconds, hr_bpm=hr, hrv_ms=0.0, seed=seed)


@pytest.mark.parametrize("hr", [50.0, 75.0, 120.0, 170.0])
def test_heart_rate_on_synthetic_ecg_and_ppg(hr: float) -> None:
    from connectors.synth import ppg_signal

    x, _ = _synthetic_ecg(250.0, hr, 10.0)
    assert heart_rate(detect_beats(x, 250.0, "ecg")) == pytest.approx(hr, abs=1.0)
    p, _ = ppg_signal(64.0, 10.0, hr_bpm=hr, seed=RNG_SEED)
    assert heart_rate(detect_beats(p, 64.0, "ppg")) == pytest.approx(hr, abs=2.0)


def test_hrv_of_known_intervals() -> None:
    ibi = np.tile([0.8, 0.9], 20)
    beats = np.concatenate([[0.0], np.cumsum(ibi)])
    m = hrv(beats)
    assert m["rmssd"] == pytest.approx(100.0)
    assert m["sdnn"] == pytest.approx(np.std(ibi * 1000, ddof=1))
    assert m["pnn50"] == pytest.approx(100.0)


def test_audio_tone_level_pitch_and_silence() -> None:
    (mic,) = feature_sets("mic")
    rate = 16000.0
    t = np.arange(16000) / rate
    tone = 0.5 * np.sign(np.sin(2 * np.pi * 200 * t)) * 0 + 0.5 * np.sin(2 * np.pi * 200 * t)
    out = mic.compute(window(tone, rate, ("mic",), "FS"))
    assert out["rms_dbfs"] == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=0.05)
    assert out["spectral_centroid"] == pytest.approx(200.0, rel=0.1)
    assert out["zcr"] == pytest.approx(400 / 16000, rel=0.01)
    silence = mic.compute(window(np.zeros(16000), rate, ("mic",), "FS"))
    assert silence["speech_ratio"] == 0.0 and math.isnan(silence["f0_median"])


def test_audio_f0_of_harmonic_voice() -> None:
    from connectors.synth import speech_signal

    x, truth = speech_signal(16000.0, 3.0, f0_hz=140.0, seed=RNG_SEED)
    (mic,) = feature_sets("mic")
    out = mic.compute(window(x[16000:32000], 16000.0, ("mic",), "FS"))
    assert out["speech_ratio"] > 0.3
    assert out["f0_median"] == pytest.approx(140.0, rel=0.05)


def test_respiration_eda_temperature_motion() -> None:
    from connectors.synth import resp_signal

    (resp,) = feature_sets("resp")
    r, _ = resp_signal(25.0, 30.0, rate_bpm=15.0, seed=RNG_SEED)
    assert resp.compute(window(r, 25.0, ("resp",), "a.u."))["resp_rate"] == pytest.approx(15.0, abs=0.5)

    (temp,) = feature_sets("temp")
    x = 33.0 + 0.5 * np.arange(40) / 4.0 / 60.0  # +0.5 degC/min
    out = temp.compute(window(x, 4.0, ("t",), "degC"))
    assert out["temp_slope"] == pytest.approx(0.5) and out["temp_mean"] == pytest.approx(x.mean())

    (eda,) = feature_sets("eda")
    t = np.arange(80) / 8.0
    scr = 0.3 * np.clip((t - 3) / 1.5, 0, 1) * np.exp(-np.clip(t - 4.5, 0, None) / 3)
    out = eda.compute(window(2.0 + scr, 8.0, ("eda",), "uS"))
    assert out["scr_count"] == 1.0 and out["scr_amplitude"] == pytest.approx(0.3, abs=0.05)
    assert out["scl"] == pytest.approx(2.0, abs=0.2)

    (acc,) = feature_sets("acc")
    t = np.arange(160) / 32.0
    walk = np.vstack([np.zeros_like(t), np.zeros_like(t), 1.0 + 0.3 * np.sin(2 * np.pi * 1.8 * t)])
    out = acc.compute(window(walk, 32.0, CHANNELS["acc"], "g"))
    assert out["cadence"] == pytest.approx(108.0, abs=6.0) and out["enmo"] > 50
    rest = acc.compute(window(np.vstack([np.zeros_like(t)] * 2 + [np.ones_like(t)]), 32.0, CHANNELS["acc"], "g"))
    assert rest["enmo"] == 0.0 and rest["cadence"] == 0.0
