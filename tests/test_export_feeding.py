"""How the device layer (and so export validation, bench and the runtime) feeds integer-input models."""

from __future__ import annotations

import numpy as np
import pytest

from targets.preprocess import pixels_are_levels, prepare_input, quantize

PIXELS = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
MOBILENET = {"preprocessing": {"scale": [1 / 127.5] * 3, "offset": [-1.0] * 3, "channel_order": "RGB"}}
STEP = 2 / 255  # the input scale the TFLite converter gives pixel / 127.5 - 1


@pytest.mark.parametrize("dtype, zero_point, shift", [(np.uint8, 127, 0), (np.uint8, 128, 0),
                                                      (np.int8, -1, -128), (np.int8, 0, -128)])
def test_pixels_that_land_on_levels_are_fed_as_they_are(dtype: type, zero_point: int, shift: int) -> None:
    # pixel / 127.5 - 1 on scale 2/255 falls exactly halfway between two levels: half-to-even rounding
    # used to move a quarter (zero point 127) to three quarters (128) of the pixel values down or up a level
    tensor = prepare_input(PIXELS, dtype, (STEP, zero_point), MOBILENET)
    assert tensor.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(tensor.astype(np.int16), PIXELS.astype(np.int16) + shift)


def test_other_mappings_round_half_away_from_zero_as_tflite_quantize() -> None:
    values = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5], np.float32)
    assert quantize(values, np.int8, (1.0, 0)).tolist() == [-3, -2, -1, 1, 2, 3]
    assert np.round(values).tolist() == [-2, -2, -0, 0, 2, 2]  # what numpy would have fed
    assert quantize(values * 0.5, np.uint8, (0.5, 10)).tolist() == [7, 8, 9, 11, 12, 13]


def test_a_mapping_one_level_off_or_with_another_step_is_quantized() -> None:
    assert pixels_are_levels([1 / 127.5] * 3, [-1.0] * 3, np.uint8, STEP, 127)
    assert not pixels_are_levels([1 / 127.5] * 3, [-1.0] * 3, np.uint8, STEP, 129)  # pixel + 1.5 levels
    assert not pixels_are_levels([1 / 255] * 3, [0.0] * 3, np.uint8, STEP, 0)  # two pixels per level
    assert not pixels_are_levels([1 / 127.5, 1 / 127.5, 1 / 64], [-1.0] * 3, np.uint8, STEP, 127)
    # ImageNet mean/std: per-channel scales, quantized (not fed as pixels)
    side = {"preprocessing": {"scale": [1 / 58.4, 1 / 57.1, 1 / 57.4], "offset": [-2.12, -2.04, -1.80]}}
    tensor = prepare_input(PIXELS, np.uint8, (0.0186, 114), side)
    expected = np.floor((PIXELS * np.float32(1 / 58.4) - np.float32(2.12)) / np.float32(0.0186) + 0.5) + 114
    np.testing.assert_array_equal(tensor[..., 0], np.clip(expected[..., 0], 0, 255))
