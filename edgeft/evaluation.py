"""``edgeft evaluate``: re-evaluate a run on its validation split or on another class-folder tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeft.data import LoadedSplit, class_dirs, class_folder_files, load_entries, load_samples
from edgeft.errors import DatasetError
from edgeft.progress import log
from edgeft.run import RunDir
from edgeft.run.metrics import classification_report


def _folder_split(data_dir: Path, class_names: tuple[str, ...], image_size: int) -> tuple[LoadedSplit, int]:
    """All images under DATA_DIR/<class>/ for the run's classes; returns the split and the skipped count."""
    root = Path(data_dir).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"data directory not found: {data_dir}")
    found = {d.name for d in class_dirs(root)}
    unknown = sorted(found - set(class_names))
    if unknown:
        raise DatasetError(f"{root} has class folders the model does not know: {', '.join(unknown)} "
                           f"(its classes: {', '.join(class_names)})")
    if not found:
        raise DatasetError(f"no class folders in {root}")
    entries = class_folder_files(root, class_names)
    split = load_entries(entries, image_size, label="decoding images")
    if not split.samples:
        raise DatasetError(f"no usable image in {root}")
    return split, len(entries) - len(split.samples)


def main_evaluate(run_dir: Path, data_dir: Path | None = None) -> dict[str, Any]:
    """Evaluate the run's Keras model; print a summary; return the report."""
    from edgeft.training.pipeline import image_dataset

    run = RunDir.open(run_dir)
    manifest = run.manifest
    if data_dir is None:
        split = load_samples(run.samples("val"), manifest.image_size, label="decoding val images")
        source = "val split"
        skipped = len(run.samples("val")) - len(split.samples)
    else:
        split, skipped = _folder_split(data_dir, manifest.class_names, manifest.image_size)
        source = str(data_dir)
    if not len(split.samples):
        raise DatasetError(f"no usable image to evaluate in the {source}")
    model = run.load_keras_model()
    dataset = image_dataset(split.images, None, manifest.preprocessing, 32)
    probabilities = np.asarray(model.predict(dataset, verbose=0), dtype=np.float32)
    report = classification_report(split.labels, probabilities, manifest.class_names)
    report.update({"run_dir": str(run.path), "source": source, "skipped_files": skipped})
    log(f"{run.path}: accuracy {report['accuracy']:.4f} on {report['count']} images ({source}), "
        f"macro F1 {report['macro_f1']:.4f}")
    for name, row in report["per_class"].items():
        log(f"  {name:<20} precision {row['precision']:.3f}  recall {row['recall']:.3f}  f1 {row['f1']:.3f}  n={row['support']}")
    return report
