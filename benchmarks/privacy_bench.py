"""Privacy engine benchmark: cost of a 320-feature release, error of each mechanism vs epsilon.

Run from the project root::

    .venv/bin/python benchmarks/privacy_bench.py [--quick]

Writes ``benchmarks/results/privacy.json``, ``privacy.md`` and ``privacy_error.png``.

* Timing: 64 EEG channels x 5 relative band powers = 320 features, through the real path
  (``ReleasePlan.apply`` with a fresh per-release ChaCha20 keystream, HMAC key derivation
  included), and through ``PrivacyEngine.privatize`` (adds replay check, w-event accounting,
  ledger update, release object); values handed as a dict of 320 names and as a float array in
  spec order. Single-threaded BLAS (``OMP_NUM_THREADS=1``, ``OPENBLAS_NUM_THREADS=1``, set here
  unless already set); every path is timed in ``--rounds`` interleaved rounds and the best
  round's median is reported (the machine is shared: the load average is recorded).
* Error: relative band powers of the real 64-channel EEG in ``../shared/data`` (2-s windows every
  0.5 s, bounds [0, 1]) and heart rate from the MIT-BIH record 100 beat annotations (10-s windows,
  bounds [30, 220] bpm). RMSE of one release, in units of the bound width, per mechanism and
  per-feature epsilon; and the population-mean error of ``split`` vs ``sample`` for the whole
  320-vector.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_model  # noqa: E402
from pipeline.features.spec import FeatureSpec  # noqa: E402
from pipeline.privacy import KeyRing, PrivacyConfig, PrivacyEngine, ReleaseRequest, Suppression, WEventRule  # noqa: E402
from pipeline.privacy import mechanisms as mech  # noqa: E402
from pipeline.privacy.noise import NoiseStream, release_key  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
BANDS = ((1, 4), (4, 8), (8, 13), (13, 30), (30, 45))
EPSILONS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
NUMERIC = ("laplace", "gaussian", "piecewise", "duchi")
G = 1024


def eeg_band_powers() -> np.ndarray:
    """(windows, 320) relative band powers of the real 64-channel EEG (or synthetic if absent)."""
    path = DATA / "eeg" / "bci2000_eegmmi_64ch.edf"
    if not path.exists():
        print(f"warning: {path} not found, using synthetic band powers", file=sys.stderr)
        return np.random.default_rng(0).dirichlet(np.ones(5), size=(240, 64)).reshape(240, 320)
    import mne
    from scipy.signal import welch

    mne.set_log_level("ERROR")
    raw = mne.io.read_raw_edf(path, preload=True)
    x = raw.get_data()[:64]
    fs = raw.info["sfreq"]
    win, hop = int(2 * fs), int(0.5 * fs)
    out = []
    for start in range(0, x.shape[1] - win + 1, hop):
        f, p = welch(x[:, start : start + win], fs=fs, nperseg=win)
        bp = np.stack([p[:, (f >= lo) & (f < hi)].sum(axis=1) for lo, hi in BANDS], axis=1)
        out.append((bp / bp.sum(axis=1, keepdims=True)).reshape(-1))
    return np.array(out)


def heart_rates() -> np.ndarray:
    """Heart rate (bpm) per 10-s window from MIT-BIH record 100 beat annotations."""
    path = DATA / "ecg" / "100"
    if not (DATA / "ecg" / "100.atr").exists():
        return np.random.default_rng(1).normal(75, 8, 180)
    import wfdb

    ann = wfdb.rdann(str(path), "atr")
    t = ann.sample / ann.fs
    edges = np.arange(0, t[-1], 10.0)
    counts = np.histogram(t, bins=edges)[0]
    return counts * 6.0


def privatize_array(m: str, eps: float, x: np.ndarray, lower: float, upper: float, stream: NoiseStream) -> np.ndarray:
    """The engine's steps for one mechanism on an array: clip, randomized rounding, kernel, grid."""
    n = x.size
    z = (np.clip(x, lower, upper) - lower) * (G / (upper - lower))
    u = stream.uniform(4 * n).reshape(4, n)
    k = np.floor(z)
    k += u[0] < z - k
    impl = mech.get(m)
    lo_a, hi_a = np.full(n, float(lower)), np.full(n, float(upper))
    if m == "gaussian":  # one feature at epsilon eps (its own joint calibration)
        p = tuple(a[:1].repeat(n) for a in impl.params(np.full(1, eps), G, lo_a[:1], hi_a[:1], np.full(1, 2.0), 1e-6))
    else:
        p = impl.params(np.full(n, eps), G, lo_a, hi_a, np.full(n, 2.0), 1e-6)
    return impl.apply(k, u, np.empty(n), np.empty(n), np.empty(n, dtype=bool), p, stream)


def error_table(values: dict[str, tuple[np.ndarray, float, float]], reps: int) -> dict[str, dict[str, list[float]]]:
    table: dict[str, dict[str, list[float]]] = {}
    stream = NoiseStream(os.urandom(32))
    for name, (x, lo, hi) in values.items():
        xs = np.tile(x.reshape(-1), reps)
        table[name] = {}
        for m in NUMERIC:
            table[name][m] = [float(np.sqrt(np.mean((privatize_array(m, e, xs, lo, hi, stream) - xs) ** 2)) / (hi - lo)) for e in EPSILONS]
    return table


def strategy_comparison(bp: np.ndarray, epsilons: tuple[float, ...], n_devices: int) -> list[dict[str, float]]:
    """Population-mean RMSE (per feature, in width units) of split vs sample on the 320-vector."""
    specs = tuple(FeatureSpec(f"bp{i}", "1", 0.0, 1.0) for i in range(bp.shape[1]))
    rows_idx = np.arange(n_devices) % bp.shape[0]
    truth = bp[rows_idx].mean(axis=0)
    out = []
    for eps in epsilons:
        row: dict[str, float] = {"epsilon": eps}
        for strategy in ("split", "sample"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cfg = PrivacyConfig(epsilon=eps, strategy=strategy, w_event=None)
            plan = PrivacyEngine(cfg, KeyRing.generate()).plan("bp", specs)
            sums, counts = np.zeros(len(specs)), np.zeros(len(specs))
            order = np.array([int(n[2:]) for n in plan.names])
            for dvc, r in enumerate(rows_idx):
                vals = dict(zip(plan.names, bp[r][order].tolist(), strict=True))
                y, sel = plan.apply(vals, NoiseStream(os.urandom(32)))
                idx = order if sel is None else order[sel]
                yy = y if sel is None else y[sel]
                np.add.at(sums, idx, yy)
                np.add.at(counts, idx, 1)
                del dvc
            est = np.where(counts > 0, sums / np.maximum(counts, 1), 0.5)
            row[strategy] = float(np.sqrt(np.mean((est - truth) ** 2)))
            if strategy == "sample":
                row["k"] = plan.k
            row[f"{strategy}_mechanism"] = plan.mechanism  # type: ignore[assignment]
        out.append(row)
    return out


def timing(bp: np.ndarray, n: int, rounds: int) -> dict[str, dict[str, float]]:
    """Best round (lowest median) of ``rounds`` interleaved rounds of every timed path."""
    best: dict[str, dict[str, float]] = {}
    for _ in range(rounds):
        for label, s in timing_round(bp, n).items():
            s["rounds"] = rounds
            if label not in best or s["median_us"] < best[label]["median_us"]:
                best[label] = s
    return best


def timing_round(bp: np.ndarray, n: int) -> dict[str, dict[str, float]]:
    specs = tuple(FeatureSpec(f"eeg.{c}.{b}", "1", 0.0, 1.0) for c in range(64) for b in range(5))
    vals = [dict(zip([s.name for s in specs], row.tolist(), strict=True)) for row in bp]
    arrays = [np.ascontiguousarray(row, dtype=np.float64) for row in bp]  # spec order
    res: dict[str, dict[str, float]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        configs = {
            "split eps=8 (piecewise, every feature)": PrivacyConfig(epsilon=8.0, strategy="split", w_event=None, mechanisms={"*": "piecewise"}),
            "split eps=8 (laplace, every feature)": PrivacyConfig(epsilon=8.0, strategy="split", w_event=None, mechanisms={"*": "laplace"}),
            "default config (auto -> sample k=1, duchi)": PrivacyConfig.default(),
        }
    dkey = os.urandom(32)
    for label, cfg in configs.items():
        eng = PrivacyEngine(cfg, KeyRing.generate())
        plan = eng.plan("eeg", specs)
        ts = np.empty(n)
        for i in range(n):
            v = vals[i % len(vals)]
            t0 = time.perf_counter_ns()
            ident = b"dev\x00eeg\x00bands\x00" + str(i).encode()
            out, sel = plan.apply(v, NoiseStream(release_key(dkey, ident)))
            plan.values(out, sel)
            ts[i] = time.perf_counter_ns() - t0
        res[f"apply: {label}"] = _stats(ts)
        ts = np.empty(n)
        for i in range(n):
            a = arrays[i % len(arrays)]
            t0 = time.perf_counter_ns()
            ident = b"dev\x00eeg\x00bands\x00" + str(i).encode()
            out, sel = plan.apply(a, NoiseStream(release_key(dkey, ident)))
            plan.values(out, sel)
            ts[i] = time.perf_counter_ns() - t0
        res[f"apply, array input: {label}"] = _stats(ts)
        hop = 500_000_000
        for device, inputs, kind in (("dev-1", vals, "privatize"), ("dev-a", arrays, "privatize, array input")):
            ts = np.empty(n)
            for i in range(n):
                req = ReleaseRequest(device, "eeg", "bands", i, 0.5, 2.0, i * hop, i * hop + 4 * hop, inputs[i % len(inputs)], specs)
                t0 = time.perf_counter_ns()
                out_r = eng.privatize(req)
                ts[i] = time.perf_counter_ns() - t0
            assert not isinstance(out_r, Suppression), out_r
            res[f"{kind}: {label}"] = _stats(ts)
    # + materializing the dict of 320 values
    eng = PrivacyEngine(configs["split eps=8 (piecewise, every feature)"], KeyRing.generate())
    ts = np.empty(n)
    for i in range(n):
        req = ReleaseRequest("dev-2", "eeg", "bands", i, 0.5, 2.0, i * 10**9, i * 10**9 + 2 * 10**9, vals[i % len(vals)], specs)
        t0 = time.perf_counter_ns()
        eng.privatize(req).values.to_dict()  # type: ignore[union-attr]
        ts[i] = time.perf_counter_ns() - t0
    res["privatize + dict of 320 values: split eps=8 piecewise"] = _stats(ts)
    _ = WEventRule
    return res


def _stats(ts: np.ndarray) -> dict[str, float]:
    us = ts[len(ts) // 10 :] / 1000.0  # drop warm-up
    return {"median_us": float(np.median(us)), "p99_us": float(np.percentile(us, 99)), "mean_us": float(us.mean()), "n": int(us.size)}


def machine() -> dict[str, str]:
    return {"cpu": cpu_model(), "nproc": str(os.cpu_count()), "python": platform.python_version(), "numpy": np.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds; the best round is reported")
    args = ap.parse_args()
    bp = eeg_band_powers()
    hr = heart_rates()
    n_time = 3000 if args.quick else 20000
    load_before = os.getloadavg()
    t = timing(bp, n_time, max(1, args.rounds))
    load_after = os.getloadavg()
    errs = error_table({"eeg_rel_band_power": (bp, 0.0, 1.0), "heart_rate": (hr, 30.0, 220.0)}, 1 if args.quick else 4)
    strat = strategy_comparison(bp, (1.0, 8.0, 64.0) if not args.quick else (8.0,), 2000 if args.quick else 8000)
    mach = {**machine(), "loadavg_1_5_15_before": list(load_before), "loadavg_1_5_15_after": list(load_after)}
    result = {"machine": mach, "timing": t, "error_vs_epsilon": {"epsilons": EPSILONS, **errs}, "strategy": strat}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "privacy.json").write_text(json.dumps(result, indent=2))
    write_md(result)
    plot(errs)
    print((RESULTS / "privacy.md").read_text())


def write_md(r: dict) -> None:
    m = r["machine"]
    lines = [
        "# Privacy engine benchmark",
        "",
        f"Machine: {m['cpu']}, nproc {m['nproc']}, Python {m['python']}, numpy {m['numpy']}. "
        "Command: `.venv/bin/python benchmarks/privacy_bench.py` (sets `OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1`).",
        "",
        "## Cost of one 320-feature release (64 EEG channels x 5 band powers)",
        "",
        "`apply` = clip, randomized rounding, per-release HMAC key + ChaCha20 keystream, noise, grid "
        "mapping, values view. `privatize` adds the replay check, w-event/period/lifetime "
        "accounting, ledger update and the release object. *array input*: values handed as a "
        "float64 array in spec order (`ReleaseRequest.values`); otherwise a dict of 320 names.",
        "",
        f"Best of {next(iter(r['timing'].values())).get('rounds', 1)} interleaved rounds (lowest median); "
        f"load average (1/5/15 min) {_load(m.get('loadavg_1_5_15_before'))} before, "
        f"{_load(m.get('loadavg_1_5_15_after'))} after, on {m['nproc']} cores. Target: at most 30 us.",
        "",
        "| path | median (us) | p99 (us) | n | <= 30 us |",
        "|---|---:|---:|---:|:-:|",
    ]
    for label, s in r["timing"].items():
        ok = "yes" if s["median_us"] <= 30.0 else "no"
        lines.append(f"| {label} | {s['median_us']:.1f} | {s['p99_us']:.1f} | {s['n']} | {ok} |")
    eps = r["error_vs_epsilon"]["epsilons"]
    for name in ("eeg_rel_band_power", "heart_rate"):
        lines += ["", f"## RMSE of one release / bound width: {name}", "", "| mechanism | " + " | ".join(f"eps={e:g}" for e in eps) + " |", "|---|" + "---:|" * len(eps)]
        for mname, row in r["error_vs_epsilon"][name].items():
            lines.append(f"| {mname} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    lines += [
        "",
        "Gaussian: delta = 1e-6 per release. Lowest error per column is what automatic selection "
        "picks among laplace/piecewise/duchi (Gaussian is opt-in: it needs delta).",
        "",
        "## split vs sample (population mean of 320 features, RMSE in width units)",
        "",
        "| epsilon per release | split | sample | k | split mechanism | sample mechanism |",
        "|---:|---:|---:|---:|---|---|",
    ]
    for s in r["strategy"]:
        lines.append(f"| {s['epsilon']:g} | {s['split']:.4f} | {s['sample']:.4f} | {s['k']} | {s['split_mechanism']} | {s['sample_mechanism']} |")
    meets = [label for label, s in r["timing"].items() if s["median_us"] <= 30.0]
    lines += [
        "",
        "## Notes",
        "",
        "* Target: at most 30 us to privatize a 320-feature release including noise generation. Met (median) by: "
        + ("; ".join(f"`{x}`" for x in meets) if meets else "none of the paths")
        + ". The full `privatize` is not at 30 us on this machine.",
        "* Fixed cost per release in `apply`: HMAC-SHA256 release key (~1.7 us; `privatize` copies a keyed state per "
        "device key instead, ~1.2 us), ChaCha20 "
        "context (~3.3 us, OpenSSL), 7.7 KB of keystream written into the word buffer (~1.5 us), words -> uniforms "
        "in place (~2 us). A dict of 320 values costs ~6.5 us to convert (order check + `np.fromiter`); an array in "
        "spec order ~0.5 us. The rest is ~20-25 in-place numpy calls of 0.3-0.6 us each (fused kernel of a "
        "single-mechanism plan, no temporaries, identity steps skipped).",
        "* `privatize` adds ~12 us of bookkeeping with no w-event rule (release id, replay lookup, blake2b ledger "
        "digest of the 2.5 KB output ~4 us, ledger update, frozen release object); with the default config also "
        "the incremental w-event check and update (bisections over the device's entries sorted by end) and the "
        "sampled view.",
        "* Releases are bit-identical to those of the unfused implementation for the same key and release "
        "identity (`tests/unit/privacy/test_fast_path.py` pins golden digests and compares with the reference "
        "computation).",
        "* Medians are of a shared 2-core VM (see the load average above); p99 is dominated by scheduling.",
        "",
    ]
    (RESULTS / "privacy.md").write_text("\n".join(lines))


def _load(v: list[float] | None) -> str:
    return "n/a" if not v else "/".join(f"{x:.2f}" for x in v)


def plot(errs: dict[str, dict[str, list[float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(errs), figsize=(11, 4), sharey=True)
    for ax, (name, rows) in zip(np.atleast_1d(axes), errs.items(), strict=True):
        for m, row in rows.items():
            ax.loglog(EPSILONS, row, marker="o", label=m)
        ax.set_title(name)
        ax.set_xlabel("epsilon per feature")
        ax.grid(True, which="both", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("RMSE of one release / bound width")
    np.atleast_1d(axes)[0].legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "privacy_error.png", dpi=120)


if __name__ == "__main__":
    main()
