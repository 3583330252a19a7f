"""The head phase on cached backbone features, trained in numpy.

The head is dropout + a dense softmax layer; on cached pooled features an epoch is a few small
matrix products. Keras' ``fit`` would spend far longer tracing and dispatching than computing,
which at the head's size is most of a run's training time. The trainer reproduces the Keras
head's training: Glorot-uniform kernel and zero bias, inverted dropout, sparse categorical
cross-entropy averaged over the batch (class weights scale each sample's loss, as Keras'
``class_weight``), Adam with Keras' defaults (beta 0.9/0.999, epsilon 1e-7). Each epoch draws
its shuffle and dropout masks from ``(seed, epoch)``, so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-7


class HeadTrainer:
    """Dropout + dense softmax on feature vectors; trains with Adam, predicts, saves and loads its state.

    It has the small part of a Keras model's interface the checkpoint callback uses
    (``save_weights``, ``load_weights``, ``stop_training``, ``predict``).
    """

    def __init__(self, features: int, classes: int, dropout: float, learning_rate: float, seed: int) -> None:
        rng = np.random.default_rng(seed)
        limit = np.sqrt(6.0 / (features + classes))
        self.kernel = rng.uniform(-limit, limit, (features, classes)).astype(np.float32)
        self.bias = np.zeros(classes, np.float32)
        self.dropout, self.learning_rate, self.seed = dropout, learning_rate, seed
        # first and second moments of kernel and bias: m_k, m_b, v_k, v_b
        self._moments = [np.zeros_like(variable) for variable in (self.kernel, self.bias) * 2]
        self.steps = 0
        self.stop_training = False

    def predict(self, features: np.ndarray, batch_size: int | None = None, verbose: int = 0) -> np.ndarray:
        """Class probabilities, inference mode (no dropout)."""
        return _softmax(np.asarray(features, np.float32) @ self.kernel + self.bias)

    def weights(self) -> list[np.ndarray]:
        """``[kernel, bias]``, as Keras' Dense ``get_weights``."""
        return [self.kernel, self.bias]

    def fit_epoch(self, features: np.ndarray, labels: np.ndarray, batch_size: int, epoch: int,
                  class_weight: dict[int, float] | None = None) -> dict[str, float]:
        """One epoch over shuffled batches; returns the epoch's mean ``loss`` and ``accuracy`` (with dropout)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(labels))
        weights = (np.asarray([class_weight.get(int(c), 1.0) for c in range(self.kernel.shape[1])], np.float32)
                   if class_weight else None)
        total_loss = correct = 0.0
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            inputs, targets = features[rows], labels[rows]
            if self.dropout > 0:
                keep = rng.random(inputs.shape) >= self.dropout
                inputs = inputs * keep / np.float32(1.0 - self.dropout)
            probabilities = _softmax(inputs @ self.kernel + self.bias)
            sample_weight = weights[targets] if weights is not None else np.ones(len(rows), np.float32)
            picked = probabilities[np.arange(len(rows)), targets]
            total_loss += float(np.sum(-np.log(np.maximum(picked, 1e-7)) * sample_weight))
            correct += float(np.sum(np.argmax(probabilities, 1) == targets))
            gradient = probabilities.copy()
            gradient[np.arange(len(rows)), targets] -= 1.0
            gradient *= (sample_weight / len(rows))[:, None]
            self._adam([inputs.T @ gradient, gradient.sum(0)])
        return {"loss": total_loss / len(order), "accuracy": correct / len(order)}

    def evaluate(self, features: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Mean cross-entropy and accuracy without dropout."""
        probabilities = self.predict(features)
        picked = probabilities[np.arange(len(labels)), labels]
        return {"loss": float(np.mean(-np.log(np.maximum(picked, 1e-7)))),
                "accuracy": float(np.mean(np.argmax(probabilities, 1) == labels))}

    def _adam(self, gradients: list[np.ndarray]) -> None:
        self.steps += 1
        rate = self.learning_rate * np.sqrt(1.0 - BETA_2 ** self.steps) / (1.0 - BETA_1 ** self.steps)
        for number, (variable, gradient) in enumerate(zip((self.kernel, self.bias), gradients)):
            first, second = self._moments[number], self._moments[number + 2]
            first *= BETA_1
            first += (1.0 - BETA_1) * gradient
            second *= BETA_2
            second += (1.0 - BETA_2) * gradient * gradient
            variable -= (rate * first / (np.sqrt(second) + EPSILON)).astype(np.float32)

    def save_weights(self, path: str) -> None:
        """Weights and optimizer state as an ``.npz`` archive written to ``path`` (whatever its suffix)."""
        with open(path, "wb") as handle:
            np.savez(handle, kernel=self.kernel, bias=self.bias, steps=np.int64(self.steps),
                     **{f"moment{n}": moment for n, moment in enumerate(self._moments)})

    def load_weights(self, path: str) -> None:
        with np.load(path, allow_pickle=False) as saved:
            self.kernel, self.bias = saved["kernel"], saved["bias"]
            self.steps = int(saved["steps"])
            self._moments = [saved[f"moment{n}"] for n in range(4)]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)


def train_head(trainer: HeadTrainer, callback: Any, train: tuple[np.ndarray, np.ndarray],
               val: tuple[np.ndarray, np.ndarray], batch_size: int, epochs: int, initial_epoch: int,
               class_weight: dict[int, float] | None) -> None:
    """Epochs ``initial_epoch..epochs-1``, each followed by ``callback.on_epoch_end`` (checkpoints, early stop)."""
    callback.set_model(trainer)
    for epoch in range(initial_epoch, epochs):
        logs = trainer.fit_epoch(train[0], train[1], batch_size, epoch, class_weight)
        logs.update({f"val_{key}": value for key, value in trainer.evaluate(*val).items()})
        callback.on_epoch_end(epoch, logs)
        if trainer.stop_training:
            break
