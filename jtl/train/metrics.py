"""Classification metrics from predictions, in numpy (host side, after evaluation).

From the confusion matrix ``C[i, j]`` = #(label i, predicted j):
per-class accuracy (recall) ``C_ii / sum_j C_ij``, precision ``C_ii / sum_i C_ij``,
``F1 = 2 P R / (P + R)`` (0 where undefined), macro averages over the classes that occur in the labels
or the predictions.
A class absent from the labels (a partial-set evaluation) has ``class_support`` 0: its
per-class accuracy is undefined and reported as 0 in the list, so read the two together.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    """top-1, top-5, per-class accuracy, macro precision/recall/F1, confusion matrix."""
    logits, labels = np.asarray(logits), np.asarray(labels).astype(np.int64)
    k = logits.shape[-1]
    preds = logits.argmax(-1)
    cm = confusion_matrix(labels, preds, k)
    support, predicted, tp = cm.sum(1), cm.sum(0), np.diag(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = (support > 0) | (predicted > 0)  # classes seen in labels or predictions
    top5 = np.argsort(-logits, axis=-1)[:, : min(5, k)]
    return {
        "top1": float(np.mean(preds == labels)),
        "top5": float(np.mean((top5 == labels[:, None]).any(-1))),
        "macro_precision": float(precision[present].mean()),
        "macro_recall": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "per_class_accuracy": recall.tolist(),  # 0 for a class without examples: see class_support
        "class_support": support.tolist(),  # examples per class; 0 = absent (partial-set evaluation)
        "confusion_matrix": cm.tolist(),
        "count": int(len(labels)),
    }


SCALAR_KEYS = ("top1", "top5", "macro_precision", "macro_recall", "macro_f1")
