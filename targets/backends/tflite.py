"""TFLite: ai-edge-litert, else tflite-runtime, else tf.lite; the Edge TPU delegate.

Only the classic ``Interpreter`` API: LiteRT's CompiledModel API dies with SIGILL on a Pi 4.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional, Tuple

from ..contract import DeviceError, ModelCorruptError, install_hint
from ..flatbuffer import min_runtime_version
from ..native import banners_silenced
from . import Backend

EDGETPU_LIBRARY = "libedgetpu.so.1"
_OP_VERSION_RE = re.compile(r"Didn't find op for builtin opcode '([A-Z0-9_]+)' version '(\d+)'")
_MODULES = (("ai_edge_litert", "ai-edge-litert"), ("tflite_runtime", "tflite-runtime"), ("tensorflow", "tensorflow"))
# ai-edge-litert has its own version numbers; the TensorFlow Lite release each one follows (approximate).
_LITERT_AS_TF = [((2, 3), "2.21.0"), ((2, 1), "2.20.0"), ((2, 0), "2.20.0"), ((1, 4), "2.20.0"),
                 ((1, 2), "2.19.0"), ((1, 0), "2.18.0"), ((0,), "2.17.0")]


def version_of(distribution: str) -> Optional[str]:
    """The installed version of a distribution, or None."""
    try:
        from importlib import metadata
    except ImportError:  # pragma: no cover - Python < 3.8
        return None
    try:
        return metadata.version(distribution)
    except Exception:
        return None


def tflite_runtimes() -> List[Tuple[str, Optional[str]]]:
    """The TFLite interpreter packages installed, best first, as (module name, version)."""
    found = []
    for module, dist in _MODULES:
        version = version_of(dist)
        if version is None and module == "tensorflow":
            version = version_of("tensorflow-cpu")
        if version is not None:
            found.append((module, version))
    return found


def import_tflite(preferred: Optional[str] = None) -> Tuple[Any, Any, str, str]:
    """Import a TFLite interpreter: (Interpreter class, load_delegate, runtime name, version)."""
    order = [module for module, _ in _MODULES]
    if preferred and preferred != "auto":
        if preferred not in order:
            raise DeviceError("unknown TFLite runtime '%s' (use one of %s)" % (preferred, ", ".join(order)))
        order = [preferred]
    errors = []
    for name in order:
        try:
            if name == "ai_edge_litert":
                from ai_edge_litert import interpreter as module  # type: ignore
                return module.Interpreter, module.load_delegate, "ai-edge-litert", version_of("ai-edge-litert") or "?"
            if name == "tflite_runtime":
                from tflite_runtime import interpreter as module  # type: ignore
                return module.Interpreter, module.load_delegate, "tflite-runtime", version_of("tflite-runtime") or "?"
            import tensorflow as tf  # type: ignore  # last resort: heavy

            return tf.lite.Interpreter, tf.lite.experimental.load_delegate, "tensorflow", getattr(tf, "__version__", "?")
        except ImportError as error:
            errors.append("%s (%s)" % (name, error))
        except Exception as error:  # e.g. tflite-runtime 2.14 built for numpy 1 under numpy 2
            errors.append("%s (%s)" % (name, str(error).splitlines()[0] if str(error) else type(error).__name__))
    raise DeviceError("no usable TFLite interpreter on this device: tried %s; install one: %s"
                      % ("; ".join(errors), install_hint("tflite")))


def edgetpu_library_status() -> Tuple[bool, str]:
    """Whether ``libedgetpu.so.1`` can be opened here, and why not."""
    import ctypes

    try:
        ctypes.CDLL(EDGETPU_LIBRARY)
        return True, "found"
    except OSError as error:
        return False, str(error)


def load_edgetpu_delegate(load_delegate: Any) -> Any:
    """Load the Edge TPU delegate, or raise a one-line :class:`DeviceError` saying what is missing."""
    present, why = edgetpu_library_status()
    if not present:
        raise DeviceError(
            "Edge TPU delegate %s is not installed (%s): install the Coral runtime "
            "(`sudo apt-get install libedgetpu1-std` from packages.cloud.google.com/apt coral-edgetpu-stable) "
            "or benchmark the CPU model instead" % (EDGETPU_LIBRARY, why))
    try:
        return load_delegate(EDGETPU_LIBRARY)
    except (ValueError, OSError, RuntimeError) as error:
        raise DeviceError(
            "Edge TPU delegate loaded but no Edge TPU was found (%s): plug in the Coral USB Accelerator "
            "(a USB 3 port), check `lsusb` for 'Global Unichip' or '18d1:9302', and that your user may access it"
            % (str(error).splitlines()[0] if str(error) else type(error).__name__))


def version_tuple(text: Optional[str]) -> Tuple[int, ...]:
    """'2.14.0' -> (2, 14, 0); unparsable parts stop the tuple."""
    parts = []
    for piece in (text or "").split("."):
        digits = re.match(r"\d+", piece)
        if not digits:
            break
        parts.append(int(digits.group(0)))
    return tuple(parts)


def runtime_tflite_equivalent(runtime: str, version: str) -> str:
    """The TensorFlow Lite version a runtime corresponds to (for comparing with min_runtime_version)."""
    if runtime in ("ai-edge-litert", "ai_edge_litert"):
        have = version_tuple(version)
        for floor, tf_version in _LITERT_AS_TF:
            if have >= floor:
                return tf_version
    return version


def runtime_too_old(runtime: str, version: str, needed: Optional[str]) -> bool:
    """True when ``runtime`` ``version`` is older than a model's ``min_runtime_version``."""
    if not needed or not version or version == "?":
        return False
    return version_tuple(runtime_tflite_equivalent(runtime, version))[:2] < version_tuple(needed)[:2]


def explain_load_failure(error: BaseException, runtime: str, version: str, model_path: str) -> str:
    """Turn an interpreter's refusal to load a model into one line naming the op and the fix."""
    text = str(error)
    match = _OP_VERSION_RE.search(text)
    if match:
        needed = min_runtime_version(model_path)
        return ("%s %s cannot run %s: it lacks op %s version %s%s; install a newer runtime: %s"
                % (runtime, version, os.path.basename(model_path), match.group(1), match.group(2),
                   " (the model needs TFLite >= %s)" % needed if needed else "", install_hint("tflite")))
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return "%s %s cannot load %s: %s" % (runtime, version, os.path.basename(model_path), first)


def not_a_flatbuffer(path: str, error: BaseException) -> bool:
    """True when ``path`` is no TFLite model at all: no ``TFL3`` identifier, or a flatbuffer the runtime rejects."""
    if "not a valid Flatbuffer" in str(error):
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(8)[4:8] != b"TFL3"
    except OSError:
        return False


class TFLiteBackend(Backend):
    """A .tflite model in the classic ``Interpreter`` (XNNPACK on CPU, or the Edge TPU delegate).

    Options: ``runtime`` (auto, ai_edge_litert, tflite_runtime, tensorflow), ``delegate`` (None/auto:
    the Edge TPU for ``*_edgetpu.tflite`` files; "edgetpu"; "none").
    """

    name = "tflite"

    def __init__(self, path: str, threads: int, options: Dict[str, Any]) -> None:
        import numpy as np

        interpreter_cls, load_delegate, self.runtime, self.runtime_version = import_tflite(options.get("runtime"))
        delegate = options.get("delegate")
        delegates = []
        if delegate == "edgetpu" or (delegate in (None, "auto") and path.endswith("_edgetpu.tflite")):
            delegates.append(load_edgetpu_delegate(load_delegate))
            self.delegate = "edgetpu"
        try:
            kwargs: Dict[str, Any] = {"model_path": path, "num_threads": threads}
            if delegates:
                kwargs["experimental_delegates"] = delegates
            with banners_silenced():
                self.interpreter = interpreter_cls(**kwargs)
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            message = explain_load_failure(error, self.runtime, self.runtime_version, path)
            if not_a_flatbuffer(path, error):
                detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise ModelCorruptError("%s is not a valid TFLite model: the file is damaged or truncated (%s %s: %s)"
                                        % (os.path.basename(path), self.runtime, self.runtime_version, detail))
            needed = min_runtime_version(path)
            if needed and runtime_too_old(self.runtime, self.runtime_version, needed) and "needs TFLite" not in message:
                message += " (the model needs TFLite >= %s)" % needed
            raise DeviceError(message)
        inp = self.interpreter.get_input_details()[0]
        out = self.interpreter.get_output_details()[0]
        self._input_index, self._output_index = inp["index"], out["index"]
        self.input_shape = [int(d) for d in inp["shape"]]
        self.input_dtype = np.dtype(inp["dtype"])
        self.input_quant = tuple(inp.get("quantization") or (0.0, 0))  # type: ignore[assignment]
        self.output_quant = tuple(out.get("quantization") or (0.0, 0))  # type: ignore[assignment]

    def set_input(self, tensor: Any) -> None:
        self.interpreter.set_tensor(self._input_index, tensor)

    def invoke(self) -> None:
        self.interpreter.invoke()

    def output(self) -> Any:
        return self.interpreter.get_tensor(self._output_index)


BACKEND = ("tflite", (".tflite",), TFLiteBackend)
