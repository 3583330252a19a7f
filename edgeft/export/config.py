"""What an export is asked to produce: :class:`ExportConfig` and its enums.

An export is planned as a list of :class:`ArtifactSpec` (one file each) by the format
exporters registered in :mod:`edgeft.export.formats`; formats are named by their exporter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeft.errors import UsageError
from edgeft.export.formats import format_names, get_exporter
from edgeft.export.spec import ArtifactSpec, Format, IODtype, OnnxWeights, Precision, Source
from edgeft.quantization.rounding import WeightRounding

__all__ = ["ArtifactSpec", "ExportConfig", "Format", "IODtype", "OnnxWeights", "Precision", "Source", "WeightRounding",
           "parse_formats"]


DEFAULT_FORMATS = (Format.TFLITE.value, Format.ONNX.value)
DEFAULT_MAX_DROP_INT8 = 2.0  # accuracy points
DEFAULT_MAX_DROP_OTHER = 0.5
ONNX_CALIB_METHODS = ("minmax", "entropy", "percentile")
KEEP_FLOAT_AUTO = "auto"
KEEP_FLOAT_AUTO_LAYERS = 3  # measured: the 3 worst layers hold 2 points on all three evaluation sets


def parse_formats(names: list[str]) -> tuple[str, ...]:
    """Parse ``--formats`` names against the exporter registry, raising :class:`UsageError` for an unknown one."""
    formats: list[str] = []
    for name in names:
        fmt = get_exporter(name.strip().lower()).format
        if fmt not in formats:
            formats.append(fmt)
    if not formats:
        raise UsageError("--formats is empty; choose from: " + ", ".join(format_names()))
    return tuple(formats)


@dataclass(frozen=True)
class ExportConfig:
    """Everything :func:`edgeft.export.main_export` needs; built by the CLI or by code."""

    run_dir: Path
    out_dir: Path
    formats: tuple[str, ...] = DEFAULT_FORMATS  # registered format names
    precisions: tuple[Precision, ...] = (Precision.FLOAT32,)
    io_dtype: IODtype = IODtype.UINT8
    max_drop: float | None = None  # points; None: 2.0 for int8, 0.5 for the others
    calib_size: int = 300
    calib_seed: int = 0
    calib_dir: Path | None = None
    calib_list: Path | None = None
    calib_sweep: tuple[int, ...] = ()
    onnx_calib_method: str = "minmax"
    onnx_weights: OnnxWeights | None = None  # None: uint8 for post-training int8, int8 for a QAT run's ranges
    keep_float: tuple[str, ...] = ()  # ("auto",) or Keras layer names kept in float in post-training int8
    weight_rounding: WeightRounding = WeightRounding.ADAPTIVE  # post-training int8 only
    opset: int = 17
    threads: int = 1
    latency_runs: int = 30
    isolate: bool = True  # one conversion per child process
    force: bool = False  # replace an earlier export in out_dir as a whole

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", tuple(getattr(f, "value", f) for f in self.formats))
        if Precision.FLOAT32 not in self.precisions:
            object.__setattr__(self, "precisions", (Precision.FLOAT32, *self.precisions))
        if self.onnx_calib_method not in ONNX_CALIB_METHODS:
            raise UsageError(f"unknown calibration method '{self.onnx_calib_method}'; choose from: "
                             + ", ".join(ONNX_CALIB_METHODS))
        if self.calib_size < 1:
            raise UsageError(f"--calib-size must be at least 1, got {self.calib_size}")
        if self.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {self.threads}")
        if self.max_drop is not None and self.max_drop < 0:
            raise UsageError(f"--max-drop must be >= 0 points, got {self.max_drop}")
        self._check_keep_float()

    def _check_keep_float(self) -> None:
        names = tuple(str(name).strip() for name in self.keep_float if str(name).strip())
        object.__setattr__(self, "keep_float", names)
        if not names:
            return
        if KEEP_FLOAT_AUTO in names and len(names) > 1:
            raise UsageError("--keep-float takes 'auto' or a list of layer names, not both")
        refusing = [name for name in self.formats if not get_exporter(name).float_layers_allowed]
        if refusing:
            raise UsageError(f"--keep-float cannot be used with the {', '.join(refusing)} format: a float layer "
                             "leaves the accelerator; export that format in a separate run without it")
        if Precision.INT8 not in self.precisions:
            raise UsageError("--keep-float applies to int8 artifacts: add --int8")

    @classmethod
    def from_flags(cls, run_dir: Path, out_dir: Path, formats: list[str] | None = None, int8: bool = False,
                   fp16: bool = False, dynamic: bool = False, all_: bool = False, **options: object) -> "ExportConfig":
        """Build a config from CLI-style flags (``--all`` = every registered format and every precision)."""
        if all_:
            chosen: tuple[str, ...] = tuple(format_names())
            precisions = tuple(Precision)
        else:
            chosen = parse_formats(formats) if formats else DEFAULT_FORMATS
            wanted = {Precision.FLOAT32, *(p for name in chosen for p in get_exporter(name).implies)}
            wanted |= {p for p, flag in ((Precision.INT8, int8), (Precision.FLOAT16, fp16),
                                         (Precision.DYNAMIC_RANGE, dynamic)) if flag}
            precisions = tuple(p for p in Precision if p in wanted)
        io = options.pop("io_dtype", None)
        if options.get("onnx_weights", "") is None:
            options.pop("onnx_weights")
        if "onnx_weights" in options:
            try:
                options["onnx_weights"] = OnnxWeights(options["onnx_weights"])
            except ValueError:
                raise UsageError(f"unknown --onnx-weights '{options['onnx_weights']}'; choose from: "
                                 + ", ".join(w.value for w in OnnxWeights)) from None
        rounding = options.pop("weight_rounding", None) or WeightRounding.ADAPTIVE
        try:
            options["weight_rounding"] = WeightRounding(rounding)
        except ValueError:
            raise UsageError(f"unknown --weight-rounding '{rounding}'; choose from: "
                             + ", ".join(w.value for w in WeightRounding)) from None
        sweep = options.pop("calib_sweep", None) or ()
        return cls(run_dir=Path(run_dir), out_dir=Path(out_dir), formats=chosen, precisions=precisions,
                   io_dtype=IODtype(io) if io else IODtype.UINT8, calib_sweep=tuple(int(s) for s in sweep),
                   **options)  # type: ignore[arg-type]

    def onnx_weights_for(self, source: Source) -> OnnxWeights:
        """ONNX int8 weight type: as asked, else uint8 (post-training, every CPU) or int8 (QAT ranges: measured
        agreement 0.993 / 0.967 / 1.000 against 0.967 / 0.961 / 0.994 with uint8 on the three evaluation sets)."""
        if self.onnx_weights is not None:
            return self.onnx_weights
        return OnnxWeights.INT8 if source == Source.QAT else OnnxWeights.UINT8

    def max_drop_for(self, precision: Precision) -> float:
        """Allowed accuracy loss in points for an artifact of ``precision``."""
        if self.max_drop is not None:
            return self.max_drop
        return DEFAULT_MAX_DROP_INT8 if precision == Precision.INT8 else DEFAULT_MAX_DROP_OTHER
