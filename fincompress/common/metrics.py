"""Classification metrics (scikit-learn), in the project's label order."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from fincompress.common.paths import LABELS


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int]) -> dict:
    """Macro F1, accuracy, per-class F1 and the confusion matrix (rows = truth)."""
    labels = list(range(len(LABELS)))
    per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    metrics = {
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
    }
    for name, value in zip(LABELS, per_class):
        metrics[f"f1_{name}"] = float(value)
    metrics["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    return metrics


def metrics_from_probabilities(y_true: Sequence[int], probabilities: np.ndarray) -> dict:
    return classification_metrics(y_true, np.asarray(probabilities).argmax(axis=-1))
