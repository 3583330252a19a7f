"""edgeft's device layer: the code that runs on the device, and the host's only way to run a model.

Standard library plus numpy and one interpreter (imported when a model is loaded): it runs on a
Raspberry Pi's Python 3.9 as one zipapp file (``python3 edgeft-device.pyz doctor|bench|classify``),
and on the host as ``edgeft.targets``, where export validates with it, bench pushes it and
``edgeft.runtime`` wraps it. The target profiles (``*.toml``) ship in the same folder.

Modules: :mod:`.contract` (sidecar name and schema, evaluation file, job and result, pins),
:mod:`.backends` (one per runtime, by file suffix), :mod:`.preprocess`, :mod:`.flatbuffer`,
:mod:`.measure`, :mod:`.device`, :mod:`.model`, :mod:`.bench`, :mod:`.__main__`; for apps,
:mod:`.images` (any image -> pixels: the one decoder, training's too) and :mod:`.classifier`.
"""

from __future__ import annotations

from .backends import Backend, backend_for, backend_names, known_suffixes, register_backend
from .backends.tflite import import_tflite, runtime_too_old
from .bench import label_map
from .classifier import ArgumentError, Classifier
from .contract import (DEVICE_VERSION, EVAL_ARRAYS, MARKER_FILE, PINS, DeviceError, ModelCorruptError, install_hint,
                       load_eval, pins_for, pip_line, read_sidecar, sidecar_path, validate_sidecar, write_eval)
from .flatbuffer import EDGEFT_METADATA_KEY, edgeft_metadata, min_runtime_version, tflite_metadata
from .images import ImageError, SkipReason, load_image, resize_images
from .measure import latency_stats, p50_ms, peak_rss_mb, time_invocations
from .model import Model
from .preprocess import dequantize, prepare_input

__all__ = [
    "ArgumentError", "Classifier", "ImageError", "SkipReason", "load_image",
    "DEVICE_VERSION", "EDGEFT_METADATA_KEY", "EVAL_ARRAYS", "MARKER_FILE", "PINS", "Backend", "DeviceError", "Model",
    "ModelCorruptError", "backend_for",
    "backend_names", "dequantize", "edgeft_metadata", "import_tflite", "install_hint", "known_suffixes", "label_map", "latency_stats", "load_eval",
    "min_runtime_version", "p50_ms", "peak_rss_mb", "pins_for", "pip_line", "prepare_input", "read_sidecar",
    "register_backend", "resize_images", "runtime_too_old", "sidecar_path", "tflite_metadata", "time_invocations",
    "validate_sidecar", "write_eval",
]
