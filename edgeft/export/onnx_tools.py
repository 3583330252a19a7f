"""Keras -> ONNX conversion and the onnxruntime calibration reader, shared by the ONNX exporter, the
QAT-range ONNX route and the per-layer error report (one definition below all three)."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeft.errors import ExportError, first_line

INPUT_NAME = "image"


def keras_to_onnx(model: Any, image_size: int, opset: int) -> Any:
    """Convert a Keras model to an ``onnx.ModelProto`` with tf2onnx."""
    import tf2onnx

    from edgeft.tfcompat import tf

    tfm = tf()
    spec = (tfm.TensorSpec((None, image_size, image_size, 3), tfm.float32, name=INPUT_NAME),)
    try:
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    except Exception as error:
        raise ExportError(f"ONNX conversion (tf2onnx, opset {opset}) failed: {first_line(error)}") from None
    fold_stranded_batchnorms(proto)
    return proto


def fold_stranded_batchnorms(proto: Any) -> int:
    """Fold each BatchNormalization that tf2onnx left behind a no-op Reshape into its convolution; return how many.

    Where a feature map is 1x1 (the last stages of a /32 backbone at 32 px), tf2onnx turns its layout
    Transposes into Reshapes to the same shape, which sit between a Conv and its BatchNormalization and
    keep tf2onnx from folding them. Unfolded, the quantizer rounds the convolution's output before the
    BatchNorm, quantizes the BatchNorm's scale as a weight, and the kernel is not the one TFLite folds.
    Here a Reshape whose target equals its input's static shape is dropped, then a Conv whose only
    consumer is such a BatchNormalization takes its factors; the Conv keeps its node name and takes the
    BatchNorm's output name, as tf2onnx's own folding does.
    """
    replaced = _drop_noop_reshapes(proto.graph, _static_shapes(proto))
    folded = _fold_batchnorms_into_convs(proto.graph, replaced)
    used = {name for node in proto.graph.node for name in node.input}
    for init in [init for init in proto.graph.initializer if init.name in replaced and init.name not in used]:
        proto.graph.initializer.remove(init)
    return folded


def _static_shapes(proto: Any) -> dict[str, list[int | None]]:
    """Tensor name -> its inferred shape, None where a dimension is not static (the batch)."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(proto).graph
    return {value.name: [dim.dim_value if dim.HasField("dim_value") else None for dim in value.type.tensor_type.shape.dim]
            for value in list(inferred.value_info) + list(inferred.input)}


def _drop_noop_reshapes(graph: Any, shapes: dict[str, list[int | None]]) -> set[str]:
    """Remove each Reshape to its input's own shape (batch left free); return the shape initializers it used."""
    from onnx import numpy_helper

    arrays = {init.name: init for init in graph.initializer}
    outputs = {value.name for value in graph.output}
    replaced: set[str] = set()
    for node in list(graph.node):
        if node.op_type != "Reshape" or node.output[0] in outputs or node.input[1] not in arrays:
            continue
        source, target = shapes.get(node.input[0]), numpy_helper.to_array(arrays[node.input[1]]).tolist()
        if not source or len(source) != len(target) or None in source[1:] or target[0] not in (-1, 0) \
                or source[1:] != target[1:]:
            continue
        graph.node.remove(node)
        for consumer in graph.node:
            for position, name in enumerate(consumer.input):
                if name == node.output[0]:
                    consumer.input[position] = node.input[0]
        replaced.add(node.input[1])
    return replaced


def _fold_batchnorms_into_convs(graph: Any, replaced: set[str]) -> int:
    """Fold each BatchNormalization that is its Conv's only consumer into it; add the dropped initializers to
    ``replaced``; return how many were folded."""
    from onnx import numpy_helper

    arrays = {init.name: init for init in graph.initializer}
    outputs = {value.name for value in graph.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    producers = {out: node for node in graph.node for out in node.output}
    folded = 0
    for norm in list(graph.node):
        conv = producers.get(norm.input[0]) if norm.op_type == "BatchNormalization" else None
        if conv is None or conv.op_type != "Conv" or consumers.get(conv.output[0]) != 1 or len(norm.output) != 1 \
                or conv.output[0] in outputs or not all(name in arrays for name in [*norm.input[1:5], *conv.input[1:]]):
            continue
        scale, offset, mean, variance = (numpy_helper.to_array(arrays[name]).astype(np.float64) for name in norm.input[1:5])
        epsilon = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
        factor = scale / np.sqrt(variance + epsilon)
        kernel = numpy_helper.to_array(arrays[conv.input[1]]).astype(np.float64)
        bias = numpy_helper.to_array(arrays[conv.input[2]]).astype(np.float64) if len(conv.input) > 2 else 0.0
        if kernel.shape[0] != factor.size:
            continue
        names = (f"{norm.name}_folded_kernel", f"{norm.name}_folded_bias")
        for name, value in zip(names, (kernel * factor.reshape(-1, *[1] * (kernel.ndim - 1)), (bias - mean) * factor + offset)):
            graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
        replaced.update([*norm.input[1:5], *conv.input[1:]])
        del conv.input[1:]
        conv.input.extend(names)
        conv.output[0] = norm.output[0]
        graph.node.remove(norm)
        folded += 1
    return folded


def pixel_reader(pixels: np.ndarray, preprocess: Any, input_name: str) -> Any:
    """An onnxruntime calibration reader feeding ``preprocess(image)`` as float32, one uint8 image at a time."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.index = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.index >= pixels.shape[0]:
                return None
            batch = np.asarray(preprocess(pixels[self.index : self.index + 1]), dtype=np.float32)
            self.index += 1
            return {input_name: batch}

    return Reader()
