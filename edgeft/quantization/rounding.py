"""Weight rounding chosen for each layer's output, not round-to-nearest (after Nagel et al., 2020, "Up or
Down? Adaptive Rounding for Post-Training Quantization").

int8 per-channel quantization rounds each weight to the nearest step of its channel's grid. The error
a layer's output then carries is ``dW . x`` over its input patches ``x``: its mean square is the
quadratic form ``dW^T G dW`` with ``G = E[x x^T]``, the patch second moment measured on calibration
images. Rounding some weights the other way (up instead of down or back) can make that much smaller
than nearest rounding does, because the errors of neighbouring taps cancel. This module chooses,
per output channel, floor or ceiling for each weight by greedy coordinate descent on that quadratic
form (starting from nearest rounding, flipping a weight while it lowers the error), and writes the
chosen values into a copy of the Keras model, already ON the quantization grid: the converter then
rounds each weight to exactly the chosen step, so the result stays a plain full-integer model
(Edge TPU safe) and nothing changes in the graph.

The grid is the converter's: the following BatchNorm's multiplier folded into the kernel, and
per output channel, symmetric: int8 levels -127..127 with scale ``max|w| / 127`` (TFLite and
onnxruntime's int8 weights) or uint8 with zero point 128, levels -128..127 around it and scale
``max|w| / 127.5`` (onnxruntime's uint8 weights). The weight at each channel's extremes keeps its
float value, so the converter derives the same scale from the new weights and rounds it itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Sequence

import numpy as np

from edgeft.quantization.keras_equalization import conv_bn_pairs

DEFAULT_SAMPLES = 32  # calibration images the statistics come from
POSITIONS_PER_IMAGE = 512  # patch positions sampled per image and layer (keeps the statistics small)
SWEEPS = 4


class WeightRounding(str, Enum):
    """How int8 weights are rounded to their grid (post-training int8, and the weights QAT starts from).

    ``adaptive`` (default): per layer, the rounding that lowers the layer's output error on
    calibration images (:func:`adaptive_rounding`), written into the model, so the converter or
    tfmot's quantizer takes exactly those steps. ``nearest``: the converters' and tfmot's own rounding.
    """

    ADAPTIVE = "adaptive"
    NEAREST = "nearest"


class WeightGrid(str, Enum):
    """The per-channel weight grid a converter uses."""

    INT8_SYMMETRIC = "int8_symmetric"  # TFLite; onnxruntime QInt8 weights
    UINT8_SYMMETRIC = "uint8_symmetric"  # onnxruntime QUInt8 weights (zero point 128)


@dataclass(frozen=True)
class RoundingResult:
    """What :func:`adaptive_rounding` changed."""

    grid: WeightGrid
    layers: int
    flipped: int  # weights rounded away from nearest
    weights: int
    error_ratio: float  # sum over layers of the new output error / that of nearest rounding

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (artifact metadata)."""
        return {"method": "adaptive rounding (per-layer output error, greedy)", "grid": self.grid.value,
                "layers": self.layers, "flipped_weights": self.flipped, "weights": self.weights,
                "layer_error_ratio": round(self.error_ratio, 4)}


def channel_grid(weights: np.ndarray, grid: WeightGrid, per_tensor: bool = False) -> tuple[np.ndarray, float, float]:
    """Per row of ``weights`` (channels, n): the scale; and the lowest and highest level (zero point removed).

    ``per_tensor``: every row gets the scale of the largest weight of all (tfmot's grid for depthwise
    kernels in QAT).
    """
    peak = np.max(np.abs(np.asarray(weights, np.float64)), axis=1)
    if per_tensor:
        peak = np.full_like(peak, peak.max())
    if grid == WeightGrid.INT8_SYMMETRIC:
        return np.where(peak > 0, peak / 127.0, 1.0), -127.0, 127.0
    return np.where(peak > 0, peak / 127.5, 1.0), -128.0, 127.0


def nearest(weights: np.ndarray, grid: WeightGrid, per_tensor: bool = False) -> np.ndarray:
    """``weights`` (channels, n) rounded to the nearest point of each channel's grid (``per_tensor``: one
    grid for all channels)."""
    scale, low, high = channel_grid(weights, grid, per_tensor)
    return np.clip(np.round(weights / scale[:, None]), low, high) * scale[:, None]


def round_channels(weights: np.ndarray, second_moment: np.ndarray, grid: WeightGrid,
                   sweeps: int = SWEEPS, per_tensor: bool = False) -> tuple[np.ndarray, int]:
    """Grid values for ``weights`` (channels, n) that lower ``dW^T G dW`` per channel; flipped count.

    ``second_moment``: ``G``, (n, n) shared by every channel or (channels, n, n) one per channel.
    ``per_tensor``: one grid for every channel (:func:`channel_grid`).
    """
    weights = np.asarray(weights, np.float64)
    scale, low, high = channel_grid(weights, grid, per_tensor)
    exact = weights / scale[:, None]
    levels = np.clip(np.round(exact), low, high)
    start = levels.copy()
    other = np.where(exact >= levels, levels + 1, levels - 1)  # the other neighbour of each weight
    movable = (other >= low) & (other <= high) & (np.abs(exact - levels) > 1e-9)
    extreme = np.zeros_like(movable)  # the weight that fixes a scale keeps its value: the quantizer rounds it
    if per_tensor:
        extreme.flat[np.argmax(np.abs(exact))] = True
    else:
        extreme[np.arange(len(weights)), np.argmax(np.abs(exact), axis=1)] = True
    movable &= ~extreme
    shared = second_moment.ndim == 2
    moment = np.asarray(second_moment, np.float64)
    error = (levels - exact) * scale[:, None]  # dW
    gradient = error @ moment if shared else np.einsum("cn,cnm->cm", error, moment)  # G dW per channel
    diagonal = np.diag(moment)[None, :] if shared else np.einsum("cnn->cn", moment)
    for _ in range(sweeps):
        changed = False
        for index in range(weights.shape[1]):
            step = (other[:, index] - levels[:, index]) * scale
            gain = 2.0 * step * gradient[:, index] + step * step * diagonal[:, index]
            flip = movable[:, index] & (gain < -1e-18)
            if not flip.any():
                continue
            changed = True
            delta = np.where(flip, step, 0.0)
            gradient += delta[:, None] * (moment[index][None, :] if shared else moment[:, index, :])
            old = levels[:, index].copy()
            levels[:, index] = np.where(flip, other[:, index], old)
            other[:, index] = np.where(flip, old, other[:, index])
        if not changed:
            break
    values = np.where(extreme, weights, levels * scale[:, None])
    return values, int(np.sum(levels != start))


def layer_error(weights: np.ndarray, values: np.ndarray, second_moment: np.ndarray) -> float:
    """``sum_c (values - weights)_c^T G (values - weights)_c``: the output error the rounding leaves."""
    delta = np.asarray(values, np.float64) - np.asarray(weights, np.float64)
    if second_moment.ndim == 2:
        return float(np.einsum("cn,nm,cm->", delta, second_moment, delta))
    return float(np.einsum("cn,cnm,cm->", delta, second_moment, delta))


def _kind(layer: Any) -> str:
    return type(layer).__name__


def _roundable(layer: Any) -> bool:
    """A plain 2-D convolution (no dilation, no groups) with weights: the patch statistics below describe it."""
    return (_kind(layer) in ("Conv2D", "DepthwiseConv2D") and bool(layer.get_weights())
            and tuple(layer.dilation_rate) == (1, 1) and int(getattr(layer, "groups", 1) or 1) == 1
            and getattr(layer, "depth_multiplier", 1) == 1)


def _padded(values: np.ndarray, layer: Any) -> np.ndarray:
    """The layer's input as its convolution sees it (TensorFlow's 'same' padding added)."""
    if getattr(layer, "padding", "valid") != "same":
        return values
    pads = []
    for axis, (size, stride) in enumerate(zip(layer.kernel_size, layer.strides)):
        length = values.shape[1 + axis]
        total = max((-(-length // stride) - 1) * stride + size - length, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(values, [(0, 0), *pads, (0, 0)])


def _patches(values: np.ndarray, layer: Any, rng: np.random.Generator) -> np.ndarray:
    """Sampled input patches (samples, kh, kw, channels) of a convolution's input (N, H, W, C)."""
    values = _padded(values, layer)
    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    out_h = (values.shape[1] - kh) // sh + 1
    out_w = (values.shape[2] - kw) // sw + 1
    count = min(POSITIONS_PER_IMAGE, out_h * out_w)
    rows = []
    for image in values:
        chosen = rng.choice(out_h * out_w, size=count, replace=False)
        ys, xs = (chosen // out_w) * sh, (chosen % out_w) * sw
        offsets_y, offsets_x = np.arange(kh), np.arange(kw)
        rows.append(image[ys[:, None, None] + offsets_y[None, :, None], xs[:, None, None] + offsets_x[None, None, :]])
    return np.concatenate(rows)


def _bn_multiplier(layer: Any) -> np.ndarray:
    gamma, _, _, variance = (np.asarray(w, np.float64) for w in layer.get_weights())
    return gamma / np.sqrt(variance + float(layer.epsilon))


def adaptive_rounding(model: Any, pixels: np.ndarray, preprocess: Callable[[np.ndarray], np.ndarray],
                      grid: WeightGrid = WeightGrid.INT8_SYMMETRIC, samples: int = DEFAULT_SAMPLES,
                      batch: int = 8, seed: int = 0, skip: Sequence[str] = (),
                      qat_grids: bool = False) -> tuple[Any, RoundingResult]:
    """A copy of ``model`` whose convolution kernels sit on ``grid`` with output-aware rounding.

    ``pixels`` are uint8 calibration images; the first ``samples`` give each layer's input
    statistics (measured in the float model). Layers: every Conv2D and DepthwiseConv2D (with the
    BatchNorm that follows folded in for the rounding, as the converters fold it) except those named
    in ``skip`` (layers kept in float). ``qat_grids``: the grids tfmot's QAT puts the kernels on
    instead, each before BatchNorm folding, depthwise kernels per tensor (Conv2D kernels per channel
    get the same levels either way: folding scales a channel and its step alike).
    """
    from edgeft.tfcompat import keras

    k = keras()
    copy = k.models.clone_model(model)
    copy.set_weights(model.get_weights())
    bn_after = dict(conv_bn_pairs(copy))
    layers = [layer for layer in copy.layers if _roundable(layer) and layer.name not in skip]
    rng = np.random.default_rng(seed)
    moments: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    probe = k.Model(copy.inputs, [layer.input for layer in layers])
    for start in range(0, min(samples, len(pixels)), batch):
        inputs = probe(preprocess(pixels[start : min(start + batch, samples)]), training=False)
        inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        for layer, value in zip(layers, inputs):
            patches = _patches(np.asarray(value, np.float32), layer, rng)  # (P, kh, kw, C)
            if _kind(layer) == "DepthwiseConv2D":
                flat = patches.reshape(len(patches), -1, patches.shape[-1])  # (P, taps, C)
                moment = np.einsum("ptc,puc->ctu", flat, flat, optimize=True)
            else:
                flat = patches.reshape(len(patches), -1)  # (P, kh*kw*C), the kernel's (kh, kw, in) order
                moment = flat.T @ flat
            moments[layer.name] = moments.get(layer.name, 0.0) + np.asarray(moment, np.float64)
            counts[layer.name] = counts.get(layer.name, 0) + len(patches)
    flipped = total = 0
    before = after = 0.0
    for layer in layers:
        weights = layer.get_weights()
        kernel = np.asarray(weights[0], np.float64)
        depthwise = _kind(layer) == "DepthwiseConv2D"
        per_tensor = qat_grids and depthwise
        multiplier = _bn_multiplier(copy.get_layer(bn_after[layer.name])) if layer.name in bn_after and not per_tensor \
            else np.ones(kernel.shape[2] if depthwise else kernel.shape[3])
        moment = moments[layer.name] / max(counts[layer.name], 1)
        if depthwise:  # (kh, kw, C, 1) -> rows (C, taps)
            rows = (kernel[..., 0] * multiplier).reshape(-1, kernel.shape[2]).T
        else:  # (kh, kw, in, out) -> rows (out, kh*kw*in)
            rows = (kernel * multiplier).reshape(-1, kernel.shape[3]).T
        values, count = round_channels(rows, moment, grid, per_tensor=per_tensor)
        before += layer_error(rows, nearest(rows, grid, per_tensor), moment)
        after += layer_error(rows, nearest(values, grid, per_tensor), moment)
        flipped += count
        total += rows.size
        if depthwise:
            new_kernel = (values.T.reshape(kernel.shape[:3]) / multiplier)[..., None]
        else:
            new_kernel = values.T.reshape(kernel.shape) / multiplier
        layer.set_weights([new_kernel.astype(np.float32), *weights[1:]])
    ratio = after / before if before > 0 else 1.0
    return copy, RoundingResult(grid, len(layers), flipped, total, ratio)
