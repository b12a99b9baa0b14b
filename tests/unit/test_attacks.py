"""The membership and linkage attacks: exact likelihoods, the attack works without privacy, and at
epsilon 0.5 a day it stays within the epsilon-DP bound."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import pytest

from pipeline.attacks import attack_summary, attack_trials, auc_ci, likelihood, roc, tpr_at, wilson
from pipeline.privacy import KeyRing, PrivacyConfig
from pipeline.privacy.mechanisms import piecewise_params
from pipeline.privacy.noise import NoiseStream
from pipeline.privacy.vector import ReleasePlan
from pipeline.study import from_mapping


def _study(epsilon_per_day: float):  # type: ignore[no-untyped-def]
    return from_mapping({"budget": {"epsilon_per_day": epsilon_per_day},
                         "sets": {"hr": {"features": ["hr"], "epsilon_per_day": epsilon_per_day, "bounds": {"hr": [40, 180]}}}},
                        f"hr at {epsilon_per_day}")


@pytest.mark.parametrize("epsilon", [0.4, 3.0])
def test_likelihood_matches_the_mechanisms_output_frequencies(epsilon: float) -> None:
    """20,000 releases of hr = 97.3 (Duchi at 0.4, Piecewise at 3): the empirical frequency of the
    commonest output is within 4.5 sd of the likelihood (a false alarm has probability < 1e-5),
    and the likelihood sums to 1 over the output grid."""
    s = _study(epsilon).sets["hr"]
    plan = ReleasePlan("hr", s.specs[:1], PrivacyConfig(epsilon=epsilon, strategy="split", w_event=None))
    n, x = 20_000, 97.3
    streams = [NoiseStream(hashlib.sha256(b"%d" % i).digest()) for i in range(n)]
    out, _ = plan.apply_many(np.full((n, 1), x), streams)
    noise = plan.describe(["hr"])["hr"]
    values, counts = np.unique(out[:, 0], return_counts=True)
    top = values[np.argmax(counts)]
    p = float(likelihood(noise, float(top), np.array([x]))[0])
    assert abs(counts.max() / n - p) <= 4.5 * math.sqrt(p * (1 - p) / n), (counts.max() / n, p)
    outputs = 2 if noise["mechanism"] == "duchi" else 1024 + int(piecewise_params(epsilon, 1024)[0])
    grid = plan.offset[0] + plan.out_step[0] * np.arange(outputs)
    total = sum(float(likelihood(noise, float(v), np.array([x]))[0]) for v in grid)
    assert total == pytest.approx(1.0, abs=1e-9)


def test_presence_bit_likelihood() -> None:
    noise = {"mechanism": "rr", "epsilon": 1.0}
    p = math.e / (1 + math.e)
    assert likelihood(noise, 1.0, np.array([1.0, 0.0])) == pytest.approx([p, 1 - p])


def test_roc_and_intervals() -> None:
    fpr, tpr, auc = roc(np.array([3.0, 2.0, 2.0]), np.array([2.0, 1.0]))
    assert auc == pytest.approx((1 + 1 + 0.5 + 1 + 0.5 + 1) / 6)
    assert tpr_at(fpr, tpr, 0.0) == pytest.approx(1 / 3) and tpr_at(fpr, tpr, 0.5) == 1.0
    lo, hi = auc_ci(0.8, 100, 100)
    assert lo < 0.8 < hi and hi - lo < 0.2
    assert wilson(0, 50)[0] == 0.0 and 0.0 < wilson(0, 50)[1] < 0.1


def _uniform_heart_rate_trials(epsilon: float) -> Any:
    """300 attack trials on cohorts of 20 devices whose heart rate is uniform on 50-150 bpm."""
    rng = np.random.default_rng(11)
    keys = KeyRing({"n1": rng.bytes(32)}, {"p1": rng.bytes(32)}, "n1", "p1")

    def draw(name: str, n: int) -> np.ndarray:
        return rng.uniform(50.0, 150.0, size=(n, 1))

    population = {"hr": rng.uniform(50.0, 150.0, 400), "hr.present": np.ones(400)}
    return attack_trials(_study(epsilon), keys, draw, 20, 300, population, rng)


def test_the_attack_works_without_privacy_and_respects_the_bound_at_half_an_epsilon() -> None:
    """300 trials, cohorts of 20: on the raw values the target is found (TPR at 10 % FPR >= 0.9);
    at 0.5 epsilon a day the TPR's 95 % Wilson interval reaches below e^0.5 x 10 % = 0.165."""
    res = _uniform_heart_rate_trials(0.5)
    raw = attack_summary(res, math.inf, 20, prefix="raw_")
    private = attack_summary(res, 0.5, 20)
    assert raw["tpr_at_10pct"] >= 0.9 and raw["top1"] >= 0.9, raw
    assert private["tpr_at_10pct_ci95"][0] <= private["bound_at_10pct"], private
    assert private["top1"] <= 0.2, private  # bound e^0.5 / (e^0.5 + 19) = 0.08; chance 0.05


def test_the_attack_has_power_when_the_noise_is_weak() -> None:
    """At 8 epsilon a day (Piecewise) the same attacker separates the worlds: AUC about 0.69 on
    300 trials (Hanley-McNeil sd about 0.02), asserted above 0.6."""
    res = _uniform_heart_rate_trials(8.0)
    assert attack_summary(res, 8.0, 20)["auc"] > 0.6
