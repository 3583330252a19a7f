"""Device backends, one module per runtime, found by the artifact's file suffix.

A backend loads one model file and exposes its input/output tensors; :class:`..model.Model`
does the rest (preprocessing, quantization, prediction). A backend module declares
``BACKEND = (name, suffixes, factory)`` and is found by being in this package. An unknown
suffix is an error: a file is never sent to a runtime that was not declared for it.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from ..contract import DeviceError


class Backend:
    """One model file loaded in one runtime. Subclasses set every attribute in ``__init__``."""

    name = ""
    runtime = ""
    runtime_version = "?"
    delegate: Optional[str] = None
    input_shape: List[int] = []  # NHWC
    input_dtype: Any = None
    input_quant: Tuple[float, int] = (0.0, 0)
    output_quant: Tuple[float, int] = (0.0, 0)
    layout = "NHWC"

    def set_input(self, tensor: Any) -> None:
        """Set the input tensor (already in the model's dtype and layout)."""
        raise NotImplementedError

    def invoke(self) -> None:
        """Run the model on the input set last."""
        raise NotImplementedError

    def output(self) -> Any:
        """The raw output tensor of the last invocation."""
        raise NotImplementedError


BackendFactory = Callable[[str, int, Dict[str, Any]], Backend]
_BACKENDS: Dict[str, BackendFactory] = {}
_SUFFIXES: Dict[str, str] = {}


def register_backend(name: str, suffixes: Tuple[str, ...], factory: BackendFactory) -> None:
    """Declare a backend ``name`` for files ending in ``suffixes``; ``factory(path, threads, options)``."""
    _BACKENDS[name] = factory
    for suffix in suffixes:
        _SUFFIXES[suffix] = name


_loaded = []


def _builtins() -> None:
    """Register every module of this package that declares ``BACKEND = (name, suffixes, factory)``."""
    if _loaded:
        return
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        declared = getattr(importlib.import_module("%s.%s" % (__name__, module.name)), "BACKEND", None)
        if declared:
            register_backend(*declared)
    _loaded.append(True)


def backend_names() -> List[str]:
    """The registered backend names."""
    _builtins()
    return sorted(_BACKENDS)


def known_suffixes() -> List[str]:
    """The file suffixes some backend runs (".tflite", ".onnx", ...)."""
    _builtins()
    return sorted(_SUFFIXES)


def backend_for(path: str) -> str:
    """The backend that runs ``path`` (longest matching suffix), or :class:`DeviceError`."""
    _builtins()
    matches = [suffix for suffix in _SUFFIXES if path.endswith(suffix)]
    if not matches:
        raise DeviceError("unsupported model format: %s (known: %s)" % (path, ", ".join(sorted(_SUFFIXES))))
    return _SUFFIXES[max(matches, key=len)]


def open_backend(path: str, threads: int = 1, options: Optional[Dict[str, Any]] = None,
                 backend: Optional[str] = None) -> Backend:
    """Load ``path`` in ``backend`` (default: the one its suffix names)."""
    _builtins()
    name = backend or backend_for(path)
    if name not in _BACKENDS:
        raise DeviceError("unknown device backend '%s' for %s (known: %s)" % (name, path, ", ".join(sorted(_BACKENDS))))
    return _BACKENDS[name](path, threads, dict(options or {}))
