"""What every benchmark report states about the machine it ran on."""

from __future__ import annotations

import os
import platform
from pathlib import Path


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
