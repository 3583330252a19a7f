"""TFLite: float32, float16, dynamic-range and full-integer int8, batch-1 static shape.

Conversion goes through ``from_concrete_functions`` with ``TensorSpec([1, H, W, 3])``, which
gives static shapes (for EfficientNet this removes the dynamic-batch SHAPE/STRIDED_SLICE/PACK
ops of the squeeze-excite reshape). Full integer uses ``representative_dataset`` and
``supported_ops=[TFLITE_BUILTINS_INT8]`` for float and QAT models alike; without the INT8 op set
the converter leaves float ops in with only a warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeft.errors import CalibrationError, ExportError, first_line
from edgeft.export.spec import Format, IODtype, Precision
from edgeft.export.formats import ConversionJob, Exporter, register

FILENAMES = {
    Precision.FLOAT32: "model_float32.tflite",
    Precision.FLOAT16: "model_float16.tflite",
    Precision.DYNAMIC_RANGE: "model_dynamic_range.tflite",
    Precision.INT8: "model_int8.tflite",
}


def load_calibration_pixels(path: str | None) -> np.ndarray:
    """The uint8 calibration pixels the export staged, or :class:`CalibrationError` when there are none."""
    if not path:
        raise CalibrationError("int8 export needs calibration data: the run has no training split; "
                               "pass --calib-dir DIR or --calib-list FILE")
    with np.load(path, allow_pickle=False) as data:
        return data["pixels"]


def convert_keras_to_tflite(model: Any, image_size: int, precision: Precision, preprocessing: Any,
                            calibration_npz: str | None = None, io_dtype: IODtype = IODtype.UINT8) -> bytes:
    """Convert a (float or QAT) Keras model to TFLite bytes at ``precision`` with a static batch of 1."""
    from edgeft.tfcompat import tf

    tfm = tf()
    function = tfm.function(lambda image: model(image, training=False))
    concrete = function.get_concrete_function(tfm.TensorSpec([1, image_size, image_size, 3], tfm.float32, name="image"))
    converter = tfm.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    if precision == Precision.FLOAT16:
        converter.optimizations = [tfm.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tfm.float16]
    elif precision == Precision.DYNAMIC_RANGE:
        converter.optimizations = [tfm.lite.Optimize.DEFAULT]
    elif precision == Precision.INT8:
        pixels = load_calibration_pixels(calibration_npz)

        def representative() -> Any:
            for index in range(pixels.shape[0]):
                yield [preprocessing.apply(pixels[index : index + 1])]

        converter.optimizations = [tfm.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tfm.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io = {IODtype.UINT8: tfm.uint8, IODtype.INT8: tfm.int8, IODtype.FLOAT32: tfm.float32}[io_dtype]
        converter.inference_input_type = io
        converter.inference_output_type = io
    try:
        return bytes(converter.convert())
    except Exception as error:  # the converter raises ConverterError, RuntimeError, ValueError...
        raise ExportError(f"TFLite {precision.value} conversion failed: {first_line(error)}") from None


def resolved_keep_float(job: ConversionJob, model: Any, image_size: int, preprocessing: Any) -> Any:
    """``job.keep_float`` resolved to a :class:`~edgeft.export.layer_errors.KeepFloat` (once per export), or None."""
    if not job.keep_float:
        return None
    from edgeft.export.config import KEEP_FLOAT_AUTO_LAYERS
    from edgeft.export.layer_errors import cached_keep_float

    return cached_keep_float(Path(job.work_dir), model, image_size, load_calibration_pixels(job.calibration),
                             preprocessing.apply, job.keep_float, KEEP_FLOAT_AUTO_LAYERS)


def rounded_model(job: ConversionJob, model: Any, preprocessing: Any, grid: str,
                  skip: tuple[str, ...] = ()) -> tuple[Any, dict[str, Any]]:
    """``model`` with output-aware weight rounding on ``grid`` when ``job.weight_rounding`` asks for it
    (post-training int8), and what was done (for the artifact's metadata)."""
    if job.weight_rounding != "adaptive":
        return model, {"method": "nearest"}
    from edgeft.quantization.rounding import WeightGrid, adaptive_rounding

    rounded, result = adaptive_rounding(model, load_calibration_pixels(job.calibration), preprocessing.apply,
                                        WeightGrid(grid), skip=skip)
    return rounded, result.to_dict()


def int8_keep_float(job: ConversionJob, model: Any, image_size: int, preprocessing: Any, kept: Any,
                    ) -> tuple[bytes, dict[str, Any]]:
    """Full-integer TFLite bytes with the ``kept`` layers left in float, and what was kept."""
    from edgeft.export.layer_errors import tflite_int8_keep_float

    pixels = load_calibration_pixels(job.calibration)
    data = tflite_int8_keep_float(model, image_size, pixels, preprocessing.apply, kept.tensors, job.io_dtype)
    return data, kept.to_dict()


def io_details(model_bytes: bytes) -> dict[str, Any]:
    """Input/output name, shape, dtype and quantization of a TFLite model (via the device layer's interpreter)."""
    from edgeft.targets import import_tflite

    interpreter = import_tflite()[0](model_content=model_bytes)

    def describe(detail: dict[str, Any]) -> dict[str, Any]:
        scale, zero_point = detail["quantization"]
        return {
            "name": detail["name"],
            "shape": [int(v) for v in detail["shape"]],
            "dtype": np.dtype(detail["dtype"]).name,
            "quantization": {"scale": float(scale), "zero_point": int(zero_point)} if scale else None,
        }

    return {"input": describe(interpreter.get_input_details()[0]),
            "output": describe(interpreter.get_output_details()[0])}


@register
class TFLiteExporter(Exporter):
    """Writes ``model_<precision>.tflite`` with an embedded ``edgeft.metadata`` entry; runs in the TFLite backend."""

    format = Format.TFLITE.value
    precisions = (Precision.FLOAT32, Precision.FLOAT16, Precision.DYNAMIC_RANGE, Precision.INT8)
    order = 10

    def filename(self, precision: Precision) -> str:
        return FILENAMES[precision]

    def backend(self, precision: Precision) -> str | None:
        return "tflite"

    def skip_reason(self, precision: Precision, run_kind: str) -> str | None:
        if run_kind == "qat" and precision == Precision.FLOAT32:
            return ("a QAT model converted without quantization keeps its FAKE_QUANT ops in float (measured on "
                    "EfficientNet-B0: 80 ms vs 1 ms, agreement 0.78); export the parent float run for float models")
        if run_kind == "qat" and precision in (Precision.FLOAT16, Precision.DYNAMIC_RANGE):
            return "float16 / dynamic-range quantization of a QAT model is not meaningful: use int8 from a QAT run"
        return None

    def convert(self, job: ConversionJob, model: Any) -> dict[str, Any]:
        from edgeft.export.metadata import embed_tflite_metadata
        from edgeft.fileio import write_bytes_atomic
        from edgeft.preprocessing import Preprocessing

        precision = Precision(job.precision)
        preprocessing = Preprocessing.from_dict(job.metadata["preprocessing"])
        image_size = int(job.metadata["image_size"])
        extra: dict[str, Any] = {}
        kept = None
        if precision == Precision.INT8 and job.source == "ptq":
            kept = resolved_keep_float(job, model, image_size, preprocessing)
            model, extra["weight_rounding"] = rounded_model(job, model, preprocessing, "int8_symmetric",
                                                            kept.layers if kept else ())
        if kept:
            raw, extra["keep_float"] = int8_keep_float(job, model, image_size, preprocessing, kept)
        else:
            raw = convert_keras_to_tflite(model, image_size, precision, preprocessing, job.calibration,
                                          IODtype(job.io_dtype))
        io = io_details(raw)
        metadata = dict(job.metadata, **io, **extra)
        data = embed_tflite_metadata(raw, metadata)
        write_bytes_atomic(Path(job.output), data)
        return {"metadata": metadata, "converter": "tf.lite.TFLiteConverter.from_concrete_functions"}
