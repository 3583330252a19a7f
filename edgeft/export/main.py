"""``main_export``: plan, convert (one child process each), check parity, report."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.errors import OutputMatchError, RunDirError
from edgeft.export.config import ArtifactSpec, ExportConfig, Format, Precision, Source
from edgeft.progress import log


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(task: dict[str, Any], config: ExportConfig, work: Path, name: str) -> dict[str, Any]:
    if config.isolate:
        from edgeft.export.worker import run_in_child

        return run_in_child(task, work, name)
    from edgeft.export.worker import run_task

    return run_task(task)


def main_export(config: ExportConfig) -> dict[str, Any]:
    """Export a run directory to every requested format and precision; return the report.

    Raises :class:`RunDirError`, :class:`CalibrationError`, :class:`ExportError`,
    :class:`ModelFileError`, and :class:`OutputMatchError` (after writing the report) when an
    artifact loses more accuracy than ``--max-drop`` allows.
    """
    from edgeft.calibration import calibration_for_run
    from edgeft.data.dataset import load_samples
    from edgeft.export.formats import ConversionJob, plan_artifacts
    from edgeft.export.metadata import base_metadata, sidecar_path
    from edgeft.export.parity import check_artifact, onnx_runner, tflite_runner
    from edgeft.export.report import SCHEMA, write_report
    from edgeft.export.worker import peak_rss_mb
    from edgeft.fileio import write_json_atomic
    from edgeft.run.rundir import RunDir
    from edgeft.tfcompat import package_versions

    started = time.monotonic()
    run = RunDir.open(config.run_dir)
    manifest = run.manifest
    out = Path(config.out_dir)
    if out.resolve() == run.path.resolve():
        raise RunDirError(f"--out {out} is the run directory itself; choose a separate export directory")
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".work"
    work.mkdir(exist_ok=True)
    specs, skipped = plan_artifacts(config, manifest.kind)
    for skip in skipped:
        log(f"skipping {skip['format']} {skip['precision']}: {skip['reason']}")
    log(f"export: {run.path} ({manifest.kind} {manifest.backbone} {manifest.image_size} px) -> {out}: "
        + ", ".join(s.filename for s in specs))

    calibration = None
    calib_file: str | None = None
    if any(s.precision == Precision.INT8 for s in specs):
        calibration = calibration_for_run(run, config.calib_size, config.calib_seed, config.calib_dir, config.calib_list)
        calib_file = str(work / "calib.npz")
        np.savez(calib_file, pixels=calibration.pixels)
        log(f"calibration: {len(calibration)} images from {calibration.source}")

    val = load_samples(run.samples("val"), manifest.image_size, label="decoding val images")
    if len(val.samples) == 0:
        raise RunDirError(f"run {run.path} has no usable validation image to check the exported models on")
    val_file = work / "val.npz"
    np.savez(val_file, pixels=val.images)
    inputs = manifest.preprocessing.apply(val.images)
    log("keras: reference outputs on the val split")
    _run({"task": "keras_reference", "model": str(run.model_path), "inputs": str(val_file),
          "preprocessing": manifest.preprocessing.to_dict(), "output": str(work / "keras_probs.npy")},
         config, work, "keras_reference")
    keras_probs = np.load(work / "keras_probs.npy")
    keras_accuracy = float(np.mean(keras_probs.argmax(axis=1) == val.labels))

    base = base_metadata(manifest, run.path)
    records: list[dict[str, Any]] = []
    float_sizes: dict[str, int] = {}
    for spec in specs:
        path = out / spec.filename
        log(f"converting {spec.filename} ({spec.format.value} {spec.precision.value}, {spec.source.value})")
        metadata = dict(base, format=spec.format.value, precision=spec.precision.value, source=spec.source.value,
                        calibration=calibration.describe() if calibration and spec.precision == Precision.INT8 else None)
        int8_tflite = out / "model_int8.tflite" if spec.format == Format.EDGETPU else None
        job = ConversionJob(
            run_dir=str(run.path), format=spec.format.value, precision=spec.precision.value,
            source=spec.source.value, output=str(path), work_dir=str(work), calibration=calib_file,
            io_dtype=config.io_dtype.value, opset=config.opset, onnx_calib_method=config.onnx_calib_method,
            onnx_weights=config.onnx_weights.value, metadata=metadata,
            int8_tflite=str(int8_tflite) if int8_tflite and int8_tflite.is_file() else None,
        )
        t0 = time.monotonic()
        result = _run({"task": "convert", "job": job.to_dict()}, config, work, spec.filename)
        convert_s = time.monotonic() - t0
        record = _measure(spec, path, result, config, inputs, val.labels, keras_probs, keras_accuracy,
                          tflite_runner, onnx_runner, check_artifact)
        record["convert_s"] = round(convert_s, 1)
        if spec.precision == Precision.FLOAT32 and spec.format != Format.EDGETPU:
            float_sizes[spec.format.value] = record["size_bytes"]
        reference = float_sizes.get(spec.format.value if spec.format != Format.EDGETPU else "tflite")
        record["size_ratio"] = round(record["size_bytes"] / reference, 4) if reference and record["size_bytes"] else None
        sidecar = dict(result.get("metadata", metadata), artifact=spec.filename, size_bytes=record["size_bytes"],
                       sha256=_sha256(path) if path.is_file() else None,
                       parity={k: record[k] for k in ("accuracy", "agreement", "max_abs_diff", "latency_ms")},
                       keras_accuracy=keras_accuracy)
        write_json_atomic(sidecar_path(path), sidecar)
        record["sidecar"] = sidecar_path(path).name
        records.append(record)
        log(f"  {spec.filename}: {record['size_bytes']} bytes, accuracy {record['accuracy']}, "
            f"agreement {record['agreement']}, latency {record['latency_ms']} ms")

    sweep: list[dict[str, Any]] = []
    if config.calib_sweep and calibration is not None:
        sweep = _calibration_sweep(config, run, calibration, base, work, inputs, val.labels, keras_probs)

    report = {
        "schema": SCHEMA,
        "run_dir": str(run.path.resolve()),
        "run_kind": manifest.kind,
        "backbone": manifest.backbone,
        "alpha": manifest.alpha,
        "image_size": manifest.image_size,
        "labels": list(manifest.class_names),
        "keras_accuracy": keras_accuracy,
        "val_samples": int(len(val.labels)),
        "io_dtype": config.io_dtype.value,
        "threads": config.threads,
        "opset": config.opset,
        "calibration": calibration.describe() if calibration else None,
        "calibration_sweep": sweep,
        "artifacts": records,
        "skipped": skipped,
        "peak_rss_mb": {k: round(v, 1) for k, v in peak_rss_mb().items()},
        "elapsed_s": round(time.monotonic() - started, 1),
        "versions": package_versions(),
    }
    json_path, _ = write_report(out, report)
    shutil.rmtree(work, ignore_errors=True)
    log(f"export report: {json_path}")
    failed = [r for r in records if r["passed"] is False]
    if failed:
        worst = failed[0]
        raise OutputMatchError(
            f"{worst['path']} lost {worst['accuracy_drop_pts']:.1f} accuracy points against Keras "
            f"(allowed {worst['max_drop_pts']}); see {json_path} (raise --max-drop, or use QAT for int8)"
        )
    return report


def _measure(spec: ArtifactSpec, path: Path, result: dict[str, Any], config: ExportConfig, inputs: np.ndarray,
             labels: np.ndarray, keras_probs: np.ndarray, keras_accuracy: float, tflite_runner: Any,
             onnx_runner: Any, check_artifact: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "format": spec.format.value, "precision": spec.precision.value, "source": spec.source.value,
        "path": spec.filename, "size_bytes": path.stat().st_size if path.is_file() else None,
        "accuracy": None, "agreement": None, "max_abs_diff": None, "latency_ms": None,
        "accuracy_drop_pts": None, "max_drop_pts": config.max_drop_for(spec.precision), "passed": None,
        "details": None,
    }
    if spec.format == Format.EDGETPU:
        record["details"] = result.get("edgetpu")
        if result.get("compiled"):  # the compiled model's size is the deployable one
            record["size_bytes"] = path.stat().st_size
        else:
            int8 = path.parent / "model_int8.tflite"
            record["size_bytes"] = int8.stat().st_size if int8.is_file() else None
        return record
    runner = tflite_runner(path, config.threads) if spec.format == Format.TFLITE else onnx_runner(path, config.threads)
    parity = check_artifact(runner, inputs, labels, keras_probs, config.latency_runs)
    record.update(accuracy=parity.accuracy, agreement=parity.agreement, max_abs_diff=parity.max_abs_diff,
                  latency_ms=round(parity.latency_ms, 4) if parity.latency_ms is not None else None)
    if parity.accuracy is not None:
        drop = 100.0 * (keras_accuracy - parity.accuracy)
        record["accuracy_drop_pts"] = round(drop, 3)
        record["passed"] = bool(drop <= record["max_drop_pts"] + 1e-9)
    if spec.format == Format.ONNX:
        record["details"] = {"opset": result.get("opset"), "checker": result.get("checker")}
    return record


def _calibration_sweep(config: ExportConfig, run: Any, calibration: Any, base: dict[str, Any], work: Path,
                       inputs: np.ndarray, labels: np.ndarray, keras_probs: np.ndarray) -> list[dict[str, Any]]:
    """TFLite int8 accuracy for a few calibration sizes (each a subset of the full calibration set)."""
    from edgeft.export.formats import ConversionJob
    from edgeft.export.parity import check_artifact, tflite_runner

    rows = []
    for size in sorted(set(config.calib_sweep)):
        size = min(size, len(calibration))
        subset = work / f"calib_{size}.npz"
        np.savez(subset, pixels=calibration.pixels[:size])
        path = work / f"sweep_int8_{size}.tflite"
        log(f"calibration sweep: TFLite int8 with {size} images")
        job = ConversionJob(run_dir=str(run.path), format="tflite", precision="int8",
                            source=Source.QAT.value if run.manifest.kind == "qat" else Source.PTQ.value,
                            output=str(path), work_dir=str(work), calibration=str(subset),
                            io_dtype=config.io_dtype.value, opset=config.opset,
                            onnx_calib_method=config.onnx_calib_method, metadata=dict(base, format="tflite",
                                                                                      precision="int8"))
        _run({"task": "convert", "job": job.to_dict()}, config, work, f"sweep_{size}")
        parity = check_artifact(tflite_runner(path, config.threads), inputs, labels, keras_probs, 0)
        rows.append({"calib_size": size, "accuracy": parity.accuracy, "agreement": parity.agreement,
                     "max_abs_diff": parity.max_abs_diff})
    return rows
