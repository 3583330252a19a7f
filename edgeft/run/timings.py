"""Where a command's wall time goes: named steps timed in one process, reported in ``metrics.json``."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator


class StepTimer:
    """Accumulates seconds per named step; what no step covers is reported as ``other``.

    Steps nest: time spent in an inner step counts for the inner step only, so the parts add up
    to the total.
    """

    def __init__(self, started: float | None = None) -> None:
        self.started = time.monotonic() if started is None else started
        self.seconds: dict[str, float] = {}
        self.last_report: dict[str, float] = {}
        self._inner: list[float] = []  # per open step: seconds spent in steps nested in it

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time the ``with`` body under ``name`` (added to earlier time under the same name)."""
        begin = time.monotonic()
        self.seconds.setdefault(name, 0.0)
        self._inner.append(0.0)
        try:
            yield
        finally:
            duration = time.monotonic() - begin
            nested = self._inner.pop()
            self.seconds[name] += duration - nested
            if self._inner:
                self._inner[-1] += duration

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def report(self) -> dict[str, float]:
        """Seconds per step in the order they first ran, then ``other`` and ``total`` (all rounded to 10 ms)."""
        total = self.elapsed()
        rows = {name: round(value, 2) for name, value in self.seconds.items()}
        rows["other"] = round(max(total - sum(self.seconds.values()), 0.0), 2)
        rows["total"] = round(total, 2)
        self.last_report = rows
        return rows

    def line(self) -> str:
        """The last report (a new one if none was made) as one status line."""
        parts = [f"{name.replace('_', ' ')} {value:.1f}s" for name, value in (self.last_report or self.report()).items()]
        return "timings: " + ", ".join(parts)
