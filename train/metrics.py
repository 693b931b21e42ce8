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


def calibration_report(labels: np.ndarray, prob: np.ndarray, n_bins: int = 15) -> dict[str, Any]:
    """How far the top-1 probability is from the chance of being right (Guo et al., ICML 2017).

    The agent publishes the distribution and ``max(probs)`` as its confidence, so a user reads
    0.8 as "right 8 times in 10". Expected calibration error over ``n_bins`` equal-width bins of
    the top-1 probability, ``ECE = sum_b n_b / N * |accuracy_b - confidence_b|``, its worst bin
    (MCE), the negative log-likelihood and the Brier score of the true (majority) label.

    Args:
        labels: (N,) true class indices, -1 = unlabelled (ignored).
        prob: (N, C) class probabilities, rows summing to 1.
        n_bins: Number of confidence bins (>= 1).

    Raises:
        ValueError: ``n_bins`` < 1, or ``prob`` is not (N, C) for the N labels.
    """
    labels, prob = np.asarray(labels), np.asarray(prob, np.float64)
    if n_bins < 1:
        raise ValueError(f"n_bins={n_bins}: must be >= 1")
    if prob.ndim != 2 or len(prob) != len(labels):
        raise ValueError(f"prob shape {prob.shape}: must be (N, C) for N={len(labels)} labels")
    keep = labels >= 0
    labels, prob = labels[keep], prob[keep]
    n = len(labels)
    if not n:
        nan = float("nan")
        return {"n": 0, "ece": nan, "mce": nan, "nll": nan, "brier": nan, "mean_confidence": nan, "bins": []}
    conf = prob.max(1)
    correct = prob.argmax(1) == labels
    # Bin b holds (b/B, (b+1)/B], up to the rounding of conf * B; a confidence of 0 joins the first.
    index = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    bins = [
        {
            "lo": b / n_bins,
            "hi": (b + 1) / n_bins,
            "n": int(member.sum()),
            "confidence": float(conf[member].mean()),
            "accuracy": float(correct[member].mean()),
        }
        for b in range(n_bins)
        if (member := index == b).any()
    ]
    gaps = [abs(x["accuracy"] - x["confidence"]) for x in bins]
    onehot = np.eye(prob.shape[1])[labels]
    return {
        "n": n,
        "ece": float(sum(x["n"] / n * gap for x, gap in zip(bins, gaps, strict=True))),
        "mce": float(max(gaps)),
        "nll": float(-np.log(np.clip(prob[np.arange(n), labels], 1e-12, None)).mean()),
        "brier": float(((prob - onehot) ** 2).sum(1).mean()),
        "mean_confidence": float(conf.mean()),
        "bins": bins,
    }
