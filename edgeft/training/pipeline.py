"""tf.data input pipelines over decoded uint8 images held in memory.

Images are gathered by index through ``tf.numpy_function`` rather than embedded as graph
constants, so large sets do not hit the 2 GB graph limit. Augmentation runs as Keras
preprocessing layers in the pipeline only: it is never part of the exported model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeft.preprocessing import Preprocessing


def augmentation_layers(seed: int, flip_only: bool = False) -> Any:
    """Random flip, rotation, zoom and contrast, or flip only (active when called with training=True)."""
    from edgeft.tfcompat import keras

    k = keras()
    # float32 whatever the global policy: under mixed_float16 the contrast op has no CPU kernel.
    layers = [k.layers.RandomFlip("horizontal", seed=seed, dtype="float32")]
    if not flip_only:
        layers += [
            k.layers.RandomRotation(0.1, seed=seed + 1, dtype="float32"),
            k.layers.RandomZoom(0.1, seed=seed + 2, dtype="float32"),
            k.layers.RandomContrast(0.1, seed=seed + 3, dtype="float32"),
        ]
    return k.Sequential(layers, name="augmentation")


def preprocess_batch(images: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """The model input for uint8 ``images`` (N, H, W, 3), as :func:`image_dataset` computes it."""
    batch = images.astype(np.float32)
    if preprocessing.channel_order == "BGR":
        batch = batch[..., ::-1]
    return batch * np.asarray(preprocessing.scale, np.float32) + np.asarray(preprocessing.offset, np.float32)


def image_dataset(
    images: np.ndarray,
    labels: np.ndarray | None,
    preprocessing: Preprocessing,
    batch_size: int,
    shuffle: bool = False,
    augment: bool = False,
    seed: int = 0,
    flip_only: bool = False,
) -> Any:
    """Batches of preprocessed float32 images (and labels when given).

    ``images`` is an array or any object with ``shape``, ``len`` and indexing by an index array.
    """
    from edgeft.tfcompat import tf

    t = tf()
    count = len(images)
    height, width, channels = images.shape[1:]
    scale = np.asarray(preprocessing.scale, np.float32)
    offset = np.asarray(preprocessing.offset, np.float32)
    bgr = preprocessing.channel_order == "BGR"

    def gather(indices: np.ndarray) -> np.ndarray:
        return images[indices]

    dataset = t.data.Dataset.range(count)
    if shuffle:
        dataset = dataset.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    label_tensor = t.constant(labels, dtype=t.int32) if labels is not None else None
    augmenter = augmentation_layers(seed, flip_only) if augment else None

    def load(indices: Any) -> Any:
        pixels = t.numpy_function(gather, [indices], t.uint8)
        pixels = t.ensure_shape(pixels, [None, height, width, channels])
        batch = t.cast(pixels, t.float32)
        if augmenter is not None:
            batch = t.clip_by_value(augmenter(batch, training=True), 0.0, 255.0)
        if bgr:
            batch = batch[..., ::-1]
        batch = batch * scale + offset
        if label_tensor is None:
            return batch
        return batch, t.gather(label_tensor, indices)

    dataset = dataset.map(load, num_parallel_calls=t.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(t.data.AUTOTUNE)


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """Inverse-frequency weights (``n / (k * count)``), as sklearn's "balanced"."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    counts[counts == 0] = 1.0
    weights = len(labels) / (num_classes * counts)
    return {i: float(w) for i, w in enumerate(weights)}
