"""Cross-layer equalisation and bias correction on numpy weights (Nagel et al., 2019, "Data-Free
Quantization Through Weight Equalization and Bias Correction").

Framework-free: every function takes and returns numpy arrays in Keras' layouts (convolution
kernels ``(kh, kw, in, out)``, depthwise kernels ``(kh, kw, channels, 1)``). The Keras side lives
in :mod:`edgeft.quantization.keras_equalization`.

- Equalisation rescales output channel ``c`` of layer 1 by ``1 / s_c`` and input channel ``c`` of
  layer 2 by ``s_c``; with a positively homogeneous activation between them the network computes
  the same function. The paper's ``s_c = sqrt(r1_c / r2_c)`` gives both layers the range
  ``sqrt(r1_c * r2_c)``. ReLU6 is not homogeneous: ``6`` is a clip in the old units. The paper
  swaps ReLU6 for ReLU, which changes the float model; here instead a channel whose
  pre-activation (measured on calibration data) reaches the clip keeps ``s_c = 1``, and one that
  stays below it may only be scaled while it stays below (``s_c >= max_c / 6``), so the float
  model's outputs are unchanged on that data.
- Bias correction: int8 weights ``W_q = W + e`` shift each output by ``e . E[x]``; subtracting
  that from the bias (the BatchNorm offset, which folds into the bias) removes the shift. ``E[x]``
  is the layer input's per-channel mean (empirical, from calibration images).

Weight quantization is simulated as the TFLite converter and onnxruntime's per-channel mode do
it: symmetric, per output channel, ``scale = max|w| / 127``, values in ``[-127, 127]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RELU6_LIMIT = 6.0


@dataclass(frozen=True)
class BatchNorm:
    """Inference-mode BatchNormalization parameters (one value per channel)."""

    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    variance: np.ndarray
    epsilon: float = 1e-3

    @property
    def multiplier(self) -> np.ndarray:
        """``gamma / sqrt(variance + epsilon)``: what the folded kernel is multiplied by per channel."""
        return self.gamma / np.sqrt(self.variance + self.epsilon)

    @property
    def folded_bias(self) -> np.ndarray:
        """The bias a BN folded into the preceding layer (without bias) leaves."""
        return self.beta - self.mean * self.multiplier

    def scaled(self, factor: np.ndarray) -> "BatchNorm":
        """The BN whose output channel ``c`` is ``factor_c`` times this one's."""
        return BatchNorm(self.gamma * factor, self.beta * factor, self.mean, self.variance, self.epsilon)

    def shifted(self, delta: np.ndarray) -> "BatchNorm":
        """The BN whose output is this one's plus ``delta`` per channel."""
        return BatchNorm(self.gamma, self.beta + delta, self.mean, self.variance, self.epsilon)


def fold(kernel: np.ndarray, bn: BatchNorm, depthwise: bool) -> np.ndarray:
    """The kernel with the following BN's multiplier folded in (per output channel)."""
    if depthwise:
        return kernel * bn.multiplier[None, None, :, None]
    return kernel * bn.multiplier[None, None, None, :]


def output_channel_ranges(kernel: np.ndarray, depthwise: bool) -> np.ndarray:
    """max|w| per output channel."""
    if depthwise:
        return np.max(np.abs(kernel), axis=(0, 1, 3))
    return np.max(np.abs(kernel), axis=(0, 1, 2))


def input_channel_ranges(kernel: np.ndarray, depthwise: bool) -> np.ndarray:
    """max|w| per input channel (axis 2 in both layouts; for a depthwise kernel it is also the output channel)."""
    del depthwise  # same axis for both layouts; kept for symmetry with output_channel_ranges
    return np.max(np.abs(kernel), axis=(0, 1, 3))


def quantize_per_channel(kernel: np.ndarray, depthwise: bool, bits: int = 8) -> np.ndarray:
    """``kernel`` after symmetric per-output-channel quantization and dequantization."""
    levels = 2 ** (bits - 1) - 1
    ranges = output_channel_ranges(kernel, depthwise)
    scale = np.where(ranges > 0, ranges / levels, 1.0)
    shape = (1, 1, -1, 1) if depthwise else (1, 1, 1, -1)
    scale = scale.reshape(shape)
    return np.clip(np.round(kernel / scale), -levels, levels) * scale


def equalization_scales(r1: np.ndarray, r2: np.ndarray, preactivation_max: np.ndarray | None = None,
                        limit: float | None = RELU6_LIMIT, margin: float = 1.0, max_scale: float = 1e3) -> np.ndarray:
    """Per-channel ``s`` (layer 1 output / s, layer 2 input * s) that equalises the two ranges.

    With ``limit`` (a clipping activation such as ReLU6) and ``preactivation_max`` (per channel, the
    largest layer-1 output seen), channels that reach ``limit / margin`` keep ``s = 1`` and the others
    are kept below the clip: ``s >= margin * max / limit``.
    """
    r1 = np.asarray(r1, np.float64)
    r2 = np.asarray(r2, np.float64)
    valid = (r1 > 0) & (r2 > 0)
    scales = np.ones_like(r1)
    scales[valid] = np.sqrt(r1[valid] / r2[valid])
    scales = np.clip(scales, 1.0 / max_scale, max_scale)
    if limit is not None:
        if preactivation_max is None:
            raise ValueError("a clipping activation needs the pre-activation maxima")
        peak = np.asarray(preactivation_max, np.float64) * margin
        clipped = peak >= limit
        scales = np.where(clipped, 1.0, np.maximum(scales, peak / limit))
    return scales.astype(np.float32)


def bias_correction(folded_kernel: np.ndarray, input_mean: np.ndarray, depthwise: bool) -> np.ndarray:
    """Per output channel, what to add to the bias so the int8 layer's expected output matches float.

    ``-(W_q - W) . E[x]`` over kernel taps and input channels (image borders ignored).
    """
    error = quantize_per_channel(folded_kernel, depthwise) - folded_kernel
    mean = np.asarray(input_mean, np.float64)
    if depthwise:
        return (-(error.sum(axis=(0, 1))[:, 0] * mean)).astype(np.float32)
    return (-np.einsum("hwio,i->o", error.astype(np.float64), mean)).astype(np.float32)
