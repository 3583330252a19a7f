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
    return proto



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
