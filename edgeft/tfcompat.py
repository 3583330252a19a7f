"""The single place that imports TensorFlow and Keras 2 (tf-keras).

tfmot's quantization-aware training works only with Keras 2, so edgeft always uses
``tf_keras`` and sets ``TF_USE_LEGACY_KERAS=1`` before TensorFlow is first imported.
Everything that needs TensorFlow calls :func:`tf` / :func:`keras` from here, inside functions.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from edgeft.errors import MissingDependencyError, ModelFileError, first_line

_INSTALL_HINT = "install the training stack: pip install 'edgeft[train]'"


def _prepare_environment() -> None:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Silence file descriptor 2 while TensorFlow loads.

    Its native start-up lines ("All log messages before absl::InitializeLog()...", "Could not
    find cuda drivers...") ignore TF_CPP_MIN_LOG_LEVEL and would bury edgeft's own progress
    lines. ``EDGEFT_TF_VERBOSE=1`` keeps them. Python exceptions are unaffected: they are
    printed after the descriptor is restored.
    """
    if os.environ.get("EDGEFT_TF_VERBOSE") or "tensorflow" in sys.modules:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, AttributeError, ValueError):
        yield
        return
    from edgeft.progress import STDERR_LOCK

    devnull = os.open(os.devnull, os.O_WRONLY)
    STDERR_LOCK.acquire()
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        STDERR_LOCK.release()
        os.close(saved)
        os.close(devnull)


def tf() -> ModuleType:
    """Import and return TensorFlow."""
    _prepare_environment()
    try:
        with _native_stderr_silenced():
            import tensorflow
    except ImportError:
        raise MissingDependencyError(f"TensorFlow is not installed; {_INSTALL_HINT}") from None
    return tensorflow


def keras() -> ModuleType:
    """Import and return tf-keras (Keras 2)."""
    tf()
    try:
        import tf_keras
    except ImportError:
        raise MissingDependencyError(f"tf-keras is not installed; {_INSTALL_HINT}") from None
    _enable_keras_v3_saving_in_this_thread()
    return tf_keras


def _enable_keras_v3_saving_in_this_thread() -> None:
    """tf-keras keeps "save .keras as a v3 zip" in a thread-local set only in the thread that imported it;
    its save and load restore the flag to False in any other thread, after which ``model.save("x.keras")``
    silently writes HDF5. finetune imports TensorFlow in a background thread while it decodes images."""
    try:
        from tf_keras.src.saving import saving_lib
    except ImportError:  # a tf-keras without this module has no such flag
        return
    flag = getattr(saving_lib, "_SAVING_V3_ENABLED", None)
    if flag is not None and not hasattr(flag, "value"):
        flag.value = True


def _make_output_config() -> type:
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.quantization.keras import quantizers

    class OutputQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):  # type: ignore[misc]
        """Fake-quantize only the layer's output (8 bit, asymmetric, per tensor, moving-average range).

        What ``edgeft qat`` gives the layers tfmot's registry refuses (see
        :mod:`edgeft.quantization.configs`); defined here because every saved QAT model refers to it.
        """

        def get_weights_and_quantizers(self, layer: Any) -> list:
            return []

        def get_activations_and_quantizers(self, layer: Any) -> list:
            return []

        def set_quantize_weights(self, layer: Any, quantize_weights: list) -> None:
            pass

        def set_quantize_activations(self, layer: Any, quantize_activations: list) -> None:
            pass

        def get_output_quantizers(self, layer: Any) -> list:
            return [quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

        def get_config(self) -> dict:
            return {}

    OutputQuantizeConfig.__module__ = __name__
    return OutputQuantizeConfig


_OUTPUT_CONFIG: list[type] = []


def output_quantize_config_class() -> type:
    """The ``OutputQuantizeConfig`` class (built lazily so importing edgeft does not import TensorFlow)."""
    if not _OUTPUT_CONFIG:
        _OUTPUT_CONFIG.append(_make_output_config())
    return _OUTPUT_CONFIG[0]


def custom_objects() -> dict[str, Any]:
    """Custom layers and configs that edgeft's saved models may contain (QAT runs need tfmot's)."""
    try:
        import tensorflow_model_optimization  # noqa: F401
    except ImportError:
        return {}
    return {"OutputQuantizeConfig": output_quantize_config_class()}


_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# TFOpLambda layers (Keras' record of `x + 3.0` on a symbolic tensor, e.g. in MobileNetV3) name a TensorFlow
# function; only pure math is accepted, never I/O, py_function or raw ops.
_SAFE_TF_FUNCTIONS = ("__operators__.", "math.", "nn.", "image.")
_SAFE_TF_FUNCTION_NAMES = frozenset({"reshape", "concat", "stack", "split", "cast", "clip_by_value", "identity",
                                     "expand_dims", "squeeze", "transpose", "compat.v1.transpose", "where"})


def _model_config(path: Path) -> dict[str, Any]:
    """The model's architecture as JSON, read without Keras: ``config.json`` of a Keras v3 zip archive, or the
    ``model_config`` attribute of an HDF5 file (edgeft's QAT runs: tf-keras cannot reload tfmot's layers from
    the zip format). Anything else is refused: other formats (SavedModel, pickles) can run code when loaded."""
    import json
    import zipfile

    reason = "it is neither a Keras v3 archive (zip with config.json and metadata.json) nor a Keras HDF5 model"
    try:
        with open(path, "rb") as handle:
            magic = handle.read(8)
        if magic.startswith(_ZIP_MAGIC):
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
                if not {"config.json", "metadata.json"} <= names:
                    raise ModelFileError(f"refusing {path}: {reason}")
                text = archive.read("config.json").decode("utf-8")
        elif magic == _HDF5_MAGIC:
            import h5py

            with h5py.File(path, "r") as handle:
                raw = handle.attrs.get("model_config")
            if raw is None:
                raise ModelFileError(f"refusing {path}: an HDF5 file without a Keras model config (weights only?)")
            text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        else:
            raise ModelFileError(f"refusing {path}: {reason}")
        config = json.loads(text)
    except ModelFileError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise ModelFileError(f"cannot load Keras model {path}: {str(error).splitlines()[0][:200]}") from None
    if not isinstance(config, dict):
        raise ModelFileError(f"cannot load Keras model {path}: its config is not a JSON object")
    return config


def _check_model_config(config: Any, path: Path, known: frozenset[str]) -> None:
    """Refuse a model config that carries Python code or names a module outside Keras and edgeft's custom objects.

    Lambda layers store Python bytecode (HDF5 runs it on load; the zip format's safe mode refuses it, this
    says so first); a v3 config's ``module`` is imported by Keras, so only Keras' own modules pass, and
    custom classes must resolve by their registered name among ``known``.
    """
    todo = [config]
    while todo:
        node = todo.pop()
        if isinstance(node, list):
            todo.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        todo.extend(node.values())
        class_name = node.get("class_name")
        if not isinstance(class_name, str):
            continue
        if class_name in ("Lambda", "__lambda__") or node.get("function_type") in ("lambda", "raw"):
            raise ModelFileError(f"refusing {path}: it contains a Lambda layer (Python code that would run on "
                                 "load); edgeft never writes one, so this run directory was not made by edgeft")
        if class_name in ("TFOpLambda", "SlicingOpLambda"):
            function = str((node.get("config") or {}).get("function", ""))
            if not (function.startswith(_SAFE_TF_FUNCTIONS) or function in _SAFE_TF_FUNCTION_NAMES):
                raise ModelFileError(f"refusing {path}: a {class_name} layer calls tf.{function[:60]}, which is "
                                     "not a math operation")
        module = node.get("module")
        if module is None or module in ("keras", "tf_keras") or str(module).startswith(
                ("keras.", "tf_keras.")):
            continue
        registered = node.get("registered_name") or class_name
        if registered not in known:
            raise ModelFileError(f"refusing {path}: it names Python module '{str(module)[:80]}' "
                                 f"(class '{class_name[:60]}'), which is neither Keras nor one of edgeft's "
                                 "custom objects")


def load_keras_model(path: Path) -> Any:
    """Load a Keras model saved by edgeft, raising :class:`ModelFileError` when it cannot be read.

    A model file from someone else is data, never code: the file must be a Keras v3 zip archive (or
    edgeft's HDF5 QAT model) whose config has no Lambda layer and names no module beyond Keras and the
    custom objects below, which resolve by registered name only; Keras then loads it with ``safe_mode=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    config = _model_config(path)
    k = keras()
    objects = dict(custom_objects())
    scope: Any
    try:
        import tensorflow_model_optimization as tfmot

        scope = tfmot.quantization.keras.quantize_scope(objects)
    except ImportError:
        scope = k.utils.custom_object_scope(objects)
    for table in getattr(scope, "custom_objects", ()):
        objects.update(table)
    _check_model_config(config, path, frozenset(objects) | frozenset(k.utils.get_custom_objects()))
    try:
        with scope:
            return k.models.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for a corrupted file
        raise ModelFileError(f"cannot load Keras model {path}: {first_line(error)}") from None


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a trained or exported model."""
    from importlib import metadata

    versions: dict[str, str] = {}
    for name in ("edgeft", "tensorflow", "tf-keras", "tensorflow-model-optimization", "numpy", "onnx",
                 "onnxruntime", "tf2onnx", "ai-edge-litert", "pillow"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    import platform

    versions["python"] = platform.python_version()
    return versions
