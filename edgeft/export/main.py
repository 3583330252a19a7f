"""``main_export``: plan, stage, convert (one child process each), validate in the device layer, report."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeft import targets as device
from edgeft.calibration import CalibrationSet, calibration_for_run
from edgeft.data.dataset import load_samples
from edgeft.errors import EdgeftError, OutputMatchError, RunDirError, UsageError
from edgeft.export.config import ExportConfig
from edgeft.export.spec import ArtifactSpec, Precision, Source
from edgeft.export.formats import EXPORTERS, ConversionJob, get_exporter, plan_artifacts
from edgeft.export.metadata import base_metadata
from edgeft.export.report import REPORT_JSON, SCHEMA, write_report
from edgeft.export.validate import Reference, Validation, validate_artifact
from edgeft.fileio import sha256_file, write_json_atomic
from edgeft.progress import log
from edgeft.run.rundir import RunDir

SWEEP_FORMAT = "tflite"  # the calibration sweep measures TFLite int8


@dataclass(frozen=True)
class Export:
    """One export in progress: its configuration, the run it reads and the directories it writes."""

    config: ExportConfig
    run: RunDir
    out: Path
    work: Path
    base: dict[str, Any]  # metadata every artifact carries


@dataclass(frozen=True)
class Staged:
    """Inputs shared by every conversion: the calibration set (and its file) and the Keras reference."""

    calibration: CalibrationSet | None
    calibration_file: str | None
    reference: Reference


def main_export(config: ExportConfig) -> dict[str, Any]:
    """Export a run directory to every requested format and precision; return the report.

    Raises :class:`RunDirError`, :class:`CalibrationError`, :class:`ExportError`,
    :class:`ModelFileError`, and :class:`OutputMatchError` (after writing the report) when an
    artifact loses more accuracy than ``--max-drop`` allows.
    """
    from edgeft import interrupts
    from edgeft.outputs import open_output

    started = time.monotonic()
    out = Path(config.out_dir)
    if out.resolve() == Path(config.run_dir).resolve():
        raise RunDirError(f"--out {out} is the run directory itself; choose a separate export directory")
    interrupts.advise(f"interrupted; nothing was written to {out}"
                      + (" (the export already there is unchanged)" if config.force else "")
                      + ": run the same command again")
    with open_output(out, replace=config.force, always_stage=True) as folder:
        check_export_folder(out, config.force)
        export = open_export(config, folder.work)
        specs, skipped = plan(export)
        staged = stage(export, specs)
        records = [int8_facts(export, spec, staged, export_artifact(export, spec, staged)) for spec in specs]
        add_size_ratios(records)
        sweep = calibration_sweep(export, staged)
        report = build_report(export, staged, records, skipped, sweep, started)
        write_report(export.out, report)
        shutil.rmtree(export.work, ignore_errors=True)
    json_path = out / REPORT_JSON
    log(f"export report: {json_path}")
    fail_on_accuracy_drop(records, json_path)
    return report


def check_export_folder(out: Path, force: bool) -> None:
    """An export folder holds exactly one export: refuse foreign content, and an earlier export without --force."""
    from edgeft.outputs import has_content

    if (out / REPORT_JSON).is_file():
        if not force:
            raise RunDirError(f"{out} already holds an export; pass --force to replace it as a whole, "
                              "or choose another --out")
    elif has_content(out):
        raise RunDirError(f"--out {out} is not empty and is not an edgeft export (no {REPORT_JSON}); "
                          "choose a new or empty folder")


def open_export(config: ExportConfig, work_dir: Path | None = None) -> Export:
    """Open the run directory and make the export's folder (``work_dir``: where it is staged) and ``.work/``."""
    run = RunDir.open(config.run_dir)
    out = Path(config.out_dir) if work_dir is None else Path(work_dir)
    if Path(config.out_dir).resolve() == run.path.resolve():
        raise RunDirError(f"--out {config.out_dir} is the run directory itself; choose a separate export directory")
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".work"
    work.mkdir(exist_ok=True)
    return Export(config, run, out, work, base_metadata(run.manifest, run.path))


def plan(export: Export) -> tuple[list[ArtifactSpec], list[dict[str, str]]]:
    """The artifacts the registry plans for this run, logged."""
    manifest = export.run.manifest
    if export.config.keep_float and manifest.kind == "qat":
        raise UsageError("--keep-float applies to post-training int8 of a float run; a QAT run's int8 keeps "
                         "the ranges it trained")
    specs, skipped = plan_artifacts(export.config, manifest.kind)
    for skip in skipped:
        log(f"skipping {skip['format']} {skip['precision']}: {skip['reason']}")
    log(f"export: {export.run.path} ({manifest.kind} {manifest.backbone} {manifest.image_size} px) -> "
        f"{export.config.out_dir}: "
        + ", ".join(s.filename for s in specs))
    return specs, skipped


def stage(export: Export, specs: list[ArtifactSpec]) -> Staged:
    """Calibration pixels (when an int8 artifact is planned) and the Keras reference on the val split."""
    config, run = export.config, export.run
    calibration, calibration_file = None, None
    if any(s.precision == Precision.INT8 for s in specs):
        calibration = calibration_for_run(run, config.calib_size, config.calib_seed, config.calib_dir, config.calib_list)
        calibration_file = str(export.work / "calib.npz")
        np.savez(calibration_file, pixels=calibration.pixels)
        log(f"calibration: {len(calibration)} images from {calibration.source}")
    return Staged(calibration, calibration_file, keras_reference(export))


def keras_reference(export: Export) -> Reference:
    """The val split's uint8 pixels and labels, and the Keras model's outputs on them (its own preprocessing)."""
    manifest = export.run.manifest
    val = load_samples(export.run.samples("val"), manifest.image_size, label="decoding val images")
    if len(val.samples) == 0:
        raise RunDirError(f"run {export.run.path} has no usable validation image to check the exported models on")
    val_file = export.work / "val.npz"
    np.savez(val_file, pixels=val.images)
    log("keras: reference outputs on the val split")
    run_task({"task": "keras_reference", "model": str(export.run.model_path), "inputs": str(val_file),
              "preprocessing": manifest.preprocessing.to_dict(), "output": str(export.work / "keras_probs.npy")},
             export, "keras_reference")
    return Reference(val.images, val.labels, np.load(export.work / "keras_probs.npy", allow_pickle=False))


def run_task(task: dict[str, Any], export: Export, name: str) -> dict[str, Any]:
    """Run a worker task in a child process (default) or in this one (``--in-process``)."""
    from edgeft.export.worker import run_in_child, run_task as run_here

    if export.config.isolate:
        return run_in_child(task, export.work, name)
    return run_here(task)


def conversion_job(export: Export, spec: ArtifactSpec, staged: Staged, output: Path) -> ConversionJob:
    """The job for one artifact: its metadata, calibration file and what its exporter takes from earlier ones."""
    config = export.config
    int8 = spec.precision == Precision.INT8
    metadata = dict(export.base, format=spec.format, precision=spec.precision.value, source=spec.source.value,
                    calibration=staged.calibration.describe() if staged.calibration and int8 else None)
    return ConversionJob(
        run_dir=str(export.run.path), format=spec.format, precision=spec.precision.value, source=spec.source.value,
        output=str(output), work_dir=str(export.work), calibration=staged.calibration_file,
        io_dtype=config.io_dtype.value, opset=config.opset, onnx_calib_method=config.onnx_calib_method,
        onnx_weights=config.onnx_weights_for(spec.source).value, metadata=metadata,
        keep_float=config.keep_float if int8 and spec.source == Source.PTQ else (),
        weight_rounding=config.weight_rounding.value if int8 and spec.source == Source.PTQ else "nearest",
        **get_exporter(spec.format).job_inputs(export.out),
    )


def export_artifact(export: Export, spec: ArtifactSpec, staged: Staged) -> dict[str, Any]:
    """Convert one artifact, write its sidecar, validate it with that sidecar, and return its report row."""
    exporter = get_exporter(spec.format)
    path = export.out / spec.filename
    log(f"converting {spec.filename} ({spec.format} {spec.precision.value}, {spec.source.value})")
    job = conversion_job(export, spec, staged, path)
    t0 = time.monotonic()
    result = run_task({"task": "convert", "job": job.to_dict()}, export, spec.filename)
    convert_s = round(time.monotonic() - t0, 1)
    size = exporter.deployable_size(path, result)
    sidecar = dict(result.get("metadata", job.metadata), artifact=spec.filename, size_bytes=size,
                   sha256=sha256_file(path) if path.is_file() else None,
                   keras_accuracy=staged.reference.accuracy, validation=None)
    has_sidecar = exporter.has_sidecar(result)
    if has_sidecar:
        write_json_atomic(Path(device.sidecar_path(str(path))), sidecar)
    validation = validate_artifact(path, spec.backend, staged.reference, export.config.threads,
                                   export.config.latency_runs) if spec.backend else None
    if validation is not None:
        write_json_atomic(Path(device.sidecar_path(str(path))), dict(sidecar, validation=validation.as_record()))
    record = artifact_record(export.config, spec, validation, staged.reference.accuracy)
    record.update(size_bytes=size, convert_s=convert_s, details=exporter.details(result),
                  sidecar=Path(device.sidecar_path(spec.filename)).name if has_sidecar else None)
    facts = [f"{size} bytes" if size is not None else None] + [
        f"{name} {record[key]}{unit}" for name, key, unit in
        (("accuracy", "accuracy", ""), ("agreement", "agreement", ""), ("p50", "p50_ms", " ms"))
        if record[key] is not None]
    log(f"  {spec.filename}: " + (", ".join(f for f in facts if f) or "written")
        + ("" if validation is not None else " (not validated on this host: no runtime runs it here)"))
    return record


def int8_facts(export: Export, spec: ArtifactSpec, staged: Staged, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with the int8 facts: the layers kept in float (from the sidecar) and, for an int8 artifact
    that failed ``--max-drop``, the summary of its per-layer error report."""
    import json

    sidecar = Path(device.sidecar_path(str(export.out / spec.filename)))
    metadata = json.loads(sidecar.read_text("utf-8")) if sidecar.is_file() else {}
    record["keep_float"] = metadata.get("keep_float")
    record["weight_rounding"] = metadata.get("weight_rounding")
    if record["passed"] is False and spec.precision == Precision.INT8:
        record["layer_errors"] = layer_error_report(export, spec, staged, bool(record["keep_float"]))
    return record


def layer_error_report(export: Export, spec: ArtifactSpec, staged: Staged, keep_float: bool) -> dict[str, Any]:
    """Write ``layer_errors_<artifact>.json`` for an int8 artifact that failed ``--max-drop``; its summary.

    A report that cannot be made is recorded as ``{"error": ...}``: the accuracy failure stays the error.
    """
    log(f"  {spec.filename}: per-layer quantization error report")
    task = {"task": "layer_errors", "format": spec.format, "model": str(export.run.model_path),
            "artifact": str(export.out / spec.filename), "calibration": staged.calibration_file,
            "image_size": export.run.manifest.image_size, "preprocessing": export.run.manifest.preprocessing.to_dict(),
            "work": str(export.work), "out": str(export.out), "source": spec.source.value,
            "accelerator": any(not EXPORTERS[name].float_layers_allowed for name in export.config.formats),
            "keep_float": keep_float,
            "weight_rounding": export.config.weight_rounding.value if spec.source == Source.PTQ else "nearest"}
    try:
        return run_task(task, export, f"layer_errors_{spec.filename}")["summary"]
    except EdgeftError as error:
        return {"error": error.message}


def artifact_record(config: ExportConfig, spec: ArtifactSpec, validation: Validation | None,
                    keras_accuracy: float) -> dict[str, Any]:
    """One report row: what was written and how it compares with Keras (None where not validated)."""
    record: dict[str, Any] = {
        "format": spec.format, "precision": spec.precision.value, "source": spec.source.value, "path": spec.filename,
        "backend": spec.backend, "size_bytes": None, "accuracy": None, "agreement": None, "max_abs_diff": None,
        "p50_ms": None, "accuracy_drop_pts": None, "max_drop_pts": config.max_drop_for(spec.precision),
        "passed": None, "details": None,
    }
    if validation is not None:
        record.update(validation.as_record())
    if record["accuracy"] is not None:
        drop = 100.0 * (keras_accuracy - record["accuracy"])
        record["accuracy_drop_pts"] = round(drop, 3)
        record["passed"] = bool(drop <= record["max_drop_pts"] + 1e-9)
    return record


def add_size_ratios(records: list[dict[str, Any]]) -> None:
    """``size_ratio``: each artifact's size against its reference format's float32 artifact."""
    float_sizes = {r["format"]: r["size_bytes"] for r in records if r["precision"] == Precision.FLOAT32.value}
    for record in records:
        reference = float_sizes.get(EXPORTERS[record["format"]].size_reference or record["format"])
        size = record["size_bytes"]
        record["size_ratio"] = round(size / reference, 4) if reference and size else None


def calibration_sweep(export: Export, staged: Staged) -> list[dict[str, Any]]:
    """TFLite int8 accuracy for a few calibration sizes (each a prefix of the full calibration set)."""
    config, calibration = export.config, staged.calibration
    if not config.calib_sweep or calibration is None:
        return []
    exporter = get_exporter(SWEEP_FORMAT)
    source = Source.QAT if export.run.manifest.kind == "qat" else Source.PTQ
    rows = []
    for size in sorted({min(s, len(calibration)) for s in config.calib_sweep}):
        subset = export.work / f"calib_{size}.npz"
        np.savez(subset, pixels=calibration.pixels[:size])
        path = export.work / f"sweep_int8_{size}.tflite"
        log(f"calibration sweep: TFLite int8 with {size} images")
        spec = ArtifactSpec(SWEEP_FORMAT, Precision.INT8, source, path.name, exporter.backend(Precision.INT8))
        job = conversion_job(export, spec, Staged(calibration, str(subset), staged.reference), path)
        result = run_task({"task": "convert", "job": job.to_dict()}, export, f"sweep_{size}")
        write_json_atomic(Path(device.sidecar_path(str(path))), result.get("metadata", job.metadata))
        validation = validate_artifact(path, str(spec.backend), staged.reference, config.threads, 0)
        rows.append({"calib_size": size, "accuracy": validation.accuracy, "agreement": validation.agreement,
                     "max_abs_diff": validation.max_abs_diff})
    return rows


def build_report(export: Export, staged: Staged, records: list[dict[str, Any]], skipped: list[dict[str, str]],
                 sweep: list[dict[str, Any]], started: float) -> dict[str, Any]:
    """The export report (schema ``edgeft.export_report/2``)."""
    from edgeft.tfcompat import package_versions

    config, manifest, calibration = export.config, export.run.manifest, staged.calibration
    return {
        "schema": SCHEMA, "run_dir": str(export.run.path.resolve()), "run_kind": manifest.kind,
        "backbone": manifest.backbone, "alpha": manifest.alpha, "image_size": manifest.image_size,
        "labels": list(manifest.class_names), "keras_accuracy": staged.reference.accuracy,
        "val_samples": int(len(staged.reference.labels)), "io_dtype": config.io_dtype.value,
        "threads": config.threads, "opset": config.opset,
        "calibration": calibration.describe() if calibration else None, "calibration_sweep": sweep,
        "artifacts": records, "skipped": skipped,
        "peak_rss_mb": {"parent": round(device.peak_rss_mb() or 0.0, 1),
                        "largest_child": round(device.peak_rss_mb(children=True) or 0.0, 1)},
        "elapsed_s": round(time.monotonic() - started, 1), "versions": package_versions(),
    }


def fail_on_accuracy_drop(records: list[dict[str, Any]], json_path: Path) -> None:
    """:class:`OutputMatchError` naming the first artifact that lost more than ``--max-drop``."""
    failed = [r for r in records if r["passed"] is False]
    if failed:
        worst = failed[0]
        layers = worst.get("layer_errors") or {}
        if layers.get("summary"):
            hint = (f"{layers['summary']} (per-layer report: {json_path.parent / layers['layer_errors']}); "
                    f"{layers['advice']}")
        elif worst["precision"] == Precision.INT8.value and worst["source"] == Source.PTQ.value:
            hint = "raise --max-drop, keep the worst layers in float (--keep-float auto), or use QAT"
        else:
            hint = "raise --max-drop"
        raise OutputMatchError(
            f"{worst['path']} lost {worst['accuracy_drop_pts']:.1f} accuracy points against Keras "
            f"(allowed {worst['max_drop_pts']}); see {json_path}; {hint}"
        )
