"""Calibration set: stratified and seeded selection, cache, --calib-dir / --calib-list, errors (no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeft.calibration import CalibrationRequest, build_calibration_set, read_calib_list, stratified_selection
from edgeft.errors import CalibrationError
from edgeft.preprocessing import MINUS_ONE_TO_ONE
from edgeft.run.rundir import Sample
from edgeft.testing import ShapesSpec, write_shapes


def _train_samples(root: Path) -> list[Sample]:
    samples = []
    for label, name in enumerate(sorted(p.name for p in (root / "train").iterdir())):
        samples += [Sample(str(p), label) for p in sorted((root / "train" / name).glob("*.png"))]
    return samples


def test_stratified_selection_is_balanced_and_seeded() -> None:
    labels = np.array([0] * 50 + [1] * 10 + [2] * 30)
    chosen = stratified_selection(labels, 24, seed=3)
    counts = np.bincount(labels[chosen], minlength=3)
    assert len(chosen) == len(set(chosen.tolist())) == 24
    assert counts.tolist() == [8, 8, 8]
    assert np.array_equal(chosen, stratified_selection(labels, 24, seed=3))
    assert not np.array_equal(chosen, stratified_selection(labels, 24, seed=4))
    # a small class runs out: the others fill up, nothing is repeated
    many = stratified_selection(labels, 70, seed=0)
    assert np.bincount(labels[many], minlength=3)[1] == 10 and len(set(many.tolist())) == 70


def test_train_split_set_is_preprocessed_and_cached(tmp_path: Path) -> None:
    data = write_shapes(tmp_path / "data", ShapesSpec(per_class=8, val_per_class=1, size=40))
    samples = _train_samples(data)
    first = build_calibration_set(MINUS_ONE_TO_ONE, 32, CalibrationRequest(size=12, seed=0), train_samples=samples,
                                 data_hash="h1")
    assert first.pixels.shape == (12, 32, 32, 3) and first.pixels.dtype == np.uint8
    assert np.bincount(first.labels, minlength=3).tolist() == [4, 4, 4]
    inputs = first.inputs
    assert inputs.dtype == np.float32 and inputs.min() >= -1.0 and inputs.max() <= 1.0
    assert np.allclose(inputs, first.pixels.astype(np.float32) / 127.5 - 1.0, atol=1e-6)
    assert first.cache_file and Path(first.cache_file).is_file()
    # the second build reads the cache: it works even when the images are gone
    for sample in samples:
        Path(sample.path).unlink()
    second = build_calibration_set(MINUS_ONE_TO_ONE, 32, CalibrationRequest(size=12, seed=0), train_samples=samples,
                                  data_hash="h1")
    assert np.array_equal(first.pixels, second.pixels) and second.key == first.key
    batches = list(second.batches(limit=3))
    assert len(batches) == 3 and batches[0].shape == (1, 32, 32, 3)


def test_calib_list_and_calib_dir(tmp_path: Path) -> None:
    data = write_shapes(tmp_path / "data", ShapesSpec(per_class=3, val_per_class=1, size=40))
    listing = tmp_path / "calib.txt"
    files = sorted((data / "train").rglob("*.png"))
    listing.write_text("# calibration images\n" + "\n".join(str(p.relative_to(tmp_path)) for p in files[:5])
                       + "\n\n" + str(files[5]) + "  # absolute\n")
    assert len(read_calib_list(listing)) == 6
    from_list = build_calibration_set(MINUS_ONE_TO_ONE, 32, CalibrationRequest(calib_list=listing, size=100))
    assert len(from_list) == 6 and from_list.source.startswith("calib-list:") and (from_list.labels == -1).all()
    from_dir = build_calibration_set(MINUS_ONE_TO_ONE, 32, CalibrationRequest(calib_dir=data / "val", size=2))
    assert len(from_dir) == 2 and from_dir.source.startswith("calib-dir:")


def test_no_calibration_data_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="--calib-dir"):
        build_calibration_set(MINUS_ONE_TO_ONE, 32, CalibrationRequest(size=10), train_samples=[])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError):
        build_calibration_set(MINUS_ONE_TO_ONE, 32, CalibrationRequest(calib_dir=tmp_path / "empty", size=10))
    with pytest.raises(CalibrationError, match="not found"):
        build_calibration_set(MINUS_ONE_TO_ONE, 32, CalibrationRequest(calib_list=tmp_path / "missing.txt", size=10))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(CalibrationError, match="could be decoded"):
        build_calibration_set(MINUS_ONE_TO_ONE, 32, CalibrationRequest(size=10),
                              train_samples=[Sample(str(tmp_path / "bad.png"), 0)])
