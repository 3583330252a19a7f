"""Terminal output: status lines and progress bars on stderr (stdout stays clean for ``--json``), tables.

Progress bars and tables are drawn by ``rich``, imported on first use so that ``edgeft --help``
stays instant. Files (Markdown, CSV, JSON reports) are written elsewhere and never with rich.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Iterable, Iterator, Sequence, TypeVar

T = TypeVar("T")

# Held by whoever points file descriptor 2 elsewhere for a while (TensorFlow's import, which finetune runs in
# a thread while it decodes): a status line waits for it instead of vanishing into /dev/null.
STDERR_LOCK = threading.RLock()


def log(message: str) -> None:
    """Print one status line on stderr."""
    with STDERR_LOCK:
        print(message, file=sys.stderr, flush=True)


def track(items: Iterable[T], total: int, label: str) -> Iterator[T]:
    """Yield ``items`` while drawing a progress bar on stderr (one final line when stderr is not a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(label, total=max(total, 0))
        for item in items:
            yield item
            progress.advance(task)


def format_cell(value: Any) -> str:
    """A table cell: ``-`` for missing, 3 decimals for small floats, one for large ones."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_cell(v) for v in value)
    return str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None,
                stderr: bool = False) -> None:
    """Print ``rows`` as a table fitted to the terminal's width (cells wrap inside their column)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(format_cell(row.get(column)) for column in columns))
    Console(stderr=stderr).print(table)
