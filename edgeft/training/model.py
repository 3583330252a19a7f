"""Building the classifier as one flat functional graph, and choosing which layers train.

The backbone is built on the classifier's own input tensor, so the saved model has no
nested sub-model: tfmot's quantize_model refuses a model inside a model, and the
converters handle a flat graph best.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeft.backbones import BackboneSpec
from edgeft.training.phases import TRAINING_BN_MOMENTUM, Trainable

HEAD_LAYERS = ("pool", "dropout", "predictions")
INPUT_NAME = "image"


def build_classifier(
    spec: BackboneSpec,
    alpha: float | None,
    image_size: int,
    num_classes: int,
    weights_path: Path | None,
    dropout: float,
) -> Any:
    """Backbone + global average pooling + dropout + softmax, flat, on a float input already preprocessed."""
    return add_head(build_backbone(spec, alpha, image_size, weights_path), spec, num_classes, dropout)


def build_backbone(spec: BackboneSpec, alpha: float | None, image_size: int, weights_path: Path | None) -> tuple[Any, Any]:
    """The input tensor and the pooled backbone features (the part that does not depend on the classes)."""
    from edgeft.tfcompat import keras

    k = keras()
    inputs = k.Input(shape=(image_size, image_size, 3), name=INPUT_NAME)
    base = spec.construct(inputs, weights=str(weights_path) if weights_path else None, alpha=alpha)
    return inputs, k.layers.GlobalAveragePooling2D(name="pool")(base.output)


def add_head(backbone: tuple[Any, Any], spec: BackboneSpec, num_classes: int, dropout: float) -> Any:
    """The classifier: :func:`build_backbone`'s output, dropout and a softmax layer, as one flat model."""
    from edgeft.tfcompat import keras

    k = keras()
    inputs, pooled = backbone
    features = k.layers.Dropout(dropout, name="dropout")(pooled)
    outputs = k.layers.Dense(num_classes, activation="softmax", name="predictions", dtype="float32")(features)
    return k.Model(inputs, outputs, name=f"edgeft_{spec.name}")


def backbone_layers(model: Any) -> list[Any]:
    """The backbone's layers, input layer and head excluded, in graph order."""
    return [layer for layer in model.layers if layer.name not in HEAD_LAYERS and layer.name != INPUT_NAME]


def is_batchnorm(layer: Any) -> bool:
    return type(layer).__name__ in ("BatchNormalization", "SyncBatchNormalization")


def set_trainable(model: Any, spec: BackboneSpec, trainable: Trainable, unfreeze: int, batchnorm_trains: bool) -> int:
    """Freeze/unfreeze layers for a phase; return how many backbone blocks train.

    Frozen BatchNorm layers run in inference mode (tf-keras semantics of ``trainable=False``).
    """
    layers = backbone_layers(model)
    blocks = spec.block_of([layer.name for layer in layers])
    ordered_blocks = list(dict.fromkeys(blocks))
    if trainable is Trainable.HEAD:
        chosen: set[str] = set()
    elif trainable is Trainable.ALL:
        chosen = set(ordered_blocks)
    else:
        candidates = [b for b in ordered_blocks if b != "stem"]
        chosen = set(candidates[-unfreeze:]) if unfreeze > 0 else set()
    for layer, block in zip(layers, blocks):
        trains = block in chosen
        if is_batchnorm(layer):
            trains = trains and batchnorm_trains
            if trains:
                layer.momentum = TRAINING_BN_MOMENTUM
        layer.trainable = trains
    for name in HEAD_LAYERS:
        model.get_layer(name).trainable = True
    return len(chosen)


def count_blocks(model: Any, spec: BackboneSpec) -> int:
    """Number of unfreezable blocks in the backbone (stem excluded)."""
    blocks = spec.block_of([layer.name for layer in backbone_layers(model)])
    return len([b for b in dict.fromkeys(blocks) if b != "stem"])


def recalibrate_batchnorm(model: Any, batches: Any, max_batches: int = 200) -> int:
    """Re-estimate BatchNorm moving statistics as the exact average over training batches.

    After training with trainable BatchNorm, the exponential moving averages lag the
    weights; a forward pass in training mode with momentum k/(k+1) at step k replaces them
    with the plain mean of the batch statistics under the final weights. Returns the number
    of batches used.
    """
    layers = [layer for layer in model.layers if is_batchnorm(layer)]
    if not layers:
        return 0
    saved = [(layer.trainable, layer.momentum) for layer in layers]
    for layer in layers:
        layer.trainable = True
    used = 0
    try:
        for step, images in enumerate(batches):
            if step >= max_batches:
                break
            for layer in layers:
                layer.momentum = step / (step + 1.0)
            model(images, training=True)
            used += 1
    finally:
        for layer, (was_trainable, momentum) in zip(layers, saved):
            layer.trainable = was_trainable
            layer.momentum = momentum
    return used
