"""Progress reporting on stderr, so that stdout stays clean for ``--json``."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def log(message: str) -> None:
    """Print one status line on stderr."""
    print(message, file=sys.stderr, flush=True)


def track(items: Iterable[T], total: int, label: str) -> Iterator[T]:
    """Yield ``items`` while drawing a progress bar on stderr (a line every 10% when not a terminal)."""
    interactive = sys.stderr.isatty()
    start = time.monotonic()
    last_decile = -1
    done = 0
    for item in items:
        yield item
        done += 1
        if total <= 0:
            continue
        if interactive:
            width = 30
            filled = int(width * done / total)
            elapsed = time.monotonic() - start
            sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {elapsed:5.1f}s")
            sys.stderr.flush()
        else:
            decile = int(10 * done / total)
            if decile != last_decile and decile > 0 and (decile % 5 == 0 or done == total):
                last_decile = decile
                sys.stderr.write(f"{label}: {done}/{total}\n")
    if interactive and total > 0:
        sys.stderr.write("\n")
        sys.stderr.flush()
