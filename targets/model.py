"""A model loaded on the device, fed uint8 pixels: what bench times, export validates and apps embed."""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional, Tuple

from .backends import open_backend
from .contract import DeviceError, validate_sidecar
from .preprocess import dequantize, prepare_input


class Model:
    """One model file in its backend, with the sidecar that says how pixels become its input.

    ``predict`` takes uint8 RGB images (N, H, W, 3) at the model's input size and returns float32
    scores (N, classes): the sidecar's ``pixel * scale + offset`` and channel order, the model's
    input quantization, one invocation per image, dequantized outputs.
    """

    def __init__(self, path: str, sidecar: Optional[Dict[str, Any]] = None, threads: int = 1,
                 runtime: str = "auto", delegate: Optional[str] = None, backend: Optional[str] = None) -> None:
        if not os.path.isfile(path):
            raise DeviceError("model file not found on the device: %s" % path)
        self.path = path
        self.sidecar = validate_sidecar(sidecar or {})
        self.threads = threads
        start = time.perf_counter()
        self.backend = open_backend(path, threads, {"runtime": runtime, "delegate": delegate}, backend)
        self.load_ms = (time.perf_counter() - start) * 1000.0

    @property
    def runtime(self) -> str:
        return self.backend.runtime

    @property
    def runtime_version(self) -> str:
        return self.backend.runtime_version

    @property
    def delegate(self) -> Optional[str]:
        return self.backend.delegate

    @property
    def input_shape(self) -> Any:
        return self.backend.input_shape

    @property
    def input_dtype(self) -> Any:
        return self.backend.input_dtype

    @property
    def input_size(self) -> Tuple[int, int]:
        """(height, width) of the model's input."""
        return self.backend.input_shape[1], self.backend.input_shape[2]

    def prepare(self, images: Any) -> Any:
        """uint8 RGB images (N, H, W, 3) at the model's size -> the model's input tensor."""
        b = self.backend
        return prepare_input(images, b.input_dtype, b.input_quant, self.sidecar, b.layout)

    def random_input(self, seed: int = 0) -> Any:
        """A prepared tensor of random pixels (for timing)."""
        import numpy as np

        h, w = self.input_size
        return self.prepare(np.random.default_rng(seed).integers(0, 256, size=(1, h, w, 3), dtype=np.uint8))

    def set_input(self, tensor: Any) -> None:
        self.backend.set_input(tensor)

    def invoke(self) -> None:
        self.backend.invoke()

    def output(self) -> Any:
        """The last output, dequantized to float32."""
        return dequantize(self.backend.output(), self.backend.output_quant)

    def predict(self, images: Any) -> Any:
        """Scores (N, classes) as float32 for uint8 images at the model's input size."""
        import numpy as np

        results = []
        for image in images:
            self.set_input(self.prepare(image[None]))
            self.invoke()
            results.append(np.asarray(self.output(), dtype=np.float32).reshape(-1))
        return np.stack(results) if results else np.zeros((0, 0), np.float32)
