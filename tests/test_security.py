"""Inputs from someone else, each attack reproduced against local files and refused with one line.

Run directories and model files (code in a model), fleet files and profiles (ssh options, paths),
the device's answers (result documents), output folders (planted symlinks).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgeft.cli import main


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run the CLI in-process; return (exit code, the single ``error:`` line)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return int(exit_info.value.code or 0), lines[0]


# ----------------------------------------------------------------------------- 1. code in a run directory
def _tiny_run(root: Path, model_file: Path) -> Path:
    """A complete run directory (manifest, labels, 4 real images) around ``model_file``."""
    from PIL import Image

    data = root / "data"
    samples = {"train": [], "val": []}
    for label, name in enumerate(("a", "b")):
        for split in ("train", "val"):
            folder = data / split / name
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / "0.png"
            Image.fromarray(np.full((32, 32, 3), 60 + 120 * label, np.uint8)).save(path)
            samples[split].append({"path": str(path.relative_to(data)), "label": label})
    run = root / "run"
    run.mkdir()
    model_file.replace(run / "model.keras")
    (run / "labels.txt").write_text("a\nb\n")
    (run / "metrics.json").write_text('{"val_accuracy": 0.5}')
    manifest = {"manifest_version": 1, "kind": "float", "backbone": "mobilenet_v2", "alpha": 0.35,
                "image_size": 32, "preprocessing": {"scale": [1 / 127.5] * 3, "offset": [-1.0] * 3,
                                                    "channel_order": "RGB"},
                "class_names": ["a", "b"], "strategy": "head", "weights": "none", "hyperparameters": {},
                "seed": 0, "data_dir": str(data), "dataset": {}, "splits": samples, "versions": {}}
    (run / "edgeft.json").write_text(json.dumps(manifest))
    return run


def _tiny_model(function: object | None = None) -> object:
    from edgeft.tfcompat import keras

    k = keras()
    inputs = k.Input((32, 32, 3), name="image")
    x = k.layers.Lambda(function, name="payload")(inputs) if function is not None else inputs
    x = k.layers.GlobalAveragePooling2D()(x)
    return k.Model(inputs, k.layers.Dense(2, activation="softmax", name="predictions")(x))


def test_hdf5_model_with_code_renamed_model_keras_is_refused_by_evaluate_export_qat(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    payload = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).touch(), x)[1]")  # noqa: S307
    h5 = tmp_path / "evil.h5"
    _tiny_model(payload).save(h5, save_format="h5")
    marker.unlink(missing_ok=True)  # building the model called the Lambda once
    run = _tiny_run(tmp_path, h5)
    for command in (["evaluate", str(run)], ["export", str(run), "--formats", "tflite", "--out", str(tmp_path / "x")],
                    ["qat", str(run), "--out", str(tmp_path / "q")]):
        code, line = _cli(capsys, *command)
        assert (code, line) == (2, f"error: refusing {run / 'model.keras'}: it contains a Lambda layer (Python code "
                                   "that would run on load); edgeft never writes one, so this run directory was "
                                   "not made by edgeft"), command
        assert not marker.exists(), command
    # the attack is real: Keras itself runs the code from this file, safe_mode or not
    from edgeft.tfcompat import keras

    keras().models.load_model(run / "model.keras", compile=False, safe_mode=True)
    assert marker.exists()


def test_model_file_that_is_no_keras_format_or_names_a_module_is_refused(tmp_path: Path) -> None:
    from edgeft.errors import ModelFileError
    from edgeft.tfcompat import load_keras_model

    pickle_file = tmp_path / "model.keras"
    pickle_file.write_bytes(b"\x80\x04\x95 a pickle, or a SavedModel, is not a Keras model file")
    with pytest.raises(ModelFileError, match="neither a Keras v3 archive .zip with config.json and metadata.json."):
        load_keras_model(pickle_file)
    good = tmp_path / "good.keras"
    _tiny_model().save(good)
    assert load_keras_model(good).output_shape == (None, 2)  # a plain Keras v3 file loads
    config = json.loads(zipfile.ZipFile(good).read("config.json"))
    config["config"]["layers"][1]["module"] = "os"
    config["config"]["layers"][1]["registered_name"] = "system"
    evil = tmp_path / "evil.keras"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(evil, "w") as target:
        for name in source.namelist():
            target.writestr(name, json.dumps(config) if name == "config.json" else source.read(name))
    with pytest.raises(ModelFileError, match="it names Python module 'os' .class 'GlobalAveragePooling2D'."):
        load_keras_model(evil)
