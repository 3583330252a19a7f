"""Session-wide run directories for export, calibration and QAT tests (built once, shared across modules).

The runs are hand-built by :func:`edgeft.testing.build_head_run` (a head trained on a frozen
backbone, written with the run-directory writer of ``edgeft finetune``), so these tests do not
depend on the training package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import HYMENOPTERA, SHARED_WEIGHTS
from edgeft.testing import HeadRunSpec, ShapesSpec, build_head_run, write_shapes

MOBILENET_035_WEIGHTS = SHARED_WEIGHTS  # the name the export tests use
__all__ = ["HYMENOPTERA", "MOBILENET_035_WEIGHTS", "clear_lead", "keras_and_artifact_outputs", "mobilenet_run",
           "session_export", "session_run"]


def session_run(tmp_path_factory: Any, name: str, data_size: int = 72, **spec: Any) -> Path:
    """Build (once per pytest session) a run directory under the session's base temp; ``spec``: HeadRunSpec's fields."""
    import pytest

    base = tmp_path_factory.getbasetemp()
    out = base / f"run-{name}"
    if (out / "edgeft.json").is_file():
        return out
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEFT_CACHE_DIR", str(base / "edgeft-cache"))
        data = base / f"data-{name}"
        if not (data / "train").is_dir():
            write_shapes(data, ShapesSpec(per_class=12, val_per_class=6, size=data_size))
        build_head_run(out, data, HeadRunSpec(**spec))
    return out


def mobilenet_run(tmp_path_factory: Any) -> Path:
    """A head-trained MobileNetV2 0.35 run at 64 px on the real ImageNet weights (skips without ../shared)."""
    import pytest

    if not SHARED_WEIGHTS.is_file():
        pytest.skip(f"needs {SHARED_WEIGHTS} (the shared offline assets are not present)")
    return session_run(tmp_path_factory, "mnv2-64", weights=SHARED_WEIGHTS, image_size=64, epochs=4)


def session_export(tmp_path_factory: Any, run: Path, name: str = "int8-tflite-onnx") -> tuple[Path, dict[str, Any]]:
    """Export ``run`` to float32 + int8 TFLite and ONNX once per pytest session (shared across modules)."""
    import json

    import pytest

    from edgeft.export import ExportConfig, main_export

    out = tmp_path_factory.getbasetemp() / f"export-{name}"
    report_path = out / "export_report.json"
    if report_path.is_file():
        return out, json.loads(report_path.read_text("utf-8"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEFT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "edgeft-cache"))
        config = ExportConfig.from_flags(run, out, formats=["tflite", "onnx"], int8=True, calib_size=24,
                                         isolate=False, latency_runs=2, max_drop=100.0)
        report = main_export(config)
    return out, report


def keras_and_artifact_outputs(run_dir: Path, *artifacts: Path) -> tuple[Any, list[Any]]:
    """The run's Keras model's probabilities on the run's val split, and each artifact's, fed as export validates
    it (uint8 pixels, its sidecar, in the device backend its suffix names); the split is decoded once."""
    import numpy as np

    from edgeft import targets as device
    from edgeft.data.dataset import load_samples
    from edgeft.export.validate import load_model
    from edgeft.run.rundir import RunDir
    from edgeft.tfcompat import load_keras_model

    run = RunDir.open(run_dir)
    val = load_samples(run.samples("val"), run.manifest.image_size, label="decoding val images")
    keras_model = load_keras_model(run.model_path)
    keras_probs = np.asarray(keras_model(run.manifest.preprocessing.apply(val.images), training=False), np.float32)
    outputs = []
    for artifact in artifacts:
        model = load_model(artifact, artifact.suffix.lstrip("."), 1)
        outputs.append(model.predict(device.resize_images(val.images, *model.input_size)))
    return keras_probs, outputs


def clear_lead(probs: Any, lead: float) -> Any:
    """Where the top-1 probability leads the second by at least ``lead`` (a boolean mask over images)."""
    import numpy as np

    ranked = np.sort(probs, axis=1)
    return ranked[:, -1] - ranked[:, -2] >= lead
