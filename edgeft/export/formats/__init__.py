"""The exporter registry: one module per deployment format, and everything about it in that module.

An exporter declares its format name, the precisions it writes and each file's name, when a
precision is skipped, which device backend runs its artifacts (``None``: not runnable on the
host, e.g. an Edge TPU model), and converts one artifact at a time (in a child process, see
:mod:`edgeft.export.worker`). :mod:`edgeft.export.main` only iterates over what the registry
plans. Adding a format is one module in this package that subclasses :class:`Exporter` and calls
:func:`register` (plus one backend module in the device layer, ``targets/backends/``, if it needs
a new runtime); nothing else names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from edgeft.errors import ExportError, UsageError
from edgeft.export.spec import ArtifactSpec, Precision, Requested, Source


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
    keep_float: tuple[str, ...] = ()  # ("auto",) or Keras layers kept in float (post-training int8 only)
    weight_rounding: str = "nearest"  # "adaptive": output-aware weight rounding (post-training int8 only)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Exporter:
    """A format's exporter; subclasses set the class attributes and implement :meth:`convert`."""

    format: str = ""
    precisions: tuple[Precision, ...] = ()
    order: int = 100  # conversion order among the chosen formats (lower first)
    implies: tuple[Precision, ...] = ()  # precisions choosing this format adds to the export
    every_precision: bool = False  # planned for each of its precisions even when not asked for
    size_reference: str | None = None  # whose float32 file its size_ratio compares with (default: its own)
    float_layers_allowed: bool = True  # False where a float op leaves the accelerator (no --keep-float)

    def filename(self, precision: Precision) -> str:
        """The file this exporter writes for ``precision``."""
        raise NotImplementedError

    def skip_reason(self, precision: Precision, run_kind: str) -> str | None:
        """Why ``precision`` is not exported from a ``run_kind`` run, or None."""
        return None

    def backend(self, precision: Precision) -> str | None:
        """The device backend that runs the artifact (validated on the host), or None when it cannot run here."""
        return None

    def job_inputs(self, out_dir: Path) -> dict[str, Any]:
        """Extra :class:`ConversionJob` fields taken from artifacts already written in ``out_dir``."""
        return {}

    def needs_keras_model(self, job: ConversionJob) -> bool:
        """Whether :meth:`convert` needs the run's Keras model loaded."""
        return True

    def convert(self, job: ConversionJob, model: Any) -> dict[str, Any]:
        """Write ``job.output``; return ``{"metadata": {...}, ...}`` (the metadata goes into the sidecar)."""
        raise NotImplementedError

    def deployable_size(self, path: Path, result: dict[str, Any]) -> int | None:
        """The size that ships for this artifact (bytes)."""
        return path.stat().st_size if path.is_file() else None

    def details(self, result: dict[str, Any]) -> dict[str, Any] | None:
        """Format-specific facts for the report row."""
        return None

    def has_sidecar(self, result: dict[str, Any]) -> bool:
        """Whether the artifact gets a sidecar ``<file>.json``: a model does, a report written instead of one does not."""
        return True

    def report_notes(self, artifact: dict[str, Any]) -> list[str]:
        """Markdown paragraphs the report adds for one of this exporter's rows."""
        return []


EXPORTERS: dict[str, Exporter] = {}
E = TypeVar("E", bound=Callable[[], Exporter])


def register(cls: E) -> E:
    """Class decorator: instantiate and register an exporter under its format name."""
    instance = cls()
    EXPORTERS[instance.format] = instance
    return cls


def _load_all() -> None:
    """Import every module of this package: each registers its exporter (a new format needs no edit here)."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def format_names() -> list[str]:
    """Every registered format, in conversion order."""
    _load_all()
    return sorted(EXPORTERS, key=lambda name: (EXPORTERS[name].order, name))


def get_exporter(name: str) -> Exporter:
    """The exporter of format ``name``, or :class:`UsageError`."""
    _load_all()
    name = getattr(name, "value", name)
    if name not in EXPORTERS:
        raise UsageError(f"unknown export format '{name}'; choose from: {', '.join(format_names())}")
    return EXPORTERS[name]


def source_for(precision: Precision, run_kind: str) -> Source:
    """float32 from a float run is "float"; everything else from a float run is post-training; QAT runs "qat"."""
    if run_kind == "qat":
        return Source.QAT
    return Source.FLOAT if precision == Precision.FLOAT32 else Source.PTQ


def plan_artifacts(config: Requested, run_kind: str) -> tuple[list[ArtifactSpec], list[dict[str, str]]]:
    """The artifacts an export writes, in conversion order, and those skipped (with the reason)."""
    from edgeft import targets as device

    specs: list[ArtifactSpec] = []
    skipped: list[dict[str, str]] = []
    known_backends = device.backend_names()
    for name in sorted(config.formats, key=lambda n: (get_exporter(n).order, n)):
        exporter = get_exporter(name)
        for precision in Precision:
            if precision not in exporter.precisions or not (precision in config.precisions or exporter.every_precision):
                continue
            reason = exporter.skip_reason(precision, run_kind)
            if reason:
                skipped.append({"format": name, "precision": precision.value, "reason": reason})
                continue
            backend = exporter.backend(precision)
            if backend is not None and backend not in known_backends:
                raise ExportError(f"format {name} declares device backend '{backend}', which the device layer "
                                  f"does not have (known: {', '.join(known_backends)})")
            specs.append(ArtifactSpec(name, precision, source_for(precision, run_kind), exporter.filename(precision),
                                      backend))
    return specs, skipped
