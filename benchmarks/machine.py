"""What every benchmark report states about the machine it ran on."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (``platform.processor()`` or "unknown" elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages, rounded to 0.01."""
    return [round(x, 2) for x in os.getloadavg()]


def calibration(repeat: int = 7, batch_s: float = 0.02) -> dict[str, float]:
    """A fixed tiny Python and numpy timing, so that figures from different hosts can be compared.

    ``python_us``: ``sum(range(1000))``; ``numpy_us``: ``numpy.fft.rfft`` of 4096 float64 samples.
    Each is the best of ``repeat`` batches of about ``batch_s`` seconds, timed by the thread's CPU
    time (time the thread was preempted on a shared host does not count; a slower or busier CPU
    still shows). A core figure divided by the ratio of two hosts' calibrations estimates the other
    host's figure (the core is mostly interpreter work; the numpy figure bounds the array part).
    """
    import time

    import numpy as np

    x = np.random.default_rng(0).standard_normal(4096)

    def best(fn: object, n: int) -> float:
        assert callable(fn)
        out = float("inf")
        for _ in range(repeat):
            t0 = time.thread_time_ns()
            for _ in range(n):
                fn()
            out = min(out, (time.thread_time_ns() - t0) / n / 1e3)
        return out

    def per_call(fn: object) -> float:
        # batch size from one short probe: about batch_s seconds per batch
        return best(fn, max(10, int(batch_s * 1e6 / max(best(fn, 10), 0.01))))

    return {"python_us": round(per_call(lambda: sum(range(1000))), 2),
            "numpy_us": round(per_call(lambda: np.fft.rfft(x)), 2)}


def announce() -> tuple[tuple[float, float, float], dict[str, float]]:
    """Print the machine, a calibration and the load average before a CPU benchmark's runs (the
    core and shell benchmarks); returns the load average and the calibration."""
    load, cal = os.getloadavg(), calibration()
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}; calibration {cal} (python sum(range(1000)), "
          f"numpy rfft(4096), us of thread CPU); load average {[round(x, 2) for x in load]}", flush=True)
    return load, cal


def interleaved(modes: Sequence[str], repeat: int, run: Callable[[str], dict[str, Any]],
                line: Callable[[str, int, dict[str, Any]], str]) -> dict[str, list[dict[str, Any]]]:
    """``repeat`` runs of every mode, interleaved (a change in the host's load hits every mode
    alike), each announced by ``line(mode, run number, result)``."""
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for i in range(repeat):
        for mode in modes:
            runs[mode].append(r := run(mode))
            print(line(mode, i + 1, r), flush=True)
    return runs


def mode_path(path: Path, mode: str, modes: Sequence[str]) -> Path:
    """``path`` itself for a single mode, else ``<stem>_<mode><suffix>`` (one profile per mode)."""
    return path if len(modes) == 1 else path.with_name(f"{path.stem}_{mode.replace('-', '_')}{path.suffix}")
