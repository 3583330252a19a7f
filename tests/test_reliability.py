"""A user's mistakes and the environment's faults: one line, the right exit code, nothing lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_edgeft


def _tiny_class_folders(root: Path, classes: tuple[str, ...] = ("cats", "dogs"), per_class: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("options, message", [
    (["--image-size", "0"], "--image-size 0 is too small for mobilenet_v2 (minimum 32)"),
    (["--image-size", "10000"], "--image-size 10000 is above the largest size edgeft trains at (1024 px"),
    (["--learning-rate", "-1"], "--learning-rate must be in (0, 1], got -1.0"),
    (["--fine-tune-learning-rate", "0"], "--fine-tune-learning-rate must be in (0, 1], got 0.0"),
    (["--val-split", "1.5"], "--val-split is a fraction in (0, 1), got 1.5"),
])
def test_out_of_range_options_are_refused_before_any_work(tmp_path: Path, options: list[str], message: str) -> None:
    data = _tiny_class_folders(tmp_path / "photos")
    result = run_edgeft("finetune", str(data), "--out", str(tmp_path / "run"), "--weights", "none", *options)
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_train_and_test_folders_are_splits_not_classes(tmp_path: Path) -> None:
    from edgeft.data.dataset import load_dataset

    _tiny_class_folders(tmp_path / "data" / "train", per_class=5)
    _tiny_class_folders(tmp_path / "data" / "test", per_class=2)
    index, splits = load_dataset(tmp_path / "data", 32, val_split=0.2, seed=0)
    assert index.class_names == ("cats", "dogs")
    assert sorted(splits) == ["test", "train", "val"]
    assert len(splits["test"].samples) == 4 and len(splits["train"].samples) + len(splits["val"].samples) == 10
    assert all("/test/" in s.path for s in splits["test"].samples)
    assert not any("/test/" in s.path for s in splits["val"].samples)


def test_validation_folder_aliases(tmp_path: Path) -> None:
    from edgeft.data.dataset import load_dataset

    _tiny_class_folders(tmp_path / "data" / "train")
    _tiny_class_folders(tmp_path / "data" / "validation", per_class=2)
    index, splits = load_dataset(tmp_path / "data", 32)
    assert index.class_names == ("cats", "dogs") and len(splits["val"].samples) == 4


def test_a_layout_of_only_split_folders_is_refused(tmp_path: Path) -> None:
    _tiny_class_folders(tmp_path / "data", classes=("train", "eval"))
    result = run_edgeft("finetune", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--weights", "none",
                        "--image-size", "32")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'data'} holds only split folders (eval, train); use DATA_DIR/<class>/ or "
        "DATA_DIR/train/<class>/ with val/ or test/ beside train/"]
    assert not (tmp_path / "run").exists()


def test_a_class_without_validation_images_is_named(tmp_path: Path) -> None:
    from edgeft.data.dataset import load_dataset, missing_validation_classes

    _tiny_class_folders(tmp_path / "data", classes=("cats", "dogs"), per_class=5)
    _tiny_class_folders(tmp_path / "data", classes=("owls",), per_class=1)
    index, splits = load_dataset(tmp_path / "data", 32, val_split=0.2, seed=0)
    assert missing_validation_classes(index.class_names, splits) == ["owls"]


def test_weights_file_of_random_bytes_is_one_line(tmp_path: Path) -> None:
    data = _tiny_class_folders(tmp_path / "photos")
    junk = tmp_path / "weights.h5"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    result = run_edgeft("finetune", str(data), "--out", str(tmp_path / "run"), "--weights", str(junk),
                        "--alpha", "0.35", "--image-size", "32")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --weights {junk} is not a Keras .h5 weight file (no HDF5 signature); "
        "pass the backbone's ImageNet .h5 file, imagenet, or none"]
    assert not (tmp_path / "run").exists()
