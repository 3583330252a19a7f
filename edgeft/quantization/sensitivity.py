"""Which layers' int8 weight rounding moves a model's output the most, measured one layer at a time.

Measured on fresh MobileNetV2 0.35 head runs at 224 px (hymenoptera): a model whose weights alone
are rounded to int8 (activations float, simulated here) and TFLite's 16x8 model (int16
activations, int8 weights) miss the float model's logit margin by the same RMS (0.41 / 0.41 and
0.39 / 0.39 on two runs), the full int8 model by 0.44 / 0.39: weight rounding, not activation
rounding, makes most of the error. Its share is concentrated: the first depthwise convolution
alone gave 37 % of the logit error, the first four layers 68 %. The per-layer report of the
TFLite debugger (RMSE in quantization steps of each op's output) ranks layers by the size of
their own activation error, not by what reaches the output, and missed them.

Weight quantization is simulated as the TFLite converter and onnxruntime's per-channel mode do
it (BatchNorm folded into the kernel, symmetric per output channel, ``max|w| / 127``), see
:mod:`edgeft.quantization.equalization`. Each layer's figure is the mean squared error of the
model's logits (the last Dense layer before its softmax) on calibration images when only that
layer's weights are rounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edgeft.quantization import equalization as eq
from edgeft.quantization.keras_equalization import conv_bn_pairs

DEFAULT_SAMPLES = 64  # calibration images the ranking runs on
_WEIGHTED = ("Conv2D", "DepthwiseConv2D", "Dense")


@dataclass(frozen=True)
class LayerSensitivity:
    """How much rounding one layer's weights to int8 moves the model's logits."""

    layer: str
    output_mse: float  # mean squared logit error, only this layer's weights rounded
    share: float  # of the sum over all layers

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"layer": self.layer, "output_mse": round(self.output_mse, 8), "share": round(self.share, 4)}


def _kind(layer: Any) -> str:
    return type(layer).__name__


def rounded_kernel(kernel: np.ndarray, kind: str, bn_multiplier: np.ndarray | None) -> np.ndarray:
    """``kernel`` as int8 per-channel quantization leaves it, with the following BN folded in for the rounding."""
    depthwise = kind == "DepthwiseConv2D"
    weights = np.asarray(kernel, np.float64)
    if kind == "Dense":
        return eq.quantize_per_channel(weights[None, None], False)[0, 0].astype(np.float32)
    if bn_multiplier is None:
        return eq.quantize_per_channel(weights, depthwise).astype(np.float32)
    shape = (1, 1, -1, 1) if depthwise else (1, 1, 1, -1)
    multiplier = np.asarray(bn_multiplier, np.float64).reshape(shape)
    return (eq.quantize_per_channel(weights * multiplier, depthwise) / multiplier).astype(np.float32)


def _bn_multiplier(layer: Any) -> np.ndarray:
    gamma, _, _, variance = (np.asarray(w, np.float64) for w in layer.get_weights())
    return gamma / np.sqrt(variance + float(layer.epsilon))


def _logits_function(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """Inputs -> logits: the last Dense layer's pre-softmax output when the model ends in one, else the outputs."""
    from edgeft.tfcompat import keras

    last = model.layers[-1]
    if _kind(last) == "Dense" and getattr(last.activation, "__name__", "") == "softmax":
        features = keras().Model(model.inputs, last.input)

        def logits(inputs: np.ndarray) -> np.ndarray:
            kernel, bias = (np.asarray(w, np.float64) for w in last.get_weights())
            return np.asarray(features(inputs, training=False), np.float64) @ kernel + bias

        return logits
    return lambda inputs: np.asarray(model(inputs, training=False), np.float64)


def weight_rounding_sensitivity(model: Any, pixels: np.ndarray, preprocess: Callable[[np.ndarray], np.ndarray],
                                samples: int = DEFAULT_SAMPLES, batch: int = 32) -> tuple[LayerSensitivity, ...]:
    """Every convolution and Dense layer of ``model``, ranked by the logit error its int8 weights alone cause
    on the first ``samples`` of ``pixels`` (uint8 images; ``preprocess`` maps them to model input), worst first.

    ``model`` is left unchanged (a copy is measured).
    """
    from edgeft.tfcompat import keras

    copy = keras().models.clone_model(model)
    copy.set_weights(model.get_weights())
    inputs = preprocess(pixels[:samples])
    logits = _logits_function(copy)

    def output() -> np.ndarray:
        return np.concatenate([logits(inputs[start : start + batch]) for start in range(0, len(inputs), batch)])

    reference = output()
    bn_after = dict(conv_bn_pairs(copy))
    errors: dict[str, float] = {}
    for layer in copy.layers:
        if _kind(layer) not in _WEIGHTED or not layer.get_weights():
            continue
        original = layer.get_weights()
        multiplier = _bn_multiplier(copy.get_layer(bn_after[layer.name])) if layer.name in bn_after else None
        layer.set_weights([rounded_kernel(original[0], _kind(layer), multiplier), *original[1:]])
        errors[layer.name] = float(np.mean((output() - reference) ** 2))
        layer.set_weights(original)
    total = sum(errors.values()) or 1.0
    ranked = sorted(errors.items(), key=lambda item: -item[1])
    return tuple(LayerSensitivity(name, value, value / total) for name, value in ranked)
