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

from edgeft.errors import MissingDependencyError, ModelFileError

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
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
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
    return tf_keras


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


def load_keras_model(path: Path) -> Any:
    """Load a Keras model saved by edgeft, raising :class:`ModelFileError` when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    k = keras()
    scope: Any
    try:
        import tensorflow_model_optimization as tfmot

        scope = tfmot.quantization.keras.quantize_scope(custom_objects())
    except ImportError:
        scope = k.utils.custom_object_scope(custom_objects())
    try:
        with scope:
            return k.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a corrupted file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelFileError(f"cannot load Keras model {path}: {first_line[:200]}") from None


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
