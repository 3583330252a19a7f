"""Cross-layer equalisation and bias correction applied to a float tf-keras model before int8 conversion.

The algorithm is in :mod:`edgeft.quantization.equalization` (numpy); this module finds the layer
pairs in a flat functional Keras graph, measures the activation statistics it needs on
calibration images, and writes the new weights into a copy of the model. Only BatchNorm
parameters and kernels change, never the graph, so the result converts and exports exactly as
the original does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edgeft.quantization import equalization as eq

# Between the two layers of a pair: layers that commute with a positive per-channel scale.
_TRANSPARENT = ("ZeroPadding2D",)


@dataclass(frozen=True)
class EqualizationPair:
    """Layer 1 (convolution) -> its BatchNorm -> ReLU/ReLU6 -> [padding] -> layer 2 (convolution)."""

    first: str
    first_bn: str
    activation: str
    second: str
    second_bn: str | None


@dataclass(frozen=True)
class EqualizationResult:
    """What :func:`equalize_keras_model` changed."""

    pairs: int
    scaled_channels: int
    corrected_layers: int
    max_scale: float
    min_scale: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for an artifact's metadata)."""
        return {"cross_layer_equalization_pairs": self.pairs, "scaled_channels": self.scaled_channels,
                "bias_corrected_layers": self.corrected_layers, "scale_range": [self.min_scale, self.max_scale]}


def _kind(layer: Any) -> str:
    return type(layer).__name__


def _consumers(model: Any) -> dict[str, list[Any]]:
    consumers: dict[str, list[Any]] = {layer.name: [] for layer in model.layers}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for inbound in node.inbound_layers if isinstance(node.inbound_layers, list) else [node.inbound_layers]:
                consumers.setdefault(inbound.name, []).append(layer)
    return consumers


def _is_conv(layer: Any) -> bool:
    return _kind(layer) in ("Conv2D", "DepthwiseConv2D")


def _relu_limit(layer: Any) -> float | None | bool:
    """ReLU's clip (None for a plain ReLU), or False when the layer is not a ReLU."""
    if _kind(layer) == "ReLU":
        if float(getattr(layer, "negative_slope", 0.0) or 0.0) != 0.0 or float(getattr(layer, "threshold", 0.0)):
            return False
        max_value = layer.max_value
        return None if max_value is None else float(max_value)
    if _kind(layer) == "Activation" and getattr(layer.activation, "__name__", "") in ("relu", "relu6"):
        return eq.RELU6_LIMIT if layer.activation.__name__ == "relu6" else None
    return False


def conv_bn_pairs(model: Any) -> list[tuple[str, str]]:
    """(convolution, BatchNorm) pairs where the BN is the convolution's only consumer."""
    consumers = _consumers(model)
    pairs = []
    for layer in model.layers:
        after = consumers.get(layer.name, [])
        if _is_conv(layer) and len(after) == 1 and _kind(after[0]) == "BatchNormalization":
            pairs.append((layer.name, after[0].name))
    return pairs


def find_pairs(model: Any) -> list[EqualizationPair]:
    """Every conv -> BN -> ReLU(6) -> [padding] -> conv chain with one consumer at each step."""
    consumers = _consumers(model)
    bn_of = dict(conv_bn_pairs(model))
    pairs = []
    for first, first_bn in bn_of.items():
        after = consumers.get(first_bn, [])
        if len(after) != 1 or _relu_limit(after[0]) is False:
            continue
        activation = after[0]
        step = consumers.get(activation.name, [])
        while len(step) == 1 and _kind(step[0]) in _TRANSPARENT:
            step = consumers.get(step[0].name, [])
        if len(step) != 1 or not _is_conv(step[0]) or getattr(step[0], "groups", 1) not in (1, None):
            continue
        second = step[0]
        pairs.append(EqualizationPair(first, first_bn, activation.name, second.name, bn_of.get(second.name)))
    return pairs


def _bn(layer: Any) -> eq.BatchNorm:
    gamma, beta, mean, variance = (np.asarray(w, np.float64) for w in layer.get_weights())
    return eq.BatchNorm(gamma, beta, mean, variance, float(layer.epsilon))


def _set_bn(layer: Any, bn: eq.BatchNorm) -> None:
    layer.set_weights([bn.gamma.astype(np.float32), bn.beta.astype(np.float32), bn.mean.astype(np.float32),
                       bn.variance.astype(np.float32)])


def _statistics(model: Any, tensors: dict[str, Any], pixels: np.ndarray, preprocess: Callable[[np.ndarray], np.ndarray],
                batch: int = 8) -> dict[str, dict[str, np.ndarray]]:
    """Per-channel mean and max of named tensors of ``model`` over ``pixels``."""
    from edgeft.tfcompat import keras

    if not tensors:
        return {}
    names = list(tensors)
    probe = keras().Model(model.inputs, [tensors[name] for name in names])
    sums = {name: 0.0 for name in names}
    peaks: dict[str, Any] = {name: None for name in names}
    count = 0
    for start in range(0, pixels.shape[0], batch):
        outputs = probe(preprocess(pixels[start : start + batch]), training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for name, value in zip(names, outputs):
            value = np.asarray(value, np.float64)
            flat = value.reshape(-1, value.shape[-1])
            sums[name] = sums[name] + flat.sum(axis=0)
            peak = flat.max(axis=0)
            peaks[name] = peak if peaks[name] is None else np.maximum(peaks[name], peak)
        count += int(np.prod(np.asarray(outputs[0]).shape[:-1]))
    return {name: {"mean": sums[name] / max(count, 1), "max": peaks[name]} for name in names}


def equalize_keras_model(model: Any, pixels: np.ndarray, preprocess: Callable[[np.ndarray], np.ndarray],
                         equalize: bool = True, correct_bias: bool = True, margin: float = 1.0) -> tuple[Any, EqualizationResult]:
    """A copy of ``model`` with cross-layer equalisation and/or bias correction applied.

    ``pixels`` are uint8 calibration images (N, H, W, 3); ``preprocess`` maps them to model input.
    The statistics (ReLU6 pre-activation maxima, layer input means) come from these images.
    """
    from edgeft.tfcompat import keras

    k = keras()
    copy = k.models.clone_model(model)
    copy.set_weights(model.get_weights())
    scaled = 0
    smallest, largest = 1.0, 1.0
    pairs = find_pairs(copy) if equalize else []
    if pairs:
        stats = _statistics(copy, {p.first_bn: copy.get_layer(p.first_bn).output for p in pairs}, pixels, preprocess)
        for pair in pairs:
            first, second = copy.get_layer(pair.first), copy.get_layer(pair.second)
            first_bn = _bn(copy.get_layer(pair.first_bn))
            first_depthwise = _kind(first) == "DepthwiseConv2D"
            second_depthwise = _kind(second) == "DepthwiseConv2D"
            kernel1 = np.asarray(first.get_weights()[0], np.float64)
            kernel2 = np.asarray(second.get_weights()[0], np.float64)
            r1 = eq.output_channel_ranges(eq.fold(kernel1, first_bn, first_depthwise), first_depthwise)
            folded2 = eq.fold(kernel2, _bn(copy.get_layer(pair.second_bn)), second_depthwise) if pair.second_bn \
                else kernel2
            r2 = eq.input_channel_ranges(folded2, second_depthwise)
            limit = _relu_limit(copy.get_layer(pair.activation))
            scales = eq.equalization_scales(r1, r2, stats[pair.first_bn]["max"], limit if limit else None, margin)
            _set_bn(copy.get_layer(pair.first_bn), first_bn.scaled(1.0 / scales.astype(np.float64)))
            weights = second.get_weights()  # input channels are axis 2 of both kernel layouts
            weights[0] = (kernel2 * scales.reshape(1, 1, -1, 1)).astype(np.float32)
            second.set_weights(weights)
            scaled += int(np.sum(scales != 1.0))
            smallest, largest = min(smallest, float(scales.min())), max(largest, float(scales.max()))
    corrected = 0
    if correct_bias:
        conv_bns = conv_bn_pairs(copy)
        tensors = {conv: copy.get_layer(conv).input for conv, _ in conv_bns}
        stats = _statistics(copy, tensors, pixels, preprocess)
        for conv, bn_name in conv_bns:
            layer = copy.get_layer(conv)
            if layer.get_weights()[1:]:  # a convolution with its own bias: BN folding differs, leave it
                continue
            depthwise = _kind(layer) == "DepthwiseConv2D"
            bn = _bn(copy.get_layer(bn_name))
            folded = eq.fold(np.asarray(layer.get_weights()[0], np.float64), bn, depthwise)
            delta = eq.bias_correction(folded, stats[conv]["mean"], depthwise)
            _set_bn(copy.get_layer(bn_name), bn.shifted(delta.astype(np.float64)))
            corrected += 1
    return copy, EqualizationResult(len(pairs), scaled, corrected, largest, smallest)
