"""The vocabulary of an export: formats, precisions, I/O types, sources, and one planned artifact."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol


class Format(str, Enum):
    """The deployment formats edgeft ships exporters for (a registered exporter may add others)."""

    TFLITE = "tflite"
    ONNX = "onnx"
    EDGETPU = "edgetpu"


class Precision(str, Enum):
    """Numeric precision of an artifact's weights and arithmetic."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    DYNAMIC_RANGE = "dynamic_range"
    INT8 = "int8"


class IODtype(str, Enum):
    """Input/output tensor type of full-integer TFLite models."""

    UINT8 = "uint8"
    INT8 = "int8"
    FLOAT32 = "float32"


class OnnxWeights(str, Enum):
    """Weight type of ONNX int8 models (activations are always uint8, as onnxruntime prefers on CPU).

    Measured (top-1 agreement with the float model, hymenoptera MobileNetV2 0.35 at 224 px /
    digits at 32 px). On an AVX2 host without VNNI: uint8 0.974 / 0.994, int8 0.961 / 0.911
    (U8S8 products saturate in VPMADDUBSW), int8_7bit 0.869 / 0.992. The same hymenoptera
    models on a Xeon with AVX512-VNNI: uint8 0.974, int8 0.974, int8_7bit 0.869. So uint8 is
    accurate on every CPU, int8 is as accurate and faster where the CPU has VNNI or an Arm dot
    product, and 7-bit weights cost accuracy everywhere.
    """

    UINT8 = "uint8"
    INT8 = "int8"
    INT8_7BIT = "int8_7bit"


class Source(str, Enum):
    """Where an artifact's numbers come from: the float model, post-training quantization, or QAT."""

    FLOAT = "float"
    PTQ = "ptq"
    QAT = "qat"


@dataclass(frozen=True)
class ArtifactSpec:
    """One file an exporter will write, and the device backend that validates it (None: not on the host)."""

    format: str
    precision: Precision
    source: Source
    filename: str
    backend: str | None = None

    @property
    def key(self) -> str:
        return f"{self.format}:{self.precision.value}"


class Requested(Protocol):
    """What an export asks the registry to plan: format names and precisions (an ``ExportConfig`` has both)."""

    @property
    def formats(self) -> tuple[str, ...]: ...

    @property
    def precisions(self) -> tuple[Precision, ...]: ...
