"""Options of ``edgeft finetune``, validated once into a frozen dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from edgeft.backbones import get_backbone
from edgeft.errors import UsageError


# Decoded images are held in memory (size^2 x 3 bytes each) and activations grow with size^2: beyond this a
# CPU host runs out of memory long before accuracy improves.
MAX_IMAGE_SIZE = 1024

class Strategy(str, Enum):
    """The three regimes of transfer learning."""

    HEAD = "head"  # frozen backbone, new head (deep-layer feature extraction)
    PARTIAL = "partial"  # head, then the top N blocks at a low learning rate
    FULL = "full"  # head, then the whole network at the lowest learning rate


class Augmentation(str, Enum):
    """Which random augmentations ``--augment`` applies in training."""

    FLIP = "flip"  # horizontal flip only: partial fine-tuning can then train on cached activations
    FULL = "full"  # flip, rotation, zoom and contrast: every epoch needs the images


class Distribution(str, Enum):
    NONE = "none"
    MIRRORED = "mirrored"


class WeightsSource(str, Enum):
    IMAGENET = "imagenet"
    NONE = "none"
    FILE = "file"


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything one ``edgeft finetune`` run needs; defaults are filled in by :meth:`from_options`."""

    data_dir: Path
    out_dir: Path
    backbone: str
    alpha: float | None
    image_size: int
    weights: str  # "imagenet", "none" or a file path
    strategy: Strategy
    unfreeze: int
    epochs: int
    fine_tune_epochs: int
    batch_size: int
    learning_rate: float
    fine_tune_learning_rate: float
    patience: int
    dropout: float
    val_split: float
    class_weight: str
    augment: bool
    seed: int
    mixed_precision: bool = False
    distribute: Distribution = Distribution.NONE
    min_accuracy: float | None = None
    resume: bool = False
    force: bool = False
    augmentation: Augmentation = Augmentation.FULL
    activation_cache_mb: int | None = None  # None: a share of physical memory

    @property
    def weights_source(self) -> WeightsSource:
        if self.weights == "imagenet":
            return WeightsSource.IMAGENET
        if self.weights == "none":
            return WeightsSource.NONE
        return WeightsSource.FILE

    @property
    def from_scratch(self) -> bool:
        """No pretrained features: the whole network trains in one phase, BatchNorm included."""
        return self.weights_source is WeightsSource.NONE

    def hyperparameters(self) -> dict[str, Any]:
        """The values recorded in the run manifest (paths and run-control flags left out)."""
        record = asdict(self)
        for key in ("data_dir", "out_dir", "resume", "force", "weights", "backbone", "alpha", "image_size", "seed"):
            record.pop(key)
        record["strategy"] = self.strategy.value
        record["distribute"] = self.distribute.value
        record["augmentation"] = self.augmentation.value
        return record

    @classmethod
    def from_options(
        cls,
        *,
        data_dir: Path,
        out_dir: Path,
        backbone: str = "mobilenet_v2",
        alpha: float | None = None,
        image_size: int | None = None,
        weights: str = "imagenet",
        strategy: str | None = None,
        unfreeze: int | None = None,
        epochs: int | None = None,
        fine_tune_epochs: int | None = None,
        batch_size: int = 32,
        learning_rate: float | None = None,
        fine_tune_learning_rate: float | None = None,
        patience: int = 5,
        dropout: float = 0.2,
        val_split: float = 0.2,
        class_weight: str = "none",
        augment: bool | None = None,
        seed: int = 0,
        mixed_precision: bool = False,
        distribute: str = "none",
        min_accuracy: float | None = None,
        resume: bool = False,
        force: bool = False,
        augmentation: str | None = None,
        activation_cache_mb: int | None = None,
    ) -> "FinetuneConfig":
        """Fill defaults and reject impossible combinations with a one-line :class:`UsageError`.

        The keywords are ``edgeft finetune``'s options, one each (None: the default for the backbone,
        strategy or weights chosen).
        """
        spec = get_backbone(backbone)
        size = _checked_image_size(spec, image_size)
        alpha = spec.check(alpha, size)
        weights = _resolved_weights(weights)
        chosen = _chosen_strategy(strategy, weights, unfreeze)
        _check_numbers(epochs=epochs, fine_tune_epochs=fine_tune_epochs, learning_rate=learning_rate,
                       fine_tune_learning_rate=fine_tune_learning_rate, val_split=val_split, patience=patience,
                       batch_size=batch_size, dropout=dropout, min_accuracy=min_accuracy)
        if resume and force:
            raise UsageError("--resume and --force contradict each other; choose one")
        if activation_cache_mb is not None and activation_cache_mb < 0:
            raise UsageError(f"--activation-cache-mb must be >= 0 (0 turns the cache off), got {activation_cache_mb}")
        augmenting = (chosen is not Strategy.HEAD) if augment is None else augment
        if augmentation is not None and not augmenting:
            raise UsageError(f"--augmentation {augmentation} needs augmentation on; drop --no-augment or --augmentation")
        if augmentation is not None and augmentation not in {a.value for a in Augmentation}:
            raise UsageError(f"--augmentation must be flip or full, got {augmentation}")
        if augmentation is None:
            # Partial fine-tuning defaults to flip only: it then trains on cached activations.
            augmentation = "flip" if chosen is Strategy.PARTIAL else "full"
        return cls(
            data_dir=Path(data_dir),
            out_dir=Path(out_dir),
            backbone=spec.name,
            alpha=alpha,
            image_size=size,
            weights=weights,
            strategy=chosen,
            unfreeze=3 if unfreeze is None else unfreeze,
            epochs=20 if epochs is None else epochs,
            fine_tune_epochs=(30 if weights == "none" else 10) if fine_tune_epochs is None else fine_tune_epochs,
            batch_size=batch_size,
            learning_rate=1e-3 if learning_rate is None else learning_rate,
            fine_tune_learning_rate=(_default_fine_tune_rate(chosen, weights) if fine_tune_learning_rate is None
                                     else fine_tune_learning_rate),
            patience=patience,
            dropout=dropout,
            val_split=val_split,
            class_weight=class_weight,
            augment=augmenting,
            seed=seed,
            mixed_precision=mixed_precision,
            distribute=Distribution(distribute),
            min_accuracy=min_accuracy,
            resume=resume,
            force=force,
            augmentation=Augmentation(augmentation),
            activation_cache_mb=activation_cache_mb,
        )


def _checked_image_size(spec: Any, image_size: int | None) -> int:
    size = spec.default_size if image_size is None else image_size
    if size > MAX_IMAGE_SIZE:
        raise UsageError(f"--image-size {size} is above the largest size edgeft trains at ({MAX_IMAGE_SIZE} px; "
                         f"{spec.name} was trained on ImageNet at {spec.default_size} px)")
    return size


def _resolved_weights(weights: str) -> str:
    """``imagenet``, ``none``, or the absolute path of an existing weights file."""
    weights = weights.strip()
    if weights.lower() in ("imagenet", "none"):
        return weights.lower()
    if not Path(weights).expanduser().is_file():
        raise UsageError(f"--weights must be imagenet, none, or an existing .h5 file; not found: {weights}")
    return str(Path(weights).expanduser().resolve())


def _chosen_strategy(strategy: str | None, weights: str, unfreeze: int | None) -> Strategy:
    chosen = (Strategy.FULL if weights == "none" else Strategy.HEAD) if strategy is None else Strategy(strategy)
    if weights == "none" and chosen is not Strategy.FULL:
        raise UsageError(
            f"--strategy {chosen.value} needs pretrained weights: a frozen random backbone gives the same "
            "features for every image; use --strategy full with --weights none"
        )
    if unfreeze is not None and chosen is not Strategy.PARTIAL:
        raise UsageError("--unfreeze applies to --strategy partial only")
    return chosen


def _default_fine_tune_rate(strategy: Strategy, weights: str) -> float:
    if weights == "none":
        return 1e-3
    return {Strategy.HEAD: 1e-4, Strategy.PARTIAL: 1e-4, Strategy.FULL: 1e-5}[strategy]


# Each numeric option: (the test it must pass, what the message says it must be). None is always accepted.
_NUMBER_RULES: dict[str, tuple[Any, str]] = {
    "epochs": (lambda v: v >= 0, "must be >= 0"),
    "fine_tune_epochs": (lambda v: v >= 0, "must be >= 0"),
    "learning_rate": (lambda v: 0.0 < v <= 1.0, "must be in (0, 1]"),
    "fine_tune_learning_rate": (lambda v: 0.0 < v <= 1.0, "must be in (0, 1]"),
    "val_split": (lambda v: 0.0 < v < 1.0, "is a fraction in (0, 1)"),
    "patience": (lambda v: v >= 0, "must be >= 0 (0 turns early stopping off)"),
    "batch_size": (lambda v: v >= 1, "must be >= 1"),
    "dropout": (lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
    "min_accuracy": (lambda v: 0.0 <= v <= 1.0, "is a fraction in 0..1"),
}


def _check_numbers(**values: float | None) -> None:
    """Raise a one-line :class:`UsageError` for the first option outside its range, named as on the CLI."""
    for name, value in values.items():
        test, must = _NUMBER_RULES[name]
        if value is not None and not test(value):
            raise UsageError(f"--{name.replace('_', '-')} {must}, got {value}")
