"""PNG plots of a run: training curves and the confusion matrix (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from edgeft.fileio import atomic_path


def _figure(width: float, height: float) -> Any:
    # The object API, not pyplot: no global state, no GUI backend, faster to import.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def plot_history(rows: list[dict[str, Any]], path: Path) -> None:
    """Loss and accuracy per epoch for train and validation, phases separated by a line."""
    figure = _figure(10, 4)
    loss_axis, acc_axis = figure.subplots(1, 2)
    steps = list(range(1, len(rows) + 1))
    for axis, metric in ((loss_axis, "loss"), (acc_axis, "accuracy")):
        axis.plot(steps, [r.get(metric) for r in rows], label=f"train {metric}")
        axis.plot(steps, [r.get(f"val_{metric}") for r in rows], label=f"val {metric}")
        for index in range(1, len(rows)):
            if rows[index]["phase"] != rows[index - 1]["phase"]:
                axis.axvline(index + 0.5, color="grey", linestyle="--", linewidth=0.8)
        axis.set_xlabel("epoch (all phases)")
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=100)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, title: str) -> None:
    """The confusion matrix as a heat map with counts."""
    import numpy as np

    data = np.asarray(matrix)
    size = max(4.0, 0.5 * len(class_names) + 2)
    figure = _figure(size, size)
    axis = figure.subplots()
    axis.imshow(data, cmap="Blues")
    axis.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    axis.set_yticks(range(len(class_names)), class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    threshold = data.max() / 2 if data.size else 0
    for (row, column), value in np.ndenumerate(data):
        axis.text(column, row, str(value), ha="center", va="center", color="white" if value > threshold else "black")
    figure.tight_layout()
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=100)
