"""The optimized hot path: bit-identical to the reference computation, array input, w-event index."""

from __future__ import annotations

import hashlib
import math
import warnings

import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st
from privacy_helpers import SPECS, fixed_keys, pinned, request

from pipeline.errors import PrivacyError
from pipeline.features.spec import FeatureSpec
from pipeline.privacy import PrivacyConfig, PrivacyEngine, PrivateRelease, ReleaseRequest, WEventRule
from pipeline.privacy.accountant import Accountant
from pipeline.privacy.noise import NoiseStream, discrete_gaussian, to_uniform
from pipeline.privacy.vector import ReleasePlan, _smallest

SEC = 1_000_000_000
EEG = tuple(FeatureSpec(f"eeg.{c}.{b}", "1", 0.0, 1.0) for c in range(64) for b in range(5))
WIDE = tuple(FeatureSpec(f"y{i}", "u", -3.0, 11.5) for i in range(40)) + SPECS
CASES = {
    "piecewise": ({"epsilon": 8.0, "strategy": "split", "w_event": None, "mechanisms": {"*": "piecewise"}}, EEG),
    "laplace": ({"epsilon": 8.0, "strategy": "split", "w_event": None, "mechanisms": {"*": "laplace"}}, EEG),
    "default": ({}, EEG),
    "piecewise_g1000": (
        {"epsilon": 5.0, "grid_steps": 1000, "strategy": "split", "w_event": None, "mechanisms": {"y*": "piecewise"}},
        WIDE[:40],
    ),
    "duchi_wide": ({"epsilon": 1.0, "strategy": "split", "w_event": None, "mechanisms": {"y*": "duchi"}}, WIDE[:40]),
    "mixed_split": ({"epsilon": 2.0, "strategy": "split", "w_event": None}, WIDE),
    "mixed_sample": ({"epsilon": 3.0, "strategy": "sample", "sample_k": 3, "w_event": None}, WIDE),
    "gaussian": (
        {"epsilon": 2.0, "delta": 1e-6, "delta_cap": 1e-4, "strategy": "split", "w_event": None, "mechanisms": {"y*": "gaussian"}},
        WIDE,
    ),
}
#: Releases under the noise layout biopriv-noise/2 (identity bound to lineage and content; git
#: 422604a kept the bits of the fused kernels of before): the noise derivation and every released
#: bit must not change unless the layout version does.
GOLDEN = {
    "piecewise": "1932ca8dd0a4ee18adfac1e1df7c48cf",
    "laplace": "a89f7a60d55ca1b4361f54f5c8fda667",
    "default": "d8766b5175681f27fddda063ab143b5c",
    "piecewise_g1000": "27a7f5ef241a766fe013bcf2ad961efc",
    "duchi_wide": "4ab5fb48311effab61b186316c2a4799",
    "mixed_split": "cf2638a3c07bb192c632af9d1b998985",
    "mixed_sample": "259c0135e386c9d3b540eece7f67714e",
    "gaussian": "1ebf666fb87ca3c366bcbdc95a7eab8b",
}


def _config(kw: dict[str, object]) -> PrivacyConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PrivacyConfig.default() if not kw else PrivacyConfig(**kw)  # type: ignore[arg-type]


def _values(specs: tuple[FeatureSpec, ...], w: int) -> dict[str, float]:
    """Values inside and outside the bounds, some NaN."""
    rng = np.random.default_rng(w)
    out = {}
    for i, s in enumerate(specs):
        if s.kind == "numeric":
            v = float(rng.uniform(s.lower - 0.2 * s.width, s.upper + 0.2 * s.width))
            out[s.name] = math.nan if i % 17 == 3 else v
        else:
            out[s.name] = float(rng.integers(0, len(s.categories) if s.kind == "categorical" else 2))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_releases_are_bit_identical_to_before_and_for_array_input(case: str) -> None:
    kw, specs = CASES[case]
    by_map = pinned(PrivacyEngine(_config(kw), fixed_keys()))
    by_arr = pinned(PrivacyEngine(_config(kw), fixed_keys()))
    h = hashlib.sha256()
    for w in range(40):
        vals = _values(specs, w)
        r = by_map.privatize(request(w, vals, specs=specs))
        a = by_arr.privatize(request(w, np.array([vals[s.name] for s in specs]), specs=specs))  # type: ignore[arg-type]
        assert isinstance(r, PrivateRelease) and isinstance(a, PrivateRelease)
        assert a == r and np.array_equal(a.values.array.view(np.uint64), r.values.array.view(np.uint64))
        h.update("\0".join(r.values.names).encode())
        h.update(r.values.array.tobytes())
    assert h.hexdigest()[:32] == GOLDEN[case]
    assert by_arr.ledger_state() == by_map.ledger_state()


def _reference_apply(plan: ReleasePlan, x: np.ndarray, stream: NoiseStream) -> tuple[np.ndarray, np.ndarray | None]:
    """The plain (unfused) computation: clip, randomized rounding, kernels, grid; x in plan order."""
    d = plan.d
    x = x.copy()
    nan = np.isnan(x)
    x[nan] = plan.default[nan]
    np.clip(x, plan.lo, plan.hi, out=x)
    z = (x - plan.lo) * plan.inv_step + plan.shift
    k = np.floor(z)
    raw = stream.raw(plan._rows * d)
    u = to_uniform(raw).reshape(plan._rows, d)
    k += (u[0] < z - k) * plan.rand
    j = np.empty(d)
    g = plan.grid_steps
    for impl, sl, p in plan.groups:
        m = impl.name
        if m == "laplace":
            j[sl] = ref.laplace_kernel(k[sl], u[1, sl], u[2, sl], p[0])
        elif m == "piecewise":
            j[sl] = ref.piecewise_kernel(k[sl], u[1, sl], u[2, sl], g, p[0], p[2])
        elif m == "duchi":
            j[sl] = ref.duchi_kernel(k[sl], u[1, sl], g, p[2])
        elif m == "gaussian":
            j[sl] = k[sl] + discrete_gaussian(p[0], u[1:4, sl], stream)
        else:
            j[sl] = ref.grr_kernel(k[sl], u[1, sl], u[2, sl], p[0], p[3])
    out = plan.offset + j * plan.out_step
    if plan._sample_row is not None:
        r = plan._sample_row
        row = raw[r * d : (r + 1) * d]
        sel = np.sort(np.argpartition(row, plan.k - 1)[: plan.k]) if plan.k < d else np.arange(d)
        return out, sel
    return out, None


@settings(max_examples=60, deadline=None)
@given(
    mechanism=st.sampled_from(["laplace", "piecewise", "duchi"]),
    eps=st.floats(0.05, 30.0),
    grid=st.sampled_from([2, 6, 64, 1000, 1024, 4096]),
    bounds=st.sampled_from([(0.0, 1.0), (-3.0, 11.5), (2.0, 9.0), (-1e6, 1e6)]),
    strategy=st.sampled_from(["split", "sample"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_fused_kernels_equal_the_reference_computation(
    mechanism: str, eps: float, grid: int, bounds: tuple[float, float], strategy: str, seed: int
) -> None:
    lo, hi = bounds
    specs = tuple(FeatureSpec(f"f{i}", "u", lo, hi) for i in range(37))
    cfg = _config(
        {"epsilon": eps, "grid_steps": grid, "strategy": strategy, "w_event": None, "mechanisms": {"*": mechanism}}
    )
    plan = ReleasePlan("fs", specs, cfg)
    rng = np.random.default_rng(seed)
    x = rng.uniform(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo), plan.d)
    x[rng.random(plan.d) < 0.1] = math.nan
    x[rng.random(plan.d) < 0.1] = lo
    x[rng.random(plan.d) < 0.1] = hi
    x[rng.random(plan.d) < 0.05] = -0.0
    key = seed.to_bytes(8, "little") * 4
    out, sel = plan.apply(dict(zip(plan.names, x.tolist(), strict=True)), NoiseStream(key))
    ref, ref_sel = _reference_apply(plan, x, NoiseStream(key))
    assert np.array_equal(out.view(np.uint64), ref.view(np.uint64))
    assert (sel is None and ref_sel is None) or np.array_equal(sel, ref_sel)  # type: ignore[arg-type]


def test_smallest_matches_argpartition_including_ties() -> None:
    rng = np.random.default_rng(3)
    for _ in range(300):
        row = rng.integers(0, 6, rng.integers(1, 12)).astype("<u8")
        for k in range(1, row.size + 1):
            got = _smallest(row, k)
            ref = np.sort(np.argpartition(row, k - 1)[:k]) if k < row.size else np.arange(row.size)
            assert np.array_equal(got, ref)


def test_array_values_must_have_one_value_per_spec(engine: PrivacyEngine) -> None:
    with pytest.raises(PrivacyError, match="shape \\(4,\\)"):
        engine.privatize(request(0, np.zeros(3)))  # type: ignore[arg-type]
    with pytest.raises(PrivacyError, match="shape \\(4,\\)"):
        engine.privatize(request(0, np.zeros((4, 1))))  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.integers(0, 60), st.integers(0, 8), st.sampled_from([0.1, 0.25, 0.5])), min_size=1, max_size=60
    ),
    horizon=st.integers(0, 6),
    retention=st.integers(1, 20),
    restore_at=st.integers(0, 60),
)
def test_incremental_w_event_index_equals_the_direct_scan(
    ops: list[tuple[int, int, float]], horizon: int, retention: int, restore_at: int
) -> None:
    """Out-of-order spans, pruning (tiny entry arrays) and a restore: the index stays exact."""
    cfg = PrivacyConfig(epsilon=0.5, w_event=WEventRule(9.0, float(horizon) or 0.5), retention_s=float(retention))
    acc = Accountant(cfg)
    for i, (start_s, length, eps) in enumerate(ops):
        start, end = start_s * SEC // 2, start_s * SEC // 2 + length * SEC // 2
        if i == restore_at:
            acc = Accountant(cfg, acc.state())
        dev = acc._devices.get("d")
        for a, b in ((start, end), (start, start), (end - SEC, end + SEC)):
            if a <= b:
                assert acc._w_sum(dev, a, b, 7) == acc._w_sum_scan(dev, a, b, 7)
        acc.charge("d", "s", i, start, end, eps, 0.0, "n1", "x")
        dev = acc._devices["d"]
        if i % 7 == 6:
            acc._prune(dev)  # as charge() does when the entry arrays are full
        assert sorted(zip(dev.windex.ends, dev.windex.starts, dev.windex.costs, strict=True)) == sorted(
            zip(dev.ends[: dev.n].tolist(), dev.starts[: dev.n].tolist(), dev.costs[: dev.n].tolist(), strict=True)
        )


@pytest.mark.parametrize("grid", [6, 1000, 1024])
@pytest.mark.parametrize("mechanism", ["laplace", "piecewise", "duchi"])
def test_fused_kernels_at_extreme_uniforms(mechanism: str, grid: int) -> None:
    """Uniforms at 2^-53 and 1 - 2^-53, where floor(u G) reaches G unless clamped (G not a power of 2)."""
    specs = tuple(FeatureSpec(f"f{i}", "u", -1.0, 2.0) for i in range(8))
    plan = ReleasePlan(
        "fs",
        specs,
        _config(
            {"epsilon": 3.0, "grid_steps": grid, "strategy": "split", "w_event": None, "mechanisms": {"*": mechanism}}
        ),
    )
    impl, sl, p = plan.groups[0]
    m = impl.name
    edge = np.array([2.0**-53, 1.0 - 2.0**-53, 0.5, 1.0 - 2.0**-53, 2.0**-53, 0.25, 1.0 - 2.0**-52, 0.75])
    u = np.stack([edge, edge[::-1], edge, np.roll(edge, 3)])
    k = np.array([0.0, grid, grid / 2, 1.0, grid - 1.0, 0.0, grid, 2.0])
    if m == "laplace":
        j = ref.laplace_kernel(k, u[1], u[2], p[0])
    elif m == "piecewise":
        j = ref.piecewise_kernel(k, u[1], u[2], grid, p[0], p[2])
    else:
        j = ref.duchi_kernel(k, u[1], grid, p[2])
    want = plan.offset + j * plan.out_step
    got = impl.apply(k.copy(), u, np.empty(8), np.empty(8), np.empty(8, dtype=bool), p, None)
    assert np.array_equal(got.view(np.uint64), want.view(np.uint64))


def test_largest_uniform_times_an_integer_stays_below_it() -> None:
    """The fact that lets the fused Piecewise kernel drop its clamps: floor((1 - 2^-53) c) <= c - 1."""
    rng = np.random.default_rng(0)
    c = np.concatenate([np.arange(1.0, 1 << 16), rng.integers(1, 2**40, 100_000).astype(float), 2.0 ** np.arange(60)])
    assert np.all(np.floor((1.0 - 2.0**-53) * c) <= c - 1.0)


@pytest.mark.parametrize("case", sorted(c for c in CASES if c != "gaussian"))
def test_apply_many_is_bit_identical_to_apply_row_by_row(case: str) -> None:
    kw, specs = CASES[case]
    plan = ReleasePlan("fs", specs, _config(kw))
    rows = np.array([[_values(specs, w)[s.name] for s in specs] for w in range(30)])
    keys = [hashlib.sha256(b"k%d" % w).digest() for w in range(30)]
    out, sel = plan.apply_many(rows, [NoiseStream(k) for k in keys])
    for w in range(30):
        one, one_sel = plan.apply(rows[w], NoiseStream(keys[w]))
        assert np.array_equal(out[w].view(np.uint64), one.view(np.uint64))
        assert (sel is None and one_sel is None) or (sel is not None and np.array_equal(sel[w], one_sel))


def test_apply_many_refuses_the_gaussian_mechanism_and_wrong_shapes() -> None:
    kw, specs = CASES["gaussian"]
    plan = ReleasePlan("fs", specs, _config(kw))
    with pytest.raises(PrivacyError, match="gaussian"):
        plan.apply_many(np.zeros((1, plan.d)), [NoiseStream(bytes(32))])
    with pytest.raises(PrivacyError, match="shape"):
        ReleasePlan("fs", SPECS, _config({})).apply_many(np.zeros((2, 1)), [NoiseStream(bytes(32))] * 2)


def test_simulated_records_equal_the_engines_published_records_byte_for_byte() -> None:
    """pipeline.evaluation derives each device's noise identity as the engine does for its first report."""
    import json

    from pipeline.evaluation import DAY0_NS, Simulator, report_values
    from pipeline.releases import release_record
    from pipeline.study import Study

    study = Study.default()
    keys = fixed_keys()
    sim = Simulator(study, keys)
    rng = np.random.default_rng(3)
    for name in ("hr", "eeg"):
        s = study.sets[name]
        truth = rng.uniform(-0.2, 1.2, size=(25, len(s.features)))
        truth = np.array([[f.spec.lower + t * f.spec.width for f, t in zip(s.features, row, strict=True)] for row in truth])
        truth[rng.random(truth.shape) < 0.3] = np.nan
        values = report_values(s, truth)
        devices = [f"dev-{i}" for i in range(25)]
        step = s.period_s * SEC
        periods = (DAY0_NS // step + rng.integers(0, s.periods_per_day, size=25)).tolist()
        lineages = [rng.bytes(16).hex() for _ in devices]
        docs = sim.records(name, values, devices, periods, lineages)
        engine = PrivacyEngine(study.privacy_config(), keys)
        for i, dev in enumerate(devices):
            engine.set_header(dev, {"lineage": lineages[i], "keys": {}})
            req = ReleaseRequest(dev, name, name, periods[i], float(s.period_s), float(s.period_s), periods[i] * step,
                                 (periods[i] + 1) * step, values[i], s.specs, b"sim", s.epsilon_per_report)
            r = engine.privatize(req)
            assert isinstance(r, PrivateRelease)

            class _W:
                last_send_ns = last_seq = 0

            rec = release_record(r, req, r.device, _W(), 0, s.design())  # type: ignore[arg-type]
            assert json.dumps(docs[i], separators=(",", ":"), allow_nan=False).encode() == rec.value
