"""Fixtures shared by the test suite and the benchmarks: a synthetic image set and a hand-built run.

Neither needs the training package: :func:`build_head_run` trains only a softmax head on a
frozen backbone and writes the run directory with :func:`edgeft.run.write_run_dir`, the
writer ``edgeft finetune`` and ``edgeft qat`` use, so export, calibration and QAT tests
exercise exactly the run-directory contract.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 70, 220),
}


@dataclass(frozen=True)
class ShapesSpec:
    """What :func:`write_shapes` draws: one class per name, a disc (even index) or a square (odd)."""

    classes: tuple[str, ...] = ("red", "green", "blue")
    per_class: int = 12
    val_per_class: int = 0  # > 0: DATA/{train,val}/<class>/; 0: DATA/<class>/
    size: int = 72
    seed: int = 0
    suffixes: tuple[str, ...] = ("png",)  # the n-th image of a class is written as suffixes[n % len]


def write_shapes(root: Path, spec: ShapesSpec = ShapesSpec()) -> Path:
    """Write a labelled synthetic set under ``root``: noisy backgrounds with a shape per class; return ``root``.

    The colour comes from the class name when it is red, green or blue, else it is drawn from the
    seeded generator, so the same spec always writes the same pixels.
    """
    from PIL import Image

    rng = np.random.default_rng(spec.seed)
    size = spec.size
    yy, xx = np.mgrid[0:size, 0:size]
    splits = (("train", spec.per_class), ("val", spec.val_per_class)) if spec.val_per_class else (("", spec.per_class),)
    for split, count in splits:
        for index, name in enumerate(spec.classes):
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
                suffix = spec.suffixes[n % len(spec.suffixes)]
                Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{name}_{n:03d}.{suffix}")
    return root


@dataclass(frozen=True)
class HeadRunSpec:
    """The model and training of :func:`build_head_run`."""

    backbone: str = "mobilenet_v2"
    alpha: float | None = 0.35
    image_size: int = 64
    weights: Path | None = None  # None: random backbone with BatchNorm statistics set from the data
    epochs: int = 3
    seed: int = 0
    learning_rate: float = 3e-3


def _set_bn_statistics_from_data(model: Any, images: np.ndarray) -> None:
    """Make every BatchNormalization layer's moving statistics the statistics of ``images``."""
    from edgeft.tfcompat import keras

    bns = [layer for layer in model.layers if isinstance(layer, keras().layers.BatchNormalization)]
    saved = [layer.momentum for layer in bns]
    for layer in bns:
        layer.momentum = 0.0
    model(images, training=True)
    for layer, momentum in zip(bns, saved):
        layer.momentum = momentum


def build_head_run(out: Path, data_dir: Path, spec: HeadRunSpec = HeadRunSpec()) -> Path:
    """Train the head of a flat backbone model on ``data_dir`` and write a complete float run directory."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from edgeft.backbones import get_backbone
    from edgeft.data import load_dataset
    from edgeft.run import RunManifest, write_run_dir
    from edgeft.tfcompat import keras, package_versions, tf

    tf().random.set_seed(spec.seed)
    k = keras()
    backbone = get_backbone(spec.backbone)
    index, splits = load_dataset(data_dir, spec.image_size, seed=spec.seed)
    train, val = splits["train"], splits["val"]
    x_train = backbone.preprocessing.apply(train.images)
    x_val = backbone.preprocessing.apply(val.images)

    image = k.Input(shape=(spec.image_size, spec.image_size, 3), name="image", dtype="float32")
    base = backbone.construct(image, str(spec.weights) if spec.weights else None, spec.alpha)
    if spec.weights is None:
        _set_bn_statistics_from_data(base, x_train[:64])
    for layer in base.layers:
        layer.trainable = False
    x = k.layers.GlobalAveragePooling2D(name="pool")(base.output)
    x = k.layers.Dropout(0.2, name="dropout")(x)
    outputs = k.layers.Dense(len(index.class_names), activation="softmax", name="predictions", dtype="float32")(x)
    model = k.Model(image, outputs, name=f"edgeft_{backbone.name}")
    model.compile(optimizer=k.optimizers.Adam(spec.learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x_train, train.labels, epochs=spec.epochs, batch_size=16, verbose=0, shuffle=True)
    probs = model.predict(x_val, verbose=0, batch_size=32)
    val_accuracy = float(np.mean(np.argmax(probs, axis=1) == val.labels))

    rows = [{"phase": "head", "epoch": epoch + 1, "loss": round(float(loss), 6), "accuracy": round(float(acc), 6)}
            for epoch, (loss, acc) in enumerate(zip(history.history["loss"], history.history["accuracy"]))]
    manifest = RunManifest(
        kind="float", backbone=backbone.name, alpha=spec.alpha, image_size=spec.image_size,
        preprocessing=backbone.preprocessing, class_names=index.class_names, data_dir=str(index.root),
        splits={"train": train.samples, "val": val.samples}, dataset=index.report(splits), strategy="head",
        weights=str(spec.weights) if spec.weights else "none",
        hyperparameters={"epochs": spec.epochs, "learning_rate": spec.learning_rate}, seed=spec.seed,
        versions=package_versions(), created="2026-11-25T00:00:00Z",
    )
    write_run_dir(out, model, manifest, {"val_accuracy": val_accuracy}, rows)
    return out
