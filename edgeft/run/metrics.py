"""Classification metrics from labels and predictions (numpy only)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels.astype(np.int64), predictions.astype(np.int64)), 1)
    return matrix


def classification_report(labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, top-5 where it applies, per-class precision/recall/F1/support, macro F1, confusion matrix."""
    predictions = probabilities.argmax(axis=1)
    num_classes = len(class_names)
    matrix = confusion_matrix(labels, predictions, num_classes)
    true_positive = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    actual = matrix.sum(axis=1).astype(np.float64)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, actual, out=np.zeros_like(true_positive), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    per_class = {
        name: {
            "precision": round(float(precision[i]), 4),
            "recall": round(float(recall[i]), 4),
            "f1": round(float(f1[i]), 4),
            "support": int(actual[i]),
        }
        for i, name in enumerate(class_names)
    }
    report: dict[str, Any] = {
        "accuracy": float((predictions == labels).mean()) if len(labels) else None,
        "count": int(len(labels)),
        "macro_f1": round(float(f1.mean()), 4),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }
    if num_classes > 5 and len(labels):
        top5 = np.argsort(-probabilities, axis=1)[:, :5]
        report["top5_accuracy"] = float((top5 == labels[:, None]).any(axis=1).mean())
    return report
