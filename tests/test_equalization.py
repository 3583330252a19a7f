"""Cross-layer equalisation, bias correction and adaptive weight rounding: numpy algorithms and the tf-keras side."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgeft.quantization import equalization as eq

SIZE = 24


def test_scales_equalise_ranges_without_a_clip() -> None:
    r1 = np.array([8.0, 0.5, 1.0])
    r2 = np.array([0.5, 8.0, 1.0])
    s = eq.equalization_scales(r1, r2, limit=None)
    np.testing.assert_allclose(r1 / s, r2 * s, rtol=1e-6)
    np.testing.assert_allclose(r1 / s, [2.0, 2.0, 1.0], rtol=1e-6)


def test_scales_respect_relu6() -> None:
    r1 = np.array([8.0, 0.5, 8.0])
    r2 = np.array([0.5, 8.0, 0.5])
    peaks = np.array([7.0, 1.0, 3.0])  # channel 0 reaches the clip; 1 would be pushed over it by s = 0.25
    s = eq.equalization_scales(r1, r2, peaks, limit=6.0)
    assert s[0] == 1.0
    assert peaks[1] / s[1] <= 6.0 + 1e-6 and s[1] < 1.0
    assert s[2] == pytest.approx(4.0)
    with pytest.raises(ValueError):
        eq.equalization_scales(r1, r2, None, limit=6.0)


def test_per_channel_quantization_matches_tflite_rule() -> None:
    kernel = np.random.default_rng(0).normal(size=(3, 3, 4, 5))
    q = eq.quantize_per_channel(kernel, depthwise=False)
    step = np.max(np.abs(kernel), axis=(0, 1, 2)) / 127
    assert np.all(np.abs(q - kernel) <= step / 2 + 1e-12)
    assert len(np.unique(np.round(q[..., 0] / step[0]))) <= 255


def test_bias_correction_removes_the_expected_shift() -> None:
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(1, 1, 16, 4)) * np.array([1.0, 10.0, 0.1, 3.0])
    x = rng.uniform(0, 6, size=(5000, 16))
    exact = x @ kernel[0, 0]
    quantized = x @ eq.quantize_per_channel(kernel, False)[0, 0]
    delta = eq.bias_correction(kernel, x.mean(axis=0), False)
    before = np.abs((quantized - exact).mean(axis=0))
    after = np.abs((quantized + delta - exact).mean(axis=0))
    assert np.all(after < before * 1e-3 + 1e-9)
    dw = rng.normal(size=(3, 3, 6, 1))
    assert eq.bias_correction(dw, np.ones(6), True).shape == (6,)


@pytest.fixture(scope="module")
def tiny_model() -> Any:
    """conv -> BN -> ReLU6 -> pad -> depthwise -> BN -> ReLU6 -> 1x1 conv -> BN -> pool -> dense, with real BN stats."""
    from edgeft.tfcompat import keras, tf

    k = keras()
    tf().random.set_seed(1)
    inputs = k.Input((SIZE, SIZE, 3))
    x = k.layers.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(inputs)
    x = k.layers.BatchNormalization(name="c1_bn")(x)
    x = k.layers.ReLU(6.0, name="c1_relu")(x)
    x = k.layers.ZeroPadding2D(1, name="pad")(x)
    x = k.layers.DepthwiseConv2D(3, use_bias=False, name="dw")(x)
    x = k.layers.BatchNormalization(name="dw_bn")(x)
    x = k.layers.ReLU(6.0, name="dw_relu")(x)
    x = k.layers.Conv2D(6, 1, use_bias=False, name="proj")(x)
    x = k.layers.BatchNormalization(name="proj_bn")(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    outputs = k.layers.Dense(3, activation="softmax")(x)
    model = k.Model(inputs, outputs)
    rng = np.random.default_rng(2)
    for name, channels in (("c1_bn", 8), ("dw_bn", 8), ("proj_bn", 6)):
        # channel ranges that differ by orders of magnitude, as in MobileNetV2's depthwise layers
        gamma = np.exp(rng.uniform(-4, 1, channels)).astype(np.float32)
        beta = rng.normal(0, 0.2, channels).astype(np.float32)
        model.get_layer(name).set_weights([gamma, beta, np.zeros(channels, np.float32),
                                           np.ones(channels, np.float32)])
    return model


def _pre(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float32) / 127.5 - 1.0


def test_keras_equalisation_keeps_outputs_and_balances_ranges(tiny_model: Any) -> None:
    from edgeft.quantization.keras_equalization import equalize_keras_model, find_pairs

    pairs = find_pairs(tiny_model)
    assert [(p.first, p.second) for p in pairs] == [("c1", "dw"), ("dw", "proj")]
    pixels = np.random.default_rng(3).integers(0, 256, (16, SIZE, SIZE, 3), dtype=np.uint8)
    new, result = equalize_keras_model(tiny_model, pixels, _pre, correct_bias=False)
    assert result.pairs == 2 and result.scaled_channels > 0
    before = np.asarray(tiny_model(_pre(pixels), training=False))
    after = np.asarray(new(_pre(pixels), training=False))
    np.testing.assert_allclose(after, before, atol=1e-5)

    def spread(model: Any) -> float:
        bn = eq.BatchNorm(*(np.asarray(w, np.float64) for w in model.get_layer("dw_bn").get_weights()),
                          epsilon=1e-3)
        ranges = eq.output_channel_ranges(eq.fold(np.asarray(model.get_layer("dw").get_weights()[0]), bn, True), True)
        return float(ranges.max() / ranges.min())

    assert spread(new) < spread(tiny_model)
    assert tiny_model.get_layer("c1_bn").get_weights()[0] is not new.get_layer("c1_bn").get_weights()[0]


def test_keras_bias_correction_shifts_only_bn_offsets(tiny_model: Any) -> None:
    from edgeft.quantization.keras_equalization import equalize_keras_model

    pixels = np.random.default_rng(4).integers(0, 256, (8, SIZE, SIZE, 3), dtype=np.uint8)
    new, result = equalize_keras_model(tiny_model, pixels, _pre, equalize=False)
    assert result.corrected_layers == 3 and result.pairs == 0
    for name in ("c1_bn", "dw_bn", "proj_bn"):
        old_w, new_w = tiny_model.get_layer(name).get_weights(), new.get_layer(name).get_weights()
        np.testing.assert_array_equal(old_w[0], new_w[0])
        assert not np.array_equal(old_w[1], new_w[1])
    np.testing.assert_array_equal(tiny_model.get_layer("dw").get_weights()[0], new.get_layer("dw").get_weights()[0])


def _grid_levels(values: np.ndarray, grid: Any) -> np.ndarray:
    from edgeft.quantization.rounding import channel_grid

    scale = channel_grid(values, grid)[0]
    return values / scale[:, None]


@pytest.mark.parametrize("grid", ["int8_symmetric", "uint8_symmetric"])
def test_adaptive_rounding_lowers_each_channels_output_error_on_its_grid(grid: str) -> None:
    from edgeft.quantization.rounding import WeightGrid, layer_error, nearest, round_channels

    grid_ = WeightGrid(grid)
    rng = np.random.default_rng(5)
    weights = rng.normal(0, 1, (12, 9)) * np.exp(rng.uniform(-3, 1, (12, 1)))
    patches = rng.normal(0.5, 1, (12, 400, 9)) + rng.normal(0, 1, (12, 400, 1))  # correlated taps, nonzero mean
    moments = np.einsum("cpn,cpm->cnm", patches, patches) / 400
    values, flipped = round_channels(weights, moments, grid_)
    converted = nearest(values, grid_)  # what the converter makes of them (it rounds the extremes itself)
    assert flipped > 0
    for channel in range(len(weights)):  # never worse than nearest, channel by channel
        rows = slice(channel, channel + 1)
        assert layer_error(weights[rows], converted[rows], moments[rows]) <= \
            layer_error(weights[rows], nearest(weights[rows], grid_), moments[rows]) + 1e-12
    assert layer_error(weights, converted, moments) < 0.8 * layer_error(weights, nearest(weights, grid_), moments)
    levels = _grid_levels(values, grid_)
    extreme = np.abs(weights) == np.abs(weights).max(axis=1, keepdims=True)
    np.testing.assert_allclose(levels[~extreme], np.round(levels[~extreme]), atol=1e-9)  # on the grid
    np.testing.assert_array_equal(values[extreme], weights[extreme])  # the extremes keep the scale
    shared = np.cov(rng.normal(0, 1, (27, 500))) + 0.3
    values, _ = round_channels(weights[:, :1].repeat(27, 1) * rng.normal(0, 1, (12, 27)), shared, grid_)
    assert values.shape == (12, 27)


def test_tflite_converter_keeps_the_adaptive_rounding(tiny_model: Any) -> None:
    """The converter's int8 weights are exactly the steps adaptive rounding chose (BN folded as it folds it)."""
    from edgeft.export.layer_errors import int8_converter
    from edgeft.quantization.keras_equalization import _bn
    from edgeft.quantization.rounding import WeightGrid, adaptive_rounding
    from edgeft.targets import import_tflite

    pixels = np.random.default_rng(6).integers(0, 256, (12, SIZE, SIZE, 3), dtype=np.uint8)
    new, result = adaptive_rounding(tiny_model, pixels, _pre, WeightGrid.INT8_SYMMETRIC)
    assert result.layers == 3 and result.flipped > 0 and result.error_ratio < 1.0
    interpreter = import_tflite()[0](model_content=bytes(int8_converter(new, SIZE, pixels, _pre).convert()))
    interpreter.allocate_tensors()
    op = next(op for op in interpreter._get_ops_details() if op["op_name"] == "DEPTHWISE_CONV_2D")
    detail = interpreter._get_tensor_details(int(op["inputs"][1]), subgraph_index=0)
    stored = interpreter.get_tensor(int(op["inputs"][1]))[0].reshape(-1, 8).T.astype(np.float64)  # (C, taps)
    scales = detail["quantization_parameters"]["scales"]
    folded = eq.fold(np.asarray(new.get_layer("dw").get_weights()[0], np.float64), _bn(new.get_layer("dw_bn")), True)
    chosen = folded[..., 0].reshape(-1, 8).T
    np.testing.assert_allclose(stored * scales[:, None], chosen, rtol=1e-4, atol=1e-7)
    original = eq.fold(np.asarray(tiny_model.get_layer("dw").get_weights()[0], np.float64),
                       _bn(tiny_model.get_layer("dw_bn")), True)[..., 0].reshape(-1, 8).T
    assert np.any(stored != np.round(original / scales[:, None]))  # not what nearest rounding gives


def test_qat_quantizers_keep_the_adaptive_rounding_on_tfmots_grids(tiny_model: Any) -> None:
    """QAT starts from adaptively rounded weights: tfmot's fake quantizers (Conv2D kernels per channel, the
    depthwise kernel per tensor, both before BatchNorm folding) give back exactly the chosen steps. On the
    converter's grids (depthwise per channel, BatchNorm folded) tfmot would round the depthwise kernel again."""
    from edgeft.export.onnx_qat import qat_weight_grids
    from edgeft.quantization.qat import quantize_flat_model
    from edgeft.quantization.rounding import adaptive_rounding

    pixels = np.random.default_rng(6).integers(0, 256, (12, SIZE, SIZE, 3), dtype=np.uint8)

    def fake_quantized(model: Any) -> dict[str, np.ndarray]:
        qat = quantize_flat_model(model)
        qat(_pre(pixels[:2]), training=True)  # the kernels' ranges come from a training step
        return {name: grid.quantized for name, grid in qat_weight_grids(qat).items()}

    rounded, result = adaptive_rounding(tiny_model, pixels, _pre, qat_grids=True)
    assert result.layers == 3 and result.flipped > 0 and result.error_ratio < 1.0
    quantized = fake_quantized(rounded)
    for name in ("c1", "dw", "proj"):
        chosen = rounded.get_layer(name).get_weights()[0]
        np.testing.assert_allclose(quantized[name], chosen, rtol=0, atol=1e-5 * np.abs(chosen).max(), err_msg=name)
    original = np.asarray(tiny_model.get_layer("dw").get_weights()[0], np.float64)
    step = np.abs(original).max() / 127.0  # one step for the whole depthwise kernel
    assert np.any(np.rint(rounded.get_layer("dw").get_weights()[0] / step) != np.rint(original / step))

    on_converter_grids, _ = adaptive_rounding(tiny_model, pixels, _pre)
    chosen = on_converter_grids.get_layer("dw").get_weights()[0]
    assert not np.allclose(fake_quantized(on_converter_grids)["dw"], chosen, rtol=0, atol=1e-5 * np.abs(chosen).max())
