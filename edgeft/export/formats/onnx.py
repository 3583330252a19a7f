"""ONNX: float32 through tf2onnx, int8 through onnxruntime's static QDQ quantization.

- float32: ``tf2onnx.convert.from_keras`` at ``--opset`` (default 17), input ``image``
  (N, H, W, 3) float32 with a dynamic batch.
- int8 from a float run: ``quant_pre_process(skip_symbolic_shape=True)`` then
  ``quantize_static`` in QDQ format, per-channel weights, QUInt8 activations (faster than
  QInt8 on x86 onnxruntime), calibrated on the same representative set as TFLite, calibration
  method ``minmax`` / ``entropy`` / ``percentile``. Weights are uint8 by default
  (``--onnx-weights``, see :class:`~edgeft.export.config.OnnxWeights` for the measurements):
  x86 CPUs without VNNI run uint8 x int8 products through VPMADDUBSW, whose int16 sums
  saturate and silently cost accuracy; uint8 x uint8 does not.
- int8 from a QAT run: QDQ whose activation ranges are the QAT model's own
  (:mod:`edgeft.export.onnx_qat`: the parent float architecture with the QAT weights, tf2onnx,
  onnxruntime QDQ with every tfmot range pinned), int8 symmetric per-channel weights unless
  ``--onnx-weights`` says otherwise. Measured top-1 agreement with the Keras QAT model,
  hymenoptera 224 / hymenoptera from 128x128 / digits 32: int8 weights 0.993 / 0.967 / 1.000,
  uint8 weights 0.967 / 0.961 / 0.994; the former route through the int8 TFLite model
  (``tf2onnx.convert.from_tflite``) lost 1.31 points on hymenoptera 224. Converting the Keras QAT
  model directly with tf2onnx gives wrong outputs (agreement 0.44), so a QAT run has no float32
  ONNX artifact: export the parent float run for that.
- ``--keep-float``: the Keras layers it names (or the 3 worst by the TFLite per-layer report)
  are left out of the QDQ quantization (``nodes_to_exclude``).

Every model passes ``onnx.checker.check_model`` before it is written.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.errors import ExportError, first_line
from edgeft.export.spec import Format, OnnxWeights, Precision
from edgeft.export.formats import ConversionJob, Exporter, register
from edgeft.export.formats.tflite import load_calibration_pixels, resolved_keep_float, rounded_model
from edgeft.export.onnx_tools import INPUT_NAME, keras_to_onnx, pixel_reader

FILENAMES = {Precision.FLOAT32: "model_float32.onnx", Precision.INT8: "model_int8.onnx"}
FLOAT_FOR_INT8 = "onnx_float_for_int8.onnx"  # in the work directory: the float graph an int8 model quantizes


def quantize_onnx_static(float_path: Path, out_path: Path, pixels: np.ndarray, preprocessing: Any,
                         method: str, weights: OnnxWeights = OnnxWeights.UINT8,
                         keep_float_layers: tuple[str, ...] = ()) -> dict[str, Any]:
    """Static QDQ int8 quantization of ``float_path`` with onnxruntime, written to ``out_path``.

    ``keep_float_layers``: Keras layers whose ONNX nodes stay unquantized (``nodes_to_exclude``).
    """
    from edgeft.export.layer_errors import onnx_nodes_for_layers

    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    weight_type = QuantType.QUInt8 if weights == OnnxWeights.UINT8 else QuantType.QInt8
    reduce_range = weights == OnnxWeights.INT8_7BIT
    with tempfile.TemporaryDirectory(prefix="edgeft-onnxq-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
            excluded = onnx_nodes_for_layers(prepared, keep_float_layers) if keep_float_layers else []
            if keep_float_layers and not excluded:
                raise ExportError("--keep-float: no ONNX node comes from layers " + ", ".join(keep_float_layers))
            quantize_static(
                str(prepared), str(out_path), pixel_reader(pixels, preprocessing.apply, INPUT_NAME), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=weight_type, reduce_range=reduce_range,
                calibrate_method=methods[method], nodes_to_exclude=excluded,
                # symmetric weights (uint8: zero point 128) are the grid adaptive rounding targets
                extra_options={"CalibTensorRangeSymmetric": False, "WeightSymmetric": True},
            )
        except ExportError:
            raise
        except Exception as error:
            raise ExportError(f"ONNX int8 quantization failed: {first_line(error)}") from None
    return {"quant_format": "QDQ", "per_channel": True, "activation_type": "QUInt8",
            "weight_type": weight_type.name, "reduce_range": reduce_range,
            "calibrate_method": method, "float_nodes": len(excluded)}


def qat_onnx(job: ConversionJob, model: Any, image_size: int, preprocessing: Any) -> tuple[Any, dict[str, Any]]:
    """QDQ ONNX of a QAT run with the QAT model's own ranges (:mod:`edgeft.export.onnx_qat`).

    Needs the parent float run (the QAT run's ``parent_run``) for the float architecture; the float ONNX
    it quantizes is kept in the work directory for the per-layer report.
    """
    import onnx

    from edgeft.errors import RunDirError
    from edgeft.export.onnx_qat import qat_qdq_onnx
    from edgeft.run.rundir import MODEL_FILE
    from edgeft.tfcompat import load_keras_model

    parent = (job.metadata.get("run") or {}).get("parent_run")
    if not parent or not (Path(parent) / MODEL_FILE).is_file():
        raise RunDirError(f"the QAT run's parent float run ({parent or 'not recorded'}) has no {MODEL_FILE}: "
                          "ONNX int8 of a QAT run rebuilds the float graph from it")
    pixels = load_calibration_pixels(job.calibration)
    out = Path(job.work_dir) / "qat_int8_raw.onnx"
    facts = qat_qdq_onnx(model, load_keras_model(Path(parent) / MODEL_FILE), image_size, pixels, preprocessing.apply,
                         out, job.opset, job.onnx_weights, float_out=Path(job.work_dir) / FLOAT_FOR_INT8)
    return onnx.load(str(out)), facts


def _input_quantization(proto: Any) -> dict[str, Any] | None:
    """Scale/zero point of the QuantizeLinear that consumes the model input (QDQ models), else None."""
    from onnx import numpy_helper

    inits = {init.name: init for init in proto.graph.initializer}
    consts = {node.output[0]: node for node in proto.graph.node if node.op_type == "Constant"}

    def value(name: str) -> Any:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in consts:
            return numpy_helper.to_array(consts[name].attribute[0].t)
        return None

    frontier = {INPUT_NAME}
    for _ in range(4):  # the input may pass through a Transpose/Identity first
        for node in proto.graph.node:
            if node.op_type == "QuantizeLinear" and node.input[0] in frontier:
                scale, zero = value(node.input[1]), value(node.input[2]) if len(node.input) > 2 else None
                if scale is not None:
                    return {"scale": float(np.ravel(scale)[0]),
                            "zero_point": int(np.ravel(zero)[0]) if zero is not None else 0}
        frontier |= {out for node in proto.graph.node if set(node.input) & frontier for out in node.output}
    return None


@register
class OnnxExporter(Exporter):
    """Writes ``model_float32.onnx`` / ``model_int8.onnx`` with ``metadata_props["edgeft.metadata"]``."""

    format = Format.ONNX.value
    precisions = (Precision.FLOAT32, Precision.INT8)
    order = 20

    def filename(self, precision: Precision) -> str:
        return FILENAMES[precision]

    def backend(self, precision: Precision) -> str | None:
        return "onnx"

    def details(self, result: dict[str, Any]) -> dict[str, Any] | None:
        return {"opset": result.get("opset"), "checker": result.get("checker")}

    def skip_reason(self, precision: Precision, run_kind: str) -> str | None:
        if run_kind == "qat" and precision != Precision.INT8:
            return ("tf2onnx mis-converts tfmot's fake-quant nodes to float (top-1 agreement 0.28-0.44 measured); "
                    "export the parent float run for a float ONNX model")
        return None

    @staticmethod
    def rounded(job: ConversionJob, model: Any, preprocessing: Any, skip: tuple[str, ...]) -> tuple[Any, dict[str, Any]]:
        """The model the int8 graph is made from: output-aware weight rounding on onnxruntime's grid for
        ``job.onnx_weights`` (none for 7-bit weights, whose reduced grid it does not model)."""
        weights = OnnxWeights(job.onnx_weights)
        if weights == OnnxWeights.INT8_7BIT and job.weight_rounding == "adaptive":
            return model, {"method": "nearest", "reason": "--onnx-weights int8_7bit"}
        grid = "uint8_symmetric" if weights == OnnxWeights.UINT8 else "int8_symmetric"
        return rounded_model(job, model, preprocessing, grid, skip)

    def convert(self, job: ConversionJob, model: Any) -> dict[str, Any]:
        import onnx

        from edgeft.export.metadata import embed_onnx_metadata
        from edgeft.fileio import atomic_path
        from edgeft.preprocessing import Preprocessing

        precision = Precision(job.precision)
        image_size = int(job.metadata["image_size"])
        preprocessing = Preprocessing.from_dict(job.metadata["preprocessing"])
        info: dict[str, Any] = {"converter": "tf2onnx.convert.from_keras", "opset": job.opset}
        metadata = dict(job.metadata)
        if job.source == "qat":
            if precision != Precision.INT8:
                raise ExportError("a QAT run has no float32 ONNX export; export the parent float run for that")
            proto, qat_info = qat_onnx(job, model, image_size, preprocessing)
            info.update(qat_info, quant_format="QDQ (trained QAT ranges)")
        elif precision == Precision.INT8:
            kept = resolved_keep_float(job, model, image_size, preprocessing)
            layers: tuple[str, ...] = kept.layers if kept else ()
            if kept:
                metadata["keep_float"] = kept.to_dict()
            model, metadata["weight_rounding"] = self.rounded(job, model, preprocessing, layers)
            proto = keras_to_onnx(model, image_size, job.opset)
        else:
            proto = keras_to_onnx(model, image_size, job.opset)
        if precision == Precision.INT8 and job.source != "qat":
            pixels = load_calibration_pixels(job.calibration)
            float_path = Path(job.work_dir) / FLOAT_FOR_INT8
            onnx.save(proto, str(float_path))
            quantized = Path(job.work_dir) / "onnx_int8_raw.onnx"
            info.update(quantize_onnx_static(float_path, quantized, pixels, preprocessing, job.onnx_calib_method,
                                             OnnxWeights(job.onnx_weights), layers))
            info["converter"] += " + onnxruntime.quantization.quantize_static"
            proto = onnx.load(str(quantized))
        out_name = proto.graph.output[0].name
        metadata["input"] = {"name": INPUT_NAME, "shape": ["N", image_size, image_size, 3], "dtype": "float32",
                             "quantization": _input_quantization(proto) if precision == Precision.INT8 else None}
        metadata["output"] = {"name": out_name, "shape": ["N", len(metadata["labels"])], "dtype": "float32",
                              "quantization": None}
        metadata["onnx"] = info
        embed_onnx_metadata(proto, metadata)
        try:
            onnx.checker.check_model(proto)
        except Exception as error:
            raise ExportError(f"ONNX {precision.value} model fails onnx.checker: {first_line(error)}") from None
        with atomic_path(Path(job.output)) as temp:
            onnx.save(proto, str(temp))
        return {"metadata": metadata, "converter": info["converter"], "opset": job.opset, "checker": "passed"}
