"""uint8 pixels -> model input, and model output -> real scores.

``input = pixel * scale + offset`` per channel (after the sidecar's channel order), then the
model's input quantization when its input is an integer tensor. An integer input whose levels the
pixels land on one to one (one pixel step = one level, within half a level: MobileNet's
``pixel / 127.5 - 1`` on scale 2/255) gets the pixels themselves, shifted by 128 for int8, as an
app on the device feeds them; any other mapping is rounded half away from zero, as TFLite's own
QUANTIZE op rounds (numpy's half-to-even would move every other pixel value down a level
exactly where the pixels fall halfway between two levels). The resize is the one training
uses: Pillow's bilinear filter (``reducing_gap=3.0``) when Pillow is installed, otherwise its numpy
twin, pixel for pixel: Pillow's integer box reduction when the image is 6 or more times the input
size along an axis (a camera frame), then the horizontal and the vertical bilinear pass with
Pillow's weights and fixed-point arithmetic.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from .contract import DeviceError

_PRECISION_BITS = 22  # Pillow's fixed-point precision for 8-bit resampling
REDUCING_GAP = 3.0  # training's resize(..., reducing_gap=3.0): box-reduce first from 6x the size


def prepare_input(images: Any, dtype: Any, quant: Tuple[float, int], sidecar: Optional[Dict[str, Any]],
                  layout: str = "NHWC") -> Any:
    """Map uint8 pixels (N, H, W, 3) to model input: the sidecar's ``pixel * scale + offset``, then quantize.

    Without a sidecar, a uint8 model gets the raw pixels, an int8 model ``pixel - 128`` and a float
    model ``pixel / 127.5 - 1`` (the MobileNet convention).
    """
    import numpy as np

    dtype = np.dtype(dtype)
    images = np.asarray(images, dtype=np.uint8)
    prep = (sidecar or {}).get("preprocessing")
    if prep and prep.get("channel_order", "RGB") == "BGR":
        images = images[..., ::-1]
    if dtype == np.uint8 and not prep:
        tensor = images
    elif dtype == np.int8 and not prep:
        tensor = (images.astype(np.int16) - 128).astype(np.int8)
    else:
        if prep:
            scale = np.asarray(prep.get("scale", [1.0, 1.0, 1.0]), np.float32)
            offset = np.asarray(prep.get("offset", [0.0, 0.0, 0.0]), np.float32)
        else:
            scale, offset = np.float32(1.0 / 127.5), np.float32(-1.0)
        if dtype in (np.uint8, np.int8):
            tensor = quantize_pixels(images, scale, offset, dtype, quant, sidecar)
        else:
            tensor = (images.astype(np.float32) * scale + offset).astype(dtype)
    if layout == "NCHW":
        tensor = np.transpose(tensor, (0, 3, 1, 2))
    return np.ascontiguousarray(tensor)


def input_quantization(dtype: Any, quant: Tuple[float, int], sidecar: Optional[Dict[str, Any]] = None,
                       ) -> Tuple[float, int]:
    """The input's (scale, zero point): the model's own, else the sidecar's; :class:`DeviceError` if neither."""
    import numpy as np

    q_scale, zero_point = float(quant[0]), int(quant[1])
    side_quant = ((sidecar or {}).get("input") or {}).get("quantization") or \
        (sidecar or {}).get("input_quantization") or {}
    if not q_scale and side_quant.get("scale"):
        q_scale, zero_point = float(side_quant["scale"]), int(side_quant.get("zero_point", 0))
    if not q_scale:
        raise DeviceError("the model has a %s input but no quantization parameters" % np.dtype(dtype).name)
    return q_scale, zero_point


def pixels_are_levels(scale: Any, offset: Any, dtype: Any, q_scale: float, zero_point: int) -> bool:
    """Whether ``pixel * scale + offset`` quantized to (q_scale, zero_point) is the pixel itself (uint8) or
    ``pixel - 128`` (int8), up to a constant offset of at most half a level."""
    import numpy as np

    scale = np.broadcast_to(np.asarray(scale, np.float64), (3,))
    offset = np.broadcast_to(np.asarray(offset, np.float64), (3,))
    shift = -128.0 if np.dtype(dtype) == np.int8 else 0.0
    step = scale / q_scale
    level_of_zero = offset / q_scale + zero_point - shift  # the level pixel 0 maps onto
    return bool(np.all(np.abs(step - 1.0) <= 1e-4) and np.all(np.abs(level_of_zero) <= 0.5 + 1e-4))


def quantize_pixels(images: Any, scale: Any, offset: Any, dtype: Any, quant: Tuple[float, int],
                    sidecar: Optional[Dict[str, Any]] = None) -> Any:
    """uint8 pixels -> an integer input tensor through ``pixel * scale + offset`` and the input quantization."""
    import numpy as np

    q_scale, zero_point = input_quantization(dtype, quant, sidecar)
    if pixels_are_levels(scale, offset, dtype, q_scale, zero_point):
        if np.dtype(dtype) == np.int8:
            return (images.astype(np.int16) - 128).astype(np.int8)
        return np.asarray(images, np.uint8)
    values = images.astype(np.float32) * np.asarray(scale, np.float32) + np.asarray(offset, np.float32)
    return quantize(values, dtype, (q_scale, zero_point))


def quantize(values: Any, dtype: Any, quant: Tuple[float, int], sidecar: Optional[Dict[str, Any]] = None) -> Any:
    """Real values -> integer tensor with the model's (scale, zero point), else the sidecar's.

    Rounds ``values / scale`` half away from zero, then adds the zero point, as TFLite's QUANTIZE does.
    """
    import numpy as np

    q_scale, zero_point = input_quantization(dtype, quant, sidecar)
    info = np.iinfo(dtype)
    scaled = np.asarray(values, np.float32) / np.float32(q_scale)
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)
    return np.clip(rounded + zero_point, info.min, info.max).astype(dtype)


def dequantize(raw: Any, quant: Tuple[float, int]) -> Any:
    """Integer outputs back to real values with (scale, zero_point); floats pass through as float32."""
    import numpy as np

    raw = np.asarray(raw)
    if raw.dtype in (np.uint8, np.int8, np.int16) and quant and float(quant[0]):
        return (raw.astype(np.float32) - float(quant[1])) * float(quant[0])
    return raw.astype(np.float32)


def _coefficients(in_size: int, out_size: int, span: Optional[float] = None) -> Any:
    """Pillow's bilinear (triangle) filter weights as a fixed-point (out_size, in_size) matrix.

    ``span``: the width of the source box from 0 (``in_size`` when None); after a box reduction
    it is fractional, and Pillow takes it as a float32.
    """
    import numpy as np

    scale = float(np.float32(in_size if span is None else span)) / out_size
    filterscale = max(scale, 1.0)
    support = filterscale  # the triangle filter's support is 1 pixel, widened when shrinking
    reciprocal = 1.0 / filterscale
    matrix = np.zeros((out_size, in_size), np.int64)
    for out in range(out_size):
        center = (out + 0.5) * scale
        low = max(int(center - support + 0.5), 0)
        high = min(int(center + support + 0.5), in_size)
        taps = np.arange(low, high, dtype=np.float64)
        weights = np.maximum(0.0, 1.0 - np.abs((taps - center + 0.5) * reciprocal))
        total = weights.sum()
        if total:
            weights = weights / total
        fixed = weights * (1 << _PRECISION_BITS)
        matrix[out, low:high] = np.trunc(np.where(fixed < 0, fixed - 0.5, fixed + 0.5)).astype(np.int64)
    return matrix


def _reduce_boxes(image: Any, factor_x: int, factor_y: int) -> Any:
    """Pillow's ``Image.reduce((factor_x, factor_y))`` of a uint8 (H, W, C) image: each box's mean in
    Pillow's fixed point, ``((sum + area // 2) * multiplier) >> 24`` with its float32 multiplier; the
    last row and column of boxes average what is left of the image."""
    import numpy as np

    height, width, channels = image.shape
    rows, columns = -(-height // factor_y), -(-width // factor_x)
    padded = np.zeros((rows * factor_y, columns * factor_x, channels), np.uint64)
    padded[:height, :width] = image
    sums = padded.reshape(rows, factor_y, columns, factor_x, channels).sum(axis=(1, 3))
    box_rows = np.full(rows, factor_y, np.uint64)
    box_rows[-1] = height - (rows - 1) * factor_y
    box_columns = np.full(columns, factor_x, np.uint64)
    box_columns[-1] = width - (columns - 1) * factor_x
    area = np.outer(box_rows, box_columns)
    multiplier = (np.float32(2.0**32) / (area * 256).astype(np.float32)).astype(np.uint64)
    return (((sums + (area // 2)[..., None]) * multiplier[..., None]) >> np.uint64(24)).astype(np.uint8)


def _resample(image: Any, matrix: Any, axis: int) -> Any:
    import numpy as np

    moved = np.moveaxis(image.astype(np.int64), axis, -1)  # (..., in)
    summed = moved @ matrix.T + (1 << (_PRECISION_BITS - 1))
    return np.moveaxis(np.clip(summed >> _PRECISION_BITS, 0, 255).astype(np.uint8), -1, axis)


def reduction_factors(source_width: int, source_height: int, width: int, height: int) -> Tuple[int, int]:
    """Pillow's ``reducing_gap`` rule: the integer box-reduction factor per axis (1: none)."""
    return int(source_width / width / REDUCING_GAP) or 1, int(source_height / height / REDUCING_GAP) or 1


def resize_bilinear_numpy(image: Any, height: int, width: int) -> Any:
    """One uint8 (H, W, C) image resized like Pillow's ``Image.resize(..., BILINEAR, reducing_gap=3.0)``,
    horizontal pass first as the decoder runs it (``targets.images``), box reduction included."""
    source_height, source_width = image.shape[:2]
    factor_x, factor_y = reduction_factors(source_width, source_height, width, height)
    if factor_x > 1 or factor_y > 1:
        image = _reduce_boxes(image, factor_x, factor_y)
    for axis, size, span in ((1, width, source_width / factor_x), (0, height, source_height / factor_y)):
        if image.shape[axis] != size or span != image.shape[axis]:
            image = _resample(image, _coefficients(image.shape[axis], size, span), axis)
    return image
