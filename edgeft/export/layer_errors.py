"""Per-layer quantization error of an int8 artifact, and advice that fits the run it came from.

- TFLite: ``tf.lite.experimental.QuantizationDebugger`` runs the int8 model with each op's
  float twin fed the same dequantized inputs, so a layer's error is the error that layer adds,
  not the error it inherits. The figure of merit is RMSE / scale (RMSE in units of the layer's
  quantization step: 0.29 is the rounding floor of a well-used range; larger means clipping
  or a range too wide for the values that matter).
- ONNX: ``onnxruntime.quantization.qdq_loss_debug`` compares each activation before its
  QuantizeLinear and after its DequantizeLinear in the QDQ model (the noise that tensor's own
  quantization adds, as a signal-to-quantization-noise ratio in dB; lower is worse) and, when
  the float model is given, against the float model's tensor (the accumulated error).

:func:`write_layer_errors` writes ``layer_errors_<artifact>.json`` next to the artifact;
:func:`summarize` gives the top layers and advice for the export report when an artifact fails
``--max-drop``. The same TFLite debugger also builds the int8 model with chosen layers kept in
float (:func:`tflite_int8_keep_float`), for targets that run float ops on the CPU.
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from edgeft.errors import ExportError, UsageError, first_line

SCHEMA = "edgeft.layer_errors/1"


class ErrorMetric(str, Enum):
    """How layers are ranked: larger is worse for RMSE/scale, smaller is worse for SQNR."""

    RMSE_PER_SCALE = "rmse_per_scale"
    SQNR_DB = "sqnr_db"


@dataclass(frozen=True)
class LayerError:
    """The quantization error one layer (one quantized tensor) adds."""

    name: str
    op: str
    value: float
    metric: ErrorMetric
    scale: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "op": self.op, self.metric.value: _finite(self.value),
                "scale": _finite(self.scale), **{k: _finite(v) for k, v in self.extra.items()}}


@dataclass(frozen=True)
class LayerErrorReport:
    """Every layer's error for one int8 artifact, worst first."""

    artifact: str
    format: str
    metric: ErrorMetric
    method: str
    samples: int
    layers: tuple[LayerError, ...]

    def top(self, count: int = 5) -> tuple[LayerError, ...]:
        """The ``count`` layers that add the most error."""
        return self.layers[:count]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (schema ``edgeft.layer_errors/1``)."""
        return {"schema": SCHEMA, "artifact": self.artifact, "format": self.format, "metric": self.metric.value,
                "method": self.method, "samples": self.samples, "layers": [layer.to_dict() for layer in self.layers]}


def _finite(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), 6)


def _ranked(layers: Sequence[LayerError], metric: ErrorMetric) -> tuple[LayerError, ...]:
    def key(layer: LayerError) -> float:
        value = layer.value if math.isfinite(layer.value) else (math.inf if metric == ErrorMetric.SQNR_DB else -math.inf)
        return -value if metric == ErrorMetric.RMSE_PER_SCALE else value

    return tuple(sorted(layers, key=key))


# --------------------------------------------------------------------------- TFLite


def parse_tflite_layer_statistics(text: str) -> list[LayerError]:
    """Parse ``QuantizationDebugger.layer_statistics_dump`` CSV into :class:`LayerError` rows."""
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        try:
            scale = float(row["scale"])
            mse = float(row["mean_squared_error"])
        except (KeyError, ValueError):
            continue
        rmse = math.sqrt(max(mse, 0.0))
        value = rmse / scale if scale > 0 else math.nan
        extra = {"rmse": rmse, "max_abs_error": float(row.get("max_abs_error") or "nan"),
                 "range": 255.0 * scale}
        rows.append(LayerError(name=row.get("tensor_name", ""), op=row.get("op_name", ""), value=value,
                               metric=ErrorMetric.RMSE_PER_SCALE, scale=scale, extra=extra))
    return rows


def int8_converter(model: Any, image_size: int, pixels: np.ndarray, preprocess: Callable[[np.ndarray], np.ndarray],
                   io_dtype: str = "uint8") -> Any:
    """A full-integer TFLite converter for ``model`` (batch-1 static shape, as edgeft exports it)."""
    from edgeft.tfcompat import tf

    tfm = tf()
    function = tfm.function(lambda image: model(image, training=False))
    concrete = function.get_concrete_function(tfm.TensorSpec([1, image_size, image_size, 3], tfm.float32, name="image"))
    converter = tfm.lite.TFLiteConverter.from_concrete_functions([concrete], model)

    def representative() -> Iterator[list[np.ndarray]]:
        for index in range(pixels.shape[0]):
            yield [preprocess(pixels[index : index + 1])]

    converter.optimizations = [tfm.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tfm.lite.OpsSet.TFLITE_BUILTINS_INT8]
    io_type = {"uint8": tfm.uint8, "int8": tfm.int8, "float32": tfm.float32}[io_dtype]
    converter.inference_input_type = io_type
    converter.inference_output_type = io_type
    return converter


def _debugger(converter: Any, pixels: np.ndarray, preprocess: Callable[[np.ndarray], np.ndarray],
              denylisted_nodes: Sequence[str] = ()) -> Any:
    from edgeft.tfcompat import tf

    tfm = tf()

    def debug_data() -> Iterator[list[np.ndarray]]:
        for index in range(pixels.shape[0]):
            yield [preprocess(pixels[index : index + 1])]

    options = tfm.lite.experimental.QuantizationDebugOptions(
        denylisted_nodes=list(denylisted_nodes) or None)
    try:
        return tfm.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=debug_data,
                                                          debug_options=options)
    except Exception as error:  # the converter raises many types
        first = first_line(error)
        raise ExportError(f"TFLite quantization debugger failed: {first}") from None


def tflite_layer_errors(model: Any, image_size: int, calibration: np.ndarray, debug: np.ndarray,
                        preprocess: Callable[[np.ndarray], np.ndarray], artifact: str = "model_int8.tflite",
                        ) -> LayerErrorReport:
    """Per-layer error of the int8 TFLite model of ``model`` calibrated on ``calibration`` pixels,
    measured on ``debug`` pixels (uint8 images; ``preprocess`` maps them to model input)."""
    converter = int8_converter(model, image_size, calibration, preprocess)
    debugger = _debugger(converter, debug, preprocess)
    try:
        debugger.run()
    except Exception as error:
        first = first_line(error)
        raise ExportError(f"TFLite quantization debugger failed: {first}") from None
    buffer = io.StringIO()
    debugger.layer_statistics_dump(buffer)
    layers = parse_tflite_layer_statistics(buffer.getvalue())
    return LayerErrorReport(artifact=artifact, format="tflite", metric=ErrorMetric.RMSE_PER_SCALE,
                            method="tf.lite.experimental.QuantizationDebugger", samples=int(debug.shape[0]),
                            layers=_ranked(layers, ErrorMetric.RMSE_PER_SCALE))


def tflite_int8_keep_float(model: Any, image_size: int, calibration: np.ndarray,
                           preprocess: Callable[[np.ndarray], np.ndarray], keep_float: Sequence[str],
                           io_dtype: str = "uint8") -> bytes:
    """Full-integer TFLite bytes with the ops whose output tensors are named in ``keep_float`` left in float.

    Only for targets that run float ops on the CPU: on the Edge TPU a float op ends the part of
    the graph the accelerator runs.
    """
    if not keep_float:
        raise UsageError("keep-float needs at least one layer name")
    converter = int8_converter(model, image_size, calibration, preprocess, io_dtype)
    debugger = _debugger(converter, calibration[:1], preprocess, keep_float)
    try:
        data = bytes(debugger.get_nondebug_quantized_model())
    except Exception as error:
        first = first_line(error)
        raise ExportError(f"TFLite int8 conversion with float layers failed: {first}") from None
    if io_dtype == "float32":
        return data
    # The debugger always writes float I/O; edgeft's int8 models take and give uint8/int8.
    from tensorflow.lite.python.util import modify_model_io_type

    from edgeft.tfcompat import tf

    io_type = {"uint8": tf().uint8, "int8": tf().int8}[io_dtype]
    # a float layer at the output end leaves no DEQUANTIZE to strip: then the output stays float
    for output_type in (io_type, tf().float32):
        try:
            return bytes(modify_model_io_type(data, io_type, output_type))
        except (ValueError, RuntimeError):
            continue
    return data


# --------------------------------------------------------------------------- ONNX


def onnx_layer_errors(qdq_path: Path, pixels: np.ndarray, preprocess: Callable[[np.ndarray], np.ndarray],
                      float_path: Path | None = None, input_name: str = "image",
                      artifact: str = "model_int8.onnx") -> LayerErrorReport:
    """Per-tensor error of a QDQ ONNX model on ``pixels`` (uint8 images) with ``qdq_loss_debug``.

    Ranked by the SQNR (dB) each tensor's own Q/DQ pair leaves; with ``float_path`` each row also
    carries ``xmodel_sqnr_db``, the SQNR against the float model's tensor (what has accumulated).
    """
    from edgeft.export.onnx_tools import pixel_reader
    from onnxruntime.quantization.qdq_loss_debug import (collect_activations, compute_activation_error,
                                                         create_activation_matching,
                                                         modify_model_output_intermediate_tensors)

    try:
        with tempfile.TemporaryDirectory(prefix="edgeft-qdqdebug-") as tmp:
            augmented_qdq = Path(tmp) / "qdq_augmented.onnx"
            modify_model_output_intermediate_tensors(str(qdq_path), str(augmented_qdq))
            qdq_acts = collect_activations(str(augmented_qdq), pixel_reader(pixels, preprocess, input_name),
                                           execution_providers=["CPUExecutionProvider"])
            float_acts = None
            if float_path is not None:
                augmented_float = Path(tmp) / "float_augmented.onnx"
                modify_model_output_intermediate_tensors(str(float_path), str(augmented_float))
                float_acts = collect_activations(str(augmented_float), pixel_reader(pixels, preprocess, input_name),
                                                 execution_providers=["CPUExecutionProvider"])
            errors = compute_activation_error(create_activation_matching(qdq_acts, float_acts))
    except Exception as error:  # onnxruntime raises many types
        first = first_line(error)
        raise ExportError(f"ONNX per-layer error report failed: {first}") from None
    producers = _onnx_producers(qdq_path)
    layers = []
    for tensor, values in errors.items():
        extra = {}
        if "xmodel_err" in values:
            extra["xmodel_sqnr_db"] = float(values["xmodel_err"])
        layers.append(LayerError(name=tensor, op=producers.get(tensor, ""), value=float(values["qdq_err"]),
                                 metric=ErrorMetric.SQNR_DB, extra=extra))
    return LayerErrorReport(artifact=artifact, format="onnx", metric=ErrorMetric.SQNR_DB,
                            method="onnxruntime.quantization.qdq_loss_debug", samples=int(pixels.shape[0]),
                            layers=_ranked(layers, ErrorMetric.SQNR_DB))


def _onnx_producers(path: Path) -> dict[str, str]:
    """Tensor name -> "op_type node_name" of the node that produces it."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {out: f"{node.op_type} {node.name}" for node in model.graph.node for out in node.output}


def onnx_nodes_for_tensors(float_path: Path, tensors: Sequence[str]) -> list[str]:
    """Names of the float ONNX nodes that produce ``tensors`` (for ``quantize_static(nodes_to_exclude=...)``)."""
    import onnx

    model = onnx.load(str(float_path), load_external_data=False)
    wanted = set(tensors)
    return [node.name for node in model.graph.node if wanted & set(node.output)]


def keras_layers(tensor_name: str) -> list[str]:
    """Keras layer names in a TFLite tensor name (``model/block_1_depthwise_relu/Relu6;model/...``)."""
    layers = []
    for part in tensor_name.split(";"):
        pieces = part.split("/")
        if len(pieces) >= 3 and pieces[1] not in layers:
            layers.append(pieces[1])
    return layers


def onnx_nodes_for_layers(onnx_path: Path, layers: Sequence[str]) -> list[str]:
    """Names of the ONNX nodes tf2onnx made from the Keras ``layers`` (for ``nodes_to_exclude``)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    wanted = tuple(f"/{layer}/" for layer in layers)
    return [node.name for node in model.graph.node if any(w in node.name for w in wanted)]


def auto_keep_float(report: LayerErrorReport, count: int = 3) -> list[str]:
    """``--keep-float auto``: the ``count`` layers that add the most error (TFLite tensor names)."""
    return [layer.name for layer in report.top(count)]


@dataclass(frozen=True)
class KeepFloat:
    """What ``--keep-float`` resolved to: the TFLite tensors kept in float and their Keras layers."""

    requested: tuple[str, ...]
    tensors: tuple[str, ...]
    layers: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (artifact metadata and the export report)."""
        return {"requested": list(self.requested), "layers": list(self.layers), "tensors": list(self.tensors),
                "ranked_by": "tf.lite.experimental.QuantizationDebugger RMSE/scale"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "KeepFloat":
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(data["requested"]), tuple(data["tensors"]), tuple(data["layers"]))


def resolve_keep_float(model: Any, image_size: int, calibration: np.ndarray,
                       preprocess: Callable[[np.ndarray], np.ndarray], requested: Sequence[str],
                       auto_count: int = 3, debug_samples: int = 64) -> KeepFloat:
    """``--keep-float auto`` (the ``auto_count`` worst layers of the TFLite report) or Keras layer names ->
    the quantized tensors that carry them. An unknown layer name is a :class:`UsageError`."""
    auto = list(requested) == ["auto"]
    debug = calibration[: debug_samples if auto else 1]
    report = tflite_layer_errors(model, image_size, calibration, debug, preprocess)
    if auto:
        tensors = auto_keep_float(report, auto_count)
    else:
        wanted = set(requested)
        tensors = [layer.name for layer in report.layers if wanted & set(keras_layers(layer.name))]
        found = {name for tensor in tensors for name in keras_layers(tensor)}
        missing = [name for name in requested if name not in found]
        if missing:
            known = sorted({short_name(layer.name) for layer in report.layers})
            raise UsageError(f"--keep-float: no quantized layer named {', '.join(missing)}; layers include "
                             + ", ".join(known[:8]) + (", ..." if len(known) > 8 else ""))
    layers = tuple(dict.fromkeys(name for tensor in tensors for name in keras_layers(tensor)))
    return KeepFloat(tuple(requested), tuple(tensors), layers)


def cached_keep_float(work_dir: Path, model: Any, image_size: int, calibration: np.ndarray,
                      preprocess: Callable[[np.ndarray], np.ndarray], requested: Sequence[str],
                      auto_count: int = 3) -> KeepFloat:
    """:func:`resolve_keep_float`, resolved once per export (the TFLite and ONNX int8 artifacts share it)."""
    import json

    from edgeft.fileio import write_json_atomic

    path = Path(work_dir) / "keep_float.json"
    if path.is_file():
        cached = KeepFloat.from_dict(json.loads(path.read_text("utf-8")))
        if list(cached.requested) == list(requested):
            return cached
    resolved = resolve_keep_float(model, image_size, calibration, preprocess, requested, auto_count)
    write_json_atomic(path, resolved.to_dict())
    return resolved


# --------------------------------------------------------------------------- report


def layer_errors_filename(artifact: str) -> str:
    """The per-layer report's file name for ``artifact`` (not ``<artifact>.json``: that is its sidecar)."""
    return f"layer_errors_{artifact}.json"


def write_layer_errors(report: LayerErrorReport, export_dir: Path) -> Path:
    """Write ``layer_errors_<artifact>.json`` into ``export_dir`` (temporary name, then renamed)."""
    from edgeft.fileio import write_json_atomic

    path = Path(export_dir) / layer_errors_filename(report.artifact)
    write_json_atomic(path, report.to_dict())
    return path


def short_name(tensor_name: str) -> str:
    """The first Keras layer named in a tensor name (the activation that ends a fused op), else the name."""
    layers = keras_layers(tensor_name)
    return layers[0] if layers else tensor_name


def advice(report: LayerErrorReport, source: str, edgetpu: bool = False, keep_float: bool = False) -> str:
    """One sentence of what to try next for an int8 artifact that failed ``--max-drop``.

    ``source`` is ``"ptq"`` or ``"qat"``: a QAT artifact is never told to "use QAT" (nor to keep layers in
    float: its ranges come from training). The Edge TPU is never told to keep layers in float;
    ``keep_float``: the artifact already keeps layers in float.
    """
    if source == "qat":
        return ("train QAT longer or at a lower learning rate so the ranges settle (the QAT ranges, not "
                "calibration, decide this artifact), or raise --max-drop")
    names = ",".join(short_name(layer.name) for layer in report.top(2))
    if edgetpu:
        keep = ""
    elif keep_float:
        keep = f"keep more layers in float (--keep-float {names}, ...); "
    else:
        keep = f"keep the worst layers in float (--keep-float auto, or --keep-float {names}); "
    calib = ("calibrate on more or other images that look like deployment data (--calib-size, --calib-dir)"
             + (", or try --calib-method percentile" if report.format == "onnx" else "") + "; ")
    return f"{keep}{calib}or fine-tune with quantization-aware training (edgeft qat)"


def summarize(report: LayerErrorReport, source: str, edgetpu: bool = False, count: int = 5,
              keep_float: bool = False) -> dict[str, Any]:
    """The export report's entry for a failing artifact: its ``count`` worst layers and advice."""
    return {"layer_errors": layer_errors_filename(report.artifact), "metric": report.metric.value,
            "method": report.method, "samples": report.samples,
            "top_layers": [layer.to_dict() for layer in report.top(count)],
            "summary": summary_line(report, count), "advice": advice(report, source, edgetpu, keep_float)}


def summary_line(report: LayerErrorReport, count: int = 5) -> str:
    """The worst layers on one line, for the one-line error of a failing export."""
    unit = "RMSE/scale" if report.metric == ErrorMetric.RMSE_PER_SCALE else "SQNR dB"
    parts = [f"{short_name(layer.name)} {layer.value:.2f}" for layer in report.top(count)]
    return f"worst layers ({unit}): " + ", ".join(parts)
