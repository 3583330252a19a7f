"""PNG plots of a run: training curves and the confusion matrix (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from edgeft.fileio import atomic_path


def _figure(width: float, height: float) -> Any:
    # The object API, not pyplot: no global state, no GUI backend, faster to import.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def warm_up() -> None:
    """Import matplotlib's figure, Agg backend and font cache ahead of the plots (in a background thread).

    The imports and the font list are most of the plots' cost; done while a command decodes images
    or runs the network, they leave only the drawing for the end.
    """
    import importlib

    try:
        for module in ("matplotlib.figure", "matplotlib.backends.backend_agg"):
            importlib.import_module(module)
        from matplotlib import font_manager

        font_manager.findfont("DejaVu Sans")
    except Exception:  # the plots themselves report a missing or broken matplotlib
        pass


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


# Above these class counts a cell's count (and then its name) is unreadable and only costs drawing time:
# 200 classes with per-cell text took about a minute to draw.
CELL_TEXT_MAX_CLASSES = 30
TICK_LABELS_MAX_CLASSES = 60


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, title: str) -> None:
    """The confusion matrix as a heat map; counts in the cells and class names on the axes while readable."""
    import numpy as np

    data = np.asarray(matrix)
    classes = len(class_names)
    size = min(16.0, max(4.0, 0.5 * classes + 2))
    figure = _figure(size, size)
    axis = figure.subplots()
    axis.imshow(data, cmap="Blues", interpolation="nearest")
    if classes <= TICK_LABELS_MAX_CLASSES:
        font = 10 if classes <= CELL_TEXT_MAX_CLASSES else 6
        axis.set_xticks(range(classes), class_names, rotation=45, ha="right", fontsize=font)
        axis.set_yticks(range(classes), class_names, fontsize=font)
    axis.set_xlabel("predicted" if classes <= TICK_LABELS_MAX_CLASSES else "predicted (class index)")
    axis.set_ylabel("true" if classes <= TICK_LABELS_MAX_CLASSES else "true (class index)")
    axis.set_title(title)
    if classes <= CELL_TEXT_MAX_CLASSES:
        threshold = data.max() / 2 if data.size else 0
        for (row, column), value in np.ndenumerate(data):
            axis.text(column, row, str(value), ha="center", va="center",
                      color="white" if value > threshold else "black")
    figure.tight_layout()
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=100)
