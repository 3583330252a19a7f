"""Validate each artifact the way it ships: the device layer runs it on uint8 pixels with its sidecar.

The artifact is loaded in the device backend its exporter names (:class:`edgeft.targets.Model`),
fed the held-out split's uint8 pixels, and mapped to model input by the sidecar export has just
written (``pixel * scale + offset``, channel order, input quantization): a wrong preprocessing
entry in a sidecar shows here as collapsed agreement. The Keras reference keeps its own
preprocessing (the run's). Latency is the statistic bench reports: p50 of N single-image runs
after warm-up, timing the runtime call alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeft import targets as device
from edgeft.errors import ExportError, ModelFileError

LATENCY_WARMUP = 3


@dataclass(frozen=True)
class Reference:
    """The held-out split as uint8 pixels, its labels, and the Keras model's outputs on it."""

    pixels: np.ndarray
    labels: np.ndarray
    probs: np.ndarray

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.probs.argmax(axis=1) == self.labels)) if len(self.labels) else 0.0


@dataclass(frozen=True)
class Validation:
    """How an artifact compares with the Keras model on the held-out split (fractions 0..1)."""

    accuracy: float | None
    agreement: float | None
    max_abs_diff: float | None
    p50_ms: float | None
    samples: int

    def as_record(self) -> dict[str, float | None]:
        """The report fields of this validation."""
        return {"accuracy": self.accuracy, "agreement": self.agreement, "max_abs_diff": self.max_abs_diff,
                "p50_ms": round(self.p50_ms, 4) if self.p50_ms is not None else None}


def load_model(path: Path, backend: str, threads: int) -> device.Model:
    """``path`` in device backend ``backend`` with the sidecar next to it."""
    try:
        return device.Model(str(path), device.read_sidecar(str(path)), threads, backend=backend)
    except device.DeviceError as error:
        if "unknown device backend" in str(error):
            raise ExportError(str(error)) from None
        raise ModelFileError(f"cannot validate {Path(path).name}: {error}") from None


def validate_artifact(path: Path, backend: str, reference: Reference, threads: int = 1,
                      latency_runs: int = 30) -> Validation:
    """Accuracy, top-1 agreement with Keras, max |output - keras| and p50 latency of one artifact."""
    model = load_model(path, backend, threads)
    pixels = device.resize_images(reference.pixels, *model.input_size)
    outputs = model.predict(pixels)
    if not len(reference.labels):
        return Validation(None, None, None, None, 0)
    predicted = outputs.argmax(axis=1)
    p50 = None
    if latency_runs > 0:
        model.set_input(model.prepare(pixels[:1]))
        p50 = device.p50_ms(model.invoke, latency_runs, LATENCY_WARMUP)
    return Validation(accuracy=float(np.mean(predicted == reference.labels)),
                      agreement=float(np.mean(predicted == reference.probs.argmax(axis=1))),
                      max_abs_diff=float(np.max(np.abs(outputs - reference.probs))),
                      p50_ms=p50, samples=int(len(reference.labels)))
