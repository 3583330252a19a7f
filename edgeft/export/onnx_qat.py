"""QDQ ONNX from a QAT run whose activation ranges and weight grids are the QAT model's own.

The route through the int8 TFLite model (QAT Keras -> TFLite int8 -> ``tf2onnx.from_tflite``)
lost top-1 agreement with the Keras QAT model, and tf2onnx applied to the Keras QAT graph itself
mis-converts tfmot's fake-quant nodes. This route instead:

1. builds the float model with the QAT model's trained weights (each ``QuantizeWrapperV2``'s
   inner layer copied into the same-named layer of the parent float architecture), each kernel
   as the QAT model computes with it: on the grid tfmot trained it on (:func:`qat_weight_grids`);
2. converts it with tf2onnx (BatchNorm folds into the convolutions as it does for TFLite);
3. quantizes it with onnxruntime's static QDQ quantizer with every activation whose range tfmot
   learned (``quantize_layer``, ``output``, ``post_activation``, ``pre_activation`` min/max) pinned
   to that range, and every kernel's per-channel scale set to its QAT step times the channel's
   BatchNorm factor (:func:`weight_overrides`), both through ``TensorQuantOverrides``. Tensors
   tfmot did not quantize take the calibration range, as the TFLite converter does.

Why the weight scales are given rather than left to onnxruntime: tfmot quantizes a depthwise
kernel and a Dense kernel per tensor (its per-axis depthwise quantizer works on the depth
multiplier, 1 here) and on the kernel before BatchNorm folding. Folding multiplies each output
channel by a constant, so the trained kernel lands exactly on a per-channel grid whose step is
the QAT step times that constant; onnxruntime's own per-channel max-abs scale is a finer grid
that rounds the trained weights again, and a channel whose weights are all zero gets a scale so
small that its bias no longer fits int32 (onnxruntime clips it for uint8 weights).

Keras layer outputs are found in the ONNX graph by tf2onnx's naming (``<model>/<layer>/...``):
the tensor a layer's scope hands to the next layer. Ranges also pass through ops that only move
values (Transpose, Pad, Reshape, Squeeze, Flatten).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.errors import ExportError, QuantizationError, first_line

INPUT_RANGE = "__input__"
_MOVES_VALUES = ("Transpose", "Pad", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity")


@dataclass(frozen=True)
class QatWeightGrid:
    """The symmetric grid tfmot trained one layer's kernel on, and the kernel on it.

    ``steps`` and ``levels`` have one entry per output channel in Keras' order (the last axis; a
    depthwise kernel's channels and multipliers flattened): the grid step, and the largest
    ``|kernel| / step`` of the channel (0 for a channel of zeros).
    """

    layer: str
    weight: str
    quantized: np.ndarray
    steps: np.ndarray
    levels: np.ndarray


@dataclass(frozen=True)
class QatRange:
    """A range tfmot learned: ``layer`` is the float layer's name, ``where`` ``output`` or ``pre_activation``."""

    layer: str
    where: str
    minimum: float
    maximum: float


def qat_activation_ranges(qat_model: Any) -> list[QatRange]:
    """Every activation range in a tfmot QAT model (the input quantizer's as layer ``__input__``)."""
    ranges = []
    for layer in qat_model.layers:
        variables = {w.name.split("/")[-1].split(":")[0]: w for w in layer.weights}
        kind = type(layer).__name__
        if kind == "QuantizeLayer":
            # named after the layer ("quantize_layer_1_min" when a process built an earlier QAT model)
            low = next((v for n, v in variables.items() if n.endswith("_min")), None)
            high = next((v for n, v in variables.items() if n.endswith("_max")), None)
            if low is not None and high is not None:
                ranges.append(QatRange(INPUT_RANGE, "output", float(np.asarray(low)), float(np.asarray(high))))
            continue
        inner = getattr(layer, "layer", None)
        if inner is None:
            continue
        for prefix, where in (("output", "output"), ("post_activation", "output"), ("pre_activation", "pre_activation")):
            low, high = variables.get(f"{prefix}_min"), variables.get(f"{prefix}_max")
            if low is not None and high is not None:
                ranges.append(QatRange(inner.name, where, float(np.asarray(low)), float(np.asarray(high))))
    return ranges


def qat_weight_grids(qat_model: Any) -> dict[str, QatWeightGrid]:
    """Each QAT-wrapped layer's kernel grid (by the inner layer's name), from its quantizer's min/max.

    Only symmetric grids are listed (tfmot's default 8-bit scheme); a layer with another
    quantizer is left to onnxruntime's own scales.
    """
    from edgeft.tfcompat import tf

    tfm = tf()
    grids: dict[str, QatWeightGrid] = {}
    for layer in qat_model.layers:
        inner, config = getattr(layer, "layer", None), getattr(layer, "quantize_config", None)
        quantizer = getattr(config, "weight_quantizer", None)
        if inner is None or quantizer is None or not getattr(quantizer, "symmetric", False):
            continue
        variables = {w.name.split(":")[0].split("/")[-1]: w for w in layer.weights}
        for weight in ("kernel", "depthwise_kernel"):
            if not {weight, f"{weight}_min", f"{weight}_max"} <= variables.keys():
                continue
            kernel = np.asarray(variables[weight], np.float32)
            low = np.asarray(variables[f"{weight}_min"], np.float32).reshape(-1)
            high = np.asarray(variables[f"{weight}_max"], np.float32).reshape(-1)
            if low.size not in (1, kernel.shape[-1]) or not np.allclose(low, -high, rtol=1e-6, atol=0.0):
                continue
            bits, narrow = int(quantizer.num_bits), bool(quantizer.narrow_range)
            if low.size == 1:
                quantized = tfm.quantization.fake_quant_with_min_max_vars(
                    kernel, float(low[0]), float(high[0]), num_bits=bits, narrow_range=narrow)
            else:
                quantized = tfm.quantization.fake_quant_with_min_max_vars_per_channel(
                    kernel, low, high, num_bits=bits, narrow_range=narrow)
            quantized = np.asarray(quantized, np.float32)
            count = int(np.prod(kernel.shape[2:])) if weight == "depthwise_kernel" else kernel.shape[-1]
            channels = quantized.reshape(-1, count)
            # one step per quantizer channel (1, or the kernel's last axis), repeated over the flattened channels
            steps = np.resize((high - low) / float(2**bits - 1 - int(narrow)), count)
            levels = np.rint(np.abs(channels).max(axis=0) / np.where(steps > 0, steps, 1.0)).astype(np.int64)
            grids[inner.name] = QatWeightGrid(inner.name, weight, quantized, np.asarray(steps, np.float32), levels)
    return grids


def weight_overrides(proto: Any, model_name: str, grids: dict[str, QatWeightGrid],
                     activation_ranges: dict[str, tuple[float, float]], zero_point: int) -> dict[str, list[dict[str, Any]]]:
    """Per-channel ``scale``/``zero_point`` overrides putting each folded QAT kernel on its trained grid.

    A channel's folded weights are ``factor * levels * step`` in whole steps, so its ONNX scale is
    its largest |weight| over its level. A channel whose bias would not fit int32 at that scale
    (the input's scale times the weight scale; weights all but zero) gets the smallest scale that fits.
    """
    from onnx import numpy_helper

    initializers = {init.name: init for init in proto.graph.initializer}
    int32_max = float(np.iinfo(np.int32).max)
    overrides: dict[str, list[dict[str, Any]]] = {}
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        parts = node.name.split("/")
        grid = grids.get(parts[1]) if len(parts) > 2 and parts[0] == model_name else None
        if grid is None:
            continue
        weights = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64)
        transposed = any(a.name == "transB" and a.i for a in node.attribute)
        axis = 0 if node.op_type == "Conv" or transposed else weights.ndim - 1
        if weights.shape[axis] != grid.levels.size:
            continue
        largest = np.abs(np.moveaxis(weights, axis, 0).reshape(weights.shape[axis], -1)).max(axis=1)
        live = grid.levels > 0
        scales = np.where(live, largest / np.maximum(grid.levels, 1), 0.0)
        fallback = float(np.median(scales[live])) if live.any() else 1.0
        scales = np.where(live & (scales > 0), scales, fallback)
        if len(node.input) > 2 and node.input[2] in initializers and node.input[0] in activation_ranges:
            low, high = activation_ranges[node.input[0]]
            input_scale = (max(high, 0.0) - min(low, 0.0)) / 255.0
            if input_scale > 0:
                bias = np.abs(numpy_helper.to_array(initializers[node.input[2]]).astype(np.float64)).reshape(-1)
                if bias.size == scales.size:
                    scales = np.maximum(scales, bias * 1.0001 / (int32_max * input_scale))
        overrides[node.input[1]] = [{"axis": axis, "scale": np.float32(scale), "zero_point": zero_point}
                                    for scale in scales]
    return overrides


def copy_has_weights(model: Any, name: str) -> bool:
    """Whether ``model`` has a layer ``name`` with weights (tfmot hides the inner layer's own kernel)."""
    try:
        return bool(model.get_layer(name).weights)
    except ValueError:
        return True  # reported as a missing counterpart


def float_model_with_qat_weights(qat_model: Any, float_model: Any,
                                 grids: dict[str, QatWeightGrid] | None = None) -> Any:
    """A copy of ``float_model`` (the parent run's architecture) carrying the QAT model's trained weights,
    each QAT kernel on its trained grid (the weights the QAT model computes with)."""
    from edgeft.tfcompat import keras

    copy = keras().models.clone_model(float_model)
    copy.set_weights(float_model.get_weights())
    grids = qat_weight_grids(qat_model) if grids is None else grids
    names = {layer.name for layer in copy.layers}
    copied = 0
    for layer in qat_model.layers:
        inner = getattr(layer, "layer", None)
        if inner is None or not copy_has_weights(copy, inner.name):
            continue
        if inner.name not in names:
            raise QuantizationError(f"QAT layer '{inner.name}' has no counterpart in the parent float model; "
                                    "export the QAT run from the float run it was trained from")
        # tfmot swaps the inner layer's kernel attribute for its fake-quantized tensor, so the trained
        # variables are looked up by name on the wrapper
        trained = {w.name.split(":")[0]: w for w in layer.weights}
        target = copy.get_layer(inner.name)
        values = []
        for variable in target.weights:
            suffix = variable.name.split(":")[0].split("/")[-1]
            # built in memory the variables carry the inner layer's name; loaded from a file, the wrapper's
            key = next((k for k in (f"{inner.name}/{suffix}", f"{layer.name}/{suffix}") if k in trained), None)
            if key is None:
                raise QuantizationError(f"QAT layer '{inner.name}' has no weight '{suffix}'")
            grid = grids.get(inner.name)
            values.append(grid.quantized if grid is not None and suffix == grid.weight else np.asarray(trained[key]))
        target.set_weights(values)
        copied += 1
    if copied == 0:
        raise QuantizationError("the model has no QAT-wrapped layer: is it a QAT run?")
    return copy


def tensor_overrides(proto: Any, model_name: str, ranges: list[QatRange], input_name: str = "image",
                     ) -> dict[str, tuple[float, float]]:
    """ONNX tensor name -> (rmin, rmax) for each QAT range found in a tf2onnx graph of the float model."""
    nodes = list(proto.graph.node)
    producer = {out: node for node in nodes for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: dict[str, tuple[float, float]] = {}
    for item in ranges:
        if item.layer == INPUT_RANGE:
            found[input_name] = (item.minimum, item.maximum)
            continue
        # tf2onnx names a layer's tensors "<model>/<layer>/..." (a BatchNorm folded into its convolution
        # leaves the convolution node named after the convolution but its output after the BN); the layer's
        # result is the tensor of its scope that no node writing into the scope consumes
        scope = f"{model_name}/{item.layer}/"
        inside = [name for name in producer if name.startswith(scope)]
        for name in inside:
            if any(any(out.startswith(scope) for out in c.output) for c in consumers.get(name, [])):
                continue
            node = producer[name]
            if item.where == "pre_activation" and node.op_type in ("Relu", "Clip", "Sigmoid", "Softmax"):
                name = node.input[0]
            found[name] = (item.minimum, item.maximum)
    changed = True
    while changed:  # carry ranges through ops that only move values, both ways within a layer
        changed = False
        for node in nodes:
            if node.op_type not in _MOVES_VALUES or not node.input:
                continue
            source, outs = node.input[0], list(node.output)
            if source in found:
                for out in outs:
                    if out not in found:
                        found[out] = found[source]
                        changed = True
            elif outs and outs[0] in found and source in producer and source.rsplit("/", 1)[0] == outs[0].rsplit("/", 1)[0]:
                found[source] = found[outs[0]]
                changed = True
    return found


def qat_qdq_onnx(qat_model: Any, float_model: Any, image_size: int, pixels: np.ndarray, preprocess: Any,
                 out_path: Path, opset: int = 17, weight_type: str = "uint8", input_name: str = "image",
                 symmetric_weights: bool = True, float_out: Path | None = None) -> dict[str, Any]:
    """Write QDQ ONNX of a QAT run to ``out_path`` (a temporary name is the caller's concern); return facts.

    ``pixels``: uint8 calibration images for the tensors tfmot left without a range;
    ``preprocess`` maps them to model input. Weights are quantized symmetrically per channel on the
    grids tfmot trained them on, stored as ``weight_type`` (uint8 with zero point 128 avoids the int16
    saturation of uint8 x int8 products on AVX2-only x86).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgeft.export.onnx_tools import keras_to_onnx, pixel_reader

    grids = qat_weight_grids(qat_model)
    model = float_model_with_qat_weights(qat_model, float_model, grids)
    proto = keras_to_onnx(model, image_size, opset)
    overrides = tensor_overrides(proto, model.name, qat_activation_ranges(qat_model), input_name)

    weights = QuantType.QUInt8 if weight_type == "uint8" else QuantType.QInt8
    with tempfile.TemporaryDirectory(prefix="edgeft-qatonnx-") as tmp:
        float_path, prepared = Path(tmp) / "float.onnx", Path(tmp) / "prepared.onnx"
        onnx.save(proto, str(float_path))
        if float_out is not None:
            onnx.save(proto, str(float_out))
        try:
            quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
            graph = onnx.load(str(prepared))
            present = {v.name for v in graph.graph.value_info} | {input_name} | {o for n in graph.graph.node for o in n.output}
            table: dict[str, list[dict[str, Any]]] = {
                name: [{"rmin": np.float32(min(lo, 0.0)), "rmax": np.float32(max(hi, 0.0))}]
                for name, (lo, hi) in overrides.items() if name in present}
            kernels = weight_overrides(graph, model.name, grids, overrides,
                                       128 if weights is QuantType.QUInt8 else 0) if symmetric_weights else {}
            quantize_static(str(prepared), str(out_path), pixel_reader(pixels, preprocess, input_name), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=weights,
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"CalibTensorRangeSymmetric": False, "TensorQuantOverrides": {**table, **kernels},
                                           "WeightSymmetric": symmetric_weights})
        except Exception as error:  # onnxruntime raises many types
            first = first_line(error)
            raise ExportError(f"ONNX int8 quantization with the QAT ranges failed: {first}") from None
    return {"converter": "QAT weights -> tf2onnx float -> onnxruntime quantize_static (QDQ, QAT ranges)",
            "qat_ranges": len(overrides), "qat_ranges_applied": len(table), "qat_weight_grids": len(kernels), "weight_type": weights.name,
            "symmetric_weights": symmetric_weights}
