"""Per-layer quantization error report (TFLite QuantizationDebugger, onnxruntime qdq_loss_debug) and keep-float."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeft.export import layer_errors as le

SIZE = 32


def _preprocess(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float32) / 127.5 - 1.0


@pytest.fixture(scope="module")
def tiny_model() -> Any:
    """Conv-BN -> depthwise-BN-ReLU6 -> pool -> dense, with one first-layer channel 50x larger than the rest."""
    from edgeft.tfcompat import keras, tf

    k = keras()
    tf().random.set_seed(0)
    inputs = k.Input((SIZE, SIZE, 3), name="image")
    x = k.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = k.layers.BatchNormalization(name="conv_bn")(x)
    x = k.layers.Activation("linear", name="wide")(x)
    x = k.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = k.layers.BatchNormalization(name="dw_bn")(x)
    x = k.layers.ReLU(6.0, name="dw_relu")(x)
    x = k.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = k.layers.Dense(3, activation="softmax", name="predictions")(x)
    model = k.Model(inputs, outputs)
    kernel = model.get_layer("conv").get_weights()[0]
    kernel[..., 0] *= 50.0
    model.get_layer("conv").set_weights([kernel])
    return model


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (24, SIZE, SIZE, 3), dtype=np.uint8)


def test_parse_statistics_ranks_rmse_per_scale() -> None:
    text = ("op_name,tensor_idx,num_elements,stddev,mean_error,max_abs_error,mean_squared_error,scale,zero_point,"
            "tensor_name\n"
            "CONV_2D,5,100,0.1,0.0,0.5,0.0004,0.01,-128,a\n"
            "DEPTHWISE_CONV_2D,7,100,0.1,0.0,2.0,0.01,0.01,-128,b\n"
            "MEAN,9,10,0.1,0.0,0.1,0.0,0.0,0,c\n")
    rows = le.parse_tflite_layer_statistics(text)
    assert [r.name for r in rows] == ["a", "b", "c"]
    assert rows[0].value == pytest.approx(2.0) and rows[1].value == pytest.approx(10.0)
    assert math.isnan(rows[2].value)  # no scale: not ranked above real layers
    ranked = le._ranked(rows, le.ErrorMetric.RMSE_PER_SCALE)
    assert [r.name for r in ranked] == ["b", "a", "c"]


def test_advice_never_sends_a_qat_run_to_qat() -> None:
    layer = le.LayerError("m/block_1_relu/Relu6;m/block_1/Conv2D", "CONV_2D", 3.0, le.ErrorMetric.RMSE_PER_SCALE, 0.02)
    report = le.LayerErrorReport("model_int8.onnx", "onnx", le.ErrorMetric.RMSE_PER_SCALE, "x", 4, (layer,))
    qat = le.advice(report, "qat")
    assert "qat" not in qat.replace("QAT model", "").replace("QAT ranges", "").replace("train QAT", "").lower()
    assert "quantization-aware" not in qat and "--keep-float" not in qat
    assert "edgeft qat" in le.advice(report, "ptq")
    assert "--keep-float auto" in le.advice(report, "ptq") and "--keep-float block_1_relu" in le.advice(report, "ptq")
    assert "--keep-float auto" not in le.advice(report, "ptq", keep_float=True)
    assert "percentile" in le.advice(report, "ptq")  # an ONNX artifact
    assert le.summarize(report, "ptq")["layer_errors"] == "layer_errors_model_int8.onnx.json"
    assert le.keras_layers(layer.name) == ["block_1_relu", "block_1"]
    assert "block_1_relu 3.00" in le.summary_line(report)
    assert "--keep-float" not in le.advice(report, "ptq", edgetpu=True)


def test_tflite_layer_errors_find_the_wide_layer(tiny_model: Any, pixels: np.ndarray, tmp_path: Path) -> None:
    report = le.tflite_layer_errors(tiny_model, SIZE, pixels, pixels[:8], _preprocess)
    assert report.format == "tflite" and report.samples == 8
    assert len(report.layers) >= 3
    values = [layer.value for layer in report.layers if math.isfinite(layer.value)]
    assert values == sorted(values, reverse=True)
    names = " ".join(layer.name for layer in report.layers)
    assert "/dw" in names and "/predictions" in names
    # per-layer rounding alone gives RMSE/scale ~ 1/sqrt(12) = 0.29; no layer can do much better than that
    assert all(v > 0.1 for v in values) and values[0] >= 0.25
    path = le.write_layer_errors(report, tmp_path)
    data = json.loads(path.read_text("utf-8"))
    assert data["schema"] == le.SCHEMA and data["metric"] == "rmse_per_scale"
    assert len(data["layers"]) == len(report.layers)
    assert not list(tmp_path.glob("*.tmp*"))
    summary = le.summarize(report, "ptq")
    assert len(summary["top_layers"]) == min(5, len(report.layers))
    assert "worst layers (RMSE/scale)" in le.summary_line(report)


def test_keep_float_leaves_the_named_layer_in_float(tiny_model: Any, pixels: np.ndarray) -> None:
    from ai_edge_litert.interpreter import Interpreter

    report = le.tflite_layer_errors(tiny_model, SIZE, pixels, pixels[:4], _preprocess)
    # the worst layer past the first convolution: a float first layer would (rightly) leave the input float
    name = next(layer.name for layer in report.layers if "dw" in layer.name)
    data = le.tflite_int8_keep_float(tiny_model, SIZE, pixels, _preprocess, [name])
    interpreter = Interpreter(model_content=data)
    interpreter.allocate_tensors()
    dtypes = {t["name"]: np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()}
    assert dtypes[name] == np.float32
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8
    int8_ops = sum(1 for d in dtypes.values() if d == np.int8)
    assert int8_ops > 0  # the rest stays integer
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], pixels[:1])
    interpreter.invoke()
    assert interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).shape == (1, 3)


def test_onnx_layer_errors_rank_by_sqnr(tiny_model: Any, pixels: np.ndarray, tmp_path: Path) -> None:
    import onnx

    from edgeft.export.config import OnnxWeights
    from edgeft.export.formats.onnx import quantize_onnx_static
    from edgeft.export.onnx_tools import keras_to_onnx
    from edgeft.preprocessing import Preprocessing

    float_path = tmp_path / "float.onnx"
    onnx.save(keras_to_onnx(tiny_model, SIZE, 17), str(float_path))
    qdq = tmp_path / "int8.onnx"
    quantize_onnx_static(float_path, qdq, pixels, Preprocessing.uniform(1 / 127.5, -1.0), "minmax", OnnxWeights.UINT8)
    report = le.onnx_layer_errors(qdq, pixels[:6], _preprocess, float_path=float_path)
    assert report.format == "onnx" and report.metric == le.ErrorMetric.SQNR_DB
    values = [layer.value for layer in report.layers]
    assert values == sorted(values) and len(values) >= 3
    assert all("xmodel_sqnr_db" in layer.extra for layer in report.layers)
    nodes = le.onnx_nodes_for_tensors(float_path, [report.layers[0].name])
    assert all(isinstance(n, str) for n in nodes)
    assert "SQNR dB" in le.summary_line(report)


def test_keep_float_with_an_unknown_layer_name_is_one_line_naming_the_layers(tiny_model: Any,
                                                                             pixels: np.ndarray) -> None:
    from edgeft.errors import UsageError

    expected = r"^--keep-float: no quantized layer named block_99_relu; layers include "
    with pytest.raises(UsageError, match=expected) as info:
        le.resolve_keep_float(tiny_model, SIZE, pixels, _preprocess, ["block_99_relu"])
    assert "\n" not in str(info.value) and "dw" in str(info.value)
