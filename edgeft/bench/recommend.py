"""Which artifact to ship: the recommendation per target, unambiguous artifact names, and the plot.

The recommendation for a target is the fastest (median latency) artifact and thread count whose
accuracy is within ``max_drop`` points of the most accurate one measured on that target. Without
accuracy (no ``--eval``) it is the fastest, and says so. ``bench.json`` carries it as
``recommendation`` ``{target: {artifact, artifact_path, threads, p50_ms, accuracy, best_accuracy,
max_drop_pts, reason}}``; ``edgeft bundle --from-bench`` ships it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

from edgeft.errors import UsageError
from edgeft.fileio import atomic_path

DEFAULT_MAX_DROP = 1.0  # accuracy points
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def artifact_labels(paths: Sequence[Path]) -> list[str]:
    """A distinct name per artifact: the file name, with as many parent folders as it takes to tell files apart."""
    paths = [Path(p) for p in paths]
    labels = [p.name for p in paths]
    depth = 1
    while len(set(labels)) < len(labels) and depth < 8:
        depth += 1
        repeated = {label for label in labels if labels.count(label) > 1}
        labels = ["/".join(path.parts[-depth:]) if label in repeated else label for path, label in zip(paths, labels)]
    return labels


def _measured(rows: Sequence[dict[str, Any]], target: str) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("target") == target and r.get("p50_ms") is not None and not r.get("error")]


def recommend(rows: Sequence[dict[str, Any]], max_drop: float = DEFAULT_MAX_DROP) -> dict[str, dict[str, Any]]:
    """Per target: the fastest row within ``max_drop`` accuracy points of the most accurate (see the module doc)."""
    result: dict[str, dict[str, Any]] = {}
    for target in sorted({str(r.get("target")) for r in rows if r.get("target") is not None}):
        measured = _measured(rows, target)
        if not measured:
            continue
        accurate = [r for r in measured if r.get("accuracy") is not None]
        if accurate:
            best = max(float(r["accuracy"]) for r in accurate)
            eligible = [r for r in accurate if float(r["accuracy"]) >= best - max_drop / 100.0 - 1e-12]
            reason = (f"fastest within {max_drop:g} accuracy points of the most accurate "
                      f"({best * 100:.1f}%) on {target}")
        else:
            best, eligible = None, measured
            reason = f"fastest on {target}; no accuracy measured (pass --eval to weigh accuracy)"
        chosen = min(eligible, key=lambda r: (float(r["p50_ms"]), -(r.get("accuracy") or 0.0), r.get("threads") or 0))
        result[target] = {"artifact": chosen.get("artifact"), "artifact_path": chosen.get("artifact_path"),
                          "threads": chosen.get("threads"), "p50_ms": chosen.get("p50_ms"),
                          "accuracy": chosen.get("accuracy"), "best_accuracy": best, "max_drop_pts": max_drop,
                          "reason": reason}
    return result


def recommendation_markdown(recommendation: dict[str, dict[str, Any]]) -> str:
    """The recommendation as lines under bench.md's table."""
    if not recommendation:
        return ""
    lines = ["", "| target | recommended artifact | threads | p50 ms | accuracy | why |", "|---|---|---|---|---|---|"]
    for target, rec in recommendation.items():
        accuracy = "-" if rec["accuracy"] is None else f"{rec['accuracy'] * 100:.1f}%"
        cells = [target, str(rec["artifact"]), str(rec["threads"]), f"{rec['p50_ms']:.3f}", accuracy, rec["reason"]]
        lines.append("| " + " | ".join(_plain(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def recommended_artifact(bench_dir: Path, target: str) -> dict[str, Any]:
    """The recommendation for ``target`` in BENCH_DIR's bench.json (computed from its rows if absent)."""
    path = Path(bench_dir) / "bench.json"
    try:
        summary = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{bench_dir} is not a bench directory (no bench.json); run edgeft bench first") from None
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read {path}: {error}") from None
    recommendation = summary.get("recommendation") or recommend(summary.get("rows") or [])
    if target not in recommendation:
        known = ", ".join(sorted(recommendation)) or "none"
        raise UsageError(f"{path} has no measurement for target '{target}' (targets measured there: {known})")
    return dict(recommendation[target])


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (latency, accuracy) points no other point beats on both, by latency."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def _plain(text: Any) -> str:
    return _CONTROL.sub(" ", str(text))


def plot_latency_accuracy(rows: Sequence[dict[str, Any]], path: Path,
                          recommendation: dict[str, dict[str, Any]] | None = None) -> None:
    """Write :func:`latency_accuracy_figure` as a PNG, atomically."""
    import matplotlib.pyplot as plt

    figure = latency_accuracy_figure(rows, recommendation)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as temp:  # a fresh O_EXCL temporary: never writes through a planted link
            figure.savefig(temp, format="png", dpi=110)
    finally:
        plt.close(figure)


def latency_accuracy_figure(rows: Sequence[dict[str, Any]], recommendation: dict[str, dict[str, Any]] | None = None
                            ) -> Any:
    """Median latency against accuracy: a marker and colour per artifact, its thread counts joined by a line,
    one panel per target, the Pareto front dashed, the recommendation circled, a legend instead of labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    measured = [r for r in rows if r.get("p50_ms") is not None and not r.get("error")]
    targets = sorted({str(r["target"]) for r in measured}) or ["(nothing measured)"]
    artifacts = sorted({str(r["artifact"]) for r in measured})
    markers = "osD^v<>ph*XP"
    colours = plt.get_cmap("tab10")
    with matplotlib.rc_context({"text.parse_math": False}):  # names are data, never TeX
        figure, panels = plt.subplots(1, len(targets), figsize=(6.5 * len(targets), 4.6), squeeze=False)
        for axes, target in zip(panels[0], targets):
            here = [r for r in measured if str(r["target"]) == target]
            has_accuracy = any(r.get("accuracy") is not None for r in here)
            for i, artifact in enumerate(artifacts):
                points = sorted((r for r in here if str(r["artifact"]) == artifact), key=lambda r: r.get("threads") or 0)
                if not points:
                    continue
                xs = [float(r["p50_ms"]) for r in points]
                ys = [float(r["accuracy"]) * 100 if r.get("accuracy") is not None else 0.0 for r in points]
                threads = ",".join(str(r.get("threads")) for r in points)
                axes.plot(xs, ys, marker=markers[i % len(markers)], color=colours(i % 10), linewidth=1,
                          markersize=7, label=_plain(f"{artifact} (threads {threads})"))
            if has_accuracy:
                front = pareto_front([(float(r["p50_ms"]), float(r["accuracy"]) * 100) for r in here
                                      if r.get("accuracy") is not None])
                axes.plot([p[0] for p in front], [p[1] for p in front], "k--", linewidth=0.8, alpha=0.6,
                          label="Pareto front", zorder=1)
            rec = (recommendation or {}).get(target)
            if rec:
                y = rec["accuracy"] * 100 if rec.get("accuracy") is not None else 0.0
                axes.scatter([rec["p50_ms"]], [y], s=260, facecolors="none", edgecolors="red", linewidths=2,
                             zorder=5, label=_plain(f"recommended: {rec['artifact']}, {rec['threads']} thread(s)"))
            axes.set_xscale("log")
            axes.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axes.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axes.xaxis.set_minor_formatter(NullFormatter())
            axes.set_xlabel("median latency per image (ms)")
            axes.set_ylabel("top-1 accuracy (%)" if has_accuracy else "accuracy not measured (run with --eval)")
            if not has_accuracy:
                axes.set_yticks([])
            emulated = " (EMULATED: QEMU latency, not a device's)" if any(r.get("emulated") for r in here) else ""
            axes.set_title(_plain(f"{target}: latency vs accuracy{emulated}"), fontsize=9 if emulated else None)
            axes.grid(True, which="major", alpha=0.3)
            if here:
                axes.legend(fontsize=7, loc="best")
        figure.tight_layout()
    return figure
