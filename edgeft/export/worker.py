"""Child-process entry point: one conversion (or the Keras reference outputs) per process.

TensorFlow's converter keeps 0.7-1.1 GB per conversion alive after ``gc.collect()``; a process
doing many conversions grows past 12 GB. :func:`edgeft.export.main.main_export` therefore runs
each conversion as ``python -m edgeft.export.worker JOB.json RESULT.json`` so that memory is
returned to the system after each one. RESULT.json holds ``{"ok": true, ...}`` or
``{"ok": false, "error": <one line>, "exit_code": N}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.errors import EdgeftError, ExportError, first_line


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """Run one task in this process: ``{"task": "convert", "job": {...}}`` or ``{"task": "keras_reference", ...}``."""
    from edgeft.tfcompat import load_keras_model

    if task["task"] == "keras_reference":
        model = load_keras_model(Path(task["model"]))
        with np.load(task["inputs"], allow_pickle=False) as data:
            pixels = data["pixels"]
        from edgeft.preprocessing import Preprocessing

        preprocessing = Preprocessing.from_dict(task["preprocessing"])
        outputs = []
        for start in range(0, pixels.shape[0], 16):
            batch = preprocessing.apply(pixels[start : start + 16])
            outputs.append(np.asarray(model(batch, training=False), np.float32))
        probs = np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)
        np.save(task["output"], probs)
        return {"ok": True, "shape": list(probs.shape)}
    if task["task"] == "convert":
        from edgeft.export.formats import ConversionJob, get_exporter
        from edgeft.run.rundir import MODEL_FILE

        job = ConversionJob(**task["job"])
        exporter = get_exporter(job.format)
        model = load_keras_model(Path(job.run_dir) / MODEL_FILE) if exporter.needs_keras_model(job) else None
        result = exporter.convert(job, model)
        return dict(result, ok=True)
    if task["task"] == "layer_errors":
        return layer_errors_task(task)
    raise ExportError(f"unknown worker task {task['task']!r}")


def layer_errors_task(task: dict[str, Any]) -> dict[str, Any]:
    """Per-layer error report of one int8 artifact, written to the export folder; its summary for the report."""
    from edgeft.export import layer_errors as le
    from edgeft.export.formats.tflite import load_calibration_pixels
    from edgeft.preprocessing import Preprocessing
    from edgeft.tfcompat import load_keras_model

    pixels = load_calibration_pixels(task["calibration"])
    preprocess = Preprocessing.from_dict(task["preprocessing"]).apply
    name = Path(task["artifact"]).name
    if task["format"] == "onnx":
        from edgeft.export.formats.onnx import FLOAT_FOR_INT8

        float_onnx = Path(task["work"]) / FLOAT_FOR_INT8
        report = le.onnx_layer_errors(Path(task["artifact"]), pixels[:16], preprocess,
                                      float_path=float_onnx if float_onnx.is_file() else None, artifact=name)
    else:
        model = load_keras_model(Path(task["model"]))
        if task.get("weight_rounding") == "adaptive":  # the weights the artifact was made from
            from edgeft.quantization.rounding import adaptive_rounding

            model = adaptive_rounding(model, pixels, preprocess)[0]
        report = le.tflite_layer_errors(model, int(task["image_size"]), pixels, pixels[:64], preprocess, artifact=name)
    le.write_layer_errors(report, Path(task["out"]))
    return {"ok": True, "summary": le.summarize(report, task["source"], bool(task["accelerator"]),
                                                keep_float=bool(task["keep_float"]))}


def run_in_child(task: dict[str, Any], work_dir: Path, name: str) -> dict[str, Any]:
    """Run ``task`` in a fresh Python process; return its result, raising its error in this process."""
    work_dir.mkdir(parents=True, exist_ok=True)
    task_file = work_dir / f"{name}.task.json"
    result_file = work_dir / f"{name}.result.json"
    task_file.write_text(json.dumps(task), "utf-8")
    result_file.unlink(missing_ok=True)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    # TensorFlow's start-up chatter (absl, CUDA probing, converter statistics) would bury the
    # export's own progress lines, so the child's stderr is kept only to explain a crash.
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.run([sys.executable, "-m", "edgeft.export.worker", str(task_file), str(result_file)],
                                 env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        if not result_file.is_file():
            stderr.seek(0)
            lines = [line.strip() for line in stderr.read().decode("utf-8", "replace").splitlines() if line.strip()]
            died = f"killed by signal {-process.returncode}" if process.returncode < 0 else f"exit {process.returncode}"
            last = f": {lines[-1][:200]}" if lines else ""
            raise ExportError(f"{name}: the conversion process died ({died}){last}; "
                              "retry with fewer formats, or with --in-process to see every message")
    result = json.loads(result_file.read_text("utf-8"))
    if not result.get("ok"):
        error = EdgeftError(result.get("error", "conversion failed"))
        error.exit_code = int(result.get("exit_code", ExportError.exit_code))
        cls = _error_class(result.get("error_type", ""))
        raise cls(result.get("error", "conversion failed")) if cls else error
    return result


def _error_class(name: str) -> type[EdgeftError] | None:
    from edgeft import errors

    cls = getattr(errors, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, EdgeftError) else None


def main(argv: list[str] | None = None) -> int:
    """``python -m edgeft.export.worker TASK.json RESULT.json``."""
    args = sys.argv[1:] if argv is None else argv
    task_file, result_file = Path(args[0]), Path(args[1])
    try:
        result = run_task(json.loads(task_file.read_text("utf-8")))
    except EdgeftError as error:
        result = {"ok": False, "error": error.message, "exit_code": error.exit_code, "error_type": type(error).__name__}
    except Exception as error:  # report, never a traceback through the parent
        result = {"ok": False, "error": f"{type(error).__name__}: {first_line(error, 300)}", "exit_code": ExportError.exit_code,
                  "error_type": "ExportError"}
    from edgeft.targets import peak_rss_mb

    result["peak_rss_mb"] = peak_rss_mb()
    result_file.write_text(json.dumps(result, default=str), "utf-8")
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
