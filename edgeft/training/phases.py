"""Which layers train, for how long and how fast: the phase plan of a strategy (no TensorFlow)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from edgeft.training.config import FinetuneConfig, Strategy


class Trainable(str, Enum):
    HEAD = "head"  # the new classifier only
    TOP_BLOCKS = "top_blocks"  # the head and the backbone's top N blocks
    ALL = "all"  # every layer


@dataclass(frozen=True)
class Phase:
    """One ``model.fit`` of a run."""

    name: str
    trainable: Trainable
    epochs: int
    learning_rate: float
    batchnorm_trains: bool  # False: BatchNorm stays in inference mode with frozen statistics
    feature_cache: bool  # train the head on cached backbone features


# Keras' default BatchNorm momentum (0.99-0.999) leaves moving statistics near their initial
# values after a few hundred steps on a small set, so validation collapses to chance while
# training accuracy is high. 0.9 tracks the batch statistics within tens of steps.
TRAINING_BN_MOMENTUM = 0.9


def plan_phases(config: FinetuneConfig) -> list[Phase]:
    """The phases ``config`` trains, in order."""
    if config.from_scratch:
        return [Phase("scratch", Trainable.ALL, config.epochs, config.learning_rate, True, False)]
    # The head phase trains on cached backbone features unless augmentation is asked for with
    # --strategy head; for partial/full, augmentation applies to the fine-tuning phase only.
    head = Phase(
        "head",
        Trainable.HEAD,
        config.epochs,
        config.learning_rate,
        batchnorm_trains=False,
        feature_cache=not (config.augment and config.strategy is Strategy.HEAD),
    )
    if config.strategy is Strategy.HEAD:
        return [head]
    trainable = Trainable.TOP_BLOCKS if config.strategy is Strategy.PARTIAL else Trainable.ALL
    tune = Phase("fine_tune", trainable, config.fine_tune_epochs, config.fine_tune_learning_rate, False, False)
    return [head, tune]
