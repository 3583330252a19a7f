"""``edgeft qat``: quantization-aware fine-tuning of a float run into a QAT run directory.

The float run's flat functional model is annotated layer by layer: layers in tfmot's default
8-bit registry get tfmot's own config, the layers listed in
:data:`edgeft.quantization.configs.OUTPUT_QUANTIZED_LAYERS` get
:class:`~edgeft.quantization.configs.OutputQuantizeConfig`, and anything else stops the command
with a :class:`QuantizationError` naming the layer. The annotated model is fine-tuned for a few
epochs at a low learning rate on the run's training split (inputs preprocessed exactly as in
training, so the input quantizer learns the range the model really gets) and written as a run
directory of the same shape (``kind: "qat"``, ``parent_run`` set).
"""

from __future__ import annotations

import csv
import io
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.errors import QuantizationError, RunDirError, UsageError
from edgeft.progress import log


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

    def __post_init__(self) -> None:
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


def main_qat(config: QATConfig) -> dict[str, Any]:
    """Fine-tune the float run in ``config.run_dir`` with QAT and write ``config.out_dir``; return a summary."""
    from edgeft.data.dataset import load_samples
    from edgeft.fileio import atomic_path, write_json_atomic, write_text_atomic
    from edgeft.run.rundir import HISTORY_FILE, LABELS_FILE, MANIFEST_FILE, METRICS_FILE, MODEL_FILE, RunDir
    from edgeft.tfcompat import keras, package_versions, tf

    started = time.monotonic()
    run = RunDir.open(config.run_dir)
    manifest = run.manifest
    if manifest.kind == "qat":
        raise UsageError(f"{run.path} is already a QAT run; pass the float run it came from ({manifest.parent_run})")
    out = Path(config.out_dir)
    if out.resolve() == run.path.resolve():
        raise RunDirError(f"--out {out} is the float run itself; choose a new directory for the QAT run")
    if (out / MANIFEST_FILE).is_file() and not config.force:
        raise RunDirError(f"{out} already holds a complete run; pass --force to overwrite it")

    tf().random.set_seed(config.seed)
    np.random.seed(config.seed)
    k = keras()
    model = run.load_keras_model()
    train = load_samples(run.samples("train"), manifest.image_size, label="decoding train images")
    val = load_samples(run.samples("val"), manifest.image_size, label="decoding val images")
    if len(train.samples) == 0:
        raise RunDirError(f"run {run.path} has no usable training image left for QAT fine-tuning")
    x_train = manifest.preprocessing.apply(train.images)
    x_val = manifest.preprocessing.apply(val.images)
    float_accuracy = _accuracy(model, x_val, val.labels, config.batch_size)
    log(f"qat: float model val accuracy {float_accuracy:.4f}; annotating {len(model.layers)} layers")

    # QAT adapts the weights to the quantization grid: every layer trains (a head-only float run froze the
    # backbone), except BatchNormalization, which stays frozen in inference mode with its statistics.
    for layer in model.layers:
        layer.trainable = type(layer).__name__ not in FOLDED_LAYERS
    qat_model = quantize_flat_model(model)
    qat_model.compile(optimizer=k.optimizers.Adam(config.learning_rate), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    used = initialize_ranges(qat_model, x_train, seed=config.seed)
    log(f"qat: quantization ranges initialised from {used} training batches")
    before = _accuracy(qat_model, x_val, val.labels, config.batch_size)
    log(f"qat: fake-quantized model before fine-tuning: val accuracy {before:.4f}; {config.epochs} epoch(s) "
        f"at learning rate {config.learning_rate}")
    history = qat_model.fit(x_train, train.labels, validation_data=(x_val, val.labels) if len(val.labels) else None,
                            epochs=config.epochs, batch_size=config.batch_size, shuffle=True, verbose=0)
    qat_accuracy = _accuracy(qat_model, x_val, val.labels, config.batch_size)
    log(f"qat: val accuracy {qat_accuracy:.4f} (float {float_accuracy:.4f})")

    from edgeft.run.metrics import classification_report

    probabilities = qat_model.predict(x_val, batch_size=config.batch_size, verbose=0)
    metrics = {
        "val_accuracy": qat_accuracy,
        "float_val_accuracy": float_accuracy,
        "val_accuracy_before_qat_training": before,
        "test_accuracy": None,
        "val": classification_report(val.labels, probabilities, manifest.class_names),
        "wall_s": round(time.monotonic() - started, 2),
    }
    rows = []
    for epoch in range(len(history.history.get("loss", []))):
        rows.append({"phase": "qat", "epoch": epoch + 1,
                     **{key: round(float(values[epoch]), 6) for key, values in history.history.items()}})
    buffer = io.StringIO()
    columns = ["phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)

    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # the manifest marks a complete run: written last
    with atomic_path(out / MODEL_FILE) as temp:
        # tf-keras 2.21 cannot reload tfmot's QuantizeLayer from the zip (.keras v3) format ("expected 5
        # variables, received 3"); its HDF5 writer round-trips exactly, and load_model recognises HDF5
        # content under the .keras name, so the run directory keeps its contract.
        with warnings.catch_warnings():  # the "HDF5 is legacy" advice does not apply, as said above
            warnings.filterwarnings("ignore", message="You are saving your model as an HDF5 file")
            qat_model.save(str(temp), save_format="h5")
    write_text_atomic(out / LABELS_FILE, "\n".join(manifest.class_names) + "\n")
    write_json_atomic(out / METRICS_FILE, metrics)
    write_text_atomic(out / HISTORY_FILE, buffer.getvalue())
    from dataclasses import replace

    qat_manifest = replace(
        manifest, kind="qat", parent_run=str(run.path.resolve()),
        hyperparameters={"qat_epochs": config.epochs, "qat_learning_rate": config.learning_rate,
                         "qat_batch_size": config.batch_size, "parent": manifest.hyperparameters},
        seed=config.seed, versions=package_versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        extra=dict(manifest.extra, quantization={"scheme": "tfmot default 8-bit",
                                                 "output_quantized_layers": _output_quantized(model)}),
    )
    write_json_atomic(out / MANIFEST_FILE, qat_manifest.to_dict())
    summary = {"run_dir": str(out), "parent_run": str(run.path), "backbone": manifest.backbone,
               "image_size": manifest.image_size, "epochs": config.epochs, "learning_rate": config.learning_rate,
               "float_val_accuracy": float_accuracy, "val_accuracy": qat_accuracy, "wall_s": metrics["wall_s"]}
    log(f"done: QAT run -> {out}")
    return summary


def _output_quantized(model: Any) -> list[str]:
    from edgeft.quantization.configs import OUTPUT_QUANTIZED_LAYERS

    return [layer.name for layer in model.layers if type(layer).__name__ in OUTPUT_QUANTIZED_LAYERS]
