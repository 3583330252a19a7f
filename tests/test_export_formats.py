"""edgeft export on a real-weight MobileNetV2 0.35 run (64 px): every format, parity, metadata, sizes.

The run uses the shared ImageNet weights, so the model's outputs differ from image to image and
the agreement checks can fail (with ``weights=None`` MobileNetV2's outputs collapse and every
agreement check would pass vacuously).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from export_helpers import mobilenet_run

from edgeft.export import ExportConfig, main_export
from edgeft.export.formats.edgetpu import VERDICT_FULL, VERDICT_NOT_QUANTIZED, analyze_tflite
from edgeft.export.metadata import METADATA_KEY, read_onnx_metadata, read_tflite_metadata


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run = mobilenet_run(tmp_path_factory)
    out = tmp_path_factory.mktemp("export-mnv2")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEFT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "edgeft-cache"))
        config = ExportConfig.from_flags(run, out, all_=True, calib_size=24, calib_sweep=[8], isolate=False,
                                         latency_runs=10, max_drop=100.0)
        report = main_export(config)
    return out, report


def _artifact(report: dict, fmt: str, precision: str) -> dict:
    return next(a for a in report["artifacts"] if a["format"] == fmt and a["precision"] == precision)


def test_report_lists_every_artifact_with_measurements(exported: tuple[Path, dict]) -> None:
    out, report = exported
    on_disk = json.loads((out / "export_report.json").read_text())
    assert on_disk["keras_accuracy"] == report["keras_accuracy"]
    assert (out / "export_report.md").read_text().count("| tflite |") == 4
    names = {a["path"] for a in report["artifacts"]}
    assert {"model_float32.tflite", "model_float16.tflite", "model_dynamic_range.tflite", "model_int8.tflite",
            "model_float32.onnx", "model_int8.onnx"} <= names
    for artifact in report["artifacts"]:
        assert artifact["format"] in {"tflite", "onnx", "edgetpu"}
        assert artifact["precision"] in {"float32", "float16", "dynamic_range", "int8"}
        assert artifact["source"] == ("float" if artifact["precision"] == "float32" else "ptq")
        assert (out / artifact["path"]).is_file() and artifact["size_bytes"] > 0
        # every model has its sidecar; the Edge TPU compatibility report (JSON itself) has none
        assert (out / (artifact["path"] + ".json")).is_file() is (artifact["sidecar"] is not None)
        assert (artifact["sidecar"] is None) is artifact["path"].endswith(".compatibility.json")
        if artifact["format"] != "edgetpu":
            assert 0.0 <= artifact["accuracy"] <= 1.0 and 0.0 <= artifact["agreement"] <= 1.0
            assert artifact["p50_ms"] > 0 and artifact["backend"] == artifact["format"]
    assert report["calibration"]["size"] == 24 and report["calibration"]["source"] == "train-split"
    assert report["calibration_sweep"][0]["calib_size"] == 8
    assert not (out / ".work").exists()


def test_float_artifacts_match_keras_and_int8_agrees(exported: tuple[Path, dict]) -> None:
    out, report = exported
    # each failure says every artifact's (agreement, max |difference|), and Keras's accuracy
    figures = {"keras_accuracy": report["keras_accuracy"],
               **{f"{a['format']} {a['precision']}": (a["agreement"], round(a["max_abs_diff"], 5))
                  for a in report["artifacts"] if a["format"] != "edgetpu"}}
    assert report["keras_accuracy"] >= 0.8, figures  # real features: the check below is not vacuous
    for fmt in ("tflite", "onnx"):
        float32 = _artifact(report, fmt, "float32")
        assert float32["agreement"] == 1.0 and float32["max_abs_diff"] < 1e-4, figures
        int8 = _artifact(report, fmt, "int8")
        assert int8["agreement"] >= 0.8 and int8["max_abs_diff"] < 0.5, figures
    assert _artifact(report, "tflite", "float16")["agreement"] >= 0.95, figures


def test_int8_is_small(exported: tuple[Path, dict]) -> None:
    _, report = exported
    assert _artifact(report, "tflite", "int8")["size_ratio"] <= 0.40
    assert _artifact(report, "tflite", "dynamic_range")["size_ratio"] <= 0.40
    assert _artifact(report, "tflite", "float16")["size_ratio"] <= 0.55
    assert _artifact(report, "onnx", "int8")["size_ratio"] <= 0.45


def test_metadata_is_embedded(exported: tuple[Path, dict]) -> None:
    out, report = exported
    meta = read_tflite_metadata(out / "model_int8.tflite")
    assert meta is not None and meta["labels"] == report["labels"] == ["blue", "green", "red"]
    assert meta["image_size"] == 64 and meta["preprocessing"]["channel_order"] == "RGB"
    assert meta["input"]["dtype"] == "uint8" and meta["input"]["shape"] == [1, 64, 64, 3]
    scale, zero = meta["input"]["quantization"]["scale"], meta["input"]["quantization"]["zero_point"]
    assert abs(scale - 2 / 255) < 1e-3 and abs(zero - 127.5) <= 2  # [-1, 1] input range
    assert meta["precision"] == "int8" and meta["source"] == "ptq" and meta["calibration"]["size"] == 24
    assert read_tflite_metadata(out / "model_float32.tflite")["input"]["quantization"] is None
    onnx_meta = read_onnx_metadata(out / "model_int8.onnx")
    assert onnx_meta["labels"] == report["labels"] and onnx_meta["onnx"]["quant_format"] == "QDQ"
    # uint8 weights by default: uint8 x int8 products saturate on x86 without VNNI (see OnnxWeights)
    assert onnx_meta["onnx"]["weight_type"] == "QUInt8" and onnx_meta["onnx"]["reduce_range"] is False
    sidecar = json.loads((out / "model_int8.onnx.json").read_text())
    assert sidecar["validation"]["agreement"] == _artifact(report, "onnx", "int8")["agreement"]
    assert METADATA_KEY == "edgeft.metadata"


def test_exported_tflite_runs_batch_one_static(exported: tuple[Path, dict]) -> None:
    from ai_edge_litert.interpreter import Interpreter

    out, _ = exported
    interpreter = Interpreter(model_path=str(out / "model_int8.tflite"))
    detail = interpreter.get_input_details()[0]
    assert list(detail["shape"]) == [1, 64, 64, 3] and list(detail["shape_signature"]) == [1, 64, 64, 3]
    assert detail["dtype"] == np.uint8


def test_edgetpu_report_for_int8_mobilenet(exported: tuple[Path, dict]) -> None:
    out, report = exported
    edgetpu = _artifact(report, "edgetpu", "int8")
    assert edgetpu["accuracy"] is None and edgetpu["p50_ms"] is None and edgetpu["backend"] is None
    details = json.loads((out / edgetpu["path"]).read_text())
    assert details["full_integer"] and details["static_shapes"] and details["subgraphs"] == 1
    assert details["verdict"] == VERDICT_FULL and details["predicted_ops_on_cpu"] == 0


def test_edgetpu_check_refuses_a_float_model(tmp_path: Path) -> None:
    from edgeft.tfcompat import keras, tf

    k = keras()
    inputs = k.Input((16, 16, 3))
    x = k.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = k.layers.GlobalAveragePooling2D()(x)
    model = k.Model(inputs, k.layers.Dense(2, activation="softmax")(x))
    float_bytes = tf().lite.TFLiteConverter.from_keras_model(model).convert()
    analysis = analyze_tflite(float_bytes)
    assert analysis["verdict"] == VERDICT_NOT_QUANTIZED and not analysis["full_integer"]
    assert "CONV_2D" in analysis["float_ops"]


# A real edgetpu_compiler exists for x86-64 Linux only and is not on PyPI or Debian, so these
# tests put a stand-in on PATH that writes what the real one writes (its log format is taken
# from compiler 16.0 output); the names say "mocked_compiler".
_FAKE_COMPILER = '''#!{python}
import shutil, sys
from pathlib import Path
args = sys.argv[1:]
out_dir = Path(args[args.index("-o") + 1])
model = Path(args[-1])
if {fail_not_quantized}:
    print("Edge TPU Compiler version 16.0.384591198")
    print("ERROR: Attempting to use a delegate that only supports static-sized tensors with a graph that has dynamic-sized tensors.")
    print("Model not quantized")
    sys.exit(1)
shutil.copyfile(model, out_dir / (model.stem + "_edgetpu.tflite"))
print("""Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 412 ms.

Input model: {{m}}
Input size: 609.38KiB
Output model: {{o}}
Output size: 801.12KiB
On-chip memory used for caching model parameters: 702.25KiB
On-chip memory remaining for caching model parameters: 7.07MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 68
Operation log: {{o}}.log

Model successfully compiled but not all operations are supported by the Edge TPU. A percentage of the model will instead run on the CPU, which is slower. If possible, consider updating your model to use only operations supported by the Edge TPU. For details, visit g.co/coral/model-reqs.
Number of operations that will run on Edge TPU: 67
Number of operations that will run on CPU: 1

Operator                       Count      Status

QUANTIZE                       2          Mapped to Edge TPU
CONV_2D                        35         Mapped to Edge TPU
DEPTHWISE_CONV_2D              17         Mapped to Edge TPU
ADD                            10         Mapped to Edge TPU
MEAN                           1          Mapped to Edge TPU
FULLY_CONNECTED                1          Mapped to Edge TPU
SOFTMAX                        1          Operation is otherwise supported, but not mapped due to some unspecified limitation
""".format(m=model.name, o=model.stem + "_edgetpu.tflite"))
'''


def _install_fake_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_not_quantized: bool) -> None:
    import os
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "edgetpu_compiler"
    script.write_text(_FAKE_COMPILER.format(python=sys.executable, fail_not_quantized=fail_not_quantized))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def _edgetpu_job(exported: tuple[Path, dict], tmp_path: Path) -> object:
    from edgeft.export.formats import ConversionJob

    out, report = exported
    work = tmp_path / "work"
    work.mkdir()
    return ConversionJob(run_dir=str(out), format="edgetpu", precision="int8", source="ptq",
                         output=str(tmp_path / "model_int8_edgetpu.tflite"), work_dir=str(work), calibration=None,
                         io_dtype="uint8", opset=17, onnx_calib_method="minmax",
                         metadata={"labels": report["labels"]}, int8_tflite=str(out / "model_int8.tflite"))


def test_edgetpu_compiler_path_mocked_compiler(exported: tuple[Path, dict], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeft.export.formats.edgetpu import COMPILED_FILE, LOG_FILE, EdgeTpuExporter
    from edgeft.export.report import markdown

    _install_fake_compiler(tmp_path, monkeypatch, fail_not_quantized=False)
    exporter = EdgeTpuExporter()
    assert exporter.filename(exporter.precisions[0]) == COMPILED_FILE
    result = exporter.convert(_edgetpu_job(exported, tmp_path), None)  # type: ignore[arg-type]
    compiled = tmp_path / COMPILED_FILE
    assert compiled.read_bytes() == (exported[0] / "model_int8.tflite").read_bytes()
    assert "Model compiled successfully" in (tmp_path / LOG_FILE).read_text()
    details = result["edgetpu"]
    parsed = details["compiler_report"]
    assert (parsed["ops_on_edgetpu"], parsed["ops_on_cpu"], parsed["operations_total"]) == (67, 1, 68)
    assert parsed["compiler_version"] == "16.0.384591198" and parsed["cpu_operators"] == ["SOFTMAX"]
    assert details["verdict"] == "compiled, 1 of 68 operations on the CPU"
    rendered = markdown({"backbone": "mobilenet_v2", "image_size": 64, "run_kind": "float", "threads": 1,
                         "keras_accuracy": 1.0, "val_samples": 1, "artifacts": [
        {"format": "edgetpu", "precision": "int8", "source": "ptq", "path": COMPILED_FILE, "size_bytes": 1,
         "accuracy": None, "agreement": None, "max_abs_diff": None, "p50_ms": None, "passed": None,
         "max_drop_pts": 2.0, "details": details}]})
    assert "67 of 68 ops on the Edge TPU, compiler 16.0.384591198" in rendered


def test_edgetpu_compiler_not_quantized_is_one_line_mocked_compiler(exported: tuple[Path, dict], tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeft.errors import ExportError
    from edgeft.export.formats.edgetpu import LOG_FILE, EdgeTpuExporter

    _install_fake_compiler(tmp_path, monkeypatch, fail_not_quantized=True)
    with pytest.raises(ExportError, match=r"model not quantized \(exit 1\).*full-integer") as caught:
        EdgeTpuExporter().convert(_edgetpu_job(exported, tmp_path), None)  # type: ignore[arg-type]
    assert "\n" not in caught.value.message
    assert "Model not quantized" in (tmp_path / LOG_FILE).read_text()
    assert not (tmp_path / "model_int8_edgetpu.tflite").exists()


def test_compiler_log_without_summary_lines_counts_from_the_table() -> None:
    from edgeft.export.formats.edgetpu import parse_compiler_log

    log = ("Edge TPU Compiler version 16.0.384591198\n\nModel compiled successfully in 900 ms.\n\n"
           "Number of Edge TPU subgraphs: 1\nTotal number of operations: 64\n\n"
           "Operator                       Count      Status\n\n"
           "CONV_2D                        35         Mapped to Edge TPU\n"
           "DEPTHWISE_CONV_2D              17         Mapped to Edge TPU\n"
           "ADD                            10         Mapped to Edge TPU\n"
           "QUANTIZE                       1          Mapped to Edge TPU\n"
           "QUANTIZE                       1          Operation is otherwise supported, but not mapped due to some "
           "unspecified limitation\n")
    parsed = parse_compiler_log(log)
    assert parsed["compiled"] and not parsed["not_quantized"]
    assert (parsed["ops_on_edgetpu"], parsed["ops_on_cpu"]) == (63, 1)
    assert parsed["cpu_operators"] == ["QUANTIZE"] and len(parsed["operators"]) == 5
