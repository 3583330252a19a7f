#!/usr/bin/env python3
"""edgeft on-device runner: benchmark and check image classifiers on the device itself.

Standalone on purpose: the host copies this one file to the device and runs it with the
device's Python (>= 3.9). It needs only the standard library, numpy, and one interpreter:
``ai_edge_litert``, else ``tflite_runtime``, else ``tensorflow.lite`` for ``.tflite`` files,
and ``onnxruntime`` for ``.onnx`` files. It never imports edgeft, and imports TensorFlow only
when no light runtime is installed.

Usage (the host builds these command lines)::

    python3 runner.py doctor
    python3 runner.py bench --spec SPEC.json [--cleanup DIR] [--watch-stdin]
    python3 runner.py classify MODEL IMAGE.npy

Every mode prints exactly one JSON document on stdout. ``--cleanup DIR`` removes DIR (which
must hold the marker file ``.edgeft-bench``) when the runner exits, is interrupted, receives
SIGHUP/SIGTERM, or -- with ``--watch-stdin`` -- when its standard input closes (the SSH
connection that started it is gone).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

RUNNER_VERSION = "1"
MARKER_FILE = ".edgeft-bench"
EDGETPU_LIBRARY = "libedgetpu.so.1"

# What to install when a runtime is missing or too old (the host's profiles give exact pins).
INSTALL_HINT = "pip install ai-edge-litert (Python 3.9: ai-edge-litert==2.1.0; 3.10+: ai-edge-litert==2.3.0)"

_OP_VERSION_RE = re.compile(r"Didn't find op for builtin opcode '([A-Z0-9_]+)' version '(\d+)'")


class RunnerError(Exception):
    """A failure with a one-line message for the user."""


# ----------------------------------------------------------------------------- interpreters
def _version_of(distribution: str) -> Optional[str]:
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
    for module, dist in (("ai_edge_litert", "ai-edge-litert"), ("tflite_runtime", "tflite-runtime"),
                         ("tensorflow", "tensorflow")):
        version = _version_of(dist)
        if version is None and module == "tensorflow":
            version = _version_of("tensorflow-cpu")
        if version is not None:
            found.append((module, version))
    return found


def import_tflite(preferred: Optional[str] = None) -> Tuple[Any, Any, str, str]:
    """Import a TFLite interpreter: returns (Interpreter class, load_delegate, runtime name, version)."""
    order = ["ai_edge_litert", "tflite_runtime", "tensorflow"]
    if preferred and preferred != "auto":
        if preferred not in order:
            raise RunnerError("unknown TFLite runtime '%s' (use one of %s)" % (preferred, ", ".join(order)))
        order = [preferred]
    errors = []
    for name in order:
        try:
            if name == "ai_edge_litert":
                from ai_edge_litert import interpreter as module  # type: ignore
                return module.Interpreter, module.load_delegate, "ai-edge-litert", _version_of("ai-edge-litert") or "?"
            if name == "tflite_runtime":
                from tflite_runtime import interpreter as module  # type: ignore
                return module.Interpreter, module.load_delegate, "tflite-runtime", _version_of("tflite-runtime") or "?"
            import tensorflow as tf  # type: ignore  # last resort: heavy

            version = getattr(tf, "__version__", "?")
            return tf.lite.Interpreter, tf.lite.experimental.load_delegate, "tensorflow", version
        except ImportError as error:
            errors.append("%s (%s)" % (name, error))
        except Exception as error:  # e.g. tflite-runtime 2.14 built for numpy 1 under numpy 2
            errors.append("%s (%s)" % (name, str(error).splitlines()[0] if str(error) else type(error).__name__))
    raise RunnerError("no usable TFLite interpreter on this device: tried %s; install one: %s"
                      % ("; ".join(errors), INSTALL_HINT))


def edgetpu_library_status() -> Tuple[bool, str]:
    """Whether ``libedgetpu.so.1`` can be opened here, and why not."""
    import ctypes

    try:
        ctypes.CDLL(EDGETPU_LIBRARY)
        return True, "found"
    except OSError as error:
        return False, str(error)


def load_edgetpu_delegate(load_delegate: Any) -> Any:
    """Load the Edge TPU delegate, or raise a one-line :class:`RunnerError` saying what is missing."""
    present, why = edgetpu_library_status()
    if not present:
        raise RunnerError(
            "Edge TPU delegate %s is not installed (%s): install the Coral runtime "
            "(`sudo apt-get install libedgetpu1-std` from packages.cloud.google.com/apt coral-edgetpu-stable) "
            "or benchmark the CPU model instead" % (EDGETPU_LIBRARY, why))
    try:
        return load_delegate(EDGETPU_LIBRARY)
    except (ValueError, OSError, RuntimeError) as error:
        raise RunnerError(
            "Edge TPU delegate loaded but no Edge TPU was found (%s): plug in the Coral USB Accelerator "
            "(a USB 3 port), check `lsusb` for 'Global Unichip' or '18d1:9302', and that your user may access it"
            % (str(error).splitlines()[0] if str(error) else type(error).__name__))


def explain_load_failure(error: BaseException, runtime: str, version: str, model_path: str) -> str:
    """Turn an interpreter's refusal to load a model into one line naming the op and the fix."""
    text = str(error)
    match = _OP_VERSION_RE.search(text)
    if match:
        op, op_version = match.group(1), match.group(2)
        needed = tflite_min_runtime_version(model_path)
        return ("%s %s cannot run %s: it lacks op %s version %s%s; install a newer runtime: %s"
                % (runtime, version, os.path.basename(model_path), op, op_version,
                   " (the model needs TFLite >= %s)" % needed if needed else "", INSTALL_HINT))
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return "%s %s cannot load %s: %s" % (runtime, version, os.path.basename(model_path), first)


# ----------------------------------------------------------------------------- TFLite file facts
def _fb_table(buf: bytes, pos: int) -> Tuple[int, int, int]:
    vtable = pos - struct.unpack_from("<i", buf, pos)[0]
    vt_len = struct.unpack_from("<H", buf, vtable)[0]
    return pos, vtable, vt_len


def _fb_field(buf: bytes, table: Tuple[int, int, int], index: int) -> Optional[int]:
    pos, vtable, vt_len = table
    entry = 4 + 2 * index
    if entry >= vt_len:
        return None
    offset = struct.unpack_from("<H", buf, vtable + entry)[0]
    return pos + offset if offset else None


def _fb_deref(buf: bytes, at: int) -> int:
    return at + struct.unpack_from("<I", buf, at)[0]


def _fb_vector(buf: bytes, at: int) -> Tuple[int, int]:
    start = _fb_deref(buf, at)
    return start + 4, struct.unpack_from("<I", buf, start)[0]


def _fb_string(buf: bytes, at: int) -> str:
    start, length = _fb_vector(buf, at)
    return buf[start:start + length].decode("utf-8", "replace")


def tflite_metadata(model_path: str) -> Dict[str, bytes]:
    """The ``metadata`` entries of a .tflite flatbuffer (name -> bytes), read without any interpreter."""
    with open(model_path, "rb") as handle:
        buf = handle.read()
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        return {}
    try:
        model = _fb_table(buf, _fb_deref(buf, 0))
        buffers_at = _fb_field(buf, model, 4)
        metadata_at = _fb_field(buf, model, 6)
        if buffers_at is None or metadata_at is None:
            return {}
        buffers_start, n_buffers = _fb_vector(buf, buffers_at)
        meta_start, n_meta = _fb_vector(buf, metadata_at)
        result = {}
        for i in range(n_meta):
            entry = _fb_table(buf, _fb_deref(buf, meta_start + 4 * i))
            name_at = _fb_field(buf, entry, 0)
            index_at = _fb_field(buf, entry, 1)
            if name_at is None or index_at is None:
                continue
            index = struct.unpack_from("<I", buf, index_at)[0]
            if index >= n_buffers:
                continue
            buffer = _fb_table(buf, _fb_deref(buf, buffers_start + 4 * index))
            data_at = _fb_field(buf, buffer, 0)
            data = b""
            if data_at is not None:
                start, length = _fb_vector(buf, data_at)
                data = buf[start:start + length]
            else:  # large models keep buffers after the flatbuffer (offset, size)
                off_at, size_at = _fb_field(buf, buffer, 1), _fb_field(buf, buffer, 2)
                if off_at is not None and size_at is not None:
                    off = struct.unpack_from("<Q", buf, off_at)[0]
                    size = struct.unpack_from("<Q", buf, size_at)[0]
                    data = buf[off:off + size]
            result[_fb_string(buf, name_at)] = data
        return result
    except (struct.error, IndexError, UnicodeDecodeError):
        return {}


def tflite_min_runtime_version(model_path: str) -> Optional[str]:
    """The ``min_runtime_version`` the converter recorded in a .tflite file (e.g. "2.17.0"), or None."""
    if not model_path.endswith(".tflite") or not os.path.isfile(model_path):
        return None
    raw = tflite_metadata(model_path).get("min_runtime_version")
    if not raw:
        return None
    text = raw.split(b"\0", 1)[0].decode("ascii", "replace").strip()
    return text or None


def version_tuple(text: Optional[str]) -> Tuple[int, ...]:
    """'2.14.0' -> (2, 14, 0); unparsable parts stop the tuple."""
    parts = []
    for piece in (text or "").split("."):
        digits = re.match(r"\d+", piece)
        if not digits:
            break
        parts.append(int(digits.group(0)))
    return tuple(parts)


# ai-edge-litert has its own version numbers; the TensorFlow Lite release each one follows (approximate).
_LITERT_AS_TF = [((2, 3), "2.21.0"), ((2, 1), "2.20.0"), ((2, 0), "2.20.0"), ((1, 4), "2.20.0"),
                 ((1, 2), "2.19.0"), ((1, 0), "2.18.0"), ((0,), "2.17.0")]


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


# ----------------------------------------------------------------------------- models
class LoadedModel:
    """One model loaded in one interpreter, with what is needed to feed it uint8 pixels."""

    def __init__(self, path: str, sidecar: Optional[Dict[str, Any]] = None, threads: int = 1,
                 runtime: str = "auto", delegate: Optional[str] = None) -> None:
        import numpy as np

        self.np = np
        self.path = path
        self.sidecar = sidecar or {}
        self.threads = threads
        self.delegate = None
        if not os.path.isfile(path):
            raise RunnerError("model file not found on the device: %s" % path)
        start = time.perf_counter()
        if path.endswith(".onnx"):
            self._load_onnx(threads)
        elif path.endswith(".tflite"):
            self._load_tflite(threads, runtime, delegate)
        else:
            raise RunnerError("unsupported model format: %s (use .tflite or .onnx)" % path)
        self.load_ms = (time.perf_counter() - start) * 1000.0

    # -- loading
    def _load_tflite(self, threads: int, runtime: str, delegate: Optional[str]) -> None:
        interpreter_cls, load_delegate, self.runtime, self.runtime_version = import_tflite(runtime)
        delegates = []
        wants_edgetpu = delegate == "edgetpu" or (delegate in (None, "auto") and self.path.endswith("_edgetpu.tflite"))
        if wants_edgetpu:
            delegates.append(load_edgetpu_delegate(load_delegate))
            self.delegate = "edgetpu"
        needed = tflite_min_runtime_version(self.path)
        try:
            kwargs = {"model_path": self.path, "num_threads": threads}
            if delegates:
                kwargs["experimental_delegates"] = delegates
            self.interpreter = interpreter_cls(**kwargs)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            message = explain_load_failure(error, self.runtime, self.runtime_version, self.path)
            if needed and runtime_too_old(self.runtime, self.runtime_version, needed) and "needs TFLite" not in message:
                message += " (the model needs TFLite >= %s)" % needed
            raise RunnerError(message)
        inp = self.interpreter.get_input_details()[0]
        out = self.interpreter.get_output_details()[0]
        self.kind = "tflite"
        self.input_index = inp["index"]
        self.output_index = out["index"]
        self.input_shape = [int(d) for d in inp["shape"]]
        self.input_dtype = self.np.dtype(inp["dtype"])
        self.input_quant = tuple(inp.get("quantization") or (0.0, 0))
        self.output_dtype = self.np.dtype(out["dtype"])
        self.output_quant = tuple(out.get("quantization") or (0.0, 0))
        self.layout = "NHWC"

    def _load_onnx(self, threads: int) -> None:
        try:
            import onnxruntime as ort  # type: ignore
        except ImportError as error:
            raise RunnerError("onnxruntime is not installed on this device (%s): pip install onnxruntime "
                              "(Python 3.9: onnxruntime==1.19.2; 3.10+: onnxruntime==1.32.0)" % error)
        self.runtime, self.runtime_version = "onnxruntime", getattr(ort, "__version__", "?")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(self.path, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise RunnerError("onnxruntime %s cannot load %s: %s" % (self.runtime_version, os.path.basename(self.path), first))
        inp = self.session.get_inputs()[0]
        self.kind = "onnx"
        self.input_name = inp.name
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        self.layout = "NCHW" if len(shape) == 4 and shape[1] == 3 and shape[3] != 3 else "NHWC"
        self.input_shape = [shape[0], shape[2], shape[3], shape[1]] if self.layout == "NCHW" else shape
        dtypes = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int8)": "int8",
                  "tensor(float16)": "float16"}
        self.input_dtype = self.np.dtype(dtypes.get(inp.type, "float32"))
        self.input_quant = (0.0, 0)
        self.output_quant = (0.0, 0)
        self.output_dtype = self.np.dtype("float32")

    # -- facts
    @property
    def input_size(self) -> Tuple[int, int]:
        return self.input_shape[1], self.input_shape[2]

    def prepare(self, images: Any) -> Any:
        """uint8 RGB images (N, H, W, 3) at the model's size -> the model's input tensor."""
        return prepare_input(images, self.input_dtype, self.input_quant, self.sidecar, self.layout)

    def random_input(self, seed: int = 0) -> Any:
        rng = self.np.random.default_rng(seed)
        h, w = self.input_size
        return self.prepare(rng.integers(0, 256, size=(1, h, w, 3), dtype=self.np.uint8))

    # -- inference
    def set_input(self, tensor: Any) -> None:
        if self.kind == "tflite":
            self.interpreter.set_tensor(self.input_index, tensor)
        else:
            self._feed = {self.input_name: tensor}

    def invoke(self) -> None:
        if self.kind == "tflite":
            self.interpreter.invoke()
        else:
            self._out = self.session.run(None, self._feed)

    def output(self) -> Any:
        if self.kind == "tflite":
            raw = self.interpreter.get_tensor(self.output_index)
        else:
            raw = self._out[0]
        return dequantize(raw, self.output_quant)

    def predict(self, images: Any) -> Any:
        """Scores (N, classes) as float32 for uint8 images at the model's input size."""
        np = self.np
        results = []
        for image in images:
            self.set_input(self.prepare(image[None]))
            self.invoke()
            results.append(np.asarray(self.output(), dtype=np.float32).reshape(-1))
        return np.stack(results) if results else np.zeros((0, 0), np.float32)


def prepare_input(images: Any, dtype: Any, quant: Tuple[float, int], sidecar: Optional[Dict[str, Any]],
                  layout: str = "NHWC") -> Any:
    """Map uint8 pixels to model input: the sidecar's ``input = pixel * scale + offset``, then quantize.

    Without a sidecar, a uint8 model gets the raw pixels, an int8 model ``pixel - 128`` and a float
    model ``pixel / 127.5 - 1`` (the MobileNet convention).
    """
    import numpy as np

    dtype = np.dtype(dtype)
    images = np.asarray(images, dtype=np.uint8)
    prep = (sidecar or {}).get("preprocessing")
    if prep and prep.get("channel_order", "RGB") == "BGR":
        images = images[..., ::-1]
    if dtype == np.uint8 and not prep:
        tensor = images
    elif dtype == np.int8 and not prep:
        tensor = (images.astype(np.int16) - 128).astype(np.int8)
    else:
        if prep:
            scale = np.asarray(prep.get("scale", [1.0, 1.0, 1.0]), np.float32)
            offset = np.asarray(prep.get("offset", [0.0, 0.0, 0.0]), np.float32)
        else:
            scale, offset = np.float32(1.0 / 127.5), np.float32(-1.0)
        values = images.astype(np.float32) * scale + offset
        if dtype in (np.uint8, np.int8):
            q_scale, zero_point = float(quant[0]), int(quant[1])
            side_quant = (sidecar or {}).get("input_quantization") or {}
            if not q_scale and side_quant.get("scale"):
                q_scale, zero_point = float(side_quant["scale"]), int(side_quant.get("zero_point", 0))
            if not q_scale:
                raise RunnerError("the model has a %s input but no quantization parameters" % dtype.name)
            info = np.iinfo(dtype)
            tensor = np.clip(np.round(values / q_scale + zero_point), info.min, info.max).astype(dtype)
        else:
            tensor = values.astype(dtype)
    if layout == "NCHW":
        tensor = np.ascontiguousarray(np.transpose(tensor, (0, 3, 1, 2)))
    return np.ascontiguousarray(tensor)


def dequantize(raw: Any, quant: Tuple[float, int]) -> Any:
    """Integer outputs back to real values with (scale, zero_point); floats pass through."""
    import numpy as np

    raw = np.asarray(raw)
    if raw.dtype in (np.uint8, np.int8, np.int16) and quant and float(quant[0]):
        return (raw.astype(np.float32) - float(quant[1])) * float(quant[0])
    return raw.astype(np.float32)


def resize_images(images: Any, height: int, width: int) -> Any:
    """Nearest-neighbour resize of (N, H, W, 3) uint8 images (only when an eval set's size differs)."""
    import numpy as np

    if images.shape[1] == height and images.shape[2] == width:
        return images
    rows = (np.arange(height) * images.shape[1] / height).astype(np.int64)
    cols = (np.arange(width) * images.shape[2] / width).astype(np.int64)
    return images[:, rows][:, :, cols]


# ----------------------------------------------------------------------------- device facts
def _read(path: str) -> Optional[str]:
    try:
        with open(path, "r") as handle:
            return handle.read().strip()
    except OSError:
        return None


def temperatures() -> Dict[str, float]:
    """Thermal zone readings in degrees C."""
    result = {}
    base = "/sys/class/thermal"
    try:
        zones = sorted(z for z in os.listdir(base) if z.startswith("thermal_zone"))
    except OSError:
        return result
    for zone in zones:
        raw = _read(os.path.join(base, zone, "temp"))
        kind = _read(os.path.join(base, zone, "type")) or zone
        try:
            result[kind] = int(raw) / 1000.0 if raw is not None else None
        except ValueError:
            continue
    return {k: v for k, v in result.items() if v is not None}


def throttle_state() -> Optional[str]:
    """``vcgencmd get_throttled`` on a Raspberry Pi (e.g. "0x0"), else None."""
    if shutil.which("vcgencmd") is None:
        return None
    try:
        out = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"throttled=(0x[0-9a-fA-F]+)", out)
    return match.group(1) if match else None


# int8 runs faster than float only where the CPU has 8-bit dot-product instructions.
_SIMD_FLAGS = ("sse4_1", "avx2", "fma", "avx512f", "asimd", "neon")
_INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "avx_vnni_int8", "amx_int8", "asimddp", "i8mm")


def cpu_features(cpuinfo: str) -> Tuple[List[str], List[str]]:
    """(SIMD extensions, int8 dot-product extensions) named in /proc/cpuinfo's flags/Features."""
    flags = set()
    for match in re.finditer(r"^(?:flags|Features)\s*:\s*(.+)$", cpuinfo, re.M):
        flags.update(match.group(1).split())
    return [f for f in _SIMD_FLAGS if f in flags], [f for f in _INT8_DOT_FLAGS if f in flags]


def doctor() -> Dict[str, Any]:
    """Facts about this device and what it can run."""
    facts: Dict[str, Any] = {
        "runner_version": RUNNER_VERSION,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "machine": platform.machine(),
        "system": platform.system(),
        "os": None,
        "glibc": "-".join(platform.libc_ver()) or None,
        "cpu_model": None,
        "cores": os.cpu_count(),
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "temperatures_c": temperatures(),
        "throttled": throttle_state(),
        "mem_available_mb": None,
        "mem_total_mb": None,
        "numpy": _version_of("numpy"),
        "tflite_runtimes": [{"name": n, "version": v} for n, v in tflite_runtimes()],
        "onnxruntime": _version_of("onnxruntime"),
        "edgetpu_library": edgetpu_library_status()[0],
    }
    release = _read("/etc/os-release") or ""
    match = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', release, re.M)
    facts["os"] = match.group(1) if match else platform.platform()
    cpuinfo = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        match = re.search(r"^%s\s*:\s*(.+)$" % key, cpuinfo, re.M)
        if match:
            facts["cpu_model"] = match.group(1).strip()
            break
    if facts["cpu_model"] is None:
        facts["cpu_model"] = platform.processor() or None
    facts["simd"], facts["int8_isa"] = cpu_features(cpuinfo)
    meminfo = _read("/proc/meminfo") or ""
    for key, field in (("MemAvailable", "mem_available_mb"), ("MemTotal", "mem_total_mb")):
        match = re.search(r"^%s:\s*(\d+) kB" % key, meminfo, re.M)
        if match:
            facts[field] = round(int(match.group(1)) / 1024.0, 1)
    return facts


# ----------------------------------------------------------------------------- measuring
def _percentile(sorted_values: List[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    position = (len(sorted_values) - 1) * q
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def latency_stats(latencies_ms: List[float]) -> Dict[str, float]:
    """mean, std, min, p50, p90, p99, max of a list of latencies (ms)."""
    values = sorted(latencies_ms)
    n = len(values)
    mean = sum(values) / n
    std = (sum((v - mean) ** 2 for v in values) / n) ** 0.5
    return {"mean_ms": mean, "std_ms": std, "min_ms": values[0], "p50_ms": _percentile(values, 0.5),
            "p90_ms": _percentile(values, 0.9), "p99_ms": _percentile(values, 0.99), "max_ms": values[-1]}


def peak_rss_mb() -> Optional[float]:
    """This process's peak resident memory in MiB."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0, 2)


def _load_eval(path: str) -> Tuple[Any, Any, List[str]]:
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        images = np.asarray(data["images"], dtype=np.uint8)
        labels = np.asarray(data["labels"]).astype(np.int64)
        names = [str(n) for n in data["class_names"]] if "class_names" in data.files else []
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(labels):
        raise RunnerError("evaluation set %s must hold images (N, H, W, 3) uint8 and N labels" % path)
    return images, labels, names


def _label_map(eval_names: List[str], model_labels: List[str]) -> Optional[Dict[int, int]]:
    """Map eval class indices to model output indices by name when every name is in the model's labels."""
    if not eval_names or not model_labels:
        return None
    lookup = {}
    for index, label in enumerate(model_labels):
        for part in [label] + [p.strip() for p in label.split(",")]:
            lookup.setdefault(part.strip().lower(), index)
    mapping = {}
    for i, name in enumerate(eval_names):
        key = name.strip().lower()
        if key not in lookup:
            return None
        mapping[i] = lookup[key]
    return mapping


def accuracy(model: LoadedModel, eval_path: str) -> Dict[str, Any]:
    """Top-1 (and top-5 with more than 5 classes) accuracy of ``model`` on an .npz eval set."""
    import numpy as np

    images, labels, names = _load_eval(eval_path)
    images = resize_images(images, *model.input_size)
    mapping = _label_map(names, list(model.sidecar.get("labels") or []))
    if mapping is not None:
        labels = np.array([mapping[int(l)] for l in labels], dtype=np.int64)
    scores = model.predict(images)
    if len(labels) == 0:
        return {"accuracy": None, "top5_accuracy": None, "eval_count": 0}
    top1 = float(np.mean(np.argmax(scores, axis=1) == labels))
    top5 = None
    if scores.shape[1] > 5:
        best5 = np.argsort(-scores, axis=1)[:, :5]
        top5 = float(np.mean([labels[i] in best5[i] for i in range(len(labels))]))
    return {"accuracy": top1, "top5_accuracy": top5, "eval_count": int(len(labels))}


def bench_one(job: Dict[str, Any]) -> Dict[str, Any]:
    """Load one model with one thread count, time it, and measure accuracy when asked."""
    model = LoadedModel(job["path"], job.get("sidecar"), int(job["threads"]), job.get("runtime", "auto"),
                        job.get("delegate"))
    tensor = model.random_input(seed=0)
    model.set_input(tensor)
    start = time.perf_counter()
    model.invoke()
    first_ms = (time.perf_counter() - start) * 1000.0
    warmup = int(job.get("warmup", 10))
    for _ in range(warmup):
        model.invoke()
    runs = job.get("runs")
    duration = job.get("duration")
    latencies = []
    perf = time.perf_counter
    invoke = model.invoke
    loop_start = perf()
    if duration:
        deadline = loop_start + float(duration)
        while True:
            t0 = perf()
            invoke()
            t1 = perf()
            latencies.append((t1 - t0) * 1000.0)
            if t1 >= deadline and len(latencies) >= 3:
                break
    else:
        for _ in range(max(1, int(runs or 50))):
            t0 = perf()
            invoke()
            latencies.append((perf() - t0) * 1000.0)
    loop_s = perf() - loop_start
    row: Dict[str, Any] = {
        "runtime": model.runtime, "runtime_version": model.runtime_version, "delegate": model.delegate,
        "threads": model.threads, "input_shape": model.input_shape, "input_dtype": model.input_dtype.name,
        "load_ms": model.load_ms, "first_inference_ms": first_ms, "warmup": warmup, "runs": len(latencies),
    }
    row.update(latency_stats(latencies))
    row["throughput_ips"] = len(latencies) / loop_s if loop_s > 0 else None
    if job.get("eval"):
        row.update(accuracy(model, job["eval"]))
    row["peak_rss_mb"] = peak_rss_mb()
    return row


# ----------------------------------------------------------------------------- the bench driver
class Cleanup:
    """Removes the runner's directory and its child process on every way out."""

    def __init__(self, directory: Optional[str]) -> None:
        self.directory = directory
        self.child: Optional[subprocess.Popen] = None
        self.lock = threading.Lock()
        self.done = False
        if directory and not os.path.isfile(os.path.join(directory, MARKER_FILE)):
            raise RunnerError("refusing to clean up %s: it has no %s marker" % (directory, MARKER_FILE))

    def run(self) -> None:
        with self.lock:
            if self.done:
                return
            self.done = True
            child = self.child
            if child is not None and child.poll() is None:
                try:
                    child.kill()
                    child.wait(timeout=5)
                except Exception:
                    pass
            if self.directory:
                shutil.rmtree(self.directory, ignore_errors=True)

    def install(self, watch_stdin: bool) -> None:
        def on_signal(signum: int, frame: Any) -> None:
            self.run()
            os._exit(128 + signum)

        for name in ("SIGHUP", "SIGTERM", "SIGINT", "SIGPIPE"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), on_signal)
        if watch_stdin:
            def watch() -> None:
                try:
                    while True:
                        chunk = os.read(0, 4096)
                        if not chunk:
                            break
                except OSError:
                    pass
                self.run()
                os._exit(129)

            threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


def _child_command(job_path: str) -> List[str]:
    # EDGEFT_DEVICE_PYTHON_ARGV (a JSON list) replaces sys.executable, e.g. an emulator that runs the device's
    # Python: under QEMU user mode without binfmt_misc, exec of the arm sys.executable fails.
    prefix = [sys.executable]
    raw = os.environ.get("EDGEFT_DEVICE_PYTHON_ARGV")
    if raw:
        try:
            prefix = json.loads(raw)
        except ValueError:
            prefix = None
        if not isinstance(prefix, list) or not prefix or not all(isinstance(a, str) for a in prefix):
            raise RunnerError("EDGEFT_DEVICE_PYTHON_ARGV must be a JSON list of strings (got %r)" % raw[:200])
    return prefix + [os.path.abspath(__file__), "one", job_path]


def bench(spec: Dict[str, Any], cleanup: Cleanup, workdir: str) -> Dict[str, Any]:
    """Run every (model, thread count) of ``spec`` in its own child process; returns the JSON document."""
    before = {"temperatures_c": temperatures(), "throttled": throttle_state()}
    facts = doctor()
    rows = []
    threads_list = spec.get("threads") or [1]
    for model in spec["models"]:
        for position, threads in enumerate(threads_list):
            job = {
                "path": os.path.join(workdir, model["file"]), "sidecar": model.get("sidecar"),
                "threads": int(threads), "runs": spec.get("runs"), "duration": spec.get("duration"),
                "warmup": spec.get("warmup", 10), "runtime": spec.get("runtime", "auto"),
                "delegate": model.get("delegate"),
                "eval": os.path.join(workdir, model["eval"]) if model.get("eval") and position == 0 else None,
            }
            job_path = os.path.join(workdir, "job-%d.json" % len(rows))
            with open(job_path, "w") as handle:
                json.dump(job, handle)
            row = {"artifact": model["name"], "threads": int(threads),
                   "model_size_bytes": os.path.getsize(job["path"]) if os.path.isfile(job["path"]) else None}
            child = subprocess.Popen(_child_command(job_path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd=workdir)
            cleanup.child = child
            out, err = child.communicate()
            cleanup.child = None
            try:
                result = json.loads(out.decode("utf-8"))
            except ValueError:
                tail = err.decode("utf-8", "replace").strip().splitlines()
                signal_note = " (killed by signal %d)" % -child.returncode if child.returncode < 0 else ""
                result = {"error": "the runner crashed on %s%s: %s" % (model["name"], signal_note,
                                                                     tail[-1] if tail else "no output")}
            row.update(result)
            rows.append(row)
        # accuracy does not depend on the thread count: copy it to this model's other rows
        model_rows = rows[len(rows) - len(threads_list):]
        first = model_rows[0]
        for other in model_rows[1:]:
            for key in ("accuracy", "top5_accuracy", "eval_count"):
                if key in first and "error" not in other:
                    other[key] = first[key]
    after = {"temperatures_c": temperatures(), "throttled": throttle_state()}
    return {"runner_version": RUNNER_VERSION, "device": facts, "before": before, "after": after,
            "throttled_during_run": _throttled(before, after), "rows": rows}


def _throttled(before: Dict[str, Any], after: Dict[str, Any]) -> Optional[bool]:
    """Pi: any throttling bit set after the run (vcgencmd); else None (unknown)."""
    state = after.get("throttled")
    if state is None:
        return None
    try:
        now, then = int(state, 16), int(before.get("throttled") or "0x0", 16)
    except ValueError:
        return None
    # bits 0-3: throttling now; bits 16-19: has happened since boot (new ones appeared during the run)
    return bool(now & 0xF) or (now & 0xF0000) != (then & 0xF0000)


def _one(job_path: str) -> int:
    with open(job_path) as handle:
        job = json.load(handle)
    try:
        result = bench_one(job)
    except RunnerError as error:
        result = {"error": str(error)}
    print(json.dumps(result))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point: ``doctor``, ``bench --spec FILE``, ``one JOB`` or ``classify MODEL IMAGES.npy``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(json.dumps({"error": "usage: runner.py doctor | bench --spec SPEC.json [--cleanup DIR] [--watch-stdin]"}))
        return 2
    mode = argv.pop(0)
    try:
        if mode == "doctor":
            print(json.dumps(doctor()))
            return 0
        if mode == "one":
            return _one(argv[0])
        if mode == "classify":
            import numpy as np

            model = LoadedModel(argv[0])
            images = np.load(argv[1], allow_pickle=False)
            scores = model.predict(resize_images(images, *model.input_size))
            print(json.dumps({"top5": [[int(i) for i in np.argsort(-s)[:5]] for s in scores]}))
            return 0
        if mode == "bench":
            spec_path = argv[argv.index("--spec") + 1] if "--spec" in argv else None
            cleanup_dir = argv[argv.index("--cleanup") + 1] if "--cleanup" in argv else None
            if spec_path is None:
                raise RunnerError("bench needs --spec SPEC.json")
            cleanup = Cleanup(cleanup_dir)
            cleanup.install("--watch-stdin" in argv)
            try:
                with open(spec_path) as handle:
                    spec = json.load(handle)
                result = bench(spec, cleanup, os.path.dirname(os.path.abspath(spec_path)))
                print(json.dumps(result))
                sys.stdout.flush()
            finally:
                cleanup.run()
            return 0
        raise RunnerError("unknown mode '%s' (use doctor, bench, classify)" % mode)
    except RunnerError as error:
        print(json.dumps({"error": str(error)}))
        return 3


if __name__ == "__main__":
    sys.exit(main())
