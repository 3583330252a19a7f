"""ONNX: onnxruntime on the CPU execution provider."""

from __future__ import annotations

import os
from typing import Any, Dict

from ..contract import DeviceError, ModelCorruptError, install_hint
from . import Backend

_DTYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(float16)": "float16"}


class OnnxBackend(Backend):
    """An .onnx model in onnxruntime, ``threads`` intra-op threads; NCHW inputs are detected."""

    name = "onnx"

    def __init__(self, path: str, threads: int, options: Dict[str, Any]) -> None:
        import numpy as np

        try:
            import onnxruntime as ort  # type: ignore
        except ImportError as error:
            raise DeviceError("onnxruntime is not installed on this device (%s): %s" % (error, install_hint("onnx")))
        self.runtime, self.runtime_version = "onnxruntime", getattr(ort, "__version__", "?")
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = threads
        session_options.inter_op_num_threads = 1
        session_options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(path, sess_options=session_options, providers=["CPUExecutionProvider"])
        except Exception as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            if "INVALID_PROTOBUF" in first or type(error).__name__ == "InvalidProtobuf":
                raise ModelCorruptError("%s is not a valid ONNX model: the file is damaged or truncated (onnxruntime %s: "
                                        "protobuf parsing failed)" % (os.path.basename(path), self.runtime_version))
            raise DeviceError("onnxruntime %s cannot load %s: %s" % (self.runtime_version, os.path.basename(path), first))
        inp = self.session.get_inputs()[0]
        self._input_name = inp.name
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        self.layout = "NCHW" if len(shape) == 4 and shape[1] == 3 and shape[3] != 3 else "NHWC"
        self.input_shape = [shape[0], shape[2], shape[3], shape[1]] if self.layout == "NCHW" else shape
        self.input_dtype = np.dtype(_DTYPES.get(inp.type, "float32"))
        self._feed: Dict[str, Any] = {}
        self._out: Any = None

    def set_input(self, tensor: Any) -> None:
        self._feed = {self._input_name: tensor}

    def invoke(self) -> None:
        self._out = self.session.run(None, self._feed)

    def output(self) -> Any:
        return self._out[0]


BACKEND = ("onnx", (".onnx",), OnnxBackend)
