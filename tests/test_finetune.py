"""edgeft finetune end to end on tiny real data: run directory, strategies, BatchNorm, backbones."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import SHARED_WEIGHTS, require_shared, run_edgeft, write_digits, write_shapes
from edgeft.run import RunDir
from edgeft.training.config import FinetuneConfig
from edgeft.training.finetune import collapse_warning, main_finetune


def _finetune(data: Path, out: Path, **options: object) -> dict:
    return main_finetune(FinetuneConfig.from_options(data_dir=data, out_dir=out, **options))


# The BatchNorm trap needs the real case: all 1,797 digits, from scratch at 32 px, 20 epochs.
SCRATCH = dict(backbone="mobilenet_v2", alpha=0.35, image_size=32, weights="none", epochs=20,
               learning_rate=2e-3, seed=0, patience=0)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits") / "data", per_class=200)


@pytest.fixture(scope="module")
def scratch_run(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "scratch"
    _finetune(digits, out, **SCRATCH)
    return out


def test_run_directory_is_complete(scratch_run: Path) -> None:
    run = RunDir.open(scratch_run)
    manifest = json.loads((scratch_run / "edgeft.json").read_text())
    for key in ("data_dir", "backbone", "alpha", "image_size", "preprocessing", "class_names", "strategy",
                "hyperparameters", "seed", "splits", "dataset", "versions"):
        assert key in manifest, key
    assert manifest["dataset"]["content_hash"] and manifest["versions"]["tensorflow"]
    assert run.manifest.class_names == tuple(str(i) for i in range(10))
    assert (scratch_run / "labels.txt").read_text().split() == [str(i) for i in range(10)]
    metrics = json.loads((scratch_run / "metrics.json").read_text())
    assert 0.0 <= metrics["val_accuracy"] <= 1.0
    assert len(metrics["val"]["confusion_matrix"]) == 10
    assert set(metrics["val"]["per_class"]["3"]) == {"precision", "recall", "f1", "support"}
    rows = list(csv.DictReader((scratch_run / "history.csv").open()))
    assert rows and rows[0]["phase"] == "scratch" and rows[0]["epoch"] == "1"
    for png in ("training_curves.png", "confusion_matrix.png"):
        assert (scratch_run / png).read_bytes()[:4] == b"\x89PNG"
    assert not (scratch_run / ".checkpoints").exists()
    leftovers = [p.name for p in scratch_run.iterdir() if ".partial-" in p.name]
    assert leftovers == []


def test_training_from_scratch_generalises(scratch_run: Path) -> None:
    """The BatchNorm trap: high training accuracy with validation at chance (0.10) must not happen."""
    metrics = json.loads((scratch_run / "metrics.json").read_text())
    assert metrics["val_accuracy"] >= 0.8, metrics["val_accuracy"]
    assert metrics["collapse_warning"] is None


@pytest.mark.slow
def test_keras_default_batchnorm_momentum_collapses_and_is_flagged(digits: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Proves the previous test can fail: without edgeft's BatchNorm handling, validation collapses."""
    import edgeft.training.finetune as finetune
    import edgeft.training.model as model

    monkeypatch.setattr(model, "TRAINING_BN_MOMENTUM", 0.999)
    monkeypatch.setattr(finetune, "recalibrate_batchnorm", lambda *args, **kwargs: 0)
    summary = _finetune(digits, tmp_path / "run", **SCRATCH)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["val_accuracy"] <= 0.3
    assert metrics["train_accuracy_last_epoch"] >= 0.8
    assert metrics["collapse_warning"] and "at chance" in metrics["collapse_warning"]


def test_collapse_warning_thresholds() -> None:
    assert collapse_warning(0.97, 0.10, 10) is not None
    assert collapse_warning(0.97, 0.85, 10) is None
    assert collapse_warning(0.40, 0.10, 10) is None


def test_complete_run_is_never_overwritten(scratch_run: Path, digits: Path) -> None:
    before = (scratch_run / "model.keras").read_bytes()
    result = run_edgeft("finetune", str(digits), "--weights", "none", "--alpha", "0.35", "--image-size", "32",
                        "--out", str(scratch_run))
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"error: {scratch_run} already holds a complete run; pass --force to "
                                     "overwrite it or choose another --out")
    assert (scratch_run / "model.keras").read_bytes() == before


def test_evaluate_json_matches_metrics(scratch_run: Path, digits: Path) -> None:
    result = run_edgeft("evaluate", str(scratch_run), "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    metrics = json.loads((scratch_run / "metrics.json").read_text())
    assert report["accuracy"] == pytest.approx(metrics["val_accuracy"], abs=1e-6)
    on_folder = json.loads(run_edgeft("evaluate", str(scratch_run), str(digits), "--json").stdout)
    assert on_folder["count"] == 1797 and on_folder["source"] == str(digits)


def _pretrained_shapes_run(tmp: Path, strategy: str, **options: object) -> tuple[dict, Path]:
    weights = require_shared(SHARED_WEIGHTS)
    data = write_shapes(tmp / "data", per_class=16, size=64)
    out = tmp / f"run_{strategy}"
    summary = _finetune(data, out, backbone="mobilenet_v2", alpha=0.35, image_size=64, weights=str(weights),
                        strategy=strategy, epochs=3, fine_tune_epochs=2, seed=3, **options)
    return summary, out


def test_head_strategy_uses_feature_cache_and_is_repeatable(tmp_path: Path) -> None:
    first, out = _pretrained_shapes_run(tmp_path / "a", "head")
    second, _ = _pretrained_shapes_run(tmp_path / "b", "head")
    assert first["epochs"] == {"head": 3}
    assert first["val_accuracy"] == second["val_accuracy"]
    history_a = (tmp_path / "a" / "run_head" / "history.csv").read_text()
    history_b = (tmp_path / "b" / "run_head" / "history.csv").read_text()
    assert history_a == history_b  # same seed, same numbers on CPU


def test_partial_strategy_trains_top_blocks_then_saves(tmp_path: Path) -> None:
    summary, out = _pretrained_shapes_run(tmp_path, "partial", unfreeze=2)
    assert summary["epochs"]["head"] >= 1 and summary["epochs"]["fine_tune"] >= 1
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [r["phase"] for r in rows][:1] == ["head"] and rows[-1]["phase"] == "fine_tune"
    model = RunDir.open(out).load_keras_model()
    # The saved model is one flat graph (no nested backbone model) with the head on top.
    assert not any(type(layer).__name__ in ("Functional", "Model") for layer in model.layers)
    assert model.layers[-1].name == "predictions"


def test_block_freezing_counts_backbone_blocks() -> None:
    from edgeft.backbones import get_backbone
    from edgeft.training.model import build_classifier, set_trainable
    from edgeft.training.phases import Trainable

    spec = get_backbone("mobilenet_v2")
    model = build_classifier(spec, 0.35, 32, 3, None, 0.2)
    assert set_trainable(model, spec, Trainable.TOP_BLOCKS, 2, False) == 2
    trainable = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    assert any(name.startswith("block_16_") for name in trainable)
    assert "Conv_1" in trainable  # trailing top conv belongs to the last block
    assert not any(name.startswith("block_14_") for name in trainable)
    assert not any(name.endswith("_BN") or name.endswith("_bn") for name in trainable)  # BN stays frozen


def test_efficientnet_b0_end_to_end(tmp_path: Path) -> None:
    data = write_shapes(tmp_path / "data", per_class=8, size=40)
    summary = _finetune(data, tmp_path / "run", backbone="efficientnet_b0", image_size=32, weights="none",
                        epochs=2, seed=0)
    run = RunDir.open(tmp_path / "run")
    assert run.manifest.backbone == "efficientnet_b0" and summary["epochs"] == {"scratch": 2}
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["val_accuracy"] is not None
    model = run.load_keras_model()
    assert model.input_shape == (None, 32, 32, 3)


def test_mixed_precision_and_mirrored_build_and_run_on_cpu(tmp_path: Path) -> None:
    from edgeft.tfcompat import keras

    data = write_shapes(tmp_path / "data", per_class=6, size=32)
    try:
        summary = _finetune(data, tmp_path / "run", backbone="mobilenet_v2", alpha=0.35, image_size=32,
                            weights="none", epochs=1, mixed_precision=True, distribute="mirrored")
    finally:
        keras().mixed_precision.set_global_policy("float32")
    assert summary["epochs"] == {"scratch": 1}
    model = RunDir.open(tmp_path / "run").load_keras_model()
    assert model.layers[-1].dtype == "float32"


@pytest.mark.parametrize("name", ["mobilenet", "mobilenet_v3_small", "mobilenet_v3_large", "resnet50_v2",
                                  "densenet121", "efficientnet_b1"])
def test_registry_entries_build_and_split_into_blocks(name: str) -> None:
    from edgeft.backbones import get_backbone
    from edgeft.training.model import build_classifier, count_blocks

    spec = get_backbone(name)
    model = build_classifier(spec, spec.default_alpha, 64, 3, None, 0.2)
    assert model.output_shape == (None, 3)
    assert count_blocks(model, spec) >= 4


def test_keras_files_stay_v3_zips_when_tensorflow_was_imported_in_another_thread(tmp_path) -> None:
    """finetune imports TensorFlow in a background thread; tf-keras then saves ``.keras`` as HDF5 after its
    first save or load in the main thread unless edgeft keeps its v3 flag (run in a fresh interpreter)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import os, threading, zipfile
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
        from edgeft.tfcompat import keras
        thread = threading.Thread(target=keras)
        thread.start(); thread.join()
        k = keras()
        for name in ("first", "second"):
            inputs = k.Input((4,))
            path = os.path.join({str(tmp_path)!r}, name + ".keras")
            k.Model(inputs, k.layers.Dense(2)(inputs)).save(path)
            k.models.load_model(path)
            print(name, zipfile.is_zipfile(path))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["first", "True", "second", "True"]
