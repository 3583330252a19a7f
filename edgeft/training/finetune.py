"""``edgeft finetune``: transfer learning from an ImageNet backbone into a run directory."""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.backbones import BackboneSpec, get_backbone
from edgeft.backbones.weights import ResolvedWeights, resolve_weights
from edgeft.data import DatasetIndex, LoadedSplit, load_dataset
from edgeft.errors import AccuracyTargetError, DatasetError, RunDirError
from edgeft.outputs import OutputFolder
from edgeft.preprocessing import Preprocessing
from edgeft.progress import log
from edgeft.run.rundir import CHECKPOINT_DIR, MANIFEST_FILE, RUN_ARTIFACTS, RunManifest, write_run_dir
from edgeft.run.timings import StepTimer
from edgeft.training.activations import (SUPPORTED_AUGMENTATION, FrozenSplit, StackedViews, TopTrainer,
                                         activation_dataset, cache_bytes, compute_activations, default_budget_mb,
                                         split_frozen_prefix, train_top)
from edgeft.training.checkpoints import CheckpointStore, PhaseState, TrainingState, make_epoch_callback
from edgeft.training.config import Augmentation, Distribution, FinetuneConfig
from edgeft.training.head import HeadTrainer, train_head
from edgeft.training.model import add_head, build_backbone, count_blocks, recalibrate_batchnorm, set_trainable
from edgeft.training.phases import Phase, Trainable, plan_phases
from edgeft.training.pipeline import class_weights, image_dataset, preprocess_batch

# Cached evaluation is trusted when the model, run on these validation images, gives the same
# probabilities (float32 round-off between graph and eager kernels is ~1e-6).
CHECK_SAMPLE = 8
CHECK_TOLERANCE = 1e-4

def prepare_run_dir(config: FinetuneConfig, folder: OutputFolder | None = None) -> CheckpointStore:
    """Refuse to clobber a complete run, require --resume/--force for an unfinished one (nothing is written yet).

    ``folder`` is where this run writes (:func:`edgeft.outputs.open_output`): a staged folder beside
    ``--out`` is either a fresh ``--force`` replacement or an interrupted one that ``--resume`` continues.
    """
    out = config.out_dir
    work = folder.work if folder is not None else out
    store = CheckpointStore(work)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} exists and is not a directory")
    complete = (out / MANIFEST_FILE).is_file()
    if work != out:
        pass  # the run in --out stays as it is until the new one is complete and swapped in
    elif config.force:
        pass
    elif complete:
        raise RunDirError(f"{out} already holds a complete run; pass --force to overwrite it or choose another --out")
    elif config.resume and not store.exists():
        raise RunDirError(f"nothing to resume in {out}: no checkpoint found; run without --resume")
    elif store.exists() and not config.resume:
        raise RunDirError(f"{out} holds an unfinished run; pass --resume to continue it or --force to start over")
    return store


def clear_for_new_run(config: FinetuneConfig, work: Path | None = None) -> None:
    """Create the folder the run writes in (``--out``, or the staged replacement beside it)."""
    (work if work is not None else config.out_dir).mkdir(parents=True, exist_ok=True)


def _holds_checkpoint(work: Path) -> bool:
    """True when ``work`` holds an epoch checkpoint that ``--resume`` can continue from."""
    return CheckpointStore(work).exists()


def _interrupt_advice(config: FinetuneConfig, folder: OutputFolder, training: bool) -> str:
    """What to do after Ctrl-C or SIGTERM at this point of the run."""
    if not folder.staged:
        if training:
            return "interrupted; run the same command with --resume to continue from the last completed epoch"
        return "interrupted before training started; nothing to resume: run the same command again"
    kept = f"interrupted; the run already in {config.out_dir} is unchanged"
    if not training:
        return f"{kept}; nothing to resume: run the same command again"
    if config.resume:
        return f"{kept}; run the same command again to continue the new run from its last completed epoch"
    return (f"{kept}; to continue the new run from its last completed epoch, run the same command with --resume "
            f"in place of --force (its checkpoints are in {folder.work}), or again with --force to start over")


def _fingerprint(config: FinetuneConfig, content_hash: str) -> dict[str, Any]:
    """What a --resume must match, flat and keyed by option (``learning_rate`` is ``--learning-rate``)."""
    return {
        "backbone": config.backbone,
        "alpha": config.alpha,
        "image_size": config.image_size,
        "weights": config.weights,
        "seed": config.seed,
        "data_hash": content_hash,
        **config.hyperparameters(),
    }


def _fingerprint_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Each differing entry as ``--option (was X, now Y)``; the data as "the files in DATA_DIR"."""
    saved = dict(saved)
    saved.update(saved.pop("hyperparameters", None) or {})  # checkpoints written before the flat form
    changes = []
    for key in sorted(set(saved) | set(current)):
        if key in ("data_hash",) or saved.get(key) == current.get(key):
            continue
        changes.append(f"--{key.replace('_', '-')} (was {saved.get(key)}, now {current.get(key)})")
    if saved.get("data_hash") != current.get("data_hash"):
        changes.append("the files in DATA_DIR")
    return changes


def _setup_tensorflow(config: FinetuneConfig, say: Any = log) -> Any:
    """Seed, determinism, precision policy; returns the distribution strategy. Messages go to ``say``."""
    from edgeft.tfcompat import keras, tf

    t = tf()
    k = keras()
    k.utils.set_random_seed(config.seed)
    gpus = t.config.list_physical_devices("GPU")
    if not gpus:
        t.config.experimental.enable_op_determinism()
    k.mixed_precision.set_global_policy("mixed_float16" if config.mixed_precision else "float32")
    _announce_devices(t, len(gpus), say)
    if config.mixed_precision and not gpus:
        say("warning: --mixed-precision on a CPU-only host is slow; it pays off on GPUs with tensor cores")
    if config.distribute is Distribution.MIRRORED:
        strategy = t.distribute.MirroredStrategy()
        say(f"distribute: MirroredStrategy over {strategy.num_replicas_in_sync} replica(s)")
        return strategy
    return t.distribute.get_strategy()


def _announce_devices(t: Any, tensorflow_gpus: int, say: Any = log) -> None:
    """Say which devices training runs on; warn once when a GPU is present that TensorFlow does not use."""
    from edgeft.training.devices import describe_devices, gpu_warning, host_gpus

    say(describe_devices(t))
    warning = gpu_warning(host_gpus(), tensorflow_gpus, bool(t.test.is_built_with_cuda()))
    if warning:
        say(warning)


def _settle(background: Any) -> None:
    """Wait for the set-up thread (a failure there is moot once the main thread has failed)."""
    try:
        background.result()
    except Exception:
        pass


def _start_tensorflow(config: FinetuneConfig, spec: BackboneSpec, resolved: ResolvedWeights) -> Any:
    """TensorFlow's import and set-up, and the backbone's construction, in a thread while images decode.

    Pillow releases the GIL while decoding, so both proceed at once. Returns a future of
    ``(strategy, backbone or None, messages)``; messages are said by the caller once decoding is done.
    With MirroredStrategy everything stays on the main thread (its scope is per thread).
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    if config.distribute is not Distribution.NONE:
        future: Future[Any] = Future()
        future.set_result(None)
        return future

    def prepare() -> tuple[Any, Any, list[str]]:
        messages: list[str] = []
        strategy = _setup_tensorflow(config, messages.append)
        backbone = build_backbone(spec, config.alpha, config.image_size, resolved.path)
        return strategy, backbone, messages

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeft-tensorflow")
    future = pool.submit(prepare)
    pool.shutdown(wait=False)  # the thread ends with ``prepare``; the caller waits on the future
    return future


def _epoch_logger(phase: Phase) -> Any:
    def report(row: dict[str, Any]) -> None:
        parts = [f"[{phase.name}] epoch {row['epoch']}/{phase.epochs}"]
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            if key in row:
                parts.append(f"{key} {row[key]:.4f}")
        log("  ".join(parts))

    return report


def _compile(model: Any, learning_rate: float) -> None:
    from edgeft.tfcompat import keras

    k = keras()
    model.compile(
        optimizer=k.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


@dataclass(frozen=True)
class CachedEvaluation:
    """A model that gives the classifier's validation probabilities from cached inputs (features, activations)."""

    model: Any  # the head on pooled features, or the trainable top on frozen activations
    inputs: Any  # its validation inputs, in the validation split's order
    source: str  # what the inputs are, for metrics.json


@dataclass(frozen=True)
class TrainingContext:
    """What every step of one run shares: options, backbone, data, checkpoints, distribution strategy, clock."""

    config: FinetuneConfig
    spec: BackboneSpec
    splits: dict[str, LoadedSplit]
    store: CheckpointStore
    state: TrainingState
    strategy: Any  # tf.distribute.Strategy
    timer: StepTimer = field(default_factory=StepTimer)
    # per phase index, filled by the phase that trained in this process
    cached_evaluations: dict[int, CachedEvaluation] = field(default_factory=dict)
    # the cut of a later cached fine-tuning phase ("split"), and the frozen part's outputs the head
    # phase's backbone pass computed on the way ("train", "val")
    frozen_outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def preprocessing(self) -> Preprocessing:
        return self.spec.preprocessing


def _features(context: TrainingContext, model: Any) -> tuple[np.ndarray, np.ndarray]:
    """Pooled backbone features of the train and val splits, computed once and kept with the checkpoints.

    Both splits go through one ``predict`` call: each call traces the model anew, which on a
    small set costs as much as the forward passes themselves.
    """
    from edgeft.fileio import atomic_path
    from edgeft.tfcompat import keras

    train, val = context.splits["train"], context.splits["val"]
    paths = context.store.features_path("train"), context.store.features_path("val")
    if all(path.is_file() for path in paths):
        cached = [np.load(path, allow_pickle=False) for path in paths]
        if cached[0].shape[0] == len(train.labels) and cached[1].shape[0] == len(val.labels):
            return cached[0], cached[1]
    split = context.frozen_outputs.get("split")
    extra = list(split.prefix.outputs) if split is not None else []
    extractor = keras().Model(model.input, [model.get_layer("pool").output, *extra])
    both = StackedViews(train.images, val.images, flip=False)
    dataset = image_dataset(both, None, context.preprocessing, context.config.batch_size)
    outputs = extractor.predict(dataset, verbose=0)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    count = len(train.labels)
    if extra:  # the cached fine-tuning phase's activations of these images, from the same pass
        context.frozen_outputs["extractor"] = extractor
        context.frozen_outputs["train"] = [np.asarray(a[:count], np.float32) for a in outputs[1:]]
        context.frozen_outputs["val"] = [np.asarray(a[count:], np.float32) for a in outputs[1:]]
    features = np.asarray(outputs[0], np.float32)
    parts = features[:count], features[count:]
    for path, part in zip(paths, parts):
        with atomic_path(path) as temp:
            with open(temp, "wb") as handle:
                np.save(handle, part, allow_pickle=False)
    return parts


PHASE_STEPS = {"head": "head_training", "fine_tune": "fine_tuning", "scratch": "training"}


def _run_phase(context: TrainingContext, index: int, phase: Phase, model: Any) -> None:
    """Train one phase (or finish an interrupted one) and store its final weights."""
    with context.timer.step(PHASE_STEPS.get(phase.name, phase.name)):
        _run_phase_timed(context, index, phase, model)


def _run_phase_timed(context: TrainingContext, index: int, phase: Phase, model: Any) -> None:
    phase_state = context.state.phases[index]
    started = time.monotonic()
    _log_phase_start(context, phase, model)
    done = phase_state.epochs_done >= phase.epochs or (
        context.config.patience > 0 and phase_state.wait >= context.config.patience)
    if phase.feature_cache:
        trained = _fit_head_on_features(context, index, phase, model, done)
    else:
        split = _activation_split(context, phase, model, done)
        if split is not None:
            trained = _fit_top_on_activations(context, index, phase, model, done, split)
        else:
            trained = _fit_model(context, index, phase, model, done)
    _restore_best(context, index, phase, trained)
    if isinstance(trained, HeadTrainer):
        model.get_layer("predictions").set_weights(trained.weights())
    context.store.save_weights(model, context.store.weights_path(index, "final"))
    phase_state.finished = True
    phase_state.wall_s += time.monotonic() - started
    context.store.save(context.state)


def _log_phase_start(context: TrainingContext, phase: Phase, model: Any) -> None:
    """Set which layers train in ``phase`` and say so."""
    config = context.config
    with context.strategy.scope():
        trained_blocks = set_trainable(model, context.spec, phase.trainable, config.unfreeze, phase.batchnorm_trains)
    described = {"head": "head only (backbone frozen)", "top_blocks": f"head + top {trained_blocks} blocks",
                 "all": "all layers"}[phase.trainable.value]
    log(f"phase {phase.name}: {described}, lr {phase.learning_rate:g}, up to {phase.epochs} epochs"
        + (", on cached backbone features" if phase.feature_cache else ""))


def _class_weights(context: TrainingContext, model: Any) -> dict[int, float] | None:
    if context.config.class_weight != "auto":
        return None
    return class_weights(context.splits["train"].labels, int(model.output_shape[-1]))


def _fit_head_on_features(context: TrainingContext, index: int, phase: Phase, model: Any, done: bool) -> Any:
    """Train a stand-alone head (numpy, :mod:`edgeft.training.head`) on cached backbone features; return it."""
    config, store = context.config, context.store
    weights = _class_weights(context, model)
    train, val = context.splits["train"], context.splits["val"]
    with context.timer.step("backbone_pass"):
        train_features, val_features = _features(context, model)
    head = HeadTrainer(train_features.shape[1], int(model.output_shape[-1]), config.dropout, phase.learning_rate,
                       config.seed)
    epochs_done = _resume_weights(context, index, head)
    if not done:
        callback = make_epoch_callback(store, context.state, index, head, config.patience, _epoch_logger(phase))
        train_head(head, callback, (train_features, train.labels), (val_features, val.labels), config.batch_size,
                   phase.epochs, epochs_done, weights)
    context.cached_evaluations[index] = CachedEvaluation(head, val_features, "cached backbone features")
    return head


def _activation_split(context: TrainingContext, phase: Phase, model: Any, done: bool) -> FrozenSplit | None:
    """The frozen/trainable cut when ``phase`` can train on cached activations, else None (saying why)."""
    config = context.config
    if phase.trainable is not Trainable.TOP_BLOCKS or phase.batchnorm_trains or done:
        return None
    if config.augment and config.augmentation is Augmentation.FULL:
        log("fine-tuning on images (full pipeline): --augmentation full (rotation, zoom, contrast) needs them; "
            f"the activation cache supports {SUPPORTED_AUGMENTATION} only")
        return None
    split = context.frozen_outputs.get("split") or split_frozen_prefix(model)
    if split is None:
        log("fine-tuning on images (full pipeline): no frozen layer below the unfrozen blocks")
        return None
    train, val = context.splits["train"], context.splits["val"]
    needed_mb = _cache_mb(context, split)
    budget_mb = _cache_budget_mb(config)
    if needed_mb > budget_mb:
        log(f"fine-tuning on images (full pipeline): the activation cache would take {needed_mb:.0f} MB, over "
            f"--activation-cache-mb {budget_mb}")
        return None
    views = f"{len(train.labels)} training images" + (" and their flips" if config.augment else "")
    log(f"fine-tuning on cached activations below {split.first_trainable}: {needed_mb:.1f} MB in memory ({views}, "
        f"{len(val.labels)} validation); augmentation: {SUPPORTED_AUGMENTATION if config.augment else 'none'}")
    return split


def _cache_mb(context: TrainingContext, split: FrozenSplit) -> float:
    train, val = context.splits["train"], context.splits["val"]
    return cache_bytes(split, len(train.labels), len(val.labels), context.config.augment) / 2**20


def _cache_budget_mb(config: FinetuneConfig) -> int:
    return default_budget_mb() if config.activation_cache_mb is None else config.activation_cache_mb


def _plan_activation_cut(context: TrainingContext, phases: list[Phase], model: Any) -> None:
    """When a head phase on features precedes a fine-tuning phase that will train on cached activations,
    cut the model now, so that the head phase's backbone pass also yields the activations of the
    unflipped images (set_trainable is only read when a model is compiled; each phase sets its own)."""
    config, state = context.config, context.state
    head_first = phases[0].feature_cache and not state.phases[0].finished
    tune = next((n for n, p in enumerate(phases) if p.trainable is Trainable.TOP_BLOCKS and not p.batchnorm_trains
                 and not state.phases[n].epochs_done), None)
    if not head_first or tune is None or (config.augment and config.augmentation is Augmentation.FULL):
        return
    with context.strategy.scope():
        set_trainable(model, context.spec, Trainable.TOP_BLOCKS, config.unfreeze, False)
    split = split_frozen_prefix(model)
    if split is not None and _cache_mb(context, split) <= _cache_budget_mb(config):
        context.frozen_outputs["split"] = split


def _fit_top_on_activations(context: TrainingContext, index: int, phase: Phase, model: Any, done: bool,
                            split: FrozenSplit) -> Any:
    """Train the unfrozen top on cached activations of the frozen part; return the top.

    The top shares its layers with ``model``, so the saved model has the weights it trains.
    """
    config, store = context.config, context.store
    weights = _class_weights(context, model)
    train, val = context.splits["train"], context.splits["val"]
    reuse = context.frozen_outputs
    unflipped = (reuse["train"], reuse["val"]) if reuse.get("split") is split and "train" in reuse else None
    with context.timer.step("activation_pass"):
        cache = compute_activations(split, train.images, val.images, context.preprocessing, config.batch_size,
                                    flip=config.augment, unflipped=unflipped,
                                    extractor=reuse.get("extractor") if unflipped is not None else None)
    reuse.clear()
    # Loss scaling and per-replica steps: Keras' fit does both.
    keras_fit = config.mixed_precision or config.distribute is not Distribution.NONE
    trained: Any = split.top if keras_fit else TopTrainer(split.top, split.boundary, phase.learning_rate, config.seed)
    # Checkpoints hold the top's weights only (the frozen part does not change): a fraction of the layers.
    epochs_done = _resume_weights(context, index, trained)
    callback = make_epoch_callback(store, context.state, index, trained, config.patience, _epoch_logger(phase))
    if keras_fit:
        with context.strategy.scope():
            _compile(split.top, phase.learning_rate)
        split.top.fit(activation_dataset(cache, train.labels, config.batch_size, config.seed),
                      validation_data=(cache.validation(), val.labels), validation_batch_size=config.batch_size,
                      epochs=phase.epochs, initial_epoch=epochs_done, class_weight=weights, callbacks=[callback],
                      verbose=0)
    else:
        train_top(trained, callback, cache, train.labels, val.labels, config.batch_size, phase.epochs, epochs_done,
                  weights)
    context.cached_evaluations[index] = CachedEvaluation(trained, cache.validation(), "cached activations")
    return trained


def _fit_model(context: TrainingContext, index: int, phase: Phase, model: Any, done: bool) -> Any:
    """Train the whole model (the layers ``phase`` unfroze) on images; return it."""
    config, store = context.config, context.store
    weights = _class_weights(context, model)
    train, val = context.splits["train"], context.splits["val"]
    with context.strategy.scope():
        _compile(model, phase.learning_rate)
    epochs_done = _resume_weights(context, index, model)
    if not done:
        train_data = image_dataset(train.images, train.labels, context.preprocessing, config.batch_size,
                                   shuffle=True, augment=config.augment, seed=config.seed)
        val_data = image_dataset(val.images, val.labels, context.preprocessing, config.batch_size)
        callback = make_epoch_callback(store, context.state, index, model, config.patience, _epoch_logger(phase))
        model.fit(train_data, validation_data=val_data, epochs=phase.epochs,
                  initial_epoch=epochs_done, class_weight=weights, callbacks=[callback], verbose=0)
    return model


def _resume_weights(context: TrainingContext, index: int, trained: Any) -> int:
    """Load an interrupted phase's last epoch into ``trained``; return the epochs it had done."""
    epochs_done = context.state.phases[index].epochs_done
    if epochs_done > 0:
        context.store.load_weights(trained, context.store.weights_path(index, "last"))
    return epochs_done


def _restore_best(context: TrainingContext, index: int, phase: Phase, trained: Any) -> None:
    """Load the phase's best epoch (lowest validation loss) into ``trained``, when one was kept."""
    phase_state = context.state.phases[index]
    best = context.store.weights_path(index, "best")
    if best.is_file():
        context.store.load_weights(trained, best)
        if phase_state.best_epoch < phase_state.epochs_done:
            log(f"phase {phase.name}: restored best epoch {phase_state.best_epoch} "
                f"(val_loss {phase_state.best_val_loss:.4f})")


def _predict(model: Any, split: LoadedSplit, preprocessing: Any, batch_size: int) -> np.ndarray:
    dataset = image_dataset(split.images, None, preprocessing, batch_size)
    return np.asarray(model.predict(dataset, verbose=0), dtype=np.float32)


def _cached_probabilities(context: TrainingContext, model: Any, cached: CachedEvaluation) -> np.ndarray | None:
    """Validation probabilities from cached inputs, once the full model agrees with them on a sample; else None.

    A mismatch (e.g. a layer the cache does not reproduce) says so and leaves the evaluation to
    the full model on the images.
    """
    val = context.splits["val"]
    if not len(val.labels):
        return None
    probabilities = np.asarray(cached.model.predict(cached.inputs, batch_size=context.config.batch_size, verbose=0),
                               dtype=np.float32)
    sample = np.unique(np.linspace(0, len(val.labels) - 1, min(CHECK_SAMPLE, len(val.labels))).astype(int))
    reference = np.asarray(model(preprocess_batch(val.images[sample], context.preprocessing), training=False),
                           dtype=np.float32)
    difference = float(np.max(np.abs(reference - probabilities[sample])))
    if not difference <= CHECK_TOLERANCE:
        log(f"warning: evaluation on {cached.source} differs from the model by {difference:.2g} on "
            f"{len(sample)} validation images; evaluating the model on the images instead")
        return None
    return probabilities


def collapse_warning(train_accuracy: float | None, val_accuracy: float, num_classes: int) -> str | None:
    """A message when validation sits near chance while training accuracy is high (broken BN statistics)."""
    chance = 1.0 / num_classes
    if train_accuracy is not None and train_accuracy >= 0.8 and val_accuracy <= chance + 0.1:
        return (f"validation accuracy {val_accuracy:.3f} is at chance ({chance:.2f}) while training accuracy is "
                f"{train_accuracy:.3f}: the model does not generalise (check BatchNorm statistics and the splits)")
    return None


def main_finetune(config: FinetuneConfig) -> dict[str, Any]:
    """Train, evaluate and write a complete run directory; return the summary.

    ``--out`` is locked for the whole run. With ``--force`` over an existing run, the new run is built
    in a hidden folder beside it and swapped in only once complete: a failed or interrupted run leaves
    the old one as it was (an interrupted one keeps its checkpoints for ``--resume``).
    """
    from edgeft import interrupts
    from edgeft.outputs import keep_user_entries, open_output

    wall_start = time.monotonic()
    interrupts.advise("interrupted before training started; nothing to resume: run the same command again")
    try:
        with open_output(config.out_dir, replace=config.force, inputs=[config.data_dir],
                         resumable=_holds_checkpoint, resume=config.resume,
                         carry=keep_user_entries((*RUN_ARTIFACTS, CHECKPOINT_DIR))) as folder:
            summary = _train_run(config, folder, wall_start)
    except Exception as error:
        _raise_write_failure(config, error)
        raise
    _check_accuracy_target(config, summary["val_accuracy"])
    return summary


def _raise_write_failure(config: FinetuneConfig, error: BaseException) -> None:
    """A failed write (full disk, read-only, no permission) as one line that says what was kept."""
    from edgeft.outputs import staging_path, write_failure

    failure = write_failure(error)
    if failure is None:
        return
    kept = ""
    if any(_holds_checkpoint(folder) for folder in (config.out_dir, staging_path(config.out_dir))):
        kept = ("; the last completed epoch is kept: once there is room, run the same command with --resume"
                + (" in place of --force" if config.force else "") + " to continue")
    elif (config.out_dir / MANIFEST_FILE).is_file():
        kept = f"; the run already in {config.out_dir} is unchanged"
    raise type(failure)(failure.message + kept) from None


def _train_run(config: FinetuneConfig, folder: OutputFolder, wall_start: float) -> dict[str, Any]:
    """The run itself, written into ``folder.work``; return the summary."""
    from edgeft import interrupts

    interrupts.advise(_interrupt_advice(config, folder, training=False))
    timer = StepTimer(wall_start)
    _warm_up_plots()
    with timer.step("setup"):
        store = prepare_run_dir(config, folder)
        spec = get_backbone(config.backbone)
        resolved = resolve_weights(spec, config.weights, config.alpha, config.image_size)
    background = _start_tensorflow(config, spec, resolved)
    try:
        with timer.step("decode"):
            index, splits = load_dataset(config.data_dir, config.image_size, config.val_split, config.seed)
        _check_validation_classes(config, index.class_names, splits)
        clear_for_new_run(config, folder.work)
        _log_inputs(config, resolved, index, splits)
    except BaseException:
        # A thread still importing TensorFlow while the interpreter exits can swallow the error line.
        _settle(background)
        raise
    with timer.step("tensorflow_setup"):  # what is left of it once decoding is done
        prepared = background.result()
        strategy, backbone, messages = prepared if prepared else (_setup_tensorflow(config), None, [])
        for message in messages:
            log(message)
    phases = plan_phases(config)
    state = _training_state(config, store, phases, index.content_hash)
    interrupts.advise(_interrupt_advice(config, folder, training=True))
    context = TrainingContext(config, spec, splits, store, state, strategy, timer)
    with timer.step("model_build"):
        model = _build_model(context, resolved, len(index.class_names), backbone)
    _train(context, phases, model)
    with timer.step("final_evaluation"):
        metrics = _evaluate(context, phases, model, index.class_names)
    write_run_dir(folder.work, model, _manifest(context, resolved, index), metrics, state.history, timer=timer)
    metrics["timings"] = timer.last_report
    metrics["wall_s"] = timer.last_report["total"]  # "done in": writing the run included
    log(timer.line())
    shutil.rmtree(folder.work / CHECKPOINT_DIR, ignore_errors=True)
    return _summary(context, resolved, metrics, len(index.skipped))


def _warm_up_plots() -> None:
    import threading

    from edgeft.run.plots import warm_up

    threading.Thread(target=warm_up, name="edgeft-plots-warm-up", daemon=True).start()


def _check_validation_classes(config: FinetuneConfig, class_names: tuple[str, ...],
                              splits: dict[str, LoadedSplit]) -> None:
    """Warn about classes the validation split lacks; refuse them when --min-accuracy must be judged."""
    from edgeft.data.dataset import missing_validation_classes

    missing = missing_validation_classes(class_names, splits)
    if missing and config.min_accuracy is not None:
        raise DatasetError(f"no validation image of class(es) {', '.join(missing)}: --min-accuracy cannot be "
                           "judged; add images of them to the validation split")
    if missing:
        log(f"warning: no validation image of class(es) {', '.join(missing)}: their accuracy is not measured")


def _log_inputs(config: FinetuneConfig, resolved: ResolvedWeights, index: DatasetIndex,
                splits: dict[str, LoadedSplit]) -> None:
    """Say which weights and which data the run uses, and which files it skipped."""
    if resolved.warning:
        log(resolved.warning)
    weights_text = "random initialisation (--weights none)" if resolved.path is None else f"{resolved.path} ({resolved.origin})"
    log(f"weights: {weights_text}")
    counts = ", ".join(f"{name} {len(split.samples)}" for name, split in splits.items())
    log(f"data: {len(index.class_names)} classes ({', '.join(index.class_names[:8])}"
        f"{', ...' if len(index.class_names) > 8 else ''}); {counts} images")
    if index.skipped:
        by_reason: dict[str, int] = {}
        for skipped in index.skipped:
            by_reason[skipped.reason] = by_reason.get(skipped.reason, 0) + 1
        log(f"skipped {len(index.skipped)} file(s): " + ", ".join(f"{n} {r}" for r, n in by_reason.items())
            + f" (listed in {config.out_dir / MANIFEST_FILE})")


def _training_state(config: FinetuneConfig, store: CheckpointStore, phases: list[Phase],
                    content_hash: str) -> TrainingState:
    """A fresh state (saved at once), or the interrupted run's with --resume if its options and data match."""
    fingerprint = _fingerprint(config, content_hash)
    if not config.resume:
        state = TrainingState(fingerprint, [PhaseState(p.name) for p in phases])
        store.save(state)
        return state
    state = store.load()
    changed = _fingerprint_changes(state.fingerprint, fingerprint)
    if changed:
        raise RunDirError(f"cannot resume {config.out_dir}: options or data differ from the interrupted run: "
                          f"{'; '.join(changed)}; use the same options, or --force to start over")
    done = sum(p.epochs_done for p in state.phases)
    log(f"resuming {config.out_dir}: {done} epoch(s) already done")
    return state


def _build_model(context: TrainingContext, resolved: ResolvedWeights, num_classes: int, backbone: Any = None) -> Any:
    """The flat classifier: backbone with the resolved weights (``backbone`` when already built), pooling,
    dropout, softmax head."""
    config, spec = context.config, context.spec
    with context.strategy.scope():
        if backbone is None:
            backbone = build_backbone(spec, config.alpha, config.image_size, resolved.path)
        model = add_head(backbone, spec, num_classes, config.dropout)
    if config.strategy.value == "partial":
        available = count_blocks(model, spec)
        if config.unfreeze > available:
            log(f"warning: --unfreeze {config.unfreeze} exceeds the {available} blocks of {spec.name}; unfreezing all")
    return model


def _train(context: TrainingContext, phases: list[Phase], model: Any) -> None:
    """Run the phases not finished yet, leave the last phase's final weights in ``model``."""
    store, state = context.store, context.state
    context.cached_evaluations.clear()
    _plan_activation_cut(context, phases, model)
    loaded_final = -1
    for number, phase in enumerate(phases):
        if state.phases[number].finished:
            continue
        if number > 0 and loaded_final != number - 1:
            store.load_weights(model, store.weights_path(number - 1, "final"))
        _run_phase(context, number, phase, model)
        loaded_final = number
    if loaded_final != len(phases) - 1:
        store.load_weights(model, store.weights_path(len(phases) - 1, "final"))
    if any(p.batchnorm_trains for p in phases):
        context.cached_evaluations.clear()
        with context.timer.step("batchnorm_recalibration"):
            batches = image_dataset(context.splits["train"].images, None, context.preprocessing,
                                    context.config.batch_size, shuffle=True, seed=context.config.seed)
            used = recalibrate_batchnorm(model, batches)
        log(f"BatchNorm statistics re-estimated on {used} training batches")


def _evaluate(context: TrainingContext, phases: list[Phase], model: Any,
              class_names: tuple[str, ...]) -> dict[str, Any]:
    """``metrics.json``'s content (but ``wall_s``): the val and test reports, phases, collapse warning."""
    from edgeft.run.metrics import classification_report

    splits, state = context.splits, context.state
    cached = context.cached_evaluations.get(len(phases) - 1)
    evaluated_on = _cached_probabilities(context, model, cached) if cached is not None else None
    log("evaluating on the validation split" + (f" ({cached.source} through the trained top)"
                                                if evaluated_on is not None and cached is not None else ""))
    evaluations: dict[str, dict[str, Any]] = {}
    for split_name in ("val", "test"):
        if split_name in splits and len(splits[split_name].samples):
            if split_name == "val" and evaluated_on is not None:
                probabilities = evaluated_on
            else:
                probabilities = _predict(model, splits[split_name], context.preprocessing, context.config.batch_size)
            evaluations[split_name] = classification_report(splits[split_name].labels, probabilities, class_names)
    train_accuracy = next((row.get("accuracy") for row in reversed(state.history) if "accuracy" in row), None)
    val_accuracy = float(evaluations["val"]["accuracy"])
    warning = collapse_warning(train_accuracy, val_accuracy, len(class_names))
    if warning:
        log(f"warning: {warning}")
    metrics: dict[str, Any] = {
        "val_accuracy": val_accuracy,
        "test_accuracy": evaluations["test"]["accuracy"] if "test" in evaluations else None,
        "train_accuracy_last_epoch": train_accuracy,
        "val": evaluations["val"],
        "phases": [
            {"name": p.name, "epochs_run": s.epochs_done, "best_epoch": s.best_epoch,
             "best_val_loss": None if not math.isfinite(s.best_val_loss) or s.best_val_loss > 1e299 else s.best_val_loss,
             "wall_s": round(s.wall_s, 2)}
            for p, s in zip(phases, state.phases)
        ],
        "collapse_warning": warning,
        "evaluated_on": cached.source if evaluated_on is not None and cached is not None else "images",
        "wall_s": None,
        "timings": None,
    }
    if "test" in evaluations:
        metrics["test"] = evaluations["test"]
    return metrics


def _manifest(context: TrainingContext, resolved: ResolvedWeights, index: DatasetIndex) -> RunManifest:
    from edgeft.tfcompat import package_versions

    config, spec = context.config, context.spec
    return RunManifest(
        kind="float",
        backbone=spec.name,
        alpha=config.alpha,
        image_size=config.image_size,
        preprocessing=spec.preprocessing,
        class_names=index.class_names,
        data_dir=str(index.root),
        splits={name: split.samples for name, split in context.splits.items()},
        dataset=index.report(context.splits),
        strategy=config.strategy.value,
        weights=str(resolved.path) if resolved.path else "none",
        hyperparameters=config.hyperparameters(),
        seed=config.seed,
        versions=package_versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        extra={"weights_origin": resolved.origin},
    )


def _summary(context: TrainingContext, resolved: ResolvedWeights, metrics: dict[str, Any],
             skipped_files: int) -> dict[str, Any]:
    """The command's summary (``--json``), also said in one line on stderr."""
    config = context.config
    summary = {
        "run_dir": str(config.out_dir),
        "backbone": context.spec.name,
        "alpha": config.alpha,
        "image_size": config.image_size,
        "strategy": config.strategy.value,
        "weights": resolved.origin if resolved.path else "none",
        "val_accuracy": metrics["val_accuracy"],
        "test_accuracy": metrics["test_accuracy"],
        "epochs": {p["name"]: p["epochs_run"] for p in metrics["phases"]},
        "wall_s": metrics["wall_s"],
        "timings": metrics["timings"],
        "skipped_files": skipped_files,
    }
    log(f"done: val_accuracy {metrics['val_accuracy']:.4f}"
        + (f", test_accuracy {metrics['test_accuracy']:.4f}" if metrics["test_accuracy"] is not None else "")
        + f" in {metrics['wall_s']:.1f}s -> {config.out_dir}")
    return summary


def _check_accuracy_target(config: FinetuneConfig, val_accuracy: float) -> None:
    if config.min_accuracy is not None and val_accuracy < config.min_accuracy:
        raise AccuracyTargetError(
            f"val_accuracy {val_accuracy:.4f} is below --min-accuracy {config.min_accuracy}; the run is saved in "
            f"{config.out_dir}"
        )
