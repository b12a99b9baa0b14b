"""Audits of what the worker publishes, and mutation tests that show they catch real mistakes.

* the exact audit (:func:`pipeline.privacy.audit.audit_plan_exact`) computes the privacy loss of the
  kernels of every default plan, with the parameters the plan gives them: it must equal the claimed
  epsilon at the ends of the bounds (sharp) and never exceed it;
* the statistical audit of ``PrivacyEngine.privatize`` (:func:`audit_release`) draws 100 000 releases
  per input through the engine with the default configuration at the default epsilon (0.1) and at
  1 and 3, at edge and interior neighbour pairs; a correct engine fails with probability at most
  1 % per audit (99 % confidence); seeds are fixed, so the outcome is reproducible;
* mutations of the code the worker runs (Piecewise ``>`` for ``>=``; every kernel calibrated for
  1.25 x epsilon; the Gaussian's sigma halved, in the plan or in the sampler) must make the audits
  fail at each of those epsilons.
"""

from __future__ import annotations

import dataclasses
import inspect
import textwrap
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from pipeline.features import FEATURE_SETS
from pipeline.privacy import PrivacyConfig
from pipeline.privacy import mechanisms as mech
from pipeline.privacy.audit import audit_gaussian, audit_plan_exact, audit_release, release_plan
from pipeline.privacy.mechanisms import gaussian as gaussian_module
from pipeline.privacy.mechanisms.piecewise import PIECEWISE

pytestmark = [pytest.mark.audit, pytest.mark.filterwarnings("ignore::pipeline.privacy.PrivacyWarning")]
EPSILONS = (0.1, 1.0, 3.0)
N = 100_000
STREAMS = sorted({(s, fs) for s, sets in FEATURE_SETS.items() for fs in sets})


def config(epsilon: float, **kw: Any) -> PrivacyConfig:
    return dataclasses.replace(PrivacyConfig.default(), epsilon=epsilon, **kw)


# ----------------------------------------------------------------------------- mutants


def mutant(obj: Any, method: str, old: str, new: str) -> Any:
    """``obj.method`` recompiled from its source with ``old`` replaced by ``new`` (once)."""
    src = textwrap.dedent(inspect.getsource(getattr(type(obj), method)))
    assert src.count(old) == 1, f"mutation site {old!r} not found once in {method}"
    namespace: dict[str, Any] = {}
    exec(compile(src.replace(old, new), f"<mutant {method}>", "exec"), vars(inspect.getmodule(type(obj))), namespace)
    return types.MethodType(namespace[method], obj)


@pytest.fixture
def piecewise_off_by_one(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(PIECEWISE, "apply", mutant(PIECEWISE, "apply", "np.greater_equal(out, k, out=b)",
                                                   "np.greater(out, k, out=b)"))
    yield


@pytest.fixture
def miscalibrated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every kernel draws its noise for 1.25 x the epsilon the plan states."""
    for name in mech.MECHANISMS:
        impl = mech.get(name)
        original = impl.params

        def params(epsilon: Any, *args: Any, _original: Any = original) -> Any:
            return _original(epsilon * 1.25, *args)

        monkeypatch.setattr(impl, "params", params)
    yield


# ----------------------------------------------------------------------------- exact audit


@pytest.mark.parametrize("eps", EPSILONS)
@pytest.mark.parametrize(("stream", "feature_set"), STREAMS)
def test_every_default_plan_has_exactly_its_claimed_loss(stream: str, feature_set: str, eps: float) -> None:
    _, plan = release_plan(feature_set, stream, config(eps))
    edge = audit_plan_exact(plan, "edge")
    assert edge, f"{feature_set}: no kernel audited exactly"
    for name, (loss, claimed) in edge.items():
        assert loss <= claimed * (1 + 1e-9), (name, loss, claimed)
        assert loss >= claimed * (1 - 1e-9), (name, loss, claimed)  # the ends of the bounds are the worst case
    for name, (loss, claimed) in audit_plan_exact(plan, "interior").items():
        assert loss <= claimed * (1 + 1e-9), (name, loss, claimed)


@pytest.mark.parametrize("eps", EPSILONS)
def test_exact_audit_catches_the_piecewise_off_by_one(eps: float, piecewise_off_by_one: None) -> None:
    _, plan = release_plan("hrv", "ppg", config(eps, mechanisms={"*": "piecewise"}))
    losses = audit_plan_exact(plan, "edge")
    assert all(loss > claimed * 1.01 for loss, claimed in losses.values()), losses


@pytest.mark.parametrize("eps", EPSILONS)
def test_exact_audit_catches_a_1_25x_miscalibration(eps: float, miscalibrated: None) -> None:
    _, plan = release_plan("hr", "ppg", config(eps))
    losses = audit_plan_exact(plan, "edge")
    assert all(loss > claimed * 1.2 for loss, claimed in losses.values()), losses


# ----------------------------------------------------------------------------- the release path


@pytest.mark.parametrize("pair", ["edge", "interior"])
@pytest.mark.parametrize("eps", EPSILONS)
def test_release_path_holds(eps: float, pair: str) -> None:
    res = audit_release("hr", "ppg", eps, N, pair=pair, seed=f"release/{eps}/{pair}".encode())
    assert res.passed, res
    assert res.epsilon_exact is not None and res.epsilon_exact <= eps * (1 + 1e-9)
    if pair == "edge":  # the audit has power: it sees most of the loss
        assert res.epsilon_lower_bound >= 0.5 * eps, res


@pytest.mark.parametrize("eps", EPSILONS)
def test_release_audit_catches_the_piecewise_off_by_one(eps: float, piecewise_off_by_one: None) -> None:
    cfg = config(eps, mechanisms={"*": "piecewise"})
    res = audit_release("hr", "ppg", None, N, seed=f"pw-mutant/{eps}".encode(), config=cfg)
    assert not res.passed, res
    # the exact part catches it: one output the mutant can never give from one end of the bounds.
    # Sampling alone would not at 100 000 draws (that output has probability about 1/(G e^eps))
    assert res.epsilon_exact == float("inf"), res


@pytest.mark.parametrize("eps", EPSILONS)
def test_release_audit_catches_a_1_25x_miscalibration(eps: float, miscalibrated: None) -> None:
    res = audit_release("hr", "ppg", eps, N, seed=f"miscal/{eps}".encode())
    assert not res.passed, res
    assert res.epsilon_exact is not None and res.epsilon_exact > 1.2 * eps


# ----------------------------------------------------------------------------- the Gaussian


@pytest.mark.parametrize("eps", EPSILONS)
def test_gaussian_path_holds_its_epsilon_delta(eps: float) -> None:
    res = audit_gaussian(eps, 1e-6, N, seed=f"gauss/{eps}".encode())
    assert res.passed, res
    # the zCDP conversion leaves some slack, never a factor of two
    assert 0.6 * eps <= res.epsilon_exact <= eps, res


@pytest.mark.parametrize("eps", EPSILONS)
def test_gaussian_audit_catches_a_halved_sigma_in_the_plan(eps: float, monkeypatch: pytest.MonkeyPatch) -> None:
    original = gaussian_module.gaussian_sigma_steps
    monkeypatch.setattr(gaussian_module, "gaussian_sigma_steps", lambda *a: original(*a) / 2.0)
    res = audit_gaussian(eps, 1e-6, N, seed=f"gauss-plan/{eps}".encode())
    assert not res.passed and res.epsilon_exact > 1.4 * eps, res


@pytest.mark.parametrize("eps", EPSILONS)
def test_gaussian_audit_catches_a_sampler_drawing_half_sigma(eps: float) -> None:
    res = audit_gaussian(eps, 1e-6, N, seed=f"gauss-sampler/{eps}".encode(), sigma_scale=0.5)
    assert not res.passed and res.sampler_p_value < 1e-6, res
    assert np.isfinite(res.delta_exact)


def test_cli_audits_the_release_path(capsys: pytest.CaptureFixture[str], tmp_path: Any,
                                     piecewise_off_by_one: None) -> None:
    import json

    from pipeline.cli import main

    assert main(["audit", "--path", "release", "--json", "--samples", "20000"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {"mechanism", "epsilon_claimed", "epsilon_lower_bound", "confidence", "samples", "passed"} <= set(res)
    assert res["path"] == "release" and res["passed"] and res["epsilon_claimed"] == 0.1
    assert abs(res["epsilon_exact"] - 0.1) < 1e-9
    # a configuration whose plan runs the mutated Piecewise kernel fails: exit status 1
    cfg = tmp_path / "privacy.json"
    cfg.write_text(json.dumps({"epsilon": 1.0, "mechanisms": {"*": "piecewise"}}))
    assert main(["audit", "--path", "release", "--json", "--samples", "20000", "--privacy-config", str(cfg)]) == 1
    res = json.loads(capsys.readouterr().out)
    assert res["mechanism"] == "piecewise" and not res["passed"] and res["epsilon_exact"] == float("inf")
