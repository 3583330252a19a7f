"""Measurement, defined once for export and bench: latency statistics and peak resident memory.

The latency of a model is the p50 (median) of N timed single-image invocations after warm-up,
timing the runtime call alone (the input tensor is set once beforehand).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple


def _percentile(sorted_values: List[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    position = (len(sorted_values) - 1) * q
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def latency_stats(latencies_ms: List[float]) -> Dict[str, float]:
    """mean, std, min, p50, p90, p99, max of a list of latencies (ms)."""
    values = sorted(latencies_ms)
    n = len(values)
    mean = sum(values) / n
    std = (sum((v - mean) ** 2 for v in values) / n) ** 0.5
    return {"mean_ms": mean, "std_ms": std, "min_ms": values[0], "p50_ms": _percentile(values, 0.5),
            "p90_ms": _percentile(values, 0.9), "p99_ms": _percentile(values, 0.99), "max_ms": values[-1]}


def time_invocations(invoke: Callable[[], Any], warmup: int = 10, runs: Optional[int] = 50,
                     duration_s: Optional[float] = None) -> Tuple[float, List[float], float]:
    """Time ``invoke``: (first call ms, per-call ms after ``warmup`` calls, wall seconds of the timed loop).

    With ``duration_s`` the loop runs that long (at least 3 calls), else ``runs`` calls.
    """
    perf = time.perf_counter
    start = perf()
    invoke()
    first_ms = (perf() - start) * 1000.0
    for _ in range(warmup):
        invoke()
    latencies: List[float] = []
    loop_start = perf()
    if duration_s:
        deadline = loop_start + float(duration_s)
        while True:
            t0 = perf()
            invoke()
            t1 = perf()
            latencies.append((t1 - t0) * 1000.0)
            if t1 >= deadline and len(latencies) >= 3:
                break
    else:
        for _ in range(max(1, int(runs or 50))):
            t0 = perf()
            invoke()
            latencies.append((perf() - t0) * 1000.0)
    return first_ms, latencies, perf() - loop_start


def p50_ms(invoke: Callable[[], Any], runs: int, warmup: int = 3) -> float:
    """The latency statistic edgeft reports everywhere: p50 of ``runs`` calls after ``warmup`` calls."""
    return latency_stats(time_invocations(invoke, warmup, runs)[1])["p50_ms"]


def peak_rss_mb(children: bool = False) -> Optional[float]:
    """Peak resident memory in MiB of this process (or of its largest finished child)."""
    try:
        import resource
    except ImportError:
        return None
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    peak = resource.getrusage(who).ru_maxrss
    return round(peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0, 2)
