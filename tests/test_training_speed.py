"""Training speed features: the timings object, evaluation on cached features/activations checked
against the saved model, partial fine-tuning on cached frozen activations, its fallbacks and resume."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from conftest import SHARED_WEIGHTS, require_shared, write_shapes
from edgeft.run import RunDir
from edgeft.run.timings import StepTimer
from edgeft.training import finetune
from edgeft.training.config import Augmentation, FinetuneConfig
from edgeft.training.finetune import main_finetune
from edgeft.training.phases import plan_phases
from edgeft.training.pipeline import image_dataset

TIMED_PARTS = ("decode", "model_build", "backbone_pass", "head_training", "final_evaluation", "writing", "plots")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shapes(tmp_path_factory.mktemp("shapes") / "data", per_class=16, size=48)


def _config(data: Path, out: Path, strategy: str, **options: Any) -> FinetuneConfig:
    weights = require_shared(SHARED_WEIGHTS)
    settings: dict[str, Any] = dict(backbone="mobilenet_v2", alpha=0.35, image_size=48, weights=str(weights),
                                    strategy=strategy, epochs=3, fine_tune_epochs=2, seed=1, patience=0)
    settings.update(options)
    return FinetuneConfig.from_options(data_dir=data, out_dir=out, **settings)


def _capture_cached_evaluation(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record what the cached evaluation returned and on which images."""
    seen: list[dict[str, Any]] = []
    original = finetune._cached_probabilities

    def spy(context: Any, model: Any, cached: Any) -> Any:
        result = original(context, model, cached)
        seen.append({"probabilities": result, "images": context.splits["val"].images,
                     "preprocessing": context.preprocessing, "source": cached.source})
        return result

    monkeypatch.setattr(finetune, "_cached_probabilities", spy)
    return seen


def _saved_model_probabilities(run: Path, record: dict[str, Any]) -> np.ndarray:
    model = RunDir.open(run).load_keras_model()
    dataset = image_dataset(record["images"], None, record["preprocessing"], 16)
    return np.asarray(model.predict(dataset, verbose=0), dtype=np.float32)


def test_step_timer_parts_add_up_with_nesting() -> None:
    timer = StepTimer()
    with timer.step("outer"):
        time.sleep(0.02)
        with timer.step("inner"):
            time.sleep(0.05)
    report = timer.report()
    assert report["inner"] >= 0.04 and report["outer"] < report["inner"]
    assert sum(v for k, v in report.items() if k != "total") == pytest.approx(report["total"], abs=0.02)


def test_head_run_timings_and_cached_evaluation_match_saved_model(shapes: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    seen = _capture_cached_evaluation(monkeypatch)
    started = time.monotonic()
    summary = main_finetune(_config(shapes, tmp_path / "run", "head"))
    wall = time.monotonic() - started
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    timings = metrics["timings"]
    for part in TIMED_PARTS:
        assert part in timings, part
    parts = sum(value for key, value in timings.items() if key != "total")
    assert parts == pytest.approx(timings["total"], abs=0.1)  # each part is rounded to 10 ms
    assert timings["total"] == pytest.approx(wall, rel=0.1, abs=0.3)
    assert timings["backbone_pass"] > 0 and timings["head_training"] > 0
    assert metrics["wall_s"] == timings["total"] and summary["timings"] == timings
    assert "timings: " in capsys.readouterr().err
    # The final evaluation used the cached validation features, and they agree with the saved model.
    assert metrics["evaluated_on"] == "cached backbone features"
    record = seen[0]
    assert record["probabilities"] is not None
    saved = _saved_model_probabilities(tmp_path / "run", record)
    assert np.max(np.abs(saved - record["probabilities"])) < 1e-4
    assert metrics["val_accuracy"] == pytest.approx(float(np.mean(np.argmax(saved, 1) == _val_labels(tmp_path))))


def _val_labels(run_parent: Path) -> np.ndarray:
    run = RunDir.open(run_parent / "run")
    names = run.manifest.class_names
    return np.array([names.index(Path(sample["path"]).parent.name) for sample in _val_samples(run_parent / "run")])


def _val_samples(run: Path) -> list[dict[str, Any]]:
    return json.loads((run / "edgeft.json").read_text())["splits"]["val"]


def test_cached_evaluation_that_disagrees_falls_back_to_images(shapes: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(finetune, "CHECK_TOLERANCE", -1.0)  # any difference, even 0, counts as a mismatch
    main_finetune(_config(shapes, tmp_path / "run", "head", epochs=1))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["evaluated_on"] == "images"
    assert "differs from the model" in capsys.readouterr().err


def test_partial_on_cached_activations_saves_a_model_with_the_trained_outputs(
        shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    seen = _capture_cached_evaluation(monkeypatch)
    main_finetune(_config(shapes, tmp_path / "run", "partial", unfreeze=2))
    err = capsys.readouterr().err
    assert "fine-tuning on cached activations below block_15_expand" in err
    assert "augmentation: horizontal flip" in err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["evaluated_on"] == "cached activations"
    assert metrics["timings"]["activation_pass"] > 0 and metrics["timings"]["fine_tuning"] > 0
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert [r["phase"] for r in rows] == ["head"] * 3 + ["fine_tune"] * 2
    # model.keras (backbone + top + head, one flat graph) gives what the top gave on the cached activations.
    saved = _saved_model_probabilities(tmp_path / "run", seen[0])
    assert np.max(np.abs(saved - seen[0]["probabilities"])) < 1e-4


def test_partial_without_budget_or_with_full_augmentation_trains_on_images(
        shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main_finetune(_config(shapes, tmp_path / "zero", "partial", epochs=1, fine_tune_epochs=1,
                          activation_cache_mb=0))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("fine-tuning on images")]
    assert len(lines) == 1 and "over --activation-cache-mb 0" in lines[0]
    assert "cached activations" not in err
    assert json.loads((tmp_path / "zero" / "metrics.json").read_text())["evaluated_on"] == "images"

    # Rotation, zoom and contrast need the images: decided before anything is computed.
    config = _config(shapes, tmp_path / "full", "partial", augmentation="full")
    phase = plan_phases(config)[1]
    context = SimpleNamespace(config=config)
    assert finetune._activation_split(context, phase, None, done=False) is None  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert err.strip() == ("fine-tuning on images (full pipeline): --augmentation full (rotation, zoom, contrast) "
                           "needs them; the activation cache supports horizontal flip only")
    assert _config(shapes, tmp_path / "x", "partial").augmentation is Augmentation.FLIP
    assert _config(shapes, tmp_path / "x", "full").augmentation is Augmentation.FULL


def test_interrupted_cached_partial_resumes(shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    original = finetune.make_epoch_callback

    class Stop(Exception):
        pass

    def interrupting(store: Any, state: Any, index: int, model: Any, patience: int, on_epoch: Any) -> Any:
        def report(row: dict[str, Any]) -> None:
            on_epoch(row)
            if row["phase"] == "fine_tune" and row["epoch"] == 1:
                raise Stop()
        return original(store, state, index, model, patience, report)

    monkeypatch.setattr(finetune, "make_epoch_callback", interrupting)
    out = tmp_path / "run"
    with pytest.raises(Stop):
        main_finetune(_config(shapes, out, "partial", fine_tune_epochs=3))
    assert not (out / "edgeft.json").exists()
    monkeypatch.setattr(finetune, "make_epoch_callback", original)
    main_finetune(_config(shapes, out, "partial", fine_tune_epochs=3, resume=True))
    err = capsys.readouterr().err
    assert "4 epoch(s) already done" in err and "fine-tuning on cached activations" in err
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [(r["phase"], int(r["epoch"])) for r in rows] == [("head", 1), ("head", 2), ("head", 3),
                                                             ("fine_tune", 1), ("fine_tune", 2), ("fine_tune", 3)]
    assert (out / "edgeft.json").exists() and not (out / ".checkpoints").exists()


def test_numpy_head_trains_as_keras_does() -> None:
    """Same start, same batches, no dropout: the numpy head and a Keras Dense + Adam end with the same weights."""
    from edgeft.tfcompat import keras
    from edgeft.training.head import HeadTrainer

    k = keras()
    rng = np.random.default_rng(0)
    features = rng.normal(size=(70, 12)).astype(np.float32)
    labels = rng.integers(0, 3, 70).astype(np.int32)
    head = HeadTrainer(12, 3, dropout=0.0, learning_rate=1e-2, seed=5)
    dense = k.Sequential([k.Input((12,)), k.layers.Dense(3, activation="softmax")])
    dense.set_weights(head.weights())
    dense.compile(optimizer=k.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    weights = {0: 1.0, 1: 2.0, 2: 0.5}
    for epoch in range(3):
        order = np.random.default_rng([5, epoch]).permutation(70)
        logs = head.fit_epoch(features, labels, 16, epoch, class_weight=weights)
        history = dense.fit(features[order], labels[order], batch_size=16, epochs=1, shuffle=False, verbose=0,
                            class_weight=weights)
        assert logs["loss"] == pytest.approx(history.history["loss"][0], rel=1e-4)
    for ours, theirs in zip(head.weights(), dense.get_weights()):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    np.testing.assert_allclose(head.predict(features), dense.predict(features, verbose=0), atol=1e-5)


def _small_top(unfreeze: int = 2, seed: int = 0) -> Any:
    """A 32 px MobileNetV2 0.35 classifier (no dropout) cut below its top blocks, BatchNorm statistics made
    non-trivial (a fresh BatchNorm is the identity, which folding would leave unchanged)."""
    from edgeft.backbones import get_backbone
    from edgeft.tfcompat import keras
    from edgeft.training.activations import split_frozen_prefix
    from edgeft.training.model import build_classifier, is_batchnorm, set_trainable
    from edgeft.training.phases import Trainable

    keras().utils.set_random_seed(seed)
    spec = get_backbone("mobilenet_v2")
    model = build_classifier(spec, 0.35, 32, 3, None, 0.0)
    set_trainable(model, spec, Trainable.TOP_BLOCKS, unfreeze, False)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if is_batchnorm(layer):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.2, beta.shape),
                               rng.normal(0, 0.2, mean.shape), rng.uniform(0.5, 2.0, variance.shape)])
    return split_frozen_prefix(model)


def test_folded_batchnorm_top_gives_the_tops_outputs_and_gradients() -> None:
    from edgeft.tfcompat import tf
    from edgeft.training.activations import folded_forward

    t = tf()
    split = _small_top()
    folded = folded_forward(split.top, split.boundary)
    assert folded is not None and folded.count == 7  # expand, depthwise, project of two blocks, and Conv_1
    inputs = split.prefix.predict(np.random.default_rng(1).uniform(-1, 1, (6, 32, 32, 3)).astype(np.float32),
                                  verbose=0)
    labels = t.constant([0, 1, 2, 0, 1, 2])
    results = []
    for forward in (lambda x: split.top(x, training=True), lambda x: folded([x], True)):
        with t.GradientTape() as tape:
            probabilities = forward(t.constant(inputs))
            loss = t.reduce_mean(-t.math.log(t.gather(probabilities, labels, batch_dims=1)))
        results.append((probabilities.numpy(), tape.gradient(loss, split.top.trainable_variables)))
    (plain, plain_gradients), (ours, our_gradients) = results
    np.testing.assert_allclose(ours, plain, atol=1e-5)
    assert len(plain_gradients) == len(our_gradients) == len(split.top.trainable_variables) == 9  # 7 kernels, dense
    for theirs, mine in zip(plain_gradients, our_gradients):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("fold", [True, False])
def test_top_trainer_trains_as_keras_fit(fold: bool) -> None:
    """Same start, same batches, same views: the traced step and Keras' fit end with the same weights and logs."""
    from edgeft.tfcompat import keras
    from edgeft.training.activations import CachedActivations, TopTrainer

    k = keras()
    ours, theirs = _small_top(seed=3), _small_top(seed=3)
    theirs.top.set_weights(ours.top.get_weights())
    rng = np.random.default_rng(2)
    count = 21
    arrays = ours.prefix.predict(rng.uniform(-1, 1, (2 * count + 9, 32, 32, 3)).astype(np.float32), verbose=0)
    cache = CachedActivations((arrays,), count, 2)
    labels = rng.integers(0, 3, count).astype(np.int32)
    val_labels = rng.integers(0, 3, 9).astype(np.int32)
    weights = {0: 1.0, 1: 2.0, 2: 0.5}
    trainer = TopTrainer(ours.top, ours.boundary, 1e-3, seed=4, fold_batchnorm=fold)
    assert trainer.folded_batchnorms == (7 if fold else 0)
    theirs.top.compile(optimizer=k.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                       metrics=["accuracy"])
    for epoch in range(2):
        draw = np.random.default_rng([4, epoch])
        order = draw.permutation(count)
        rows = order + count * draw.integers(0, 2, count)
        logs = trainer.fit_epoch(cache, labels, 8, epoch, class_weight=weights)
        history = theirs.top.fit(arrays[rows], labels[order], batch_size=8, epochs=1, shuffle=False, verbose=0,
                                 class_weight=weights, validation_data=(cache.validation(), val_labels))
        assert logs["loss"] == pytest.approx(history.history["loss"][0], rel=1e-3)
        assert logs["accuracy"] == pytest.approx(history.history["accuracy"][0])
        validation = trainer.evaluate(cache.validation(), val_labels)
        assert validation["loss"] == pytest.approx(history.history["val_loss"][0], rel=1e-3)
        assert validation["accuracy"] == pytest.approx(history.history["val_accuracy"][0])
    for mine, reference in zip(ours.top.get_weights(), theirs.top.get_weights()):
        np.testing.assert_allclose(mine, reference, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(trainer.predict(cache.validation()), theirs.top.predict(cache.validation(), verbose=0),
                               atol=1e-5)


@pytest.mark.parametrize("name, folds", [("efficientnet_b0", 7), ("mobilenet_v3_small", None)])
def test_folding_reads_other_backbones_or_declines(name: str, folds: int | None) -> None:
    """EfficientNet's top (squeeze-excite, swish) folds with the same outputs; MobileNetV3's wrapped TensorFlow
    ops (``x + 3.0`` in hard-swish) keep arguments the folded pass would not repeat, so it declines."""
    from edgeft.backbones import get_backbone
    from edgeft.tfcompat import tf
    from edgeft.training.activations import folded_forward, split_frozen_prefix
    from edgeft.training.model import build_classifier, set_trainable
    from edgeft.training.phases import Trainable

    spec = get_backbone(name)
    model = build_classifier(spec, spec.default_alpha, 32, 3, None, 0.0)
    set_trainable(model, spec, Trainable.TOP_BLOCKS, 2, False)
    split = split_frozen_prefix(model)
    folded = folded_forward(split.top, split.boundary)
    if folds is None:
        assert folded is None
        return
    assert folded is not None and folded.count == folds
    inputs = split.prefix.predict(np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32),
                                  verbose=0)
    inputs = inputs if isinstance(inputs, list) else [inputs]
    np.testing.assert_allclose(folded([tf().constant(x) for x in inputs], False).numpy(),
                               split.top(inputs if len(inputs) > 1 else inputs[0], training=False).numpy(), atol=1e-5)
