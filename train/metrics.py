"""Classification and valence/arousal metrics on plain arrays (any predictor can feed them)."""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts, rows = true class, columns = predicted; rows with label < 0 are ignored."""
    keep = labels >= 0
    return np.bincount(labels[keep] * num_classes + preds[keep], minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def classification_report(labels: np.ndarray, preds: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    """Accuracy, macro-F1 (over classes present in labels or predictions), per-class recall, confusion.

    Args:
        labels: (N,) true class indices, -1 = unlabelled (ignored).
        preds: (N,) predicted class indices.
        classes: Class names in index order.
    """
    cm = confusion(np.asarray(labels), np.asarray(preds), len(classes))
    n = int(cm.sum())
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0
    )
    present = (support > 0) | (predicted > 0)
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "per_class_recall": {c: (float(recall[i]) if support[i] else None) for i, c in enumerate(classes)},
        "support": {c: int(support[i]) for i, c in enumerate(classes)},
        "confusion": cm.tolist(),
    }


def va_report(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Mean absolute error, RMSE and Pearson correlation per dimension for (N, 2) valence/arousal."""
    out: dict[str, float] = {"n": float(len(pred))}
    for i, name in enumerate(("valence", "arousal")):
        err = pred[:, i] - target[:, i]
        out[f"{name}_mae"] = float(np.abs(err).mean())
        out[f"{name}_rmse"] = float(np.sqrt((err**2).mean()))
        sp, st = pred[:, i].std(), target[:, i].std()
        out[f"{name}_pearson"] = (
            float(np.corrcoef(pred[:, i], target[:, i])[0, 1]) if sp > 0 and st > 0 else 0.0
        )
    return out
