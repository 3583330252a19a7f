"""Float-tensor reference runners for the int8 goal tests: TFLite and onnxruntime fed preprocessed float
inputs (quantized here for integer models), compared with Keras. Export itself validates through the device
layer on uint8 pixels; these tests measure the quantization methods apart from that feeding."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeft.errors import ModelFileError


@dataclass(frozen=True)
class ParityResult:
    """How an artifact compares with the Keras model on the held-out split (fractions 0..1)."""

    accuracy: float | None
    agreement: float | None
    max_abs_diff: float | None
    latency_ms: float | None
    samples: int


def _quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return x.astype(np.float32)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if np.dtype(detail["dtype"]) == np.float32:
        return y.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return (y.astype(np.float32) - zero_point) * scale


class ArtifactRunner:
    """One loaded artifact: ``predict`` maps a preprocessed float32 batch of 1 to float32 outputs;
    ``invoke_only`` returns a zero-argument call that runs the model on an input already set.

    Latency is timed on ``invoke_only`` so that it counts the runtime alone, as the on-device
    runner does: an app that feeds uint8 pixels to a uint8 model does no quantization in Python.
    """

    def predict(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def invoke_only(self, x: np.ndarray) -> Callable[[], Any]:
        raise NotImplementedError


class TFLiteRunner(ArtifactRunner):
    """A TFLite model in ``ai_edge_litert``'s interpreter (XNNPACK, ``threads`` threads)."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            raise ModelFileError(f"cannot load TFLite model {path}: {str(error).splitlines()[0][:200]}") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"], _quantize(x, self.input))
        self.interpreter.invoke()
        return _dequantize(self.interpreter.get_tensor(self.output["index"]), self.output)

    def invoke_only(self, x: np.ndarray) -> Callable[[], Any]:
        self.interpreter.set_tensor(self.input["index"], _quantize(x, self.input))
        return self.interpreter.invoke


class OnnxRunner(ArtifactRunner):
    """An ONNX model in ``onnxruntime`` (CPU execution provider, ``threads`` intra-op threads)."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:
            raise ModelFileError(f"cannot load ONNX model {path}: {str(error).splitlines()[0][:200]}") from None
        self.input_name = self.session.get_inputs()[0].name

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: x.astype(np.float32)})[0], np.float32)

    def invoke_only(self, x: np.ndarray) -> Callable[[], Any]:
        feed = {self.input_name: x.astype(np.float32)}
        return lambda: self.session.run(None, feed)


def tflite_runner(path: Path, threads: int = 1) -> TFLiteRunner:
    """Load a TFLite model for parity checks and timing."""
    return TFLiteRunner(path, threads)


def onnx_runner(path: Path, threads: int = 1) -> OnnxRunner:
    """Load an ONNX model for parity checks and timing."""
    return OnnxRunner(path, threads)


def measure_latency(invoke: Callable[[], Any], repeats: int = 30, warmup: int = 3) -> float:
    """Median wall time (ms) of ``repeats`` calls of ``invoke`` after ``warmup`` calls."""
    for _ in range(warmup):
        invoke()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        invoke()
        times.append((time.perf_counter() - start) * 1000.0)
    return float(statistics.median(times))


def check_artifact(runner: ArtifactRunner, inputs: np.ndarray, labels: np.ndarray,
                   keras_probs: np.ndarray, latency_runs: int = 30) -> ParityResult:
    """Accuracy, top-1 agreement with Keras, max |output - keras| and latency of one artifact."""
    outputs = np.concatenate([runner.predict(inputs[i : i + 1]) for i in range(inputs.shape[0])]) if len(inputs) else \
        np.zeros_like(keras_probs)
    predicted = outputs.argmax(axis=1)
    accuracy = float(np.mean(predicted == labels)) if len(labels) else None
    agreement = float(np.mean(predicted == keras_probs.argmax(axis=1))) if len(labels) else None
    max_abs = float(np.max(np.abs(outputs - keras_probs))) if len(labels) else None
    latency = measure_latency(runner.invoke_only(inputs[:1]), latency_runs) if len(inputs) and latency_runs > 0 \
        else None
    return ParityResult(accuracy, agreement, max_abs, latency, int(len(labels)))
