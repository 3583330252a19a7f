"""Run each artifact in its real runtime on the held-out split and compare it with Keras.

TFLite models run in ``ai_edge_litert``'s interpreter (one image at a time, inputs quantized
with the model's own input scale/zero point, outputs dequantized); ONNX models in
``onnxruntime`` (CPU). Both use the same thread count. Latency is the median of repeated
single-image invocations after warm-up.
"""

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


def tflite_runner(path: Path, threads: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """A function mapping one preprocessed float32 batch of 1 to float32 outputs, via ai_edge_litert."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        raise ModelFileError(f"cannot load TFLite model {path}: {str(error).splitlines()[0][:200]}") from None
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def run(x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(inp["index"], _quantize(x, inp))
        interpreter.invoke()
        return _dequantize(interpreter.get_tensor(out["index"]), out)

    return run


def onnx_runner(path: Path, threads: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """A function mapping a preprocessed float32 batch to float32 outputs, via onnxruntime (CPU)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise ModelFileError(f"cannot load ONNX model {path}: {str(error).splitlines()[0][:200]}") from None
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: x.astype(np.float32)})[0], np.float32)

    return run


def measure_latency(run: Callable[[np.ndarray], np.ndarray], example: np.ndarray, repeats: int = 30,
                    warmup: int = 3) -> float:
    """Median wall time (ms) of ``repeats`` single-image calls after ``warmup`` calls."""
    for _ in range(warmup):
        run(example)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(example)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(statistics.median(times))


def check_artifact(runner: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, labels: np.ndarray,
                   keras_probs: np.ndarray, latency_runs: int = 30) -> ParityResult:
    """Accuracy, top-1 agreement with Keras, max |output - keras| and latency of one artifact."""
    outputs = np.concatenate([runner(inputs[i : i + 1]) for i in range(inputs.shape[0])]) if len(inputs) else \
        np.zeros_like(keras_probs)
    predicted = outputs.argmax(axis=1)
    accuracy = float(np.mean(predicted == labels)) if len(labels) else None
    agreement = float(np.mean(predicted == keras_probs.argmax(axis=1))) if len(labels) else None
    max_abs = float(np.max(np.abs(outputs - keras_probs))) if len(labels) else None
    latency = measure_latency(runner, inputs[:1], latency_runs) if len(inputs) and latency_runs > 0 else None
    return ParityResult(accuracy, agreement, max_abs, latency, int(len(labels)))
