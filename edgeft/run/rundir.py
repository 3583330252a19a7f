"""Reading and writing run directories.

A complete run directory holds::

    edgeft.json     manifest (RunManifest): data, splits, backbone, preprocessing, labels, versions
    model.keras     the trained Keras model (tf-keras / Keras 2 format)
    labels.txt      one class name per line, in output order
    metrics.json    val_accuracy (0..1), test_accuracy, per-class precision/recall/F1, confusion matrix
    history.csv     one row per epoch and phase
    *.png           training curves and confusion matrix

``edgeft.json`` is written last, so its presence marks a complete run; ``.checkpoints/``
holds the state of an unfinished one.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Sequence

from edgeft.errors import RunDirError
from edgeft.preprocessing import Preprocessing
from edgeft.run.timings import StepTimer

MANIFEST_FILE = "edgeft.json"
MODEL_FILE = "model.keras"
LABELS_FILE = "labels.txt"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
CHECKPOINT_DIR = ".checkpoints"
CURVES_PLOT = "training_curves.png"
CONFUSION_PLOT = "confusion_matrix.png"
RUN_ARTIFACTS = (MODEL_FILE, LABELS_FILE, METRICS_FILE, HISTORY_FILE, MANIFEST_FILE, CURVES_PLOT, CONFUSION_PLOT)
MANIFEST_VERSION = 1
# history.csv: these columns first, in this order, then any other metric Keras logged, sorted.
HISTORY_COLUMNS = ("phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy")


@dataclass(frozen=True)
class Sample:
    """One usable image of a split: its absolute path and class index."""

    path: str
    label: int


@dataclass(frozen=True)
class RunManifest:
    """Everything later stages need to know about a trained model, stored as ``edgeft.json``."""

    kind: str  # "float" (edgeft finetune) or "qat" (edgeft qat)
    backbone: str
    alpha: float | None
    image_size: int
    preprocessing: Preprocessing
    class_names: tuple[str, ...]
    data_dir: str
    splits: dict[str, tuple[Sample, ...]]
    dataset: dict[str, Any]
    strategy: str
    weights: str
    hyperparameters: dict[str, Any]
    seed: int
    versions: dict[str, str]
    parent_run: str | None = None
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        root = Path(self.data_dir)
        splits: dict[str, list[dict[str, Any]]] = {}
        for name, samples in self.splits.items():
            splits[name] = [{"path": _relative(Path(s.path), root), "label": s.label} for s in samples]
        return {
            "manifest_version": MANIFEST_VERSION,
            "kind": self.kind,
            "created": self.created,
            "backbone": self.backbone,
            "alpha": self.alpha,
            "image_size": self.image_size,
            "input_shape": [self.image_size, self.image_size, 3],
            "preprocessing": self.preprocessing.to_dict(),
            "class_names": list(self.class_names),
            "strategy": self.strategy,
            "weights": self.weights,
            "hyperparameters": self.hyperparameters,
            "seed": self.seed,
            "data_dir": self.data_dir,
            "dataset": self.dataset,
            "splits": splits,
            "versions": self.versions,
            "parent_run": self.parent_run,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunManifest":
        root = Path(data["data_dir"])
        splits = {
            name: tuple(Sample(str(_absolute(entry["path"], root)), int(entry["label"])) for entry in entries)
            for name, entries in data["splits"].items()
        }
        return cls(
            kind=data["kind"],
            backbone=data["backbone"],
            alpha=data.get("alpha"),
            image_size=int(data["image_size"]),
            preprocessing=Preprocessing.from_dict(data["preprocessing"]),
            class_names=tuple(data["class_names"]),
            data_dir=data["data_dir"],
            splits=splits,
            dataset=data.get("dataset", {}),
            strategy=data.get("strategy", ""),
            weights=data.get("weights", ""),
            hyperparameters=data.get("hyperparameters", {}),
            seed=int(data.get("seed", 0)),
            versions=data.get("versions", {}),
            parent_run=data.get("parent_run"),
            created=data.get("created", ""),
            extra=data.get("extra", {}),
        )


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _absolute(path: str, root: Path) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else root / candidate


class RunDir:
    """A complete run directory on disk; open one with :meth:`RunDir.open`."""

    def __init__(self, path: Path, manifest: RunManifest) -> None:
        self.path = Path(path)
        self.manifest = manifest

    @classmethod
    def open(cls, path: Path) -> "RunDir":
        """Open a complete run directory, or raise :class:`RunDirError` saying what is wrong."""
        path = Path(path)
        if not path.is_dir():
            raise RunDirError(f"run directory not found: {path} (create one with `edgeft finetune ... --out {path}`)")
        manifest_path = path / MANIFEST_FILE
        if not manifest_path.is_file():
            hint = (
                "it holds an unfinished run: continue it with `edgeft finetune ... --resume`"
                if (path / CHECKPOINT_DIR).exists()
                else "create one with `edgeft finetune`"
            )
            raise RunDirError(f"not a complete edgeft run directory: {path} has no {MANIFEST_FILE}; {hint}")
        try:
            manifest = RunManifest.from_dict(json.loads(manifest_path.read_text("utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise RunDirError(f"corrupted run manifest {manifest_path}: {error}; re-run `edgeft finetune`") from None
        if not (path / MODEL_FILE).is_file():
            raise RunDirError(f"run directory {path} has no {MODEL_FILE}; re-run `edgeft finetune`")
        return cls(path, manifest)

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    def metrics(self) -> dict[str, Any]:
        """The run's ``metrics.json`` (empty when absent)."""
        metrics_path = self.path / METRICS_FILE
        if not metrics_path.is_file():
            return {}
        return json.loads(metrics_path.read_text("utf-8"))

    def samples(self, split: str) -> tuple[Sample, ...]:
        """The usable samples of ``split`` (train, val or test), as recorded at training time."""
        if split not in self.manifest.splits:
            raise RunDirError(f"run {self.path} has no '{split}' split (it has: {', '.join(self.manifest.splits)})")
        return self.manifest.splits[split]

    def load_keras_model(self) -> Any:
        """Load the trained model with tf-keras (QAT runs included)."""
        from edgeft.tfcompat import load_keras_model

        return load_keras_model(self.model_path)


class ModelFormat(str, Enum):
    """How ``model.keras`` is written; both load with ``keras.models.load_model``."""

    KERAS = "keras"  # the zip (.keras v3) format
    # tf-keras 2.21 cannot reload tfmot's QuantizeLayer from the zip format ("expected 5 variables,
    # received 3"); its HDF5 writer round-trips exactly, and load_model recognises HDF5 content under
    # the .keras name, so a QAT run directory keeps the same contract.
    HDF5 = "h5"


def history_csv(rows: Sequence[dict[str, Any]]) -> str:
    """``history.csv``'s text: one row per epoch and phase, :data:`HISTORY_COLUMNS` first."""
    extra = sorted({key for row in rows for key in row} - set(HISTORY_COLUMNS))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*HISTORY_COLUMNS, *extra], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_run_dir(out: Path, model: Any, manifest: RunManifest, metrics: dict[str, Any],
                  history: Sequence[dict[str, Any]], model_format: ModelFormat = ModelFormat.KERAS,
                  timer: StepTimer | None = None) -> None:
    """Write a complete run directory, each file atomically and the manifest last.

    The old manifest is removed first, so a run directory being overwritten never looks complete
    before its new manifest is in. With a validation report in ``metrics["val"]`` the training
    curves and the confusion matrix are plotted too (when matplotlib is installed). With a
    ``timer``, writing and plotting are timed as the steps ``writing`` and ``plots`` and
    ``metrics.json`` gets the timer's report as ``timings`` and its total as ``wall_s``.
    """
    from edgeft.fileio import atomic_path, write_json_atomic, write_text_atomic

    clock = timer or StepTimer()
    out = Path(out)
    with clock.step("writing"):
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST_FILE).unlink(missing_ok=True)
        with atomic_path(out / MODEL_FILE) as temp:
            if model_format is ModelFormat.HDF5:
                with warnings.catch_warnings():  # Keras' "HDF5 is legacy" advice does not apply, as said above
                    warnings.filterwarnings("ignore", message="You are saving your model as an HDF5 file")
                    model.save(str(temp), save_format="h5")
            else:  # named, not inferred from ".keras": tf-keras infers from a thread-local flag
                model.save(str(temp), save_format="keras_v3")
        write_text_atomic(out / LABELS_FILE, "\n".join(manifest.class_names) + "\n")
        write_text_atomic(out / HISTORY_FILE, history_csv(history))
    if "val" in metrics:
        with clock.step("plots"):
            _write_plots(out, manifest.class_names, metrics, history)
    if timer is not None:
        report = timer.report()
        metrics = dict(metrics, timings=report, wall_s=report["total"])
    write_json_atomic(out / METRICS_FILE, metrics)
    write_json_atomic(out / MANIFEST_FILE, manifest.to_dict())


def _write_plots(out: Path, class_names: Sequence[str], metrics: dict[str, Any],
                 history: Sequence[dict[str, Any]]) -> None:
    from edgeft.progress import log
    from edgeft.run.plots import plot_confusion_matrix, plot_history

    try:
        plot_history(list(history), out / CURVES_PLOT)
        plot_confusion_matrix(metrics["val"]["confusion_matrix"], tuple(class_names), out / CONFUSION_PLOT,
                              f"validation (accuracy {metrics['val_accuracy']:.3f})")
    except ImportError:
        log("warning: matplotlib is not installed; plots skipped")
