"""The main job's embedded default: digits as a class-folder set, and its choice of weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import SHARED_WEIGHTS, require_shared
from edgeft.data import load_dataset
from edgeft.demo import demo_options, write_digits


def test_digits_are_written_as_class_folders(tmp_path: Path) -> None:
    assert write_digits(tmp_path / "digits") == 1797
    index, splits = load_dataset(tmp_path / "digits", 32, val_split=0.2, seed=0)
    assert index.class_names == tuple(str(d) for d in range(10))
    assert len(splits["train"].samples) + len(splits["val"].samples) == 1797
    assert index.skipped == ()


def test_demo_trains_from_scratch_without_imagenet_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFT_OFFLINE", "1")
    options = demo_options(tmp_path / "d", tmp_path / "r")
    assert options["weights"] == "none" and options["strategy"] == "full" and options["image_size"] == 32


def test_demo_fine_tunes_imagenet_weights_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = require_shared(SHARED_WEIGHTS)
    monkeypatch.setenv("EDGEFT_OFFLINE", "1")
    monkeypatch.setenv("EDGEFT_WEIGHTS_DIR", str(weights.parent))
    options = demo_options(tmp_path / "d", tmp_path / "r")
    assert options["weights"] == "imagenet" and options["strategy"] == "full"
