"""``edgeft qat``: quantization-aware fine-tuning of a float run into a QAT run directory.

The float run's flat functional model is annotated layer by layer: layers in tfmot's default
8-bit registry get tfmot's own config, the layers listed in
:data:`edgeft.quantization.configs.OUTPUT_QUANTIZED_LAYERS` get
``OutputQuantizeConfig`` (defined in :mod:`edgeft.tfcompat`), and anything else stops the command
with a :class:`QuantizationError` naming the layer. The annotated model is fine-tuned for a few
epochs at a low learning rate on the run's training split (inputs preprocessed exactly as in
training, so the input quantizer learns the range the model really gets) and written as a run
directory of the same shape (``kind: "qat"``, ``parent_run`` set).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeft.errors import QuantizationError, RunDirError, UsageError
from edgeft.progress import log
from edgeft.quantization.rounding import WeightRounding

if TYPE_CHECKING:
    from edgeft.run.rundir import RunDir, RunManifest


@dataclass(frozen=True)
class QATConfig:
    """Options of ``edgeft qat``."""

    run_dir: Path
    out_dir: Path
    epochs: int = 3
    learning_rate: float = 1e-5
    batch_size: int = 16
    seed: int = 0
    force: bool = False
    weight_rounding: WeightRounding = WeightRounding.ADAPTIVE  # of the weights QAT starts from

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "weight_rounding", WeightRounding(self.weight_rounding))
        except ValueError:
            raise UsageError(f"unknown --weight-rounding '{self.weight_rounding}'; choose from: "
                             + ", ".join(w.value for w in WeightRounding)) from None
        if self.epochs < 0:
            raise UsageError(f"--epochs must be >= 0, got {self.epochs}")
        if self.learning_rate <= 0:
            raise UsageError(f"--learning-rate must be > 0, got {self.learning_rate}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.batch_size}")


# Handled by tfmot's layout transforms (folded into the preceding convolution), not by the registry.
FOLDED_LAYERS = ("BatchNormalization",)


def quantize_flat_model(model: Any) -> Any:
    """Return the QAT version of a flat functional Keras model, or raise :class:`QuantizationError`.

    Refuses a model nested inside the model (flatten it: build the backbone on the classifier's
    input tensor) and any layer neither tfmot nor edgeft knows how to quantize.
    """
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as registry_module,
    )

    from edgeft.quantization.configs import OUTPUT_QUANTIZED_LAYERS, output_quantize_config_class
    from edgeft.tfcompat import keras

    k = keras()
    qk = tfmot.quantization.keras
    for layer in model.layers:
        if isinstance(layer, k.Model):
            raise QuantizationError(
                f"layer '{layer.name}' is a whole Keras model inside the model; tfmot cannot quantize nested models: "
                "rebuild the classifier as one flat functional graph (backbone built on the classifier's input)"
            )
    registry = registry_module.Default8BitQuantizeRegistry()
    output_config = output_quantize_config_class()

    def annotate(layer: Any) -> Any:
        if isinstance(layer, k.layers.InputLayer):
            return layer
        name = type(layer).__name__
        if registry.supports(layer) or name in FOLDED_LAYERS:
            return qk.quantize_annotate_layer(layer)  # tfmot's own config (BatchNorm: folded into its conv)
        if name in OUTPUT_QUANTIZED_LAYERS:
            return qk.quantize_annotate_layer(layer, quantize_config=output_config())
        raise QuantizationError(
            f"layer '{layer.name}' ({name}) cannot be quantization-aware trained: tfmot has no 8-bit config for it "
            f"and edgeft only adds one for {', '.join(OUTPUT_QUANTIZED_LAYERS)}; replace the layer, or export the "
            "float run with post-training int8 (`edgeft export RUN --int8`)"
        )

    try:
        annotated = k.models.clone_model(model, clone_function=annotate)
    except QuantizationError:
        raise
    except Exception as error:
        raise QuantizationError(f"cannot annotate the model for QAT: {str(error).splitlines()[0][:200]}") from None
    annotated.set_weights(model.get_weights())
    try:
        with qk.quantize_scope({"OutputQuantizeConfig": output_config}):
            return qk.quantize_apply(annotated)
    except Exception as error:
        first = str(error).splitlines()[0][:200]
        raise QuantizationError(f"tfmot cannot quantize the model: {first}; replace that layer, or export the float "
                                "run with post-training int8 (`edgeft export RUN --int8`)") from None


def initialize_ranges(qat_model: Any, inputs: np.ndarray, batches: int = 8, batch_size: int = 16,
                      seed: int = 0) -> int:
    """Set every quantizer's range from data before fine-tuning; return the number of batches used.

    tfmot's moving-average quantizers start at [-6, 6] and follow the data with an EMA decay of
    0.999, so a few hundred QAT steps on a small set leave most ranges near their initial values.
    Here the training-mode forward passes run with the decay set to i/(i+1) for batch i, which
    makes each activation range the mean of the per-batch min/max (and assigns the weight ranges).
    """
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops, quantizers

    if len(inputs) == 0:
        return 0
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(inputs))
    original = quant_ops.MovingAvgQuantize
    state = {"decay": 0.0}

    def moving_avg_quantize(*args: Any, **kwargs: Any) -> Any:
        kwargs["ema_decay"] = state["decay"]
        return original(*args, **kwargs)

    bn_layers = _batchnorm_layers(qat_model)
    saved = [(layer, layer.trainable) for layer in bn_layers]
    used = 0
    quantizers.quant_ops.MovingAvgQuantize = moving_avg_quantize
    try:
        for layer, _ in saved:  # keep BatchNorm statistics as trained: inference mode during calibration
            layer.trainable = False
        for index in range(min(batches, max(1, len(inputs) // batch_size))):
            state["decay"] = index / (index + 1.0)
            batch = inputs[order[index * batch_size : (index + 1) * batch_size]]
            qat_model(batch, training=True)
            used += 1
    finally:
        quantizers.quant_ops.MovingAvgQuantize = original
        for layer, trainable in saved:
            layer.trainable = trainable
    return used


def _batchnorm_layers(model: Any) -> list[Any]:
    found = []
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)  # QuantizeWrapper
        if type(inner).__name__ in FOLDED_LAYERS:
            found.append(inner)
    return found


def _accuracy(model: Any, inputs: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    if len(labels) == 0:
        return float("nan")
    probs = model.predict(inputs, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(probs, axis=1) == labels))


@dataclass(frozen=True)
class QATData:
    """The float run's train and val splits, decoded and preprocessed as in training."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def main_qat(config: QATConfig) -> dict[str, Any]:
    """Fine-tune the float run in ``config.run_dir`` with QAT and write ``config.out_dir``; return a summary.

    ``--out`` is checked and locked before anything is decoded or trained; the QAT run is built in a
    hidden folder beside it and swapped in only once complete, so a failure or an interruption leaves
    nothing half-written (and, with ``--force``, the QAT run already there as it was).
    """
    from edgeft import interrupts
    from edgeft.outputs import keep_user_entries, open_output
    from edgeft.run.rundir import CHECKPOINT_DIR, RUN_ARTIFACTS

    started = time.monotonic()
    interrupts.advise(f"interrupted; nothing was written to {config.out_dir}: run the same command again")
    run = _open_float_run(config)
    with open_output(config.out_dir, replace=config.force, always_stage=True,
                     carry=keep_user_entries((*RUN_ARTIFACTS, CHECKPOINT_DIR))) as folder:
        _check_out_folder(config)
        summary = _qat_run(config, run, folder.work, started)
    log(f"done: QAT run -> {config.out_dir}")
    return summary


def _qat_advice(config: QATConfig, state: str) -> str:
    """What to do after Ctrl-C or SIGTERM while qat is in ``state`` (qat keeps no checkpoints: no --resume)."""
    kept = " (the QAT run already there is unchanged)" if config.force else ""
    return (f"interrupted {state}; nothing was written to {config.out_dir}{kept}; qat has no --resume: "
            "run the same command again")


def _qat_run(config: QATConfig, run: RunDir, work: Path, started: float) -> dict[str, Any]:
    """Load, annotate, fine-tune and write the QAT run into ``work``; return the summary."""
    from edgeft import interrupts
    from edgeft.run.rundir import ModelFormat, write_run_dir

    interrupts.advise(_qat_advice(config, "while loading the float run"))
    _seed(config.seed)
    model = run.load_keras_model()
    data = _load_data(run)
    float_accuracy = _accuracy(model, data.x_val, data.y_val, config.batch_size)
    log(f"qat: float model val accuracy {float_accuracy:.4f}; annotating {len(model.layers)} layers")
    interrupts.advise(_qat_advice(config, "while annotating the model for QAT"))
    qat_model, rounding = _prepare_qat_model(model, config, data)
    interrupts.advise(_qat_advice(config, "during QAT fine-tuning"))
    before = _accuracy(qat_model, data.x_val, data.y_val, config.batch_size)
    log(f"qat: fake-quantized model before fine-tuning: val accuracy {before:.4f}; {config.epochs} epoch(s) "
        f"at learning rate {config.learning_rate}")
    history = _fine_tune(qat_model, config, data)
    metrics = _metrics(qat_model, config, data, run.manifest.class_names)
    metrics.update(float_val_accuracy=float_accuracy, val_accuracy_before_qat_training=before,
                   wall_s=round(time.monotonic() - started, 2))
    log(f"qat: val accuracy {metrics['val_accuracy']:.4f} (float {float_accuracy:.4f})")
    interrupts.advise(_qat_advice(config, "while writing the QAT run"))
    write_run_dir(work, qat_model, _qat_manifest(run, config, model, rounding), metrics, history,
                  model_format=ModelFormat.HDF5)
    return {"run_dir": str(config.out_dir), "parent_run": str(run.path), "backbone": run.manifest.backbone,
            "image_size": run.manifest.image_size, "epochs": config.epochs, "learning_rate": config.learning_rate,
            "float_val_accuracy": float_accuracy, "val_accuracy": metrics["val_accuracy"],
            "wall_s": metrics["wall_s"]}


def _open_float_run(config: QATConfig) -> RunDir:
    """The float run to start from, refusing a QAT run and --out on itself."""
    from edgeft.outputs import check_output_location
    from edgeft.run.rundir import RunDir

    check_output_location(config.out_dir)
    run = RunDir.open(config.run_dir)
    if run.manifest.kind == "qat":
        raise UsageError(f"{run.path} is already a QAT run; pass the float run it came from ({run.manifest.parent_run})")
    out = Path(config.out_dir)
    if out.resolve() == run.path.resolve():
        raise RunDirError(f"--out {out} is the float run itself; choose a new directory for the QAT run")
    return run


def _check_out_folder(config: QATConfig) -> None:
    """Refuse an unforced overwrite of a complete run, and a non-empty folder that holds no run (under the lock)."""
    from edgeft.outputs import has_content
    from edgeft.run.rundir import MANIFEST_FILE

    out = Path(config.out_dir)
    if (out / MANIFEST_FILE).is_file():
        if not config.force:
            raise RunDirError(f"{out} already holds a complete run; pass --force to overwrite it")
    elif has_content(out):
        raise RunDirError(f"--out {out} is not empty and holds no edgeft run; choose a new or empty folder")


def _seed(seed: int) -> None:
    from edgeft.tfcompat import tf

    tf().random.set_seed(seed)
    np.random.seed(seed)


def _load_data(run: RunDir) -> QATData:
    from edgeft.data import load_samples

    manifest = run.manifest
    train = load_samples(run.samples("train"), manifest.image_size, label="decoding train images")
    val = load_samples(run.samples("val"), manifest.image_size, label="decoding val images")
    if len(train.samples) == 0:
        raise RunDirError(f"run {run.path} has no usable training image left for QAT fine-tuning")
    return QATData(manifest.preprocessing.apply(train.images), train.labels,
                   manifest.preprocessing.apply(val.images), val.labels)


def _prepare_qat_model(model: Any, config: QATConfig, data: QATData) -> tuple[Any, dict[str, Any] | None]:
    """Round (``--weight-rounding adaptive``), annotate, quantize and compile the float model; set the
    quantizers' ranges from training data. Returns the QAT model and what the rounding changed."""
    from edgeft.quantization.rounding import DEFAULT_SAMPLES, adaptive_rounding
    from edgeft.tfcompat import keras

    rounding = None
    if config.weight_rounding is WeightRounding.ADAPTIVE:
        # Start on tfmot's own grids with the rounding that keeps each layer's output: from nearest
        # rounding the fake-quantized model began 0.3-4.6 points below float on three sets, and 3 epochs
        # at 1e-5 did not win that back. Small updates keep each weight on the level chosen here.
        # a seeded sample of the whole split: its first images are often all of one class
        sample = np.sort(np.random.default_rng(config.seed).permutation(len(data.x_train))[:DEFAULT_SAMPLES])
        model, result = adaptive_rounding(model, data.x_train[sample], _preprocessed, qat_grids=True, seed=config.seed)
        rounding = result.to_dict()
        log(f"qat: weights start adaptively rounded on tfmot's grids ({result.flipped} of {result.weights} "
            f"off nearest in {result.layers} layers; layer output error x{result.error_ratio:.2f})")
    # QAT adapts the weights to the quantization grid: every layer trains (a head-only float run froze the
    # backbone), except BatchNormalization, which stays frozen in inference mode with its statistics.
    for layer in model.layers:
        layer.trainable = type(layer).__name__ not in FOLDED_LAYERS
    qat_model = quantize_flat_model(model)
    qat_model.compile(optimizer=keras().optimizers.Adam(config.learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    used = initialize_ranges(qat_model, data.x_train, seed=config.seed)
    log(f"qat: quantization ranges initialised from {used} training batches")
    return qat_model, rounding


def _preprocessed(images: np.ndarray) -> np.ndarray:
    """The rounding's input hook: QAT's images are already preprocessed."""
    return images


def epoch_line(name: str, epoch: int, epochs: int, logs: dict[str, Any], seconds: float) -> str:
    """One progress line per epoch, as ``finetune`` prints: loss, accuracy and the validation figures, time."""
    parts = [f"[{name}] epoch {epoch}/{epochs}"]
    parts += [f"{key} {float(logs[key]):.4f}" for key in ("loss", "accuracy", "val_loss", "val_accuracy") if key in logs]
    return "  ".join(parts + [f"{seconds:.1f}s"])


def epoch_progress(name: str, epochs: int) -> Any:
    """A Keras callback that logs :func:`epoch_line` at the end of each epoch."""
    from edgeft.tfcompat import keras

    class EpochProgress(keras().callbacks.Callback):  # type: ignore[misc, name-defined]
        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.started = time.monotonic()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            log(epoch_line(name, epoch + 1, epochs, dict(logs or {}), time.monotonic() - self.started))

    return EpochProgress()


def _fine_tune(qat_model: Any, config: QATConfig, data: QATData) -> list[dict[str, Any]]:
    """Fit the QAT model; return ``history.csv``'s rows."""
    validation = (data.x_val, data.y_val) if len(data.y_val) else None
    history = qat_model.fit(data.x_train, data.y_train, validation_data=validation, epochs=config.epochs,
                            batch_size=config.batch_size, shuffle=True, verbose=0,
                            callbacks=[epoch_progress("qat", config.epochs)])
    logged = history.history
    return [{"phase": "qat", "epoch": epoch + 1, **{key: round(float(values[epoch]), 6) for key, values in logged.items()}}
            for epoch in range(len(logged.get("loss", [])))]


def _metrics(qat_model: Any, config: QATConfig, data: QATData, class_names: tuple[str, ...]) -> dict[str, Any]:
    """``metrics.json``'s validation part for the fine-tuned QAT model."""
    from edgeft.run.metrics import classification_report

    qat_accuracy = _accuracy(qat_model, data.x_val, data.y_val, config.batch_size)
    probabilities = qat_model.predict(data.x_val, batch_size=config.batch_size, verbose=0)
    return {"val_accuracy": qat_accuracy, "float_val_accuracy": None, "val_accuracy_before_qat_training": None,
            "test_accuracy": None, "val": classification_report(data.y_val, probabilities, class_names),
            "wall_s": None}


def _qat_manifest(run: RunDir, config: QATConfig, model: Any, rounding: dict[str, Any] | None) -> RunManifest:
    """The float run's manifest, marked as a QAT run of it with the QAT hyperparameters and the rounding
    its weights started from."""
    from edgeft.tfcompat import package_versions

    manifest = run.manifest
    return replace(
        manifest, kind="qat", parent_run=str(run.path.resolve()),
        hyperparameters={"qat_epochs": config.epochs, "qat_learning_rate": config.learning_rate,
                         "qat_batch_size": config.batch_size, "qat_weight_rounding": config.weight_rounding.value,
                         "parent": manifest.hyperparameters},
        seed=config.seed, versions=package_versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        extra=dict(manifest.extra, quantization={"scheme": "tfmot default 8-bit",
                                                 "output_quantized_layers": _output_quantized(model),
                                                 "weight_rounding": rounding}),
    )


def _output_quantized(model: Any) -> list[str]:
    from edgeft.quantization.configs import OUTPUT_QUANTIZED_LAYERS

    return [layer.name for layer in model.layers if type(layer).__name__ in OUTPUT_QUANTIZED_LAYERS]
