"""Partial fine-tuning on cached frozen activations.

With ``--strategy partial`` every layer below the first unfrozen block is frozen and runs in
inference mode (BatchNorm on its moving statistics, dropout off, as Keras' ``base(x,
training=False)``), so its output is a fixed function of the input image. It is computed once
per image and view (the image and its horizontal flip for the training split, the image for
the validation split), held in memory, and only the unfrozen top trains on it. The top is a
second Keras model over the same layer objects as the full classifier, so training it trains
the classifier: the saved model is the full model, with the same outputs.

The top trains in :class:`TopTrainer`'s traced step, with its frozen BatchNorms folded into the
convolutions before them (:func:`folded_forward`).

Augmentation on this path is horizontal flip only (each epoch picks one of the two cached views
per image); rotation, zoom and contrast change every pixel each epoch and need the images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeft.preprocessing import Preprocessing

SUPPORTED_AUGMENTATION = "horizontal flip"
DEFAULT_RAM_SHARE = 0.25  # of physical memory, when --activation-cache-mb is not given
_FALLBACK_BUDGET_MB = 2048  # when the physical memory cannot be read
INFERENCE_BATCH = 256  # rows of cached activations per forward pass of the top, inference mode
EPSILON = 1e-7  # Keras' clipping of probabilities in the cross-entropy


def default_budget_mb() -> int:
    """A quarter of physical memory, in MiB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return _FALLBACK_BUDGET_MB
    return int(total * DEFAULT_RAM_SHARE / 2**20)


@dataclass(frozen=True)
class FrozenSplit:
    """The classifier cut below its first trainable layer."""

    prefix: Any  # image -> the frozen part's outputs the top consumes (a Keras model)
    top: Any  # those outputs -> class probabilities (a Keras model sharing the classifier's layers)
    boundary: tuple[str, ...]  # names of the frozen layers whose outputs cross the cut
    first_trainable: str

    def bytes_per_view(self) -> int:
        """float32 bytes of the cached activations of one image view."""
        return int(sum(4 * int(np.prod(shape[1:])) for shape in _shapes(self.prefix)))


def _shapes(model: Any) -> list[tuple[int, ...]]:
    shapes = model.output_shape
    return list(shapes) if isinstance(shapes, list) else [shapes]


def split_frozen_prefix(model: Any) -> FrozenSplit | None:
    """Cut ``model`` below its first trainable layer; None when nothing below it is frozen."""
    from edgeft.tfcompat import keras, tf

    layers = model.layers
    position = {id(layer): number for number, layer in enumerate(layers)}
    first = next((n for n, layer in enumerate(layers) if n > 0 and layer.trainable), None)
    if first is None or first < 2:
        return None
    crossing: dict[int, Any] = {}
    for layer in layers[first:]:
        for tensor in tf().nest.flatten(layer.input):
            producer = tensor._keras_history.layer
            if position.get(id(producer), first) < first:
                crossing.setdefault(id(tensor), (producer.name, tensor))
    names = tuple(name for name, _ in crossing.values())
    tensors = [tensor for _, tensor in crossing.values()]
    k = keras()
    inputs = tensors if len(tensors) > 1 else tensors[0]
    prefix = k.Model(model.input, inputs, name="frozen_prefix")
    top = k.Model(inputs, model.output, name="trainable_top")
    return FrozenSplit(prefix, top, names, layers[first].name)


class StackedViews:
    """Training images, their horizontal flips (with ``flip``), then validation images, indexed as one array."""

    def __init__(self, train: np.ndarray, val: np.ndarray, flip: bool) -> None:
        self.train, self.val = train, val
        self.views = 2 if flip else 1
        self.shape = (self.views * len(train) + len(val), *train.shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        count = len(self.train)
        rows = np.empty((len(indices), *self.shape[1:]), dtype=self.train.dtype)
        for slot, index in enumerate(indices):
            if index < count:
                rows[slot] = self.train[index]
            elif index < self.views * count:
                rows[slot] = self.train[index - count, :, ::-1]
            else:
                rows[slot] = self.val[index - self.views * count]
        return rows


def cache_bytes(split: FrozenSplit, train_count: int, val_count: int, flip: bool) -> int:
    """Memory the activation cache of these splits takes."""
    return split.bytes_per_view() * ((2 if flip else 1) * train_count + val_count)


@dataclass(frozen=True)
class CachedActivations:
    """The frozen part's outputs: rows ``[0, n)`` training images, ``[n, 2n)`` their flips (``views`` 2),
    then the validation images."""

    arrays: tuple[np.ndarray, ...]
    train_count: int
    views: int

    def validation(self) -> Any:
        """The validation rows, in the form the top model takes."""
        parts = [array[self.views * self.train_count:] for array in self.arrays]
        return parts if len(parts) > 1 else parts[0]

    def rows(self, indices: np.ndarray) -> Any:
        parts = [array[indices] for array in self.arrays]
        return parts if len(parts) > 1 else parts[0]

    @property
    def nbytes(self) -> int:
        return int(sum(array.nbytes for array in self.arrays))


class _Flipped:
    """The horizontal flips of uint8 images, indexed as an array."""

    def __init__(self, images: np.ndarray) -> None:
        self.images, self.shape = images, images.shape

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        return self.images[indices][:, :, ::-1]


def compute_activations(split: FrozenSplit, train: np.ndarray, val: np.ndarray, preprocessing: Preprocessing,
                        batch_size: int, flip: bool,
                        unflipped: tuple[list[np.ndarray], list[np.ndarray]] | None = None,
                        extractor: Any = None) -> CachedActivations:
    """One pass of the frozen part over every training image (and its flip) and every validation image.

    ``unflipped``: the frozen part's outputs for the training and validation images, already
    computed (by the head phase's pass); then only the flips are computed, by ``extractor`` when
    given: the model of that pass (pooled features, then the frozen part's outputs), whose traced
    ``predict`` is reused. One ``predict`` call for all images: each new model traces anew.
    """
    from edgeft.training.pipeline import image_dataset

    def run(images: Any, model: Any = split.prefix, skip: int = 0) -> list[np.ndarray]:
        outputs = model.predict(image_dataset(images, None, preprocessing, batch_size), verbose=0)
        outputs = outputs if isinstance(outputs, list) else [outputs]
        return [np.asarray(a, dtype=np.float32) for a in outputs[skip:]]

    if unflipped is None:
        views = StackedViews(train, val, flip)
        return CachedActivations(tuple(run(views)), len(train), views.views)
    train_parts, val_parts = unflipped
    if not flip:
        flipped = [np.zeros((0, *a.shape[1:]), np.float32) for a in train_parts]
    else:
        flipped = run(_Flipped(train), extractor, 1) if extractor is not None else run(_Flipped(train))
    arrays = tuple(np.concatenate([a, f, v]) for a, f, v in zip(train_parts, flipped, val_parts))
    return CachedActivations(arrays, len(train), 2 if flip else 1)


def activation_dataset(cache: CachedActivations, labels: np.ndarray, batch_size: int, seed: int) -> Any:
    """Shuffled training batches of cached activations; with two views, each image's view is drawn per epoch."""
    from edgeft.tfcompat import tf

    t = tf()
    count = cache.train_count
    rng = np.random.default_rng(seed)
    shapes = [array.shape[1:] for array in cache.arrays]

    def gather(indices: np.ndarray) -> list[np.ndarray]:
        rows = indices + count * rng.integers(0, 2, len(indices)) if cache.views == 2 else indices
        return [array[rows] for array in cache.arrays]

    label_tensor = t.constant(labels, dtype=t.int32)

    def load(indices: Any) -> Any:
        parts = t.numpy_function(gather, [indices], [t.float32] * len(shapes))
        parts = [t.ensure_shape(part, [None, *shape]) for part, shape in zip(parts, shapes)]
        inputs = tuple(parts) if len(parts) > 1 else parts[0]
        return inputs, t.gather(label_tensor, indices)

    dataset = t.data.Dataset.range(count).shuffle(count, seed=seed, reshuffle_each_iteration=True)
    # Sequential map: the flip draws then follow the batch order, so a seed repeats a run exactly.
    return dataset.batch(batch_size).map(load).prefetch(t.data.AUTOTUNE)


class TopTrainer:
    """Trains the unfrozen top on cached activations with one traced step, as Keras' ``fit`` trains it.

    ``fit`` spends per batch a tf.data round trip through ``numpy_function``, callbacks and
    metric objects, several times the top's own forward and backward at 7x7 pixels; this loop
    feeds the step numpy batches and traces it once (batch dimension left open). The step is
    Keras' train step: the compiled loss (sparse categorical cross-entropy, class weights as
    sample weights, averaged over the batch) plus the layers' losses, Adam with Keras' defaults;
    the logs are Keras' (``loss`` the sample-weighted epoch mean of the batch losses, accuracy
    unweighted). Each epoch draws its order and its views from ``(seed, epoch)``, so a resumed
    run repeats an uninterrupted one. It has the part of a Keras model's interface the
    checkpoint callback and the cached evaluation use (``save_weights``, ``load_weights``,
    ``stop_training``, ``predict``).
    """

    def __init__(self, top: Any, boundary: tuple[str, ...], learning_rate: float, seed: int,
                 fold_batchnorm: bool = True) -> None:
        from edgeft.tfcompat import keras, tf

        t, k = tf(), keras()
        self.top, self.seed = top, seed
        self.stop_training = False
        optimizer = k.optimizers.Adam(learning_rate)
        # Its slots made before the step is traced: variables created in a first call make tf.function trace twice.
        optimizer.build(top.trainable_variables)
        loss_function = k.losses.SparseCategoricalCrossentropy(reduction="none")
        specs = [t.TensorSpec((None, *shape[1:]), t.float32) for shape in _input_shapes(top)]
        label_spec = t.TensorSpec((None,), t.int32)
        folded = folded_forward(top, boundary) if fold_batchnorm else None
        self.folded_batchnorms = folded.count if folded is not None else 0

        def call(inputs: list[Any], training: bool) -> Any:
            if folded is not None:
                return folded(inputs, training)
            return top(inputs if len(inputs) > 1 else inputs[0], training=training)

        def correct(labels: Any, probabilities: Any) -> Any:
            return t.reduce_sum(t.cast(t.equal(t.argmax(probabilities, 1, output_type=t.int32), labels), t.float32))

        @t.function(input_signature=[specs, label_spec, t.TensorSpec((None,), t.float32)], autograph=False)
        def train_step(inputs: list[Any], labels: Any, weights: Any) -> tuple[Any, Any]:
            variables = top.trainable_variables
            with t.GradientTape() as tape:
                probabilities = call(inputs, True)
                samples = loss_function(labels, probabilities)
                loss = t.reduce_sum(samples * weights) / t.cast(t.size(labels), t.float32)
                if top.losses:
                    loss += t.add_n(top.losses)
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss, correct(labels, probabilities)

        @t.function(input_signature=[specs], autograph=False)
        def predict_step(inputs: list[Any]) -> Any:
            return call(inputs, False)

        self._train_step, self._predict_step = train_step, predict_step

    def fit_epoch(self, cache: CachedActivations, labels: np.ndarray, batch_size: int, epoch: int,
                  class_weight: dict[int, float] | None = None) -> dict[str, float]:
        """One epoch over the training rows in a shuffled order, one view per image; returns Keras' logs."""
        count = cache.train_count
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(count)
        rows = order + count * rng.integers(0, 2, count) if cache.views == 2 else order
        labels = np.asarray(labels, np.int32)
        weights = (np.asarray([class_weight.get(int(label), 1.0) for label in labels], np.float32)
                   if class_weight else np.ones(count, np.float32))
        total_loss = correct = 0.0
        for start in range(0, count, batch_size):
            batch = order[start:start + batch_size]
            loss, right = self._train_step([array[rows[start:start + batch_size]] for array in cache.arrays],
                                           labels[batch], weights[batch])
            total_loss += float(loss) * len(batch)
            correct += float(right)
        return {"loss": total_loss / count, "accuracy": correct / count}

    def evaluate(self, inputs: Any, labels: np.ndarray) -> dict[str, float]:
        """Mean cross-entropy (Keras' on probabilities: clipped to [1e-7, 1 - 1e-7]) and accuracy, inference mode."""
        probabilities = self.predict(inputs)
        labels = np.asarray(labels, np.int64)
        picked = np.clip(probabilities[np.arange(len(labels)), labels], EPSILON, 1.0 - EPSILON)
        count = max(len(labels), 1)
        return {"loss": float(-np.sum(np.log(picked)) / count),
                "accuracy": float(np.sum(np.argmax(probabilities, 1) == labels) / count)}

    def predict(self, inputs: Any, batch_size: int | None = None, verbose: int = 0) -> np.ndarray:
        """Class probabilities on cached inputs, inference mode, in batches of ``INFERENCE_BATCH`` rows
        (the outputs do not depend on the batching)."""
        arrays = inputs if isinstance(inputs, list) else [inputs]
        parts = [np.asarray(self._predict_step([array[start:start + INFERENCE_BATCH] for array in arrays]))
                 for start in range(0, len(arrays[0]), INFERENCE_BATCH)]
        return np.concatenate(parts).astype(np.float32)

    def save_weights(self, path: str) -> None:
        """The top's weights as an ``.npz`` archive written to ``path`` (whatever its suffix): a few
        milliseconds where Keras' HDF5 writer takes tens, every epoch. The optimizer state is not kept."""
        with open(path, "wb") as handle:
            np.savez(handle, *self.top.get_weights())

    def load_weights(self, path: str) -> None:
        with np.load(path, allow_pickle=False) as saved:
            self.top.set_weights([saved[f"arr_{number}"] for number in range(len(saved.files))])


def _input_shapes(model: Any) -> list[tuple[Any, ...]]:
    shapes = model.input_shape
    return list(shapes) if isinstance(shapes, list) else [shapes]


def train_top(trainer: TopTrainer, callback: Any, cache: CachedActivations, labels: np.ndarray,
              val_labels: np.ndarray, batch_size: int, epochs: int, initial_epoch: int,
              class_weight: dict[int, float] | None) -> None:
    """Epochs ``initial_epoch..epochs-1``, each followed by ``callback.on_epoch_end`` (checkpoints, early stop)."""
    callback.set_model(trainer)
    validation = cache.validation()
    for epoch in range(initial_epoch, epochs):
        logs = trainer.fit_epoch(cache, labels, batch_size, epoch, class_weight)
        logs.update({f"val_{key}": value for key, value in trainer.evaluate(validation, val_labels).items()})
        callback.on_epoch_end(epoch, logs)
        if trainer.stop_training:
            break


@dataclass(frozen=True)
class FoldedForward:
    """The top's forward pass with each frozen BatchNorm folded into the convolution that feeds it.

    A frozen BatchNorm is an affine map per channel, ``x * scale + shift`` with ``scale = gamma /
    sqrt(moving_variance + epsilon)``; after a linear convolution it is the convolution by
    ``kernel * scale`` plus a bias. The product is formed from the convolution's own kernel in
    every step, so the trained variable, its gradient (``scale`` times the folded one) and Adam's
    updates are those of the unfolded top; only the BatchNorm's pass over the activations (and
    its backward) is saved. The layers' other calls are the top's own.
    """

    layers: tuple[Any, ...]  # the top's layers in graph order, input layer excluded
    folds: dict[str, Any]  # convolution name -> the frozen BatchNorm it absorbs
    sources: dict[str, Any]  # layer name -> its input structure, tensors replaced by producer names
    boundary: tuple[str, ...]  # the frozen layers whose outputs are the top's inputs, in input order
    output: str  # the layer whose output is the top's

    @property
    def count(self) -> int:
        return len(self.folds)

    def __call__(self, inputs: list[Any], training: bool) -> Any:
        from edgeft.tfcompat import tf

        nest = tf().nest
        values: dict[str, Any] = dict(zip(self.boundary, inputs))
        absorbed = {batchnorm.name: name for name, batchnorm in self.folds.items()}
        for layer in self.layers:
            if layer.name in absorbed:
                values[layer.name] = values[absorbed[layer.name]]
                continue
            arguments = nest.map_structure(values.__getitem__, self.sources[layer.name])
            if layer.name in self.folds:
                values[layer.name] = _folded_convolution(layer, self.folds[layer.name], arguments)
            else:
                values[layer.name] = layer(arguments, training=training)
        return values[self.output]


_CONVOLUTIONS = ("Conv2D", "DepthwiseConv2D")


def folded_forward(top: Any, boundary: tuple[str, ...]) -> FoldedForward | None:
    """``top``'s forward with frozen BatchNorms folded into their convolutions; None when none folds
    or the graph is not one the folding reads (a layer with several outputs or calls, a name twice)."""
    from edgeft.tfcompat import tf

    from edgeft.training.model import is_batchnorm

    nest = tf().nest
    layers = tuple(layer for layer in top.layers if type(layer).__name__ != "InputLayer")
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names) or len(set(boundary)) != len(boundary):
        return None
    known = set(names) | set(boundary)
    sources: dict[str, Any] = {}
    consumers: dict[str, int] = {}
    try:
        for layer in layers:
            if isinstance(layer.output, (list, tuple)) or not all(_plain_call(node) for node in layer._inbound_nodes):
                return None
            sources[layer.name] = nest.map_structure(lambda tensor: tensor._keras_history.layer.name, layer.input)
            for producer in nest.flatten(sources[layer.name]):
                consumers[producer] = consumers.get(producer, 0) + 1
        output = top.output._keras_history.layer.name
    except (AttributeError, ValueError):
        return None
    if not all(producer in known for producer in consumers) or isinstance(top.output, (list, tuple)):
        return None
    by_name = dict(zip(names, layers))
    folds: dict[str, Any] = {}
    for layer in layers:
        source = sources[layer.name]
        if not is_batchnorm(layer) or layer.trainable or not isinstance(source, str) or source not in by_name:
            continue
        convolution = by_name[source]
        axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        if (type(convolution).__name__ in _CONVOLUTIONS and consumers[source] == 1
                and getattr(convolution, "activation", None) is _linear()
                and getattr(convolution, "data_format", None) == "channels_last"
                and list(axis) in ([-1], [len(layer.input_shape) - 1]) and source != output):
            folds[source] = layer
    if not folds:
        return None
    return FoldedForward(layers, folds, sources, boundary, output)


def _plain_call(node: Any) -> bool:
    """True when the layer was called on its input tensors alone (``training``/``mask`` aside): a wrapped
    TensorFlow op (``x + 3.0``, ``tf.nn.relu6``) keeps its other arguments in the node, which the
    folded pass would not repeat."""
    args, kwargs = getattr(node, "call_args", None), getattr(node, "call_kwargs", None)
    if args is None or kwargs is None or len(args) != 1 or not set(kwargs) <= {"training", "mask"}:
        return False
    return all(hasattr(item, "_keras_history") for item in _flatten(args[0]))


def _flatten(structure: Any) -> list[Any]:
    from edgeft.tfcompat import tf

    return tf().nest.flatten(structure)


def _linear() -> Any:
    from edgeft.tfcompat import keras

    return keras().activations.linear


def _folded_convolution(convolution: Any, batchnorm: Any, inputs: Any) -> Any:
    from edgeft.tfcompat import keras, tf

    t, k = tf(), keras()
    scale = t.math.rsqrt(batchnorm.moving_variance + batchnorm.epsilon)
    if batchnorm.scale:
        scale = scale * batchnorm.gamma
    shift = -batchnorm.moving_mean * scale
    if batchnorm.center:
        shift = shift + batchnorm.beta
    if convolution.use_bias:
        shift = shift + convolution.bias * scale
    if type(convolution).__name__ == "DepthwiseConv2D":
        kernel = convolution.depthwise_kernel
        kernel = kernel * t.reshape(scale, kernel.shape[2:])
        outputs = k.backend.depthwise_conv2d(inputs, kernel, strides=convolution.strides,
                                             padding=convolution.padding, dilation_rate=convolution.dilation_rate,
                                             data_format=convolution.data_format)
    else:
        outputs = convolution.convolution_op(inputs, convolution.kernel * scale)
    return t.nn.bias_add(outputs, shift)
