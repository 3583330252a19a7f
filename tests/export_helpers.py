"""Test helpers for export, calibration and QAT tests: tiny synthetic datasets and hand-built run dirs.

The run directory written here follows the contract of :mod:`edgeft.run.rundir` exactly, with
the flat functional model ``image -> backbone layers -> pool -> dropout -> predictions`` that
``edgeft finetune`` produces, so these tests do not depend on the training package.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MOBILENET_035_WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
HYMENOPTERA = SHARED / "datasets" / "hymenoptera_data"

_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 70, 220),
}


def make_shapes_dataset(root: Path, classes: tuple[str, ...] = ("red", "green", "blue"), per_class: int = 12,
                        val_per_class: int = 6, size: int = 72, seed: int = 0) -> Path:
    """Write ``root/{train,val}/<class>/*.png``: noisy backgrounds with a coloured disc or square per class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for split, count in (("train", per_class), ("val", val_per_class)):
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.array(_COLOURS.get(name, tuple(int(v) for v in rng.integers(0, 255, 3))), np.float32)
            for n in range(count):
                image = rng.normal(128, 40, (size, size, 3))
                cx, cy = rng.integers(size // 4, 3 * size // 4, 2)
                radius = rng.integers(size // 6, size // 3)
                if index % 2 == 0:
                    mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2
                else:
                    mask = (np.abs(xx - cx) <= radius) & (np.abs(yy - cy) <= radius)
                image[mask] = colour + rng.normal(0, 15, (int(mask.sum()), 3))
                Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{name}_{n:03d}.png")
    return root


def _set_bn_statistics_from_data(model: Any, images: np.ndarray) -> None:
    """Make every BatchNormalization layer's moving statistics the statistics of ``images``."""
    k = __import__("edgeft.tfcompat", fromlist=["keras"]).keras()
    bns = [layer for layer in model.layers if isinstance(layer, k.layers.BatchNormalization)]
    saved = [layer.momentum for layer in bns]
    for layer in bns:
        layer.momentum = 0.0
    model(images, training=True)
    for layer, momentum in zip(bns, saved):
        layer.momentum = momentum


def build_run(out: Path, data_dir: Path, backbone: str = "mobilenet_v2", alpha: float | None = 0.35,
              image_size: int = 64, weights: Path | None = None, epochs: int = 3, seed: int = 0,
              learning_rate: float = 3e-3) -> Path:
    """Train the head of a flat backbone model on ``data_dir`` and write a complete float run directory."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from edgeft.backbones import get_backbone
    from edgeft.data.dataset import load_dataset
    from edgeft.fileio import write_json_atomic, write_text_atomic
    from edgeft.run.rundir import LABELS_FILE, MANIFEST_FILE, METRICS_FILE, MODEL_FILE, RunManifest
    from edgeft.tfcompat import keras, package_versions, tf

    tf().random.set_seed(seed)
    k = keras()
    spec = get_backbone(backbone)
    index, splits = load_dataset(data_dir, image_size, seed=seed)
    train, val = splits["train"], splits["val"]
    x_train = spec.preprocessing.apply(train.images)
    x_val = spec.preprocessing.apply(val.images)

    image = k.Input(shape=(image_size, image_size, 3), name="image", dtype="float32")
    base = spec.construct(image, str(weights) if weights else None, alpha)
    if weights is None:
        _set_bn_statistics_from_data(base, x_train[:64])
    for layer in base.layers:
        layer.trainable = False
    x = k.layers.GlobalAveragePooling2D(name="pool")(base.output)
    x = k.layers.Dropout(0.2, name="dropout")(x)
    outputs = k.layers.Dense(len(index.class_names), activation="softmax", name="predictions", dtype="float32")(x)
    model = k.Model(image, outputs, name=f"edgeft_{spec.name}")
    model.compile(optimizer=k.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x_train, train.labels, epochs=epochs, batch_size=16, verbose=0, shuffle=True)
    probs = model.predict(x_val, verbose=0, batch_size=32)
    val_accuracy = float(np.mean(np.argmax(probs, axis=1) == val.labels))

    out.mkdir(parents=True, exist_ok=True)
    model.save(out / MODEL_FILE)
    write_text_atomic(out / LABELS_FILE, "\n".join(index.class_names) + "\n")
    write_json_atomic(out / METRICS_FILE, {"val_accuracy": val_accuracy})
    rows = ["epoch,phase,loss,accuracy"] + [
        f"{e},head,{l:.5f},{a:.5f}" for e, (l, a) in enumerate(zip(history.history["loss"], history.history["accuracy"]))
    ]
    write_text_atomic(out / "history.csv", "\n".join(rows) + "\n")
    manifest = RunManifest(
        kind="float", backbone=spec.name, alpha=alpha, image_size=image_size, preprocessing=spec.preprocessing,
        class_names=index.class_names, data_dir=str(index.root), splits={"train": train.samples, "val": val.samples},
        dataset=index.report(splits), strategy="head", weights=str(weights) if weights else "none",
        hyperparameters={"epochs": epochs, "learning_rate": learning_rate}, seed=seed, versions=package_versions(),
        created="2026-11-25T00:00:00Z",
    )
    write_json_atomic(out / MANIFEST_FILE, manifest.to_dict())
    return out


def session_run(tmp_path_factory: Any, name: str, **kwargs: Any) -> Path:
    """Build (once per pytest session, shared across modules) a run directory under the session's base temp."""
    import pytest

    base = tmp_path_factory.getbasetemp()
    out = base / f"run-{name}"
    if (out / "edgeft.json").is_file():
        return out
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEFT_CACHE_DIR", str(base / "edgeft-cache"))
        data = base / f"data-{name}"
        if not (data / "train").is_dir():
            make_shapes_dataset(data, size=int(kwargs.pop("data_size", 72)))
        else:
            kwargs.pop("data_size", None)
        build_run(out, data, **kwargs)
    return out


def mobilenet_run(tmp_path_factory: Any) -> Path:
    """A head-trained MobileNetV2 0.35 run at 64 px on the real ImageNet weights (skips without ../shared)."""
    import pytest

    if not MOBILENET_035_WEIGHTS.is_file():
        pytest.skip(f"needs {MOBILENET_035_WEIGHTS} (the shared offline assets are not present)")
    return session_run(tmp_path_factory, "mnv2-64", weights=MOBILENET_035_WEIGHTS, image_size=64, epochs=4)


def session_export(tmp_path_factory: Any, run: Path, name: str = "int8-tflite-onnx") -> tuple[Path, dict[str, Any]]:
    """Export ``run`` to float32 + int8 TFLite and ONNX once per pytest session (shared across modules)."""
    import json

    import pytest

    from edgeft.export import ExportConfig, main_export

    out = tmp_path_factory.getbasetemp() / f"export-{name}"
    report_path = out / "export_report.json"
    if report_path.is_file():
        return out, json.loads(report_path.read_text("utf-8"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEFT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "edgeft-cache"))
        config = ExportConfig.from_flags(run, out, formats=["tflite", "onnx"], int8=True, calib_size=24,
                                         isolate=False, latency_runs=2, max_drop=100.0)
        report = main_export(config)
    return out, report
