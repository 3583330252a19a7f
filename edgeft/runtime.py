"""A light embeddable runtime: numpy plus one interpreter, no TensorFlow (unless it is the only one).

    from edgeft.runtime import Classifier

    classifier = Classifier.load("export/model_int8.tflite")
    classifier.classify(image)   # uint8 (H, W, 3) RGB -> [("tabby", 0.61), ...]

The sidecar ``<model file>.json`` next to the model, when present, gives the labels, input size,
preprocessing (``input = pixel * scale + offset``) and input quantization. This is a thin wrapper
over the device layer (:class:`edgeft.targets.Model`): the same code that export validates with
and that bench times on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeft import targets as device
from edgeft.errors import ModelFileError, UsageError


@dataclass
class Classifier:
    """An image classifier loaded in ai-edge-litert / tflite-runtime / tf.lite, or onnxruntime."""

    path: Path
    labels: tuple[str, ...]
    input_size: tuple[int, int]
    model: Any

    @classmethod
    def load(cls, path: Path | str, threads: int = 1, labels: Path | str | None = None) -> "Classifier":
        """Load a ``.tflite`` or ``.onnx`` model and its sidecar; ``labels`` may name a labels file (one per line)."""
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"model file not found: {path}")
        try:
            sidecar = device.read_sidecar(str(path)) or {}
            model = device.Model(str(path), sidecar, threads)
        except device.DeviceError as error:
            raise ModelFileError(str(error)) from None
        names: list[str] = list(sidecar.get("labels") or [])
        if labels is not None:
            names = [line.strip() for line in Path(labels).read_text("utf-8").splitlines() if line.strip()]
        return cls(path, tuple(names), tuple(model.input_size), model)  # type: ignore[arg-type]

    def scores(self, image: np.ndarray) -> np.ndarray:
        """Real-valued scores (dequantized) for one uint8 (H, W, 3) image, resized if needed."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise UsageError(f"classify takes a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
        batch = device.resize_images(image[None], *self.input_size)
        return self.model.predict(batch)[0]

    def classify(self, image: np.ndarray, top_k: int = 5) -> list[tuple[str, float]]:
        """The ``top_k`` (label, probability) pairs, best first (softmax applied if the outputs are not probabilities)."""
        scores = self.scores(image).astype(np.float64)
        if scores.min() < 0 or scores.max() > 1.0 or not 0.5 < scores.sum() < 1.5:
            exp = np.exp(scores - scores.max())
            scores = exp / exp.sum()
        order = np.argsort(-scores)[:top_k]
        return [(self.labels[i] if i < len(self.labels) else str(int(i)), float(scores[i])) for i in order]
