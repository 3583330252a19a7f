"""The exporter registry: one small module per deployment format.

An exporter declares which precisions it can write and the file name of each, and converts
one :class:`~edgeft.export.config.ArtifactSpec` at a time (inside a child process, see
:mod:`edgeft.export.worker`). Adding a format is adding a module that calls :func:`register`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from edgeft.export.config import ArtifactSpec, ExportConfig, Format, Precision, Source


@dataclass(frozen=True)
class ConversionJob:
    """What one conversion needs; serialised to JSON for the child process."""

    run_dir: str
    format: str
    precision: str
    source: str
    output: str  # final artifact path
    work_dir: str
    calibration: str | None  # .npz with "pixels" (uint8) for the representative set
    io_dtype: str
    opset: int
    onnx_calib_method: str
    metadata: dict[str, Any]
    onnx_weights: str = "uint8"
    int8_tflite: str | None = None  # for Edge TPU: an existing full-integer model to compile/check

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Exporter(Protocol):
    """A format's exporter."""

    format: Format
    precisions: tuple[Precision, ...]

    def filename(self, precision: Precision) -> str: ...

    def skip_reason(self, precision: Precision, run_kind: str) -> str | None: ...

    def convert(self, job: ConversionJob, model: Any) -> dict[str, Any]: ...


EXPORTERS: dict[Format, Exporter] = {}


def register(cls: Callable[[], Exporter]) -> Callable[[], Exporter]:
    """Class decorator: instantiate and register an exporter for its format."""
    instance = cls()
    EXPORTERS[instance.format] = instance
    return cls


def _load_all() -> None:
    from edgeft.export.formats import edgetpu, onnx, tflite  # noqa: F401  (registration side effects)


def get_exporter(fmt: Format) -> Exporter:
    _load_all()
    return EXPORTERS[fmt]


def source_for(precision: Precision, run_kind: str) -> Source:
    """float32 from a float run is "float"; everything else from a float run is post-training; QAT runs "qat"."""
    if run_kind == "qat":
        return Source.QAT
    return Source.FLOAT if precision == Precision.FLOAT32 else Source.PTQ


def plan_artifacts(config: ExportConfig, run_kind: str) -> tuple[list[ArtifactSpec], list[dict[str, str]]]:
    """The artifacts an export writes, in conversion order (Edge TPU after TFLite int8), and those skipped."""
    _load_all()
    specs: list[ArtifactSpec] = []
    skipped: list[dict[str, str]] = []
    order = [Format.TFLITE, Format.ONNX, Format.EDGETPU]
    for fmt in sorted(config.formats, key=order.index):
        exporter = EXPORTERS[fmt]
        for precision in Precision:
            if precision in exporter.precisions and (precision in config.precisions or fmt == Format.EDGETPU):
                reason = exporter.skip_reason(precision, run_kind)
                if reason:
                    skipped.append({"format": fmt.value, "precision": precision.value, "reason": reason})
                    continue
                specs.append(ArtifactSpec(fmt, precision, source_for(precision, run_kind), exporter.filename(precision)))
    return specs, skipped


def artifact_path(out_dir: Path, spec: ArtifactSpec) -> Path:
    return Path(out_dir) / spec.filename
