"""The artifact contract between the host and the device: file names, schemas, pins.

Everything both sides must agree on lives here, once: the sidecar file name and its schema,
the evaluation file's arrays, a bench job and its result row, the marker file of a bench
directory, and the runtime versions that ``edgeft doctor`` and the target profiles install.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Optional, Tuple

DEVICE_VERSION = "2"
MARKER_FILE = ".edgeft-bench"
SIDECAR_SUFFIX = ".json"
EVAL_ARRAYS = ("images", "labels", "class_names")  # uint8 (N, H, W, 3), int64 (N,), str (C,)
CHANNEL_ORDERS = ("RGB", "BGR")

# One bench job: one model with one thread count, run in its own process.
JOB_KEYS = ("path", "sidecar", "threads", "runs", "duration", "warmup", "runtime", "delegate", "eval")
# What a job prints (one JSON object): these keys, or {"error": "<one line>"} (with "error_kind": "model"
# when the model file itself is damaged: the host then reports a bad model, not a failed target).
RESULT_KEYS = ("runtime", "runtime_version", "delegate", "threads", "input_shape", "input_dtype", "load_ms",
               "first_inference_ms", "warmup", "runs", "mean_ms", "std_ms", "min_ms", "p50_ms", "p90_ms",
               "p99_ms", "max_ms", "throughput_ips", "accuracy", "top5_accuracy", "eval_count", "peak_rss_mb")

# Runtime pins per device Python (major.minor): measured to install together on a Raspberry Pi.
PINS: Dict[str, Dict[str, str]] = {
    "3.9": {"numpy": "numpy<2", "tflite": "ai-edge-litert==2.1.0", "onnx": "onnxruntime==1.19.2"},
    "default": {"numpy": "numpy", "tflite": "ai-edge-litert==2.3.0", "onnx": "onnxruntime==1.32.0"},
}


class DeviceError(Exception):
    """A failure on the device, with a one-line message for the user."""


class ModelCorruptError(DeviceError):
    """A model file no runtime can parse (not a TFLite flatbuffer or ONNX protobuf, truncated, damaged)."""


def pins_for(python_version: str) -> Dict[str, str]:
    """The pinned packages for a device Python ("3.9.2" -> the 3.9 line, else the default line)."""
    short = ".".join(python_version.split(".")[:2])
    return PINS.get(short, PINS["default"])


def pip_line(python_version: str) -> str:
    """``pip install ...`` for a device Python, numpy plus both interpreters."""
    pins = pins_for(python_version)
    return "pip install %s %s %s" % (_quote(pins["numpy"]), pins["tflite"], pins["onnx"])


def _quote(requirement: str) -> str:
    return "'%s'" % requirement if re.search(r"[<>]", requirement) else requirement


def install_hint(kind: str) -> str:
    """What to install when the ``kind`` ("tflite" or "onnx") runtime is missing or too old."""
    return "pip install %s (Python 3.9: %s; 3.10+: %s)" % (
        PINS["default"][kind].split("==")[0], PINS["3.9"][kind], PINS["default"][kind])


def sidecar_path(artifact: str) -> str:
    """The sidecar of an artifact: ``model_int8.tflite`` -> ``model_int8.tflite.json``."""
    return str(artifact) + SIDECAR_SUFFIX


def validate_sidecar(data: Any, where: str = "sidecar") -> Dict[str, Any]:
    """Check the parts of a sidecar the device reads; return it or raise :class:`DeviceError`."""
    if not isinstance(data, dict):
        raise DeviceError("corrupted %s: expected a JSON object" % where)
    prep = data.get("preprocessing")
    if prep is not None:
        if not isinstance(prep, dict):
            raise DeviceError("corrupted %s: preprocessing must be an object" % where)
        for key in ("scale", "offset"):
            value = prep.get(key)
            if value is not None and not (isinstance(value, list) and len(value) == 3
                                          and all(isinstance(v, (int, float)) for v in value)):
                raise DeviceError("corrupted %s: preprocessing.%s must be 3 numbers" % (where, key))
        if prep.get("channel_order", "RGB") not in CHANNEL_ORDERS:
            raise DeviceError("corrupted %s: preprocessing.channel_order must be RGB or BGR" % where)
    labels = data.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(v, str) for v in labels)):
        raise DeviceError("corrupted %s: labels must be a list of strings" % where)
    return data


def read_sidecar(artifact: str) -> Optional[Dict[str, Any]]:
    """The sidecar next to ``artifact``, validated; None when there is none."""
    path = sidecar_path(artifact)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "r", encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as error:
        raise DeviceError("corrupted sidecar %s: %s" % (path, error))
    return validate_sidecar(data, "sidecar %s" % path)


def write_eval(path: str, images: Any, labels: Any, class_names: List[str]) -> None:
    """Write an evaluation file (plain arrays, readable with ``allow_pickle=False``), atomically."""
    import numpy as np

    temporary = str(path) + ".tmp.npz"
    np.savez(temporary, images=np.ascontiguousarray(images, dtype=np.uint8),
             labels=np.asarray(labels).astype(np.int64), class_names=np.array(list(class_names), dtype=np.str_))
    os.replace(temporary, str(path))


def load_eval(path: str) -> Tuple[Any, Any, List[str]]:
    """Read an evaluation file: uint8 images (N, H, W, 3), int64 labels, class names."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            images = np.asarray(data["images"])
            labels = np.asarray(data["labels"]).astype(np.int64)
            names = [str(n) for n in data["class_names"]] if "class_names" in data.files else []
    except (OSError, ValueError, KeyError) as error:
        raise DeviceError("cannot read evaluation set %s: %s (need arrays images, labels)" % (path, error))
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(labels):
        raise DeviceError("evaluation set %s: images must be uint8 (N, H, W, 3) with N labels" % path)
    return images, labels, names
