"""The main job on an embedded default: the UCI handwritten digits that scikit-learn ships.

Writes the 1,797 digits as a class-folder PNG set, fine-tunes MobileNetV2 (ImageNet weights
when they are local or downloadable, else from scratch), evaluates the run, and fails
loudly below 0.90 validation accuracy, exports TFLite and ONNX (float32 and int8, each checked
against Keras on the validation split) and benchmarks the exports on this host with the
on-device runner. Each stage prints its table; the summary gathers them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.errors import AccuracyTargetError, EdgeftError, MissingDependencyError, OutputMatchError
from edgeft.progress import log

REQUIRED_ACCURACY = 0.90


def write_digits(folder: Path, per_class: int | None = None, classes: int = 10, seed: int = 0) -> int:
    """Write scikit-learn's digits as ``folder/<digit>/<n>.png`` (8x8 gray, 0..255); return the count.

    ``per_class`` takes that many of each of the first ``classes`` digits, chosen with ``seed``;
    by default all 1,797 are written.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise MissingDependencyError("the demo needs scikit-learn: pip install scikit-learn") from None
    from PIL import Image

    digits = load_digits()
    pixels = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    if per_class is None:
        chosen = np.flatnonzero(digits.target < classes)
    else:
        rng = np.random.default_rng(seed)
        chosen_parts = []
        for label in range(classes):
            members = np.flatnonzero(digits.target == label)
            rng.shuffle(members)
            chosen_parts.append(members[:per_class])
        chosen = np.concatenate(chosen_parts)
    for index in chosen:
        target = folder / str(digits.target[index]) / f"{index:04d}.png"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[index], mode="L").save(target)
    return len(chosen)


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
    summary["export"] = _export_stage(run_dir, out_dir / "export")
    summary["bench"] = _bench_stage(run_dir, out_dir / "export", out_dir / "bench")
    summary["wall_s"] = round(time.monotonic() - started, 1)
    log(f"demo: complete in {summary['wall_s']}s; run {run_dir}, exports {out_dir / 'export'}, "
        f"bench {out_dir / 'bench'}")
    return summary


def _print_table(rows: list[dict[str, Any]], columns: tuple[str, ...], title: str) -> None:
    """Print a stage's main columns as a terminal table on stderr (its report file has them all)."""
    from edgeft.progress import print_table

    log("")
    print_table(rows, columns, title=title, stderr=True)


def _export_stage(run_dir: Path, export_dir: Path) -> dict[str, Any]:
    """TFLite and ONNX, float32 and post-training int8, each checked against Keras."""
    from edgeft.export import ExportConfig, main_export

    # the demo replaces its own earlier export; a folder holding anything else is still refused
    config = ExportConfig.from_flags(run_dir, export_dir, formats=["tflite", "onnx"], int8=True,
                                     force=(export_dir / "export_report.json").is_file())
    parity_failure = None
    try:
        main_export(config)
    except OutputMatchError as error:
        # Every artifact is written and measured; the demo shows the loss and goes on to the bench.
        parity_failure = error.message
    report = json.loads((export_dir / "export_report.json").read_text("utf-8"))
    _print_table(report["artifacts"], ("path", "accuracy", "agreement", "size_bytes", "p50_ms"),
                 f"export ({export_dir / 'export_report.md'})")
    if parity_failure:
        log(f"warning: parity check: {parity_failure}")
    return {
        "parity_failure": parity_failure,
        "keras_accuracy": report["keras_accuracy"],
        "artifacts": [
            {key: row.get(key) for key in ("path", "precision", "accuracy", "agreement", "size_bytes", "p50_ms")}
            for row in report["artifacts"]
        ],
    }


def _bench_stage(run_dir: Path, export_dir: Path, bench_dir: Path) -> dict[str, Any]:
    """The exports on this host through the on-device runner, accuracy measured on the val split."""
    from edgeft.bench import BenchConfig, main_bench

    config = BenchConfig(artifacts=(export_dir,), targets=("local",), out_dir=bench_dir, runs=50, warmup=5,
                         threads=(1,), eval_source=run_dir)
    result = main_bench(config)
    _print_table(result.get("rows", []), ("artifact", "threads", "p50_ms", "accuracy", "runtime"),
                 f"bench ({bench_dir / 'bench.md'})")
    return {"rows": [
        {key: row.get(key) for key in ("artifact", "threads", "p50_ms", "accuracy", "runtime", "runtime_version")}
        for row in result.get("rows", [])
    ]}
