"""edgeft qat: QAT run directories for MobileNetV2 (real weights) and EfficientNet-B0, refusals, QAT export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from export_helpers import clear_lead, keras_and_artifact_outputs, mobilenet_run

from edgeft.errors import QuantizationError


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeft.quantization.qat import QATConfig, main_qat

    run = mobilenet_run(tmp_path_factory)
    out = tmp_path_factory.getbasetemp() / "qat-mnv2-64"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEFT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "edgeft-cache"))
        main_qat(QATConfig(run, out, epochs=1))
    return out


def test_qat_run_directory_has_the_run_shape(qat_run: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    from edgeft.run.rundir import RunDir

    run = RunDir.open(qat_run)
    assert run.manifest.kind == "qat"
    assert run.manifest.parent_run == str(mobilenet_run(tmp_path_factory).resolve())
    assert (qat_run / "labels.txt").read_text().split() == list(run.manifest.class_names)
    metrics = json.loads((qat_run / "metrics.json").read_text())
    assert 0.0 <= metrics["val_accuracy"] <= 1.0 and "float_val_accuracy" in metrics
    assert (qat_run / "history.csv").read_text().startswith("phase,epoch")
    model = run.load_keras_model()  # custom QuantizeConfigs and tfmot wrappers load
    assert any(type(layer).__name__.startswith("QuantizeWrapper") for layer in model.layers)
    # QAT keeps the float model's accuracy within a few points on this easy set
    assert metrics["val_accuracy"] >= metrics["float_val_accuracy"] - 0.12
    # it started from weights adaptively rounded on tfmot's grids (the default), and says so
    assert run.manifest.hyperparameters["qat_weight_rounding"] == "adaptive"
    rounding = run.manifest.extra["quantization"]["weight_rounding"]
    assert rounding["layers"] == 52 and 0 < rounding["flipped_weights"] < rounding["weights"]  # every conv


def test_qat_refuses_an_unknown_weight_rounding(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgeft.cli import main
    from edgeft.errors import UsageError
    from edgeft.quantization.qat import QATConfig

    with pytest.raises(UsageError, match="^unknown --weight-rounding 'up'; choose from: adaptive, nearest$"):
        QATConfig(tmp_path / "run", tmp_path / "qat", weight_rounding="up")  # type: ignore[arg-type]
    assert QATConfig(tmp_path / "run", tmp_path / "qat").weight_rounding.value == "adaptive"
    with pytest.raises(SystemExit) as exit_info:
        main(["qat", str(tmp_path), "--weight-rounding", "up", "--out", str(tmp_path / "qat")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and not (tmp_path / "qat").exists()
    assert "Invalid value for '--weight-rounding': 'up' is not one of 'adaptive', 'nearest'" in err


def test_qat_export_int8_keeps_trained_ranges(qat_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    from edgeft.export import ExportConfig, main_export
    from edgeft.export.metadata import read_tflite_metadata

    monkeypatch.setenv("EDGEFT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "edgeft-cache"))
    report = main_export(ExportConfig.from_flags(qat_run, tmp_path, formats=["tflite", "onnx"], int8=True,
                                                 calib_size=32, isolate=False, latency_runs=5, max_drop=100.0))
    by_key = {(a["format"], a["precision"]): a for a in report["artifacts"]}
    assert report["run_kind"] == "qat"
    assert {a["source"] for a in report["artifacts"]} == {"qat"}
    assert [s["format"] + ":" + s["precision"] for s in report["skipped"]] == ["tflite:float32", "onnx:float32"]
    # int8 TFLite and ONNX compute what the QAT model computes: top-1 agrees wherever the QAT model's lead
    # is clear (18 val images; whole-set agreement was 17/18 on two of three seeds, the miss at a lead of
    # 0.02-0.03) and the probabilities stay close (mean |difference| 0.007 TFLite, 0.006-0.008 ONNX
    # measured on seeds 0-2; ONNX was 0.021-0.029 while onnxruntime chose its own weight scales).
    qat_probs, artifact_probs = keras_and_artifact_outputs(
        qat_run, tmp_path / "model_int8.tflite", tmp_path / "model_int8.onnx")
    clear = clear_lead(qat_probs, 0.25)
    assert clear.sum() >= 9
    for name, probs in zip(("tflite", "onnx"), artifact_probs):
        agree = probs.argmax(1) == qat_probs.argmax(1)
        assert agree[clear].all(), name
        assert np.abs(probs - qat_probs).mean() <= 0.02, name
        assert by_key[(name, "int8")]["agreement"] == pytest.approx(agree.mean()), name
    onnx_facts = json.loads((tmp_path / "model_int8.onnx.json").read_text())["onnx"]
    assert "QAT ranges" in onnx_facts["converter"] and onnx_facts["qat_ranges_applied"] > 20  # the QAT model's own
    assert onnx_facts["qat_weight_grids"] == 53  # every convolution and the Dense layer on its trained grid
    assert onnx_facts["weight_type"] == "QInt8"
    assert read_tflite_metadata(tmp_path / "model_int8.tflite")["source"] == "qat"


def test_qat_refuses_a_nested_model() -> None:
    from edgeft.quantization.qat import quantize_flat_model
    from edgeft.tfcompat import keras

    k = keras()
    inner_in = k.Input((8, 8, 3))
    inner = k.Model(inner_in, k.layers.Conv2D(4, 3)(inner_in), name="backbone")
    outer_in = k.Input((8, 8, 3))
    x = k.layers.GlobalAveragePooling2D()(inner(outer_in))
    model = k.Model(outer_in, k.layers.Dense(2)(x))
    with pytest.raises(QuantizationError, match="'backbone'.*flat functional graph"):
        quantize_flat_model(model)


def test_qat_refuses_an_unsupported_layer_by_name() -> None:
    from edgeft.quantization.qat import quantize_flat_model
    from edgeft.tfcompat import keras

    k = keras()
    inputs = k.Input((8, 8, 3))
    x = k.layers.Conv2D(4, 3)(inputs)
    x = k.layers.LayerNormalization(name="odd_norm")(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    model = k.Model(inputs, k.layers.Dense(2)(x))
    with pytest.raises(QuantizationError, match="'odd_norm' \\(LayerNormalization\\).*edgeft export RUN --int8"):
        quantize_flat_model(model)
