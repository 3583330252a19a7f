"""QDQ ONNX from a QAT model that keeps the QAT model's own activation ranges."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

SIZE = 24


def _pre(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float32) / 127.5 - 1.0


@pytest.fixture(scope="module")
def models() -> tuple[Any, Any, np.ndarray]:
    """A tiny float model with real BN statistics, its tfmot QAT version with ranges learned on data, and the data."""
    from edgeft.quantization.qat import quantize_flat_model
    from edgeft.tfcompat import keras, tf

    k = keras()
    tf().random.set_seed(0)
    inputs = k.Input((SIZE, SIZE, 3), name="image")
    x = k.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="c1")(inputs)
    x = k.layers.BatchNormalization(name="c1_bn")(x)
    x = k.layers.ReLU(6.0, name="c1_relu")(x)
    x = k.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = k.layers.BatchNormalization(name="dw_bn")(x)
    x = k.layers.ReLU(6.0, name="dw_relu")(x)
    x = k.layers.Conv2D(8, 1, use_bias=False, name="proj")(x)
    x = k.layers.BatchNormalization(name="proj_bn")(x)
    x = k.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = k.layers.Dense(4, activation="softmax", name="predictions")(x)
    model = k.Model(inputs, outputs, name="tiny")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (48, SIZE, SIZE, 3), dtype=np.uint8)
    # real BN statistics and a head that separates the data, so agreement is not vacuous
    for name in ("c1_bn", "dw_bn", "proj_bn"):
        layer = model.get_layer(name)
        probe = k.Model(model.input, layer.input)
        values = np.asarray(probe(_pre(pixels), training=False)).reshape(-1, layer.input.shape[-1])
        gamma, beta = layer.get_weights()[:2]
        layer.set_weights([gamma, beta, values.mean(0), values.var(0)])
    features = np.asarray(k.Model(model.input, model.get_layer("pool").output)(_pre(pixels)))
    weights = rng.normal(size=(features.shape[1], 4)).astype(np.float32) * 4.0
    model.get_layer("predictions").set_weights([weights, -(features.mean(0) @ weights)])
    qat = quantize_flat_model(model)
    # what many QAT steps converge to: each range set to the float activations' own range
    input_quantizer = next(layer for layer in qat.layers if type(layer).__name__ == "QuantizeLayer")
    for variable in input_quantizer.weights:
        if "_min" in variable.name or "_max" in variable.name:
            variable.assign(-1.0 if "_min" in variable.name else 1.0)
    for wrapper in qat.layers:
        inner = getattr(wrapper, "layer", None)
        if inner is None:
            continue
        variables = {w.name.split("/")[-1].split(":")[0]: w for w in wrapper.weights}
        for prefix in ("output", "post_activation", "pre_activation"):
            if f"{prefix}_min" in variables:
                if prefix == "pre_activation":  # the logits before the softmax
                    logits = features @ weights - features.mean(0) @ weights
                    low, high = float(logits.min()), float(logits.max())
                else:
                    values = np.asarray(k.Model(model.input, model.get_layer(inner.name).output)(_pre(pixels)))
                    low, high = min(float(values.min()), 0.0), float(values.max())
                variables[f"{prefix}_min"].assign(low)
                variables[f"{prefix}_max"].assign(high)
    return model, qat, pixels


def test_ranges_cover_every_quantized_activation(models: tuple[Any, Any, np.ndarray]) -> None:
    from edgeft.export.onnx_qat import INPUT_RANGE, qat_activation_ranges

    _, qat, _ = models
    ranges = {(r.layer, r.where): r for r in qat_activation_ranges(qat)}
    for key in ((INPUT_RANGE, "output"), ("c1_relu", "output"), ("dw_relu", "output"), ("proj_bn", "output"),
                ("predictions", "pre_activation")):
        assert key in ranges, sorted(ranges)
        assert ranges[key].minimum < ranges[key].maximum
    assert ranges[("c1_relu", "output")].maximum <= 6.0 + 1e-5


def test_qdq_onnx_carries_the_qat_scales(models: tuple[Any, Any, np.ndarray], tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    from edgeft.export.onnx_qat import qat_activation_ranges, qat_qdq_onnx
    from reference_runners import onnx_runner

    float_model, qat, pixels = models
    out = tmp_path / "qat.onnx"
    info = qat_qdq_onnx(qat, float_model, SIZE, pixels[:16], _pre, out)
    assert info["qat_ranges_applied"] >= 5
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    relu = next(r for r in qat_activation_ranges(qat) if r.layer == "dw_relu")
    scales = [float(inits[n.input[1]]) for n in proto.graph.node
              if n.op_type == "QuantizeLinear" and n.input[0] == "tiny/dw_relu/Relu6:0"]
    assert scales and scales[0] == pytest.approx((relu.maximum - relu.minimum) / 255.0, rel=1e-4)

    # the QDQ graph computes what the QAT model computes: its kernels on their trained grids, its activations
    # on their ranges (max |difference| 0.019-0.040 measured; against the float copy, which has no activation
    # rounding, 0.13-0.22)
    reference = np.asarray(qat(_pre(pixels), training=False))
    runner = onnx_runner(out)
    outputs = np.concatenate([runner.predict(_pre(pixels[i : i + 1])) for i in range(len(pixels))])
    assert len(set(reference.argmax(1))) > 1  # not a constant model
    assert np.mean(outputs.argmax(1) == reference.argmax(1)) >= 0.9
    assert np.max(np.abs(outputs - reference)) < 0.1


def test_float_model_gets_the_weights_of_a_saved_qat_model(models: tuple[Any, Any, np.ndarray],
                                                           tmp_path: Path) -> None:
    from edgeft.export.onnx_qat import float_model_with_qat_weights
    from edgeft.tfcompat import load_keras_model

    float_model, qat, pixels = models
    qat.save(str(tmp_path / "qat.h5"), save_format="h5")
    loaded = load_keras_model(tmp_path / "qat.h5")
    copy = float_model_with_qat_weights(loaded, float_model)
    np.testing.assert_allclose(np.asarray(copy(_pre(pixels[:4]))),
                               np.asarray(float_model_with_qat_weights(qat, float_model)(_pre(pixels[:4]))), atol=1e-6)


def test_float_model_gets_the_qat_weights(models: tuple[Any, Any, np.ndarray]) -> None:
    from edgeft.errors import QuantizationError
    from edgeft.export.onnx_qat import float_model_with_qat_weights, qat_weight_grids

    float_model, qat, _ = models
    kernel = next(w for w in qat.get_layer("quant_c1").weights if w.name.startswith("c1/kernel"))
    original = np.asarray(kernel).copy()
    kernel.assign(kernel * 1.01)
    copy = float_model_with_qat_weights(qat, float_model)
    grid = qat_weight_grids(qat)["c1"]
    # the copy computes with the kernel as the QAT model does: the trained one, on its grid
    np.testing.assert_allclose(copy.get_layer("c1").get_weights()[0], grid.quantized)
    levels = grid.quantized / grid.steps
    np.testing.assert_allclose(levels, np.rint(levels), atol=1e-3)
    inside = np.abs(np.asarray(kernel)) <= 127 * grid.steps  # clipped weights move further
    assert np.all(np.abs(grid.quantized - np.asarray(kernel))[inside] <= (0.5 + 1e-3) * np.broadcast_to(grid.steps, kernel.shape)[inside])
    np.testing.assert_allclose(copy.get_layer("predictions").get_weights()[1],
                               float_model.get_layer("predictions").get_weights()[1])
    assert not np.allclose(copy.get_layer("c1").get_weights()[0], float_model.get_layer("c1").get_weights()[0])
    kernel.assign(original)
    with pytest.raises(QuantizationError):
        float_model_with_qat_weights(float_model, float_model)


def test_qdq_onnx_keeps_the_trained_weight_grids(models: tuple[Any, Any, np.ndarray], tmp_path: Path) -> None:
    """Every int8 kernel dequantizes to the folded float kernel exactly: no second rounding.

    tfmot quantizes the depthwise and Dense kernels per tensor and before BatchNorm folding;
    onnxruntime's own per-channel scales would round those weights again.
    """
    import onnx
    from onnx import numpy_helper

    from edgeft.export.onnx_qat import qat_qdq_onnx

    float_model, qat, pixels = models
    info = qat_qdq_onnx(qat, float_model, SIZE, pixels[:16], _pre, tmp_path / "qat.onnx", float_out=tmp_path / "float.onnx")
    assert info["qat_weight_grids"] == 4  # c1, dw, proj, predictions
    folded = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "float.onnx")).graph.initializer}
    proto = onnx.load(str(tmp_path / "qat.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    checked = 0
    for node in proto.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits or inits[node.input[0]].dtype == np.int32:
            continue
        source = node.input[0].removesuffix("_quantized")
        if source not in folded:
            continue
        values, scale, zero = (inits[name].astype(np.float64) for name in node.input[:3])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * values.ndim
        shape[axis] = -1
        dequantized = (values - zero.reshape(shape)) * scale.reshape(shape)
        np.testing.assert_allclose(dequantized, folded[source], rtol=1e-5, atol=1e-7, err_msg=source)
        checked += 1
    assert checked == 4


def test_qdq_onnx_keeps_a_silent_channels_bias(tmp_path: Path) -> None:
    """A channel whose trained kernel is all but zero outputs its bias; at the kernel's own step that
    bias would not fit int32 and be clipped (uint8 weights), so its scale grows until it fits."""
    from edgeft.export.onnx_qat import qat_qdq_onnx
    from edgeft.quantization.qat import quantize_flat_model
    from edgeft.tfcompat import keras
    from reference_runners import onnx_runner

    k = keras()
    inputs = k.Input((SIZE, SIZE, 3), name="image")
    x = k.layers.Conv2D(4, 3, use_bias=False, name="c1")(inputs)
    x = k.layers.BatchNormalization(name="c1_bn")(x)
    x = k.layers.ReLU(6.0, name="c1_relu")(x)
    x = k.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = k.layers.Dense(2, activation="softmax", name="predictions")(x)
    model = k.Model(inputs, outputs, name="silent")
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(3, 3, 3, 4)).astype(np.float32) * 0.3
    kernel[..., 0] *= 1e-8  # the silent channel
    model.get_layer("c1").set_weights([kernel])
    model.get_layer("c1_bn").set_weights([np.ones(4, np.float32), np.array([2.0, 0.5, 0.5, 0.5], np.float32),
                                          np.zeros(4, np.float32), np.ones(4, np.float32)])
    model.get_layer("predictions").set_weights([np.array([[4.0, -4.0], [1, -1], [-1, 1], [0.5, -0.5]], np.float32),
                                                np.zeros(2, np.float32)])
    pixels = rng.integers(0, 256, (8, SIZE, SIZE, 3), dtype=np.uint8)
    qat = quantize_flat_model(model)
    pooled = np.asarray(k.Model(model.input, model.get_layer("pool").output)(_pre(pixels)))
    for wrapper in qat.layers:
        variables = {w.name.split("/")[-1].split(":")[0]: w for w in wrapper.weights}
        if "quantize_layer" in wrapper.name:
            for name, variable in variables.items():
                if name.endswith(("_min", "_max")):
                    variable.assign(-1.0 if name.endswith("_min") else 1.0)
        elif "output_max" in variables:
            variables["output_min"].assign(0.0)
            variables["output_max"].assign(6.0)
        elif "pre_activation_max" in variables:
            logits = pooled @ model.get_layer("predictions").get_weights()[0]
            variables["pre_activation_min"].assign(float(logits.min()) - 1.0)
            variables["pre_activation_max"].assign(float(logits.max()) + 1.0)
    qat(_pre(pixels[:1]), training=True)  # the kernels' ranges come from a training step
    out = tmp_path / "silent.onnx"
    qat_qdq_onnx(qat, model, SIZE, pixels, _pre, out, weight_type="uint8")
    reference = np.asarray(qat(_pre(pixels), training=False))
    runner = onnx_runner(out)
    outputs = np.concatenate([runner.predict(_pre(pixels[i : i + 1])) for i in range(len(pixels))])
    # the silent channel adds 2.0 * 4.0 to the first logit; clipped, it would add about nothing
    np.testing.assert_allclose(outputs, reference, atol=0.05)


def test_batchnorm_behind_a_1x1_feature_map_folds_into_its_convolution() -> None:
    """tf2onnx leaves a BatchNormalization unfolded where a 1x1 feature map's layout change became a
    no-op Reshape; unfolded, int8 rounds the convolution's output before BatchNorm and quantizes the
    BatchNorm's scale as a weight. ``keras_to_onnx`` folds it as tf2onnx does elsewhere."""
    import onnxruntime as ort
    import tf2onnx

    from edgeft.export.onnx_tools import keras_to_onnx
    from edgeft.tfcompat import keras, tf

    k = keras()
    inputs = k.Input((8, 8, 3), name="image")
    x = k.layers.Conv2D(8, 3, strides=4, padding="same", use_bias=False, name="c1")(inputs)  # 2x2
    x = k.layers.BatchNormalization(name="c1_bn")(x)
    x = k.layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False, name="dw")(x)  # 1x1
    x = k.layers.BatchNormalization(name="dw_bn")(x)
    x = k.layers.Activation("swish", name="dw_swish")(x)
    x = k.layers.Conv2D(6, 1, name="proj")(x)
    x = k.layers.BatchNormalization(name="proj_bn")(x)
    x = k.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = k.layers.Dense(3, activation="softmax", name="predictions")(x)
    model = k.Model(inputs, outputs, name="tiny")
    rng = np.random.default_rng(0)
    for name in ("c1_bn", "dw_bn", "proj_bn"):
        size = model.get_layer(name).get_weights()[0].size
        model.get_layer(name).set_weights([rng.uniform(0.5, 2.0, size), rng.normal(size=size),
                                           rng.normal(size=size), rng.uniform(0.5, 2.0, size)])
    spec = (tf().TensorSpec((None, 8, 8, 3), tf().float32, name="image"),)
    raw, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    assert sum(node.op_type == "BatchNormalization" for node in raw.graph.node) == 2  # dw_bn and proj_bn

    proto = keras_to_onnx(model, 8, 17)
    assert [node.op_type for node in proto.graph.node].count("BatchNormalization") == 0
    convs = {node.name.split("/")[1]: node for node in proto.graph.node if node.op_type == "Conv"}
    assert convs["dw"].output[0].startswith("tiny/dw_bn/")  # the layer's output, where its QAT range is found
    images = rng.normal(size=(4, 8, 8, 3)).astype(np.float32)
    onnx_outputs = ort.InferenceSession(proto.SerializeToString()).run(None, {"image": images})[0]
    np.testing.assert_allclose(onnx_outputs, np.asarray(model(images, training=False)), atol=1e-5)
