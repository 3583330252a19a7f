"""The main job on an embedded default: the UCI handwritten digits that scikit-learn ships.

Writes the 1,797 digits as a class-folder PNG set, fine-tunes MobileNetV2 (ImageNet weights
when they are local or downloadable, else from scratch), evaluates the run, and fails
loudly below 0.90 validation accuracy. Later stages (export, bench) are appended as they land.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.errors import AccuracyTargetError, EdgeftError, MissingDependencyError
from edgeft.progress import log

REQUIRED_ACCURACY = 0.90


def write_digits(folder: Path) -> int:
    """Write scikit-learn's digits as ``folder/<digit>/<n>.png`` (8x8 gray, 0..255); return the count."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise MissingDependencyError("the demo needs scikit-learn: pip install scikit-learn") from None
    from PIL import Image

    digits = load_digits()
    pixels = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    for index, (image, label) in enumerate(zip(pixels, digits.target)):
        target = folder / str(label) / f"{index:04d}.png"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode="L").save(target)
    return len(pixels)


def demo_options(data_dir: Path, run_dir: Path) -> dict[str, Any]:
    """finetune options: ImageNet fine-tuning when weights are at hand, else training from scratch."""
    from edgeft.backbones import get_backbone
    from edgeft.backbones.weights import resolve_imagenet_weights

    common = dict(data_dir=data_dir, out_dir=run_dir, backbone="mobilenet_v2", alpha=0.35, seed=0,
                  val_split=0.2, augment=False, batch_size=32, patience=4, min_accuracy=None)
    size = 96
    try:
        resolved = resolve_imagenet_weights(get_backbone("mobilenet_v2"), 0.35, size)
    except EdgeftError:
        resolved = None
    if resolved is not None:
        log(f"demo: ImageNet weights found ({resolved.path}); fine-tuning the whole network at {size} px")
        return dict(common, image_size=size, weights="imagenet", strategy="full", epochs=5, fine_tune_epochs=8,
                    fine_tune_learning_rate=1e-4)
    log("demo: no ImageNet weights available offline; training MobileNetV2 0.35 from scratch at 32 px")
    return dict(common, image_size=32, weights="none", strategy="full", epochs=30, learning_rate=2e-3)


def main_demo(out_dir: Path) -> dict[str, Any]:
    """Run the pipeline built so far on the digits; return its summary."""
    from edgeft.evaluation import main_evaluate
    from edgeft.training.config import FinetuneConfig
    from edgeft.training.finetune import main_finetune

    started = time.monotonic()
    out_dir = Path(out_dir)
    data_dir = out_dir / "digits"
    run_dir = out_dir / "run"
    count = write_digits(data_dir)
    log(f"demo: wrote {count} digit images to {data_dir}")
    options = demo_options(data_dir, run_dir)
    config = FinetuneConfig.from_options(**options, force=(run_dir / "edgeft.json").exists())
    training = main_finetune(config)
    evaluation = main_evaluate(run_dir)
    summary: dict[str, Any] = {"finetune": training, "evaluate": {"accuracy": evaluation["accuracy"],
                                                                 "count": evaluation["count"]}}
    summary["wall_s"] = round(time.monotonic() - started, 1)
    log(f"demo: weights {training['weights']}, val_accuracy {evaluation['accuracy']:.4f}, "
        f"{summary['wall_s']}s in all")
    if evaluation["accuracy"] < REQUIRED_ACCURACY:
        raise AccuracyTargetError(
            f"demo reached val_accuracy {evaluation['accuracy']:.4f}, below the required {REQUIRED_ACCURACY}"
        )
    return summary
